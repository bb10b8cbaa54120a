"""The legacy MOR collector's algorithm, re-implemented plainly as the baseline.

What ``mor_retrieve_peers.c`` (MOR X6, v1.9) does each run, per DESIGN.md §3:
list the SIP peers over AMI, set every ``reg_status`` of this server to NULL,
then send one autocommitted ``UPDATE devices SET reg_status = … WHERE name = …``
per peer, and write the Asterisk version into ``servers``.

Differences, on purpose: values are bound parameters (the C code pasted peer
names into the SQL), and the re-homing of OK peers (``server_id`` set to this
server) is left out, so the baseline writes exactly the rows the collector may
write and the comparison is about the method, not about extra work.
"""

from __future__ import annotations

import contextlib
import socket
from dataclasses import dataclass
from typing import Any, Optional

import pymysql

NULL_ALL = "UPDATE devices SET reg_status = NULL WHERE server_id = %s"
SET_ONE = "UPDATE devices SET reg_status = %s WHERE name = %s AND server_id = %s"
SET_VERSION = "UPDATE servers SET version = %s WHERE id = %s"


class AmiReader:
    """A minimal blocking AMI client: CRLF lines, an empty line ends a message."""

    def __init__(self, host: str, port: int, timeout: float = 60.0) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.file = self.sock.makefile("rb", buffering=1 << 16)
        self.banner = self.file.readline().decode("utf-8", "replace").strip()

    def send(self, **headers: str) -> None:
        text = "".join(f"{key}: {value}\r\n" for key, value in headers.items()) + "\r\n"
        self.sock.sendall(text.encode())

    def message(self) -> dict[str, str]:
        fields: dict[str, str] = {}
        for raw in self.file:
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            if not line:
                if fields:
                    return fields
                continue
            key, _, value = line.partition(":")
            fields[key.strip()] = value.strip()
        raise ConnectionError("AMI connection closed mid-message")

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.send(Action="Logoff")
        self.file.close()
        self.sock.close()


@dataclass
class LegacyListing:
    peers: list[tuple[str, str]]
    version: Optional[str]


def list_peers(host: str, port: int, username: str, secret: str) -> LegacyListing:
    ami = AmiReader(host, port)
    try:
        ami.send(Action="Login", Username=username, Secret=secret, Events="off")
        if ami.message().get("Response") != "Success":
            raise RuntimeError("AMI login refused")
        ami.send(Action="CoreSettings", ActionID="v")
        version = ami.message().get("AsteriskVersion")
        ami.send(Action="SIPpeers", ActionID="p")
        peers: list[tuple[str, str]] = []
        while True:
            msg = ami.message()
            event = msg.get("Event")
            if event == "PeerEntry":
                peers.append((msg.get("ObjectName", ""), msg.get("Status", "")))
            elif event == "PeerlistComplete":
                return LegacyListing(peers, version)
            elif msg.get("Response") == "Error":
                raise RuntimeError(f"SIPpeers failed: {msg.get('Message')}")
    finally:
        ami.close()


def run(db_args: dict[str, Any], server_id: int, ami: dict[str, Any]) -> dict[str, Any]:
    """One legacy run; returns how many peers it listed."""
    listing = list_peers(ami["host"], ami["port"], ami["username"], ami["secret"])
    conn = pymysql.connect(autocommit=True, **db_args)
    try:
        with conn.cursor() as cur:
            cur.execute(NULL_ALL, (server_id,))
            for name, status in listing.peers:
                cur.execute(SET_ONE, (status, name, server_id))
            if listing.version:
                cur.execute(SET_VERSION, (listing.version[:30], server_id))
    finally:
        conn.close()
    return {"peers": len(listing.peers)}
