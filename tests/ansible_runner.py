"""Running the project's playbooks for real, for the tests: ansible-playbook from this venv
with every temporary folder of its own, MOR's files as a MOR Asterisk server has them,
and small readers of what an install left."""

from __future__ import annotations

import json
import os
import re
import secrets
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent

# What a MOR Asterisk server already has before the install.
MOR_CRON = (
    "# MOR minute actions\n"
    "*/10 * * * * root /usr/local/mor/mor_retrieve_peers\n"
    "* * * * * root /usr/local/mor/mor_minute_actions.sh >/dev/null 2>&1\n"
)
LEGACY_COLLECTOR = b"\x7fELF legacy mor_retrieve_peers v1.9\n"
# MOR's files on an Asterisk server, relative to its root.
LAUNCHER = "usr/local/mor/mor_retrieve_peers"
CRON = "etc/cron.d/mor_minute_actions"
MOR_CONF = "var/lib/asterisk/agi-bin/mor.conf"


@dataclass
class Run:
    rc: int
    out: str  # stdout, then stderr
    stdout: str = ""

    @property
    def changed(self) -> int:
        counts = re.findall(r"changed=(\d+)", self.out)
        assert counts, self.out[-3000:]
        return sum(int(c) for c in counts)

    @property
    def changed_tasks(self) -> list[str]:
        """The names of the tasks that reported a change, to say why a rerun was not idempotent."""
        names = []
        for block in self.out.split("\nTASK [")[1:]:
            if re.search(r"^changed: ", block, re.M):
                names.append(block.split("]", 1)[0])
        return names


class Ansible:
    """ansible-playbook and ansible from this venv, with every temp folder under ``base``."""

    def __init__(self, base: Path) -> None:
        self.base = base
        base.mkdir(parents=True, exist_ok=True)
        self.inventory = base / "inventory"
        self.inventory.write_text(
            "[mor_asterisk]\nlocalhost\n[mor_gui]\nlocalhost\n"
            f"[all:vars]\nansible_connection=local\nansible_python_interpreter={sys.executable}\n"
            "ansible_become=false\n"
        )
        self.env = dict(os.environ)
        self.env.update(
            ANSIBLE_CONFIG=str(REPO / "ansible.cfg"),
            ANSIBLE_HOME=str(base / "ansible-home"),
            ANSIBLE_LOCAL_TEMP=str(base / "local-tmp"),
            ANSIBLE_REMOTE_TEMP=str(base / "remote-tmp"),
            ANSIBLE_NOCOLOR="1",
            ANSIBLE_FORCE_COLOR="0",
            PIP_DISABLE_PIP_VERSION_CHECK="1",
            PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        )

    def playbook(
        self,
        name: str | Path,
        extra: dict[str, Any],
        *args: str,
        timeout: int = 300,
        inventory: Optional[Path] = None,
    ) -> Run:
        vars_file = self.base / f"vars-{secrets.token_hex(4)}.json"
        vars_file.write_text(json.dumps(extra))
        return self._run(
            [
                str(BIN / "ansible-playbook"),
                "-i",
                str(inventory or self.inventory),
                str(name if isinstance(name, Path) else REPO / "playbooks" / name),
                "-e",
                f"@{vars_file}",
                *args,
            ],
            timeout,
        )

    def adhoc(self, module: str, args: str) -> Run:
        return self._run(
            [
                str(BIN / "ansible"),
                "localhost",
                "-i",
                str(self.inventory),
                "-m",
                module,
                "-a",
                args,
            ],
            120,
        )

    def _run(self, argv: list[str], timeout: int) -> Run:
        done = subprocess.run(
            argv,
            cwd=REPO,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        return Run(done.returncode, done.stdout + done.stderr, done.stdout)


def collector_vars(root: Path, wheelhouse: Path, **more: Any) -> dict[str, Any]:
    """The collector role's variables for an install into the folder ``root``."""
    return {
        "mor_install_root": str(root),
        "mor_regstatus_wheelhouse_dir": str(wheelhouse),
        "mor_retrieve_peers_manage_service": False,  # no systemd here
        **more,
    }


def widget_vars(root: Path, wheelhouse: Path, db_url: str, **more: Any) -> dict[str, Any]:
    """The widget role's variables for an install into the folder ``root``."""
    return {
        "mor_install_root": str(root),
        "mor_regstatus_wheelhouse_dir": str(wheelhouse),
        "mor_status_widget_db_url": db_url,
        "mor_status_widget_manage_service": False,
        "mor_status_widget_healthcheck": False,
        "mor_status_widget_create_user": False,
        "mor_status_widget_user": "nobody",
        "mor_status_widget_web_servers": ["apache", "nginx"],
        **more,
    }


def local_fact(ansible: Ansible, root: Path) -> Optional[dict[str, Any]]:
    """The mor_registration_status fact of the install in ``root``, as Ansible reads it."""
    result = ansible.adhoc("setup", f"fact_path={root}/etc/ansible/facts.d filter=ansible_local")
    assert result.rc == 0, result.out
    # stdout alone: Python's warnings on stderr are not part of the answer
    facts = json.loads(result.stdout.split("=>", 1)[1])["ansible_facts"]
    return facts.get("ansible_local", {}).get("mor_registration_status")  # type: ignore[no-any-return]


def seed_mor_server(
    root: Path, db_url: str, ami_port: int, inside: Optional[str] = None
) -> dict[str, bytes]:
    """MOR's own files on an Asterisk server: mor.conf, the cron file, the legacy collector.

    ``inside`` is the root as the collector sees it (``/`` on a booted host)."""
    seen_root = (inside if inside is not None else str(root)).rstrip("/")
    mor_conf = (
        "# MOR configuration\n"
        "host = localhost\ndb = mor\nuser = mor\nsecret = mor\nport = 3306\n"
        "server_id = 1\n"
        "DEBUG = 0\n"
        f"db_url = {db_url}\n"
        f"ami_host = 127.0.0.1\nami_port = {ami_port}\nami_username = mor\nami_secret = s3cret\n"
        f"manager_conf = {seen_root}/etc/asterisk/manager.conf\n"
        "ami_connect_timeout = 2\nami_timeout = 5\n"
    )
    files = {
        MOR_CONF: mor_conf.encode(),
        CRON: MOR_CRON.encode(),
        LAUNCHER: LEGACY_COLLECTOR,
    }
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    (root / LAUNCHER).chmod(0o755)
    return files


def tree(root: Path) -> dict[str, Any]:
    """Every path under root with its mode and, for files, its bytes."""
    out: dict[str, Any] = {}
    for path in sorted(root.rglob("*")):
        info = path.lstat()
        content = path.read_bytes() if stat.S_ISREG(info.st_mode) else None
        out[str(path.relative_to(root))] = (stat.filemode(info.st_mode), content)
    return out


def read_env_file(path: Path) -> dict[str, str]:
    """The env file as systemd reads it (our writer double-quotes and escapes \\ " $ `)."""
    values = {}
    for line in path.read_text().splitlines():
        if not line or line.startswith("#"):
            continue
        key, _, value = line.partition("=")
        assert value.startswith('"') and value.endswith('"'), line
        values[key] = re.sub(r"\\(.)", r"\1", value[1:-1])
    return values


def wait_for_http(url: str, timeout: float = 20) -> tuple[int, str]:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - loopback
                return response.status, response.read().decode()
        except urllib.error.HTTPError as err:
            return err.code, err.read().decode()
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)
