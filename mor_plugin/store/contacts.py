"""Schema 3: every contact of a PJSIP device, rewritten only when one of them changed."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, Optional

from sqlalchemy import delete, select
from sqlalchemy.engine import Connection

from .. import schema
from ..pjsip import Contact, round_trip_ms
from .bulk import Shared, execute_in, select_in, streamed, upsert_rows
from .fitting import length_of

#: What decides whether a device's stored contacts must be rewritten: the round trip
#: counts in whole milliseconds (as the GUI string does), not microsecond jitter.
ContactKey = tuple[str, str, str, Optional[str], Optional[int]]
#: The columns a ``ContactKey`` is made of, in its order (the round trip in microseconds).
_KEY_COLUMNS = tuple(
    schema.contacts.c[name] for name in ("uri", "user_agent", "status", "via", "roundtrip_usec")
)
#: Their lengths: a longer text from Asterisk is stored cut.
_URI, _USER_AGENT, _STATUS, _VIA = map(length_of, _KEY_COLUMNS[:4])
#: Every column of a contact's row, in the order ``_contact_rows`` gives them.
_COLUMNS = tuple(schema.contacts.c.keys())


def load_qualify(conn: Connection, server_id: int) -> dict[str, Optional[str]]:
    """``devices.qualify`` by name of this server's SIP devices (the PJSIP limits).

    A name that several devices share keeps the first one's value.
    """
    d = schema.devices.c
    rows = conn.execute(
        select(d.name, d.qualify).where(d.server_id == server_id, d.device_type == "SIP")
    ).all()
    shared = Shared()
    qualify: dict[str, Optional[str]] = {}
    for name, value in rows:
        if name not in qualify:
            qualify[name] = shared(value)
    return qualify


def contact_key(contact: Contact) -> ContactKey:
    usec = contact.roundtrip_usec
    return (
        contact.uri[:_URI],
        contact.user_agent[:_USER_AGENT],
        contact.status[:_STATUS],
        contact.via[:_VIA] if contact.via else None,
        round_trip_ms(usec) if usec is not None else None,
    )


def _stored_key(row: Sequence[Any]) -> ContactKey:
    """The key of a stored row of ``_KEY_COLUMNS``."""
    usec = row[4]
    return (row[0], row[1], row[2], row[3], round_trip_ms(usec) if usec is not None else None)


def load_contact_keys(conn: Connection, server_id: int) -> dict[int, tuple[ContactKey, ...]]:
    """The stored contacts of this server's devices, as comparison keys in ``seq`` order."""
    c = schema.contacts.c
    rows = streamed(
        conn,
        select(c.device_id, *_KEY_COLUMNS)
        .where(c.server_id == server_id)
        .order_by(c.device_id, c.seq),
    )
    stored: dict[int, list[ContactKey]] = {}
    for row in rows:
        stored.setdefault(row[0], []).append(_stored_key(row[1:]))
    return {device_id: tuple(keys) for device_id, keys in stored.items()}


def load_contacts_of(conn: Connection, device_ids: Iterable[int]) -> dict[int, list[Contact]]:
    """The stored contacts of these devices (the listener combines events with them)."""
    c, d = schema.contacts.c, schema.devices.c
    query = (
        select(c.device_id, d.name, c.uri, c.user_agent, c.status, c.via, c.roundtrip_usec)
        .join_from(schema.contacts, schema.devices, d.id == c.device_id)
        .order_by(c.device_id, c.seq)
    )
    found: dict[int, list[Contact]] = {}
    for row in select_in(conn, query, c.device_id, device_ids):
        found.setdefault(row[0], []).append(
            Contact(
                endpoint=row[1],
                aor=row[1],
                uri=row[2],
                status=row[4],
                roundtrip_usec=row[6],
                user_agent=row[3],
                via=row[5],
            )
        )
    return found


def replace_contacts(
    conn: Connection,
    server_id: int,
    contact_sets: Mapping[int, Sequence[Contact]],
    now: datetime,
    *,
    stored: Optional[Collection[int]] = None,
) -> None:
    """Replace the stored contacts of exactly these devices (an empty set deletes them).

    ``stored``: the devices that may have rows (None: any of them); only their rows are
    deleted first. The rows are upserted, so that a device whose rows another server
    wrote (it was moved) needs no delete either.
    """
    doomed = contact_sets if stored is None else [i for i in contact_sets if i in stored]
    execute_in(conn, delete(schema.contacts), schema.contacts.c.device_id, doomed)
    upsert_rows(conn, schema.contacts, _COLUMNS, _contact_rows(server_id, contact_sets, now))


def _contact_rows(
    server_id: int, contact_sets: Mapping[int, Sequence[Contact]], now: datetime
) -> list[tuple[Any, ...]]:
    """The rows of these contacts, their values in the order of ``_COLUMNS``."""
    return [
        (device_id, seq, server_id, key[0], key[1], contact.roundtrip_usec, key[2], key[3], now)
        for device_id, contacts in contact_sets.items()
        for seq, (contact, key) in enumerate((k, contact_key(k)) for k in contacts)
    ]


def write_contacts(
    conn: Connection,
    server_id: int,
    contact_sets: Mapping[int, Sequence[Contact]],
    now: datetime,
    *,
    leave: Collection[int] = (),
) -> int:
    """The poll's contacts: ``contact_sets`` holds every device of this server that has
    contacts; stored rows of any other device of this server are deleted. Only devices
    whose contacts changed are rewritten; ``leave`` (devices a newer event wrote) are
    not touched. Returns the devices rewritten."""
    stored = load_contact_keys(conn, server_id)
    changed: dict[int, Sequence[Contact]] = {}
    for device_id, contacts in contact_sets.items():
        if device_id in leave:
            continue
        if stored.get(device_id) != tuple(contact_key(contact) for contact in contacts):
            changed[device_id] = contacts
    for device_id in stored:
        if device_id not in contact_sets and device_id not in leave:
            changed[device_id] = ()
    replace_contacts(conn, server_id, changed, now, stored=stored.keys())
    return len(changed)
