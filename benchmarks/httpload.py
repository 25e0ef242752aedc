"""A small HTTP/1.1 load generator for the server scenario: keep-alive connections, each with
one request in flight, driven by one selector loop in its own process (so the server's CPU is
not shared with the client's threads). Raw sockets and a prebuilt request keep the client's
own cost per request to a few microseconds.

    python -m benchmarks.httpload PORT TOKEN SECONDS CONNECTIONS  -> prints JSON
"""

from __future__ import annotations

import json
import selectors
import socket
import sys
import time


def request_bytes(port: int, token: str, identifier: str) -> bytes:
    body = json.dumps({"event_name": "bench_http", "identifier": identifier, "api": "v1"})
    return (
        f"POST /api/v1/cancellations HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n{body}"
    ).encode()


def complete(buffer: bytes) -> int:
    """The length of the first whole response in ``buffer``, 0 if it is not all there yet."""
    head_end = buffer.find(b"\r\n\r\n")
    if head_end < 0:
        return 0
    length = 0
    for line in buffer[:head_end].split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    total = head_end + 4 + length
    return total if len(buffer) >= total else 0


def load(port: int, token: str, seconds: float, connections: int, tag: str) -> dict[str, float]:
    selector = selectors.DefaultSelector()
    counter = 0
    done = statuses_ok = 0
    buffers: dict[socket.socket, bytes] = {}

    def send(sock: socket.socket) -> None:
        nonlocal counter
        counter += 1
        sock.sendall(request_bytes(port, token, f"{tag}_{counter}"))

    for _ in range(connections):
        sock = socket.create_connection(("127.0.0.1", port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        buffers[sock] = b""
        selector.register(sock, selectors.EVENT_READ)
        send(sock)
    start = time.perf_counter()
    deadline = start + seconds
    while time.perf_counter() < deadline:
        for key, _ in selector.select(timeout=1):
            assert isinstance(key.fileobj, socket.socket)
            sock = key.fileobj
            buffers[sock] += sock.recv(65536)
            size = complete(buffers[sock])
            if size:
                if buffers[sock].startswith((b"HTTP/1.1 202", b"HTTP/1.1 200")):
                    statuses_ok += 1
                buffers[sock] = buffers[sock][size:]
                done += 1
                send(sock)
    elapsed = time.perf_counter() - start
    for sock in buffers:
        sock.close()
    return {"requests": done, "ok": statuses_ok, "seconds": elapsed, "per_s": done / elapsed}


if __name__ == "__main__":
    port, token, seconds, connections = sys.argv[1:5]
    tag = sys.argv[5] if len(sys.argv) > 5 else "load"
    print(json.dumps(load(int(port), token, float(seconds), int(connections), tag)))
