"""The benchmark runs end to end at tiny sizes and reports every figure (no timing asserted)."""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path

import pytest

# bench/ is not an installed package: import it from the checkout
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.__main__ import main  # noqa: E402
from bench.report import MODES, WIDGET_LOADS  # noqa: E402

pytestmark = pytest.mark.mariadb

TINY = [
    "--sizes", "200,400",
    "--runs", "1",
    "--legacy-runs", "1",
    "--many-servers", "2",
    "--many-devices", "30",
    "--many-cycles", "2",
    "--widget-devices", "600",
    "--widget-iterations", "3",
    "--widget-seconds", "1",
    "--widget-cycle", "1",
    "--real-sizes", "60",
    "--real-pjsip", "60",
    "--real-qualify", "2",
    "--no-profile",
]  # fmt: skip


@pytest.fixture(scope="module")
def bench_run(mariadb: None, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("bench")
    capture = out / "stdout.txt"
    with capture.open("w") as stream, contextlib.redirect_stdout(stream):
        assert main([*TINY, "--out", str(out)]) == 0
    return out, capture.read_text()


def test_every_collector_figure_is_reported_for_every_size(
    bench_run: tuple[Path, str],
) -> None:
    results = json.loads((bench_run[0] / "latest.json").read_text())
    assert [entry["peers"] for entry in results["collector"]] == [200, 400]
    for entry in results["collector"]:
        for mode in MODES:
            figures = entry[mode]
            for key in ("wall_s", "process_wall_s", "cpu_s", "rss_mb"):
                assert figures[key] > 0, (entry["peers"], mode, key)
            if mode != "floor":
                assert figures["statements"] > 0, (entry["peers"], mode)
                assert figures["devices_rows"] is not None
        assert entry["cold"]["devices_rows"] == entry["peers"]
        assert entry["idle"]["devices_rows"] == 0


def test_many_servers_and_widget_figures_are_reported(
    bench_run: tuple[Path, str],
) -> None:
    results = json.loads((bench_run[0] / "latest.json").read_text())
    assert results["many_servers"]["ok"], results["many_servers"]["problems"]
    assert len(results["many_servers"]["cycle_wall_s"]) == 2
    assert "ok" in results["first_run_race"]
    widget = results["widget"]
    for name in ("api_1", "api_100", "api_500", "bullet"):
        assert widget["in_process"][name]["median_ms"] > 0
    loads = widget["gunicorn"]
    # hello-world driven with the URLs of each kind of load, three times
    assert set(loads["hello"]) == {"api_100_distinct", "bullet_distinct", "api_100_one_url",
                                   "bullet_one_url"}  # fmt: skip
    for name, figures in [*loads["hello"].items(), *((n, loads[n]) for n in WIDGET_LOADS)]:
        assert figures["rps"] > 0, name
        assert figures["p99_ms"] is not None, name
        assert figures["errors"] == 0, name
    assert all(len(hello["runs_rps"]) == 3 for hello in loads["hello"].values())
    for name in WIDGET_LOADS:
        # every distinct-URL load asks each URL once until the list wraps
        assert loads[name]["urls"] > 1 if "distinct" in name else loads[name]["urls"] == 1
    for page in ("page_hello", "page_bullets", "page_embed"):
        assert loads[page]["median_ms"] > 0, page
    assert loads["page_bullets"]["requests_per_view"] == 50
    assert loads["page_embed"]["requests_per_view"] == 1
    memory = widget["memory"]
    assert memory["growth_mb"] is not None and memory["limit_mb"] > 0
    assert "within_limit" in memory


def test_targets_table_and_plot_are_written(bench_run: tuple[Path, str]) -> None:
    out, printed = bench_run
    results = json.loads((out / "latest.json").read_text())
    statuses = {t["target"]: t["status"] for t in results["targets"]}
    assert len(statuses) == 17
    assert set(statuses.values()) <= {"pass", "FAIL", "n/a"}
    assert statuses["collector 100k cold"] == "n/a"
    assert statuses["memory growth of a widget worker (device cache on)"] in ("pass", "FAIL")
    assert (out / "collector.png").read_bytes().startswith(b"\x89PNG")
    for heading in ("## Collector cycle", "## Many servers", "## Widget", "## Targets"):
        assert heading in printed
    assert "| traffic (" in printed and "against a limit of" in printed


def test_the_collector_is_measured_against_real_asterisk_beside_legacy_and_the_raw_read(
    bench_run: tuple[Path, str],
) -> None:
    out, printed = bench_run
    results = json.loads((out / "latest.json").read_text())
    sip, pjsip = results["real_asterisk"]
    assert (sip["asterisk"], sip["peers"], pjsip["asterisk"], pjsip["peers"]) == (
        "16",
        60,
        "22",
        60,
    )
    for mode in ("floor", "cold", "steady", "legacy"):
        assert sip[mode]["process_wall_s"] > 0, mode
    assert sip["cold"]["devices_rows"] == sip["legacy"]["devices_rows"] == 60
    assert sip["cold"]["detail"]["counts"]["ok"] == 60  # every phone answered Asterisk's qualify
    assert pjsip["pjsip_cold"]["devices_rows"] == 60
    assert 0 <= sip["steady"]["devices_rows"] <= 60
    assert "## Real Asterisk" in printed and "a steady poll rewrote" in printed
    assert [t["status"] for t in results["real_targets"]] == ["n/a"]  # 10k not measured here
