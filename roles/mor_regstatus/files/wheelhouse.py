#!/usr/bin/env python3
"""Builds the wheelhouse the targets install from, with no package index.

Run on the Ansible controller by the controller's Python (it needs pip, nothing else):

    wheelhouse.py --lock requirements/widget.lock --source CHECKOUT --out DIR \\
        --target 3.11-x86_64 --target 3.9-x86_64 [--pip-arg=--index-url=URL ...]

For each target ``X.Y[.Z]-ARCH`` (CPython X.Y on Linux ARCH, x86_64 or aarch64, glibc >=
--glibc) it fills ``DIR/<target>/`` with the project's wheel (built once from CHECKOUT, with a
fixed SOURCE_DATE_EPOCH: the same sources give the same bytes), one wheel of every pin of the
lock that applies to that Python and arch (the lock's hashes checked by pip) and a copy of the
lock named ``requirements.lock``. Targets then run
``pip install --no-index --find-links DIR/<t> --require-hashes -r DIR/<t>/requirements.lock``.

The lock's markers are evaluated here, for each target: ``pip download --python-version``
picks wheels for the target's Python but evaluates a requirement file's markers against the
Python that runs pip (it skips a pin "for python < 3.10" on a 3.11 controller and asks for the
3.10+ one), so pip is only given the lines that apply, without their markers.

A rerun is cheap and changes nothing that is right already: a wheel whose sha256 the lock lists
and whose tags fit the target is kept (only missing ones are downloaded: no pip download at
all when none is), files that are no longer wanted are removed, the project wheel and the lock
copy are written only when their bytes differ, and the project's wheel is built again only
when the sources it is made of changed (the last build is kept in DIR/.project-wheel/).

Prints one JSON line: {"version", "lock_sha256", "targets": {target: {"dir", "files",
"project_wheel", "changed"}}}. Any failure: one line on stderr saying what to fix, exit 1.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

# 1980-01-01, the oldest time a zip file can hold.
SOURCE_DATE_EPOCH = "315532800"
LOCK_COPY = "requirements.lock"
# Inside --out: the last project wheel built, in a folder named after its sources' digest.
PROJECT_CACHE = ".project-wheel"
# The oldest glibc with a manylinux tag per arch, and the legacy names of some tags.
OLDEST_GLIBC_MINOR = {"x86_64": 5, "aarch64": 17}
LEGACY_TAGS = {5: "manylinux1", 12: "manylinux2010", 17: "manylinux2014"}
# When the target names no patch release, markers are evaluated at both ends of the series.
PATCH_ENDS = (0, 99)
# What the source copy leaves out: VCS, venvs, caches and earlier build output.
SOURCE_IGNORE = shutil.ignore_patterns(
    ".*", "build", "dist", "*.egg-info", "__pycache__", "*.pyc", "node_modules"
)


class Failure(Exception):
    """A problem the user has to fix; its message is the one line printed."""


def _packaging() -> Any:
    """pip's own copy of packaging (markers, tags): the controller's Python has pip."""
    try:
        from pip._vendor.packaging import markers, tags
    except ImportError:
        try:
            from packaging import markers, tags
        except ImportError:
            raise Failure(
                f"{sys.executable} has no pip: run wheelhouse.py with a Python that has pip"
            ) from None
    return markers, tags


# --------------------------------------------------------------------------- the lock


@dataclass(frozen=True)
class Pin:
    name: str  # normalised (PEP 503)
    version: str
    marker: Optional[str]
    hashes: frozenset[str]

    @property
    def spec(self) -> str:
        return f"{self.name}=={self.version}"

    def requirement_line(self) -> str:
        return " ".join([self.spec, *(f"--hash=sha256:{h}" for h in sorted(self.hashes))])


_PIN = re.compile(
    r"^(?P<name>[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?)\s*==\s*(?P<version>[^\s;]+)"
    r"\s*(?:;\s*(?P<marker>.+?))?\s*$"
)
_HASH = re.compile(r"(?:^|\s)--hash[=\s](?P<algo>\w+):(?P<digest>[0-9a-fA-F]+)(?=\s|$)")


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _logical_lines(text: str) -> Iterator[tuple[int, str]]:
    """pip's reading of a requirements file: comments dropped, backslash lines joined."""
    start, parts = 1, []
    for number, raw in enumerate([*text.splitlines(), ""], 1):
        line = re.sub(r"(^|\s+)#.*$", "", raw)
        if not parts:
            start = number
        parts.append(line[:-1] if line.endswith("\\") else line)
        if line.endswith("\\"):
            continue
        joined = " ".join(part.strip() for part in parts if part.strip())
        parts = []
        if joined:
            yield start, joined


def read_lock(path: Path) -> tuple[bytes, list[Pin]]:
    """The lock's bytes and its pins."""
    try:
        data = path.read_bytes()
        text = data.decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise Failure(f"cannot read the lock {path}: {exc}") from None
    pins = []
    for number, line in _logical_lines(text):
        hashes = set()
        for match in _HASH.finditer(line):
            if match["algo"] != "sha256":
                raise Failure(f"{path}:{number}: only sha256 hashes are taken, not {match['algo']}")
            hashes.add(match["digest"].lower())
        requirement = _HASH.sub(" ", line).strip()
        pin = _PIN.match(requirement)
        if not pin or requirement.startswith("-"):
            raise Failure(
                f"{path}:{number}: not a pinned 'name==version' line: {requirement[:120]!r}"
                " (regenerate it with 'make lock')"
            )
        if not hashes:
            raise Failure(f"{path}:{number}: {pin['name']} has no --hash (regenerate: make lock)")
        pins.append(Pin(normalise(pin["name"]), pin["version"], pin["marker"], frozenset(hashes)))
    if not pins:
        raise Failure(f"the lock {path} pins nothing")
    return data, pins


# --------------------------------------------------------------------------- targets


@dataclass(frozen=True)
class Target:
    label: str
    minor: int
    patch: Optional[int]
    arch: str
    glibc_minor: int

    @classmethod
    def parse(cls, label: str, glibc_minor: int) -> Target:
        match = re.fullmatch(r"3\.(\d+)(?:\.(\d+))?-(\w+)", label)
        if not match or int(match[1]) < 9 or match[3] not in OLDEST_GLIBC_MINOR:
            raise Failure(
                f"--target {label!r}: give PYTHON-ARCH with Python 3.9 or newer and ARCH one of "
                f"{', '.join(OLDEST_GLIBC_MINOR)}, e.g. 3.11-x86_64 (or 3.9.18-x86_64)"
            )
        patch = int(match[2]) if match[2] is not None else None
        return cls(label, int(match[1]), patch, match[3], glibc_minor)

    @property
    def python(self) -> str:
        return f"3.{self.minor}"

    @property
    def describe(self) -> str:
        return f"Python {self.python} on {self.arch} (glibc {self.glibc})"

    @property
    def glibc(self) -> str:
        return f"2.{self.glibc_minor}"

    def platforms(self) -> list[str]:
        """The manylinux tags a host of this glibc accepts, best first (pip expands none)."""
        tags = []
        for minor in range(self.glibc_minor, OLDEST_GLIBC_MINOR[self.arch] - 1, -1):
            tags.append(f"manylinux_2_{minor}_{self.arch}")
            legacy = LEGACY_TAGS.get(minor)
            if legacy and (self.arch == "x86_64" or minor >= 17):
                tags.append(f"{legacy}_{self.arch}")
        return tags

    def supported_tags(self) -> set[str]:
        _, tags = _packaging()
        version, abi = (3, self.minor), f"cp3{self.minor}"
        supported = [
            *tags.cpython_tags(version, [abi], self.platforms()),
            *tags.compatible_tags(version, f"cp3{self.minor}", self.platforms()),
        ]
        return {str(t) for t in supported}

    def _environment(self, patch: int) -> dict[str, str]:
        full = f"3.{self.minor}.{patch}"
        return {
            "implementation_name": "cpython",
            "implementation_version": full,
            "os_name": "posix",
            "platform_machine": self.arch,
            "platform_python_implementation": "CPython",
            "platform_release": "",
            "platform_system": "Linux",
            "platform_version": "",
            "python_full_version": full,
            "python_version": self.python,
            "sys_platform": "linux",
        }

    def applies(self, pin: Pin) -> bool:
        if pin.marker is None:
            return True
        markers, _ = _packaging()
        try:
            marker = markers.Marker(pin.marker)
        except markers.InvalidMarker as exc:
            raise Failure(f"the lock's marker of {pin.spec} is not valid: {exc}") from None
        patches = PATCH_ENDS if self.patch is None else (self.patch,)
        answers = {marker.evaluate(self._environment(patch)) for patch in patches}
        if len(answers) > 1:
            raise Failure(
                f"the lock's marker of {pin.spec} ({pin.marker}) differs between patch releases of"
                f" Python {self.python}: name the target's patch release, e.g. --target "
                f"{self.python}.18-{self.arch}"
            )
        return answers.pop()

    def pins(self, lock: Sequence[Pin]) -> list[Pin]:
        chosen: dict[str, Pin] = {}
        for pin in lock:
            if not self.applies(pin):
                continue
            if pin.name in chosen:
                raise Failure(
                    f"the lock pins {pin.name} twice for {self.describe}: "
                    f"{chosen[pin.name].version} and {pin.version} (regenerate it: make lock)"
                )
            chosen[pin.name] = pin
        return list(chosen.values())


def wheel_tags(filename: str) -> set[str]:
    """The tags of a wheel's file name (compressed tag sets expanded)."""
    parts = filename[: -len(".whl")].split("-")
    if len(parts) not in (5, 6):
        return set()
    pythons, abis, platforms = parts[-3:]
    return {
        f"{p}-{a}-{plat}"
        for p in pythons.split(".")
        for a in abis.split(".")
        for plat in platforms.split(".")
    }


# --------------------------------------------------------------------------- running pip


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def run_pip(args: Sequence[str], timeout: float, what: str, **env: str) -> str:
    """``python -m pip ARGS``; its output is returned, never printed (stdout is the JSON)."""
    environment = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1", **env}
    command = [sys.executable, "-m", "pip", *args]
    try:
        done = subprocess.run(  # noqa: S603 -- this very Python's pip, arguments as a list
            command,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            errors="replace",
            env=environment,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise Failure(
            f"{what}: pip took longer than {timeout:.0f} s -- check the index "
            "(--pip-arg=--index-url=URL) or give it more time with --timeout"
        ) from None
    if done.returncode != 0:
        raise PipError(done.stdout + done.stderr)
    return done.stdout + done.stderr


class PipError(Exception):
    def __init__(self, output: str) -> None:
        super().__init__(output)
        self.output = output

    def summary(self, limit: int = 240) -> str:
        """pip's last error line, without the list of every version it saw."""
        lines = [line.strip() for line in self.output.splitlines() if line.strip()]
        errors = [line for line in lines if line.startswith("ERROR:")]
        text = errors[-1] if errors else (lines[-1] if lines else "pip failed")
        text = re.sub(r"\s*\(from versions: [^)]*\)", "", text)
        return text if len(text) <= limit else text[: limit - 3] + "..."

    def unreachable(self) -> Optional[str]:
        """What pip said about an index it could not reach, if it said so."""
        said = re.search(
            r"connection broken by '(.*)'|(Could not fetch URL .*)$",
            self.output,
            re.M,
        )
        return next(group for group in said.groups() if group)[:200] if said else None


def build_project_wheel(source: Path, work: Path, pip_args: Sequence[str], timeout: float) -> Path:
    """``pip wheel --no-deps`` of a clean copy of the source (no stale build/ can leak in)."""
    if not (source / "pyproject.toml").is_file() and not (source / "setup.py").is_file():
        raise Failure(f"--source {source} has no pyproject.toml: give the project's checkout")
    copy, out = work / "source", work / "project-wheel"
    try:
        shutil.copytree(source, copy, ignore=SOURCE_IGNORE, symlinks=True)
    except (OSError, shutil.Error) as exc:
        raise Failure(f"cannot copy the source {source}: {exc}") from None
    try:
        run_pip(
            ["wheel", "--no-deps", "--quiet", "--wheel-dir", str(out), *pip_args, str(copy)],
            timeout,
            f"building the project's wheel from {source}",
            SOURCE_DATE_EPOCH=SOURCE_DATE_EPOCH,
        )
    except PipError as exc:
        raise Failure(f"cannot build the project's wheel from {source}: {exc.summary()}") from None
    wheels = sorted(out.glob("*.whl"))
    if len(wheels) != 1:
        raise Failure(f"pip wheel of {source} made {len(wheels)} wheels, not one")
    if not any(tag.endswith("-none-any") for tag in wheel_tags(wheels[0].name)):
        raise Failure(
            f"the project's wheel {wheels[0].name} is not pure Python: it cannot serve every target"
        )
    return wheels[0]


def source_digest(source: Path, pip_args: Sequence[str]) -> str:
    """What the project's wheel is made of: every file the build would copy (path, exec bit,
    bytes; a symlink by its target) and pip's arguments."""
    digest = hashlib.sha256("\0".join(pip_args).encode())
    for top, dirs, files in os.walk(source):
        ignored = SOURCE_IGNORE(top, [*dirs, *files])
        dirs[:] = sorted(name for name in dirs if name not in ignored)
        for name in sorted(set(files) - ignored):
            path = Path(top, name)
            digest.update(f"\0{path.relative_to(source).as_posix()}\0".encode())
            if path.is_symlink():
                digest.update(b"link:" + os.readlink(path).encode())
            else:
                digest.update(b"x" if os.access(path, os.X_OK) else b"-")
                digest.update(path.read_bytes())
    return digest.hexdigest()


def project_wheel_for(
    source: Path, out: Path, work: Path, pip_args: Sequence[str], timeout: float
) -> Path:
    """The project's wheel, built only when the sources changed since the last build into this
    --out folder (a build takes seconds, and every play asks for it)."""
    cache = out / PROJECT_CACHE
    built = cache / source_digest(source, pip_args)
    wheels = sorted(built.glob("*.whl")) if built.is_dir() else []
    if len(wheels) == 1:
        return wheels[0]
    wheel = build_project_wheel(source, work, pip_args, timeout)
    shutil.rmtree(cache, ignore_errors=True)  # one build kept: the newest
    built.mkdir(parents=True)
    return Path(shutil.copy2(wheel, built / wheel.name))


def wheel_version(wheel: Path) -> str:
    with zipfile.ZipFile(wheel) as archive:
        for name in archive.namelist():
            if re.fullmatch(r"[^/]+\.dist-info/METADATA", name):
                for line in archive.read(name).decode("utf-8", "replace").splitlines():
                    if line.startswith("Version:"):
                        return line.split(":", 1)[1].strip()
    raise Failure(f"the project's wheel {wheel.name} has no version in its METADATA")


def download(
    target: Target, pins: Sequence[Pin], dest: Path, pip_args: Sequence[str], timeout: float
) -> None:
    """One ``pip download`` of the given pins' wheels for the target into ``dest``."""
    requirements = dest.parent / f"{dest.name}.txt"
    requirements.write_text("".join(pin.requirement_line() + "\n" for pin in pins))
    args = ["download", "--quiet", "--no-deps", "--only-binary=:all:", "--require-hashes"]
    args += ["--requirement", str(requirements), "--dest", str(dest)]
    args += ["--python-version", target.python, "--implementation", "cp"]
    args += ["--abi", f"cp3{target.minor}"]
    for platform in target.platforms():
        args += ["--platform", platform]
    try:
        run_pip([*args, *pip_args], timeout, f"downloading the wheels for {target.label}")
    except PipError as exc:
        raise Failure(_explain(exc, target, pins)) from None


def _explain(exc: PipError, target: Target, pins: Sequence[Pin]) -> str:
    by_name = {pin.name: pin for pin in pins}
    missing = re.search(r"No matching distribution found for ([^\s;]+)", exc.output)
    unreachable = exc.unreachable()
    if unreachable or (missing and "(from versions: none)" in exc.output):
        return (
            f"no answer from the package index for {target.label}: {unreachable or exc.summary()}"
            " -- check --pip-arg=--index-url=URL (or pip.conf) and the network"
        )
    if missing:
        name = normalise(re.split(r"[=<>!~\[ ]", missing[1], maxsplit=1)[0])
        spec = by_name[name].spec if name in by_name else missing[1]
        why = exc.summary()
        if "require a different python version" in exc.output:
            why = f"its Requires-Python leaves out {target.python}"
        return (
            f"no wheel of {spec} for {target.describe}: {why} -- pin a release that has one"
            " (make lock) or leave that target out"
        )
    if "DO NOT MATCH THE HASHES" in exc.output:
        named = re.findall(r"^\s+(\S+==\S+) from ", exc.output, re.M)
        return (
            f"hash mismatch for {', '.join(named) or 'a wheel'} ({target.label}): the index served"
            " a file the lock does not list -- check the index, or re-lock with make lock"
        )
    return f"pip download for {target.label} failed: {exc.summary()}"


# --------------------------------------------------------------------------- one target's folder


def _write_if_changed(path: Path, data: bytes) -> bool:
    if path.is_file() and path.read_bytes() == data:
        return False
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_bytes(data)
    temporary.chmod(0o644)
    os.replace(temporary, path)
    return True


def fill_target(
    target: Target,
    lock: Sequence[Pin],
    lock_bytes: bytes,
    project_wheel: Path,
    out: Path,
    work: Path,
    pip_args: Sequence[str],
    timeout: float,
) -> dict[str, Any]:
    folder = out / target.label
    folder.mkdir(parents=True, exist_ok=True)
    pins = target.pins(lock)
    supported = target.supported_tags()
    owner = {digest: pin for pin in pins for digest in pin.hashes}

    def wanted_wheels(where: Path) -> dict[str, Path]:
        """Pin name -> a wheel in ``where`` of one of its hashes that fits the target."""
        found: dict[str, Path] = {}
        for path in sorted(where.glob("*.whl")):
            if path.name == project_wheel.name or not path.is_file() or path.is_symlink():
                continue
            if not wheel_tags(path.name) & supported:
                continue
            pin = owner.get(sha256_of(path))
            if pin and pin.name not in found:
                found[pin.name] = path
        return found

    have = wanted_wheels(folder)
    changed = False
    missing = [pin for pin in pins if pin.name not in have]
    if missing:
        downloads = work / f"download-{target.label}"
        download(target, missing, downloads, pip_args, timeout)
        fetched = wanted_wheels(downloads)
        absent = [pin.spec for pin in missing if pin.name not in fetched]
        if absent:
            raise Failure(
                f"pip download gave no wheel of {', '.join(absent)} for {target.describe}"
                " -- pin releases that have one (make lock)"
            )
        for name, path in fetched.items():
            destination = folder / path.name
            destination.unlink(missing_ok=True)
            shutil.move(str(path), destination)
            destination.chmod(0o644)
            have[name] = destination
        changed = True

    changed |= _write_if_changed(folder / project_wheel.name, project_wheel.read_bytes())
    changed |= _write_if_changed(folder / LOCK_COPY, lock_bytes)
    keep = {path.name for path in have.values()} | {project_wheel.name, LOCK_COPY}
    for entry in sorted(folder.iterdir()):
        if entry.name in keep:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
        changed = True
    return {
        "dir": str(folder),
        "files": sorted(keep),
        "project_wheel": project_wheel.name,
        "changed": changed,
    }


# --------------------------------------------------------------------------- main


@contextlib.contextmanager
def locked(out: Path) -> Iterator[None]:
    """One run at a time per --out folder."""
    with (out / ".wheelhouse.lock").open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lock", required=True, type=Path, help="the lock file (pinned, hashed)")
    parser.add_argument("--source", required=True, type=Path, help="the project's checkout")
    parser.add_argument("--out", required=True, type=Path, help="the folder to fill")
    parser.add_argument(
        "--target",
        action="append",
        required=True,
        help="PYTHON-ARCH, e.g. 3.11-x86_64 or 3.9.18-aarch64 (repeat for more)",
    )
    parser.add_argument(
        "--pip-arg",
        action="append",
        default=[],
        help="an argument for pip wheel and pip download, e.g. --pip-arg=--index-url=URL",
    )
    parser.add_argument(
        "--glibc", default="2.28", help="the oldest glibc of the targets (default 2.28)"
    )
    parser.add_argument(
        "--timeout", type=float, default=900, help="seconds one pip call may take (default 900)"
    )
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    try:
        glibc = re.fullmatch(r"2\.(\d+)", args.glibc)
        if not glibc or int(glibc[1]) < 17:
            raise Failure(f"--glibc {args.glibc!r}: give 2.N with N >= 17, e.g. 2.28")
        targets = {label: Target.parse(label, int(glibc[1])) for label in args.target}
        lock_path, source, out = args.lock.resolve(), args.source.resolve(), args.out.resolve()
        lock_bytes, lock = read_lock(lock_path)
        for target in targets.values():
            target.pins(lock)  # every marker question answered before anything is fetched
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise Failure(f"cannot create --out {out}: {exc}") from None
        with locked(out), tempfile.TemporaryDirectory(prefix=".work-", dir=out) as work:
            project_wheel = project_wheel_for(source, out, Path(work), args.pip_arg, args.timeout)
            version = wheel_version(project_wheel)
            project = project_wheel.name.split("-", 1)[0]
            if any(pin.name == normalise(project) for pin in lock):
                raise Failure(f"the lock {lock_path} pins the project itself: re-lock (make lock)")
            results = {
                label: fill_target(
                    target,
                    lock,
                    lock_bytes,
                    project_wheel,
                    out,
                    Path(work),
                    args.pip_arg,
                    args.timeout,
                )
                for label, target in targets.items()
            }
    except Failure as exc:
        print(f"wheelhouse.py: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"wheelhouse.py: {exc}", file=sys.stderr)
        return 1
    summary = {
        "version": version,
        "lock_sha256": hashlib.sha256(lock_bytes).hexdigest(),
        "targets": results,
    }
    print(json.dumps(summary, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
