"""The collector cycle, the legacy baseline and the raw floor at one peer count.

Each measured run is a child process (``bench.child``) against the simulator
running in this process, so the child's figures are the collector's alone.
Scenarios, all on server 1 with a tenth as many devices of server 2 beside:

* ``cold``: every ``reg_status`` NULL and the project's own rows deleted first,
  so every device is written;
* ``steady``: the simulator moves each OK/LAGGED latency by up to ±3 ms per
  list, as qualify does; only the rows whose string changed are written;
* ``idle``: the same list twice; nothing to write;
* ``outage``: from a settled database, 30 % of the peers go UNREACHABLE;
* ``legacy``: the MOR algorithm (``bench.legacy``) on the cold data;
* ``floor``: the AMI bytes of the list read and thrown away (``bench.floor``).

PJSIP (up to ``PJSIP_MAX`` endpoints): the same devices served as PJSIP endpoints
by an Asterisk 22 simulator (no chan_sip: ``peer_source = auto`` falls back to
``PJSIPShowContacts``), about one in ten with a second contact:

* ``pjsip_cold``: every status and own row (contacts too) cleared first;
* ``pjsip_steady``: every reachable contact's round trip moves by up to ±3 ms;
* ``pjsip_idle``: the same contacts twice; nothing to write.

Start-up (``startup``): ``python -c pass``, the collector's imports alone and
``mor-retrieve-peers --help``, timed in turn as whole processes.
"""

from __future__ import annotations

import atexit
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Optional

from mor_plugin.simulator import (
    AmiSimulator,
    SimPeer,
    realistic_endpoints,
    realistic_peers,
    run_in_thread,
)

from . import db as benchdb

ROOT = Path(__file__).resolve().parent.parent
AMI_USER, AMI_SECRET = "mor", "bench-secret"
OUTAGE_SHARE = 0.30
COLLECTOR_MODES = ("cold", "steady", "idle", "outage")
PJSIP_MODES = ("pjsip_cold", "pjsip_steady", "pjsip_idle")
#: the largest size at which the PJSIP variant runs (the target is set at 10k endpoints)
PJSIP_MAX = 10_000


class ChildFailed(RuntimeError):
    pass


_pycache: list[str] = []


def child_env() -> dict[str, str]:
    """The environment of a measured process: the checkout on the path, and bytecode cached
    as in an installed package (pip compiles it when it installs the wheel cron runs).

    Under ``PYTHONDONTWRITEBYTECODE`` every process would compile the project's modules
    from source again (about 15 % of the imports' work); the children then keep their
    bytecode in a directory of this bench's own (``PYTHONPYCACHEPREFIX``, removed at exit),
    so the checkout still gets no ``__pycache__``. The first run of each series is a warm-up.
    """
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    if env.pop("PYTHONDONTWRITEBYTECODE", None):
        if not _pycache:
            _pycache.append(tempfile.mkdtemp(prefix="mor-bench-pycache-"))
            atexit.register(shutil.rmtree, _pycache[0], True)
        env["PYTHONPYCACHEPREFIX"] = _pycache[0]
    return env


def run_child(job: dict[str, Any], timeout: float = 600) -> dict[str, Any]:
    """One measured run in a fresh interpreter; its JSON result plus the process's wall time."""
    env = child_env()
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "bench.child", json.dumps(job)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env=env,
    )
    process_wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise ChildFailed(f"{job['kind']} run failed: {proc.stderr.strip()[-2000:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    result["process_wall"] = process_wall
    return result


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over the runs; the statement and row counts of the last run (they repeat)."""
    last = runs[-1]
    rows: dict[str, int] = last.get("rows", {})
    own = sum(n for table, n in rows.items() if table in benchdb.OWN_TABLES)
    return {
        "runs": len(runs),
        "wall_s": statistics.median(r["wall"] for r in runs),
        "wall_min_s": min(r["wall"] for r in runs),
        "wall_max_s": max(r["wall"] for r in runs),
        "process_wall_s": statistics.median(r["process_wall"] for r in runs),
        # what the process spends before and after the cycle: interpreter, imports, exit
        "startup_s": statistics.median(r["process_wall"] - r["wall"] for r in runs),
        "cpu_s": statistics.median(r["cpu"] for r in runs),
        "rss_mb": max(r["rss_mb"] for r in runs),
        "statements": last.get("statements"),
        "devices_rows": rows.get("devices", 0) if "rows" in last else None,
        "own_rows": own if "rows" in last else None,
        "scratch_rows": sum(
            n
            for table, n in rows.items()
            if table not in benchdb.OWN_TABLES and table not in ("devices", "servers")
        )
        if "rows" in last
        else None,
        "detail": last.get("detail", {}),
        "samples_s": [round(r["wall"], 4) for r in runs],
    }


def repeat_child(
    runs: int, before: Optional[Callable[[], None]], job: dict[str, Any]
) -> dict[str, Any]:
    """``runs`` measured child runs of ``job``, ``before`` called ahead of each; their medians."""
    results = []
    for _ in range(runs):
        if before is not None:
            before()
        results.append(run_child(job))
    return summarise(results)


def child_job(
    kind: str, database: benchdb.BenchDatabase, ami_port: int, tmp: Path, **extra: Any
) -> dict[str, Any]:
    """What ``bench.child`` runs: one collector, legacy or floor run on server 1."""
    job = {
        "kind": kind,
        "db_url": database.url,
        "pymysql": database.pymysql_args(),
        "server_id": 1,
        "ami": {"host": "127.0.0.1", "port": ami_port, "username": AMI_USER, "secret": AMI_SECRET},
        "tmp": str(tmp),
    }
    job.update(extra)
    return job


class CycleBench:
    """One database, one simulator, ``n`` peers; runs every scenario at that size."""

    def __init__(self, n: int, database: benchdb.BenchDatabase, workdir: Path) -> None:
        self.n = n
        self.database = database
        self.workdir = workdir
        self.baseline = realistic_peers(n, seed=n)
        self.sim = AmiSimulator(
            self.fresh_peers(), username=AMI_USER, secret=AMI_SECRET, version="11", seed=n
        )
        self.root = benchdb.root_connection(database.name)
        self.pjsip_sim = (
            AmiSimulator(
                [],
                username=AMI_USER,
                secret=AMI_SECRET,
                version="22",
                seed=n,
                endpoints=realistic_endpoints(n, seed=n),
            )
            if n <= PJSIP_MAX
            else None
        )

    def fresh_peers(self) -> list[SimPeer]:
        return [replace(p) for p in self.baseline]

    def job(self, kind: str, **extra: Any) -> dict[str, Any]:
        return child_job(kind, self.database, self.sim.port, self.workdir, **extra)

    def setup(self) -> None:
        benchdb.add_servers(self.root, [1, 2])
        benchdb.add_devices(self.root, self.n, 1)
        benchdb.add_devices(self.root, max(1, self.n // 10), 2, prefix="b-")

    def cold_reset(self) -> None:
        self.sim.drift = False
        self.sim.peers = self.fresh_peers()
        benchdb.reset_statuses(self.root)

    def repeat(self, runs: int, before: Optional[Callable[[], None]], job: dict[str, Any]) -> Any:
        return repeat_child(runs, before, job)

    def outage(self) -> None:
        """Settle on the baseline list, then take 30 % of the peers down."""
        self.sim.drift = False
        self.sim.peers = self.fresh_peers()
        run_child(self.job("collector"))
        rng = random.Random(self.n)  # noqa: S311 - simulation
        for peer in rng.sample(self.sim.peers, int(len(self.sim.peers) * OUTAGE_SHARE)):
            peer.status = "UNREACHABLE"

    def run(
        self, runs: int, legacy_runs: int, log: Callable[[str], None], outage_runs: int = 0
    ) -> dict[str, Any]:
        out: dict[str, Any] = {"peers": self.n}
        with run_in_thread(self.sim):
            self.setup()
            self.cold_reset()
            run_child(self.job("collector"))  # migrates, warms the buffer pool; not counted
            log(f"{self.n:>7} peers: floor")
            out["floor"] = self.repeat(runs, None, self.job("floor"))
            log(f"{self.n:>7} peers: collector cold")
            out["cold"] = self.repeat(runs, self.cold_reset, self.job("collector"))
            log(f"{self.n:>7} peers: collector steady")
            self.sim.drift = True
            out["steady"] = self.repeat(runs, None, self.job("collector"))
            log(f"{self.n:>7} peers: collector idle")
            self.sim.drift = False  # the next list repeats the last one
            out["idle"] = self.repeat(runs, None, self.job("collector"))
            log(f"{self.n:>7} peers: collector after a 30 % outage")
            out["outage"] = self.repeat(outage_runs or runs, self.outage, self.job("collector"))
            if legacy_runs:
                log(f"{self.n:>7} peers: legacy baseline ({legacy_runs} run(s))")
                out["legacy"] = self.repeat(legacy_runs, self.cold_reset, self.job("legacy"))
        if self.pjsip_sim is not None:
            out.update(self.run_pjsip(runs, log))
        self.root.close()
        return out

    def run_pjsip(self, runs: int, log: Callable[[str], None]) -> dict[str, Any]:
        """The PJSIP variant: the same devices, listed as contacts by Asterisk 22."""
        sim = self.pjsip_sim
        assert sim is not None
        out: dict[str, Any] = {}
        with run_in_thread(sim):
            job = self.job("collector", peer_source="auto")
            job["ami"] = dict(job["ami"], port=sim.port)

            def cold_reset() -> None:
                sim.drift = False
                benchdb.reset_statuses(self.root)

            cold_reset()
            run_child(job)  # warms up; not counted
            log(f"{self.n:>7} endpoints: PJSIP collector cold")
            out["pjsip_cold"] = self.repeat(runs, cold_reset, job)
            log(f"{self.n:>7} endpoints: PJSIP collector steady")
            sim.drift = True
            out["pjsip_steady"] = self.repeat(runs, None, job)
            log(f"{self.n:>7} endpoints: PJSIP collector idle")
            sim.drift = False
            out["pjsip_idle"] = self.repeat(runs, None, job)
        return out

    def profile(self, path: Path) -> None:
        """One cold collector run under cProfile (used when a target fails)."""
        with run_in_thread(self.sim):
            self.cold_reset()
            run_child(self.job("collector"))  # migrates and warms up, as in the measured runs
            self.cold_reset()
            run_child(self.job("collector", profile=str(path)))


def _collector_command() -> list[str]:
    """``mor-retrieve-peers`` as cron starts it: the console script beside this Python."""
    script = Path(sys.executable).with_name("mor-retrieve-peers")
    return [str(script)] if script.exists() else [sys.executable, "-m", "mor_plugin.cli"]


STARTUP_COMMANDS = {
    "python": [sys.executable, "-c", "pass"],
    # the floor under the collector's own imports: the libraries every run needs
    "libraries": [
        sys.executable,
        "-c",
        "import sqlalchemy.engine, sqlalchemy.dialects.mysql.pymysql, pymysql, panoramisk",
    ],
    "imports": [sys.executable, "-c", "import mor_plugin.cli"],
    "help": [*_collector_command(), "--help"],
}


def startup(runs: int) -> dict[str, Any]:
    """Whole-process times of ``python -c pass``, the collector's imports alone and
    ``mor-retrieve-peers --help``, started in turn (one warm-up round first), and each
    one's ratio to ``python -c pass`` of the same round."""
    env = child_env()
    samples: dict[str, list[float]] = {name: [] for name in STARTUP_COMMANDS}
    for round_ in range(runs + 1):
        for name, command in STARTUP_COMMANDS.items():
            started = time.perf_counter()
            subprocess.run(command, check=True, capture_output=True, cwd=ROOT, env=env)
            if round_:
                samples[name].append(time.perf_counter() - started)
    out: dict[str, Any] = {
        "runs": runs,
        "bytecode": "cached by the bench (PYTHONDONTWRITEBYTECODE was set)"
        if _pycache
        else "as the environment has it",
    }
    for name, times in samples.items():
        out[name] = {
            "command": " ".join(STARTUP_COMMANDS[name]),
            "median_s": statistics.median(times),
            "min_s": min(times),
            "max_s": max(times),
            "samples_s": [round(t, 4) for t in times],
            "vs_python": statistics.median(t / b for t, b in zip(times, samples["python"])),
        }
    return out


def bench_sizes(
    sizes: list[int],
    runs_for: Callable[[int], int],
    legacy_runs_for: Callable[[int], int],
    log: Callable[[str], None],
    outage_runs: int = 0,
) -> list[dict[str, Any]]:
    results = []
    with tempfile.TemporaryDirectory(prefix="mor-bench-") as tmp:
        for n in sizes:
            with benchdb.bench_database() as database:
                bench = CycleBench(n, database, Path(tmp))
                results.append(bench.run(runs_for(n), legacy_runs_for(n), log, outage_runs))
    return results


def profile_cold(n: int, log: Callable[[str], None], top: int = 25) -> str:
    """The top of a cProfile of one cold run at ``n`` peers, as text."""
    import io
    import pstats

    with tempfile.TemporaryDirectory(prefix="mor-bench-") as tmp, benchdb.bench_database() as d:
        bench = CycleBench(n, d, Path(tmp))
        bench.setup()
        log(f"{n:>7} peers: profiling one cold collector run")
        path = Path(tmp) / "cold.prof"
        bench.profile(path)
        bench.root.close()
        text = io.StringIO()
        stats = pstats.Stats(str(path), stream=text)
        stats.strip_dirs().sort_stats("cumulative").print_stats(top)
        stats.sort_stats("tottime").print_stats(top)
    return text.getvalue()
