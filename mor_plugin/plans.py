"""The pure middle of a poll and of an event batch: what to write, from what Asterisk
said and what the database holds.

Each writer runs in three steps inside one transaction: ``store.load_poll_inputs`` (or
``load_batch_inputs``) reads, ``plan_poll`` (or ``plan_batch``) here decides without
I/O, ``store.write_poll`` (or ``write_batch``) writes what was decided and nothing more.
The rules themselves are mor_plugin.status's (chan_sip) and mor_plugin.pjsip's.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Optional

from . import pjsip
from .pjsip import Contact, ContactEvent
from .status import (
    Device,
    DeviceState,
    ElsewhereDevice,
    FlapRule,
    Observation,
    Peer,
    Plan,
    WrongServer,
    observed_later,
    plan_cycle,
    plan_events,
    wrong_server_records,
)

if TYPE_CHECKING:
    from .config import Settings


@dataclass(frozen=True)
class Rules:
    """The settings the rules read (from mor.conf)."""

    server_id: int
    unknown_after: float
    flap: FlapRule

    @classmethod
    def of(cls, settings: Settings) -> Rules:
        flap = FlapRule(settings.flap_changes, timedelta(seconds=settings.flap_window))
        return cls(settings.server_id, settings.unknown_after, flap)


# --- the poll ----------------------------------------------------------------------


@dataclass(frozen=True)
class Listing:
    """What Asterisk listed: chan_sip peers and, with PJSIP, contacts by endpoint."""

    peers: Sequence[Peer]
    #: None: PJSIP was not asked (peer_source sip)
    contacts: Optional[Mapping[str, Sequence[Contact]]]

    def names(self) -> set[str]:
        """Every device name Asterisk listed, of either driver."""
        return {peer.name for peer in self.peers} | set(self.contacts or ())


@dataclass(frozen=True)
class PollInputs:
    """What a poll reads in its transaction (store.load_poll_inputs)."""

    devices: Sequence[Device]
    states: Mapping[int, DeviceState]
    #: transitions of each device within the flap window before the list was observed
    recent_counts: Mapping[int, int]
    #: devices.qualify by name: PJSIP combines contacts by the device's limit
    qualify: Mapping[str, Optional[str]]
    #: SIP devices of other servers named like a peer listed here and not assigned here
    elsewhere: Sequence[ElsewhereDevice]
    #: whether this run stores latency samples (one run in LATENCY_EVERY seconds)
    sample_latency: bool


@dataclass(frozen=True)
class PollPlan:
    """Everything one poll writes."""

    plan: Plan
    wrong: Sequence[WrongServer]
    #: the stored contacts of PJSIP devices, by device id
    contact_sets: Mapping[int, Sequence[Contact]]


def listed_elsewhere_candidates(listing: Listing, devices: Iterable[Device]) -> list[str]:
    """The names listed here that no device of this server has: only they can be devices
    registered on the wrong server."""
    own = {device.name for device in devices}
    return sorted(name for name in listing.names() if name not in own)


def plan_poll(rules: Rules, listing: Listing, inputs: PollInputs, observed: datetime) -> PollPlan:
    """The poll's plan for the list observed at ``observed``: PJSIP contacts become peers
    (by each device's qualify limit) beside chan_sip's, then status.plan_cycle's rules."""
    peers: Sequence[Peer] = listing.peers
    if listing.contacts is not None:
        from_contacts = pjsip.peers_from_contacts(listing.contacts, inputs.qualify)
        peers = pjsip.merge_sources(peers, from_contacts) if peers else from_contacts
    plan = plan_cycle(
        rules.server_id,
        peers,
        inputs.devices,
        inputs.states,
        observed,
        rules.unknown_after,
        recent_counts=inputs.recent_counts,
        flap=rules.flap,
        sample_latency=inputs.sample_latency,
    )
    return PollPlan(
        plan=plan,
        wrong=wrong_server_records(plan.unmatched_peers, inputs.elsewhere, rules.server_id),
        contact_sets=pjsip.contact_sets(inputs.devices, listing.contacts or {}),
    )


# --- an event batch ----------------------------------------------------------------


@dataclass(frozen=True)
class BatchInputs:
    """What an event batch reads in its transaction (store.load_batch_inputs)."""

    devices: Sequence[Device] = ()
    states: Mapping[int, DeviceState] = field(default_factory=dict)
    #: transition times of each device within the flap window before the first event
    recent_times: Mapping[int, Sequence[datetime]] = field(default_factory=dict)
    #: the stored contacts of the devices (read only when the batch has ContactStatus)
    contacts: Mapping[int, Sequence[Contact]] = field(default_factory=dict)
    #: when the last poll observed its list: an older event is no news
    not_before: Optional[datetime] = None


@dataclass(frozen=True)
class BatchPlan:
    """Everything one event batch writes."""

    plan: Plan
    contact_sets: Mapping[int, Sequence[Contact]]


def plan_batch(
    rules: Rules,
    observations: Sequence[Observation],
    contact_events: Sequence[tuple[datetime, ContactEvent]],
    inputs: BatchInputs,
) -> BatchPlan:
    """The batch's plan: ContactStatus events move the stored contacts, whose combined
    status joins the chan_sip observations in time order for status.plan_events."""
    batch = list(observations)
    contact_sets: dict[int, list[Contact]] = {}
    if contact_events:
        combined, contact_sets = pjsip.apply_contact_events(
            inputs.devices, inputs.contacts, contact_events, inputs.not_before
        )
        batch.extend(combined)
        batch.sort(key=lambda observation: observation.at)
        latest = max(at for at, _ in contact_events)
        # the last observation wins: contacts a newer poll wrote stay as it wrote them
        contact_sets = {
            device_id: contacts
            for device_id, contacts in contact_sets.items()
            if not observed_later(inputs.states.get(device_id), latest)
        }
    plan = plan_events(
        rules.server_id,
        batch,
        inputs.devices,
        inputs.states,
        rules.unknown_after,
        recent_times=inputs.recent_times,
        flap=rules.flap,
        not_before=inputs.not_before,
    )
    return BatchPlan(plan=plan, contact_sets=contact_sets)
