"""``python -m bench``: the whole benchmark; ``--quick`` for the short one (about 4 minutes).

Prints the tables, writes ``bench/results/latest.json`` and the plot
``bench/results/collector.png``. See docs/PERFORMANCE.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

from . import cycle, many, real_asterisk, report, widget_bench
from . import db as benchdb

RESULTS = Path(__file__).resolve().parent / "results"
#: the benchmark's parts, in the order they run
PARTS = ("collector", "real", "startup", "many", "widget")


def _sizes(text: str) -> list[int]:
    return sorted({int(part.replace("_", "")) for part in text.split(",") if part.strip()})


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument("--quick", action="store_true", help="1k and 10k peers, fewer runs")
    p.add_argument("--sizes", type=_sizes, help="peer counts, e.g. 1000,10000,100000")
    p.add_argument("--runs", type=int, help="runs per collector figure (median is reported)")
    p.add_argument("--legacy-runs", type=int, help="runs of the legacy baseline per size")
    p.add_argument("--many-servers", type=int, help="collectors on one database")
    p.add_argument("--many-devices", type=int, help="devices per server")
    p.add_argument("--many-cycles", type=int, help="cycles of all collectors at once")
    p.add_argument("--widget-devices", type=int, help="devices in the widget's database")
    p.add_argument("--widget-iterations", type=int, help="in-process requests per endpoint")
    p.add_argument("--widget-seconds", type=float, help="load per endpoint under gunicorn")
    p.add_argument(
        "--widget-cycle",
        type=float,
        help="seconds of the distinct-URL loads, from empty caches (a poll cycle; default 60)",
    )
    p.add_argument(
        "--profile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="profile failing targets (default: on in the full run, off with --quick)",
    )
    p.add_argument(
        "--real-sizes",
        type=_sizes,
        help="realtime chan_sip phones on Debian's Asterisk 16 (default 2000; 10000 phones "
        "take about four minutes to register)",
    )
    p.add_argument(
        "--real-pjsip", type=_sizes, help="PJSIP phones on Debian's Asterisk 22 (default 2000)"
    )
    p.add_argument(
        "--real-qualify",
        type=int,
        default=real_asterisk.QUALIFY_EVERY,
        help="seconds between qualify rounds of the real phones (a steady run waits one)",
    )
    p.add_argument(
        "--only",
        choices=PARTS,
        action="append",
        help="run only this part (repeatable); the targets of the others read 'not measured'",
    )
    p.add_argument("--out", type=Path, default=RESULTS, help="results directory")
    return p


def _log(line: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {line}", file=sys.stderr, flush=True)


def _machine() -> dict[str, Any]:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    root = benchdb.root_connection()
    try:
        mariadb = benchdb.server_facts(root)
    finally:
        root.close()
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "mariadb": mariadb,
    }


def _many_servers(args: argparse.Namespace, quick: bool, results: dict[str, Any]) -> None:
    servers = args.many_servers or 5
    per_server = args.many_devices or (400 if quick else 4_000)
    cycles = args.many_cycles or (3 if quick else 10)
    with tempfile.TemporaryDirectory(prefix="mor-bench-") as tmp:
        with benchdb.bench_database() as database:
            _log(f"many servers: {servers} x {per_server} devices, {cycles} cycles")
            results["many_servers"] = many.run_many(
                database.name,
                database.url,
                Path(tmp) / "many",
                servers=servers,
                devices_per_server=per_server,
                cycles=cycles,
                log=_log,
            ).as_json()
        with benchdb.bench_database() as database:
            _log("many servers: first run of all at once on a fresh database")
            results["first_run_race"] = many.run_many(
                database.name,
                database.url,
                Path(tmp) / "race",
                servers=servers,
                devices_per_server=min(per_server, 200),
                cycles=1,
                migrate_first=False,
            ).as_json()


def main(argv: Optional[list[str]] = None) -> int:
    args = _parser().parse_args(argv)
    quick = args.quick
    sizes = args.sizes or ([1_000, 10_000] if quick else [1_000, 10_000, 100_000])

    def runs_for(n: int) -> int:
        if args.runs:
            return args.runs
        return 3 if quick else (5 if n <= 10_000 else 3)

    def legacy_runs_for(n: int) -> int:
        if args.legacy_runs is not None:
            return args.legacy_runs
        if quick:
            return 2
        return 5 if n <= 10_000 else 1

    started = time.perf_counter()
    results: dict[str, Any] = {
        "generated_at": datetime.now(timezone.utc).replace(microsecond=0).isoformat(),
        "mode": "quick" if quick else "full",
        "argv": sys.argv[1:] if argv is None else argv,
        "machine": _machine(),
    }
    profile = (not quick) if args.profile is None else args.profile
    parts = set(args.only or PARTS)
    if "collector" in parts:
        results["collector"] = cycle.bench_sizes(
            sizes, runs_for, legacy_runs_for, _log, outage_runs=2 if quick and not args.runs else 0
        )
    if "real" in parts:
        results["real_asterisk"] = real_asterisk.bench_real(
            args.real_sizes or [2_000],
            args.real_pjsip or [2_000],
            args.runs or 3,
            args.legacy_runs if args.legacy_runs is not None else (1 if quick else 3),
            _log,
            args.real_qualify,
        )
    if "startup" in parts:
        _log("start-up: python -c pass, the collector's imports, mor-retrieve-peers --help")
        results["startup"] = cycle.startup(args.runs or (5 if quick else 10))
    if "many" in parts:
        _many_servers(args, quick, results)
    if "widget" in parts:
        results["widget"] = widget_bench.bench_widget(
            args.widget_devices or 10_000,
            args.widget_iterations or (100 if quick else 300),
            args.widget_seconds or (2 if quick else 5),
            args.widget_cycle or (10 if quick else 60),
            _log,
            profile=profile,
        )

    results["targets"] = report.targets(results)
    results.setdefault("startup", {})["targets"] = report.startup_targets(results)
    results["real_targets"] = report.real_targets(results)
    failed = {t["target"] for t in results["targets"] if t["status"] == "FAIL"}
    profiles: dict[str, str] = {}
    if profile:
        for n, name in ((100_000, "collector 100k cold"), (10_000, "collector 10k cold")):
            if name in failed or (n == 100_000 and "collector peak RSS at 100k" in failed):
                profiles[f"collector cold {n}"] = cycle.profile_cold(n, _log)
                break
        widget_failed = any(t.startswith("widget") for t in failed)
        if widget_failed and "profile_api_100" in results.get("widget", {}):
            profiles["widget JSON 100 ids"] = results["widget"]["profile_api_100"]
    results.get("widget", {}).pop("profile_api_100", None)
    results["profiles"] = profiles
    results["seconds"] = round(time.perf_counter() - started, 1)

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "latest.json").write_text(json.dumps(results, indent=2) + "\n")
    why_not = report.plot(results, args.out / "collector.png")

    print("\n## Collector cycle\n")
    print(report.collector_table(results))
    print("\n## Real Asterisk\n")
    print(report.real_table(results))
    print("\n## Many servers\n")
    print(report.many_table(results))
    print("\n## Widget\n")
    print(report.widget_table(results))
    print("\n## Start-up\n")
    print(report.startup_table(results))
    print("\n## Targets\n")
    print(report.targets_table(results["targets"]))
    print("\nWhole process, as cron starts it:\n")
    print(report.targets_table(results["startup"]["targets"]))
    print("\nReal Asterisk:\n")
    print(report.targets_table(results["real_targets"]))
    for name, text in profiles.items():
        print(f"\n## Profile: {name}\n")
        print("\n".join(text.splitlines()[:70]))
    print(f"\nresults: {args.out / 'latest.json'}")
    print(f"plot: {args.out / 'collector.png'}" if why_not is None else f"no plot: {why_not}")
    print(f"benchmark took {results['seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
