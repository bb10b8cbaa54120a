"""Many servers, one database: every server's collector at the same moment, cycle after cycle.

``servers`` simulators (server_id 1…servers), each listing its own devices plus
``intruders`` devices that MOR assigns to the next server (phones registered to
the wrong Asterisk, with the tell-tale status ``LAGGED (9999 ms)``). Between
cycles every simulator jitters its latencies and flips a few peers between OK
and UNREACHABLE. Each cycle starts every collector (``mor-retrieve-peers --json``,
a process each, as cron does) at once and then checks:

* every run exited 0: no deadlock or lock-wait failure survived the collector's
  one retry (retries are counted from the logs);
* every device holds exactly what its own server's simulator listed, and no
  device anywhere holds an intruder's status;
* every run's JSON counts, changed rows and wrong-server count are what the
  lists imply, and the wrong-server table holds each server's sightings.
"""

from __future__ import annotations

import json
import random
import re
import statistics
import subprocess
import sys
import time
from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from mor_plugin.simulator import AmiSimulator, SimPeer, realistic_peers, run_in_thread
from mor_plugin.status import KINDS, kind_of

from . import db as benchdb
from .cycle import child_env

ROOT = Path(__file__).resolve().parent.parent
INTRUDER_STATUS = "LAGGED (9999 ms)"
AMI_USER, AMI_SECRET = "mor", "many-secret"
_TIMED = re.compile(r"^(OK|LAGGED) \((\d+) ms\)$")


@dataclass
class ManyReport:
    servers: int
    devices_per_server: int
    intruders: int
    cycles: int
    cycle_wall_s: list[float] = field(default_factory=list)
    changed: list[list[int]] = field(default_factory=list)
    retries: int = 0
    #: runs that exited non-zero (a deadlock or lock wait that survived the retry, ...)
    failed_runs: list[str] = field(default_factory=list)
    #: devices whose reg_status is not what their own server listed
    wrong_rows: list[str] = field(default_factory=list)
    #: JSON summaries or wrong-server rows that disagree with the lists
    bad_counts: list[str] = field(default_factory=list)

    @property
    def problems(self) -> list[str]:
        return self.failed_runs + self.wrong_rows + self.bad_counts

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_json(self) -> dict[str, Any]:
        return {
            "servers": self.servers,
            "devices_total": self.servers * self.devices_per_server,
            "intruders_per_server": self.intruders,
            "cycles": self.cycles,
            "cycle_wall_s": [round(w, 3) for w in self.cycle_wall_s],
            "cycle_wall_median_s": statistics.median(self.cycle_wall_s)
            if self.cycle_wall_s
            else None,
            "changed_per_cycle": self.changed,
            "transaction_retries": self.retries,
            "problems": self.problems[:20],
            "ok": self.ok,
        }


def _prefix(server_id: int) -> str:
    return f"s{server_id}-"


def _write_conf(path: Path, server_id: int, db_url: str, port: int) -> Path:
    base = path / f"server{server_id}"
    base.mkdir(parents=True, exist_ok=True)
    values = {
        "server_id": server_id,
        "db_url": db_url,
        "ami_host": "127.0.0.1",
        "ami_port": port,
        "ami_username": AMI_USER,
        "ami_secret": AMI_SECRET,
        "manager_conf": base / "no-manager.conf",
        "log_file": base / "collector.log",
        "state_file": base / "state.json",
        "lock_file": base / "run.lock",
        "ami_list_timeout": 120,
        "db_timeout": 60,
    }
    conf = base / "mor.conf"
    conf.write_text("".join(f"{key} = {value}\n" for key, value in values.items()))
    return conf


def _mutate(peers: list[SimPeer], rng: random.Random, flip_share: float = 0.03) -> None:
    """Latency jitter on every timed peer, and a few peers going down or coming back."""
    for peer in peers:
        if peer.status == INTRUDER_STATUS:
            continue
        if rng.random() < flip_share:
            if peer.status == "UNREACHABLE":
                peer.status = f"OK ({rng.randrange(5, 80)} ms)"
            elif peer.status.startswith("OK"):
                peer.status = "UNREACHABLE"
            continue
        m = _TIMED.match(peer.status)
        if m is not None:
            peer.status = f"{m.group(1)} ({max(1, int(m.group(2)) + rng.randint(-3, 3))} ms)"


def run_many(
    database_name: str,
    db_url: str,
    workdir: Path,
    *,
    servers: int = 5,
    devices_per_server: int = 4000,
    intruders: int = 20,
    cycles: int = 10,
    migrate_first: bool = True,
    log: Callable[[str], None] = lambda _line: None,
) -> ManyReport:
    """Fill ``database_name`` (MOR tables, no devices yet) and run the cycles.

    ``migrate_first``: create the project's tables once before the first cycle, as
    an install does (``mor-retrieve-peers --migrate``); without it the first cycle
    is every server's first run on a fresh database, migrations racing.
    """
    report = ManyReport(servers, devices_per_server, intruders, cycles)
    root = benchdb.root_connection(database_name)
    ids = list(range(1, servers + 1))
    benchdb.add_servers(root, ids)
    own: dict[int, list[SimPeer]] = {}
    sims: dict[int, AmiSimulator] = {}
    for sid in ids:
        benchdb.add_devices(root, devices_per_server, sid, prefix=_prefix(sid))
        own[sid] = realistic_peers(devices_per_server, seed=sid, prefix=_prefix(sid))
        victim = sid % servers + 1
        strays = [
            SimPeer(f"{_prefix(victim)}{100000 + j}", INTRUDER_STATUS, ip="10.9.9.9", port=5060)
            for j in range(min(intruders, devices_per_server))
        ]
        sims[sid] = AmiSimulator(
            own[sid] + strays, username=AMI_USER, secret=AMI_SECRET, version="13", seed=sid
        )
    rng = random.Random(7)  # noqa: S311 - simulation
    previous: dict[int, dict[str, Optional[str]]] = {sid: {} for sid in ids}
    env = child_env()  # bytecode cached, as an installed collector has it
    with ExitStack() as stack:
        for sid in ids:
            stack.enter_context(run_in_thread(sims[sid]))
        confs = {sid: _write_conf(workdir, sid, db_url, sims[sid].port) for sid in ids}
        if migrate_first:
            subprocess.run(
                [sys.executable, "-m", "mor_plugin.cli", "--config", str(confs[1]), "--migrate"],
                check=True,
                capture_output=True,
                cwd=ROOT,
                env=env,
                timeout=120,
            )
        for cycle in range(1, cycles + 1):
            if cycle > 1:
                for sid in ids:
                    _mutate(own[sid], rng)
            started = time.perf_counter()
            procs = {
                sid: subprocess.Popen(
                    [sys.executable, "-m", "mor_plugin.cli", "--config", str(confs[sid]), "--json"],
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                    cwd=ROOT,
                    env=env,
                )
                for sid in ids
            }
            outputs = {sid: proc.communicate(timeout=600) for sid, proc in procs.items()}
            report.cycle_wall_s.append(time.perf_counter() - started)
            changed_row: list[int] = []
            for sid in ids:
                out, err = outputs[sid]
                where = f"cycle {cycle}, server {sid}"
                if procs[sid].returncode != 0:
                    report.failed_runs.append(
                        f"{where}: exit {procs[sid].returncode}: {err.strip()}"
                    )
                    changed_row.append(-1)
                    continue
                summary = json.loads(out.strip().splitlines()[-1])
                expected = {p.name: p.status for p in own[sid]}
                want_changed = sum(
                    1 for name, value in expected.items() if previous[sid].get(name) != value
                )
                want_counts = dict.fromkeys(KINDS, 0)
                want_counts.update(Counter(kind_of(v) for v in expected.values()))
                got = (summary["peers"], summary["changed"], summary["wrong_server"])
                want = (len(expected) + len(sims[sid].peers) - len(own[sid]), want_changed)
                if got != (*want, len(sims[sid].peers) - len(own[sid])):
                    report.bad_counts.append(
                        f"{where}: peers/changed/wrong_server {got}, expected "
                        f"{(*want, len(sims[sid].peers) - len(own[sid]))}"
                    )
                if summary["counts"] != want_counts:
                    report.bad_counts.append(
                        f"{where}: counts {summary['counts']}, expected {want_counts}"
                    )
                changed_row.append(summary["changed"])
            report.changed.append(changed_row)
            _check_database(root, ids, own, intruders, cycle, report)
            previous = {sid: {p.name: p.status for p in own[sid]} for sid in ids}
            log(
                f"many servers: cycle {cycle}/{cycles} in {report.cycle_wall_s[-1]:.2f} s, "
                f"changed {changed_row}"
            )
        for sid in ids:
            text = (workdir / f"server{sid}" / "collector.log").read_text(errors="replace")
            report.retries += text.count("transaction retried")
    root.close()
    return report


def _check_database(
    root: Any,
    ids: list[int],
    own: dict[int, list[SimPeer]],
    intruders: int,
    cycle: int,
    report: ManyReport,
) -> None:
    for sid in ids:
        stored = benchdb.reg_statuses(root, sid)
        expected = {p.name: p.status for p in own[sid]}
        wrong = [name for name, value in stored.items() if value != expected.get(name)]
        if wrong:
            leaked = sum(1 for name in wrong if stored[name] == INTRUDER_STATUS)
            report.wrong_rows.append(
                f"cycle {cycle}, server {sid}: {len(wrong)} devices differ from their own "
                f"server's list ({leaked} hold another server's status), e.g. {wrong[0]!r}: "
                f"{stored[wrong[0]]!r} != {expected.get(wrong[0])!r}"
            )
    with root.cursor() as cur:
        cur.execute(
            "SELECT seen_on_server_id, COUNT(*) FROM mor_regstatus_wrong_server"
            " GROUP BY seen_on_server_id"
        )
        seen = dict(cur.fetchall())
    want = {sid: intruders for sid in ids} if intruders else {}
    if seen != want:
        report.bad_counts.append(f"cycle {cycle}: wrong-server rows by server {seen} != {want}")
