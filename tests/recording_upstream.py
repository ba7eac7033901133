"""A loopback stand-in for a registry that records every byte it is sent.

It stores manifests like a permissive registry (no blob checks) and, like zuul-registry, it
stores a manifest PUT whose body was cut off: when the connection ends or is reset before the
declared body is complete, whatever arrived (possibly nothing) is stored under the tag all the
same. So a refused write whose request reached it in part destroys the tag, and the tests see it
both in what was recorded and in the tag's stored digest.

Only `PUT`, `HEAD` and `GET` of `/v2/<name>/manifests/<ref>`, `GET /v2/<name>/tags/list` (every
tag, one page) and `GET /v2/` mean anything;
every other request is recorded and answered 404/405 with a small JSON body, with no effect.
"""
from __future__ import annotations

import hashlib
import json
import re
import socket
import threading
import time
from dataclasses import dataclass, field

MANIFEST_PATH = re.compile(r"^/v2/(?P<name>.+)/manifests/(?P<ref>[^/]+)$")
TAGS_PATH = re.compile(r"^/v2/(?P<name>.+)/tags/list$")


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass
class Recorded:
    """One request as received. `body` grows while it arrives; `complete` says whether the whole
    declared body (Content-Length, or chunked up to the last chunk) arrived; `ended` whether the
    request is over (complete, or its connection ended first)."""
    method: str
    path: str
    headers: list[tuple[str, str]]
    conn: int
    received_at: float
    body: bytes = b""
    complete: bool = False
    ended: bool = False
    status: int | None = None  # what this upstream answered, if it could
    answer: list[tuple[str, str]] = field(default_factory=list)  # the headers it answered with

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)


class CutOff(Exception):
    """The connection ended (FIN or reset) in the middle of a request."""


@dataclass
class _Manifest:
    body: bytes
    content_type: str
    digest: str = field(init=False)

    def __post_init__(self):
        self.digest = sha256(self.body)


class RecordingUpstream:
    def __init__(self, port: int = 0, eager: bool = False):
        # eager: answer a request it has no use for (OPTIONS, ...) at once, without reading its
        # body, then close, as registries built on hyper/axum (container-registry) do.
        self.eager = eager
        self._lock = threading.Lock()
        self._requests: list[Recorded] = []
        self._store: dict[tuple[str, str], _Manifest] = {}  # (name, tag or digest)
        self._sock: socket.socket | None = None
        self._conns: set[socket.socket] = set()
        self._stop = threading.Event()
        self._next_conn = 0
        self.port = port

    # --- lifecycle -----------------------------------------------------------------------
    def start(self) -> "RecordingUpstream":
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", self.port))
        s.listen(128)
        s.settimeout(0.2)
        self._sock, self.port = s, s.getsockname()[1]
        threading.Thread(target=self._accept_loop, daemon=True).start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._sock:
            self._sock.close()
        with self._lock:
            conns = list(self._conns)
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except (socket.timeout, OSError):
                continue
            with self._lock:
                self._next_conn += 1
                cid = self._next_conn
                self._conns.add(conn)
            threading.Thread(target=self._serve, args=(conn, cid), daemon=True).start()

    # --- test helpers --------------------------------------------------------------------
    def seed(self, name: str, tag: str, body: bytes, content_type: str = "application/vnd.oci.image.manifest.v1+json") -> str:
        """Stores a manifest directly (not through Envoy, not recorded); returns its digest."""
        m = _Manifest(body, content_type)
        with self._lock:
            self._store[(name, tag)] = m
            self._store[(name, m.digest)] = m
        return m.digest

    def stored(self, name: str, ref: str) -> bytes | None:
        with self._lock:
            m = self._store.get((name, ref))
        return None if m is None else m.body

    def stored_digest(self, name: str, tag: str) -> str | None:
        with self._lock:
            m = self._store.get((name, tag))
        return None if m is None else m.digest

    def requests(self) -> list[Recorded]:
        """A snapshot of every request received so far (copies: safe to read in the test)."""
        with self._lock:
            return [Recorded(**{**vars(r), "answer": list(r.answer)}) for r in self._requests]

    def puts(self, name: str, tag: str) -> list[Recorded]:
        """Recorded PUTs of `/v2/<name>/manifests/<tag>` (path compared without a query string)."""
        path = f"/v2/{name}/manifests/{tag}"
        return [r for r in self.requests() if r.method == "PUT" and r.path.split("?", 1)[0] == path]

    def for_manifest(self, name: str, tag: str) -> list[Recorded]:
        """Every recorded request, any method, to `/v2/<name>/manifests/<tag>`."""
        path = f"/v2/{name}/manifests/{tag}"
        return [r for r in self.requests() if r.path.split("?", 1)[0] == path]

    def wait_idle(self, timeout: float = 5.0, grace: float = 0.3) -> bool:
        """Waits `grace` (bytes Envoy already sent may still be in our socket buffers), then until
        no PUT is half-received (only a PUT can change what is stored; a held request of another
        method does not delay the test). False if one still is after `timeout`: it stays
        recorded as incomplete, so the caller's assertions see it."""
        time.sleep(grace)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if all(r.ended for r in self._requests if r.method == "PUT"):
                    return True
            time.sleep(0.02)
        return False

    # --- one connection ------------------------------------------------------------------
    def _serve(self, conn: socket.socket, cid: int) -> None:
        buf = b""
        try:
            while not self._stop.is_set():
                try:
                    rec, buf, keep = self._one_request(conn, cid, buf)
                except CutOff:
                    return
                if rec is None or not keep:
                    return
        except OSError:
            pass
        finally:
            with self._lock:
                self._conns.discard(conn)
            try:
                conn.close()
            except OSError:
                pass

    @staticmethod
    def _recv(conn: socket.socket) -> bytes:
        try:
            return conn.recv(65536)
        except ConnectionResetError:
            return b""

    def _one_request(self, conn: socket.socket, cid: int, buf: bytes):
        while b"\r\n\r\n" not in buf:
            chunk = self._recv(conn)
            if not chunk:
                return None, buf, False  # idle connection closed (or headers cut: nothing to act on)
            buf += chunk
        head, buf = buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        method, path, _version = lines[0].split(" ", 2)
        headers = []
        for line in lines[1:]:
            k, _, v = line.partition(":")
            headers.append((k.strip(), v.strip()))
        rec = Recorded(method, path, headers, cid, time.monotonic())
        with self._lock:
            self._requests.append(rec)
        if self.eager and rec.method not in ("GET", "HEAD", "PUT"):
            status, out_headers, body = self._answer(rec)
            with self._lock:
                rec.status, rec.answer = status, list(out_headers)
            conn.sendall(f"HTTP/1.1 {status} X\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                         + body)
            return rec, buf, False
        try:
            buf = self._read_body(conn, rec, buf)
        except CutOff:
            self._cut_off(rec)
            raise
        status, out_headers, body = self._answer(rec)
        keep = (rec.header("connection") or "").lower() != "close"
        with self._lock:
            rec.status, rec.answer = status, list(out_headers)
        out = [f"HTTP/1.1 {status} {_REASONS.get(status, 'X')}"]
        out += [f"{k}: {v}" for k, v in out_headers]
        out.append(f"Content-Length: {len(body)}")
        out.append("Connection: keep-alive" if keep else "Connection: close")
        wire = "\r\n".join(out).encode("latin-1") + b"\r\n\r\n" + (b"" if method == "HEAD" else body)
        conn.sendall(wire)
        return rec, buf, keep

    def _append(self, rec: Recorded, data: bytes) -> None:
        with self._lock:
            rec.body += data

    def _read_body(self, conn: socket.socket, rec: Recorded, buf: bytes) -> bytes:
        """Reads the body into `rec` as it arrives; returns what follows it. CutOff if the
        connection ends first."""
        def more() -> bytes:
            chunk = self._recv(conn)
            if not chunk:
                raise CutOff()
            return chunk

        if (rec.header("transfer-encoding") or "").lower() == "chunked":
            while True:
                while b"\r\n" not in buf:
                    buf += more()
                size_line, buf = buf.split(b"\r\n", 1)
                size = int(size_line.split(b";")[0], 16)
                if size == 0:
                    # Last chunk: trailers (if any) up to the blank line.
                    while not buf.startswith(b"\r\n") and b"\r\n\r\n" not in buf:
                        buf += more()
                    buf = buf[2:] if buf.startswith(b"\r\n") else buf.split(b"\r\n\r\n", 1)[1]
                    break
                left = size
                while len(buf) < left:
                    # Keep what arrived of a chunk even if the rest never does.
                    self._append(rec, buf)
                    left -= len(buf)
                    buf = more()
                self._append(rec, buf[:left])
                buf = buf[left:]
                while len(buf) < 2:
                    buf += more()
                buf = buf[2:]  # the CRLF after the chunk's data
        else:
            n = int(rec.header("content-length") or "0")
            while len(buf) < n:
                self._append(rec, buf)
                n -= len(buf)
                buf = more()
            self._append(rec, buf[:n])
            buf = buf[n:]
        with self._lock:
            rec.complete = rec.ended = True
        return buf

    # --- registry behaviour --------------------------------------------------------------
    def _cut_off(self, rec: Recorded) -> None:
        """The connection ended mid-request: a manifest PUT stores what arrived (zuul does)."""
        with self._lock:
            rec.ended = True
        if rec.method == "PUT":
            m = MANIFEST_PATH.match(rec.path.split("?", 1)[0])
            if m:
                self._put(m["name"], m["ref"], rec)

    def _put(self, name: str, ref: str, rec: Recorded) -> _Manifest:
        with self._lock:
            m = _Manifest(rec.body, rec.header("content-type") or "application/octet-stream")
            self._store[(name, ref)] = m
            self._store[(name, m.digest)] = m
        return m

    def _answer(self, rec: Recorded) -> tuple[int, list[tuple[str, str]], bytes]:
        path = rec.path.split("?", 1)[0]
        api = [("Docker-Distribution-Api-Version", "registry/2.0")]
        if path == "/v2/" and rec.method in ("GET", "HEAD"):
            return 200, api + [("Content-Type", "application/json")], b"{}"
        tags = TAGS_PATH.match(path)
        if tags is not None and rec.method in ("GET", "HEAD"):
            # Every tag of the repository, one page: what a delete by digest is checked against.
            name = tags["name"]
            with self._lock:
                listed = sorted(ref for (n, ref) in self._store if n == name and ":" not in ref)
            if not listed:
                return 404, api + [("Content-Type", "application/json")], _error("NAME_UNKNOWN", "repository unknown", name)
            return 200, api + [("Content-Type", "application/json")], json.dumps({"name": name, "tags": listed}).encode()
        m = MANIFEST_PATH.match(path)
        if m is None:
            return 404, api + [("Content-Type", "application/json")], _error("NAME_UNKNOWN", "not served here", path)
        name, ref = m["name"], m["ref"]
        if rec.method == "PUT":
            stored = self._put(name, ref, rec)
            return 201, api + [
                ("Location", f"/v2/{name}/manifests/{stored.digest}"),
                ("Docker-Content-Digest", stored.digest),
            ], b""
        if rec.method in ("GET", "HEAD"):
            with self._lock:
                stored = self._store.get((name, ref))
            if stored is None:
                return 404, api + [("Content-Type", "application/json")], _error("MANIFEST_UNKNOWN", "manifest unknown", ref)
            return 200, api + [("Content-Type", stored.content_type), ("Docker-Content-Digest", stored.digest)], stored.body
        return 405, api + [("Content-Type", "application/json"), ("Allow", "GET, HEAD, PUT")], \
            _error("UNSUPPORTED", f"{rec.method} not supported", ref)


def _error(code: str, message: str, detail: str) -> bytes:
    return json.dumps({"errors": [{"code": code, "message": message, "detail": detail}]}).encode()


_REASONS = {200: "OK", 201: "Created", 404: "Not Found", 405: "Method Not Allowed"}
