"""The widget: in-process latency (Flask test client), requests/s under gunicorn, memory.

The database holds a settled server with ``devices`` devices (one collector run
fills ``reg_status`` and the project's tables). URLs are signed as the MOR GUI
signs them. Under gunicorn (2 sync workers on loopback) the list API and the
bullet are driven by ``wrk`` (or ``bench.loadgen``) from another process, and a
bare Flask hello-world is served and driven the same way in the same run.

Memory (``memory``): a fresh process serves the widget in-process with the
device cache on (its mark never moves during the run, so that only its byte bound holds) and
reports its RSS after each of three kinds of traffic, ``variants`` requests
each: one signed link for 500 devices with its ``sig`` in random case, one
page's link with a fresh ``exp`` per view, and pages of 100 devices each its
own (distinct answers). The growth must stay within the cache's byte bound
plus ``MEMORY_ALLOWANCE_MB`` (``within_limit``). Alone: ``python -m
bench.widget_bench memory DB_URL N < device_ids.json`` (a JSON list of ids).
"""

from __future__ import annotations

import http.client
import json
import os
import random
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Optional

from widget import create_app
from widget.signing import sign_url

from . import db as benchdb
from .cycle import CycleBench, run_child

ROOT = Path(__file__).resolve().parent.parent
SECRET = "bench-widget-secret"  # noqa: S105 - a throw-away signing key
_WRK_LATENCY = re.compile(r"^\s*(\d+)%\s+([\d.]+)(us|ms|s)\s*$", re.M)
_WRK_RPS = re.compile(r"^Requests/sec:\s+([\d.]+)", re.M)
_WRK_BAD = re.compile(r"Non-2xx or 3xx responses:\s+(\d+)")
_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def _signed(path: str, expires_at: Optional[int] = None) -> str:
    """``path`` signed as the MOR GUI signs it, valid for a day unless ``expires_at``."""
    return sign_url(path, SECRET, expires_at or int(time.time()) + 24 * 3600)


def _listing(device_ids: Iterable[int]) -> str:
    """The JSON status of ``device_ids`` (unsigned)."""
    return "/api/v1/devices/status?ids=" + ",".join(map(str, device_ids))


def _bullet(device_id: int) -> str:
    return f"/devices/{device_id}/bullet.svg"


def _paths(device_ids: list[int], rng: random.Random) -> dict[str, str]:
    def listing(k: int) -> str:
        return _signed(_listing(rng.sample(device_ids, k)))

    return {
        "api_1": listing(1),
        "api_100": listing(100),
        "api_500": listing(min(500, len(device_ids))),
        "bullet": _signed(_bullet(rng.choice(device_ids))),
    }


def in_process(db_url: str, paths: dict[str, str], iterations: int) -> dict[str, Any]:
    # every request reaches the database: the device cache is off in-process
    app = create_app(
        {"MOR_WIDGET_DB_URL": db_url, "MOR_WIDGET_SECRET": SECRET, "MOR_WIDGET_CACHE_SECONDS": 0}
    )
    client = app.test_client()
    out: dict[str, Any] = {}
    for name, path in paths.items():
        for _ in range(5):  # connections, caches
            assert client.get(path).status_code == 200, name
        samples = []
        for _ in range(iterations):
            started = time.perf_counter()
            response = client.get(path)
            samples.append((time.perf_counter() - started) * 1000)
            if response.status_code != 200:
                raise RuntimeError(f"{name}: HTTP {response.status_code}")
        samples.sort()
        out[name] = {
            "iterations": iterations,
            "median_ms": statistics.median(samples),
            "p90_ms": samples[int(len(samples) * 0.9)],
        }
    app.extensions["mor_widget_db"].dispose()
    return out


def profile_in_process(db_url: str, path: str, iterations: int, top: int = 25) -> str:
    """cProfile of ``iterations`` in-process requests for ``path``, top by cumulative time."""
    import cProfile
    import io
    import pstats

    app = create_app(
        {"MOR_WIDGET_DB_URL": db_url, "MOR_WIDGET_SECRET": SECRET, "MOR_WIDGET_CACHE_SECONDS": 0}
    )
    client = app.test_client()
    client.get(path)
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(iterations):
        client.get(path)
    profiler.disable()
    app.extensions["mor_widget_db"].dispose()
    text = io.StringIO()
    stats = pstats.Stats(profiler, stream=text)
    stats.strip_dirs().sort_stats("cumulative").print_stats(top)
    stats.sort_stats("tottime").print_stats(top)
    return text.getvalue()


#: the cache at its longest: every device read in the run stays, only the byte bound holds
MEMORY_CACHE_SECONDS = 60
#: what a worker may grow beyond the cache's bound (allocator, buffers, compiled statements)
MEMORY_ALLOWANCE_MB = 8


def _rss_mb() -> dict[str, float]:
    """This process's resident memory now and at its peak, in MB (Linux)."""
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0]) / 1024
    return {"rss_mb": round(fields["VmRSS"], 1), "peak_mb": round(fields["VmHWM"], 1)}


def _case_variant(url: str, rng: random.Random) -> str:
    head, sig = url.rsplit("&sig=", 1)
    return head + "&sig=" + "".join(c.upper() if rng.random() < 0.5 else c for c in sig)


def memory_in_this_process(db_url: str, device_ids: list[int], variants: int) -> dict[str, Any]:
    """RSS of this process before and after each kind of traffic (see the module's doc)."""
    app = create_app(
        {
            "MOR_WIDGET_DB_URL": db_url,
            "MOR_WIDGET_SECRET": SECRET,
            "MOR_WIDGET_CACHE_SECONDS": MEMORY_CACHE_SECONDS,
        }
    )
    client = app.test_client()
    rng = random.Random(11)  # noqa: S311 - sampling
    page = _signed(_listing(device_ids[:100]))
    if client.get(page).status_code != 200:  # connections, compiled statements
        raise RuntimeError("memory: the first request failed")
    out: dict[str, Any] = {"variants": variants, "start": _rss_mb()}
    big = _signed(_listing(device_ids[:500]))
    phases: dict[str, Callable[[int], str]] = {
        "sig_case_variants": lambda n: _case_variant(big, rng),
        "fresh_exp": lambda n: _signed(page.split("&exp=")[0], int(time.time()) + 3600 + n),
        "distinct_pages": lambda n: _signed(
            _listing(rng.sample(device_ids, min(100, len(device_ids))))
        ),
    }
    for name, url_of in phases.items():
        started = time.perf_counter()
        for n in range(variants):
            status = client.get(url_of(n)).status_code
            if status != 200:
                raise RuntimeError(f"memory, {name}: HTTP {status}")
        out[name] = {**_rss_mb(), "seconds": round(time.perf_counter() - started, 2)}
    cache = app.extensions.get("mor_widget_devices")
    if cache is not None and hasattr(cache, "size_bytes"):
        out["cache_entries"] = len(cache)
        out["cache_mb"] = round(cache.size_bytes / 1024 / 1024, 1)
    end = out["distinct_pages"]
    out["growth_mb"] = round(end["rss_mb"] - out["start"]["rss_mb"], 1)
    out["peak_mb"] = end["peak_mb"]
    out["limit_mb"] = app.config["MOR_WIDGET_CACHE_MB"] + MEMORY_ALLOWANCE_MB
    out["within_limit"] = out["growth_mb"] <= out["limit_mb"]
    app.extensions["mor_widget_db"].dispose()
    return out


def memory(db_url: str, device_ids: list[int], variants: int) -> dict[str, Any]:
    """``memory_in_this_process`` in a fresh interpreter, so that nothing else sits in its RSS."""
    proc = subprocess.run(
        [sys.executable, "-m", "bench.widget_bench", "memory", db_url, str(variants)],
        input=json.dumps(device_ids),
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )
    if proc.returncode != 0:
        raise RuntimeError(f"widget memory run failed: {proc.stderr.strip()[-2000:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def gunicorn(app: str, env: dict[str, str], workers: int = 2) -> Iterator[int]:
    port = _free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gunicorn",
            "-w",
            str(workers),
            "-b",
            f"127.0.0.1:{port}",
            "--log-level",
            "warning",
            app,
        ],
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT), **env),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"gunicorn {app} did not start") from None
                time.sleep(0.1)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()


def _warm(port: int, path: str, count: int = 10) -> None:
    for _ in range(count):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", path)
        response = conn.getresponse()
        response.read()
        conn.close()
        if response.status != 200:
            raise RuntimeError(f"GET {path.split('?')[0]}: HTTP {response.status}")


#: load generator threads and connections (wrk -t2 -c8), for hello-world and the widget alike
LOAD_THREADS = 2
LOAD_CONNECTIONS = 8
#: signed URLs of a distinct-URL load per second of load (more than the widget answers
#: here), up to a bound: a longer load walks its list again, a URL coming back after
#: DISTINCT_URLS requests (seconds later: no cache keyed by URL would keep it)
URLS_PER_SECOND = 4_000
DISTINCT_URLS = 20_000
#: a device-list page: its devices, and the connections a browser opens to one host
PAGE_DEVICES = 50
BROWSER_CONNECTIONS = 6
LUA_PATHS = ROOT / "bench" / "paths.lua"
_WRK_REQUESTS = re.compile(r"^\s*(\d+) requests in", re.M)
_WRK_SOCKET_ERRORS = re.compile(
    r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)"
)


def load(
    port: int, paths: list[str], seconds: float, workdir: Path, connections: int = LOAD_CONNECTIONS
) -> dict[str, Any]:
    """requests/s, latency percentiles and failures from a load generator in another
    process; with several ``paths`` every request asks the next one (see bench/paths.lua)."""
    base = f"http://127.0.0.1:{port}"
    listing = workdir / "paths.txt"
    listing.write_text("\n".join(paths) + "\n")
    wrk = shutil.which("wrk")
    if wrk is None:
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "bench.loadgen",
                base,
                str(listing),
                str(seconds),
                str(connections),
            ],
            capture_output=True,
            text=True,
            check=True,
            cwd=ROOT,
            env=dict(os.environ, PYTHONPATH=str(ROOT)),
            timeout=seconds + 60,
        )
        result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
        result.update(generator="bench.loadgen", urls=len(paths))
        return result
    duration = max(1, round(seconds))
    command = [wrk, f"-t{LOAD_THREADS}", f"-c{connections}", f"-d{duration}s", "--latency"]
    if len(paths) == 1:
        command.append(base + paths[0])
    else:
        command += ["-s", str(LUA_PATHS), base, "--", str(listing), str(LOAD_THREADS)]
    proc = subprocess.run(
        command, capture_output=True, text=True, check=True, timeout=duration + 60
    )
    text = proc.stdout
    percent = {int(p): float(v) * _UNITS[u] for p, v, u in _WRK_LATENCY.findall(text)}
    rps = _WRK_RPS.search(text)
    requests = _WRK_REQUESTS.search(text)
    bad = _WRK_BAD.search(text)
    socket_errors = _WRK_SOCKET_ERRORS.search(text)
    return {
        "rps": float(rps.group(1)) if rps else None,
        "requests": int(requests.group(1)) if requests else None,
        "urls": len(paths),
        "p50_ms": percent.get(50),
        "p99_ms": percent.get(99),
        "errors": (int(bad.group(1)) if bad else 0)
        + (sum(map(int, socket_errors.groups())) if socket_errors else 0),
        "generator": "wrk",
    }


def _get(port: int, path: str) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def page_views(port: int, views: list[list[str]]) -> dict[str, Any]:
    """Time to the last answer of each view, its requests fetched as a browser fetches a
    page's images: ``BROWSER_CONNECTIONS`` at a time, a new connection each (gunicorn's
    sync workers close every connection)."""
    from concurrent.futures import ThreadPoolExecutor

    samples = []
    with ThreadPoolExecutor(BROWSER_CONNECTIONS) as pool:
        list(pool.map(lambda path: _get(port, path), views[0]))  # threads, connections
        for paths in views[1:]:
            started = time.perf_counter()
            statuses = list(pool.map(lambda path: _get(port, path), paths))
            samples.append((time.perf_counter() - started) * 1000)
            if any(status != 200 for status in statuses):
                raise RuntimeError(f"page view: HTTP {sorted(set(statuses))}")
    samples.sort()
    return {
        "views": len(samples),
        "requests_per_view": len(views[-1]),
        "median_ms": statistics.median(samples),
        "p90_ms": samples[int(len(samples) * 0.9)],
    }


def traffic(
    device_ids: list[int], rng: random.Random, seconds: float, views: int
) -> dict[str, list[str]]:
    """The URLs of every load, signed as MOR's GUI signs them: each render its own ``exp``."""
    now = int(time.time()) + 24 * 3600
    count = min(DISTINCT_URLS, max(1_000, round(URLS_PER_SECOND * seconds)))
    k = min(100, len(device_ids))

    def listing(ids: list[int], expires: int) -> str:
        return _signed(_listing(ids), expires)

    def bullet(device_id: int, expires: int) -> str:
        return _signed(_bullet(device_id), expires)

    out = {
        "api_100_distinct": [listing(rng.sample(device_ids, k), now + n) for n in range(count)],
        "bullet_distinct": [bullet(rng.choice(device_ids), now + n) for n in range(count)],
        "api_100_one_url": [listing(rng.sample(device_ids, k), now)],
        "bullet_one_url": [bullet(rng.choice(device_ids), now)],
    }
    # a device list of PAGE_DEVICES a page, page after page, each render signed anew
    ordered = sorted(device_ids)
    for n in range(views + 1):  # the first view warms up
        page = ordered[(n * PAGE_DEVICES) % len(ordered) :][:PAGE_DEVICES]
        out[f"page_{n}_bullets"] = [bullet(i, now + count + n) for i in page]
        out[f"page_{n}_embed"] = [listing(page, now + count + n)]
    return out


#: the gunicorn loads: (key, URLs, cache on, seconds between moves of server 1's change
#: mark, over a whole poll cycle). A load "over a poll cycle" starts on new workers, with
#: empty device caches as right after a poll, and lasts ``poll_cycle`` seconds (a cron minute
#: in the full run); the others last ``seconds``.
LOADS: tuple[tuple[str, str, bool, Optional[float], bool], ...] = (
    ("api_100_distinct", "api_100_distinct", True, None, True),
    ("bullet_distinct", "bullet_distinct", True, None, True),
    ("api_100_one_url", "api_100_one_url", True, None, False),
    ("bullet_one_url", "bullet_one_url", True, None, False),
    ("api_100_distinct_marks", "api_100_distinct", True, 1.0, False),
    ("bullet_distinct_marks", "bullet_distinct", True, 1.0, False),
    ("api_100_distinct_no_cache", "api_100_distinct", False, None, False),
    ("bullet_distinct_no_cache", "bullet_distinct", False, None, False),
    ("api_100_one_url_no_cache", "api_100_one_url", False, None, False),
    ("bullet_one_url_no_cache", "bullet_one_url", False, None, False),
)


@contextmanager
def marks_moving(db_url: str, every: Optional[float]) -> Iterator[None]:
    """While inside, move server 1's change mark every ``every`` s, as the event listener
    does when it writes a batch (``store.write_event_plan``): every widget worker then drops
    what it cached of the server's devices."""
    if every is None:
        yield
        return
    from sqlalchemy import create_engine, update

    from mor_plugin import schema

    engine = create_engine(db_url)
    stop = threading.Event()

    def move() -> None:
        table = schema.server_state
        while not stop.wait(every):
            with engine.begin() as conn:
                conn.execute(
                    update(table)
                    .where(table.c.server_id == 1)
                    .values(listener_wrote_at=datetime.now(timezone.utc).replace(tzinfo=None))
                )

    mover = threading.Thread(target=move, name="marks", daemon=True)
    mover.start()
    try:
        yield
    finally:
        stop.set()
        mover.join(10)
        engine.dispose()


def under_gunicorn(
    db_url: str,
    urls: dict[str, list[str]],
    seconds: float,
    poll_cycle: float,
    views: int,
    workdir: Path,
    poll: Callable[[], None],
) -> dict[str, Any]:
    """Every load of ``LOADS``, the device-list page views, and hello-world driven with
    the very URLs of each load, three times (before, between and after the widget's loads:
    the median is each load's baseline; wrk's script for a list of URLs costs the machine
    more than one URL does). ``poll`` runs the collector once before each widget load."""
    out: dict[str, Any] = {}
    sources = sorted({source for _, source, *_ in LOADS})
    hello_runs: dict[str, list[dict[str, Any]]] = {source: [] for source in sources}
    hello_page = [["/"] * PAGE_DEVICES for _ in range(views + 1)]

    def hello() -> None:
        with gunicorn("bench.hello:app", {}) as port:
            _warm(port, "/")
            for source in sources:
                hello_runs[source].append(load(port, urls[source], seconds, workdir))
            if "page_hello" not in out:
                out["page_hello"] = page_views(port, hello_page)

    base_env = {"MOR_WIDGET_DB_URL": db_url, "MOR_WIDGET_SECRET": SECRET}
    for cache_on in (True, False):
        hello()
        env = base_env if cache_on else {**base_env, "MOR_WIDGET_CACHE_SECONDS": "0"}
        for key, source, cache, marks_every, whole_cycle in LOADS:
            if cache != cache_on:
                continue
            # every load after a collector run (the data stays fresh, as under cron) and
            # on new workers: it starts from empty device caches, as after a poll
            poll()
            with gunicorn("widget:create_app()", env) as port:
                one_url = "api_100_one_url" if source.startswith("api") else "bullet_one_url"
                _warm(port, urls[one_url][0])
                duration = poll_cycle if whole_cycle else seconds
                with marks_moving(db_url, marks_every):
                    out[key] = load(port, urls[source], duration, workdir)
            out[key].update(cache=cache, marks_every=marks_every, seconds=duration)
    # a device list as MOR's users load it, the cache as installed
    poll()
    with gunicorn("widget:create_app()", base_env) as port:
        for way in ("bullets", "embed"):
            out[f"page_{way}"] = page_views(
                port, [urls[f"page_{n}_{way}"] for n in range(views + 1)]
            )
    hello()
    out["hello"] = {}
    for source, runs in hello_runs.items():
        median = sorted(runs, key=lambda run: run["rps"] or 0.0)[len(runs) // 2]
        out["hello"][source] = {**median, "runs_rps": [run["rps"] for run in runs]}
    for key, source, *_ in LOADS:
        rps, baseline = out[key]["rps"] or 0.0, out["hello"][source]["rps"]
        out[key]["share_of_hello"] = rps / baseline if baseline else None
    return out


def bench_widget(
    devices: int,
    iterations: int,
    seconds: float,
    poll_cycle: float,
    log: Callable[[str], None],
    profile: bool = False,
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="mor-bench-") as tmp, benchdb.bench_database() as d:
        cycle = CycleBench(devices, d, Path(tmp))
        cycle.setup()
        from mor_plugin.simulator import run_in_thread

        def poll() -> None:
            """One collector run, as cron starts it every minute: fresh data, marks moved."""
            run_child(cycle.job("collector"))

        with run_in_thread(cycle.sim):
            poll()
            with cycle.root.cursor() as cur:
                cur.execute("SELECT id FROM devices WHERE server_id = 1")
                ids = [row[0] for row in cur.fetchall()]
            cycle.root.close()
            paths = _paths(ids, random.Random(5))  # noqa: S311 - sampling
            log(f"widget: in-process latency, {iterations} requests per endpoint")
            result: dict[str, Any] = {"devices": devices}
            result["in_process"] = in_process(d.url, paths, iterations)
            views = max(5, iterations // 10)
            log(
                f"widget: gunicorn -w 2, {len(LOADS)} loads of {seconds:g} s or a poll cycle of "
                f"{poll_cycle:g} s, each after a collector run; "
                f"{views} views of a {PAGE_DEVICES}-device page"
            )
            urls = traffic(ids, random.Random(7), poll_cycle, views)  # noqa: S311 - sampling
            result["gunicorn"] = under_gunicorn(
                d.url, urls, seconds, poll_cycle, views, Path(tmp), poll
            )
            poll()
        variants = max(20, iterations * 10)
        log(f"widget: memory of one process, 3 x {variants} requests (device cache on)")
        mem = result["memory"] = memory(d.url, ids, variants)
        log(
            f"widget: memory {mem['start']['rss_mb']} MB at start, "
            + ", ".join(f"{mem[k]['rss_mb']} MB after {k}" for k in phases_of(mem))
            + f"; growth {mem['growth_mb']} MB (limit {mem['limit_mb']:g} MB: "
            + ("held" if mem["within_limit"] else "EXCEEDED")
            + f"), peak {mem['peak_mb']} MB"
        )
        if profile:
            log("widget: profiling the JSON status of 100 ids in-process")
            result["profile_api_100"] = profile_in_process(d.url, paths["api_100"], iterations)
    return result


def phases_of(memory_result: dict[str, Any]) -> list[str]:
    """The traffic phases of a ``memory`` result, in the order they ran."""
    return [k for k, v in memory_result.items() if isinstance(v, dict) and "seconds" in v]


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] != "memory":
        sys.exit("usage: python -m bench.widget_bench memory DB_URL VARIANTS < device_ids.json")
    print(json.dumps(memory_in_this_process(sys.argv[2], json.load(sys.stdin), int(sys.argv[3]))))
