"""A loopback TCP relay the e2e tests put between Envoy and an upstream (a registry, an etcd
member) to slow or hold what passes. Bytes go through untouched (TLS included); what it can do:

- `delay`: seconds to wait before forwarding each chunk, either way (a slow member);
- `hold_method`: a request whose first line is `<hold_method> .../manifests/...` waits `hold_s`
  seconds before it is passed on (a write or delete held between its check and its landing);
- `holding`: while set, the upstream's answers wait (a member that stops answering mid-call).

One relay class for every test that needs one, so a fix to the plumbing is made once.
"""
from __future__ import annotations

import contextlib
import socket
import threading
import time


class Relay:
    """Listens on `port` (a free loopback port, bound at construction) and forwards every
    connection to `127.0.0.1:target_port`. A connection whose upstream cannot be reached within
    5 s is closed."""

    def __init__(self, target_port: int, hold_s: float = 3.0):
        self.target = target_port
        self.delay = 0.0
        self.hold_method: bytes | None = None
        self.hold_s = hold_s
        self.holding = threading.Event()
        self._stop = threading.Event()
        self._conns: list[socket.socket] = []
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(128)
        # accept() wakes up to see stop(): closing a socket does not interrupt a blocked accept.
        self._sock.settimeout(0.2)
        self.port = self._sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                c, _ = self._sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            c.settimeout(None)
            try:
                u = socket.create_connection(("127.0.0.1", self.target), timeout=5)
                u.settimeout(None)
            except OSError:
                c.close()
                continue
            self._conns += [c, u]
            threading.Thread(target=self._pipe, args=(c, u, False), daemon=True).start()
            threading.Thread(target=self._pipe, args=(u, c, True), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, answers: bool) -> None:
        try:
            while data := src.recv(65536):
                if answers:
                    while self.holding.is_set() and not self._stop.is_set():
                        time.sleep(0.01)
                else:
                    line = data.split(b"\r\n", 1)[0]
                    m = self.hold_method
                    if m and line.startswith(m + b" ") and b"/manifests/" in line:
                        time.sleep(self.hold_s)
                if self.delay:
                    time.sleep(self.delay)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def stop(self) -> None:
        """Stops accepting, lets held answers go, and closes every connection it made."""
        self._stop.set()
        self._sock.close()
        for c in self._conns:
            with contextlib.suppress(OSError):
                c.close()
