"""The widget: in-process latency (Flask test client), requests/s under gunicorn, memory.

The database holds a settled server with ``devices`` devices (one collector run
fills ``reg_status`` and the project's tables). URLs are signed as the MOR GUI
signs them. Under gunicorn (2 sync workers on loopback) the list API and the
bullet are driven by ``wrk`` (or ``bench.loadgen``) from another process, and a
bare Flask hello-world is served and driven the same way in the same run.

Memory (``memory``): a fresh process serves the widget in-process with the
answer cache at its longest age (60 s, so that only its byte bound holds) and
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
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable

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


def _signed(path: str) -> str:
    return sign_url(path, SECRET, int(time.time()) + 24 * 3600)


def _paths(device_ids: list[int], rng: random.Random) -> dict[str, str]:
    def listing(k: int) -> str:
        ids = ",".join(str(i) for i in rng.sample(device_ids, k))
        return _signed(f"/api/v1/devices/status?ids={ids}")

    return {
        "api_1": listing(1),
        "api_100": listing(100),
        "api_500": listing(min(500, len(device_ids))),
        "bullet": _signed(f"/devices/{rng.choice(device_ids)}/bullet.svg"),
    }


def in_process(db_url: str, paths: dict[str, str], iterations: int) -> dict[str, Any]:
    # every request reaches the database: the answer cache is off in-process
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


#: the answer cache's longest age: every answer of the run stays, only the byte bound holds
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
    page = _signed("/api/v1/devices/status?ids=" + ",".join(map(str, device_ids[:100])))
    if client.get(page).status_code != 200:  # connections, compiled statements
        raise RuntimeError("memory: the first request failed")
    out: dict[str, Any] = {"variants": variants, "start": _rss_mb()}
    big = _signed("/api/v1/devices/status?ids=" + ",".join(map(str, device_ids[:500])))
    phases: dict[str, Callable[[int], str]] = {
        "sig_case_variants": lambda n: _case_variant(big, rng),
        "fresh_exp": lambda n: sign_url(
            page.split("&exp=")[0], SECRET, int(time.time()) + 3600 + n
        ),
        "distinct_pages": lambda n: _signed(
            "/api/v1/devices/status?ids="
            + ",".join(map(str, rng.sample(device_ids, min(100, len(device_ids)))))
        ),
    }
    for name, url_of in phases.items():
        started = time.perf_counter()
        for n in range(variants):
            status = client.get(url_of(n)).status_code
            if status != 200:
                raise RuntimeError(f"memory, {name}: HTTP {status}")
        out[name] = {**_rss_mb(), "seconds": round(time.perf_counter() - started, 2)}
    cache = app.extensions.get("mor_widget_cache")
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


def load(port: int, path: str, seconds: float, connections: int = 4) -> dict[str, Any]:
    """requests/s and latency percentiles from a load generator in another process."""
    url = f"http://127.0.0.1:{port}{path}"
    wrk = shutil.which("wrk")
    if wrk is None:
        proc = subprocess.run(
            [sys.executable, "-m", "bench.loadgen", url, str(seconds), str(connections)],
            capture_output=True,
            text=True,
            check=True,
            cwd=ROOT,
            env=dict(os.environ, PYTHONPATH=str(ROOT)),
            timeout=seconds + 60,
        )
        result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
        result["generator"] = "bench.loadgen"
        return result
    duration = max(1, round(seconds))
    proc = subprocess.run(
        [wrk, "-t1", f"-c{connections}", f"-d{duration}s", "--latency", url],
        capture_output=True,
        text=True,
        check=True,
        timeout=duration + 60,
    )
    text = proc.stdout
    percent = {int(p): float(v) * _UNITS[u] for p, v, u in _WRK_LATENCY.findall(text)}
    rps = _WRK_RPS.search(text)
    bad = _WRK_BAD.search(text)
    return {
        "rps": float(rps.group(1)) if rps else None,
        "p50_ms": percent.get(50),
        "p99_ms": percent.get(99),
        "errors": int(bad.group(1)) if bad else 0,
        "generator": "wrk",
    }


def under_gunicorn(db_url: str, paths: dict[str, str], seconds: float) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with gunicorn("bench.hello:app", {}) as port:
        _warm(port, "/")
        out["hello"] = load(port, "/", seconds)
    env = {"MOR_WIDGET_DB_URL": db_url, "MOR_WIDGET_SECRET": SECRET}
    with gunicorn("widget:create_app()", env) as port:
        for name in ("api_100", "bullet"):
            _warm(port, paths[name])
            out[name] = load(port, paths[name], seconds)
    hello = out["hello"]["rps"] or 0.0
    for name in ("api_100", "bullet"):
        rps = out[name]["rps"] or 0.0
        out[name]["share_of_hello"] = rps / hello if hello else None
    return out


def bench_widget(
    devices: int,
    iterations: int,
    seconds: float,
    log: Callable[[str], None],
    profile: bool = False,
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="mor-bench-") as tmp, benchdb.bench_database() as d:
        cycle = CycleBench(devices, d, Path(tmp))
        cycle.setup()
        from mor_plugin.simulator import run_in_thread

        with run_in_thread(cycle.sim):
            run_child(cycle.job("collector"))
        with cycle.root.cursor() as cur:
            cur.execute("SELECT id FROM devices WHERE server_id = 1")
            ids = [row[0] for row in cur.fetchall()]
        cycle.root.close()
        paths = _paths(ids, random.Random(5))  # noqa: S311 - sampling
        log(f"widget: in-process latency, {iterations} requests per endpoint")
        result: dict[str, Any] = {"devices": devices}
        result["in_process"] = in_process(d.url, paths, iterations)
        log(f"widget: gunicorn -w 2, {seconds:g} s per endpoint")
        result["gunicorn"] = under_gunicorn(d.url, paths, seconds)
        variants = max(20, iterations * 10)
        log(f"widget: memory of one process, 3 x {variants} requests (answer cache on, 60 s)")
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
