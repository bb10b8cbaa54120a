"""Debian's own Asterisk for the tests and benchmarks: built once into a cached chroot,
run as a real process with a configuration of the test's own.

* ``ensure_chroot("16")`` debootstraps Debian 11 "bullseye" (Asterisk 16, chan_sip,
  PJSIP, res_config_mysql) and ``ensure_chroot("22")`` Debian "sid" (Asterisk 22,
  PJSIP only) into ``$MOR_TEST_CACHE`` (default ``/var/cache/mor-regstatus-tests``),
  from the Debian mirror the machine's own apt sources name. A finished tree is
  marked ready and reused by every later run; a half-built one is never used.
* ``Asterisk(version, files)`` runs ``/usr/sbin/asterisk -f -n`` in that chroot with
  its own configuration, log, spool and run folders (so several instances can run
  one after the other, or side by side on other ports). ``proc`` is mounted in a
  private mount namespace (``unshare``), so nothing stays mounted when it exits.
  ``runuser`` is never set: Asterisk would drop the capabilities it needs.
* ``mor_files(...)`` writes the configuration MOR runs: chan_sip realtime from MOR's
  ``devices`` table through res_config_mysql (``rtcachefriends``/``rtupdate``: a device
  is loaded only once it registered, and Asterisk writes ``ipaddr``, ``port``,
  ``regseconds``, ``useragent``, ``lastms``, ``fullcontact`` back), static PJSIP
  endpoints, and AMI users with the privileges a test asks for.

Every failure is a ``TestbedError`` whose text is one line saying what to fix.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

DEFAULT_CACHE = "/var/cache/mor-regstatus-tests"
READY = ".mor-testbed-ready"


class TestbedError(Exception):
    """A real part could not be built or started; ``str()`` says what to fix in one line."""

    __test__ = False  # not a pytest test class


@dataclass(frozen=True)
class Release:
    """One Debian release and the Asterisk it packages."""

    version: str
    suite: str
    packages: tuple[str, ...]
    chan_sip: bool


RELEASES = {
    "16": Release(
        "16",
        "bullseye",
        ("asterisk", "asterisk-modules", "asterisk-config", "asterisk-mysql"),
        chan_sip=True,
    ),
    "22": Release("22", "sid", ("asterisk", "asterisk-modules", "asterisk-config"), chan_sip=False),
}


def cache_root() -> Path:
    return Path(os.environ.get("MOR_TEST_CACHE", DEFAULT_CACHE))


def chroot_path(version: str) -> Path:
    return cache_root() / f"asterisk-{version}"


# -- building the chroot ------------------------------------------------------------


def _os_codename(os_release: Path = Path("/etc/os-release")) -> str:
    for line in os_release.read_text().splitlines():
        key, _, value = line.partition("=")
        if key == "VERSION_CODENAME":
            return value.strip().strip('"')
    return ""


def _apt_sources(etc_apt: Path) -> Iterator[tuple[str, list[str], list[str]]]:
    """(URI, suites, components) of every enabled ``deb`` source, one-line and deb822."""
    lists = [etc_apt / "sources.list", *sorted((etc_apt / "sources.list.d").glob("*.list"))]
    for path in lists:
        if not path.is_file():
            continue
        for line in path.read_text().splitlines():
            words = re.sub(r"\[[^]]*\]", " ", line.split("#", 1)[0]).split()
            if len(words) >= 3 and words[0] == "deb":
                yield words[1], [words[2]], words[3:]
    for path in sorted((etc_apt / "sources.list.d").glob("*.sources")):
        for stanza in re.split(r"\n\s*\n", path.read_text()):
            fields: dict[str, str] = {}
            for line in stanza.splitlines():
                if line.startswith("#") or ":" not in line:
                    continue
                key, _, value = line.partition(":")
                fields[key.strip().lower()] = value.strip()
            if "deb" not in fields.get("types", "").split():
                continue
            if fields.get("enabled", "yes").lower() == "no":
                continue
            suites = fields.get("suites", "").split()
            for uri in fields.get("uris", "").split():
                yield uri, suites, fields.get("components", "").split()


def debian_mirror(etc_apt: Path = Path("/etc/apt")) -> str:
    """The Debian mirror this machine's apt uses for its own release ($MOR_TEST_DEBIAN_MIRROR
    overrides it)."""
    override = os.environ.get("MOR_TEST_DEBIAN_MIRROR", "").strip()
    if override:
        return override
    codename = _os_codename()
    for uri, suites, components in _apt_sources(etc_apt):
        if codename in suites and "main" in components and "security" not in uri:
            return uri
    raise TestbedError(
        f"no Debian mirror for {codename or 'this release'} in /etc/apt sources "
        "-- set MOR_TEST_DEBIAN_MIRROR to a Debian mirror URL"
    )


def _is_ready(root: Path) -> bool:
    return (root / READY).is_file()


def asterisk_package_version(root: Path) -> str:
    """What dpkg says of the chroot's asterisk package, e.g. ``1:16.28.0~dfsg-0+deb11u4``."""
    status = (root / "var/lib/dpkg/status").read_text()
    match = re.search(r"^Package: asterisk\n(?:[^\n]+\n)*?Version: (\S+)", status, re.M)
    return match.group(1) if match else "unknown"


def ensure_chroot(version: str, *, log: Optional[Path] = None) -> Path:
    """The ready chroot of Asterisk ``version``, debootstrapped first if there is none."""
    release = RELEASES[version]
    root = chroot_path(version)
    if _is_ready(root):
        return root
    if os.geteuid() != 0:
        raise TestbedError(
            f"Asterisk {version} is not built in {root} and only root can build it "
            "(debootstrap, chroot) -- run 'make test' as root"
        )
    debootstrap = shutil.which("debootstrap") or (
        "/usr/sbin/debootstrap" if Path("/usr/sbin/debootstrap").exists() else None
    )
    if debootstrap is None:
        raise TestbedError(
            "debootstrap is not installed -- run scripts/system-deps.sh as root "
            "(or apt-get install debootstrap)"
        )
    root.parent.mkdir(parents=True, exist_ok=True)
    with open(root.parent / f".build-{version}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a parallel build of the same tree waits for it
        if _is_ready(root):
            return root
        mirror = debian_mirror()
        partial = root.with_name(root.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        shutil.rmtree(root, ignore_errors=True)
        log = log or root.parent / f"asterisk-{version}.build.log"
        with open(log, "w") as out:
            done = subprocess.run(
                [
                    debootstrap,
                    "--variant=minbase",
                    f"--include={','.join(release.packages)}",
                    release.suite,
                    str(partial),
                    mirror,
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=900,
                check=False,
            )
        if done.returncode != 0:
            last = [line for line in log.read_text().splitlines() if line.strip()][-1:]
            raise TestbedError(
                f"debootstrap of Debian {release.suite} (Asterisk {version}) from {mirror} "
                f"failed: {last[0] if last else 'no output'} -- see {log}"
            )
        (partial / READY).write_text(
            f"suite={release.suite}\nmirror={mirror}\n"
            f"asterisk={asterisk_package_version(partial)}\n"
        )
        partial.rename(root)
    return root


# -- running Asterisk ---------------------------------------------------------------


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A port on 127.0.0.1 that nothing uses right now (TCP or UDP)."""
    with socket.socket(socket.AF_INET, kind) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


_DIRS = ("etc", "log", "spool", "lib", "run")
_SIP_STATUS = re.compile(r"(OK \(\d+ ms\)|LAGGED \(\d+ ms\)|UNREACHABLE|UNKNOWN|Unmonitored)")

_RUN = 'mount -t proc proc "$1/proc" && exec chroot "$1" /usr/sbin/asterisk -f -n -C "$2"'


class Asterisk:
    """One real Asterisk process in a chroot, with a configuration folder of its own."""

    _count = 0

    def __init__(self, version: str, files: Mapping[str, str], name: str = "ast") -> None:
        self.version = version
        self.root = ensure_chroot(version)
        Asterisk._count += 1
        self.inner = f"/run/mor-testbed/{name}-{os.getpid()}-{Asterisk._count}"
        self.home = self.root / self.inner.lstrip("/")
        self.files = dict(files)
        self.process: Optional[subprocess.Popen[bytes]] = None
        self.module_dir = self._module_dir()

    @property
    def etc(self) -> Path:
        """The configuration folder, as seen from outside the chroot."""
        return self.home / "etc"

    @property
    def conf(self) -> str:
        return f"{self.inner}/etc/asterisk.conf"

    def _module_dir(self) -> str:
        for candidate in sorted(self.root.glob("usr/lib/**/asterisk/modules")):
            if (candidate / "chan_pjsip.so").exists():
                return "/" + str(candidate.relative_to(self.root))
        raise TestbedError(f"no Asterisk modules found under {self.root}/usr/lib")

    def _write_config(self) -> None:
        for sub in _DIRS:
            (self.home / sub).mkdir(parents=True, exist_ok=True)
        dirs = {
            "astetcdir": "etc",
            "astdbdir": "lib",
            "astkeydir": "lib",
            "astspooldir": "spool",
            "astrundir": "run",
            "astlogdir": "log",
            "astcachedir": "lib",
        }
        lines = ["[directories]", f"astmoddir => {self.module_dir}"]
        lines += [f"{key} => {self.inner}/{sub}" for key, sub in dirs.items()]
        lines += [
            "astvarlibdir => /var/lib/asterisk",  # the packaged sounds and keys
            "astdatadir => /usr/share/asterisk",
            "astagidir => /usr/share/asterisk/agi-bin",
            "astsbindir => /usr/sbin",
            "[options]",
            "",
        ]
        (self.etc / "asterisk.conf").write_text("\n".join(lines))
        for name, text in self.files.items():
            (self.etc / name).write_text(text)

    def start(self, timeout: float = 30.0) -> None:
        """Start Asterisk and return once it is fully booted."""
        if self.process is not None and self.process.poll() is None:
            return
        self._write_config()
        with open(self.home / "log" / "console.log", "ab") as console:
            self.process = subprocess.Popen(
                ["unshare", "--mount", "--propagation", "private", "--"]
                + ["sh", "-c", _RUN, "sh", str(self.root), self.conf],
                stdin=subprocess.DEVNULL,
                stdout=console,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise TestbedError(
                    f"Asterisk {self.version} exited with {self.process.returncode} on start: "
                    f"{self.log_tail(1) or 'no log'} -- see {self.home}/log"
                )
            with contextlib.suppress(subprocess.TimeoutExpired):
                left = max(0.5, deadline - time.monotonic())
                booted = self.cli("core waitfullybooted", timeout=left)
                if "fully booted" in booted.lower():
                    return
            if time.monotonic() > deadline:
                self.stop()
                raise TestbedError(
                    f"Asterisk {self.version} did not boot within {timeout:g} s "
                    f"-- see {self.home}/log"
                )
            time.sleep(0.1)

    def cli(self, command: str, timeout: float = 10.0) -> str:
        """One CLI command through the running Asterisk's control socket (``asterisk -rx``)."""
        done = subprocess.run(
            ["chroot", str(self.root), "/usr/sbin/asterisk", "-C", self.conf, "-rx", command],
            capture_output=True,
            timeout=timeout,
            check=False,
        )
        return done.stdout.decode("utf-8", "replace")

    def sip_show_peers(self) -> dict[str, str]:
        """Peer name -> the Status column of ``sip show peers``: what Asterisk says itself."""
        out = {}
        for line in self.cli("sip show peers", timeout=60).splitlines():
            match = _SIP_STATUS.search(line)
            if match and "/" in line.split()[0]:
                out[line.split("/", 1)[0]] = match.group(1)
        return out

    def pjsip_show_contacts(self) -> dict[str, str]:
        """Contact URI -> Avail/Unavail/NonQual/Unknown of ``pjsip show contacts``."""
        out = {}
        for line in self.cli("pjsip show contacts", timeout=60).splitlines():
            words = line.split()
            if len(words) >= 4 and words[0] == "Contact:" and "/" in words[1]:
                out[words[1].split("/", 1)[1]] = words[3]
        return out

    def reload(self, module: str = "") -> None:
        self.cli(f"module reload {module}".strip())

    def stop(self, timeout: float = 15.0) -> None:
        """Stop Asterisk (SIGTERM, then SIGKILL after ``timeout``)."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)

    def restart(self) -> None:
        self.stop()
        self.start()

    def log_tail(self, lines: int = 20) -> str:
        path = self.home / "log" / "messages"
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.home, ignore_errors=True)

    def __enter__(self) -> Asterisk:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


# -- MOR's configuration -------------------------------------------------------------


@dataclass(frozen=True)
class AmiUser:
    name: str
    secret: str
    read: str = "system,reporting"
    write: str = "system,reporting"


@dataclass(frozen=True)
class RealtimeDb:
    """Where res_config_mysql finds MOR's ``devices`` table."""

    database: str
    user: str
    password: str
    host: str = "127.0.0.1"
    port: int = 3306


@dataclass(frozen=True)
class PjsipEndpoint:
    name: str
    password: str
    max_contacts: int = 1
    qualify_frequency: int = 2
    qualify_timeout: float = 1.0


@dataclass
class Ports:
    ami: int = field(default_factory=free_port)
    sip: int = field(default_factory=lambda: free_port(socket.SOCK_DGRAM))
    pjsip: int = field(default_factory=lambda: free_port(socket.SOCK_DGRAM))


_MODULES_COMMON = [
    "res_sorcery_config",
    "res_sorcery_memory",
    "res_sorcery_astdb",
    "res_rtp_asterisk",
    "pbx_config",
]
_MODULES_PJSIP = [
    "res_pjproject",
    "res_pjsip",
    "res_pjsip_authenticator_digest",
    "res_pjsip_endpoint_identifier_user",
    "res_pjsip_registrar",
    "res_pjsip_pubsub",
    "res_pjsip_sdp_rtp",
    "res_pjsip_session",
    "res_pjsip_nat",
    "chan_pjsip",
]


def mor_files(
    release: Release,
    ports: Ports,
    ami_users: Sequence[AmiUser],
    *,
    realtime: Optional[RealtimeDb] = None,
    pjsip_endpoints: Iterable[PjsipEndpoint] = (),
    qualifyfreq: int = 2,
) -> dict[str, str]:
    """The configuration of a MOR Asterisk server: chan_sip realtime from ``devices`` (when
    ``realtime`` is given and the release has chan_sip), static PJSIP endpoints, AMI users."""
    modules = list(_MODULES_COMMON)
    files: dict[str, str] = {}
    if realtime is not None and release.chan_sip:
        modules += ["res_config_mysql", "chan_sip"]
        files["extconfig.conf"] = (
            "[settings]\nsippeers => mysql,general,devices\nsipusers => mysql,general,devices\n"
        )
        files["res_config_mysql.conf"] = (
            f"[general]\ndbhost = {realtime.host}\ndbport = {realtime.port}\n"
            f"dbname = {realtime.database}\ndbuser = {realtime.user}\n"
            f"dbpass = {realtime.password}\nrequirements = warn\n"
        )
        files["sip.conf"] = (
            "[general]\n"
            f"udpbindaddr = 127.0.0.1:{ports.sip}\n"
            "context = mor\nallowguest = no\nalwaysauthreject = yes\n"
            "rtcachefriends = yes\nrtupdate = yes\nrtsavesysname = no\n"
            f"qualifyfreq = {qualifyfreq}\n"
            "defaultexpiry = 3600\nmaxexpiry = 7200\n"
            "disallow = all\nallow = ulaw\n"
        )
    modules += _MODULES_PJSIP
    pjsip = [
        "[transport-udp]",
        "type = transport",
        "protocol = udp",
        f"bind = 127.0.0.1:{ports.pjsip}",
        "",
    ]
    for endpoint in pjsip_endpoints:
        pjsip += [
            f"[{endpoint.name}]",
            "type = endpoint",
            "context = mor",
            "disallow = all",
            "allow = ulaw",
            f"auth = {endpoint.name}",
            f"aors = {endpoint.name}",
            "",
            f"[{endpoint.name}]",
            "type = auth",
            "auth_type = userpass",
            f"username = {endpoint.name}",
            f"password = {endpoint.password}",
            "",
            f"[{endpoint.name}]",
            "type = aor",
            f"max_contacts = {endpoint.max_contacts}",
            f"qualify_frequency = {endpoint.qualify_frequency}",
            f"qualify_timeout = {endpoint.qualify_timeout:g}",
            "",
        ]
    files["pjsip.conf"] = "\n".join(pjsip)
    files["modules.conf"] = "[modules]\nautoload = no\n" + "".join(
        f"load = {module}.so\n" for module in modules
    )
    files["logger.conf"] = "[logfiles]\nmessages => notice,warning,error\n"
    files["extensions.conf"] = "[mor]\n"
    manager = [
        "[general]",
        "enabled = yes",
        f"port = {ports.ami}",
        "bindaddr = 127.0.0.1",
        "",
    ]
    for user in ami_users:
        manager += [f"[{user.name}]", f"secret = {user.secret}"]
        if user.read:
            manager.append(f"read = {user.read}")
        if user.write:
            manager.append(f"write = {user.write}")
        manager.append("")
    files["manager.conf"] = "\n".join(manager)
    return files


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m testbed.asterisk build 16 22``: build the chroots ahead of the tests."""
    import argparse
    import sys
    from concurrent.futures import ThreadPoolExecutor

    parser = argparse.ArgumentParser(prog="python -m testbed.asterisk")
    parser.add_argument("command", choices=["build", "path"])
    parser.add_argument("versions", nargs="*", default=sorted(RELEASES))
    args = parser.parse_args(argv)
    if args.command == "path":
        for version in args.versions:
            print(chroot_path(version))
        return 0
    with ThreadPoolExecutor(len(args.versions) or 1) as pool:
        futures = {v: pool.submit(ensure_chroot, v) for v in args.versions}
    failed = False
    for version, future in futures.items():
        try:
            root = future.result()
            print(f"Asterisk {version}: {asterisk_package_version(root)} in {root}")
        except TestbedError as err:
            print(f"testbed: {err}", file=sys.stderr)
            failed = True
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
