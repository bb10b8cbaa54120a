"""Real systemd Debian 12 hosts for the Ansible tests: booted with ``systemd-nspawn``,
reached over SSH like any server the roles are run against.

* ``ensure_image("collector")`` debootstraps Debian 12 "bookworm" (minbase + systemd,
  dbus, openssh-server, python3, cron: a bare MOR Asterisk server, without python3-venv)
  and ``ensure_image("gui")`` the same + apache2 and nginx (the MOR GUI host) into
  ``$MOR_TEST_CACHE`` (default ``/var/cache/mor-regstatus-tests``), from the Debian
  mirror the machine's own apt sources name. The image has no apt lists (whoever installs
  runs ``apt-get update``) and its ``/etc/apt/sources.list`` names that mirror. A finished
  image is marked ready with its package list and reused until that list changes.
* ``boot_host(stem, flavour=...)`` copies the image to ``cache_root()/run/<name>``, gives
  the copy a hostname, a machine id, this process's SSH key and its own ports, boots it
  with ``systemd-nspawn -b`` and yields a ``Host`` once SSH answers and systemd says
  ``running``. On exit the host is shut down and the copy removed. ``stop()`` and
  ``start()`` reboot the same tree (files kept).

The hosts share the machine's network, loopback included: every listener of a copy is on
127.0.0.1 with a port of its own (sshd; Apache and nginx on the gui flavour), so no host
takes port 80 of the machine and two hosts never collide. ``/tmp`` and ``/run`` inside
are the container's own tmpfs: files there are not under ``host.root``.

Each nspawn runs in a cgroup of its own (``mor-testbed/<name>`` under this process's
cgroup): ``--keep-unit`` on a machine whose PID 1 is not systemd would otherwise put
every container's ``payload`` in the one cgroup ``/payload``, so that the units of all
hosts share cgroups (the sshd of two hosts in one ``system.slice/ssh.service``). After the
host stops, its cgroups are removed; what a SIGKILLed nspawn left running in them is killed.

Every failure is a ``TestbedError`` whose text is one line saying what to fix.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Optional

from testbed.asterisk import READY, TestbedError, cache_root, debian_mirror, free_port

__all__ = [
    "FLAVOURS",
    "Host",
    "TestbedError",
    "boot_host",
    "check_machine",
    "ensure_image",
    "image_path",
    "new_host",
    "remove_stale_copies",
    "run_root",
    "session_key",
]

SUITE = "bookworm"
_BASE = ("systemd", "systemd-sysv", "dbus", "openssh-server", "python3", "cron")
FLAVOURS: dict[str, tuple[str, ...]] = {
    "collector": _BASE,
    "gui": (*_BASE, "apache2", "nginx"),
}
# the ports each flavour gets besides sshd's
FLAVOUR_PORTS: dict[str, tuple[str, ...]] = {"collector": (), "gui": ("apache", "nginx")}

BUILD_TIMEOUT = 900.0
BOOT_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0
COPY_TIMEOUT = 300.0

SSH_OPTIONS = (
    "-o StrictHostKeyChecking=no",
    "-o UserKnownHostsFile=/dev/null",
    "-o LogLevel=ERROR",
    "-o IdentitiesOnly=yes",
    "-o ConnectTimeout=10",
)
_DEPS = "run scripts/system-deps.sh as root"
_TOOLS = {
    "systemd-nspawn": "systemd-container",
    "debootstrap": "debootstrap",
    "ssh": "openssh-client",
    "ssh-keygen": "openssh-client",
}

_lock = threading.Lock()  # names, ports and the session key of this process
_taken_names: set[str] = set()
_taken_ports: set[int] = set()
_session_keys: dict[int, Path] = {}


def image_path(flavour: str) -> Path:
    return cache_root() / f"host-{SUITE}-{flavour}"


def run_root() -> Path:
    """Where the booted copies live: on the cache's filesystem, so a reflink copy can work."""
    return cache_root() / "run"


# -- the machine ----------------------------------------------------------------------


def _tool(name: str) -> Optional[str]:
    found = shutil.which(name)
    if found:
        return found
    for folder in ("/usr/sbin", "/usr/bin", "/sbin", "/bin"):
        if os.access(f"{folder}/{name}", os.X_OK):
            return f"{folder}/{name}"
    return None


def check_machine() -> dict[str, str]:
    """The tools the hosts need, by name; a TestbedError naming what is missing otherwise."""
    if os.geteuid() != 0:
        raise TestbedError("nspawn hosts need root (debootstrap, nspawn) -- run the tests as root")
    found = {name: _tool(name) for name in _TOOLS}
    missing = sorted({_TOOLS[name] for name, path in found.items() if path is None})
    if missing:
        raise TestbedError(f"missing packages {' '.join(missing)} for the nspawn hosts -- {_DEPS}")
    return {name: path for name, path in found.items() if path is not None}


@contextlib.contextmanager
def _flock(path: Path, mode: int, timeout: float) -> Iterator[IO[str]]:
    """``path`` locked (``LOCK_EX`` or ``LOCK_SH``), waiting ``timeout`` seconds at most."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(handle, mode | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TestbedError(
                        f"{path} stayed locked for {timeout:g} s by another run "
                        "-- wait for it or end it"
                    ) from None
                time.sleep(0.5)
        yield handle


# what nspawn says last on every exit, which would hide the line saying why
_NSPAWN_EPILOGUE = re.compile(
    r"^(Attempted to remove disk file system|Container \S+ (failed with error code|has been shut))"
)


def _last_line(path: Path) -> str:
    """The last line of a log that says something (colours, blanks and nspawn's epilogue
    left out)."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return "no output"
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", line).strip() for line in lines]
    said = [line for line in lines if line and not _NSPAWN_EPILOGUE.match(line)]
    return said[-1] if said else "no output"


# -- the images -----------------------------------------------------------------------


def _packages(flavour: str) -> tuple[str, ...]:
    if flavour not in FLAVOURS:
        raise TestbedError(f"no host flavour {flavour!r} -- use one of {', '.join(FLAVOURS)}")
    return FLAVOURS[flavour]


def _packages_line(flavour: str) -> str:
    return "packages=" + ",".join(_packages(flavour))


def _image_ready(root: Path, flavour: str) -> bool:
    try:
        return _packages_line(flavour) in (root / READY).read_text().splitlines()
    except OSError:
        return False


def _image_lock(flavour: str) -> Path:
    return cache_root() / f".build-host-{flavour}.lock"


def ensure_image(flavour: str, *, log: Optional[Path] = None) -> Path:
    """The ready image of ``flavour``, debootstrapped first if there is none (or if the
    flavour's package list changed since it was built)."""
    root = image_path(flavour)
    if _image_ready(root, flavour):
        return root
    debootstrap = check_machine()["debootstrap"]
    with _flock(_image_lock(flavour), fcntl.LOCK_EX, BUILD_TIMEOUT + 60):
        if _image_ready(root, flavour):  # a parallel run built it meanwhile
            return root
        mirror = debian_mirror()
        partial = root.with_name(root.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        log = log or root.with_name(root.name + ".build.log")
        started = time.monotonic()
        argv = [debootstrap, "--variant=minbase", f"--include={','.join(_packages(flavour))}"]
        with open(log, "w") as out:
            try:
                done = subprocess.run(
                    [*argv, SUITE, str(partial), mirror],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    timeout=BUILD_TIMEOUT,
                    check=False,
                )
                failed = f"exited with {done.returncode}" if done.returncode else ""
            except subprocess.TimeoutExpired:
                failed = f"did not finish within {BUILD_TIMEOUT:g} s"
        if failed:
            raise TestbedError(
                f"debootstrap of the {flavour} host (Debian {SUITE}) from {mirror} {failed}: "
                f"{_last_line(log)} -- see {log}"
            )
        _prepare_image(partial, mirror)
        (partial / READY).write_text(
            f"suite={SUITE}\nflavour={flavour}\nmirror={mirror}\n{_packages_line(flavour)}\n"
            f"build_seconds={time.monotonic() - started:.0f}\n"
        )
        old = root.with_name(root.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        if root.exists():
            root.rename(old)
        partial.rename(root)
        shutil.rmtree(old, ignore_errors=True)
    return root


def _prepare_image(tree: Path, mirror: str) -> None:
    """What every copy shares: apt pointed at the mirror but with no lists (like a host
    nobody ran ``apt-get update`` on), and no machine id of its own (each copy gets one)."""
    (tree / "etc/apt/sources.list").write_text(f"deb {mirror} {SUITE} main\n")
    for folder in ("var/lib/apt/lists", "var/cache/apt"):
        for path in (tree / folder).iterdir():
            if path.is_file():
                path.unlink()
    (tree / "etc/machine-id").write_text("")
    (tree / "var/lib/dbus/machine-id").unlink(missing_ok=True)  # dbus reads /etc/machine-id


# -- one host -------------------------------------------------------------------------


def session_key() -> Path:
    """This process's SSH key (ed25519, in a private temp folder, removed at exit)."""
    with _lock:
        key = _session_keys.get(os.getpid())
        if key is not None:
            return key
        folder = Path(tempfile.mkdtemp(prefix="mor-testbed-ssh-"))  # mode 0700
        atexit.register(shutil.rmtree, folder, True)
        key = folder / "id_ed25519"
        done = subprocess.run(
            [check_machine()["ssh-keygen"], "-q", "-t", "ed25519", "-N", ""]
            + ["-C", f"mor-testbed-{os.getpid()}", "-f", str(key)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        if done.returncode != 0:
            raise TestbedError(f"ssh-keygen failed: {done.stderr.strip() or done.returncode}")
        key.chmod(0o600)
        _session_keys[os.getpid()] = key
        return key


def _new_port() -> int:
    """A free port on 127.0.0.1 that no other host of this process was given."""
    with _lock:
        for _ in range(100):
            port = free_port()
            if port not in _taken_ports:
                _taken_ports.add(port)
                return port
    raise TestbedError("no free TCP port on 127.0.0.1 -- free some ports")


def _new_name(stem: str) -> str:
    if not re.fullmatch(r"[a-z0-9][a-z0-9-]{0,39}", stem):
        raise TestbedError(f"host name {stem!r}: use up to 40 of a-z, 0-9 and '-'")
    base = f"mor-{stem}-{os.getpid()}"
    with _lock:
        for count in range(1000):
            name = base if count == 0 else f"{base}-{count}"
            taken = name in _taken_names or (run_root() / name).exists()
            if not taken and not (run_root() / f"{name}.console.log").exists():
                _taken_names.add(name)
                return name
    raise TestbedError(f"1000 hosts named {base} already -- remove {run_root()}")


def _own_cgroups() -> list[Path]:
    """This process's cgroup in each hierarchy systemd uses: the cgroup2 one, and the
    name=systemd one when the machine has the legacy or hybrid layout."""
    own: dict[str, str] = {}
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        own[controllers] = path.lstrip("/")
    out = []
    for line in Path("/proc/self/mounts").read_text().splitlines():
        _, point, fstype, options = line.split()[:4]
        if fstype == "cgroup2" and "" in own:
            out.append(Path(point) / own[""])
        elif fstype == "cgroup" and "name=systemd" in options.split(",") and "name=systemd" in own:
            out.append(Path(point) / own["name=systemd"])
    return out


def _remove_cgroup(top: Path) -> list[int]:
    """Remove the cgroup ``top`` and those below it; the processes still in it, if any."""
    if not top.is_dir():
        return []
    pids = []
    for folder, _, _ in sorted(os.walk(top), key=lambda entry: -len(entry[0])):
        with contextlib.suppress(OSError):
            pids += [int(pid) for pid in Path(folder, "cgroup.procs").read_text().split()]
        with contextlib.suppress(OSError):
            os.rmdir(folder)
    return pids


def _nspawn_pids(root: Path) -> list[int]:
    """The systemd-nspawn processes on this machine that boot the tree ``root``."""
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv = cmdline.read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if os.path.basename(argv[0]) == "systemd-nspawn" and str(root) in argv:
            pids.append(int(cmdline.parent.name))
    return pids


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[:1] != ["Z"]


def _empty_cgroups(cgroups: Sequence[Path], name: str, timeout: float = 10.0) -> None:
    """Kill what is left in a host's cgroups (after a SIGKILL of nspawn the container's
    init lives on), then remove them."""
    deadline = time.monotonic() + timeout
    for cgroup in cgroups:
        while pids := _remove_cgroup(cgroup):
            if time.monotonic() > deadline:
                raise TestbedError(f"{name}: processes {pids} outlived SIGKILL -- end them")
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.1)


def _host_cgroups(name: str) -> list[Path]:
    return [cgroup / "mor-testbed" / name for cgroup in _own_cgroups()]


def remove_stale_copies() -> list[str]:
    """Remove the copies (and their locks, logs and cgroups) that killed earlier runs left:
    those whose owner holds no lock on them. A container still booted from such a copy
    (its nspawn outlived a SIGKILLed owner) is shut down first, like ``Host.stop``."""
    folder = run_root()
    if not folder.is_dir():
        return []
    removed = []
    # the names with a copy or a lock: a log alone is one of a failed boot, kept
    names = {path.name.split(".", 1)[0] for path in folder.iterdir() if path.suffix != ".log"}
    for name in sorted(names - {""} - _taken_names):
        with open(folder / f"{name}.lock", "a") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # a live run owns it
            orphans = _nspawn_pids(folder / name)
            for pid in orphans:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)  # nspawn: a clean poweroff
            deadline = time.monotonic() + STOP_TIMEOUT
            while any(map(_alive, orphans)) and time.monotonic() < deadline:
                time.sleep(0.1)
            _empty_cgroups(_host_cgroups(name), name)
            shutil.rmtree(folder / name, ignore_errors=True)
            for suffix in (".console.log", ".lock"):
                (folder / f"{name}{suffix}").unlink(missing_ok=True)
            removed.append(name)
    return removed


# Moves the shell into each cgroup named before "--", then becomes the command after it.
_ENTER_CGROUPS = (
    'while [ "$1" != -- ]; do echo $$ > "$1/cgroup.procs" || exit 97; shift; done; shift; exec "$@"'
)


def _put(root: Path, relative: str, text: str, mode: int = 0o644) -> None:
    """Write a file of the copy, never through a link (it could point into the machine)."""
    path = root / relative
    if path.is_symlink():
        path.unlink()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)


def _edit(root: Path, relative: str, pattern: str, replacement: str) -> None:
    path = root / relative
    text, count = re.subn(pattern, replacement, path.read_text(), flags=re.M)
    if count == 0:
        raise TestbedError(f"{path}: no line matches {pattern!r} -- rebuild the image")
    _put(root, relative, text)


class Host:
    """One booted copy of an image: a Debian 12 host with systemd as PID 1."""

    def __init__(self, name: str, flavour: str, root: Path, ssh_port: int, ports: dict[str, int]):
        self.name = name
        self.flavour = flavour
        self.root = root
        self.ssh_port = ssh_port
        self.ports = ports
        self.key = session_key()
        self.log = root.parent / f"{name}.console.log"
        self.process: Optional[subprocess.Popen[bytes]] = None
        self._tools = check_machine()
        self.lock_file: Optional[IO[str]] = None  # held while the copy exists
        self._cgroups = _host_cgroups(name)

    def __repr__(self) -> str:
        return f"Host({self.name!r}, ssh 127.0.0.1:{self.ssh_port}, {self.root})"

    def inventory_line(self) -> str:
        """This host in an INI inventory, with what Ansible needs to reach it."""
        return (
            f"{self.name} ansible_host=127.0.0.1 ansible_port={self.ssh_port} "
            f"ansible_user=root ansible_ssh_private_key_file={self.key} "
            f"ansible_ssh_common_args='{' '.join(SSH_OPTIONS)}' "
            "ansible_python_interpreter=/usr/bin/python3"
        )

    def ssh_argv(self, command: str) -> list[str]:
        options = [word for option in SSH_OPTIONS for word in option.split()]
        login = ["-o", "BatchMode=yes", "root@127.0.0.1", command]
        return [self._tools["ssh"], "-i", str(self.key), "-p", str(self.ssh_port), *options, *login]

    def _run_ssh(self, command: str, timeout: float) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.ssh_argv(command),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def ssh(
        self, command: str, timeout: float = 60, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run ``command`` (a shell line) as root in the host; with ``check``, a status other
        than 0 is a TestbedError naming the command and the last line it wrote."""
        try:
            done = self._run_ssh(command, timeout)
        except subprocess.TimeoutExpired:
            raise TestbedError(
                f"{self.name}: {command!r} did not finish within {timeout:g} s"
            ) from None
        if check and done.returncode != 0:
            said = (done.stderr.strip() or done.stdout.strip() or "no output").splitlines()[-1]
            raise TestbedError(f"{self.name}: {command!r} exited with {done.returncode}: {said}")
        return done

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, timeout: float = BOOT_TIMEOUT) -> None:
        """Boot the copy and return once SSH answers and systemd says ``running``."""
        if self.running:
            return
        for cgroup in self._cgroups:
            cgroup.mkdir(parents=True, exist_ok=True)
        nspawn = [self._tools["systemd-nspawn"], "-D", str(self.root), "-b", "--register=no"]
        nspawn += ["--keep-unit", "-M", self.name, "--console=read-only", "--link-journal=no"]
        with open(self.log, "ab") as console:
            self.process = subprocess.Popen(
                ["sh", "-c", _ENTER_CGROUPS, "sh", *map(str, self._cgroups), "--", *nspawn],
                stdin=subprocess.DEVNULL,
                stdout=console,
                stderr=subprocess.STDOUT,
            )
        try:
            self._wait_booted(timeout)
        except BaseException:
            self.stop()
            raise

    def _wait_booted(self, timeout: float) -> None:
        assert self.process is not None
        deadline = time.monotonic() + timeout
        state = "nothing (ssh did not answer)"
        while True:
            if self.process.poll() is not None:
                raise TestbedError(
                    f"{self.name}: systemd-nspawn exited with {self.process.returncode} "
                    f"while booting: {_last_line(self.log)} -- see {self.log}"
                )
            left = deadline - time.monotonic()
            if left <= 0:
                raise TestbedError(
                    f"{self.name} did not boot within {timeout:g} s, systemd says {state}: "
                    f"{_last_line(self.log)} -- see {self.log}"
                )
            try:
                done = self._run_ssh("systemctl is-system-running --wait", left)
            except subprocess.TimeoutExpired:
                continue
            if done.returncode == 255:  # ssh itself: sshd is not listening yet
                time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))
                continue
            state = done.stdout.strip() or f"nothing ({done.stderr.strip()})"
            if state == "running":
                return
            if state == "degraded":
                raise TestbedError(f"{self.name} booted degraded: {self._failed_units()}")
            raise TestbedError(f"{self.name}: systemd says {state} after booting -- see {self.log}")

    def _failed_units(self) -> str:
        listed = self.ssh("systemctl --failed --plain --no-legend --no-pager", check=False)
        units = [line.split()[0] for line in listed.stdout.splitlines() if line.split()]
        if not units:
            return f"no unit listed as failed -- see {self.log}"
        # what the unit's own processes logged last, else what systemd logged of it
        journal = "journalctl -n 1 -o cat --no-pager"
        said = self.ssh(
            f"{journal} _SYSTEMD_UNIT={units[0]} | grep . || {journal} -u {units[0]}", check=False
        ).stdout.splitlines()[-1:] or ["nothing in the journal"]
        return f"failed units {', '.join(units)} ({units[0]}: {said[0]}) -- fix them in the image"

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Shut the host down (SIGTERM to nspawn: a clean poweroff), SIGKILL after ``timeout``;
        the tree stays as it is."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)
        _empty_cgroups(self._cgroups, self.name)

    def remove(self, keep_log: bool = False) -> None:
        """Stop the host, then remove its copy, cgroups, lock and (unless ``keep_log``)
        console log."""
        try:
            self.stop()
        finally:
            _drop_copy(self.root, self.lock_file)
            if not keep_log:
                self.log.unlink(missing_ok=True)


def _configure(host: Host) -> None:
    """What makes a copy a host of its own: name, machine id, key, ports."""
    root = host.root
    _put(root, "etc/hostname", f"{host.name}\n")
    _put(root, "etc/hosts", f"127.0.0.1\tlocalhost\n127.0.1.1\t{host.name}\n")
    _put(root, "etc/machine-id", uuid.uuid4().hex + "\n", 0o444)
    (root / "root/.ssh").mkdir(mode=0o700, exist_ok=True)
    key = Path(f"{host.key}.pub").read_text()
    _put(root, "root/.ssh/authorized_keys", key, 0o600)
    _put(
        root,
        "etc/ssh/sshd_config.d/00-mor-testbed.conf",  # the first value sshd reads wins
        f"Port {host.ssh_port}\nListenAddress 127.0.0.1:{host.ssh_port}\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\n"
        "PermitRootLogin prohibit-password\nUseDNS no\n",
    )
    if "apache" in host.ports:
        apache = host.ports["apache"]
        _put(root, "etc/apache2/ports.conf", f"Listen 127.0.0.1:{apache}\n")
        _edit(
            root,
            "etc/apache2/sites-available/000-default.conf",
            r"^<VirtualHost \*:80>",
            f"<VirtualHost 127.0.0.1:{apache}>",
        )
    if "nginx" in host.ports:
        site = "etc/nginx/sites-available/default"
        _edit(root, site, r"^[ \t]*listen[ \t]+\[::\]:80\b.*\n", "")
        nginx = host.ports["nginx"]
        _edit(root, site, r"^([ \t]*)listen[ \t]+80\b", rf"\g<1>listen 127.0.0.1:{nginx}")


def _hold_lock(path: Path, timeout: float = 10.0) -> IO[str]:
    """``path`` opened and locked for as long as the copy exists. A cleanup in another run
    may lock and unlink a fresh lock file before we lock it: then lock the new one."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        handle = open(path, "a")  # noqa: SIM115 -- kept open by the Host
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if os.fstat(handle.fileno()).st_ino == os.stat(path).st_ino:
                return handle
        except (BlockingIOError, FileNotFoundError):
            pass
        handle.close()
        time.sleep(0.1)
    raise TestbedError(f"{path} stayed locked for {timeout:g} s by another run -- end it")


def new_host(stem: str, flavour: str = "collector") -> Host:
    """A fresh copy of the ``flavour`` image, configured but not booted (see ``boot_host``)."""
    check_machine()
    image = ensure_image(flavour)
    run_root().mkdir(parents=True, exist_ok=True)
    remove_stale_copies()
    name = _new_name(stem)
    root = run_root() / name
    lock = _hold_lock(run_root() / f"{name}.lock")
    try:
        with _flock(_image_lock(flavour), fcntl.LOCK_SH, BUILD_TIMEOUT + 60):
            done = subprocess.run(
                ["cp", "-a", "--reflink=auto", str(image), str(root)],
                capture_output=True,
                text=True,
                timeout=COPY_TIMEOUT,
                check=False,
            )
        if done.returncode != 0:
            said = (done.stderr.strip() or "no output").splitlines()[-1]
            raise TestbedError(f"copying {image} to {root} failed: {said} -- free disk space")
        (root / READY).unlink(missing_ok=True)
        ports = {port: _new_port() for port in FLAVOUR_PORTS[flavour]}
        host = Host(name, flavour, root, _new_port(), ports)
        host.lock_file = lock
        _configure(host)
    except BaseException:
        _drop_copy(root, lock)
        raise
    return host


def _drop_copy(root: Path, lock: Optional[IO[str]]) -> None:
    shutil.rmtree(root, ignore_errors=True)
    root.with_name(f"{root.name}.lock").unlink(missing_ok=True)
    if lock is not None:
        lock.close()
    with _lock:
        _taken_names.discard(root.name)


@contextlib.contextmanager
def boot_host(
    stem: str, flavour: str = "collector", *, timeout: float = BOOT_TIMEOUT
) -> Iterator[Host]:
    """A booted host named ``mor-<stem>-<pid>`` of ``flavour``; shut down and removed after."""
    host = new_host(stem, flavour)
    booted = False
    try:
        host.start(timeout)
        booted = True
        yield host
    finally:
        host.remove(keep_log=not booted)  # the log a boot error names stays


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m testbed.hosts build collector gui``: build the images ahead of the tests;
    ``clean``: remove the copies killed runs left."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="python -m testbed.hosts")
    parser.add_argument("command", choices=["build", "path", "clean"])
    parser.add_argument("flavours", nargs="*", default=sorted(FLAVOURS))
    args = parser.parse_args(argv)
    try:
        if args.command == "clean":
            print("removed:", " ".join(remove_stale_copies()) or "nothing")
        for flavour in args.flavours if args.command != "clean" else []:
            root = ensure_image(flavour) if args.command == "build" else image_path(flavour)
            print(f"{flavour}: {root}")
    except TestbedError as err:
        print(f"testbed: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
