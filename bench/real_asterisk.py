"""The collector against Debian's own Asterisk with registered phones (``testbed``).

chan_sip (Asterisk 16, realtime from the bench database's ``devices`` as MOR runs
it): ``n`` phones register with digest auth and answer qualify after 20-80 ms each
(a fixed delay per phone); Asterisk measures the round trips itself, so what moves
between two polls is the measurement's own jitter (Asterisk's, the network
stack's, the phones'). In the same run and on the same Asterisk:

* ``floor``: the raw AMI read of ``SIPpeers``, bytes thrown away (``bench.floor``);
* ``cold``: every status and own row cleared, then a collector run (every device
  written);
* ``steady``: a collector run after Asterisk qualified every phone again: only the
  rows whose string moved are written -- ``changed`` is how many latencies jitter
  moved between two polls;
* ``legacy``: the MOR algorithm (NULL all, one UPDATE per peer) on the cold data.

PJSIP (Asterisk 22, static endpoints): ``pjsip_cold`` and ``pjsip_steady`` alike.
Each measured run is a child process (``bench.cycle.run_child``), as cron starts it.
"""

from __future__ import annotations

import random
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any, Callable

from testbed.asterisk import AmiUser, Asterisk, PjsipEndpoint, Ports, RealtimeDb
from testbed.phones import Phone
from testbed.server import mor_server, wait_until

from . import db as benchdb
from .cycle import AMI_SECRET, AMI_USER, child_job, repeat_child, run_child

#: seconds between two qualify rounds of every phone (chan_sip qualifyfreq, PJSIP
#: qualify_frequency): a steady poll waits one round, so that every latency was measured anew
QUALIFY_EVERY = 10


def _phones(names: list[str], seed: int) -> list[Phone]:
    rng = random.Random(seed)  # noqa: S311 - simulated network distances
    return [Phone(name, "s", answer=rng.uniform(0.020, 0.080)) for name in names]


def _all_online(ast: Asterisk, n: int) -> bool:
    # "N sip peers [Monitored: N online, 0 offline ...]"
    tail = ast.cli("sip show peers", timeout=60).strip().splitlines()[-1:]
    return bool(tail) and f"Monitored: {n} online" in tail[0]


def _contacts_reachable(ast: Asterisk, n: int) -> bool:
    out = ast.cli("pjsip show contacts", timeout=60)
    return out.count(" Avail ") >= n


class _Run:
    """Child-process jobs against one Asterisk's AMI and one bench database."""

    def __init__(
        self, database: benchdb.BenchDatabase, ports: Ports, tmp: Path, qualify_every: int
    ) -> None:
        self.qualify_every = qualify_every
        self.database = database
        self.ports = ports
        self.tmp = tmp
        self.root = benchdb.root_connection(database.name)

    def job(self, kind: str, **extra: Any) -> dict[str, Any]:
        return child_job(kind, self.database, self.ports.ami, self.tmp, **extra)

    def repeat(self, runs: int, before: Callable[[], None] | None, job: dict[str, Any]) -> Any:
        return repeat_child(runs, before, job)

    def cold_reset(self) -> None:
        benchdb.reset_statuses(self.root)

    def qualify_round(self) -> None:
        time.sleep(self.qualify_every + 1)


@contextmanager
def _bench_run(n: int, qualify_every: int) -> Iterator[tuple[_Run, list[str]]]:
    """A bench database with servers 1 and 2 and ``n`` devices of server 1, and the
    devices' names (the phones' users)."""
    with (
        tempfile.TemporaryDirectory(prefix="mor-bench-real-") as tmp,
        benchdb.bench_database() as database,
    ):
        bench = _Run(database, Ports(), Path(tmp), qualify_every)
        try:
            benchdb.add_servers(bench.root, [1, 2])
            benchdb.add_devices(bench.root, n, 1)
            yield bench, [str(100000 + i) for i in range(n)]
        finally:
            bench.root.close()


def bench_chan_sip(
    n: int,
    runs: int,
    legacy_runs: int,
    log: Callable[[str], None],
    qualify_every: int = QUALIFY_EVERY,
) -> dict[str, Any]:
    """``n`` realtime chan_sip phones on Asterisk 16."""
    out: dict[str, Any] = {"peers": n, "asterisk": "16", "driver": "chan_sip realtime"}
    with _bench_run(n, qualify_every) as (bench, names):
        log(f"{n:>7} chan_sip phones: registering to Asterisk 16")
        with mor_server(
            "16",
            [AmiUser(AMI_USER, AMI_SECRET)],
            name="bench16",
            realtime=RealtimeDb(*bench.database),
            sip_phones=_phones(names, n),
            ports=bench.ports,
            qualifyfreq=qualify_every,
            register_timeout=60 + n / 100,
        ) as server:
            out["register_s"] = server.registered_in
            online = partial(_all_online, server.ast, n)
            wait_until(f"{n} phones qualified", online, 60 + n / 100, every=0.5)
            run_child(bench.job("collector", peer_source="sip"))  # migrates, warms up
            log(f"{n:>7} chan_sip phones: floor, collector cold, steady, legacy")
            out["floor"] = bench.repeat(runs, None, bench.job("floor"))
            out["cold"] = bench.repeat(
                runs, bench.cold_reset, bench.job("collector", peer_source="sip")
            )
            out["steady"] = bench.repeat(
                runs, bench.qualify_round, bench.job("collector", peer_source="sip")
            )
            if legacy_runs:
                out["legacy"] = bench.repeat(legacy_runs, bench.cold_reset, bench.job("legacy"))
    return out


def bench_pjsip(
    n: int, runs: int, log: Callable[[str], None], qualify_every: int = QUALIFY_EVERY
) -> dict[str, Any]:
    """``n`` static PJSIP endpoints with one registered phone each on Asterisk 22."""
    out: dict[str, Any] = {"peers": n, "asterisk": "22", "driver": "PJSIP"}
    with _bench_run(n, qualify_every) as (bench, names):
        endpoints = [
            PjsipEndpoint(name, "s", qualify_frequency=qualify_every, qualify_timeout=1.0)
            for name in names
        ]
        log(f"{n:>7} PJSIP phones: registering to Asterisk 22")
        with mor_server(
            "22",
            [AmiUser(AMI_USER, AMI_SECRET)],
            name="bench22",
            pjsip_endpoints=endpoints,
            pjsip_phones=_phones(names, n),
            ports=bench.ports,
            register_timeout=60 + n / 100,
        ) as server:
            out["register_s"] = server.registered_in
            reachable = partial(_contacts_reachable, server.ast, n)
            wait_until(f"{n} contacts qualified", reachable, 60 + n / 100, every=0.5)
            job = bench.job("collector", peer_source="auto")
            run_child(job)  # migrates, warms up
            log(f"{n:>7} PJSIP phones: collector cold, steady")
            out["pjsip_cold"] = bench.repeat(runs, bench.cold_reset, job)
            out["pjsip_steady"] = bench.repeat(runs, bench.qualify_round, job)
    return out


def bench_real(
    sip_sizes: list[int],
    pjsip_sizes: list[int],
    runs: int,
    legacy_runs: int,
    log: Callable[[str], None],
    qualify_every: int = QUALIFY_EVERY,
) -> list[dict[str, Any]]:
    results = [bench_chan_sip(n, runs, legacy_runs, log, qualify_every) for n in sip_sizes]
    results += [bench_pjsip(n, runs, log, qualify_every) for n in pjsip_sizes]
    return results
