"""Concurrent pushes of different manifests to one new immutable tag: exactly one wins, within
one Envoy with several worker threads (the claims live in Envoy's process-wide shared data)."""
from __future__ import annotations

import threading

from conftest import SAMPLE_POLICY
from oci import current_digest, make_manifest, put_manifest, sha256

CLIENTS = 16
ROUNDS = 5


def test_racing_pushes_to_a_new_tag_exactly_one_wins(stacks, registry, stop_on_headers, uid):
    envoy = stacks.envoy(registry, SAMPLE_POLICY, stop_on_headers, concurrency=2)
    repo = f"race-{uid}"
    manifests = [make_manifest(registry.url, repo, f"client-{i}") for i in range(CLIENTS)]
    assert len({sha256(m) for m in manifests}) == CLIENTS

    in_flight_seen = 0
    for round_ in range(ROUNDS):
        tag = f"v{round_}.0.0"
        barrier = threading.Barrier(CLIENTS)
        results: list = [None] * CLIENTS

        def push(i: int) -> None:
            barrier.wait()
            try:
                results[i] = put_manifest(envoy.url, repo, tag, manifests[i])
            except Exception as e:  # recorded, so the assertion below names it
                results[i] = e

        threads = [threading.Thread(target=push, args=(i,)) for i in range(CLIENTS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)

        statuses = [getattr(r, "status", r) for r in results]
        winners = [i for i, r in enumerate(results) if getattr(r, "status", None) == 201]
        assert len(winners) == 1, f"round {round_}: {statuses}"
        # Losers get 409. distribution 2.8 itself sometimes answers HEAD with 500 while the
        # winner's tag is being written; the filter then refuses with 503 (the safe side).
        registry_races = [r for r in results if getattr(r, "status", None) == 503
                          and "status 500" in r.json()["errors"][0]["message"]]
        assert statuses.count(409) + len(registry_races) == CLIENTS - 1, f"round {round_}: {statuses}"
        assert statuses.count(409) >= CLIENTS // 2, f"round {round_}: {statuses}"
        won = sha256(manifests[winners[0]])
        assert current_digest(registry.url, repo, tag) == won, f"round {round_}: the registry holds the winner"
        for i, r in enumerate(results):
            if i == winners[0] or r in registry_races:
                continue
            err = r.json()["errors"][0]
            assert err["code"] == "DENIED", err
            assert err["detail"]["tag"] == tag and err["detail"]["pushed_digest"] == sha256(manifests[i]), err
            assert err["detail"]["current_digest"] == won, err
            if "in_flight" in err["detail"]:  # refused by the claim, before the registry had it
                assert won in err["detail"]["in_flight"], err
                in_flight_seen += 1

        # Afterwards the tag behaves like any pushed tag: the winner may re-push, others may not.
        assert put_manifest(envoy.url, repo, tag, manifests[winners[0]]).status == 201
        loser = (winners[0] + 1) % CLIENTS
        assert put_manifest(envoy.url, repo, tag, manifests[loser]).status == 409
        assert current_digest(registry.url, repo, tag) == won
    assert in_flight_seen > 0, "some pushes met the claim while the winner was in flight"


def test_same_digest_pushed_concurrently_never_conflicts(stacks, registry, stop_on_headers, uid):
    envoy = stacks.envoy(registry, SAMPLE_POLICY, stop_on_headers, concurrency=2)
    repo = f"race-same-{uid}"
    m = make_manifest(registry.url, repo, "same")
    barrier = threading.Barrier(8)
    results: list = [None] * 8

    def push(i: int) -> None:
        barrier.wait()
        results[i] = put_manifest(envoy.url, repo, "v1", m)

    threads = [threading.Thread(target=push, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    # The invariant: no push of the one digest is refused as a conflict; every 201 wrote that
    # digest; the registry holds it. distribution 2.8 itself answers HEAD with 500 while the same
    # tag is being written; the filter then refuses (503), the safe side, and says exactly why.
    statuses = [r.status for r in results]
    assert statuses.count(201) >= len(results) // 2, statuses
    for r in results:
        if r.status == 201:
            assert r.digest == sha256(m), r
            continue
        assert r.status == 503 and r.headers.get("content-type") == "application/json", statuses
        err = r.json()["errors"][0]
        assert err["code"] == "UNAVAILABLE", err
        assert err["detail"] == {"reason": "the registry answered HEAD with status 500", "repository": repo, "tag": "v1"}, err
    assert current_digest(registry.url, repo, "v1") == sha256(m)
    assert put_manifest(envoy.url, repo, "v1", m).status == 201, "identical re-push (a CI retry) succeeds"


def test_tiny_bounds_hold_far_more_tags_and_still_protect(stacks, registry, uid):
    """One claim slot (16 records) and a 2-entry tag map: 16 distinct tags fit, the 17th is
    refused with 503 (a live committed record is never evicted: it still fences stale views),
    overwrites still fail."""
    policy = dict(SAMPLE_POLICY, cache={"max_entries": 2, "ttl_seconds": 60}, claims={"slots": 1, "ttl_seconds": 60})
    envoy = stacks.envoy(registry, policy, True)
    repo = f"bounds-{uid}"
    m1 = make_manifest(registry.url, repo, "one")
    m2 = make_manifest(registry.url, repo, "two")
    tags = [f"v{i}" for i in range(16)]
    for t in tags:
        r = put_manifest(envoy.url, repo, t, m1)
        assert r.status == 201, (t, r)
    assert put_manifest(envoy.url, repo, "v16", m1).status == 503, "slot full: refused, nothing evicted"
    for t in tags[::7]:
        assert put_manifest(envoy.url, repo, t, m2).status == 409, t
        assert current_digest(registry.url, repo, t) == sha256(m1)
