"""PJSIP contacts as MOR's registration statuses: pure rules, no I/O.

res_pjsip has no peer status of its own; it qualifies each *contact* of an
AOR. This module turns the contacts Asterisk lists (``ContactList`` events of
``PJSIPShowContacts`` on 16+, ``ContactStatusDetail`` events of
``PJSIPShowEndpoint`` on 13-15) and its ``ContactStatus`` events into the
strings chan_sip wrote, so that MOR's GUI keeps colouring devices by prefix:

==================  ===================================================
contact status      ``devices.reg_status``
==================  ===================================================
Reachable           ``OK (N ms)`` from ``RoundtripUsec`` (rounded, >= 1),
                    ``LAGGED (N ms)`` above the device's qualify limit
Unreachable         ``UNREACHABLE``
Unknown             ``UNKNOWN``
NonQualified        ``Unmonitored`` (``Created`` in Asterisk 13-15)
no contact          NULL
==================  ===================================================

``devices.qualify`` gives the limit (milliseconds; ``yes`` is chan_sip's 2000;
``no`` makes every registered device ``Unmonitored``, as chan_sip did).
Several contacts of one endpoint combine into one status: the best one
(:func:`rank`): a device is red only when none of its contacts answers.

Matching: the endpoint name is the device name (``devices.name``), exactly as
for chan_sip peers. MOR keeps ``device_type = 'SIP'`` for its PJSIP devices and
names the endpoint and its AOR after the device; a contact whose ``Endpoint``
field is empty (a static ``contact=`` of an AOR) is matched by its AOR's name.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Optional

from .status import (
    MAX_MS,
    Device,
    KnownStatus,
    Peer,
    ascii_int,
    clean_text,
    devices_by_name,
    kind_of,
    latency_ms,
    parse_address,
    qualify_limit,
)

_VALUE: dict[str, Any] = {
    "frozen": True,
    **({"slots": True} if sys.version_info >= (3, 10) else {}),
}

REACHABLE = "Reachable"
UNREACHABLE = "Unreachable"
UNKNOWN = "Unknown"
NON_QUALIFIED = "NonQualified"  # 16+
CREATED = "Created"  # 13-15's label for the same state
REMOVED = "Removed"  # events only
UPDATED = "Updated"  # events only: the contact re-registered
#: The labels of ``ast_sip_get_contact_status_label()`` that a listed contact can carry.
LISTED_STATUSES = frozenset({REACHABLE, UNREACHABLE, UNKNOWN, NON_QUALIFIED, CREATED})
#: ``ContactStatus`` event values (main/stasis_endpoints.c, res/res_pjsip/pjsip_options.c).
EVENT_STATUSES = LISTED_STATUSES | {REMOVED, UPDATED}

#: Which of two statuses wins when contacts (or chan_sip and PJSIP) disagree; lower wins.
_RANK = {"ok": 0, "lagged": 1, "unmonitored": 2, "unknown": 3, "unreachable": 4, "none": 5}


@dataclass(**_VALUE)
class Contact:
    """One PJSIP contact as Asterisk lists it."""

    endpoint: str  # the endpoint (device) name; the AOR's when Asterisk gave none
    aor: str
    uri: str
    status: str  # Asterisk's label, e.g. "Reachable"
    roundtrip_usec: Optional[int] = None  # None: "N/A"
    user_agent: str = ""
    via: Optional[str] = None  # "ip:port" of the Via header, when Asterisk kept one
    call_id: str = ""


#: Asterisk's spelling of the keys read, by their lower-case form.
_SPELLING = {
    key.lower(): key
    for key in (
        "Uri",
        "AOR",
        "ObjectName",
        "ID",
        "Endpoint",
        "EndpointName",
        "ViaAddress",
        "ViaAddr",
        "ViaPort",
        "Status",
        "ContactStatus",
        "RoundtripUsec",
        "UserAgent",
        "CallId",
    )
}


#: The longest round trip kept, in microseconds: its milliseconds still fit a status.
MAX_USEC = MAX_MS * 1000
#: A Via ``host:port`` as Asterisk prints it (``[v6]:port`` too), within its column.
_VIA = re.compile(r"[0-9A-Za-z.:_\[\]-]{1,64}")


def _usec(text: str) -> Optional[int]:
    return ascii_int(text, 0, MAX_USEC)


def aor_of_object_name(object_name: str) -> str:
    """The AOR of a contact's sorcery id: ``<aor>;@<hash>`` (registered) or ``<aor>@@<hash>``
    (static, from the AOR's ``contact=``)."""
    for separator in (";@", "@@"):
        head, found, _ = object_name.partition(separator)
        if found:
            return head
    return object_name


def contact_from_fields(fields: Mapping[str, str], endpoint: str = "") -> Optional[Contact]:
    """A ``Contact`` from a ``ContactList`` (16+) or ``ContactStatusDetail`` (13+) event.

    Keys are looked up as Asterisk spells them (other spellings by their lower-case
    form): the two
    events spell the same things differently (``Uri``/``URI``, ``CallId``/``CallID``,
    ``Endpoint``/``EndpointName``, ``ViaAddr`` + ``ViaPort``/``ViaAddress``), and
    ``ContactList``'s field order follows sorcery's hash order, which differs
    between versions. ``endpoint`` fills in a name the event left empty (the
    endpoint that ``PJSIPShowEndpoint`` was asked about). None without a URI.
    """
    if "Uri" not in fields and "URI" not in fields:  # not Asterisk's spelling
        fields = {_SPELLING.get(key.lower(), key): value for key, value in fields.items()}
    get = fields.get
    uri = clean_text((get("Uri") or get("URI") or "").strip())
    if not uri:
        return None
    aor = (get("AOR") or get("Aor") or "").strip() or aor_of_object_name(
        (get("ObjectName") or get("ID") or "").strip()
    )
    name = (get("Endpoint") or get("EndpointName") or "").strip() or endpoint or aor
    # an address is validated as sent, never repaired: "10.0.0.1\x00evil" is no address
    via = (get("ViaAddress") or "").strip()
    if not via:
        address, port = (get("ViaAddr") or "").strip(), (get("ViaPort") or "").strip()
        if address:
            via = f"{address}:{port}" if port and port != "0" else address
    status = clean_text((get("Status") or get("ContactStatus") or "").strip())
    return Contact(
        endpoint=sys.intern(name),
        aor=aor,
        uri=uri,
        status=sys.intern(status),
        # 13-15 print the last round trip (0) for any state but Unknown; only a reachable
        # contact's is a measurement
        roundtrip_usec=_usec(get("RoundtripUsec") or "") if status == REACHABLE else None,
        # the texts the widget shows lose their control characters (a NUL, a line break)
        user_agent=clean_text((get("UserAgent") or "").strip()),
        via=via if _VIA.fullmatch(via) else None,
        call_id=(get("CallId") or get("CallID") or "").strip(),
    )


def round_trip_ms(usec: Optional[int]) -> int:
    """``RoundtripUsec`` as the whole milliseconds chan_sip printed: rounded, at least 1."""
    if usec is None or usec <= 0:
        return 1
    return max(1, (usec + 500) // 1000)


def contact_reg_status(contact: Contact, qualify: Optional[str]) -> Optional[str]:
    """The GUI string for one contact of a device whose ``devices.qualify`` is ``qualify``."""
    if contact.status == REMOVED:
        return None
    limit = qualify_limit(qualify)
    if limit is None:
        return "Unmonitored"  # qualify off: registered, not monitored (chan_sip's rule)
    if contact.status == REACHABLE:
        ms = round_trip_ms(contact.roundtrip_usec)
        return sys.intern(f"LAGGED ({ms} ms)" if ms > limit else f"OK ({ms} ms)")
    if contact.status == UNREACHABLE:
        return "UNREACHABLE"
    if contact.status in (NON_QUALIFIED, CREATED):
        return "Unmonitored"
    return "UNKNOWN"  # Unknown, Updated without a known state, or a label from the future


def rank(reg_status: Optional[str]) -> tuple[int, int]:
    """Sort key of a GUI string: lower is better (OK before LAGGED, faster first, then
    Unmonitored, UNKNOWN, UNREACHABLE, nothing)."""
    return _RANK[kind_of(reg_status)], latency_ms(reg_status) or 0


def best_contact(
    contacts: Iterable[Contact], qualify: Optional[str]
) -> tuple[Optional[str], Optional[Contact]]:
    """The device's combined status and the contact that gives it (None, None: no contact)."""
    best: tuple[Optional[str], Optional[Contact]] = (None, None)
    best_rank = rank(None)
    for contact in contacts:
        value = contact_reg_status(contact, qualify)
        key = rank(value)
        if key < best_rank:
            best, best_rank = (value, contact), key
    return best


def contact_address(contact: Contact) -> tuple[Optional[str], Optional[int]]:
    """Where the device is: the Via address when Asterisk kept one, else the URI's host."""
    if contact.via:
        host, _, port = contact.via.rpartition(":")
        if host and ascii_int(port, 0, 65535) is not None:
            return parse_address(host, port)
        return parse_address(contact.via, "")
    rest = contact.uri.split(":", 1)[1] if ":" in contact.uri else contact.uri
    rest = rest.split("@", 1)[-1]
    hostport = rest.split(";", 1)[0].split("?", 1)[0].split(">", 1)[0]
    if hostport.startswith("["):
        return parse_address(hostport, "")
    host, _, port = hostport.partition(":")
    return parse_address(host, port)


def group_by_endpoint(contacts: Iterable[Contact]) -> dict[str, list[Contact]]:
    """Contacts by endpoint name, each list in a stable order (by URI)."""
    grouped: dict[str, list[Contact]] = {}
    for contact in contacts:
        grouped.setdefault(contact.endpoint, []).append(contact)
    for group in grouped.values():
        if len(group) > 1:
            group.sort(key=lambda c: (c.uri, c.aor))
    return grouped


def peers_from_contacts(
    grouped: Mapping[str, Sequence[Contact]], qualify: Mapping[str, Optional[str]]
) -> list[Peer]:
    """One ``Peer`` per endpoint with at least one contact, for ``status.plan_cycle``.

    ``qualify`` maps device names to ``devices.qualify``; an endpoint without a
    device here (registered on the wrong server, or not MOR's) gets chan_sip's
    default limit for its diagnostic status.
    """
    peers = []
    for name, contacts in grouped.items():
        if len(contacts) == 1:  # most devices: nothing to compare
            contact: Optional[Contact] = contacts[0]
            value = contact_reg_status(contacts[0], qualify.get(name, "yes"))
        else:
            value, contact = best_contact(contacts, qualify.get(name, "yes"))
        if value is None or contact is None:
            continue  # only removed contacts: as if not listed
        ip, port = contact_address(contact)
        peers.append(Peer(name=name, status=value, ip=ip, port=port))
    return peers


def contact_sets(
    devices: Iterable[Device], grouped: Mapping[str, Sequence[Contact]]
) -> dict[int, Sequence[Contact]]:
    """The contacts of each device that has some, by device id (matched by name)."""
    return {device.id: grouped[device.name] for device in devices if device.name in grouped}


def merge_sources(sip: Iterable[Peer], pjsip: Iterable[Peer]) -> list[Peer]:
    """``peer_source = both``: one ``Peer`` per name. A name both drivers list (a device
    mid-migration) shows the better status (:func:`rank`); on a tie PJSIP wins."""
    merged: dict[str, Peer] = {}
    for peer in pjsip:
        merged[peer.name] = peer
    for peer in sip:
        other = merged.get(peer.name)
        if other is None or rank(peer.status) < rank(other.status):
            merged[peer.name] = peer
    return list(merged.values())


# --- ContactStatus events -------------------------------------------------------


@dataclass(**_VALUE)
class ContactEvent:
    """One ``Event: ContactStatus`` (Asterisk 13.5+)."""

    endpoint: str
    aor: str
    uri: str
    status: str  # one of EVENT_STATUSES
    roundtrip_usec: Optional[int]


def contact_event_from_fields(fields: Mapping[str, str]) -> Optional[ContactEvent]:
    """A ``ContactEvent`` from the fields of ``Event: ContactStatus`` (keys in any case);
    None for malformed events and unknown statuses."""
    lowered = {key.lower(): clean_text(value).strip() for key, value in fields.items()}
    uri = lowered.get("uri", "")
    status = lowered.get("contactstatus", "")
    aor = lowered.get("aor", "")
    endpoint = lowered.get("endpointname", "") or aor
    if not uri or not endpoint or status not in EVENT_STATUSES:
        return None
    return ContactEvent(
        endpoint=endpoint,
        aor=aor,
        uri=uri,
        status=status,
        roundtrip_usec=_usec(lowered.get("roundtripusec", "")),
    )


def apply_contact_event(contacts: Sequence[Contact], event: ContactEvent) -> list[Contact]:
    """A device's contacts after ``event``: Removed drops the contact; Updated (a
    re-registration) keeps its state or adds it as Unknown; any other status replaces
    the contact's status and round trip (Reachable only: others have no round trip)."""
    kept = [c for c in contacts if c.uri != event.uri]
    old = next((c for c in contacts if c.uri == event.uri), None)
    if event.status == REMOVED:
        return kept
    if event.status == UPDATED:
        if old is not None:
            return list(contacts)
        status, usec = UNKNOWN, None
    else:
        status = event.status
        usec = event.roundtrip_usec if status == REACHABLE else None
    contact = Contact(
        endpoint=event.endpoint,
        aor=event.aor or (old.aor if old else event.endpoint),
        uri=event.uri,
        status=status,
        roundtrip_usec=usec,
        user_agent=old.user_agent if old else "",
        via=old.via if old else None,
        call_id=old.call_id if old else "",
    )
    return sorted([*kept, contact], key=lambda c: (c.uri, c.aor))


def apply_contact_events(
    devices: Sequence[Device],
    stored: Mapping[int, Sequence[Contact]],
    contact_events: Iterable[tuple[datetime, ContactEvent]],
    not_before: Optional[datetime],
) -> tuple[list[KnownStatus], dict[int, list[Contact]]]:
    """Apply a batch of ``ContactStatus`` events, each with the time it was received, to
    the ``stored`` contacts of the devices with those endpoint names.

    Returns one ``KnownStatus`` per applied event, which carries the device's contacts
    combined (for ``status.plan_events``), and the new contacts of every device an
    event touched. An event older than the last poll's list (``not_before``) is ignored.
    """
    by_name = devices_by_name(devices)
    current: dict[str, list[Contact]] = {}
    statuses: list[KnownStatus] = []
    for at, event in contact_events:
        named = by_name.get(event.endpoint)
        if not named or (not_before is not None and at < not_before):
            continue
        if event.endpoint not in current:
            current[event.endpoint] = list(stored.get(named[0].id, ()))
        contacts = apply_contact_event(current[event.endpoint], event)
        current[event.endpoint] = contacts
        value, best = best_contact(contacts, named[0].qualify)
        ip, port = contact_address(best) if best is not None else (None, None)
        statuses.append(KnownStatus(event.endpoint, at, value, "ContactStatus", ip=ip, port=port))
    sets = {device.id: current[device.name] for device in devices if device.name in current}
    return statuses, sets
