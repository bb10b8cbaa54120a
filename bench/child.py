"""One measured run in a process of its own: ``python -m bench.child '<json job>'``.

The simulator stays in the bench process, so the figures here (cycle wall
time, CPU time, peak RSS, SQL statements, rows written) are the collector's
alone. Wall and CPU time cover the cycle (``cli.collect``), not the imports
before it; the parent also times the whole process. The last line on stdout
is the JSON result.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path
from typing import Any, Callable


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _peak_rss_mb() -> float:
    """This process's peak RSS: ``VmHWM`` of its own address space.

    ``ru_maxrss`` would not do: Linux carries the parent's high-water mark
    across fork+exec, and the parent holds the simulator's peers.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _collector(job: dict[str, Any]) -> Callable[[], dict[str, Any]]:
    from mor_plugin import cli
    from mor_plugin.config import Settings

    tmp = Path(job["tmp"])
    settings = Settings(
        db_url=job["db_url"],
        server_id=job["server_id"],
        ami_port=job["ami"]["port"],
        ami_username=job["ami"]["username"],
        ami_secret=job["ami"]["secret"],
        ami_list_timeout=300,
        manager_conf=tmp / "no-manager.conf",
        log_file=tmp / "collector.log",
        state_file=tmp / "state.json",
        lock_file=tmp / "run.lock",
        peer_source=job.get("peer_source", "auto"),
    )

    def run() -> dict[str, Any]:
        profiler = None
        if job.get("profile"):
            import cProfile

            profiler = cProfile.Profile()
            profiler.enable()
        summary = cli.collect(settings)
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(job["profile"])
        out = summary.as_json()
        out.pop("result", None)
        return out

    return run


def _legacy(job: dict[str, Any]) -> Callable[[], dict[str, Any]]:
    from bench import legacy

    return lambda: legacy.run(job["pymysql"], job["server_id"], job["ami"])


def _floor(job: dict[str, Any]) -> Callable[[], dict[str, Any]]:
    from bench import floor

    ami = job["ami"]
    return lambda: floor.read_list(ami["host"], ami["port"], ami["username"], ami["secret"])


def main() -> int:
    job = json.loads(sys.argv[1])
    counter = None
    if job["kind"] != "floor":
        from bench import counting

        counter = counting.install()
    prepare = {"collector": _collector, "legacy": _legacy, "floor": _floor}[job["kind"]]
    run = prepare(job)  # imports are not part of the cycle; the process time shows them
    cpu0, wall0 = _cpu(), time.perf_counter()
    detail = run()
    wall, cpu = time.perf_counter() - wall0, _cpu() - cpu0
    result = {
        "wall": wall,
        "cpu": cpu,
        "rss_mb": _peak_rss_mb(),
        "detail": detail,
    }
    if counter is not None:
        result.update(counter.as_json())
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
