"""A delete by digest and a push of that digest to a new protected tag fence each other (issue
27; the simulator's seed 2381): a push stored between the delete's check and its landing would
be deleted with the manifest, a protected tag removed with no break-glass decision. A relay in
front of distribution holds the DELETE (or the filter's PUT) for a while, so the other request
comes in between. Claims in Envoy's shared data (one Envoy) and in etcd (two Envoys: the push
through one, the delete through the other)."""
from __future__ import annotations

import threading
import time

import pytest

import stack
from etcd import CLUSTER, EtcdCluster
from oci import OCI_MANIFEST, current_digest, make_manifest, request, sha256
from relay import Relay

HOLD_S = 3.0


def policy(store: str) -> dict:
    p = {"global": {"immutable_tags": True}}
    if store == "etcd":
        p["claims"] = {"etcd": {"cluster": CLUSTER, "authority": "localhost", "timeout_ms": 1000}}
    return p


@pytest.fixture(scope="module")
def fenced(workdir):
    reg = stack.Registry(workdir).start()
    relay = Relay(reg.port, hold_s=HOLD_S)
    yield reg, relay
    relay.stop()
    reg.stop()


@pytest.fixture(scope="module", params=["shared", "etcd"])
def pair(request, workdir, fenced):
    """(reg, relay, a, b, store): pushes through a, deletes through b (the same Envoy in
    shared data)."""
    reg, relay = fenced
    store = request.param
    envoys = []
    cluster = None
    try:
        if store == "etcd":
            cluster = EtcdCluster(workdir, size=1).start()
        for _ in range(1 if store == "shared" else 2):
            port, admin = stack.free_port(), stack.free_port()
            cfg = stack.envoy_config(policy(store), port, admin, relay.port)
            if cluster:
                cfg["static_resources"]["clusters"].append(cluster.envoy_cluster())
            envoys.append(stack.Envoy(workdir, cfg, port, admin, concurrency=2).start())
        yield reg, relay, envoys[0], envoys[-1], store
    finally:
        for e in envoys:
            e.stop()
        if cluster:
            cluster.stop()


def in_thread(fn) -> tuple[threading.Thread, list]:
    out: list = []
    t = threading.Thread(target=lambda: out.append(fn()))
    t.start()
    return t, out


def put(base: str, repo: str, ref: str, body: bytes):
    return request(base, "PUT", f"/v2/{repo}/manifests/{ref}", body=body, headers={"Content-Type": OCI_MANIFEST})


def test_a_push_of_a_digest_being_deleted_is_refused_and_no_tag_is_deleted(pair):
    reg, relay, a, b, store = pair
    repo = f"fence/{store}-delete-first"
    m = make_manifest(reg.url, repo, f"delete-first-{store}")
    d = sha256(m)
    assert put(reg.url, repo, d, m).status == 201  # the manifest, untagged
    relay.hold_method = b"DELETE"
    try:
        t, deleted = in_thread(lambda: request(b.url, "DELETE", f"/v2/{repo}/manifests/{d}"))
        time.sleep(HOLD_S / 3)  # checked, let through, held on its way to the registry
        pushed = put(a.url, repo, "v1", m)
        t.join()
    finally:
        relay.hold_method = None
    assert deleted[0].status == 202, deleted[0]
    assert pushed.status == 409, pushed
    assert b"a delete of this manifest is in flight" in pushed.body
    assert current_digest(reg.url, repo, "v1") is None  # never stored, so never deleted unseen
    # The registry answered the delete: the fence is given back (etcd: within a root tick).
    time.sleep(0.5)
    assert put(a.url, repo, "v1", m).status == 201
    assert current_digest(reg.url, repo, "v1") == d


def test_a_delete_of_a_digest_a_push_is_writing_is_refused(pair):
    reg, relay, a, b, store = pair
    repo = f"fence/{store}-push-first"
    m = make_manifest(reg.url, repo, f"push-first-{store}")
    d = sha256(m)
    relay.hold_method = b"PUT"
    try:
        t, pushed = in_thread(lambda: put(a.url, repo, "v2", m))
        time.sleep(HOLD_S / 3)  # claimed, the filter's PUT held on its way to the registry
        deleted = request(b.url, "DELETE", f"/v2/{repo}/manifests/{d}")
        t.join()
    finally:
        relay.hold_method = None
    assert pushed[0].status == 201, pushed[0]
    assert deleted.status == 409, deleted
    assert b"a push of it to a protected tag is in flight" in deleted.body
    assert current_digest(reg.url, repo, "v2") == d
