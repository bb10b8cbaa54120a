"""A poll and an event batch, read and written whole: the first and last of their three
steps (``plans`` decides in between, without I/O), each inside the caller's transaction."""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime

from sqlalchemy.engine import Connection

from ..plans import (
    BatchInputs,
    BatchPlan,
    Listing,
    PollInputs,
    PollPlan,
    Rules,
    listed_elsewhere_candidates,
)
from . import read
from .contacts import load_contacts_of, load_qualify, replace_contacts, write_contacts
from .history import count_recent_transitions, latency_due, load_recent_transitions
from .servers import ServerRun
from .write import write_event_plan, write_plan


def load_poll_inputs(
    conn: Connection,
    rules: Rules,
    listing: Listing,
    observed: datetime,
    now: datetime,
    *,
    own_tables: bool = True,
) -> PollInputs:
    """What a poll's plan needs, read in its transaction. ``own_tables`` False: the
    project's tables do not exist yet (a dry run before the first migration)."""
    server_id = rules.server_id
    devices = read.load_devices(conn, server_id)
    since = observed - rules.flap.window
    return PollInputs(
        devices=devices,
        states=read.load_states(conn, server_id) if own_tables else {},
        recent_counts=count_recent_transitions(conn, server_id, since) if own_tables else {},
        qualify=load_qualify(conn, server_id) if listing.contacts is not None else {},
        elsewhere=read.find_devices_elsewhere(
            conn, listed_elsewhere_candidates(listing, devices), server_id
        ),
        sample_latency=own_tables and latency_due(read.last_success(conn, server_id), now),
    )


def load_batch_inputs(
    conn: Connection,
    rules: Rules,
    names: Collection[str],
    earliest: datetime,
    *,
    with_contacts: bool,
) -> BatchInputs:
    """What an event batch's plan needs: the devices of this server with those names, and
    what is stored of them; nothing more when no device has such a name."""
    devices = read.load_devices_named(conn, rules.server_id, names)
    if not devices:
        return BatchInputs()
    ids = [device.id for device in devices]
    return BatchInputs(
        devices=devices,
        states=read.load_states_of(conn, ids),
        recent_times=load_recent_transitions(conn, rules.server_id, earliest - rules.flap.window),
        contacts=load_contacts_of(conn, ids) if with_contacts else {},
        not_before=read.poll_observed_at(conn, rules.server_id),
    )


def write_poll(conn: Connection, planned: PollPlan, now: datetime, run: ServerRun) -> int:
    """Everything one poll writes, inside its transaction; returns the devices changed.
    The contacts of devices a newer event wrote stay as that event left them."""
    changed = write_plan(conn, run.server_id, planned.plan, planned.wrong, now, run)
    write_contacts(conn, run.server_id, planned.contact_sets, now, leave=planned.plan.left_alone)
    return changed


def write_batch(conn: Connection, server_id: int, planned: BatchPlan, now: datetime) -> int:
    """What an event batch changes, inside its transaction; returns the devices changed."""
    changed = write_event_plan(conn, server_id, planned.plan, now)
    if planned.contact_sets:
        replace_contacts(conn, server_id, planned.contact_sets, now)
    return changed
