"""Issue 27's sequences 3 to 6, end to end: distribution with htpasswd, two Envoy replicas (one
worker each, so each replica has one tag map), one real etcd (`claims.etcd`), break-glass
configured, short TTLs. Every verdict is read back from the registry and from etcd.
(Sequences 1 and 2 are `tests/test_claims.py`.)

3. A stale map does not revert an override after the overriding replica dies.
4. A claim answer older than the TTL is not trusted: the config that allowed it is refused,
   and a replica paused (SIGSTOP) during its claim round trip cannot write over a newer winner.
5. Claim keys of pushes whose client left do not linger in etcd, and the claims-in-flight
   metric (`claims_taken - claims_settled`) returns to 0.
6. An override whose client leaves during the write is still logged (decision and outcome)
   and counted.

`IMMUTABLE_TAGS_MODULE=<path>` runs the Envoys on another build of the module (to see these
tests fail on a module from before the fix).
"""
from __future__ import annotations

import base64
import json
import os
import signal
import socket
import struct
import subprocess
import time
from pathlib import Path
from urllib.parse import urlparse

import pytest

import stack
from etcd import CLUSTER, EtcdCluster
from fakes import FaultyUpstream
from oci import OCI_MANIFEST, head_manifest, make_manifest, put_manifest, sha256
from relay import Relay
from test_break_glass import ADMIN, REASON, basic, htpasswd_registry  # noqa: F401 (a fixture)

MODULE = Path(os.environ.get("IMMUTABLE_TAGS_MODULE") or stack.MODULE)
TTL = 3  # claims.ttl_seconds: records live 1-2 TTLs, so the sequences take seconds
BOB = basic("bob", "pw-bob")  # may push (htpasswd), is no break-glass principal
PREFIX = "/immutable-tags/"


def policy(ttl: int = TTL, etcd_timeout_ms: int | None = None) -> dict:
    return {
        "global": {"immutable_tags": True},
        "break_glass": {"principals": ["release-admin"], "repositories": ["prod/**"]},
        # The config demands write_timeout_ms <= TTL/2 and timeout_ms <= TTL/4.
        "upstream": {"write_timeout_ms": ttl * 500},
        "cache": {"ttl_seconds": 60},  # the default, written out: the map's own TTL is not what bounds it
        "claims": {"ttl_seconds": ttl, "etcd": {"cluster": CLUSTER, "authority": "localhost",
                                                "timeout_ms": etcd_timeout_ms or ttl * 250}},
    }


@pytest.fixture(scope="module")
def etcd(workdir):
    c = EtcdCluster(workdir, size=1).start()
    yield c
    c.stop()


@pytest.fixture
def envoys(workdir, etcd):
    """Starts Envoys with the filter and etcd (`etcd_port`: another address for the member, a
    proxy's), one worker each; stops them after the test."""
    started: list[stack.Envoy] = []

    def start(registry_port: int, pol: dict | None = None, etcd_port: int | None = None) -> stack.Envoy:
        port, admin = stack.free_port(), stack.free_port()
        cfg = stack.envoy_config(pol or policy(), port, admin, registry_port, module=MODULE)
        cluster = etcd.envoy_cluster()
        if etcd_port is not None:
            addr = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
            addr["socket_address"]["port_value"] = etcd_port
        cfg["static_resources"]["clusters"].append(cluster)
        e = stack.Envoy(workdir, cfg, port, admin, concurrency=1)
        started.append(e)
        return e.start()

    yield start
    for e in started:
        if e.proc is not None:
            os.kill(e.proc.pid, signal.SIGCONT)  # a paused one must hear the SIGTERM
        e.stop()


# --- reading the verdicts back --------------------------------------------------------------

def record(etcd, repo: str, tag: str) -> list[str] | None:
    """The tag's claim record, split: `<at> <stored|-> <committed ms> <claimed|-> <holders>`."""
    v = etcd.get(f"{PREFIX}{repo}:{tag}")
    return None if v is None else v.split(" ")


def stored(etcd, repo: str, tag: str) -> str | None:
    """The digest the tag's record says was stored (also the older `d <at> <digest>` format,
    so that these tests run, and fail where they should, on a module from before the rule)."""
    f = record(etcd, repo, tag) or []
    if len(f) == 5 and f[1] != "-" and f[3] == "-":
        return f[1]
    if len(f) == 3 and f[0] == "d":
        return f[2]
    return None


def wait_stored(etcd, repo: str, tag: str, digest: str, timeout: float = 3) -> bool:
    """Waits until the root context committed `digest` (within a tick, 250 ms)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if stored(etcd, repo, tag) == digest:
            return True
        time.sleep(0.05)
    return False


def current_digest(base: str, repo: str, tag: str) -> str | None:
    """The tag's digest as the registry reports it; None if absent. distribution 2.8 answers a
    HEAD with 500 now and then while the tag is being written: asked again then."""
    for _ in range(20):
        r = head_manifest(base, repo, tag)
        if r.status < 500:
            break
        time.sleep(0.05)
    if r.status == 404:
        return None
    assert r.status == 200, r
    return r.digest


def keys_under(etcd, prefix: str) -> list[str]:
    """Every key under `prefix`, from etcd's range (its JSON gateway)."""
    end = prefix[:-1] + chr(ord(prefix[-1]) + 1)
    b64 = lambda s: base64.b64encode(s.encode()).decode()  # noqa: E731
    r = etcd.call("/v3/kv/range", {"key": b64(prefix), "range_end": b64(end), "keys_only": True})
    return [base64.b64decode(kv["key"]).decode() for kv in r.get("kvs") or []]


def counter(envoy, name: str) -> int | None:
    for line in envoy.stats().splitlines():
        if line.startswith(f"wasmcustom.immutable_tags.{name}:"):
            return int(line.split(":")[1])
    return None


def etcd_connections(envoy) -> int:
    for line in envoy.stats().splitlines():
        if line.startswith(f"cluster.{CLUSTER}.upstream_cx_active:"):
            return int(line.split(":")[1])
    return 0


def log_records(envoy, event: str) -> list[dict]:
    out = []
    for line in envoy.log().splitlines():
        if f'"event":"{event}"' in line:
            out.append(json.loads(line[line.index("{"):]))
    return out


# --- clients that leave -----------------------------------------------------------------------

def send_put(envoy, repo: str, tag: str, manifest: bytes, headers: dict) -> socket.socket:
    """A whole PUT on a raw connection, its answer not read yet."""
    u = urlparse(envoy.url)
    s = socket.create_connection((u.hostname, u.port), timeout=30)
    lines = [f"PUT /v2/{repo}/manifests/{tag} HTTP/1.1", f"Host: {u.hostname}:{u.port}",
             f"Content-Type: {OCI_MANIFEST}", f"Content-Length: {len(manifest)}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    s.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + manifest)
    return s


def answer_of(s: socket.socket) -> tuple[int, str]:
    """The status and body of the answer (Content-Length framed, as Envoy sends it)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(4096)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next((int(l.split(b":")[1]) for l in head.split(b"\r\n") if l.lower().startswith(b"content-length:")), 0)
    while len(body) < length:
        chunk = s.recv(4096)
        if not chunk:
            break
        body += chunk
    s.close()
    return int(head.split(b" ", 2)[1]), body.decode(errors="replace")


def vanish(s: socket.socket) -> None:
    """The client leaves: RST (SO_LINGER 0), no answer read."""
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()


class SlowPuts(FaultyUpstream):
    """The registry, reached through a forwarder that holds every manifest PUT `put_delay`
    seconds before passing it on (and counts them): a write stays in flight that long."""

    def __init__(self, registry_port: int):
        super().__init__(registry_port, stack.free_port())
        self.put_delay = 0.0
        self.puts = 0

    def _forward(self, conn, method, path, headers, body):
        if method == "PUT" and "/manifests/" in path:
            self.puts += 1
            time.sleep(self.put_delay)
        super()._forward(conn, method, path, headers, body)


def warm_connections(envoy, repo: str, manifest: bytes) -> None:
    """Pushes through `envoy` until its worker has a lease and 3 connections to etcd, idle once
    the commits are done: while a Relay holds answers, a new connection never completes
    its TLS handshake, so the claims must find one open."""
    for i in range(5):
        stack.run_together([lambda t=t: put_manifest(envoy.url, repo, t, manifest, headers=BOB)
                            for t in (f"warm-{i}-{j}" for j in range(4))])
        if etcd_connections(envoy) >= 3:
            break
    time.sleep(0.5)  # the commits are done
    assert etcd_connections(envoy) >= 3


def override(envoy, repo: str, tag: str, manifest: bytes):
    """An override, retried only while the replica has not learned yet that the registry
    demands authentication (its probe, right after start)."""
    deadline = time.monotonic() + 15
    while True:
        r = put_manifest(envoy.url, repo, tag, manifest, headers={**ADMIN, "X-Break-Glass-Reason": REASON})
        if r.status != 409 or "could not learn" not in r.body.decode() or time.monotonic() > deadline:
            return r
        time.sleep(0.2)


def warm_up(envoy, etcd, repo: str, x: bytes, y: bytes) -> None:
    """X, then an override to Y, on the tag `warm-up`: the replica has a lease and has learned
    that the registry demands authentication, so the sequence that follows is not delayed."""
    assert put_manifest(envoy.url, repo, "warm-up", x, headers=BOB).status == 201
    wait_stored(etcd, repo, "warm-up", sha256(x))  # until then X's claim refuses Y as in flight
    r = override(envoy, repo, "warm-up", y)
    assert r.status == 201, (r, r.body)


# --- 3 ------------------------------------------------------------------------------------------

def test_3_a_stale_map_does_not_revert_an_override_after_the_overriding_replica_dies(
        envoys, htpasswd_registry, registry, etcd, uid):  # noqa: F811
    a, b = envoys(htpasswd_registry.port), envoys(htpasswd_registry.port)
    repo = f"prod/seq3-{uid}"
    x, y = make_manifest(registry.url, repo, "x"), make_manifest(registry.url, repo, "y")
    # A learns that the registry demands authentication (so the override below is not delayed).
    warm_up(a, etcd, repo, x, y)
    assert put_manifest(a.url, repo, "v1", x, headers=BOB).status == 201
    wait_stored(etcd, repo, "v1", sha256(x))
    # B's map learns X: an identical re-push through B.
    assert put_manifest(b.url, repo, "v1", x, headers=BOB).status == 201
    learned = time.monotonic()
    wait_stored(etcd, repo, "v1", sha256(x))  # B's hold committed (until then it refuses Y as in flight)
    r = put_manifest(a.url, repo, "v1", y, headers={**ADMIN, "X-Break-Glass-Reason": REASON})
    assert r.status == 201, r
    assert wait_stored(etcd, repo, "v1", sha256(y)), record(etcd, repo, "v1")
    os.kill(a.proc.pid, signal.SIGKILL)
    a.proc.wait()
    a.proc = None
    # etcd drops the override's record when its lease ends (its writer is dead): then at once a
    # push of X through B, whose map learned X before the override.
    deadline = learned + 2 * TTL + 3
    while record(etcd, repo, "v1") is not None and time.monotonic() < deadline:
        time.sleep(0.02)
    gone_after = round(time.monotonic() - learned, 2)
    assert record(etcd, repo, "v1") is None, "the record outlives its writer, but not by more than two TTLs"
    r = put_manifest(b.url, repo, "v1", x, headers=BOB)
    assert (r.status, current_digest(registry.url, repo, "v1")) == (409, sha256(y)), \
        ("override reverted", r, gone_after)
    # The record outlived every map entry that predates it (a map entry backs a verdict for at
    # most a TTL; main: half of it), though its replica died.
    assert gone_after >= TTL, ("the override's record died with its replica", gone_after)


# --- 4 ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("timeout_ms", [TTL * 1000, TTL * 250 + 1])
def test_4a_an_etcd_timeout_not_well_below_the_ttl_is_refused(workdir, registry, tmp_path, timeout_ms):
    bad = policy(etcd_timeout_ms=timeout_ms)
    port, admin = stack.free_port(), stack.free_port()
    e = stack.Envoy(workdir, stack.envoy_config(bad, port, admin, registry.port, module=MODULE), port, admin)
    e.start(expect_failure=True)
    refused = [l for l in e.log().splitlines() if "claims.etcd.timeout_ms" in l]
    assert refused and "claims.ttl_seconds" in refused[0], e.log()[-3000:]
    assert str(timeout_ms) in refused[0], refused[0]
    subprocess.run(["cargo", "build", "--quiet", "--bin", "immutable-tags"], cwd=stack.ROOT, check=True)
    f = tmp_path / "policy.json"
    f.write_text(json.dumps(bad))
    r = subprocess.run([str(stack.ROOT / "target" / "debug" / "immutable-tags"), "check", str(f)],
                       capture_output=True, text=True)
    out = r.stdout + r.stderr
    assert r.returncode != 0 and "claims.etcd.timeout_ms" in out and "claims.ttl_seconds" in out, out


def test_4b_a_paused_replica_cannot_act_on_a_claim_answer_older_than_the_ttl(
        envoys, htpasswd_registry, registry, etcd, uid):  # noqa: F811
    """With `timeout_ms` at most TTL/4 (4a) Envoy's own call timeout has passed too when A
    resumes; the filter's answer-age check refuses either way. The attack needed a timeout
    longer than the pause: with `timeout_ms` 5000 (TTL 3 s), which a module from before the rule
    accepted, that module let the paused push write over the winner (201)."""
    proxy = Relay(etcd.members[0].client_port)
    try:
        a = envoys(htpasswd_registry.port, etcd_port=proxy.port)
        b = envoys(htpasswd_registry.port)
        repo = f"prod/seq4-{uid}"
        x, y = make_manifest(registry.url, repo, "x"), make_manifest(registry.url, repo, "y")
        warm_connections(a, repo, x)
        proxy.holding.set()
        paused = send_put(a, repo, "v1", x, BOB)  # new tag: its HEAD says absent; it claims
        deadline = time.monotonic() + 5
        while record(etcd, repo, "v1") is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert sha256(x) in " ".join(record(etcd, repo, "v1") or []), "A's claim reached etcd"
        os.kill(a.proc.pid, signal.SIGSTOP)  # etcd's answer is on its way, A does not read it
        paused_at = time.monotonic()
        proxy.holding.clear()
        # A's claim ends with its lease; then Y wins through B and is committed.
        deadline = time.monotonic() + 2 * TTL + 3
        while record(etcd, repo, "v1") is not None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert record(etcd, repo, "v1") is None, ("A's claim outlived two TTLs", record(etcd, repo, "v1"))
        r = put_manifest(b.url, repo, "v1", y, headers=BOB)
        assert r.status == 201, r
        assert wait_stored(etcd, repo, "v1", sha256(y)), record(etcd, repo, "v1")
        paused_for = time.monotonic() - paused_at
        os.kill(a.proc.pid, signal.SIGCONT)
        status, body = answer_of(paused)
        assert status == 503 and "claim store" in body, (status, round(paused_for, 1), body)
        assert current_digest(registry.url, repo, "v1") == sha256(y), "the registry keeps the winner"
        time.sleep(0.5)  # A's root gave back what the late answer granted (nothing of Y's)
        assert stored(etcd, repo, "v1") == sha256(y), record(etcd, repo, "v1")
        assert put_manifest(a.url, repo, "v1", x, headers=BOB).status == 409, "A serves again, and refuses X"
    finally:
        proxy.stop()


# --- 5 ------------------------------------------------------------------------------------------

def test_5_claim_keys_of_pushes_whose_client_left_do_not_linger(envoys, htpasswd_registry, registry, etcd, uid):  # noqa: F811
    slow = SlowPuts(htpasswd_registry.port).start()
    try:
        replicas = [envoys(slow.port), envoys(slow.port)]
        repo = f"prod/seq5-{uid}"
        n = 12  # 6 per replica (a client holds at most 16 claims in flight per worker)
        ms = [make_manifest(registry.url, repo, f"m{i}") for i in range(n)]
        slow.put_delay = 1.0  # each write stays in flight a second: its claim is taken
        clients = [send_put(replicas[i % 2], repo, f"v{i}", ms[i], BOB) for i in range(n)]
        deadline = time.monotonic() + 10
        while slow.puts < n and time.monotonic() < deadline:
            time.sleep(0.01)
        assert slow.puts == n, f"{slow.puts} of {n} writes sent"
        for c in clients:
            vanish(c)  # every client leaves while its write is in flight
        prefix = f"{PREFIX}{repo}:"
        assert len(keys_under(etcd, prefix)) == n, "each write holds its claim"
        in_flight = [(counter(e, "claims_taken"), counter(e, "claims_settled")) for e in replicas]
        # The registry answers every orphaned write (a second after it was sent) and holds every
        # tag; each record then lives at most two TTLs past its last write (the commit).
        answered = time.monotonic() + slow.put_delay
        for i in range(n):
            deadline = time.monotonic() + 5
            while current_digest(registry.url, repo, f"v{i}") != sha256(ms[i]) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert current_digest(registry.url, repo, f"v{i}") == sha256(ms[i])
        while keys_under(etcd, prefix) and time.monotonic() < answered + 2 * TTL + 2:
            time.sleep(0.2)
        left = keys_under(etcd, prefix)
        assert left == [], (f"{len(left)} of {n} keys left {round(time.monotonic() - answered, 1)} s after the answers", left[:3])
        # Each claim was settled by the registry's answer: the keys in flight are back to 0.
        assert in_flight == [(n // 2, 0)] * 2, in_flight  # the metric saw the claims in flight
        taken = [(counter(e, "claims_taken"), counter(e, "claims_settled")) for e in replicas]
        assert taken == [(n // 2, n // 2)] * 2, taken  # one claim per push, each settled
    finally:
        slow.stop()


def test_5b_a_claim_whose_client_left_before_etcd_answered_does_not_linger(
        envoys, htpasswd_registry, registry, etcd, uid):  # noqa: F811
    """The other path that takes a claim and loses its client: the client leaves while the claim's
    call to etcd is out (etcd applied it; nobody reads the answer). Its key goes with its lease
    (v1); and its hold must not outlive a TTL either when other writes keep the tag's record
    fresh (v2: identical re-pushes of the stored digest, every half second), else the hold
    refuses every other digest, a break-glass override included, for as long as they go on.
    Failed on 351d223 (the hold had no age of its own, and every identical re-push rewrote the
    record, so the vanished push's hold was still counted 7 s (> 2 TTLs) after its client left
    and the override got 409 `in_flight`); each hold now carries its take time and ends two TTLs
    after it."""
    proxy = Relay(etcd.members[0].client_port)
    try:
        a = envoys(htpasswd_registry.port, etcd_port=proxy.port)
        b = envoys(htpasswd_registry.port)
        repo = f"prod/seq5b-{uid}"
        x, y = make_manifest(registry.url, repo, "x"), make_manifest(registry.url, repo, "y")
        warm_connections(a, repo, x)
        proxy.holding.set()
        clients = [send_put(a, repo, tag, x, BOB) for tag in ("v1", "v2")]
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(record(etcd, repo, t) is None for t in ("v1", "v2")):
            time.sleep(0.01)
        assert all(sha256(x) in " ".join(record(etcd, repo, t) or []) for t in ("v1", "v2")), "claimed"
        for c in clients:
            vanish(c)
        time.sleep(0.3)
        proxy.holding.clear()
        left_at = time.monotonic()
        # v2: X pushed through B (it shares the hold and commits), then re-pushed.
        assert put_manifest(b.url, repo, "v2", x, headers=BOB).status == 201
        while time.monotonic() < left_at + 2 * TTL + 1:
            assert put_manifest(b.url, repo, "v2", x, headers=BOB).status == 201
            time.sleep(0.5)
        assert record(etcd, repo, "v1") is None, ("the vanished claim's key outlived two TTLs", record(etcd, repo, "v1"))
        assert current_digest(registry.url, repo, "v1") is None
        # Two TTLs after its client left, nothing of the vanished claim may refuse anything.
        r = override(b, repo, "v2", y)
        assert r.status == 201, (r.status, r.body.decode(), record(etcd, repo, "v2"))
        assert current_digest(registry.url, repo, "v2") == sha256(y)
    finally:
        proxy.stop()


# --- 6 ------------------------------------------------------------------------------------------

def test_6_an_override_whose_client_leaves_during_the_write_is_logged_and_counted(
        envoys, htpasswd_registry, registry, etcd, uid):  # noqa: F811
    slow = SlowPuts(htpasswd_registry.port).start()
    try:
        a = envoys(slow.port)
        repo = f"prod/seq6-{uid}"
        x, y = make_manifest(registry.url, repo, "x"), make_manifest(registry.url, repo, "y")
        warm_up(a, etcd, repo, x, y)
        assert put_manifest(a.url, repo, "v1", x, headers=BOB).status == 201
        wait_stored(etcd, repo, "v1", sha256(x))
        before = counter(a, "break_glass_overrides")
        slow.put_delay, puts = 1.0, slow.puts
        c = send_put(a, repo, "v1", y, {**ADMIN, "X-Break-Glass-Reason": REASON})
        deadline = time.monotonic() + 10
        while slow.puts == puts and time.monotonic() < deadline:
            time.sleep(0.01)
        assert slow.puts == puts + 1, "the override's write was sent"
        vanish(c)
        # The registry answers the write a second later; nobody reads it but the filter.
        deadline = time.monotonic() + 5
        while current_digest(registry.url, repo, "v1") != sha256(y) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert current_digest(registry.url, repo, "v1") == sha256(y), "the override was stored"
        deadline = time.monotonic() + 3
        while counter(a, "break_glass_overrides") == before and time.monotonic() < deadline:
            time.sleep(0.05)
        assert counter(a, "break_glass_overrides") == (before or 0) + 1
        want = ("release-admin", REASON, repo, "v1", sha256(x), sha256(y))
        fields = lambda l: (l["principal"], l["reason"], l["repository"], l["tag"], l["current_digest"], l["pushed_digest"])  # noqa: E731
        decided = [fields(l) for l in log_records(a, "immutable_tags.break_glass_decision") if l.get("tag") == "v1" and l.get("repository") == repo]
        done = [fields(l) for l in log_records(a, "immutable_tags.break_glass") if l.get("tag") == "v1" and l.get("repository") == repo]
        assert decided == [want], decided
        assert done == [want], done
        assert wait_stored(etcd, repo, "v1", sha256(y)), record(etcd, repo, "v1")
        assert any("the registry answered 201 to a push whose client left" in l and repo in l for l in a.log().splitlines())
    finally:
        slow.stop()
