"""The raw floor: log in, ask for ``SIPpeers`` and read the bytes until the list ends.

No parsing at all: the only work is ``recv`` and looking for the end marker in
the last bytes received. Whatever the collector spends above this is its own.
"""

from __future__ import annotations

import socket
from typing import Any

_END = b"PeerlistComplete"
_BLANK = b"\r\n\r\n"


def _send(sock: socket.socket, **headers: str) -> None:
    text = "".join(f"{key}: {value}\r\n" for key, value in headers.items()) + "\r\n"
    sock.sendall(text.encode())


def _recv_until(sock: socket.socket, buf: bytes, marker: bytes) -> bytes:
    while marker not in buf:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("AMI closed during login")
        buf += chunk
    return buf


def read_list(host: str, port: int, username: str, secret: str) -> dict[str, Any]:
    sock = socket.create_connection((host, port), timeout=60)
    try:
        buf = _recv_until(sock, b"", b"\r\n")  # the banner line
        _send(sock, Action="Login", Username=username, Secret=secret, Events="off")
        buf = _recv_until(sock, buf[buf.index(b"\r\n") + 2 :], _BLANK)
        if b"Success" not in buf:
            raise RuntimeError("AMI login refused")
        _send(sock, Action="SIPpeers", ActionID="floor")
        total, tail = 0, b""
        while True:
            chunk = sock.recv(1 << 20)
            if not chunk:
                raise ConnectionError("AMI closed mid-list")
            total += len(chunk)
            tail = (tail + chunk)[-512:]
            at = tail.rfind(_END)
            if at >= 0 and tail.find(_BLANK, at) >= 0:
                break
        _send(sock, Action="Logoff")
        return {"bytes": total}
    finally:
        sock.close()
