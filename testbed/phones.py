"""SIP phones for the tests: they register with digest auth and answer qualify on cue.

A ``PhoneBank`` is one UDP socket on 127.0.0.1 serving many phones, each with a
contact URI of its own (``sip:<contact user>@127.0.0.1:<bank port>``): Asterisk
qualifies a phone by sending OPTIONS to that URI, and the bank answers it as the
phone's ``answer`` says -- at once, after a delay, or never. Answers can change while
Asterisk is watching (``set_answer``), so a test can take a phone down and up again.

Only what registration and qualify need is spoken: REGISTER with RFC 2617 digest
(MD5, with or without ``qop=auth``, as chan_sip and res_pjsip ask), 200 OK to
OPTIONS and NOTIFY, nothing else. The bank runs its own asyncio loop in a thread.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import re
import secrets
import threading
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Optional

#: a phone that never answers OPTIONS
NEVER: Optional[float] = None


@dataclass
class Phone:
    """One SIP account registered from the bank."""

    user: str
    password: str
    #: seconds before answering OPTIONS; None: never answer
    answer: Optional[float] = 0.0
    #: the user part of the contact URI (a second contact of the same account needs another)
    contact_user: str = ""
    user_agent: str = "mor-test-phone"
    registered: threading.Event = field(default_factory=threading.Event)
    last_error: str = ""
    options_answered: int = 0
    options_ignored: int = 0

    def __post_init__(self) -> None:
        self.contact_user = self.contact_user or self.user


def _md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()  # noqa: S324 -- SIP digest is MD5


def _headers(message: str) -> tuple[str, list[tuple[str, str]]]:
    head = message.split("\r\n\r\n", 1)[0].split("\r\n")
    pairs = []
    for line in head[1:]:
        name, _, value = line.partition(":")
        pairs.append((name.strip(), value.strip()))
    return head[0], pairs


def _get(pairs: list[tuple[str, str]], *names: str) -> str:
    wanted = {n.lower() for n in names}
    for name, value in pairs:
        if name.lower() in wanted:
            return value
    return ""


def _digest_params(challenge: str) -> dict[str, str]:
    return {k.lower(): v for k, v in re.findall(r'(\w+)="?([^",]*)"?', challenge)}


def _authorization(phone: Phone, challenge: str, uri: str, nc: int) -> str:
    params = _digest_params(challenge)
    realm, nonce = params.get("realm", ""), params.get("nonce", "")
    ha1 = _md5(f"{phone.user}:{realm}:{phone.password}")
    ha2 = _md5(f"REGISTER:{uri}")
    parts = [
        f'username="{phone.user}"',
        f'realm="{realm}"',
        f'nonce="{nonce}"',
        f'uri="{uri}"',
        "algorithm=MD5",
    ]
    if "auth" in params.get("qop", "").split(","):
        cnonce = secrets.token_hex(8)
        response = _md5(f"{ha1}:{nonce}:{nc:08x}:{cnonce}:auth:{ha2}")
        parts += ["qop=auth", f"nc={nc:08x}", f'cnonce="{cnonce}"']
    else:
        response = _md5(f"{ha1}:{nonce}:{ha2}")
    parts.append(f'response="{response}"')
    if "opaque" in params:
        parts.append(f'opaque="{params["opaque"]}"')
    return "Digest " + ", ".join(parts)


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, bank: PhoneBank) -> None:
        self.bank = bank

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.bank._received(data.decode("utf-8", "replace"), addr)


class PhoneBank:
    """Many phones on one UDP socket, registering to one registrar (Asterisk's SIP port)."""

    def __init__(
        self,
        registrar_port: int,
        phones: Iterable[Phone] = (),
        expires: int = 3600,
        jitter: float = 0.0,
        seed: int = 0,
    ):
        self.registrar = ("127.0.0.1", registrar_port)
        self.expires = expires
        #: every answer comes up to this many seconds earlier or later, as on a real network
        self.jitter = jitter
        self._random = random.Random(seed)  # noqa: S311 -- simulated network delay
        self.phones: dict[str, Phone] = {}  # by contact user
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._transport: Optional[asyncio.DatagramTransport] = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        #: Call-ID -> (phone, cseq, the Expires asked for) of each REGISTER awaiting its answer
        self._pending: dict[str, tuple[Phone, int, int]] = {}
        self._tag = secrets.token_hex(4)
        for phone in phones:
            self.add(phone)

    # -- life cycle -------------------------------------------------------------------

    def start(self) -> PhoneBank:
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(self._open(), self._loop)
        future.result(5)
        return self

    async def _open(self) -> None:
        transport, _ = await self._loop.create_datagram_endpoint(
            lambda: _Protocol(self), local_addr=("127.0.0.1", 0)
        )
        self._transport = transport
        self.port = transport.get_extra_info("sockname")[1]

    def close(self) -> None:
        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(self._close(), self._loop).result(5)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)
        if not self._loop.is_closed() and not self._thread.is_alive():
            self._loop.close()

    async def _close(self) -> None:
        if self._transport is not None:
            self._transport.close()
            await asyncio.sleep(0)  # the socket closes on the loop's next turn
            await asyncio.sleep(0)

    def __enter__(self) -> PhoneBank:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- phones -----------------------------------------------------------------------

    def add(self, phone: Phone) -> Phone:
        self.phones[phone.contact_user] = phone
        return phone

    def set_answer(self, contact_user: str, answer: Optional[float]) -> None:
        """From now on answer this phone's OPTIONS after ``answer`` seconds (None: never)."""
        self.phones[contact_user].answer = answer

    def register(
        self, phones: Optional[Iterable[Phone]] = None, timeout: float = 20.0, window: int = 100
    ) -> None:
        """Register the phones (all by default) and wait until each got its 200 OK.

        At most ``window`` registrations are in flight at once, so a burst of thousands
        never overruns Asterisk's socket; like a real phone, one without an answer sends
        again after 0.5 s, 1 s, 2 s, 4 s ... A phone Asterisk refuses, or that is still not
        registered after ``timeout``, raises, naming the phone and the answer."""
        chosen = list(self.phones.values() if phones is None else phones)
        for phone in chosen:
            phone.registered.clear()
            phone.last_error = ""
        future = asyncio.run_coroutine_threadsafe(
            self._register_window(chosen, window, timeout), self._loop
        )
        future.result(timeout + 5)
        refused = [p for p in chosen if p.last_error and not p.registered.is_set()]
        if refused:
            raise ConnectionRefusedError(
                f"phone {refused[0].contact_user} not registered: {refused[0].last_error}"
            )
        waiting = [p for p in chosen if not p.registered.is_set()]
        if waiting:
            raise TimeoutError(
                f"{len(waiting)} phone(s), first {waiting[0].contact_user}, "
                f"not registered within {timeout:g} s"
            )

    async def _register_window(self, phones: list[Phone], window: int, timeout: float) -> None:
        queue = deque(phones)
        in_flight: dict[str, tuple[Phone, float, int]] = {}  # contact user -> (phone, sent, tries)
        deadline = self._loop.time() + timeout
        while (queue or in_flight) and self._loop.time() < deadline:
            now = self._loop.time()
            for key, (phone, sent, tries) in list(in_flight.items()):
                if phone.registered.is_set() or phone.last_error:
                    del in_flight[key]
                elif now - sent > min(0.5 * 2**tries, 4.0):  # SIP's timer A, capped
                    self._send_register(phone, None, self.expires)
                    in_flight[key] = (phone, now, tries + 1)
            while queue and len(in_flight) < window:
                phone = queue.popleft()
                self._send_register(phone, None, self.expires)
                in_flight[phone.contact_user] = (phone, now, 0)
            await asyncio.sleep(0.005)

    def unregister(self, phones: Iterable[Phone]) -> None:
        """REGISTER with ``Expires: 0`` (no wait)."""
        for phone in phones:
            self._loop.call_soon_threadsafe(self._send_register, phone, None, 0)

    # -- SIP --------------------------------------------------------------------------

    def _send(self, text: str) -> None:
        assert self._transport is not None
        self._transport.sendto(text.encode(), self.registrar)

    def _send_register(
        self,
        phone: Phone,
        authorization: Optional[str],
        expires: int,
        call_id: str = "",
        cseq: int = 1,
    ) -> None:
        host, port = self.registrar
        uri = f"sip:{host}:{port}"
        call_id = call_id or f"{secrets.token_hex(8)}@127.0.0.1"
        self._pending[call_id] = (phone, cseq, expires)
        lines = [
            f"REGISTER {uri} SIP/2.0",
            f"Via: SIP/2.0/UDP 127.0.0.1:{self.port};rport;branch=z9hG4bK{secrets.token_hex(8)}",
            "Max-Forwards: 70",
            f"From: <sip:{phone.user}@{host}>;tag={self._tag}{phone.contact_user}",
            f"To: <sip:{phone.user}@{host}>",
            f"Call-ID: {call_id}",
            f"CSeq: {cseq} REGISTER",
            f"Contact: <sip:{phone.contact_user}@127.0.0.1:{self.port}>",
            f"Expires: {expires}",
            f"User-Agent: {phone.user_agent}",
        ]
        if authorization:
            lines.append(f"Authorization: {authorization}")
        lines += ["Content-Length: 0", "", ""]
        self._send("\r\n".join(lines))

    def _received(self, message: str, addr: tuple[str, int]) -> None:
        first, headers = _headers(message)
        if first.startswith("SIP/2.0 "):
            self._response(first, headers)
        else:
            self._request(first, headers, addr)

    def _response(self, first: str, headers: list[tuple[str, str]]) -> None:
        code = int(first.split()[1])
        call_id = _get(headers, "Call-ID", "i")
        entry = self._pending.get(call_id)
        if entry is None or code < 200:
            return
        phone, cseq, expires = entry
        if code == 200:
            del self._pending[call_id]
            phone.registered.set()
            return
        challenge = ""
        for name, value in headers:  # the MD5 challenge, where several algorithms are offered
            offered = name.lower() in ("www-authenticate", "proxy-authenticate")
            if offered and (not challenge or "md5" in value.lower()):
                challenge = value
        if code in (401, 407) and challenge and cseq < 3:
            del self._pending[call_id]
            host, port = self.registrar
            auth = _authorization(phone, challenge, f"sip:{host}:{port}", cseq)
            self._send_register(phone, auth, expires, call_id, cseq + 1)
            return
        del self._pending[call_id]
        phone.last_error = first

    def _request(self, first: str, headers: list[tuple[str, str]], addr: tuple[str, int]) -> None:
        method, uri = (first.split() + ["", ""])[:2]
        user = uri.split(":", 1)[-1].split("@", 1)[0]
        phone = self.phones.get(user)
        if method == "OPTIONS" and phone is not None:
            if phone.answer is None:
                phone.options_ignored += 1
                return
            phone.options_answered += 1
            delay = phone.answer
            if self.jitter:
                delay = max(0.0, delay + self._random.uniform(-self.jitter, self.jitter))
            self._loop.call_later(delay, self._reply, headers, addr, phone)
        elif method in ("OPTIONS", "NOTIFY"):
            self._reply(headers, addr, phone)

    def _reply(
        self, headers: list[tuple[str, str]], addr: tuple[str, int], phone: Optional[Phone]
    ) -> None:
        lines = ["SIP/2.0 200 OK"]
        for name, value in headers:
            if name.lower() in ("via", "v", "from", "f", "call-id", "i", "cseq"):
                lines.append(f"{name}: {value}")
            elif name.lower() in ("to", "t"):
                lines.append(f"{name}: {value}" + ("" if "tag=" in value else f";tag={self._tag}"))
        if phone is not None:
            lines.append(f"User-Agent: {phone.user_agent}")
        lines += ["Content-Length: 0", "", ""]
        if self._transport is None or self._transport.is_closing():
            return  # a delayed answer due after the bank closed
        self._transport.sendto("\r\n".join(lines).encode(), addr)
