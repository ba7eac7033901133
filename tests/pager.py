"""A pass-through HTTP proxy in front of the test registry that paginates `tags/list` the way
the OCI distribution spec describes (`?n=`, `?last=`, a `Link: <...>; rel="next"` header).

distribution 2.8 (the registry the tests run) ignores `n` and always answers every tag in one
page, so without this the filter's pagination would never be exercised against a real server.
Everything else is forwarded to the registry unchanged; the proxy records what it was asked
(paths and Authorization headers) so tests can check what the filter sent.
"""
from __future__ import annotations

import http.client
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, quote, urlsplit

import stack

HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection"}
TAGS_LIST = re.compile(r"^/v2/(?P<name>.+)/tags/list$")


class Pager:
    def __init__(self, registry: stack.Registry, absolute_links: bool = False):
        self.registry = registry
        self.absolute_links = absolute_links
        self.port = stack.free_port()
        self.requests: list[tuple[str, str, str | None]] = []  # (method, path, authorization)
        self.lock = threading.Lock()
        pager = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def handle_one(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                with pager.lock:
                    pager.requests.append((self.command, self.path, self.headers.get("Authorization")))
                url = urlsplit(self.path)
                m = TAGS_LIST.match(url.path)
                if self.command == "GET" and m:
                    return self.tags_page(m.group("name"), url)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP}
                status, rheaders, rbody = pager.forward(self.command, self.path, body, headers)
                self.reply(status, rheaders, rbody)

            def tags_page(self, name: str, url):
                auth = {"Authorization": self.headers["Authorization"]} if self.headers.get("Authorization") else {}
                status, rheaders, rbody = pager.forward("GET", f"/v2/{name}/tags/list", None, auth)
                if status != 200:
                    return self.reply(status, rheaders, rbody)
                tags = sorted(json.loads(rbody).get("tags") or [])
                q = parse_qs(url.query)
                last = q.get("last", [None])[0]
                if last is not None:
                    tags = [t for t in tags if t > last]
                headers = [("Content-Type", "application/json")]
                if "n" in q:
                    n = int(q["n"][0])
                    if len(tags) > n:
                        tags = tags[:n]
                        target = f"/v2/{name}/tags/list?n={n}&last={quote(tags[-1])}"
                        if pager.absolute_links:
                            target = f"http://registry.example{target}"
                        headers.append(("Link", f'<{target}>; rel="next"'))
                self.reply(200, headers, json.dumps({"name": name, "tags": tags}).encode())

            def reply(self, status, headers, body):
                self.send_response(status)
                sent_length = False
                for k, v in headers:
                    if k.lower() in HOP:
                        continue
                    if k.lower() == "content-length":
                        if self.command == "HEAD":
                            self.send_header(k, v)
                            sent_length = True
                        continue
                    self.send_header(k, v)
                if not sent_length:
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            do_GET = do_HEAD = do_PUT = do_POST = do_PATCH = do_DELETE = handle_one

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def forward(self, method, path, body, headers):
        conn = http.client.HTTPConnection("127.0.0.1", self.registry.port, timeout=30)
        try:
            conn.request(method, path, body=body, headers=headers)
            r = conn.getresponse()
            data = r.read()
            return r.status, r.getheaders(), data
        finally:
            conn.close()

    def start(self) -> "Pager":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def seen(self, method: str, prefix: str) -> list[tuple[str, str | None]]:
        with self.lock:
            return [(p, a) for m, p, a in self.requests if m == method and p.startswith(prefix)]
