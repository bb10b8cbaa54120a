"""``mor-retrieve-peers``: one collector run for this Asterisk server, from cron.

AMI list -> rules -> one database transaction. Exit codes (also in README):
0 done (or another run holds the lock), 1 unexpected error, 2 configuration,
3 Asterisk/AMI, 4 database. Every failure is one line on stderr and in the log.

``--watch`` runs the event listener instead (mor_plugin.listener): it holds
``<lock_file>.watch``, so the cron poll keeps running beside it; it exits 0 on
SIGTERM/SIGINT, 3 when Asterisk refuses its login, 2/4 when it cannot start.
"""

from __future__ import annotations

import argparse
import asyncio
import fcntl
import gc
import io
import json
import logging
import os
import stat
import sys
import textwrap
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Optional

from sqlalchemy.engine import Connection
from sqlalchemy.exc import SQLAlchemyError

from . import __version__, pjsip, store
from .ami import AmiEndpoint, AmiError, PeerList, ServerInfo, get_peer_list
from .atomic import atomic_write
from .config import (
    DEFAULT_CONFIG_PATH,
    DEFAULT_LOCK_FILE,
    DEFAULT_LOG_FILE,
    DEFAULT_STATE_FILE,
    ConfigError,
    Settings,
    load_settings,
)
from .plans import Listing, PollInputs, PollPlan, Rules, plan_poll
from .status import KINDS, Plan

if TYPE_CHECKING:
    from . import notify

log = logging.getLogger("mor_plugin")

EXIT_OK = 0
EXIT_UNEXPECTED = 1
EXIT_CONFIG = 2
EXIT_AMI = 3
EXIT_DATABASE = 4

#: what each exit code means, as README's "Exit codes" table says it (``--help`` lists them)
EXIT_CODES = (
    (EXIT_OK, "done, or another run holds the lock (this one exits quietly)"),
    (EXIT_UNEXPECTED, "unexpected error (the traceback is in the log file)"),
    (
        EXIT_CONFIG,
        "configuration: a bad value in mor.conf, a missing file, an unwritable log or lock path",
    ),
    (
        EXIT_AMI,
        "Asterisk: AMI unreachable, login refused, the peer list cut, hung or inconsistent,"
        " or the channel driver of peer_source absent",
    ),
    (EXIT_DATABASE, "database: unreachable, refused, or failed mid-write (all rolled back)"),
)


class RunFailed(Exception):
    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass
class RunSummary:
    server_id: int
    dry_run: bool
    peers: int = 0
    changed: int = 0
    state_changes: int = 0
    wrong_server: int = 0
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    asterisk_version: Optional[str] = None
    seconds: float = 0.0
    changes: list[str] = field(default_factory=list)
    #: webhook alerts decided after the commit, not sent yet: the caller sends them with
    #: deliver_alerts once it released the run's lock (a slow receiver must not hold it)
    alerts: list[notify.Alert] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {
            "server_id": self.server_id,
            "result": "ok",
            "dry_run": self.dry_run,
            "peers": self.peers,
            "changed": self.changed,
            "state_changes": self.state_changes,
            "wrong_server": self.wrong_server,
            "counts": self.counts,
            "asterisk_version": self.asterisk_version,
            "seconds": round(self.seconds, 3),
        }


def utc_now() -> datetime:
    """Naive UTC, as the project's DATETIME columns hold it."""
    return datetime.now(timezone.utc).replace(tzinfo=None)


def _epilog() -> str:
    """The exit codes as a table, each meaning wrapped under its own column."""
    lines = ["exit codes:"]
    for code, meaning in EXIT_CODES:
        lines += textwrap.wrap(
            meaning, width=79, initial_indent=f"  {code}  ", subsequent_indent=" " * 5
        )
    lines.append("")
    lines += textwrap.wrap(
        "--watch exits 0 on SIGTERM or SIGINT, 3 when Asterisk refuses its login, 2 or 4"
        " when it cannot start. A run that succeeds prints nothing without -v or --json,"
        " so cron mails only failures (and a misspelled key of mor.conf).",
        width=79,
    )
    return "\n".join(lines)


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """The description and epilog as written (the exit codes are a table); option help
    wrapped without breaking a path at its hyphens (``agi-bin``)."""

    def _split_lines(self, text: str, width: int) -> list[str]:
        return textwrap.wrap(" ".join(text.split()), width, break_on_hyphens=False)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mor-retrieve-peers",
        description="Write the registration status of this Asterisk server's SIP devices\n"
        "into the MOR database.",
        epilog=_epilog(),
        formatter_class=_HelpFormatter,
    )
    parser.add_argument(
        "--config",
        type=Path,
        default=DEFAULT_CONFIG_PATH,
        metavar="PATH",
        help="mor.conf to read (default %(default)s)",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="print the changes a run would make and write nothing",
    )
    parser.add_argument(
        "--json", action="store_true", help="print a one-object JSON summary of the run"
    )
    parser.add_argument(
        "--migrate",
        action="store_true",
        help="create or update the project's own tables, then exit",
    )
    parser.add_argument(
        "--watch",
        action="store_true",
        help="run until stopped: apply Asterisk's PeerStatus events as they come "
        "(the cron poll keeps running beside it)",
    )
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="print a one-line summary (cron stays quiet without it)",
    )
    for option, key, default in (
        ("--log-file", "log_file", DEFAULT_LOG_FILE),
        ("--state-file", "state_file", DEFAULT_STATE_FILE),
        ("--lock-file", "lock_file", DEFAULT_LOCK_FILE),
    ):
        parser.add_argument(
            option,
            type=Path,
            metavar="PATH",
            help=f"overrides {key} of mor.conf (default: mor.conf's, else {default})",
        )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser


#: the log file's mode: it names hosts, users, devices and (masked) URLs -- not for everyone
LOG_FILE_MODE = 0o640


class _LogFile(logging.FileHandler):
    """A FileHandler whose file is created with LOG_FILE_MODE whatever the umask, and whose
    existing regular file loses the permissions beyond it (logrotate's ``create 0644``
    or an old collector's file); a narrower mode is kept."""

    #: what _open did to an existing file's mode, for the log
    narrowed: Optional[str] = None

    def _open(self) -> io.TextIOWrapper:
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
        try:
            fd = os.open(self.baseFilename, flags | os.O_EXCL, LOG_FILE_MODE)
            os.fchmod(fd, LOG_FILE_MODE)  # the umask may have taken bits away
        except FileExistsError:
            fd = os.open(self.baseFilename, flags)
            mode = os.fstat(fd).st_mode
            old, new = stat.S_IMODE(mode), stat.S_IMODE(mode) & LOG_FILE_MODE
            if stat.S_ISREG(mode) and old != new:
                try:
                    os.fchmod(fd, new)
                    self.narrowed = f"had mode {old:o}; now {new:o}"
                except OSError as err:
                    self.narrowed = f"has mode {old:o}; cannot narrow it ({err.strerror})"
        return open(fd, "a", encoding=self.encoding, errors=self.errors)  # noqa: SIM115


def _setup_logging(settings: Settings) -> logging.Handler:
    """Log to the file of mor.conf; the caller removes the handler when the run ends."""
    settings.log_file.parent.mkdir(parents=True, exist_ok=True)
    handler = _LogFile(settings.log_file, encoding="utf-8")
    handler.setFormatter(
        logging.Formatter("%(asctime)s [%(process)d] %(levelname)s %(name)s: %(message)s")
    )
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if settings.debug else logging.INFO)
    # Per-message AMI and SQL logs only when mor.conf asks for them.
    logging.getLogger("mor_plugin.ami.wire").setLevel(
        logging.DEBUG if settings.debug else logging.WARNING
    )
    logging.getLogger("sqlalchemy.engine").setLevel(
        logging.INFO if settings.show_sql else logging.WARNING
    )
    if handler.narrowed:
        log.warning(
            "log file %s %s (at most %o)", settings.log_file, handler.narrowed, LOG_FILE_MODE
        )
    return handler


@contextmanager
def _single_run(lock_file: Path) -> Iterator[bool]:
    """True when this process holds the lock; False when another run does."""
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_file, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextmanager
def _without_cyclic_gc() -> Iterator[None]:
    """A run builds a few hundred thousand small objects and no reference cycles worth
    collecting; Python's cycle collector would walk them again and again (~12 % of a
    100k run's CPU). Restored afterwards, for processes that run many times (the demo)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def write_state_file(path: Path, payload: dict[str, Any]) -> None:
    """Atomically replace the state file that the Ansible fact reads."""
    atomic_write(path, json.dumps(payload, indent=2, sort_keys=True) + "\n")


def _previous_success(path: Path) -> Optional[str]:
    try:
        value = json.loads(path.read_text(encoding="utf-8")).get("last_success")
        return value if isinstance(value, str) else None
    except (OSError, ValueError, AttributeError):
        return None


def ami_endpoint(settings: Settings, engine: Any) -> AmiEndpoint:
    """Where and as whom to log in to AMI: mor.conf's user, else manager.conf's, else the
    ``servers`` row of this server (MOR's own record)."""
    username, secret, port = settings.ami_username, settings.ami_secret, settings.ami_port
    if username is None:
        try:
            from_db = store.ami_credentials_from_servers(engine, settings.server_id)
        except SQLAlchemyError as err:
            raise _database_failed(settings, err) from None
        if from_db is None:
            raise RunFailed(
                f"{settings.config_path}: no AMI user -- set ami_username/ami_secret, or add a "
                f"user to {settings.manager_conf}, or fill servers.ami_username for id "
                f"{settings.server_id}",
                EXIT_CONFIG,
            )
        username, secret, db_port = from_db
        port = db_port or port
    return AmiEndpoint(
        host=settings.ami_host,
        port=port,
        username=username,
        secret=secret or "",
        connect_timeout=settings.ami_connect_timeout,
        timeout=settings.ami_timeout,
        list_timeout=settings.ami_list_timeout,
    )


def _describe_changes(inputs: PollInputs, planned: PollPlan) -> list[str]:
    """What a dry run prints: each device's change, each device on the wrong server."""
    by_id = {device.id: device for device in inputs.devices}
    lines = [
        f"device {device_id} {by_id[device_id].name!r}: "
        f"{by_id[device_id].reg_status!r} -> {value!r}"
        for device_id, value in planned.plan.reg_status_changes
    ]
    lines += [
        f"device {w.device_id} {w.peer_name!r} is registered here but assigned to server "
        f"{w.assigned_server_id}: not written"
        for w in planned.wrong
    ]
    return lines


def _database_failed(settings: Settings, err: Exception) -> RunFailed:
    return RunFailed(
        f"database {settings.masked_db_url()}: {store.describe_db_error(err)}", EXIT_DATABASE
    )


@dataclass(frozen=True)
class _Poll:
    """One poll's result: what it read, planned and wrote."""

    inputs: PollInputs
    planned: PollPlan
    #: devices whose reg_status was written (a dry run: would be)
    changed: int


def collect(settings: Settings, *, dry_run: bool = False) -> RunSummary:
    """One run: AMI list, then in one transaction read, plan and write. Raises RunFailed
    with an exit code."""
    started = time.monotonic()
    engine = store.make_engine(settings.db_url, timeout=settings.db_timeout, echo=False)
    try:
        listing, observed, info = _list_peers(settings, engine, dry_run)
        # Asterisk answered: only now touch the database (a failed AMI run writes nothing
        # but its error line into an existing summary row).
        if not dry_run:
            _ensure_schema(settings, engine)
        poll = _poll(settings, engine, listing, observed, info, started, dry_run)
        alerts = [] if dry_run else _after_commit(settings, engine, poll.planned.plan, observed)
    finally:
        if not dry_run:
            _export_textfile(settings, engine)
        engine.dispose()
    plan = poll.planned.plan
    return RunSummary(
        server_id=settings.server_id,
        dry_run=dry_run,
        peers=plan.peers_listed,
        changed=poll.changed,
        state_changes=len(plan.state_changes),
        wrong_server=len(poll.planned.wrong),
        counts=dict(plan.counts),
        asterisk_version=info.asterisk_version,
        seconds=time.monotonic() - started,
        changes=_describe_changes(poll.inputs, poll.planned) if dry_run else [],
        alerts=alerts,
    )


def _list_peers(
    settings: Settings, engine: Any, dry_run: bool
) -> tuple[Listing, datetime, ServerInfo]:
    """Asterisk's peer list, when it was observed (a device the listener wrote later is
    left alone), and what Asterisk said of itself."""
    endpoint = ami_endpoint(settings, engine)
    try:
        listed: PeerList = get_peer_list(endpoint, settings.peer_source)
        observed = utc_now()
    except AmiError as err:
        if not dry_run:
            store.record_failure(engine, settings.server_id, utc_now(), f"AMI: {err}")
        raise RunFailed(str(err), EXIT_AMI) from None
    contacts = None if listed.contacts is None else pjsip.group_by_endpoint(listed.contacts)
    log.debug(
        "AMI listed %d chan_sip peers and %s PJSIP contacts of %d endpoints "
        "(source %s, Asterisk %s, AMI %s)",
        len(listed.peers),
        "no" if listed.contacts is None else len(listed.contacts),
        len(contacts or ()),
        listed.source,
        listed.info.asterisk_version,
        listed.info.ami_version,
    )
    return Listing(listed.peers, contacts), observed, listed.info


def _ensure_schema(settings: Settings, engine: Any) -> None:
    try:
        applied = store.ensure_schema(engine, utc_now())
    except (SQLAlchemyError, store.StoreError) as err:
        raise _database_failed(settings, err) from None
    if applied:
        log.info("database migrated to version %s", applied[-1])


def _poll(
    settings: Settings,
    engine: Any,
    listing: Listing,
    observed: datetime,
    info: ServerInfo,
    started: float,
    dry_run: bool,
) -> _Poll:
    """The poll's transaction, under the server's write lock: read, plan, write (a dry
    run stops after the plan)."""
    rules = Rules.of(settings)

    def work(conn: Connection) -> _Poll:
        now = utc_now()
        # a writing run migrated before; only a dry run may meet a database without our tables
        own_tables = not dry_run or bool(store.schema_version(conn))
        inputs = store.load_poll_inputs(conn, rules, listing, observed, now, own_tables=own_tables)
        if dry_run:  # nothing is written: no latency samples to take
            inputs = replace(inputs, sample_latency=False)
        planned = plan_poll(rules, listing, inputs, observed)
        if dry_run:
            return _Poll(inputs, planned, len(planned.plan.reg_status_changes))
        run = _server_run(settings, planned, info, now, observed, started)
        changed = store.write_poll(conn, planned, now, run)
        plan = planned.plan
        log.debug(
            "SQL: %d reg_status changes, %d state rows, %d forgotten, %d wrong-server, "
            "%d transitions, %d left to newer events",
            len(plan.reg_status_changes),
            len(plan.state_changes),
            len(plan.forgotten_device_ids),
            len(planned.wrong),
            len(plan.transitions),
            plan.skipped_newer,
        )
        return _Poll(inputs, planned, changed)

    try:
        return store.in_transaction(
            engine,
            work,
            lock=store.write_lock_name(settings.server_id),
            lock_timeout=settings.db_timeout,
        )
    except SQLAlchemyError as err:
        failed = _database_failed(settings, err)
        if not dry_run:
            store.record_failure(engine, settings.server_id, utc_now(), str(failed))
        raise failed from None


def _server_run(
    settings: Settings,
    planned: PollPlan,
    info: ServerInfo,
    now: datetime,
    observed: datetime,
    started: float,
) -> store.ServerRun:
    """The server's summary row of this run."""
    plan = planned.plan
    return store.ServerRun(
        server_id=settings.server_id,
        at=now,
        duration_ms=int((time.monotonic() - started) * 1000),
        peers=plan.peers_listed,
        changed=len(plan.reg_status_changes),
        counts=dict(plan.counts),
        wrong_server=len(planned.wrong),
        asterisk_version=info.asterisk_version,
        uptime=info.uptime,
        observed_at=observed,
    )


def _after_commit(
    settings: Settings, engine: Any, plan: Plan, observed: datetime
) -> list[notify.Alert]:
    """Latency samples, purging and the webhook alerts due (returned, to be sent after the
    lock is released): outside the run's transaction, and none of them fails a run whose
    statuses are written (each logs its own failure)."""
    try:
        if plan.latency_samples:
            with engine.begin() as conn:
                written = store.write_latency_samples(conn, observed, plan.latency_samples)
            log.debug("latency: %d samples written", written)
        history, latency = store.purge_old(engine, utc_now(), settings.history_days)
        if history or latency:
            log.info("purged %d history rows and %d latency rows", history, latency)
    except SQLAlchemyError as err:
        log.warning("latency samples or purge failed: %s", store.describe_db_error(err))
    hook = _webhook(settings)
    if hook is None:
        return []
    from . import notify

    return notify.due_after_commit(engine, hook, plan.transitions, utc_now())


def _webhook(settings: Settings) -> Optional[notify.Webhook]:
    """The configured webhook, if any. The webhook code (and what it imports) loads only
    when mor.conf sets one: most runs have none, and cron pays every import."""
    if not settings.webhook_url:
        return None
    from . import notify

    return notify.webhook_from(settings)


def _export_textfile(settings: Settings, engine: Any) -> None:
    """The node_exporter textfile, when mor.conf asks for one (loaded only then)."""
    if settings.textfile_dir is None:
        return
    from . import textfile

    textfile.export(
        engine,
        settings.textfile_dir,
        settings.server_id,
        utc_now(),
        settings.listener_silent_after,
    )


def deliver_alerts(settings: Settings, alerts: Sequence[notify.Alert]) -> int:
    """Send what a run decided (within ``webhook_timeout`` in all) and record it; never
    raises. Returns the alerts delivered."""
    hook = _webhook(settings)
    if hook is None or not alerts:
        return 0
    from . import notify

    engine = store.make_engine(settings.db_url, timeout=settings.db_timeout, echo=False)
    try:
        return notify.deliver(engine, hook, alerts, utc_now())
    except Exception:  # noqa: BLE001 - a webhook never fails a run whose statuses are written
        log.exception("webhook delivery failed unexpectedly")
        return 0
    finally:
        engine.dispose()


def _state_payload(
    settings: Settings, result: str, summary: Optional[RunSummary], previous_success: Optional[str]
) -> dict[str, Any]:
    now = datetime.now(timezone.utc).replace(microsecond=0).isoformat()
    return {
        "version": __version__,
        "server_id": settings.server_id,
        "last_run": now,
        "last_success": now if result == "ok" else previous_success,
        "last_result": result,
        "duration_s": round(summary.seconds, 3) if summary else None,
        "peers": summary.peers if summary else None,
        "changed": summary.changed if summary else None,
        "counts": summary.counts if summary else None,
    }


def _fail(message: str, code: int, stream: IO[str]) -> int:
    print(f"mor-retrieve-peers: {message}", file=stream)
    return code


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = load_settings(
            args.config,
            log_file=args.log_file,
            state_file=args.state_file,
            lock_file=args.lock_file,
        )
    except ConfigError as err:
        return _fail(str(err), EXIT_CONFIG, sys.stderr)
    # a misspelled key has no effect: said on stderr (cron mails it) on every run until fixed
    for warning in settings.misspelled_keys:
        print(f"mor-retrieve-peers: {warning}", file=sys.stderr)
    try:
        handler = _setup_logging(settings)
    except OSError as err:
        return _fail(
            f"{settings.log_file}: cannot write the log ({err.strerror}) "
            "-- set log_file or --log-file",
            EXIT_CONFIG,
            sys.stderr,
        )
    for warning in settings.warnings:
        log.warning("%s", warning)
    # the listener has a lock of its own: it must not keep the cron poll from running
    lock_file = watch_lock_file(settings) if args.watch else settings.lock_file
    try:
        try:
            with _single_run(lock_file) as mine:
                if not mine:
                    log.info("another run holds %s; this one exits", lock_file)
                    if args.verbose or args.json or args.watch:
                        print(f"another mor-retrieve-peers run holds {lock_file}; nothing to do")
                    return EXIT_OK
                if args.watch:
                    return _watch(settings)
                code, alerts = _run(args, settings)
        except OSError as err:
            return _fail(
                f"{settings.lock_file}: cannot take the lock ({err.strerror}) "
                "-- set lock_file or --lock-file",
                EXIT_CONFIG,
                sys.stderr,
            )
        # the lock is released: the next cron run collects even while a receiver is slow
        deliver_alerts(settings, alerts)
        return code
    finally:
        # main() may run many times in one process (the demo's loop, tests)
        logging.getLogger().removeHandler(handler)
        handler.close()


def watch_lock_file(settings: Settings) -> Path:
    """The event listener's lock: ``<lock_file>.watch``."""
    return settings.lock_file.with_name(settings.lock_file.name + ".watch")


def _watch(settings: Settings) -> int:
    """``--watch``: the event listener until SIGTERM/SIGINT (see mor_plugin.listener)."""
    engine = store.make_engine(settings.db_url, timeout=settings.db_timeout)
    try:
        endpoint = ami_endpoint(settings, engine)
        _ensure_schema(settings, engine)
        from . import listener  # only the long-running mode needs it

        log.info("listener started (server_id %s)", settings.server_id)
        code = asyncio.run(listener.watch(settings, endpoint, engine, utc_now))
        log.info("listener stopped (exit %d)", code)
        if code != EXIT_OK:
            print("mor-retrieve-peers: listener stopped: AMI login refused", file=sys.stderr)
        return code
    except RunFailed as err:
        log.error("listener failed: %s", err)
        return _fail(str(err), err.exit_code, sys.stderr)
    except SQLAlchemyError as err:
        failed = _database_failed(settings, err)
        log.error("listener failed: %s", failed)
        return _fail(str(failed), failed.exit_code, sys.stderr)
    except Exception as err:  # noqa: BLE001 - one line for systemd, the traceback for the log
        log.exception("listener failed unexpectedly")
        message = f"unexpected {type(err).__name__}: {err} (traceback in {settings.log_file})"
        return _fail(message, EXIT_UNEXPECTED, sys.stderr)
    finally:
        engine.dispose()


def _migrate(settings: Settings) -> int:
    """``--migrate``: the project's tables created or brought up to date."""
    try:
        engine = store.make_engine(settings.db_url, timeout=settings.db_timeout)
        try:
            applied = store.migrate(engine, utc_now())
        finally:
            engine.dispose()
    except (SQLAlchemyError, store.StoreError) as err:
        failed = _database_failed(settings, err)
        log.error("migration failed: %s", failed)
        return _fail(str(failed), failed.exit_code, sys.stderr)
    text = (
        f"migrated to schema version {applied[-1]}"
        if applied
        else f"schema already at version {store.LATEST_VERSION}"
    )
    log.info("%s", text)
    print(text)
    return EXIT_OK


def _run(args: argparse.Namespace, settings: Settings) -> tuple[int, list[notify.Alert]]:
    """The run under the lock: its exit code and the webhook alerts to send after it."""
    if args.migrate:
        return _migrate(settings), []
    log.info(
        "run started (server_id %s, %s)",
        settings.server_id,
        "dry run" if args.dry_run else "writing",
    )
    previous_success = _previous_success(settings.state_file)
    try:
        with _without_cyclic_gc():
            summary = collect(settings, dry_run=args.dry_run)
    except RunFailed as err:
        log.error("run failed: %s", err)
        if not args.dry_run:
            _save_state(settings, str(err), None, previous_success)
        return _fail(str(err), err.exit_code, sys.stderr), []
    except Exception as err:  # noqa: BLE001 - one line for cron, the traceback for the log
        log.exception("run failed unexpectedly")
        message = f"unexpected {type(err).__name__}: {err} (traceback in {settings.log_file})"
        if not args.dry_run:
            _save_state(settings, message, None, previous_success)
        return _fail(message, EXIT_UNEXPECTED, sys.stderr), []

    log.info(
        "run finished in %.2f s: %d peers, %d devices changed, counts %s",
        summary.seconds,
        summary.peers,
        summary.changed,
        " ".join(f"{k}={v}" for k, v in summary.counts.items()),
    )
    if not args.dry_run:
        _save_state(settings, "ok", summary, previous_success)
    if args.dry_run and not args.json:
        for line in summary.changes:
            print(line)
        print(f"dry run: {summary.changed} of the server's devices would change; nothing written")
    if args.json:
        print(json.dumps(summary.as_json(), sort_keys=True))
    elif args.verbose:
        print(
            f"server {summary.server_id}: {summary.peers} peers, {summary.changed} devices "
            f"changed in {summary.seconds:.2f} s"
        )
    return EXIT_OK, summary.alerts


def _save_state(
    settings: Settings, result: str, summary: Optional[RunSummary], previous_success: Optional[str]
) -> None:
    try:
        write_state_file(
            settings.state_file, _state_payload(settings, result, summary, previous_success)
        )
    except OSError as err:
        log.error("cannot write the state file %s: %s", settings.state_file, err.strerror)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
