"""The AMI transcripts recorded from a real Asterisk (``tests/data/ami``, format in its
README): read by byte count, as the tests that replay them need them."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

RECORDED = Path(__file__).resolve().parent / "data" / "ami"

Pairs = list[tuple[str, str]]


def parse(raw: bytes) -> Pairs:
    """``Key: Value`` pairs of one message, in order (values keep their spaces)."""
    pairs: Pairs = []
    for line in raw.decode("utf-8", "replace").split("\r\n"):
        if line:
            key, _, value = line.partition(": ")
            pairs.append((key, value))
    return pairs


@dataclass
class Exchange:
    #: what the client sent; None: nothing (the banner, events Asterisk sent by itself)
    sent: Optional[bytes]
    received: bytes = b""
    #: Asterisk closed the connection after ``received``
    closed: bool = False


_MARKER = re.compile(rb"(>>>|<<<) \+(\d+\.\d{3}) s (?:(\d+) bytes|closed)\n")


@dataclass
class Transcript:
    name: str
    header: list[str]
    chunks: list[tuple[str, Optional[bytes]]]

    def exchanges(self) -> list[Exchange]:
        """One per client send (with the answer that followed it), and one per burst
        Asterisk sent by itself; stops where the client closed."""
        out: list[Exchange] = []
        previous = ""
        for direction, data in self.chunks:
            if direction == ">>>":
                if data is None:
                    break
                out.append(Exchange(data))
            elif data is None:
                if not out:
                    out.append(Exchange(None))
                out[-1].closed = True
            elif previous == ">>>":
                out[-1].received += data
            else:
                out.append(Exchange(None, data))
            previous = direction
        return out

    def client_closed(self) -> bool:
        return (">>>", None) in self.chunks

    def messages(self, direction: str = "<<<") -> list[Pairs]:
        stream = b"".join(data or b"" for d, data in self.chunks if d == direction)
        return [parse(block) for block in split_messages(stream)]


def transcript(name: str) -> Transcript:
    path = RECORDED / name
    assert path.is_file(), f"recorded transcript missing: {path}"
    head, sep, body = path.read_bytes().partition(b"\n# FIXTURE-HEADER-END\n")
    assert sep, f"{name}: no '# FIXTURE-HEADER-END' line"
    header = head.decode().split("\n")
    assert all(line.startswith("#") for line in header), header
    chunks: list[tuple[str, Optional[bytes]]] = []
    pos = 0
    while pos < len(body):
        marker = _MARKER.match(body, pos)
        assert marker, f"{name}: no >>> or <<< marker at byte {pos}: {body[pos : pos + 40]!r}"
        pos = marker.end()
        data = None
        if marker.group(3) is not None:
            size = int(marker.group(3))
            data = body[pos : pos + size]
            assert len(data) == size, f"{name}: truncated chunk at byte {pos}"
            pos += size
        chunks.append((marker.group(1).decode(), data))
    return Transcript(name, header, chunks)


def split_messages(stream: bytes) -> list[bytes]:
    """AMI messages (each up to its empty line); stray empty lines are dropped."""
    return [block + b"\r\n\r\n" for block in stream.split(b"\r\n\r\n") if block.strip(b"\r\n")]
