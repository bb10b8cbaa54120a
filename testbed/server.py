"""A MOR Asterisk server to test, measure and record against: Debian's real Asterisk
(``testbed.asterisk``) configured as MOR runs it, with SIP phones (``testbed.phones``)
registered to it. The tests, the benchmark and the recorder start it the same way."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Callable, Optional

from testbed import asterisk
from testbed.phones import Phone, PhoneBank


def password_of(account: str) -> str:
    """The SIP password of a test account: in its device row, its PJSIP endpoint, its phones."""
    return f"pw{account}"


def phone_of(account: str, answer: Optional[float] = 0.0, contact_user: str = "") -> Phone:
    """A phone of ``account`` that answers qualify after ``answer`` seconds (None: never)."""
    return Phone(account, password_of(account), answer=answer, contact_user=contact_user)


@dataclass
class MorServer:
    """A running Asterisk and the phones registered to it."""

    ast: asterisk.Asterisk
    ports: asterisk.Ports
    #: the chan_sip phones; None where the release has no chan_sip
    sip: Optional[PhoneBank]
    #: the PJSIP phones
    pjsip: PhoneBank
    #: seconds the phones took to register, all of them
    registered_in: float


@contextlib.contextmanager
def mor_server(
    version: str,
    ami_users: Sequence[asterisk.AmiUser],
    *,
    name: str,
    realtime: Optional[asterisk.RealtimeDb] = None,
    pjsip_endpoints: Iterable[asterisk.PjsipEndpoint] = (),
    sip_phones: Iterable[Phone] = (),
    pjsip_phones: Iterable[Phone] = (),
    ports: Optional[asterisk.Ports] = None,
    qualifyfreq: int = 2,
    register_timeout: float = 20.0,
) -> Iterator[MorServer]:
    """Asterisk ``version`` started with MOR's configuration (``mor_files``: chan_sip
    realtime from ``realtime``, the static PJSIP endpoints, the AMI users), then each bank
    of phones registered to it, chan_sip first (only where the release has chan_sip);
    Asterisk and the banks are gone after."""
    release = asterisk.RELEASES[version]
    ports = ports or asterisk.Ports()
    files = asterisk.mor_files(
        release,
        ports,
        ami_users,
        realtime=realtime,
        pjsip_endpoints=pjsip_endpoints,
        qualifyfreq=qualifyfreq,
    )
    with contextlib.ExitStack() as stack:
        ast = asterisk.Asterisk(version, files, name=name)
        stack.callback(ast.remove)  # also when it fails to boot: its folders go too
        ast.start()
        sip = stack.enter_context(PhoneBank(ports.sip, sip_phones)) if release.chan_sip else None
        pjsip = stack.enter_context(PhoneBank(ports.pjsip, pjsip_phones))
        started = time.monotonic()
        for bank in (sip, pjsip):
            if bank is not None and bank.phones:
                bank.register(timeout=register_timeout)
        yield MorServer(ast, ports, sip, pjsip, round(time.monotonic() - started, 2))


def wait_until(
    what: str, check: Callable[[], bool], timeout: float = 30.0, every: float = 0.2
) -> None:
    """Return once ``check()`` holds; ``TestbedError`` naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise asterisk.TestbedError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(every)
