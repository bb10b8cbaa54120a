"""The wheelhouse the roles build on the controller, and the lock files it is built from.

wheelhouse.py fills one folder per target Python from requirements/<lock>.lock; a fresh venv
installs from it with no index at all, a changed wheel is refused, a rerun leaves every byte
and mtime alone. The locks are checked against pyproject.toml: a dependency changed there
without 'make lock' fails here. Downloads go through pip's cache, so a rerun is quick.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.tags import Tag, compatible_tags, cpython_tags
from packaging.utils import canonicalize_name, parse_wheel_filename
from packaging.version import Version

import mor_plugin

try:
    import tomllib
except ModuleNotFoundError:  # Python < 3.11
    tomllib = pytest.importorskip("tomli")

pytestmark = pytest.mark.ansible

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "roles" / "mor_regstatus" / "files" / "wheelhouse.py"
LOCKS = {name: REPO / "requirements" / f"{name}.lock" for name in ("collector", "widget")}
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
#: the project's version: pyproject.toml reads it from the package (dynamic)
VERSION = mor_plugin.__version__
ARCH = platform.machine()
HERE = f"{sys.version_info[0]}.{sys.version_info[1]}-{ARCH}"
# The oldest Python of the fleet (EL8), whose wheels a 3.11 controller must still get right.
OLDEST = f"3.9-{ARCH}"
TARGETS = sorted({HERE, OLDEST})
PURE = {"py3-none-any", "py2.py3-none-any"}


# --------------------------------------------------------------------------- helpers


def run_wheelhouse(
    lock: Path, out: Path, *targets: str, source: Path = REPO
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--lock",
            str(lock),
            "--source",
            str(source),
            "--out",
            str(out),
            *(f"--target={t}" for t in targets),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )


def build(lock: Path, out: Path, *targets: str, source: Path = REPO) -> dict[str, Any]:
    done = run_wheelhouse(lock, out, *targets, source=source)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert done.stdout.count("\n") == 1, done.stdout
    return json.loads(done.stdout)


def lock_pins(lock: Path) -> list[tuple[Requirement, set[str]]]:
    """The lock read independently of wheelhouse.py: each pin and its sha256 set."""
    text = re.sub(r"\\\n", " ", lock.read_text())
    pins = []
    for line in text.splitlines():
        line = re.sub(r"(^|\s)#.*", "", line).strip()
        if not line:
            continue
        hashes = set(re.findall(r"--hash=sha256:([0-9a-f]{64})", line))
        requirement = Requirement(re.sub(r"--hash=\S+", "", line).strip())
        pins.append((requirement, hashes))
    return pins


def environment(target: str) -> dict[str, str]:
    python, arch = target.split("-")
    return {
        "python_version": python,
        "python_full_version": f"{python}.0",
        "implementation_name": "cpython",
        "platform_python_implementation": "CPython",
        "platform_machine": arch,
        "platform_system": "Linux",
        "sys_platform": "linux",
        "os_name": "posix",
    }


def applying(lock: Path, target: str) -> dict[str, tuple[str, set[str]]]:
    """Name -> (version, hashes) of the pins whose markers hold on the target."""
    chosen: dict[str, tuple[str, set[str]]] = {}
    for requirement, hashes in lock_pins(lock):
        if requirement.marker is None or requirement.marker.evaluate(environment(target)):
            name = canonicalize_name(requirement.name)
            assert name not in chosen, f"{lock.name} pins {name} twice for {target}"
            (spec,) = requirement.specifier
            chosen[name] = (spec.version, hashes)
    return chosen


def supported_tags(target: str) -> set[Tag]:
    python, arch = target.split("-")
    version = tuple(int(part) for part in python.split("."))
    platforms = [f"manylinux_2_{n}_{arch}" for n in range(28, 16, -1)] + [f"manylinux2014_{arch}"]
    if arch == "x86_64":
        platforms += [f"manylinux_2_{n}_{arch}" for n in range(16, 4, -1)]
        platforms += [f"manylinux2010_{arch}", f"manylinux1_{arch}"]
    abi = f"cp{version[0]}{version[1]}"
    return {*cpython_tags(version, [abi], platforms), *compatible_tags(version, abi, platforms)}


def snapshot(folder: Path) -> dict[str, tuple[Any, ...]]:
    """Every file's and folder's bytes, mode and mtime below ``folder``."""
    seen = {}
    for path in sorted(folder.rglob("*")):
        state = path.stat()
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir"
        seen[str(path.relative_to(folder))] = (digest, state.st_mode, state.st_mtime_ns)
    return seen


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def houses(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, dict[str, Any]]]:
    """One wheelhouse per lock, for this machine's Python and for the fleet's oldest."""
    built = {}
    for name, lock in LOCKS.items():
        out = tmp_path_factory.mktemp(f"wheelhouse-{name}")
        built[name] = (out, build(lock, out, *TARGETS))
    return built


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A loopback port that refuses connections (bound, never listening)."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        yield holder.getsockname()[1]


def offline_env(port: int) -> dict[str, str]:
    """No pip.conf, no PIP_* of this machine, every index and proxy at a closed port."""
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith(("PIP_", "UV_"))}
    dead = f"http://127.0.0.1:{port}"
    env.update(
        PIP_CONFIG_FILE=os.devnull,
        PIP_INDEX_URL=f"{dead}/simple",
        PIP_DISABLE_PIP_VERSION_CHECK="1",
        PIP_NO_INPUT="1",
        PIP_RETRIES="0",
        HTTP_PROXY=dead,
        HTTPS_PROXY=dead,
        http_proxy=dead,
        https_proxy=dead,
    )
    return env


def without_network() -> list[str]:
    """A prefix that runs a command in a network namespace of its own, where one can be had."""
    if os.geteuid() != 0 or not shutil.which("unshare"):
        return []
    probe = subprocess.run(["unshare", "--net", "true"], capture_output=True, timeout=30)
    return ["unshare", "--net"] if probe.returncode == 0 else []


# --------------------------------------------------------------------------- the wheelhouse


@pytest.mark.parametrize("name", LOCKS)
def test_each_target_folder_holds_what_the_json_says(
    houses: dict[str, tuple[Path, dict[str, Any]]], name: str
) -> None:
    out, summary = houses[name]
    assert summary["version"] == VERSION
    assert summary["lock_sha256"] == sha256(LOCKS[name])
    assert sorted(summary["targets"]) == sorted(TARGETS)
    for target, part in summary["targets"].items():
        folder = Path(part["dir"])
        assert folder == out / target
        assert part["files"] == sorted(os.listdir(folder))
        assert part["project_wheel"] in part["files"]
        assert part["project_wheel"].startswith(f"mor_regstatus-{VERSION}-")
        assert (folder / "requirements.lock").read_bytes() == LOCKS[name].read_bytes()
    wheels = {sha256(out / t / summary["targets"][t]["project_wheel"]) for t in TARGETS}
    assert len(wheels) == 1, "every target gets the same project wheel"


@pytest.mark.parametrize("name", LOCKS)
def test_every_target_gets_one_wheel_of_each_pin_that_applies_to_it(
    houses: dict[str, tuple[Path, dict[str, Any]]], name: str
) -> None:
    # The lock's markers are about the target's Python: on a 3.11 controller, pip alone
    # would skip the "python < 3.10" pins of a 3.9 target and ask for the 3.10+ ones.
    out, summary = houses[name]
    for target in TARGETS:
        wanted = applying(LOCKS[name], target)
        tags = supported_tags(target)
        found = {}
        for file in summary["targets"][target]["files"]:
            if file == "requirements.lock" or file == summary["targets"][target]["project_wheel"]:
                continue
            project, version, _, wheel_tags = parse_wheel_filename(file)
            assert wheel_tags & tags, f"{file} does not install on {target}"
            assert project not in found, f"two wheels of {project} for {target}"
            found[project] = (str(version), sha256(out / target / file))
        assert sorted(found) == sorted(wanted), target
        for project, (version, digest) in found.items():
            assert Version(version) == Version(wanted[project][0]), (target, project)
            assert digest in wanted[project][1], f"{project} for {target}: hash not in the lock"


def test_the_oldest_python_gets_its_own_compiled_wheels(
    houses: dict[str, tuple[Path, dict[str, Any]]],
) -> None:
    """Where a package has a C extension (greenlet, SQLAlchemy, MarkupSafe), 3.9 has its cp39."""
    out, summary = houses["widget"]
    python = "cp" + OLDEST.split("-")[0].replace(".", "")
    compiled = {}
    for file in summary["targets"][HERE]["files"]:
        if file.endswith(".whl"):
            project, _, _, wheel_tags = parse_wheel_filename(file)
            if not {str(tag) for tag in wheel_tags} & PURE:
                compiled[project] = file
    assert {"greenlet", "sqlalchemy", "markupsafe"} <= set(compiled)
    oldest = {}
    for file in summary["targets"][OLDEST]["files"]:
        if file.endswith(".whl"):
            project, _, _, wheel_tags = parse_wheel_filename(file)
            oldest[project] = {tag.interpreter for tag in wheel_tags}
    for project in compiled:
        assert oldest.get(project) == {python}, f"{project} for {OLDEST}: {oldest.get(project)}"


def test_a_rerun_changes_no_byte_and_no_mtime(
    houses: dict[str, tuple[Path, dict[str, Any]]],
) -> None:
    out, first = houses["widget"]
    before = {t: snapshot(out / t) for t in TARGETS}
    folders = {t: (out / t).stat().st_mtime_ns for t in TARGETS}
    again = build(LOCKS["widget"], out, *TARGETS)
    assert {t: snapshot(out / t) for t in TARGETS} == before
    assert {t: (out / t).stat().st_mtime_ns for t in TARGETS} == folders
    assert all(not part["changed"] for part in again["targets"].values())
    assert {**again, "targets": None} == {**first, "targets": None}


def test_a_rerun_mends_a_changed_wheel_and_drops_stale_ones(
    houses: dict[str, tuple[Path, dict[str, Any]]], tmp_path: Path
) -> None:
    out = tmp_path / "copy"
    shutil.copytree(houses["collector"][0], out)
    folder = out / HERE
    good = {p.name: sha256(p) for p in folder.iterdir()}
    victim = next(folder.glob("pymysql-*.whl"))
    victim.write_bytes(victim.read_bytes() + b"\0")
    (folder / "pymysql-0.9.3-py2.py3-none-any.whl").write_bytes(b"an old release")
    summary = build(LOCKS["collector"], out, HERE)
    assert summary["targets"][HERE]["changed"] is True
    assert {p.name: sha256(p) for p in folder.iterdir()} == good


def wheel_member(wheel: Path, name: str) -> bytes:
    with zipfile.ZipFile(wheel) as archive:
        return archive.read(name)


def test_the_project_wheel_follows_every_change_of_the_sources(
    houses: dict[str, tuple[Path, dict[str, Any]]], tmp_path: Path
) -> None:
    """The project's wheel is reused while its sources stay the same (a play asks for it on
    every run), and rebuilt from the changed sources the moment one byte changes."""
    source, out = tmp_path / "checkout", tmp_path / "house"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(".*", "build", "*.egg-info"))
    shutil.copytree(houses["collector"][0], out)
    module = "mor_plugin/status.py"

    def project_wheel() -> Path:
        summary = build(LOCKS["collector"], out, HERE, source=source)
        return out / HERE / summary["targets"][HERE]["project_wheel"]

    first = project_wheel()
    assert wheel_member(first, module) == (source / module).read_bytes()
    cached = sha256(first)
    assert sha256(project_wheel()) == cached
    (source / module).write_bytes((source / module).read_bytes() + b"# changed\n")
    changed = project_wheel()
    assert wheel_member(changed, module).endswith(b"# changed\n")
    (source / module).write_bytes((source / module).read_bytes()[: -len(b"# changed\n")])
    assert sha256(project_wheel()) == cached


def test_a_pin_without_a_wheel_for_a_target_is_named(tmp_path: Path) -> None:
    """One line on stderr: which pin, which Python, what to do; nothing on stdout."""
    # A release the lock keeps for newer Pythons only, asked for the oldest one.
    newer_only = [
        (requirement, hashes)
        for requirement, hashes in lock_pins(LOCKS["widget"])
        if requirement.marker
        and not requirement.marker.evaluate(environment(f"3.9-{ARCH}"))
        and requirement.marker.evaluate(environment(f"3.13-{ARCH}"))
    ]
    if not newer_only:
        pytest.skip("the widget lock has no release for newer Pythons only")
    requirement, hashes = newer_only[0]
    (spec,) = requirement.specifier
    pin = f"{requirement.name}=={spec.version}"
    lock = tmp_path / "newer-only.lock"
    lock.write_text(" ".join([pin, *(f"--hash=sha256:{h}" for h in sorted(hashes))]) + "\n")
    done = run_wheelhouse(lock, tmp_path / "out", f"3.9-{ARCH}")
    assert done.returncode != 0
    assert done.stdout == ""
    assert done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith(f"wheelhouse.py: no wheel of {pin} for Python 3.9 on {ARCH}"), (
        done.stderr
    )
    assert "make lock" in done.stderr
    assert not (tmp_path / "out" / f"3.9-{ARCH}").exists() or not any(
        (tmp_path / "out" / f"3.9-{ARCH}").glob("*.whl")
    )


# --------------------------------------------------------------------------- installing from it


@pytest.mark.parametrize(
    ("name", "imports"),
    [
        ("collector", ["mor_plugin", "mor_plugin.cli", "sqlalchemy", "pymysql", "panoramisk"]),
        ("widget", ["mor_plugin", "widget", "flask", "gunicorn", "prometheus_client"]),
    ],
)
def test_a_fresh_venv_installs_from_it_with_no_index(
    houses: dict[str, tuple[Path, dict[str, Any]]],
    tmp_path: Path,
    closed_port: int,
    name: str,
    imports: list[str],
) -> None:
    out, summary = houses[name]
    folder = out / HERE
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = str(venv / "bin" / "python")
    env = offline_env(closed_port)
    offline = without_network()
    install = [python, "-m", "pip", "install", "--no-index", "--find-links", str(folder)]
    for args in (
        ["--require-hashes", "-r", str(folder / "requirements.lock")],
        ["--no-deps", str(folder / summary["targets"][HERE]["project_wheel"])],
    ):
        done = subprocess.run(
            [*offline, *install, *args], capture_output=True, text=True, env=env, timeout=300
        )
        assert done.returncode == 0, done.stdout + done.stderr
        assert not re.search(r"Retrying|connection|Could not fetch", done.stdout + done.stderr)
    report = subprocess.run(
        [
            python,
            "-c",
            "import importlib, json, sys; from importlib.metadata import distributions;"
            f"[importlib.import_module(m) for m in {imports!r}];"
            "print(json.dumps({d.metadata['Name']: d.version for d in distributions()}))",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=True,
    )
    installed = {canonicalize_name(k): v for k, v in json.loads(report.stdout).items()}
    assert installed.pop("mor-regstatus") == VERSION
    for project, (version, _) in applying(LOCKS[name], HERE).items():
        assert installed.get(project) == version, project
    assert (venv / "bin" / "mor-retrieve-peers").is_file()
    if name == "widget":
        assert (venv / "bin" / "gunicorn").is_file()


def test_a_changed_wheel_is_refused(
    houses: dict[str, tuple[Path, dict[str, Any]]], tmp_path: Path, closed_port: int
) -> None:
    folder = tmp_path / "wheels"
    shutil.copytree(houses["widget"][0] / HERE, folder)
    victim = next(folder.glob("flask-*.whl"))
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-index",
            "--find-links",
            str(folder),
            "--require-hashes",
            "-r",
            str(folder / "requirements.lock"),
            "--target",
            str(tmp_path / "site"),
        ],
        capture_output=True,
        text=True,
        env=offline_env(closed_port),
        timeout=300,
    )
    assert done.returncode != 0
    assert "DO NOT MATCH THE HASHES" in done.stderr, done.stderr
    assert not (tmp_path / "site" / "flask").exists()


# --------------------------------------------------------------------------- the locks


def dependencies(lock: str) -> list[Requirement]:
    base = [Requirement(text) for text in PYPROJECT["dependencies"]]
    if lock == "collector":
        return base
    return base + [Requirement(text) for text in PYPROJECT["optional-dependencies"][lock]]


@pytest.mark.parametrize("name", LOCKS)
def test_the_lock_pins_every_dependency_of_pyproject_inside_its_range(name: str) -> None:
    pins: dict[str, list[tuple[str, Any]]] = {}
    for requirement, hashes in lock_pins(LOCKS[name]):
        (spec,) = requirement.specifier
        assert spec.operator == "==", f"{requirement} in {name}.lock is not pinned"
        assert hashes, f"{requirement.name} in {name}.lock has no hash"
        pins.setdefault(canonicalize_name(requirement.name), []).append(
            (spec.version, requirement.marker)
        )
    stale = "pyproject.toml changed without a re-lock: run 'make lock'"
    for wanted in dependencies(name):
        project = canonicalize_name(wanted.name)
        assert project in pins, f"{wanted} is not in requirements/{name}.lock -- {stale}"
        for version, _ in pins[project]:
            assert wanted.specifier.contains(version, prereleases=True), (
                f"requirements/{name}.lock pins {project}=={version}, outside {wanted} -- {stale}"
            )
        # Universal: exactly one pin of it holds on each Python and arch of the fleet.
        for python in range(9, 14):
            for arch in ("x86_64", "aarch64"):
                env = environment(f"3.{python}-{arch}")
                holding = [v for v, m in pins[project] if m is None or Marker(str(m)).evaluate(env)]
                assert len(holding) == 1, f"{project} on 3.{python}-{arch}: {holding} -- {stale}"
