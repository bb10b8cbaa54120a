"""``mor-retrieve-peers --watch``: apply chan_sip's PeerStatus and res_pjsip's ContactStatus
events as they happen.

One long-running AMI session, logged in with ``Events: system`` (PeerStatus is
a system-class event; the session gets no call events). Events are collected
for ``BATCH_WINDOW`` seconds and applied in one transaction, under the same
named lock and by the same rules as the cron poll (``status.plan_events``):
only this server's SIP devices of that name, exact GUI strings, no re-homing,
a transition row and the flapping flag on every change of colour, webhooks
after the commit. The cron poll stays the reconciler: an event lost while the
listener was disconnected is healed by the next poll, and whichever observed
a device last wins (``mor_regstatus_devices.observed_at``).

A ``ContactStatus`` event (PJSIP) moves one contact of an endpoint: it is applied
to the device's stored contacts (``mor_regstatus_contacts``), which are then
combined into the device's status by the poll's rules (mor_plugin.pjsip), so that
one unreachable contact of a device with another reachable one leaves it OK.

Watchdog: a ``Ping`` every ``watch_ping_interval`` seconds whose answer must
come within ``ami_timeout``; silence, a dropped connection or any AMI error
closes the session and reconnects after a capped exponential backoff (1 s,
2 s, 4 s ... 60 s; back to 1 s after a session that got its first Pong). A
refused login ends the listener at once with exit code 3: retrying a wrong
secret only fills Asterisk's security log (systemd's ``RestartSec`` decides
when to try again). Each heartbeat writes ``listener_connected``,
``listener_seen`` and ``listener_since`` into ``mor_regstatus_servers``.
SIGTERM or SIGINT: the pending events are written, the state says
disconnected, exit 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any, Callable, Optional, TypeVar

from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

from . import ami, notify, store, textfile
from .ami import AmiAuthError, AmiEndpoint, AmiError
from .config import Settings
from .pjsip import ContactEvent, contact_event_from_fields
from .plans import Rules, plan_batch
from .status import (
    UNKNOWN,
    KnownStatus,
    Observation,
    Plan,
    kind_of,
    needs_peer_lookup,
    peer_event_from_fields,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Events arriving within this many seconds are written in one transaction.
BATCH_WINDOW = 0.15
#: After a chan_sip Registered event, when to ask SIPshowpeer for the qualify answer
#: (seconds after the previous ask; chan_sip sends no event for the first answer). The
#: last ask comes after twice chan_sip's default qualify limit.
LOOKUPS_AFTER_REGISTERED = (0.3, 0.7, 1.5, 2.5)
FIRST_BACKOFF = 1.0
MAX_BACKOFF = 60.0

EXIT_OK = 0
EXIT_AMI = 3


class Listener:
    """The event loop side of ``--watch``; database work runs in one worker thread."""

    def __init__(
        self,
        settings: Settings,
        endpoint: AmiEndpoint,
        engine: Engine,
        *,
        utc_now: Callable[[], datetime],
        first_backoff: float = FIRST_BACKOFF,
        max_backoff: float = MAX_BACKOFF,
    ) -> None:
        self.settings = settings
        self.endpoint = endpoint
        self.engine = engine
        self.utc_now = utc_now
        self.first_backoff = first_backoff
        self.max_backoff = max_backoff
        self.stop = asyncio.Event()
        self.rules = Rules.of(settings)
        self.hook = notify.webhook_from(settings)
        self._pending: list[Observation] = []
        self._pending_contacts: list[tuple[datetime, ContactEvent]] = []
        self._arrived = asyncio.Event()
        self._manager: Optional[Any] = None  # the AMI session, for SIPshowpeer look-ups
        self._lookups: set[asyncio.Future[None]] = set()
        self._db = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mor-watch-db")
        self._webhooks = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mor-watch-hook")
        #: sessions opened, events applied, batches written (for logs and tests)
        self.sessions = 0
        self._healthy = False
        self.events_applied = 0
        self.batches = 0

    # -- life cycle -------------------------------------------------------------

    async def run(self) -> int:
        """Listen until ``stop`` is set; returns the exit code."""
        backoff = self.first_backoff
        try:
            while not self.stop.is_set():
                self._healthy = False
                try:
                    await self._session()
                except AmiAuthError as err:
                    log.error("listener stops: %s", err)
                    await self._mark(False)
                    return EXIT_AMI
                except AmiError as err:
                    log.warning("listener: %s", err)
                except OSError as err:
                    log.warning("listener: connection error: %s", err.strerror or err)
                await self._mark(False)
                if self.stop.is_set():
                    break
                if self._healthy:
                    backoff = self.first_backoff
                log.info("listener reconnects in %g s", backoff)
                await self._sleep(backoff)
                backoff = min(backoff * 2, self.max_backoff)
            return EXIT_OK
        finally:
            self._db.shutdown(wait=True)
            self._webhooks.shutdown(wait=True)

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.stop.wait(), seconds)

    async def _session(self) -> None:
        """One AMI session until stop (returns) or failure (raises)."""
        manager = await ami.open_event_session(self.endpoint, self._on_event)
        self._manager = manager
        self.sessions += 1
        writer = asyncio.ensure_future(self._write_batches())
        stopping: asyncio.Future[Any] = asyncio.ensure_future(self.stop.wait())
        closed: asyncio.Future[Any] = ami.connection_closed(manager)
        try:
            log.info(
                "listener connected to %s:%d (server_id %s)",
                self.endpoint.host,
                self.endpoint.port,
                self.settings.server_id,
            )
            await self._mark(True)
            while True:
                done, _ = await asyncio.wait(
                    {stopping, closed},
                    timeout=self.settings.watch_ping_interval,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                if stopping in done:
                    return
                if closed in done:
                    raise AmiError("Asterisk closed the AMI event connection")
                await ami.ping(manager, self.endpoint)
                self._healthy = True  # a later failure starts the backoff afresh
                await self._heartbeat()
        finally:
            stopping.cancel()
            self._manager = None
            for lookup in list(self._lookups):
                lookup.cancel()
            ami.close(manager)
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer
            await self._flush()

    # -- events -----------------------------------------------------------------

    def _on_event(self, fields: Mapping[str, str]) -> None:
        if str(fields.get("Event", "")).strip().lower() == "contactstatus":  # res_pjsip
            contact = contact_event_from_fields(fields)
            if contact is None:
                return
            self._pending_contacts.append((self.utc_now(), contact))
            self._arrived.set()
            return
        event = peer_event_from_fields(fields, self.utc_now())
        if event is None:
            return
        if needs_peer_lookup(event):
            registered = event.status == "Registered"
            lookup = asyncio.ensure_future(self._look_up(event.name, registered))
            self._lookups.add(lookup)
            lookup.add_done_callback(self._lookups.discard)
            if not registered:
                return  # no figure to store until Asterisk says it
        self._pending.append(event)
        self._arrived.set()

    async def _look_up(self, name: str, registered: bool) -> None:
        """Ask Asterisk (``SIPshowpeer``) for the status string an event left unknown, and
        apply it as an observation of its own; after Registered, until the qualify answer
        is in. A failed ask is logged: the next poll heals the device."""
        for delay in LOOKUPS_AFTER_REGISTERED if registered else (0.0,):
            await asyncio.sleep(delay)
            manager = self._manager
            if manager is None:
                return
            try:
                reg_status = await ami.sip_peer_status(manager, self.endpoint, name)
            except AmiError as err:
                log.warning(
                    "listener: status of %s not known (the next poll heals it): %s", name, err
                )
                return
            if reg_status is None:
                return
            if registered and kind_of(reg_status) == UNKNOWN:
                continue  # the qualify answer is not in yet
            self._pending.append(KnownStatus(name, self.utc_now(), reg_status, "SIPshowpeer"))
            self._arrived.set()
            return

    async def _write_batches(self) -> None:
        while True:
            await self._arrived.wait()
            await asyncio.sleep(BATCH_WINDOW)
            await self._flush()

    async def _flush(self) -> None:
        batch, self._pending = self._pending, []
        contacts, self._pending_contacts = self._pending_contacts, []
        self._arrived.clear()
        if contacts:
            await self._in_db(self.apply_batch, batch, contacts)
        elif batch:
            await self._in_db(self.apply_batch, batch)

    def apply_batch(
        self,
        peer_events: list[Observation],
        contact_events: Optional[list[tuple[datetime, ContactEvent]]] = None,
    ) -> None:
        """Write one batch (worker thread); a failure is logged: the poll heals it."""
        settings = self.settings
        contact_events = contact_events or []
        count = len(peer_events) + len(contact_events)
        names = {e.name for e in peer_events} | {e.endpoint for _, e in contact_events}
        earliest = min([e.at for e in peer_events] + [at for at, _ in contact_events])

        def work(conn: Connection) -> Plan:
            inputs = store.load_batch_inputs(
                conn, self.rules, names, earliest, with_contacts=bool(contact_events)
            )
            planned = plan_batch(self.rules, peer_events, contact_events, inputs)
            store.write_batch(conn, settings.server_id, planned, self.utc_now())
            return planned.plan

        try:
            plan = store.in_transaction(
                self.engine,
                work,
                lock=store.write_lock_name(settings.server_id),
                lock_timeout=settings.db_timeout,
            )
        except SQLAlchemyError as err:
            log.warning(
                "listener: %d events not written (the next poll heals them): %s",
                count,
                store.describe_db_error(err),
            )
            return
        self.batches += 1
        self.events_applied += count
        log.debug(
            "listener: %d events, %d devices changed, %d transitions, %d older than stored",
            count,
            len(plan.reg_status_changes),
            len(plan.transitions),
            plan.skipped_newer,
        )
        if plan.transitions and self.hook is not None:
            self._webhooks.submit(
                notify.notify_after_commit, self.engine, self.hook, plan.transitions, self.utc_now()
            )

    # -- heartbeat ----------------------------------------------------------------

    async def _mark(self, connected: bool) -> None:
        await self._in_db(self._record, connected)

    def _record(self, connected: bool) -> None:
        try:
            store.write_listener_state(
                self.engine, self.settings.server_id, connected, self.utc_now()
            )
        except SQLAlchemyError as err:
            log.warning("listener state not recorded: %s", store.describe_db_error(err))
            return
        settings = self.settings
        textfile.export(
            self.engine,
            settings.textfile_dir,
            settings.server_id,
            self.utc_now(),
            settings.listener_silent_after,
        )

    async def _heartbeat(self) -> None:
        await self._mark(True)
        if self.hook is not None:
            self._webhooks.submit(
                notify.notify_after_commit, self.engine, self.hook, (), self.utc_now()
            )

    async def _in_db(self, work: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._db, work, *args)


async def watch(
    settings: Settings, endpoint: AmiEndpoint, engine: Engine, utc_now: Callable[[], datetime]
) -> int:
    """Run the listener until SIGTERM/SIGINT; returns the exit code."""
    listener = Listener(settings, endpoint, engine, utc_now=utc_now)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(signum, listener.stop.set)
    try:
        return await listener.run()
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.remove_signal_handler(signum)
