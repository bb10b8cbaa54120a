"""A small HTTP load generator, used when ``wrk`` is not installed.

``python -m bench.loadgen BASE_URL PATHS_FILE SECONDS CONCURRENCY`` prints one
JSON line: requests/s, median and p99 latency in ms, errors. Threads with a new
connection per request (gunicorn's sync workers close every connection); each
request asks the next path of the file (one per line), as bench/paths.lua does
for wrk.
It is slower than wrk: with it, the figures say less about the server.
"""

from __future__ import annotations

import http.client
import itertools
import json
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit


def main() -> int:
    base, listing = sys.argv[1], sys.argv[2]
    seconds, concurrency = float(sys.argv[3]), int(sys.argv[4])
    parts = urlsplit(base)
    paths = [line for line in Path(listing).read_text().splitlines() if line]
    turn = itertools.count()
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    deadline = time.perf_counter() + seconds

    def worker() -> None:
        mine: list[float] = []
        failed = 0
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            try:
                conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
                conn.request("GET", paths[next(turn) % len(paths)])
                response = conn.getresponse()
                response.read()
                conn.close()
                if response.status >= 400:
                    failed += 1
            except OSError:
                failed += 1
            mine.append(time.perf_counter() - started)
        with lock:
            latencies.extend(mine)
            errors[0] += failed

    started = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    latencies.sort()
    count = len(latencies)
    print(
        json.dumps(
            {
                "requests": count,
                "urls": len(paths),
                "rps": count / elapsed,
                "p50_ms": latencies[count // 2] * 1000 if count else None,
                "p99_ms": latencies[min(count - 1, int(count * 0.99))] * 1000 if count else None,
                "errors": errors[0],
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
