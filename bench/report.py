"""Targets, the printed table and the plot of a benchmark's results."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Callable, Optional

MODES = (
    "floor",
    "cold",
    "steady",
    "idle",
    "outage",
    "legacy",
    "pjsip_cold",
    "pjsip_steady",
    "pjsip_idle",
)
MODE_COLORS = {
    "floor": "tab:blue",
    "cold": "tab:orange",
    "steady": "tab:green",
    "idle": "tab:gray",
    "outage": "tab:purple",
    "legacy": "tab:brown",
    "pjsip_cold": "tab:red",
    "pjsip_steady": "tab:olive",
    "pjsip_idle": "tab:cyan",
}
MODE_LABELS = {
    "floor": "raw AMI floor",
    "cold": "collector cold",
    "steady": "collector steady",
    "idle": "collector idle",
    "outage": "collector 30% outage",
    "legacy": "legacy MOR",
    "pjsip_cold": "PJSIP cold",
    "pjsip_steady": "PJSIP steady",
    "pjsip_idle": "PJSIP idle",
}
#: the widget's loads under gunicorn (bench.widget_bench.LOADS), as the table names them
WIDGET_LOADS = {
    "api_100_distinct": ("JSON status, 100 ids", "distinct", "on, poll cycle"),
    "bullet_distinct": ("bullet.svg", "distinct", "on, poll cycle"),
    "api_100_one_url": ("JSON status, 100 ids", "one", "on"),
    "bullet_one_url": ("bullet.svg", "one", "on"),
    "api_100_distinct_marks": ("JSON status, 100 ids", "distinct", "on, mark moving every 1 s"),
    "bullet_distinct_marks": ("bullet.svg", "distinct", "on, mark moving every 1 s"),
    "api_100_distinct_no_cache": ("JSON status, 100 ids", "distinct", "off"),
    "bullet_distinct_no_cache": ("bullet.svg", "distinct", "off"),
    "api_100_one_url_no_cache": ("JSON status, 100 ids", "one", "off"),
    "bullet_one_url_no_cache": ("bullet.svg", "one", "off"),
}
#: the widget's URL lists (bench.widget_bench.traffic), as the table names them
WIDGET_URLS = {
    "api_100_distinct": "the distinct JSON loads",
    "bullet_distinct": "the distinct bullet loads",
    "api_100_one_url": "the one-URL JSON loads",
    "bullet_one_url": "the one-URL bullet loads",
}
#: (load, target, share of hello-world's requests/s): judged on the URLs MOR's pages send;
#: the one repeated URL must not fall back from where the earlier per-URL answer cache had
#: it under the same load (JSON 57-66 %, bullet 76-79 %, in paired runs on one machine)
WIDGET_SHARE_TARGETS = (
    ("api_100_distinct", "widget JSON, 100 random ids, distinct URLs, a poll cycle", 0.35),
    ("bullet_distinct", "widget bullet, random device, distinct URLs, a poll cycle", 0.60),
    ("api_100_one_url", "widget JSON, 100 ids, one URL repeated", 0.60),
    ("bullet_one_url", "widget bullet, one URL repeated", 0.70),
)
#: the traffic phases of the widget's memory run (bench.widget_bench.memory), in order
MEMORY_PHASES = {
    "sig_case_variants": "one signed link for 500 devices, `sig` in random case",
    "fresh_exp": "one page's link, a fresh `exp` per view",
    "distinct_pages": "pages of 100 devices, each its own",
}


def _at(results: dict[str, Any], n: int) -> Optional[dict[str, Any]]:
    for entry in results.get("collector", []):
        if entry["peers"] == n:
            return entry  # type: ignore[no-any-return]
    return None


def _target(
    name: str, goal: str, value: Optional[float], ok: Optional[bool], shown: str
) -> dict[str, Any]:
    status = "n/a" if ok is None else ("pass" if ok else "FAIL")
    return {"target": name, "goal": goal, "value": value, "shown": shown, "status": status}


def _measured(
    name: str,
    goal: str,
    value: Optional[float],
    passes: Callable[[float], bool],
    shown: Callable[[float], str],
    missing: str = "not measured",
) -> dict[str, Any]:
    """A target on one figure; ``n/a`` and ``missing`` when the figure was not measured."""
    if value is None:
        return _target(name, goal, None, None, missing)
    return _target(name, goal, value, passes(value), shown(value))


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    at10k, at100k = _at(results, 10_000), _at(results, 100_000)
    cold10 = at10k["cold"]["wall_s"] if at10k else None
    out.append(
        _measured(
            "collector 10k cold",
            "<= 1 s median",
            cold10,
            lambda v: v <= 1.0,
            lambda v: f"{v:.3f} s",
        )
    )
    pjsip10 = at10k["pjsip_cold"]["wall_s"] if at10k and "pjsip_cold" in at10k else None
    out.append(
        _measured(
            "collector 10k PJSIP cold",
            "<= 1 s median",
            pjsip10,
            lambda v: v <= 1.0,
            lambda v: f"{v:.3f} s",
        )
    )
    cold100 = at100k["cold"]["wall_s"] if at100k else None
    out.append(
        _measured(
            "collector 100k cold",
            "<= 5 s median",
            cold100,
            lambda v: v <= 5.0,
            lambda v: f"{v:.3f} s",
            "not measured (full run only)",
        )
    )
    rss = max(at100k[m]["rss_mb"] for m in ("cold", "steady", "idle", "outage")) if at100k else None
    out.append(
        _measured(
            "collector peak RSS at 100k",
            "<= 150 MB",
            rss,
            lambda v: v <= 150,
            lambda v: f"{v:.0f} MB",
            "not measured (full run only)",
        )
    )
    ratio = None
    if at10k and "legacy" in at10k:
        ratio = at10k["legacy"]["wall_s"] / at10k["cold"]["wall_s"]
    out.append(
        _measured(
            "faster than legacy at 10k (cold)",
            ">= 5x",
            ratio,
            lambda v: v >= 5,
            lambda v: f"{v:.2f}x",
        )
    )
    sizes = sorted(entry["peers"] for entry in results.get("collector", []))
    slope = None
    if len(sizes) >= 2:
        a, b = _at(results, sizes[-2]), _at(results, sizes[-1])
        assert a is not None and b is not None
        slope = math.log(b["cold"]["wall_s"] / a["cold"]["wall_s"]) / math.log(
            sizes[-1] / sizes[-2]
        )
    out.append(
        _measured(
            "linear growth (cold, two largest sizes)",
            "log-log slope <= 1.15",
            slope,
            lambda v: v <= 1.15,
            lambda v: f"slope {v:.2f}",
        )
    )
    idle_rows = [e["idle"]["devices_rows"] for e in results.get("collector", [])]
    out.append(
        _measured(
            "steady state writes only changed rows",
            "0 devices rows when nothing changed",
            max(idle_rows) if idle_rows else None,
            lambda v: v == 0,
            lambda v: f"{v} rows",
        )
    )
    many = results.get("many_servers")
    out.append(
        _target(
            "many servers, one database",
            "no failure, no wrong write, counts right",
            None,
            None if many is None else many["ok"],
            "not measured"
            if many is None
            else ("all checks held" if many["ok"] else f"{len(many['problems'])} problem(s)"),
        )
    )
    race = results.get("first_run_race")
    out.append(
        _target(
            "first run of every server at once, fresh database",
            "no failure (migrations race)",
            None,
            None if race is None else race["ok"],
            "not measured"
            if race is None
            else ("all checks held" if race["ok"] else _failed_runs(race["problems"])),
        )
    )
    widget = results.get("widget")
    api = widget["in_process"]["api_100"]["median_ms"] if widget else None
    out.append(
        _measured(
            "widget JSON, 100 ids, in-process",
            "<= 5 ms median",
            api,
            lambda v: v <= 5.0,
            lambda v: f"{v:.2f} ms",
        )
    )
    loads = widget["gunicorn"] if widget else {}
    for key, label, goal in WIDGET_SHARE_TARGETS:
        share = loads[key]["share_of_hello"] if key in loads else None
        out.append(
            _measured(
                label,
                f">= {goal * 100:.0f} % of hello-world req/s",
                share,
                lambda v, goal=goal: v >= goal,
                lambda v: f"{v * 100:.0f} %",
            )
        )
    distinct = [loads[key] for key in ("api_100_distinct", "bullet_distinct") if key in loads]
    p99 = [load["p99_ms"] for load in distinct if load["p99_ms"] is not None]
    out.append(
        _measured(
            "widget p99 under the distinct-URL loads (a poll cycle)",
            "<= 25 ms",
            max(p99) if p99 else None,
            lambda v: v <= 25.0,
            lambda v: f"{v:.1f} ms",
        )
    )
    answered = [load for key, load in loads.items() if key in WIDGET_LOADS]
    out.append(
        _measured(
            "widget answers under load",
            "nothing but 200s",
            sum(load["errors"] for load in answered) if answered else None,
            lambda v: v == 0,
            lambda v: f"{v} other answers or socket errors",
        )
    )
    memory = widget.get("memory") if widget else None  # absent from older results files
    out.append(
        _target(
            "memory growth of a widget worker (device cache on)",
            "<= cache bound + 8 MB",
            memory["growth_mb"] if memory else None,
            memory["within_limit"] if memory else None,
            "not measured"
            if memory is None
            else f"{memory['growth_mb']:.1f} MB (limit {memory['limit_mb']:g} MB)",
        )
    )
    return out


def startup_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The design brief's targets on the whole process, what cron pays: the collector's
    start-up, the 10k cold run from process start to exit, and legacy's process against it."""
    at10k = _at(results, 10_000)
    cold = at10k["cold"] if at10k else None
    startup = cold["startup_s"] if cold else None
    process = cold["process_wall_s"] if cold else None
    ratio = None
    if at10k and cold and "legacy" in at10k:
        ratio = at10k["legacy"]["process_wall_s"] / cold["process_wall_s"]
    return [
        _measured(
            "collector start-up at 10k (cold; process minus cycle)",
            "<= 0.2 s median",
            startup,
            lambda v: v <= 0.2,
            lambda v: f"{v:.3f} s",
        ),
        _measured(
            "collector 10k cold, whole process",
            "<= 0.8 s median",
            process,
            lambda v: v <= 0.8,
            lambda v: f"{v:.3f} s",
        ),
        _measured(
            "faster than legacy at 10k (cold), whole process",
            ">= 5x",
            ratio,
            lambda v: v >= 5,
            lambda v: f"{v:.2f}x",
        ),
    ]


def startup_table(results: dict[str, Any]) -> str:
    """The start-up commands beside ``python -c pass``, and each size's cold start-up."""
    startup = results.get("startup")
    if not startup or "python" not in startup:  # not measured (--only)
        return ""
    labels = {
        "python": "`python -c pass`",
        "libraries": "`python -c 'import sqlalchemy.engine, <its MySQL dialect>, pymysql,"
        " panoramisk'` (the libraries a run needs)",
        "imports": "`python -c 'import mor_plugin.cli'` (the collector's imports)",
        "help": "`mor-retrieve-peers --help`",
    }
    lines = [
        "| process | median s (min-max) | x python -c pass (paired) |",
        "|---|---|---:|",
    ]
    for key, label in labels.items():
        if key not in startup:  # measured by an older bench
            continue
        m = startup[key]
        lines.append(
            f"| {label} ({startup['runs']}x) | {m['median_s']:.3f} "
            f"({m['min_s']:.3f}-{m['max_s']:.3f}) | {m['vs_python']:.1f} |"
        )
    cold = [
        f"{e['peers']:,} peers {e['cold']['startup_s']:.3f} s"
        for e in results.get("collector", [])
        if "cold" in e
    ]
    if cold:
        lines.append(
            "\ncollector runs, process minus cycle (interpreter, imports, exit), cold: "
            + ", ".join(cold)
        )
    lines.append(f"\nbytecode: {startup['bytecode']}")
    return "\n".join(lines)


def _failed_runs(problems: list[str]) -> str:
    errors = sorted({m for p in problems for m in re.findall(r"MySQL error \d+", p)})
    failed = sum(1 for p in problems if ": exit " in p)
    return f"{failed} run(s) failed" + (f" ({', '.join(errors)})" if errors else "")


def _fmt(value: Optional[float], digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def collector_table(results: dict[str, Any]) -> str:
    head = (
        "| peers | run | wall median s (min-max) | process s | CPU s | peak RSS MB "
        "| SQL statements | devices rows | own rows | us/peer |\n"
        "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|\n"
    )
    lines = []
    for entry in results.get("collector", []):
        n = entry["peers"]
        for mode in MODES:
            if mode not in entry:
                continue
            m = entry[mode]
            lines.append(
                f"| {n:,} | {MODE_LABELS[mode]} ({m['runs']}x) | {m['wall_s']:.3f} "
                f"({m['wall_min_s']:.3f}-{m['wall_max_s']:.3f}) | {m['process_wall_s']:.2f} "
                f"| {m['cpu_s']:.2f} | {m['rss_mb']:.0f} | "
                f"{'-' if m['statements'] is None else m['statements']} | "
                f"{'-' if m['devices_rows'] is None else m['devices_rows']} | "
                f"{'-' if m['own_rows'] is None else m['own_rows']} | "
                f"{m['wall_s'] / n * 1e6:.1f} |"
            )
    return head + "\n".join(lines)


def real_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The brief's ratio on the real Asterisk: legacy's whole process against the collector's
    cold one, 10k realtime chan_sip phones, same Asterisk, same run."""
    out = []
    for entry in results.get("real_asterisk", []):
        legacy, cold = entry.get("legacy"), entry.get("cold")
        if entry["peers"] != 10_000 or not legacy or not cold:
            continue
        ratio = legacy["process_wall_s"] / cold["process_wall_s"]
        out.append(
            _target(
                f"Asterisk {entry['asterisk']}, 10k phones: cold vs legacy, whole process",
                ">= 5x",
                ratio,
                ratio >= 5,
                f"{ratio:.1f}x ({cold['process_wall_s']:.2f} s against "
                f"{legacy['process_wall_s']:.2f} s)",
            )
        )
    if not out:
        out.append(
            _target(
                "Asterisk 16, 10k phones: cold vs legacy, whole process",
                ">= 5x",
                None,
                None,
                "not measured",
            )
        )
    return out


def real_table(results: dict[str, Any]) -> str:
    """The collector against Debian's Asterisk with registered phones, beside legacy and the
    raw AMI read on the same Asterisk, in the same run."""
    head = (
        "| Asterisk | phones | run | wall median s (min-max) | process s | CPU s "
        "| devices rows | x legacy (process) |\n"
        "|---|---:|---|---|---:|---:|---:|---:|\n"
    )
    lines = []
    for entry in results.get("real_asterisk", []):
        n = entry["peers"]
        legacy = entry.get("legacy")
        for mode in MODES:
            if mode not in entry:
                continue
            m = entry[mode]
            ratio = (
                f"{legacy['process_wall_s'] / m['process_wall_s']:.1f}"
                if legacy and mode in ("cold", "steady")
                else "-"
            )
            lines.append(
                f"| {entry['asterisk']} {entry['driver']} | {n:,} | {MODE_LABELS[mode]} "
                f"({m['runs']}x) | {m['wall_s']:.3f} ({m['wall_min_s']:.3f}-{m['wall_max_s']:.3f})"
                f" | {m['process_wall_s']:.2f} | {m['cpu_s']:.2f} | "
                f"{'-' if m['devices_rows'] is None else m['devices_rows']} | {ratio} |"
            )
    jitter = [
        f"{entry['asterisk']} {entry['driver']}, {entry['peers']:,} phones: a steady poll "
        f"rewrote {m['devices_rows']} rows ({m['devices_rows'] / entry['peers'] * 100:.0f} %)"
        for entry in results.get("real_asterisk", [])
        for mode in ("steady", "pjsip_steady")
        if (m := entry.get(mode)) and m["devices_rows"] is not None
    ]
    return head + "\n".join(lines) + "".join(f"\n\n{line}" for line in jitter)


def widget_table(results: dict[str, Any]) -> str:
    widget = results.get("widget")
    if not widget:
        return ""
    lines = [
        "In-process (Flask's test client, device cache off, every request reaches the database):",
        "",
        "| request | median ms | p90 ms |",
        "|---|---:|---:|",
    ]
    names = {
        "api_1": "JSON status, 1 id",
        "api_100": "JSON status, 100 ids",
        "api_500": "JSON status, 500 ids",
        "bullet": "bullet.svg",
    }
    for key, label in names.items():
        inp = widget["in_process"].get(key)
        if inp:
            lines.append(f"| {label} | {inp['median_ms']:.2f} | {inp['p90_ms']:.2f} |")
    loads = widget["gunicorn"]
    lines += [
        "",
        "Under gunicorn (2 sync workers, new ones for every load: device caches start "
        "empty, as right after a poll; the collector runs before each load), driven by "
        "`wrk -t2 -c8` from another process; *distinct*: URLs signed anew for random "
        "devices, as MOR's pages sign them; *one*: the same URL again and again; *poll "
        "cycle*: the load lasts a poll cycle (a cron minute in the full run), the others a "
        "few seconds; *mark moving*: server 1's change mark moves every second, as a "
        "listener writing all the time moves it. Each share is against hello-world driven "
        "with the same URLs (the median of three runs: before, between and after):",
        "",
        "| request | URLs | device cache | s | req/s | p50 ms | p99 ms | not 200 "
        "| share of hello-world |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for source, hello in loads.get("hello", {}).items():
        runs = ", ".join(_fmt(rps, 0) for rps in hello.get("runs_rps", []))
        lines.append(
            f"| bare Flask hello-world, the URLs of {WIDGET_URLS.get(source, source)} "
            f"(runs: {runs}) | {'distinct' if 'distinct' in source else 'one'} | - | - "
            f"| {_fmt(hello['rps'], 0)} | {_fmt(hello['p50_ms'], 1)} "
            f"| {_fmt(hello['p99_ms'], 1)} | {hello['errors']} | - |"
        )
    for key, (label, urls, cache) in WIDGET_LOADS.items():
        load = loads.get(key)
        if load is None:
            continue
        share = load.get("share_of_hello")
        lines.append(
            f"| {label} | {urls} | {cache} | {_fmt(load.get('seconds'), 0)} "
            f"| {_fmt(load['rps'], 0)} | {_fmt(load['p50_ms'], 1)} "
            f"| {_fmt(load['p99_ms'], 1)} | {load['errors']} "
            f"| {'-' if share is None else f'{share * 100:.0f} %'} |"
        )
    pages = [(k, loads[k]) for k in ("page_hello", "page_bullets", "page_embed") if k in loads]
    if pages:
        labels = {
            "page_hello": "hello-world, as many requests as bullets (the floor)",
            "page_bullets": "one bullet.svg per device",
            "page_embed": "embed.js: one JSON request for the page",
        }
        lines += [
            "",
            "A device list page of 50 devices, each view a new page signed anew, its requests "
            "fetched 6 at a time as a browser does (device cache on), time to the last answer:",
            "",
            "| page | requests | median ms | p90 ms |",
            "|---|---:|---:|---:|",
        ]
        lines += [
            f"| {labels[key]} | {page['requests_per_view']} | {page['median_ms']:.1f} "
            f"| {page['p90_ms']:.1f} |"
            for key, page in pages
        ]
    memory = widget.get("memory")  # absent from older results files
    if memory:
        lines.append(f"\n{memory_table(memory)}")
    return "\n".join(lines)


def memory_table(memory: dict[str, Any]) -> str:
    """A widget worker's RSS after each kind of traffic, and its growth against the limit."""
    lines = [
        f"| traffic ({memory['variants']:,} requests each) | RSS after, MB |",
        "|---|---:|",
        f"| start | {memory['start']['rss_mb']:.1f} |",
    ]
    lines += [
        f"| {label} | {memory[key]['rss_mb']:.1f} |"
        for key, label in MEMORY_PHASES.items()
        if key in memory
    ]
    cache = (
        f"; cache {memory['cache_entries']:,} entries, {memory['cache_mb']:.1f} MB"
        if "cache_entries" in memory
        else ""
    )
    lines.append(
        f"\ngrowth {memory['growth_mb']:.1f} MB against a limit of {memory['limit_mb']:g} MB: "
        f"{'held' if memory['within_limit'] else 'EXCEEDED'}{cache}; "
        f"peak {memory['peak_mb']:.1f} MB"
    )
    return "\n".join(lines)


def many_table(results: dict[str, Any]) -> str:
    many = results.get("many_servers")
    if not many:
        return ""
    race = results.get("first_run_race")
    lines = [
        f"{many['servers']} servers, {many['devices_total']:,} devices, {many['cycles']} cycles "
        f"(collectors started together): cycle wall median {many['cycle_wall_median_s']:.2f} s, "
        f"transaction retries {many['transaction_retries']}, "
        f"{'all checks held' if many['ok'] else 'PROBLEMS: ' + '; '.join(many['problems'])}",
    ]
    if race is not None:
        first = race["problems"][0] if race["problems"] else ""
        lines.append(
            "\nfirst run of every server at once on a fresh (unmigrated) database: "
            + (
                "all checks held"
                if race["ok"]
                else f"{_failed_runs(race['problems'])}, e.g. {first[:240]}"
            )
        )
    return "\n".join(lines)


def targets_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| target | goal | measured | result |", "|---|---|---|---|"]
    lines += [f"| {t['target']} | {t['goal']} | {t['shown']} | {t['status']} |" for t in rows]
    return "\n".join(lines)


def plot(results: dict[str, Any], path: Path) -> Optional[str]:
    """Cost against peer count (wall time and peak RSS); None, or why there is no plot."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install -e '.[dev]')"
    entries = results.get("collector", [])
    if not entries:
        return "no collector results"
    sizes = [e["peers"] for e in entries]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
    for mode in MODES:
        points = [(e["peers"], e[mode]) for e in entries if mode in e]
        if not points:
            continue
        left.plot(
            [p for p, _ in points],
            [m["wall_s"] for _, m in points],
            marker="o",
            color=MODE_COLORS[mode],
            label=MODE_LABELS[mode],
        )
        if mode in ("cold", "legacy", "floor", "steady"):
            right.plot(
                [p for p, _ in points],
                [m["rss_mb"] for _, m in points],
                marker="o",
                color=MODE_COLORS[mode],
                label=MODE_LABELS[mode],
            )
    left.scatter([10_000, 100_000], [1.0, 5.0], marker="_", s=400, color="red", label="target")
    left.set_xscale("log")
    left.set_yscale("log")
    left.set_xlabel("SIP peers")
    left.set_ylabel("wall time per cycle, s (median)")
    left.set_title("Collector cycle vs legacy and raw AMI floor")
    left.grid(True, which="both", alpha=0.3)
    left.legend(fontsize=8)
    right.axhline(150, color="red", linestyle="--", label="target at 100k")
    right.set_ylim(0, 175)
    right.set_xscale("log")
    right.set_xlabel("SIP peers")
    right.set_ylabel("peak RSS of the process, MB")
    right.set_title("Memory")
    right.grid(True, which="both", alpha=0.3)
    right.legend(fontsize=8)
    right.set_xticks(sizes)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return None
