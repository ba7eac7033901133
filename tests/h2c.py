"""A raw HTTP/2 client over cleartext (h2c, prior knowledge) that sends whatever bytes it is
given: pseudo-headers and header values are not validated nor normalised, so a `:path` may
carry bytes >= 0x80, which curl and the usual clients refuse to send (HTTP/2 allows them; Go's
server accepts them in a query). Built on the `h2` library (tests/requirements.txt)."""
from __future__ import annotations

import socket
import time
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.events
import h2.exceptions


@dataclass
class H2Response:
    status: int | None
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytes = b""
    reset: bool = False  # the stream (or the connection) was reset before a complete answer

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k.decode("latin-1").lower() == name:
                return v.decode("latin-1")
        return None


def _b(x: bytes | str) -> bytes:
    return x if isinstance(x, bytes) else x.encode("latin-1")


def request(port: int, method: bytes | str, path: bytes | str, headers: list | None = None,
            body: bytes | list[bytes] = b"", timeout: float = 15.0, authority: bytes | str = b"127.0.0.1",
            reset_after: int | None = None, delay: float = 0.0, trailers: list | None = None) -> H2Response:
    """One request on a fresh connection. `body` may be a list of chunks (each its own DATA
    frame, `delay` seconds apart); `reset_after`: send RST_STREAM after that many chunks and
    return at once (no answer is awaited)."""
    cfg = h2.config.H2Configuration(client_side=True, header_encoding=None, validate_outbound_headers=False,
                                    normalize_outbound_headers=False, validate_inbound_headers=False)
    conn = h2.connection.H2Connection(config=cfg)
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        conn.initiate_connection()
        # A large window, so that a manifest of a few MiB is never held by flow control.
        conn.increment_flow_control_window(1 << 24)
        sock.sendall(conn.data_to_send())
        early: list = []  # events read while sending (window updates, an early answer)
        chunks = body if isinstance(body, list) else ([body] if body else [])
        hdrs = [(b":method", _b(method)), (b":path", _b(path)), (b":scheme", b"http"), (b":authority", _b(authority))]
        hdrs += [(_b(k), _b(v)) for k, v in (headers or [])]
        sid = conn.get_next_available_stream_id()
        conn.send_headers(sid, hdrs, end_stream=not chunks and not trailers and reset_after is None)
        sock.sendall(conn.data_to_send())
        for i, chunk in enumerate(chunks):
            if reset_after is not None and i >= reset_after:
                break
            if delay:
                time.sleep(delay)
            _send_data(conn, sock, sid, chunk, early, end=(i == len(chunks) - 1 and not trailers and reset_after is None))
        if reset_after is not None:
            conn.reset_stream(sid)
            sock.sendall(conn.data_to_send())
            return H2Response(None, reset=True)
        if trailers:
            conn.send_headers(sid, [(_b(k), _b(v)) for k, v in trailers], end_stream=True)
            sock.sendall(conn.data_to_send())
        return _read(conn, sock, sid, timeout, early)
    finally:
        try:
            sock.close()
        except OSError:
            pass


def _send_data(conn, sock, sid: int, chunk: bytes, early: list, end: bool) -> None:
    """Sends `chunk` within the peer's flow-control windows, reading its WINDOW_UPDATEs (and
    SETTINGS) when they are spent. Stops quietly if the peer ended or reset the stream (an
    early answer): the caller reads it."""
    try:
        if not chunk:
            conn.send_data(sid, b"", end_stream=end)
            sock.sendall(conn.data_to_send())
            return
        at = 0
        while at < len(chunk):
            room = min(conn.local_flow_control_window(sid), conn.max_outbound_frame_size, len(chunk) - at)
            if room <= 0:
                data = sock.recv(65536)
                if not data:
                    return
                early.extend(conn.receive_data(data))
                sock.sendall(conn.data_to_send())
                continue
            last = at + room >= len(chunk)
            conn.send_data(sid, chunk[at:at + room], end_stream=end and last)
            at += room
            sock.sendall(conn.data_to_send())
    except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
        return


def _read(conn, sock, sid: int, timeout: float, early: list) -> H2Response:
    resp = H2Response(None)
    deadline = time.monotonic() + timeout
    events = list(early)
    while True:
        for ev in events:
            if isinstance(ev, h2.events.ResponseReceived) and ev.stream_id == sid:
                resp.headers = list(ev.headers)
                for k, v in ev.headers:
                    if k == b":status":
                        resp.status = int(v)
            elif isinstance(ev, h2.events.DataReceived) and ev.stream_id == sid:
                resp.body += ev.data
                conn.acknowledge_received_data(ev.flow_controlled_length, sid)
            elif isinstance(ev, h2.events.StreamEnded) and ev.stream_id == sid:
                return resp
            elif isinstance(ev, h2.events.StreamReset) and ev.stream_id == sid:
                resp.reset = True
                return resp
            elif isinstance(ev, h2.events.ConnectionTerminated):
                resp.reset = True
                return resp
        pending = conn.data_to_send()
        if pending:
            sock.sendall(pending)
        if time.monotonic() >= deadline:
            break
        try:
            data = sock.recv(65536)
        except (socket.timeout, OSError):
            break
        if not data:
            break
        try:
            events = conn.receive_data(data)
        except h2.exceptions.ProtocolError:
            break
    resp.reset = True
    return resp
