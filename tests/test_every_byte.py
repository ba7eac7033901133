"""Every byte of a manifest write, seen from the registry's side (issue 11).

The invariant, in both filter configurations: no request that can store a manifest under a tag
reaches the registry before the filter decided to let that write through, and the digest the
filter judges is the digest of exactly the bytes the registry receives.

Envoy runs in front of `RecordingUpstream`, which records every request and, like zuul-registry,
stores a cut-off manifest PUT under its tag. Clients are raw sockets, so the tests control when
each byte leaves. After each exchange the tests check the client's answer, what the upstream
recorded (no PUT of a refused write, not even a cut-off one; allowed PUTs whole) and the tag's
stored digest.
"""
from __future__ import annotations

import json
import socket
import threading
import time
from dataclasses import dataclass

import pytest

from conftest import SAMPLE_POLICY
from recording_upstream import RecordingUpstream, sha256

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
TIMEOUT = 15.0  # every socket read: a hang fails the test instead of blocking CI
ERROR_CODE = SAMPLE_POLICY["error_code"]
ROUNDS = 3


def manifest(label: str) -> bytes:
    """A small, unique manifest (the upstream does not check blobs)."""
    return json.dumps({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": sha256(label.encode()), "size": len(label)},
        "layers": [],
        "annotations": {"n": label},
    }).encode()


@pytest.fixture(scope="module")
def upstream():
    u = RecordingUpstream().start()
    yield u
    u.stop()


@pytest.fixture
def front(stacks, upstream, stop_on_headers):
    """Envoy with the sample policy in front of the recording upstream."""
    return stacks.envoy(upstream, SAMPLE_POLICY, stop_on_headers)


@pytest.fixture
def repo(uid) -> str:
    # Not under dev/, staging/ or releases/: the global rule applies, every v* tag is immutable.
    assert SAMPLE_POLICY["global"]["immutable_tags"] is True
    return f"bytes-{uid}"


# --- a raw HTTP/1.1 client ----------------------------------------------------------------

@dataclass
class Reply:
    status: int  # 0: the connection ended without an answer (never a refusal)
    headers: dict[str, str]
    body: bytes

    def json(self):
        return json.loads(self.body)

    def __str__(self) -> str:
        return f"{self.status} {self.headers} {self.body[:400]!r}"


class Client:
    """One client connection to Envoy; several requests may be sent on it (keep-alive)."""

    def __init__(self, port: int):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        self.buf = b""

    def close(self) -> None:
        self.sock.close()

    def send(self, head: bytes, parts: list[tuple[float, bytes]]) -> Reply:
        """Sends `head` (request line and headers, with the blank line) at once, then each
        `(delay, data)` part `delay` seconds after the previous one; reads the answer meanwhile
        (a refusal may come before the last part)."""
        if parts and parts[0][0] == 0:
            head, parts = head + parts[0][1], parts[1:]  # what a client sends in one write
        self.sock.sendall(head)

        def rest() -> None:
            for delay, data in parts:
                time.sleep(delay)
                try:
                    self.sock.sendall(data)
                except OSError:
                    return  # answered and closed early: the reply says so

        sender = threading.Thread(target=rest, daemon=True)
        sender.start()
        try:
            return self.read_reply(head.split(b" ", 1)[0] == b"HEAD")
        finally:
            sender.join(TIMEOUT)

    def _fill(self) -> bool:
        try:
            chunk = self.sock.recv(65536)
        except ConnectionResetError:
            chunk = b""
        except socket.timeout:
            raise AssertionError(f"no complete answer within {TIMEOUT} s (got {self.buf[:300]!r})") from None
        self.buf += chunk
        return bool(chunk)

    def read_reply(self, head_request: bool = False) -> Reply:
        while True:
            while b"\r\n\r\n" not in self.buf:
                if not self._fill():
                    return Reply(0, {}, self.buf)
            head, self.buf = self.buf.split(b"\r\n\r\n", 1)
            lines = head.decode("latin-1").split("\r\n")
            status = int(lines[0].split(" ", 2)[1])
            if not 100 <= status < 200:
                break
        headers = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
        if head_request:
            return Reply(status, headers, b"")
        if headers.get("transfer-encoding", "").lower() == "chunked":
            body = b""
            while True:
                while b"\r\n" not in self.buf:
                    if not self._fill():
                        return Reply(0, headers, body)
                size_line, self.buf = self.buf.split(b"\r\n", 1)
                size = int(size_line.split(b";")[0], 16)
                while len(self.buf) < size + 2:
                    if not self._fill():
                        return Reply(0, headers, body)
                body, self.buf = body + self.buf[:size], self.buf[size + 2:]
                if size == 0:
                    return Reply(status, headers, body)
        if "content-length" in headers:
            n = int(headers["content-length"])
            while len(self.buf) < n:
                if not self._fill():
                    return Reply(0, headers, self.buf)
            body, self.buf = self.buf[:n], self.buf[n:]
            return Reply(status, headers, body)
        while self._fill():  # no length: the body runs to the end of the connection
            pass
        body, self.buf = self.buf, b""
        return Reply(status, headers, body)


def put_head(repo: str, tag: str, length: int | None, keep_alive: bool = False) -> bytes:
    lines = [f"PUT /v2/{repo}/manifests/{tag} HTTP/1.1", "Host: registry", f"Content-Type: {OCI_MANIFEST}",
             "Connection: keep-alive" if keep_alive else "Connection: close"]
    lines.append("Transfer-Encoding: chunked" if length is None else f"Content-Length: {length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def push(port: int, repo: str, tag: str, parts: list[tuple[float, bytes]], chunked: bool = False,
         client: Client | None = None) -> Reply:
    """PUTs the concatenation of `parts` (see `Client.send`), framed by Content-Length or as one
    chunk per part; on `client`'s connection (kept alive) or a new one."""
    body = b"".join(p for _, p in parts)
    if chunked:
        framed = [(d, f"{len(p):x}\r\n".encode() + p + b"\r\n") for d, p in parts if p]
        framed[-1] = (framed[-1][0], framed[-1][1] + b"0\r\n\r\n")
        parts = framed
    head = put_head(repo, tag, None if chunked else len(body), keep_alive=client is not None)
    c = client or Client(port)
    try:
        return c.send(head, parts)
    finally:
        if client is None:
            c.close()


def at_once(body: bytes) -> list[tuple[float, bytes]]:
    return [(0, body)]


# --- what the registry side must show --------------------------------------------------------

def describe(puts) -> list:
    return [(r.method, r.conn, len(r.body), "whole" if r.complete else "CUT", sha256(r.body)) for r in puts]


def upstream_view(up: RecordingUpstream, repo: str, tag: str) -> str:
    """What the registry side saw of the tag, for failure messages."""
    seen = [(r.method, len(r.body), "whole" if r.complete else "CUT", r.status) for r in up.for_manifest(repo, tag)]
    stored = up.stored(repo, tag)
    held = "nothing" if stored is None else f"{len(stored)} bytes {sha256(stored)} {stored[:60]!r}"
    return f"the upstream saw {seen} and holds {held}"


def assert_refused(reply: Reply, up: RecordingUpstream, repo: str, tag: str, sent: bytes,
                   held: bytes, allowed: list[bytes]) -> None:
    """A refused overwrite: 409 with the OCI body naming both digests; the tag still holds
    `held`; and every PUT the upstream ever saw for the tag is a whole one of `allowed`."""
    up.wait_idle()
    assert reply.status == 409, f"expected a refusal (409), got {reply}; {upstream_view(up, repo, tag)}"
    err = reply.json()["errors"][0]
    assert err.get("code") == ERROR_CODE, err
    assert err["detail"]["pushed_digest"] == sha256(sent), ("judged other bytes than were sent", err)
    assert err["detail"]["current_digest"] == sha256(held), err
    assert_puts_whole(up, repo, tag, allowed)
    assert up.stored_digest(repo, tag) == sha256(held), f"the refused write changed the tag: {upstream_view(up, repo, tag)}"


def assert_puts_whole(up: RecordingUpstream, repo: str, tag: str, allowed: list[bytes]) -> None:
    """Every recorded PUT of the tag arrived whole and carries one of the `allowed` bodies."""
    bad = [r for r in up.puts(repo, tag) if not r.complete or r.body not in allowed]
    assert not bad, f"the upstream saw a PUT that was not an allowed write: {describe(bad)}; " \
                    f"all PUTs: {describe(up.puts(repo, tag))}"


def assert_allowed(reply: Reply, up: RecordingUpstream, repo: str, tag: str, sent: bytes, puts_before: int) -> None:
    """An allowed push: the upstream got exactly one new PUT, whole, with exactly the bytes sent,
    and the client got the upstream's own answer."""
    up.wait_idle()
    assert reply.status == 201, f"expected the push to be let through (201), got {reply}; {upstream_view(up, repo, tag)}"
    new = up.puts(repo, tag)[puts_before:]
    assert len(new) == 1 and new[0].complete and new[0].body == sent, \
        f"expected one whole PUT of the {len(sent)} bytes sent ({sha256(sent)}), saw {describe(new)}"
    answered = dict((k.lower(), v) for k, v in new[0].answer)
    assert new[0].status == 201
    assert reply.headers.get("location") == answered["location"], (reply.headers, answered)
    assert reply.headers.get("docker-content-digest") == answered["docker-content-digest"] == sha256(sent)
    assert up.stored_digest(repo, tag) == sha256(sent)


def n_puts(up: RecordingUpstream, repo: str, tag: str) -> int:
    return len(up.puts(repo, tag))


FRAMINGS = pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])


# --- the cases -------------------------------------------------------------------------------

def test_refused_overwrite_cold_map(front, upstream, repo):
    """The tag was stored behind this Envoy's back: the filter must learn it from the registry.
    More rounds: whether a leaked PUT goes out before the refusal depends on whether the worker
    has an idle upstream connection at hand when the headers are let go."""
    for r in range(ROUNDS + 2):
        tag = f"v{r}.0.0"
        held, other = manifest(f"{repo}-{r}-held"), manifest(f"{repo}-{r}-other")
        upstream.seed(repo, tag, held)
        reply = push(front.port, repo, tag, at_once(other))
        assert_refused(reply, upstream, repo, tag, other, held, allowed=[])


def test_refused_overwrite_tag_in_map(front, upstream, repo):
    """The tag was pushed through this Envoy a moment ago, so the worker's map knows it."""
    for r in range(ROUNDS):
        tag = f"v{r}.1.0"
        held, other = manifest(f"{repo}-{r}-held"), manifest(f"{repo}-{r}-other")
        reply = push(front.port, repo, tag, at_once(held))
        assert_allowed(reply, upstream, repo, tag, held, puts_before=0)
        reply = push(front.port, repo, tag, at_once(other))
        assert_refused(reply, upstream, repo, tag, other, held, allowed=[held])


def test_refused_overwrite_body_300ms_after_headers(front, upstream, repo):
    """The filter's HEAD answers before the body arrives."""
    for r in range(ROUNDS):
        tag = f"v{r}.2.0"
        held, other = manifest(f"{repo}-{r}-held"), manifest(f"{repo}-{r}-other")
        upstream.seed(repo, tag, held)
        reply = push(front.port, repo, tag, [(0.3, other)])
        assert_refused(reply, upstream, repo, tag, other, held, allowed=[])


def test_identical_repush_body_300ms_after_headers(front, upstream, repo):
    tag = "v0.3.0"
    held = manifest(f"{repo}-held")
    upstream.seed(repo, tag, held)
    reply = push(front.port, repo, tag, [(0.3, held)])
    assert_allowed(reply, upstream, repo, tag, held, puts_before=0)


@FRAMINGS
def test_overwrite_disguised_by_leading_whitespace(front, upstream, repo, chunked):
    """1 KiB of spaces, then (after the HEAD answered) the exact bytes the tag holds: the whole
    body is another manifest (another digest) and must be judged as such."""
    for r in range(ROUNDS):
        tag = f"v{r}.4.0"
        held = manifest(f"{repo}-{r}-held")
        upstream.seed(repo, tag, held)
        spaces = b" " * 1024
        reply = push(front.port, repo, tag, [(0, spaces), (0.5, held)], chunked=chunked)
        assert_refused(reply, upstream, repo, tag, spaces + held, held, allowed=[])


@FRAMINGS
def test_identical_repush_in_two_parts(front, upstream, repo, chunked):
    """An honest re-push whose bytes arrive in two parts around the HEAD answer: not a 409."""
    for r in range(ROUNDS):
        tag = f"v{r}.5.0"
        held = manifest(f"{repo}-{r}-held")
        upstream.seed(repo, tag, held)
        half = len(held) // 2
        reply = push(front.port, repo, tag, [(0, held[:half]), (0.5, held[half:])], chunked=chunked)
        assert_allowed(reply, upstream, repo, tag, held, puts_before=0)


def test_keep_alive_allowed_refused_then_more(front, upstream, repo):
    """One client connection: an allowed push, a refused overwrite, then more requests."""
    tag = "v1.6.0"
    held, other = manifest(f"{repo}-held"), manifest(f"{repo}-other")
    c = Client(front.port)
    try:
        reply = push(front.port, repo, tag, at_once(held), client=c)
        assert_allowed(reply, upstream, repo, tag, held, puts_before=0)

        reply = push(front.port, repo, tag, at_once(other), client=c)
        assert_refused(reply, upstream, repo, tag, other, held, allowed=[held])

        # The same connection still serves: a read of the tag, then an identical re-push.
        c.sock.sendall(f"GET /v2/{repo}/manifests/{tag} HTTP/1.1\r\nHost: registry\r\n"
                       f"Accept: {OCI_MANIFEST}\r\n\r\n".encode())
        reply = c.read_reply()
        assert reply.status == 200 and reply.body == held, reply
        before = n_puts(upstream, repo, tag)
        reply = push(front.port, repo, tag, at_once(held), client=c)
        assert_allowed(reply, upstream, repo, tag, held, puts_before=before)
    finally:
        c.close()
    assert_puts_whole(upstream, repo, tag, [held])


def race(front, upstream, repo: str, clients: int) -> None:
    """`clients` different manifests pushed at once to a new tag, ROUNDS times: one wins whole,
    and no loser's PUT (not even a cut-off one) reaches the registry."""
    for r in range(ROUNDS):
        tag = f"v{r}.{clients}.0"
        bodies = [manifest(f"{repo}-{r}-client-{i}") for i in range(clients)]
        barrier = threading.Barrier(clients)
        replies: list = [None] * clients

        def one(i: int) -> None:
            barrier.wait()
            try:
                replies[i] = push(front.port, repo, tag, at_once(bodies[i]))
            except Exception as e:  # named by the assertion below
                replies[i] = e

        threads = [threading.Thread(target=one, args=(i,)) for i in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(TIMEOUT * 2)
        statuses = [getattr(x, "status", x) for x in replies]
        winners = [i for i, x in enumerate(replies) if getattr(x, "status", None) == 201]
        assert len(winners) == 1, f"round {r}: {statuses}"
        assert statuses.count(409) == clients - 1, f"round {r}: every loser is refused: {statuses}"
        won = bodies[winners[0]]
        upstream.wait_idle()
        puts = upstream.puts(repo, tag)
        assert len(puts) == 1 and puts[0].complete and puts[0].body == won, \
            f"round {r}: the winner is {sha256(won)}; PUTs seen: {describe(puts)}"
        assert upstream.stored_digest(repo, tag) == sha256(won), \
            f"round {r}: the tag holds {upstream.stored_digest(repo, tag)}, the winner is {sha256(won)}"
        for i, x in enumerate(replies):
            if i != winners[0]:
                detail = x.json()["errors"][0]["detail"]
                assert detail["pushed_digest"] == sha256(bodies[i]), detail
                assert detail["current_digest"] == sha256(won), detail


def test_race_of_two_to_a_new_tag(front, upstream, repo):
    race(front, upstream, repo, 2)


def test_race_of_sixteen_to_a_new_tag(front, upstream, repo):
    race(front, upstream, repo, 16)


# --- the size limit, against an upstream with no cap of its own ------------------------------

SMALL_LIMIT = 64 * 1024


@pytest.mark.parametrize("limit", [None, SMALL_LIMIT], ids=["default-4MiB", "64KiB"])
@FRAMINGS
def test_oversized_push_is_refused_and_never_reaches_the_registry(stacks, upstream, stop_on_headers, repo,
                                                                  chunked, limit):
    """A manifest one byte over `max_manifest_bytes` gets the filter's own 413 SIZE_INVALID (not
    Envoy's plain 413), and not a byte of it reaches the upstream, which would store it (it has
    no size cap, unlike distribution). Exactly `max_manifest_bytes` passes whole."""
    policy = SAMPLE_POLICY if limit is None else dict(SAMPLE_POLICY, max_manifest_bytes=limit)
    front = stacks.envoy(upstream, policy, stop_on_headers)
    max_bytes = limit or 4 * 1024 * 1024
    held = manifest(f"{repo}-held")
    upstream.seed(repo, "v1.0.0", held)

    def padded(label: str, size: int) -> bytes:
        m = manifest(label)
        return m[:-1] + b" " * (size - len(m)) + m[-1:]  # still JSON, exactly `size` bytes

    for tag, seeded in [("v2.0.0", None), ("v1.0.0", held)]:  # a new tag, and an overwrite
        big = padded(f"{repo}-{tag}-big", max_bytes + 1)
        parts = [(0, big[:len(big) // 2]), (0.05, big[len(big) // 2:])]  # the body in two parts
        reply = push(front.port, repo, tag, parts, chunked=chunked)
        upstream.wait_idle()
        assert reply.status == 413, f"{reply}; {upstream_view(upstream, repo, tag)}"
        err = reply.json()["errors"][0]
        assert err["code"] == "SIZE_INVALID" and err["detail"]["tag"] == tag, err
        assert f"({max_bytes} bytes)" in err["message"], err
        assert upstream.puts(repo, tag) == [], f"an oversized write reached the upstream: {describe(upstream.puts(repo, tag))}"
        assert upstream.stored_digest(repo, tag) == (seeded and sha256(seeded)), upstream_view(upstream, repo, tag)

    exact = padded(f"{repo}-exact", max_bytes)
    reply = push(front.port, repo, "v3.0.0", [(0, exact)], chunked=chunked)
    assert_allowed(reply, upstream, repo, "v3.0.0", exact, puts_before=0)


# --- a registry that answers the harmless request before the body arrives -------------------

@pytest.fixture(scope="module")
def eager_upstream():
    u = RecordingUpstream(eager=True).start()
    yield u
    u.stop()


def test_registry_answering_before_the_body_never_hangs_nor_lets_through(stacks, eager_upstream, stop_on_headers,
                                                                          repo):
    """The harmless OPTIONS is answered at once, before a slow client's body reaches Envoy;
    Envoy then hands the filter no more of the body. With allow_on_headers_stop_iteration the
    filter (having seen a body arrive behind held headers) never sends the OPTIONS and judges as
    usual; without it the push is refused with 503 at once: never a hang, never a write."""
    # One worker: the filter learns per worker that bodies arrive behind held headers.
    front = stacks.envoy(eager_upstream, SAMPLE_POLICY, stop_on_headers, concurrency=1)
    up, tag = eager_upstream, "v1.0.0"
    m1, m2 = manifest(f"{repo}-1"), manifest(f"{repo}-2")
    first = push(front.port, repo, tag, at_once(m1))
    assert_allowed(first, up, repo, tag, m1, 0)
    for body in (m1, m2):
        started = time.monotonic()
        reply = push(front.port, repo, tag, [(0.5, body)])
        assert time.monotonic() - started < 10, "answered, not hung"
        if stop_on_headers is True:
            if body == m1:
                assert_allowed(reply, up, repo, tag, m1, 1)
            else:
                assert_refused(reply, up, repo, tag, m2, m1, [m1])
        else:
            assert reply.status == 503, reply
            err = json.loads(reply.body)["errors"][0]
            assert err["code"] == "UNAVAILABLE" and "before the manifest arrived" in err["message"], err
        assert up.stored_digest(repo, tag) == sha256(m1)
    assert_puts_whole(up, repo, tag, [m1])
