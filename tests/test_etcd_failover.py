"""Claims through etcd survive a hung member (issue 22): a real 3-member etcd 3.4 cluster
(mutual TLS) behind 3 Envoy processes x 2 workers, its cluster taken from the shipped
`envoy/envoy-etcd.yaml` (health checks on etcd's `/health`, outlier detection that ejects a
member on its first timeout). Each member is reached through a loopback relay of the test's own,
which can delay what it forwards (a slow member).

Faults: a follower hung (`SIGSTOP`: connections still accepted, nothing answers), the leader
hung (found with `/v3/maintenance/status`), a member killed and restarted with its data, a
member slowed past the per-attempt deadline. Throughout: exactly one winner in every race round,
and no immutable tag changed. The issue's targets are printed as figures, not asserted on time.
"""
from __future__ import annotations

import contextlib
import os
import signal
import statistics
import subprocess
import time
from pathlib import Path

import pytest
import yaml

import stack
from conftest import SAMPLE_POLICY
from etcd import CLUSTER, EtcdCluster
from oci import current_digest, make_manifest, put_manifest, sha256
from relay import Relay
from test_etcd import assert_one_winner, manifests_for, race, winners

SHIPPED = stack.ROOT / "envoy" / "envoy-etcd.yaml"
TTL = 10
TIMEOUT_MS = 2000  # the claims.etcd.timeout_ms; attempt_timeout_ms left at its default
POLICY = dict(SAMPLE_POLICY,
              upstream=dict(SAMPLE_POLICY.get("upstream", {}), write_timeout_ms=3000),
              claims={"ttl_seconds": TTL, "etcd": {"cluster": CLUSTER, "authority": "localhost", "timeout_ms": TIMEOUT_MS}})
# Sequential pushes with one follower hung: the issue asks for 200 (about 15 s here).
PUSHES = int(os.environ.get("FAILOVER_PUSHES", "200"))
ROUNDS = 5


def shipped_cluster(etcd: EtcdCluster, relays: list[Relay]) -> dict:
    """The etcd cluster of envoy/envoy-etcd.yaml as shipped, with this test's members (through
    the relays) and certificates put in."""
    doc = yaml.safe_load(SHIPPED.read_text())
    c = next(c for c in doc["static_resources"]["clusters"] if c["name"] == CLUSTER)
    ctx = c["transport_socket"]["typed_config"]["common_tls_context"]
    ctx["tls_certificates"] = [{"certificate_chain": {"filename": etcd.certs["client"]},
                                "private_key": {"filename": etcd.certs["client_key"]}}]
    ctx["validation_context"]["trusted_ca"] = {"filename": etcd.certs["ca"]}
    eps = c["load_assignment"]["endpoints"][0]["lb_endpoints"]
    assert len(eps) == len(relays)
    for ep, r in zip(eps, relays):
        ep["endpoint"]["address"]["socket_address"].update(address="127.0.0.1", port_value=r.port)
    return c


@pytest.fixture(scope="module")
def etcd(workdir):
    c = EtcdCluster(workdir).start()
    yield c
    for m in c.members:
        if m.proc:
            with contextlib.suppress(OSError):
                os.kill(m.proc.pid, signal.SIGCONT)
    c.stop()


@pytest.fixture(scope="module")
def relays(etcd):
    rs = [Relay(m.client_port) for m in etcd.members]
    yield rs
    for r in rs:
        r.stop()


@pytest.fixture(scope="module")
def replicas(workdir, registry, etcd, relays):
    envoys = []
    for _ in range(3):
        port, admin = stack.free_port(), stack.free_port()
        cfg = stack.envoy_config(POLICY, port, admin, registry.port)
        cfg["static_resources"]["clusters"].append(shipped_cluster(etcd, relays))
        envoys.append(stack.Envoy(workdir, cfg, port, admin, concurrency=2).start())
    yield envoys
    for e in envoys:
        e.stop()


def status_of(etcd: EtcdCluster, i: int) -> dict:
    return etcd.call("/v3/maintenance/status", {}, member=i, timeout=1)


def leader(etcd: EtcdCluster, among: list[int] | None = None) -> int | None:
    """The index of the member the live members (or `among`) say leads, if any."""
    ids, lead = {}, None
    for i, m in enumerate(etcd.members):
        if m.proc and (among is None or i in among):
            with contextlib.suppress(Exception):
                s = status_of(etcd, i)
                ids[int(s["header"]["member_id"])] = i
                lead = int(s.get("leader", 0)) or lead
    return ids.get(lead) if lead is not None else None


def settled(etcd: EtcdCluster, without: int, timeout: float = 20) -> float:
    """Waits until the members other than `without` agree on a leader; seconds it took."""
    t0 = time.monotonic()
    others = [i for i in range(len(etcd.members)) if i != without]
    while time.monotonic() - t0 < timeout:
        lead = leader(etcd, others)
        if lead is not None and lead != without:
            return time.monotonic() - t0
        time.sleep(0.05)
    raise AssertionError("no new leader")


@contextlib.contextmanager
def hung(etcd: EtcdCluster, i: int):
    pid = etcd.members[i].proc.pid
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def push_sequence(replicas, registry, repo: str, n: int) -> list[tuple[int, float, str]]:
    """`n` pushes of new immutable tags, one after another, round robin over the replicas:
    (status, seconds, message) each."""
    out = []
    for i in range(n):
        m = make_manifest(registry.url, repo, f"seq-{i}")
        t0 = time.monotonic()
        r = put_manifest(replicas[i % len(replicas)].url, repo, f"v{i}", m)
        dt = time.monotonic() - t0
        msg = "" if r.status == 201 else r.body.decode(errors="replace")[:200]
        out.append((r.status, dt, msg))
    return out


def p99(xs: list[float]) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * 0.99))]


def figures(what: str, baseline: list, results: list) -> str:
    base = statistics.median(dt for _, dt, _ in baseline)
    stored = sum(1 for s, _, _ in results if s == 201)
    added = p99([dt for _, dt, _ in results]) - base
    worst = max(dt for _, dt, _ in results)
    line = (f"{what}: {stored}/{len(results)} stored ({100 * stored / len(results):.1f}%), "
            f"p99 added latency {added * 1000:.0f} ms (median with all members up {base * 1000:.0f} ms, "
            f"slowest push {worst * 1000:.0f} ms)")
    print(line)
    return line


def stat(envoy: stack.Envoy, name: str) -> int:
    for line in envoy.stats().splitlines():
        if line.startswith(f"wasmcustom.immutable_tags.{name}:"):
            return int(line.split(":")[1])
    return 0


ETCD_COUNTERS = ["etcd_attempts_retried", "etcd_failovers", "etcd_attempt_timeouts", "etcd_attempts_refused",
                 "etcd_attempt_resets", "etcd_attempts_unavailable", "etcd_calls_failed"]


def counters(replicas) -> dict:
    return {name: sum(stat(e, name) for e in replicas) for name in ETCD_COUNTERS}


def races(replicas, registry, repo: str, rounds: int, what: str) -> None:
    """Race rounds: exactly one winner in each, and one in every round."""
    ms = manifests_for(registry, repo)
    for round_ in range(rounds):
        tag = f"r{round_}"
        results = race(replicas, repo, tag, ms)
        assert winners(results), f"{what}, round {round_}: no winner {[getattr(r, 'status', r) for r in results]}"
        assert_one_winner(results, registry, repo, tag, ms, f"{what}, round {round_}")


def unchanged(replicas, registry, repo: str, results: list) -> None:
    """Every tag stored stays as it is: an overwrite through any replica is refused."""
    for i, (s, _, _) in enumerate(results[:20]):
        if s != 201:
            continue
        before = current_digest(registry.url, repo, f"v{i}")
        r = put_manifest(replicas[(i + 1) % 3].url, repo, f"v{i}", make_manifest(registry.url, repo, f"other-{i}"))
        assert r.status in (409, 503), r
        assert current_digest(registry.url, repo, f"v{i}") == before


def test_a_hung_follower_loses_no_push(replicas, registry, etcd, uid):
    repo = f"hung-follower-{uid}"
    baseline = push_sequence(replicas, registry, repo + "-base", 20)
    assert all(s == 201 for s, _, _ in baseline), baseline
    lead = leader(etcd)
    follower = next(i for i in range(3) if i != lead)
    before = counters(replicas)
    with hung(etcd, follower):
        results = push_sequence(replicas, registry, repo, PUSHES)
        figures(f"one follower (m{follower}) hung, timeout_ms {TIMEOUT_MS}", baseline, results)
        failed = [(i, s, dt, msg) for i, (s, dt, msg) in enumerate(results) if s != 201]
        assert not failed, f"{len(failed)} of {PUSHES} pushes failed: {failed[:5]}"
        races(replicas, registry, repo + "-race", ROUNDS, f"m{follower} (follower) hung")
        unchanged(replicas, registry, repo, results)
    moved = {k: v - before[k] for k, v in counters(replicas).items() if v != before[k]}
    print(f"etcd counters moved over the 3 replicas: {moved}")
    assert moved.get("etcd_failovers", 0) > 0 and moved.get("etcd_calls_failed", 0) == 0, moved


def test_a_hung_leader_costs_pushes_only_until_a_new_one_leads(replicas, registry, etcd, uid):
    repo = f"hung-leader-{uid}"
    baseline = push_sequence(replicas, registry, repo + "-base", 10)
    lead = leader(etcd)
    assert lead is not None
    others = [i for i in range(3) if i != lead]
    results, elected = [], None
    with hung(etcd, lead):
        t0 = time.monotonic()
        i = 0
        while time.monotonic() - t0 < 30:
            m = make_manifest(registry.url, repo, f"seq-{i}")
            start = time.monotonic() - t0
            r = put_manifest(replicas[i % 3].url, repo, f"v{i}", m)
            results.append((start, r.status, time.monotonic() - t0 - start))
            i += 1
            if elected is None:
                new = leader(etcd, others)
                if new is not None and new != lead:
                    elected = time.monotonic() - t0
            elif start > elected + 2 and i >= 40:
                break
        assert elected is not None, "the others elected no leader"
        failed = [(round(t, 2), s) for t, s, _ in results if s != 201]
        after = [(t, s) for t, s, _ in results if t > elected + 1]
        print(f"leader m{lead} hung: new leader seen after {elected:.2f} s; {len(failed)} of {len(results)} "
              f"pushes failed, at {failed[:10]}; after the election {sum(s == 201 for _, s in after)}/{len(after)} stored; "
              f"slowest push {max(d for _, _, d in results) * 1000:.0f} ms")
        assert all(s == 201 for _, s in after), f"failures after the election: {failed}"
        races(replicas, registry, repo + "-race", ROUNDS, f"m{lead} (leader) hung")
        unchanged(replicas, registry, repo, [(s, 0, "") for _, s, _ in results])


def test_a_member_killed_and_restarted_with_its_data(replicas, registry, etcd, uid):
    repo = f"killed-{uid}"
    # A follower: the leader's loss is the hung-leader test's (an election, whatever the cause).
    victim = next(i for i in range(3) if i != leader(etcd))
    m = etcd.members[victim]
    os.kill(m.proc.pid, signal.SIGKILL)
    m.proc.wait()
    m.proc = None
    try:
        results = push_sequence(replicas, registry, repo, 30)
        assert all(s == 201 for s, _, _ in results), [r for r in results if r[0] != 201][:5]
        races(replicas, registry, repo + "-race", ROUNDS, f"m{victim} killed")
    finally:
        m.start()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            if status_of(etcd, victim)["header"]["member_id"]:
                break
        time.sleep(0.2)
    more = push_sequence(replicas, registry, repo + "-back", 30)
    assert all(s == 201 for s, _, _ in more), [r for r in more if r[0] != 201][:5]
    unchanged(replicas, registry, repo, results)


def test_a_slow_member_is_left_for_the_others(replicas, registry, etcd, relays, uid):
    repo = f"slow-{uid}"
    baseline = push_sequence(replicas, registry, repo + "-base", 10)
    slow = next(i for i in range(3) if i != leader(etcd))
    relays[slow].delay = 1.0  # past the attempt deadline (500 ms) and the health check's
    try:
        results = push_sequence(replicas, registry, repo, 60)
        figures(f"m{slow} slowed by 1 s a chunk", baseline, results)
        assert all(s == 201 for s, _, _ in results), [r for r in results if r[0] != 201][:5]
        races(replicas, registry, repo + "-race", ROUNDS, f"m{slow} slowed")
        unchanged(replicas, registry, repo, results)
    finally:
        relays[slow].delay = 0


def test_the_shipped_etcd_cluster_validates(workdir, etcd):
    """envoy/envoy-etcd.yaml passes `envoy --mode validate` (with certificates that exist), and
    so does its plain-HTTP form."""
    doc = yaml.safe_load(SHIPPED.read_text())
    text = SHIPPED.read_text()
    for path, real in (("/etc/immutable-tags/etcd-client.crt", etcd.certs["client"]),
                       ("/etc/immutable-tags/etcd-client.key", etcd.certs["client_key"]),
                       ("/etc/immutable-tags/etcd-ca.crt", etcd.certs["ca"])):
        assert path in text
        text = text.replace(path, real)
    plain = yaml.safe_load(text)
    plain["static_resources"]["clusters"][0].pop("transport_socket")
    for name, body in (("tls", text), ("plain", yaml.safe_dump(plain))):
        p = workdir / f"envoy-etcd-{name}.yaml"
        p.write_text(body)
        r = subprocess.run([stack.envoy_binary(), "--mode", "validate", "-c", str(p)], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, (name, r.stdout[-2000:], r.stderr[-2000:])
    assert doc["static_resources"]["clusters"][0]["outlier_detection"]["consecutive_local_origin_failure"] == 1
