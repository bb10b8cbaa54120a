"""Many Asterisk servers, one MOR database: every collector at the same moment, cycle after cycle.

The scenario lives in ``bench.many`` (the benchmark runs it with 5 x 4,000
devices and 10 cycles); here it runs at test size: 5 servers x 400 devices,
3 cycles, each server also seeing 20 phones that MOR assigns to another server.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from regstatus_helpers import MorDatabase

# bench/ is not an installed package: import it from the checkout
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.many import run_many  # noqa: E402

pytestmark = pytest.mark.mariadb


def test_five_collectors_at_once_keep_every_server_to_its_own_devices(
    mor_db: MorDatabase, tmp_path: Path
) -> None:
    report = run_many(
        mor_db.name,
        mor_db.url,
        tmp_path,
        servers=5,
        devices_per_server=400,
        intruders=20,
        cycles=3,
    )

    assert report.failed_runs == [], "no run may fail (deadlock, lock wait, ...)"
    assert report.wrong_rows == [], "every device holds its own server's status"
    assert report.bad_counts == [], "every run's counts match its server's list"
    assert len(report.cycle_wall_s) == 3
    assert report.changed[0] == [400] * 5, "the first cycle writes every device once"
    assert all(0 < n < 400 for n in report.changed[-1]), "later cycles write only changes"
