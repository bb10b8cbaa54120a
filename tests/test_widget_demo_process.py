"""``make demo`` as a process: it stops quietly and at once, and says how to choose a port."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@contextmanager
def demo_process(tmp_path: Path, *args: str) -> Iterator[subprocess.Popen[str]]:
    """``python -m widget.demo`` in a process group of its own, up and serving; killed if a
    test leaves it running."""
    command = [sys.executable, "-m", "widget.demo", "--data-dir", str(tmp_path), *args]
    proc = subprocess.Popen(
        command,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()


def wait_until_serving(proc: subprocess.Popen[str]) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        if "Ctrl-C stops everything." in line:
            return
    pytest.fail(f"the demo did not start: {proc.communicate()[1]}")


# A collector that is always running (--interval 0, 2000 peers: a run takes a good part of
# a second): a second signal lands while the main thread waits for it to finish, which is
# where Python's KeyboardInterrupt used to surface as a traceback.
BUSY = ("--port", "0", "--peers", "2000", "--interval", "0")


@pytest.mark.parametrize(
    "signals",
    [
        pytest.param([("demo", signal.SIGTERM)], id="SIGTERM"),
        # make passes the SIGTERM of a service manager (sent to the group) on: two in a row
        pytest.param([("demo", signal.SIGTERM), ("demo", signal.SIGTERM)], id="SIGTERM-twice"),
        pytest.param([("group", signal.SIGTERM), ("demo", signal.SIGTERM)], id="group-SIGTERM"),
        # Ctrl-C in a terminal: SIGINT to the whole foreground group, and a second Ctrl-C
        pytest.param([("group", signal.SIGINT), ("group", signal.SIGINT)], id="Ctrl-C-twice"),
        pytest.param([("demo", signal.SIGINT), ("demo", signal.SIGTERM)], id="SIGINT-SIGTERM"),
    ],
)
def test_the_demo_stops_quietly_and_at_once_however_it_is_signalled(
    tmp_path: Path, signals: list[tuple[str, signal.Signals]]
) -> None:
    with demo_process(tmp_path, *BUSY) as proc:
        wait_until_serving(proc)
        time.sleep(0.5)  # a collector run under way
        started = time.monotonic()
        for target, signum in signals:
            if target == "group":
                os.killpg(proc.pid, signum)
            else:
                proc.send_signal(signum)
            time.sleep(0.1)
        out, err = proc.communicate(timeout=15)
        seconds = time.monotonic() - started
    assert (proc.returncode, err) == (0, "")
    assert "stopping the web server, the collector and the simulator" in out
    assert seconds < 5


def test_a_stop_signal_during_start_up_stops_the_demo_once_it_is_up(tmp_path: Path) -> None:
    with demo_process(tmp_path, "--port", "0", "--peers", "2000") as proc:
        deadline = time.monotonic() + 30
        while not (tmp_path / "mor.sqlite").exists() and time.monotonic() < deadline:
            time.sleep(0.01)  # the database is being seeded; the first collector run follows
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    assert (proc.returncode, err) == (0, "")
    assert "Ctrl-C stops everything." in out


def test_a_port_in_use_is_one_line_saying_how_to_choose_another(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with demo_process(tmp_path, "--port", str(port)) as proc:
            out, err = proc.communicate(timeout=30)
    assert proc.returncode == 1
    assert out == ""
    assert err == (
        f"widget.demo: cannot listen on 127.0.0.1:{port}: Address already in use"
        f" -- choose another port: make demo PORT={port + 1}"
        f" (or python -m widget.demo --port {port + 1})\n"
    )
