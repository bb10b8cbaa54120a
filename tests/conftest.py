"""The world the tests run in: real MariaDB databases with MOR's tables, and SQLite.

Every test that asks for ``mor_db`` gets a database of its own (MOR X5
``devices``, ``servers``, ``server_devices``, ``users``) and a MySQL user with a
password limited to it, dropped afterwards.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Optional

import pytest
from ansible_runner import Ansible
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine

from mor_plugin import schema
from testbed.mariadb import scratch_mor_database

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent


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


@dataclass
class MorDatabase:
    """A throw-away MOR database and helpers to fill and read it."""

    name: str
    user: str
    password: str
    url: str
    engine: Engine

    def execute(self, sql: str, **params: Any) -> Any:
        with self.engine.begin() as conn:
            return conn.execute(text(sql), params)

    def add_server(self, server_id: int, **columns: Any) -> None:
        values = {
            "id": server_id,
            "server_ip": f"127.0.0.{server_id}",
            "hostname": f"ast{server_id}",
        }
        values.update(columns)
        with self.engine.begin() as conn:
            conn.execute(schema.servers.insert().values(**values))

    def add_user(self, user_id: int, username: str = "", **columns: Any) -> None:
        values = {
            "id": user_id,
            "username": username or f"user{user_id}",
            "password": "x",
            "first_name": "First",
            "last_name": "Last",
        }
        values.update(columns)
        cols = ", ".join(f"`{k}`" for k in values)
        binds = ", ".join(f":{k}" for k in values)
        self.execute(f"INSERT INTO users ({cols}) VALUES ({binds})", **values)

    def add_device(self, device_id: int, name: str, server_id: int = 1, **columns: Any) -> None:
        values = {
            "id": device_id,
            "name": name,
            "server_id": server_id,
            "device_type": "SIP",
            "user_id": 2,
            "secret": "s",
            "context": "mor",
            "extension": str(device_id),
            "username": name,
            "qualify": "yes",
        }
        values.update(columns)
        cols = ", ".join(f"`{k}`" for k in values)
        binds = ", ".join(f":{k}" for k in values)
        self.execute(f"INSERT INTO devices ({cols}) VALUES ({binds})", **values)

    def add_sighting(
        self,
        device_id: int,
        peer_name: str,
        seen_on: int,
        assigned: int,
        reg_status: str,
        first_seen: datetime,
        last_seen: datetime,
        **columns: Any,
    ) -> None:
        """A row of mor_regstatus_wrong_server: the device registered on server ``seen_on``
        although MOR assigns it to ``assigned``."""
        with self.engine.begin() as conn:
            conn.execute(
                schema.wrong_server.insert().values(
                    device_id=device_id,
                    peer_name=peer_name,
                    seen_on_server_id=seen_on,
                    assigned_server_id=assigned,
                    reg_status=reg_status,
                    first_seen=first_seen,
                    last_seen=last_seen,
                    **columns,
                )
            )

    def reg_statuses(self) -> dict[str, Optional[str]]:
        """``devices.name`` -> ``devices.reg_status`` for every device."""
        with self.engine.connect() as conn:
            rows = conn.execute(text("SELECT name, reg_status FROM devices ORDER BY id"))
            return {name: status for name, status in rows}

    def snapshot(self) -> dict[str, list[tuple[Any, ...]]]:
        """Every row of every table, to prove that a failed run changed nothing."""
        out: dict[str, list[tuple[Any, ...]]] = {}
        with self.engine.connect() as conn:
            tables = [row[0] for row in conn.execute(text("SHOW TABLES"))]
            for table in sorted(tables):
                rows = conn.execute(text(f"SELECT * FROM `{table}` ORDER BY 1"))
                out[table] = [tuple(row) for row in rows]
        return out


@contextmanager
def mor_database(prefix: str = "mor_t") -> Iterator[MorDatabase]:
    """A fresh MOR database on the real MariaDB with a password user of its own; dropped after."""
    with scratch_mor_database(prefix) as scratch:
        engine = create_engine(scratch.url, pool_pre_ping=True)
        try:
            yield MorDatabase(*scratch, url=scratch.url, engine=engine)
        finally:
            engine.dispose()


@pytest.fixture
def mor_db(mariadb: None) -> Iterator[MorDatabase]:
    """A MOR database of this test's own."""
    with mor_database() as db:
        yield db


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A SQLite file with the MOR columns the project uses (the demo's embedded default)."""
    url = f"sqlite:///{tmp_path / 'mor.sqlite'}"
    engine = create_engine(url)
    schema.mor_metadata.create_all(engine)
    engine.dispose()
    return url


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


def chromium_path() -> str:
    path = shutil.which("chromium") or "/usr/bin/chromium"
    return path
