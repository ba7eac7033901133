"""A loopback stand-in for the registry that misbehaves on demand.

It answers the filter's `HEAD /v2/.../manifests/...` with the fault it is set to (reset, stall,
5xx, garbage, ...), and forwards every other request to a real registry, so a push the filter
wrongly let through would really land there and the tests can see it.
"""
from __future__ import annotations

import http.client
import socket
import struct
import threading
import time

# HEAD faults; "put-500", "put-400" and "put-stall" instead break the manifest PUT (HEADs then pass).
FAULTS = ("pass", "reset", "stall", "500", "garbage", "no-digest", "bad-digest", "put-500", "put-400", "put-stall")


class FaultyUpstream:
    def __init__(self, registry_port: int, port: int):
        self.registry_port = registry_port
        self.port = port
        self.fault = "pass"
        self.heads = 0  # HEADs that met the fault
        # Manifest GETs seen (the filter's fallback after a HEAD without a usable digest); a
        # fault ending in "+get-500" answers them 500.
        self.gets = 0
        self._sock: socket.socket | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._conns: set[socket.socket] = set()

    # --- lifecycle -----------------------------------------------------------------------
    def start(self) -> "FaultyUpstream":
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", self.port))
        s.listen(64)
        s.settimeout(0.2)
        self._sock = s
        self._stop.clear()
        self._thread = threading.Thread(target=self._accept_loop, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stops listening and closes open connections: new connections are then refused."""
        self._stop.set()
        if self._thread:
            self._thread.join(5)
        if self._sock:
            self._sock.close()
        self._sock = None
        for c in list(self._conns):
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _accept_loop(self) -> None:
        assert self._sock is not None
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except (socket.timeout, OSError):
                continue
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    # --- one connection ------------------------------------------------------------------
    def _serve(self, conn: socket.socket) -> None:
        self._conns.add(conn)
        conn.settimeout(30)
        try:
            buf = b""
            while True:
                req = self._read_request(conn, buf)
                if req is None:
                    return
                method, path, headers, body, buf = req
                if "/manifests/" in path and method == "HEAD" and not self.fault.startswith("put-") \
                        and self.fault != "pass":
                    self.heads += 1
                    self._fault(conn)
                    return
                if "/manifests/" in path and method == "GET":
                    self.gets += 1
                    if self.fault.endswith("+get-500"):
                        conn.sendall(b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                        return
                if "/manifests/" in path and method == "PUT" and self.fault.startswith("put-"):
                    self._fault(conn)
                    return
                self._forward(conn, method, path, headers, body)
        except OSError:
            pass
        finally:
            self._conns.discard(conn)
            try:
                conn.close()
            except OSError:
                pass

    @staticmethod
    def _read_request(conn: socket.socket, buf: bytes):
        while b"\r\n\r\n" not in buf:
            chunk = conn.recv(65536)
            if not chunk:
                return None
            buf += chunk
        head, buf = buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        method, path, _ = lines[0].split(" ", 2)
        headers = []
        for line in lines[1:]:
            k, v = line.split(":", 1)
            headers.append((k.strip(), v.strip()))
        h = {k.lower(): v for k, v in headers}
        if h.get("transfer-encoding", "").lower() == "chunked":
            body = b""
            while True:
                while b"\r\n" not in buf:
                    buf += conn.recv(65536)
                size_line, buf = buf.split(b"\r\n", 1)
                size = int(size_line.split(b";")[0], 16)
                while len(buf) < size + 2:
                    buf += conn.recv(65536)
                body, buf = body + buf[:size], buf[size + 2:]
                if size == 0:
                    break
            headers = [(k, v) for k, v in headers if k.lower() != "transfer-encoding"]
        else:
            n = int(h.get("content-length", "0"))
            while len(buf) < n:
                buf += conn.recv(65536)
            body, buf = buf[:n], buf[n:]
        return method, path, headers, body, buf

    def _fault(self, conn: socket.socket) -> None:
        f = self.fault.split("+")[0]
        if f == "reset":
            # SO_LINGER 0: close() sends RST instead of FIN.
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        elif f in ("stall", "put-stall"):
            deadline = time.monotonic() + 30
            conn.settimeout(0.2)
            while time.monotonic() < deadline and not self._stop.is_set():
                try:
                    if conn.recv(1) == b"":
                        break  # Envoy gave up and closed
                except socket.timeout:
                    continue
        elif f in ("500", "put-500"):
            conn.sendall(b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        elif f == "put-400":
            conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        elif f == "garbage":
            conn.sendall(b"\x00\xffSSH-2.0-not-http\r\n\x16\x03\x01garbage\r\n\r\n")
        elif f == "no-digest":
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        elif f == "bad-digest":
            conn.sendall(b"HTTP/1.1 200 OK\r\nDocker-Content-Digest: sha256:nothex\r\n"
                         b"Content-Length: 0\r\nConnection: close\r\n\r\n")

    def _forward(self, conn: socket.socket, method: str, path: str, headers: list, body: bytes) -> None:
        up = http.client.HTTPConnection("127.0.0.1", self.registry_port, timeout=30)
        try:
            skip = {"host", "connection", "content-length", "transfer-encoding"}
            up.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
            up.putheader("Host", f"127.0.0.1:{self.registry_port}")
            for k, v in headers:
                if k.lower() not in skip:
                    up.putheader(k, v)
            if body or method in ("PUT", "POST", "PATCH"):
                up.putheader("Content-Length", str(len(body)))
            up.endheaders(body or None)
            r = up.getresponse()
            data = r.read()
            out = [f"HTTP/1.1 {r.status} {r.reason}".encode()]
            for k, v in r.getheaders():
                if k.lower() in ("connection", "transfer-encoding", "content-length"):
                    continue
                out.append(f"{k}: {v}".encode())
            length = r.getheader("content-length") if method == "HEAD" else str(len(data))
            out.append(f"Content-Length: {length or 0}".encode())
            out.append(b"Connection: keep-alive")
            conn.sendall(b"\r\n".join(out) + b"\r\n\r\n" + (b"" if method == "HEAD" else data))
        finally:
            up.close()
