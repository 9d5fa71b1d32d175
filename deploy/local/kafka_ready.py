#!/usr/bin/env python3
"""Is a Kafka broker up and answering metadata? Stdlib only: it runs before any venv exists.

Usage: kafka_ready.py [HOST:PORT] [--wait SECONDS]

It sends ApiVersions v0 to learn which Metadata versions the broker supports, then a
Metadata request for all topics (v1..v8, the non-flexible encodings). The broker counts
as ready once both answers carry the correlation id that was sent, have error code 0,
and list at least one broker. Exit code 0 means ready, 1 means not ready.
"""

from __future__ import annotations

import socket
import struct
import sys
import time

API_METADATA = 3
API_VERSIONS = 18
CLIENT_ID = b"customer-groups-ready"


def _request(sock: socket.socket, api_key: int, version: int, corr: int, body: bytes) -> bytes:
    # Request header v1: api_key, api_version, correlation_id, client_id (nullable string).
    header = struct.pack(">hhih", api_key, version, corr, len(CLIENT_ID)) + CLIENT_ID
    payload = header + body
    sock.sendall(struct.pack(">i", len(payload)) + payload)
    size = struct.unpack(">i", _recv_exact(sock, 4))[0]
    data = _recv_exact(sock, size)
    # Response header v0: correlation_id.
    (got,) = struct.unpack_from(">i", data, 0)
    if got != corr:
        raise RuntimeError(f"correlation id mismatch: sent {corr}, got {got}")
    return data[4:]


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("connection closed by broker")
        buf += chunk
    return bytes(buf)


def check(host: str, port: int, timeout: float = 3.0) -> str:
    """Return a one-line description of the cluster, or raise if it is not ready."""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.settimeout(timeout)
        # ApiVersions v0: empty body. Response: error_code int16, [api_key, min, max] int16s.
        resp = _request(sock, API_VERSIONS, 0, 1001, b"")
        error, count = struct.unpack_from(">hi", resp, 0)
        if error:
            raise RuntimeError(f"ApiVersions error code {error}")
        ranges: dict[int, tuple[int, int]] = {}
        for i in range(count):
            key, lo, hi = struct.unpack_from(">hhh", resp, 6 + 6 * i)
            ranges[key] = (lo, hi)
        lo, hi = ranges.get(API_METADATA, (0, -1))
        version = min(max(lo, 4), hi, 8)
        if version < max(lo, 1):
            raise RuntimeError(f"no usable Metadata version (broker supports {lo}..{hi})")
        # Metadata request: topics = null (all topics), then allow_auto_topic_creation (v4+),
        # then include_cluster/topic_authorized_operations (v8).
        body = struct.pack(">i", -1)
        if version >= 4:
            body += b"\x00"
        if version >= 8:
            body += b"\x00\x00"
        resp = _request(sock, API_METADATA, version, 1002, body)
        off = 4 if version >= 3 else 0  # throttle_time_ms
        (n_brokers,) = struct.unpack_from(">i", resp, off)
        off += 4
        brokers = []
        for _ in range(n_brokers):
            node_id, hlen = struct.unpack_from(">ih", resp, off)
            off += 6
            bhost = resp[off : off + hlen].decode()
            off += hlen
            (bport, rlen) = struct.unpack_from(">ih", resp, off)
            off += 6 + max(rlen, 0)  # port, rack (nullable string, v1+)
            brokers.append(f"{node_id}@{bhost}:{bport}")
        cluster_id = None
        if version >= 2:
            (clen,) = struct.unpack_from(">h", resp, off)
            off += 2
            if clen >= 0:
                cluster_id = resp[off : off + clen].decode()
                off += clen
        (controller_id,) = struct.unpack_from(">i", resp, off)
        if not brokers:
            raise RuntimeError("metadata lists no brokers yet")
        return (
            f"metadata v{version}: cluster_id={cluster_id} brokers={','.join(brokers)} "
            f"controller={controller_id}"
        )


def main(argv: list[str]) -> int:
    target = "127.0.0.1:9092"
    wait = 0.0
    args = list(argv)
    while args:
        arg = args.pop(0)
        if arg == "--wait":
            wait = float(args.pop(0))
        else:
            target = arg
    # KAFKA_BOOTSTRAP_SERVERS may hold a comma-separated list; check the first entry.
    host, _, port = target.split(",")[0].strip().rpartition(":")
    deadline = time.monotonic() + wait
    last = ""
    while True:
        try:
            print(check(host or "127.0.0.1", int(port)))
            return 0
        except Exception as exc:  # any failure means "not ready yet"
            last = f"{type(exc).__name__}: {exc}"
        if time.monotonic() >= deadline:
            print(f"kafka at {target} not ready: {last}", file=sys.stderr)
            return 1
        time.sleep(0.5)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
