"""``make demo``: the whole product on one machine, with nothing to set up.

A SQLite database with MOR-shaped tables, the AMI simulator (a few hundred SIP
peers in every status), the collector every few seconds, and one web server
with mock MOR pages that embed the widget at ``/mor-status/`` exactly as the
real MOR GUI would: signed ``<img>`` bullets in the device lists, the legend
iframe on a user's devices, the status iframe on the device edit page.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import random
import secrets
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Optional

from flask import Flask, abort, redirect, render_template, request, url_for
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError
from werkzeug.middleware.dispatcher import DispatcherMiddleware
from werkzeug.serving import BaseWSGIServer, get_sockaddr, make_server, select_address_family

from mor_plugin import schema, store
from mor_plugin.status import LAGGED, OK, Transition, kind_of, plain_digits

from . import bullets, create_app
from .signing import sign_url

log = logging.getLogger(__name__)

WIDGET_PREFIX = "/mor-status"
PAGE_SIZE = 50
LINK_LIFETIME = 12 * 3600  # how long a page's signed widget links stay valid
USERS = {2: "Acme Telecom", 3: "Baltic Bakery", 4: "City Clinic"}
SERVERS = {1: "asterisk-1 (simulated)", 2: "asterisk-2 (no collector)"}
NEVER_REGISTERED = "demo-never-registered"
WRONG_SERVER = "demo-roamer"


# ---------------------------------------------------------------- the mock MOR GUI


class WidgetLinks:
    """Links to the widget at ``base`` as MOR's pages write them: signed with the shared
    secret, valid for ``LINK_LIFETIME``."""

    def __init__(self, base: str, secret: Optional[str]) -> None:
        self.base = base
        self.secret = secret

    def __call__(self, path: str) -> str:
        if self.secret:
            path = sign_url(path, self.secret, int(time.time()) + LINK_LIFETIME)
        return self.base + path

    def template_helpers(self) -> dict[str, Any]:
        return {
            "widget": self,
            # embed.js holds no device data: not signed, one URL for every page to cache
            "embed_js": self.base + "/embed.js",
            "status_words": status_words,
            "users": USERS,
            "servers": SERVERS,
        }


def status_words(reg_status: Optional[str]) -> tuple[str, str]:
    """A bullet's alt text and tooltip, from the status MOR's own row holds."""
    kind = kind_of(reg_status)
    return reg_status or bullets.LABELS[kind], bullets.tooltip(kind, reg_status)


def page_number() -> int:
    """The page asked for (``?page=`` from 1), counted from 0."""
    number = plain_digits(request.args.get("page", "1"))
    return max(0, number - 1) if number is not None else 0


def page_of(engine: Engine, where: Any, page: int) -> tuple[list[Any], int]:
    """The devices of one page of a list, and how many pages it has."""
    d = schema.devices
    with engine.connect() as conn:
        total = conn.execute(select(func.count()).select_from(d).where(where)).scalar_one()
        rows = conn.execute(
            select(d).where(where).order_by(d.c.id).limit(PAGE_SIZE).offset(page * PAGE_SIZE)
        ).all()
    return list(rows), max(1, -(-int(total) // PAGE_SIZE))


def device_list(
    engine: Engine, widget: WidgetLinks, title: str, where: Any, legend_path: str
) -> str:
    """A device list; ``?bullets=script`` draws its bullets with embed.js from one signed
    JSON request instead of one signed ``<img>`` per row."""
    page = page_number()
    rows, pages = page_of(engine, where, page)
    by_script = request.args.get("bullets") == "script"
    ids = ",".join(str(row.id) for row in rows)
    return render_template(
        "demo_devices.html",
        title=title,
        rows=rows,
        page=page + 1,
        pages=pages,
        legend_url=widget(legend_path),
        bullets_api=widget(f"/api/v1/devices/status?ids={ids}") if by_script and ids else None,
        page_query="bullets=script&" if by_script else "",
    )


def create_mor_app(db_url: str, widget_base: str, secret: Optional[str]) -> Flask:
    """Mock pages of MOR's GUI that embed the widget found at ``widget_base``.

    ``widget_base`` is ``/mor-status`` when MOR proxies the widget, or another
    origin (``http://127.0.0.2:8081``) in the browser test.
    """
    app = Flask(__name__)
    engine = create_engine(db_url, pool_pre_ping=True)
    widget = WidgetLinks(widget_base, secret)
    app.context_processor(widget.template_helpers)
    d = schema.devices

    @app.get("/")
    def home() -> Any:
        return redirect(url_for("devices_all"))

    @app.get("/billing/devices/devices_all")
    def devices_all() -> Any:
        return device_list(engine, widget, "Devices", d.c.id > 0, "/devices/status")

    @app.get("/billing/devices/show_devices/<int:user_id>")
    def show_devices(user_id: int) -> Any:
        title = f"Devices of {USERS.get(user_id, user_id)}"
        legend = f"/users/{user_id}/devices/status"
        return device_list(engine, widget, title, d.c.user_id == user_id, legend)

    @app.get("/billing/devices/device_edit/<int:device_id>")
    def device_edit(device_id: int) -> Any:
        with engine.connect() as conn:
            row = conn.execute(select(d).where(d.c.id == device_id)).first()
        if row is None:
            abort(404)
        return render_template("demo_device_edit.html", title=f"Device {row.name}", row=row)

    @app.get("/billing/registration_status/servers")
    def servers_page() -> Any:
        """The widget's servers page inside MOR's own page, so its top bar stays."""
        return render_template("demo_servers.html", title="Registration status: servers")

    return app


# ---------------------------------------------------------------- the world behind it


def demo_peers(count: int) -> list[Any]:
    """The simulator's peers: a realistic mix, one of each status guaranteed, the roamer."""
    from mor_plugin.simulator import SimPeer, realistic_peers

    peers = realistic_peers(count, seed=7, prefix="demo")
    for peer, status in zip(
        peers, ("OK (18 ms)", "LAGGED (2620 ms)", "UNREACHABLE", "UNKNOWN", "Unmonitored")
    ):
        peer.status = status
        if status == "UNKNOWN":
            peer.ip, peer.port = None, 0
    # assigned to server 2 in MOR, but it registers here: the wrong-server diagnostic
    peers.append(SimPeer(WRONG_SERVER, "OK (31 ms)", "203.0.113.50", 5060))
    return peers


def seed_database(db_url: str, peers: Sequence[Any]) -> None:
    """MOR's tables with one SIP device per peer, plus the never-registered one."""
    engine = create_engine(db_url)
    with engine.begin() as conn:
        conn.execute(text("PRAGMA journal_mode=WAL"))  # readers never wait for the collector
    schema.mor_metadata.create_all(engine)
    user_ids = sorted(USERS)
    rows = [
        {
            "id": number,
            "name": peer.name,
            "device_type": "SIP",
            "user_id": user_ids[number % len(user_ids)],
            "server_id": 2 if peer.name == WRONG_SERVER else 1,
            "qualify": "no" if peer.status == "Unmonitored" else "yes",
            "description": peer.description or f"Phone {number}",
            "reg_status": None,
        }
        for number, peer in enumerate(peers, start=1)
    ]
    rows.append(
        {
            "id": len(rows) + 1,
            "name": NEVER_REGISTERED,
            "device_type": "SIP",
            "user_id": user_ids[0],
            "server_id": 1,
            "qualify": "yes",
            "description": "Never plugged in",
            "reg_status": None,
        }
    )
    with engine.begin() as conn:
        conn.execute(schema.servers.delete())
        conn.execute(schema.devices.delete())
        conn.execute(
            schema.servers.insert(),
            [
                {"id": 1, "server_ip": "127.0.0.1", "hostname": "asterisk-1"},
                {"id": 2, "server_ip": "192.0.2.2", "hostname": "asterisk-2"},
            ],
        )
        conn.execute(schema.devices.insert(), rows)
    engine.dispose()


#: (hours ago, from, to) of the past day shown on the first devices before the collector
#: has a history of its own: a red hour, a yellow spell, a short blip
DEMO_CHANGES = (
    (20.0, "ok", "unreachable"),
    (19.0, "unreachable", "ok"),
    (9.0, "ok", "lagged"),
    (8.2, "lagged", "ok"),
    (3.05, "ok", "unreachable"),
    (3.0, "unreachable", "ok"),
)


def seed_history(db_url: str, devices: int = 5, now: Optional[datetime] = None) -> None:
    """A past day of changes and latency samples for the first few devices that are OK now
    (hours before this one), so the status strip and sparkline show something at once;
    written by the collector's own writers."""
    now = now or datetime.now(timezone.utc).replace(tzinfo=None)
    this_hour = now.replace(minute=0, second=0, microsecond=0)
    engine = create_engine(db_url)
    d = schema.devices
    try:
        with engine.begin() as conn:
            device_ids = list(
                conn.execute(
                    select(d.c.id).where(d.c.reg_status.like("OK%")).order_by(d.c.id).limit(devices)
                ).scalars()
            )
            store.write_history(conn, demo_changes(device_ids, this_hour))
            for at, samples in demo_latency_samples(device_ids, this_hour).items():
                store.write_latency_samples(conn, at, samples)
            # their colour began with the last seeded change, as a collector would record it
            began = this_hour - timedelta(hours=DEMO_CHANGES[-1][0])
            states = store.load_states_of(conn, device_ids).values()
            store.write_states(conn, [replace(state, since=began) for state in states])
    except SQLAlchemyError as error:  # a collector without history tables: nothing to show
        log.warning("no demo history: %s", str(error).splitlines()[0])
    finally:
        engine.dispose()


def demo_changes(device_ids: Sequence[int], this_hour: datetime) -> list[Transition]:
    """``DEMO_CHANGES`` of each device, as the collector's poll would have logged them."""
    changes = []
    for device_id in device_ids:
        for hours_ago, old, new in DEMO_CHANGES:
            ms = {OK: 20 + device_id, LAGGED: 2300}.get(new)
            changes.append(
                Transition(
                    device_id=device_id,
                    server_id=1,
                    at=this_hour - timedelta(hours=hours_ago),
                    from_status=old,
                    to_status=new,
                    reg_status=f"{new.upper()} ({ms} ms)" if ms is not None else new.upper(),
                    latency_ms=ms,
                    source="poll",
                )
            )
    return changes


def demo_latency_samples(
    device_ids: Sequence[int], this_hour: datetime
) -> dict[datetime, list[int]]:
    """Every 5 minutes of the 24 hours before ``this_hour``: device_id, ms, device_id, ms, ...
    of the devices, as the collector samples them (none in the red hour, 400 ms in the
    yellow one)."""
    rng = random.Random(7)  # noqa: S311 (demo data)
    samples: dict[datetime, list[int]] = {}
    for device_id in device_ids:
        for hours_ago in range(24, 0, -1):
            if 19 <= hours_ago < 20:
                continue  # unreachable: no answers, no samples
            hour = this_hour - timedelta(hours=hours_ago)
            base = 400 if 8 < hours_ago <= 9 else 20 + device_id
            for second in range(0, 3600, 300):
                at = hour + timedelta(seconds=second)
                samples.setdefault(at, []).extend((device_id, base + rng.randint(0, 15)))
    return samples


def write_mor_conf(data_dir: Path, db_url: str, ami_port: int, username: str, secret: str) -> Path:
    conf = data_dir / "mor.conf"
    conf.write_text(
        "# written by widget.demo for the collector\n"
        f"db_url = {db_url}\n"
        "server_id = 1\n"
        "ami_host = 127.0.0.1\n"
        f"ami_port = {ami_port}\n"
        f"ami_username = {username}\n"
        f"ami_secret = {secret}\n"
        f"manager_conf = {data_dir / 'manager.conf'}\n"
        f"log_file = {data_dir / 'collector.log'}\n"
        f"state_file = {data_dir / 'collector.state.json'}\n"
        f"lock_file = {data_dir / 'collector.lock'}\n"
    )
    conf.chmod(0o600)
    return conf


def run_collector(conf: Path) -> int:
    """One collector run, as cron would start it."""
    from mor_plugin import cli

    return cli.main(["--config", str(conf)])


@contextmanager
def collector_loop(conf: Path, interval: float) -> Iterator[None]:
    """The collector every ``interval`` seconds in a thread, until the block ends."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(interval):
            code = run_collector(conf)
            if code:
                log.warning("collector run exited with %d (see %s)", code, conf.parent)

    thread = threading.Thread(target=loop, name="collector", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(30)


def demo_app(db_url: str, secret: str, stale_after: int = 60) -> Flask:
    """The mock MOR pages with the widget mounted at ``/mor-status``, as MOR's proxy would."""
    widget = create_app(
        {
            "MOR_WIDGET_DB_URL": db_url,
            "MOR_WIDGET_SECRET": secret,
            "MOR_WIDGET_REFRESH": 5,
            "MOR_WIDGET_STALE_AFTER": stale_after,
        }
    )
    mor = create_mor_app(db_url, WIDGET_PREFIX, secret)
    # (Flask's way to add WSGI middleware, which mypy takes for overwriting a method)
    mor.wsgi_app = DispatcherMiddleware(  # type: ignore[method-assign]
        mor.wsgi_app, {WIDGET_PREFIX: widget}
    )
    return mor


#: what stops the demo: Ctrl-C, and the SIGTERM of a service manager or of make (which
#: passes a SIGTERM it gets on to the demo, so one stop may bring two)
STOP_SIGNALS = frozenset({signal.SIGINT, signal.SIGTERM})


def block_stop_signals() -> None:
    """Keep :data:`STOP_SIGNALS` from this thread and every thread it starts from now on.

    The main thread takes the first with :func:`signal.sigwait` and stops everything
    itself: no exception lands in the middle of a thread's join. Later ones stay pending,
    never delivered, however far the process is in exiting (they are never unblocked:
    this is for the process's own ``main``). A stop signal sent during start-up stops the
    demo once it is up.
    """
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)


def listen(host: str, port: int) -> socket.socket:
    """The web server's socket, bound before anything starts; raises OSError."""
    family = select_address_family(host, port)
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(get_sockaddr(host, port, family))
        sock.listen(128)
    except BaseException:
        sock.close()
        raise
    return sock


def cannot_listen(host: str, port: int, err: OSError) -> str:
    """One line for a port the demo cannot have, saying how to choose another."""
    message = f"widget.demo: cannot listen on {host}:{port}: {err.strerror or err}"
    if err.errno in (errno.EADDRINUSE, errno.EACCES):
        other = port + 1 if port < 65535 else 8081
        message += (
            f" -- choose another port: make demo PORT={other}"
            f" (or python -m widget.demo --port {other})"
        )
    return message


@contextmanager
def serving(server: BaseWSGIServer) -> Iterator[None]:
    """``server`` answering in a thread until the block ends."""
    # a short poll: shutdown() waits for the serving loop to look up
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.1}, name="web", daemon=True
    )
    thread.start()
    try:
        yield
    finally:
        server.shutdown()
        thread.join(5)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m widget.demo",
        description="MOR registration status, all in one process: simulator, collector, "
        "mock MOR pages and the widget.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="listen address (%(default)s)")
    parser.add_argument(
        "--port", type=int, default=int(os.environ.get("PORT", "8080")), help="(%(default)s)"
    )
    parser.add_argument("--peers", type=int, default=300, help="simulated SIP peers (%(default)s)")
    parser.add_argument(
        "--interval", type=float, default=5.0, help="seconds between collector runs (%(default)s)"
    )
    parser.add_argument("--data-dir", type=Path, help="where to keep the demo's files (a temp dir)")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parser().parse_args(argv)
    # the console shows trouble only; each collector run logs into the data dir
    console = logging.StreamHandler()
    console.setLevel(logging.WARNING)
    console.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(console)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    # Ctrl-C and a service manager's SIGTERM stop the demo alike, quietly, with status 0
    block_stop_signals()
    if args.data_dir:
        args.data_dir.mkdir(parents=True, exist_ok=True)
        return serve(args, args.data_dir)
    with tempfile.TemporaryDirectory(prefix="mor-regstatus-demo-") as temp:
        return serve(args, Path(temp))


def serve(args: argparse.Namespace, data_dir: Path) -> int:
    """Everything running until Ctrl-C; files in ``data_dir``."""
    from mor_plugin.simulator import AmiSimulator, run_in_thread

    try:
        sock = listen(args.host, args.port)  # before anything starts: a port in use fails at once
    except OSError as err:
        print(cannot_listen(args.host, args.port, err), file=sys.stderr)
        return 1
    db_url = f"sqlite:///{data_dir.resolve() / 'mor.sqlite'}"
    peers = demo_peers(args.peers)
    # the never-registered device has no peer; everything else registers
    seed_database(db_url, peers)
    ami_user, ami_secret = "mor-demo", secrets.token_hex(8)
    widget_secret = secrets.token_hex(16)
    sim = AmiSimulator(peers, version="18", username=ami_user, secret=ami_secret, drift=True)
    with run_in_thread(sim):
        conf = write_mor_conf(data_dir, db_url, sim.port, ami_user, ami_secret)
        code = run_collector(conf)  # a first run so the pages have data at once
        if code:
            print(f"the first collector run failed ({code}); see {data_dir}", file=sys.stderr)
        seed_history(db_url)
        mor = demo_app(db_url, widget_secret, stale_after=max(60, int(args.interval * 6)))
        server = make_server(args.host, args.port, mor, threaded=True, fd=sock.fileno())
        sock.close()  # the server has its own copy
        base = f"http://{args.host}:{server.port}"
        print(
            f"\nMOR registration status demo ({len(peers)} simulated peers, data in {data_dir})\n"
            f"  device list:  {base}/billing/devices/devices_all\n"
            f"  one user:     {base}/billing/devices/show_devices/2\n"
            f"  device edit:  {base}/billing/devices/device_edit/1\n"
            f"  servers:      linked from every page's top bar\n"
            f"  widget:       {base}{WIDGET_PREFIX}/healthz\n"
            "Ctrl-C stops everything.\n",
            flush=True,
        )
        with collector_loop(conf, args.interval), serving(server):
            signal.sigwait(STOP_SIGNALS)
            print("\nstopping the web server, the collector and the simulator ...", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
