"""The fixtures the tests share; what they share besides fixtures is in
``regstatus_helpers.py``.

- ``mariadb``: the local MariaDB answers (started here, as root, when it is down).
- ``mor_db``: a MOR database of the test's own on it (MOR X5's ``devices``, ``servers``,
  ``server_devices``, ``users``) and a MySQL user with a password limited to it, both
  dropped afterwards.
- ``collector_world``, ``mor``, ``sim``: a MOR server as the collector meets it. ``mor``
  is ``mor_db`` holding the world's servers and devices, ``sim`` the simulated Asterisk
  listing its peers, on 127.0.0.1, for the test alone. The world is
  ``regstatus_helpers.EVERY_STATUS``, unless a test file overrides ``collector_world``
  with another, or ``mor`` and ``sim`` with a world of its own.
- ``sqlite_url``: a SQLite file with the MOR columns the project uses (the demo's default).
- ``apps``: ``regstatus_helpers.make_app``, its database connections closed after the test.
- ``wheelhouse`` (the session's) and ``ansible`` (a test file's): the Ansible controller.
- ``artifacts_dir``: where tests leave screenshots and logs for a human.

No test sees the developer's own ``MOR_WIDGET_*`` settings.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import pytest
from ansible_runner import Ansible
from flask import Flask
from regstatus_helpers import (
    EVERY_STATUS,
    ROOT,
    CollectorWorld,
    MorDatabase,
    clear_widget_env,
    make_app,
    mor_database,
    simulated_asterisk,
)
from sqlalchemy import create_engine

from mor_plugin import schema
from mor_plugin.simulator import AmiSimulator
from testbed.mariadb import MariaDBUnavailable, ensure_running

# The files that take minutes (ansible-playbook runs; the nspawn hosts), slowest first.
SLOWEST_FILES = ("test_fleet.py", "test_ansible_lifecycle.py", "test_ansible.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The slowest files first: on several workers (make test: pytest -n) files are handed
    out in this order, so the long ones start at once instead of being left for last and
    the workers end together. The order within a file stays."""

    def rank(item: pytest.Item) -> int:
        name = item.path.name
        return SLOWEST_FILES.index(name) if name in SLOWEST_FILES else len(SLOWEST_FILES)

    items.sort(key=rank)


@pytest.fixture(autouse=True)
def _no_widget_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The developer's own MOR_WIDGET_* settings never reach a test."""
    clear_widget_env(monkeypatch)


@pytest.fixture(scope="session")
def mariadb() -> None:
    """MariaDB is up (started here if it is down)."""
    try:
        ensure_running()
    except MariaDBUnavailable as err:
        pytest.exit(str(err), 2)


@pytest.fixture
def mor_db(mariadb: None) -> Iterator[MorDatabase]:
    """A MOR database of this test's own."""
    with mor_database() as db:
        yield db


@pytest.fixture
def collector_world() -> CollectorWorld:
    """The MOR server that ``mor`` and ``sim`` build."""
    return EVERY_STATUS


@pytest.fixture
def sim(collector_world: CollectorWorld) -> Iterator[AmiSimulator]:
    """The world's Asterisk, simulated."""
    # the test's own copies: it may change them
    peers = [replace(peer) for peer in collector_world.peers]
    with simulated_asterisk(peers, collector_world.asterisk) as running:
        yield running


@pytest.fixture
def mor(collector_world: CollectorWorld, mor_db: MorDatabase) -> MorDatabase:
    """This test's MOR database, holding the world's servers and devices."""
    collector_world.fill(mor_db)
    return mor_db


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A SQLite file with the MOR columns the project uses (the demo's embedded default)."""
    url = f"sqlite:///{tmp_path / 'mor.sqlite'}"
    engine = create_engine(url)
    schema.mor_metadata.create_all(engine)
    engine.dispose()
    return url


@pytest.fixture
def apps() -> Iterator[Callable[..., Flask]]:
    """``make_app`` whose database connections are closed after the test."""
    made: list[Flask] = []

    def make(url: str, **settings: Any) -> Flask:
        app = make_app(url, **settings)
        made.append(app)
        return app

    yield make
    for app in made:
        app.extensions["mor_widget_db"].dispose()


@pytest.fixture(scope="session")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The Ansible controller's wheelhouse folder for the session: the first play builds it,
    the others find it complete (as a controller does between runs)."""
    return tmp_path_factory.mktemp("wheelhouse")


@pytest.fixture(scope="module")
def ansible(tmp_path_factory: pytest.TempPathFactory) -> Ansible:
    """ansible-playbook from this venv, with its temporary folders of its own."""
    return Ansible(tmp_path_factory.mktemp("ansible"))


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    """Where tests leave screenshots and logs for a human to look at."""
    path = ROOT / "artifacts"
    path.mkdir(exist_ok=True)
    return path
