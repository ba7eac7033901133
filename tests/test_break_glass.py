"""Break-glass: an overwrite or delete of an immutable tag, lifted for one request whose identity
the registry itself verifies, with a reason, logged and counted once the registry accepted it."""
from __future__ import annotations

import base64
import datetime
import json
import subprocess
import time

import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

import stack
from oci import current_digest, make_manifest, oci_layout, put_manifest, request, sha256
from test_skopeo import skopeo_copy

# bcrypt (cost 4) of release-admin:pw-admin and bob:pw-bob.
HTPASSWD = (
    "release-admin:$2b$04$bUHIgrhESXuvvw88QCMrG.3WI9ULAjrC2ORWCENqTH5Slankde5vS\n"
    "bob:$2b$04$pu2KAzJvxyLfWyX2BPU2AOx1Mio5ypvwwepF2JGpQdQkIWT0cL12O\n"
)
REASON = "CVE-2026-0001 in the released image"


def basic(user: str, password: str) -> dict:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


ADMIN = basic("release-admin", "pw-admin")


def policy(actions=("overwrite", "delete"), repositories=("prod/**",)) -> dict:
    return {
        "global": {"immutable_tags": True},
        "break_glass": {"principals": ["release-admin"], "repositories": list(repositories), "actions": list(actions)},
    }


def why(r) -> str:
    return r.json()["errors"][0]["detail"].get("break_glass", "")


def overrides(envoy) -> int:
    for line in envoy.stats().splitlines():
        if line.startswith("wasmcustom.immutable_tags.break_glass_overrides:"):
            return int(line.split(":")[1])
    return 0


def override_lines(envoy, sent: bool = False) -> list[dict]:
    """The override records: a push's, a delete's outcome (`sent`: the decision line a delete
    writes before it goes to the registry)."""
    event = '"event":"immutable_tags.break_glass_decision"' if sent else '"event":"immutable_tags.break_glass"'
    out = []
    for line in envoy.log().splitlines():
        if event in line:
            record = json.loads(line[line.index("{"):])
            if not sent or record.get("outcome") == "sent":
                out.append(record)
    return out


def wait_for_probe(envoy, url, repo, tag, manifest, headers):
    """The root context learns the registry's authentication right after start; until it
    answered, an override is refused ("could not learn"): wait for that, never longer."""
    deadline = time.time() + 15
    while True:
        r = put_manifest(url, repo, tag, manifest, headers=headers)
        if r.status != 409 or "could not learn" not in why(r) or time.time() > deadline:
            return r
        time.sleep(0.2)


@pytest.fixture
def htpasswd_registry(registry, workdir):
    path = workdir / "htpasswd-break-glass"
    path.write_text(HTPASSWD)
    storage = {"filesystem": {"rootdirectory": str(registry.dir / "data")}, "delete": {"enabled": True}}
    r = stack.Registry(workdir, extra={"storage": storage, "auth": {"htpasswd": {"realm": "bg", "path": str(path)}}})
    r.start()
    yield r
    r.stop()


def test_htpasswd_a_proven_listed_principal_with_a_reason_overwrites(stacks, registry, htpasswd_registry, stop_on_headers, uid):
    envoy = stacks.envoy(htpasswd_registry, policy(), stop_on_headers, fresh=True)
    repo = f"prod/bg-{uid}"
    m1, m2 = make_manifest(registry.url, repo, "one"), make_manifest(registry.url, repo, "two")
    assert put_manifest(envoy.url, repo, "v1", m1, headers=ADMIN).status == 201

    refused = [
        ({**ADMIN, "X-Break-Glass-Reason": "  "}, "header is empty"),
        ({**basic("bob", "pw-bob"), "X-Break-Glass-Reason": REASON}, "principal 'bob' is not in break_glass.principals"),
    ]
    for headers, expect in refused:
        r = wait_for_probe(envoy, envoy.url, repo, "v1", m2, headers)
        assert r.status == 409, (expect, r)
        assert expect in why(r), (expect, r.body)
        assert current_digest(registry.url, repo, "v1") == sha256(m1)
    refusals = [json.loads(l[l.index("{"):]) for l in envoy.log().splitlines() if '"event":"immutable_tags.refusal"' in l]
    assert any(r["repository"] == repo and "principal 'bob' is not in" in (r["break_glass"] or "") for r in refusals)
    # No reason: an ordinary refusal (nothing was asked of break-glass, so it says nothing).
    r = put_manifest(envoy.url, repo, "v1", m2, headers=ADMIN)
    assert r.status == 409 and why(r) == "", r
    assert current_digest(registry.url, repo, "v1") == sha256(m1)
    # A wrong password: the registry itself refuses (the filter's HEAD already), nothing moves.
    r = put_manifest(envoy.url, repo, "v1", m2, headers={**basic("release-admin", "wrong"), "X-Break-Glass-Reason": REASON})
    assert r.status == 401, r
    assert current_digest(registry.url, repo, "v1") == sha256(m1)
    # Out of scope: a repository break_glass.repositories does not select.
    other = f"staging/bg-{uid}"
    o1, o2 = make_manifest(registry.url, other, "one"), make_manifest(registry.url, other, "two")
    assert put_manifest(envoy.url, other, "v1", o1, headers=ADMIN).status == 201
    r = put_manifest(envoy.url, other, "v1", o2, headers={**ADMIN, "X-Break-Glass-Reason": REASON})
    assert r.status == 409 and "not in break_glass.repositories" in why(r), r
    assert current_digest(registry.url, other, "v1") == sha256(o1)
    assert overrides(envoy) == 0

    r = put_manifest(envoy.url, repo, "v1", m2, headers={**ADMIN, "X-Break-Glass-Reason": REASON, "X-Request-Id": f"req-{uid}"})
    assert r.status == 201, r
    assert r.headers["x-request-id"] != f"req-{uid}", "Envoy's own id, not the client's"
    assert current_digest(registry.url, repo, "v1") == sha256(m2)
    assert overrides(envoy) == 1
    lines = [l for l in override_lines(envoy) if l["repository"] == repo]
    assert len(lines) == 1, lines
    assert lines[0] | {"mode": "enforce"} == {
        "event": "immutable_tags.break_glass", "mode": "enforce", "principal": "release-admin", "reason": REASON,
        "action": "overwrite", "repository": repo, "tag": "v1", "current_digest": sha256(m1),
        "pushed_digest": sha256(m2), "request_id": r.headers["x-request-id"],
    }
    assert "pw-admin" not in envoy.log() and ADMIN["Authorization"].split()[1] not in envoy.log(), "never a credential"
    # One request: the next overwrite without a reason is refused again.
    assert put_manifest(envoy.url, repo, "v1", m1, headers=ADMIN).status == 409


def test_a_registry_without_auth_proves_nobody(stacks, registry, uid):
    envoy = stacks.envoy(registry, policy(), True, fresh=True)
    repo = f"prod/noauth-{uid}"
    m1, m2 = make_manifest(registry.url, repo, "one"), make_manifest(registry.url, repo, "two")
    assert put_manifest(envoy.url, repo, "v1", m1).status == 201
    bearer = {"Authorization": "Bearer " + jwt.encode({"sub": "release-admin"}, "a key of 32 bytes, not the registry", algorithm="HS256")}
    for creds in (ADMIN, bearer):
        r = wait_for_probe(envoy, envoy.url, repo, "v1", m2, {**creds, "X-Break-Glass-Reason": REASON})
        assert r.status == 409, r
        assert "does not demand authentication, so principal 'release-admin' is unproven" in why(r), r.body
    assert current_digest(registry.url, repo, "v1") == sha256(m1)
    assert overrides(envoy) == 0


@pytest.mark.parametrize("actions,allowed", [(("overwrite", "delete"), True), (("overwrite",), False)])
def test_deletes_follow_the_actions(stacks, registry, htpasswd_registry, uid, actions, allowed):
    envoy = stacks.envoy(htpasswd_registry, policy(actions), True, fresh=True)
    repo = f"prod/del-{uid}"
    m1 = make_manifest(registry.url, repo, "one")
    assert put_manifest(envoy.url, repo, "v1", m1, headers=ADMIN).status == 201
    path = f"/v2/{repo}/manifests/{sha256(m1)}"
    deadline = time.time() + 15
    while True:
        r = request(envoy.url, "DELETE", path, headers={**ADMIN, "X-Break-Glass-Reason": REASON})
        if r.status != 409 or "could not learn" not in why(r) or time.time() > deadline:
            break
        time.sleep(0.2)
    if allowed:
        assert r.status == 202, r
        assert current_digest(registry.url, repo, "v1") is None
        assert overrides(envoy) == 1
        assert [(l["action"], l["outcome"]) for l in override_lines(envoy) if l["repository"] == repo] == [("delete", "accepted")]
        assert [l["tags"] for l in override_lines(envoy, sent=True) if l["repository"] == repo] == [["v1"]]
    else:
        assert r.status == 409, r
        assert 'break_glass.actions does not include "delete"' in why(r)
        assert current_digest(registry.url, repo, "v1") == sha256(m1)


# --- token auth: a token server of the test's own (a key and a certificate the registry trusts) ---

def keypair(workdir, name):
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    path = workdir / f"{name}.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key, cert, path


def token(key, cert, sub, repo, alg="RS256"):
    now = int(time.time())
    claims = {"iss": "bg-issuer", "sub": sub, "aud": "bg-registry", "exp": now + 300, "nbf": now - 10, "iat": now,
              "jti": f"{sub}-{now}", "access": [{"type": "repository", "name": repo, "actions": ["pull", "push"]}]}
    if alg == "none":
        return jwt.encode(claims, None, algorithm="none")
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    x5c = [base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()]
    return jwt.encode(claims, pem, algorithm=alg, headers={"x5c": x5c})


def test_token_auth_a_valid_token_overrides_a_forged_one_does_not(stacks, registry, workdir, uid):
    key, cert, bundle = keypair(workdir, f"trusted-{uid}")
    other_key, other_cert, _ = keypair(workdir, f"foreign-{uid}")
    storage = {"filesystem": {"rootdirectory": str(registry.dir / "data")}, "delete": {"enabled": True}}
    auth = {"token": {"realm": "http://127.0.0.1:1/token", "service": "bg-registry", "issuer": "bg-issuer",
                      "rootcertbundle": str(bundle)}}
    locked = stack.Registry(workdir, extra={"storage": storage, "auth": auth}).start()
    try:
        envoy = stacks.envoy(locked, policy(), True, fresh=True)
        repo = f"prod/tok-{uid}"
        m1, m2 = make_manifest(registry.url, repo, "one"), make_manifest(registry.url, repo, "two")
        bearer = lambda t: {"Authorization": f"Bearer {t}", "X-Break-Glass-Reason": REASON}
        assert put_manifest(envoy.url, repo, "v1", m1, headers=bearer(token(key, cert, "release-admin", repo))).status == 201
        for forged in (token(other_key, other_cert, "release-admin", repo), token(None, None, "release-admin", repo, "none")):
            r = put_manifest(envoy.url, repo, "v1", m2, headers=bearer(forged))
            assert r.status == 401, r
            assert current_digest(registry.url, repo, "v1") == sha256(m1)
        r = wait_for_probe(envoy, envoy.url, repo, "v1", m2, bearer(token(key, cert, "bob", repo)))
        assert r.status == 409 and "principal 'bob' is not in" in why(r), r
        r = put_manifest(envoy.url, repo, "v1", m2, headers=bearer(token(key, cert, "release-admin", repo)))
        assert r.status == 201, r
        assert current_digest(registry.url, repo, "v1") == sha256(m2)
        assert overrides(envoy) == 1
    finally:
        locked.stop()


def test_skopeo_uses_a_window_opened_by_an_authorized_read(stacks, registry, htpasswd_registry, tmp_path, uid):
    """skopeo cannot send the reason header: a read of the tag that carries it, which the registry
    answered with the principal's credentials, opens a window for that principal's next push."""
    envoy = stacks.envoy(htpasswd_registry, policy(), True, fresh=True, manifest_reads=True)
    repo = f"prod/skopeo-{uid}"
    one, two = oci_layout(tmp_path / "one", "one"), oci_layout(tmp_path / "two", "two")
    dest = f"docker://127.0.0.1:{envoy.port}/{repo}:v1"
    creds = ["--dest-creds", "release-admin:pw-admin"]

    def copy(src, creds):
        return subprocess.run(["skopeo", "copy", "--dest-tls-verify=false", "--retry-times=0", *creds, f"oci:{src}", dest],
                              capture_output=True, text=True, timeout=120)

    assert copy(one, creds).returncode == 0
    first = current_digest(registry.url, repo, "v1")
    assert copy(two, creds).returncode != 0, "no window: refused"
    read = lambda creds: request(envoy.url, "HEAD", f"/v2/{repo}/manifests/v1",
                                 headers={**creds, "Accept": "application/vnd.oci.image.manifest.v1+json",
                                          "X-Break-Glass-Reason": REASON})
    # bob's read (the registry accepts him) opens no window for him, nor for release-admin.
    assert read(basic("bob", "pw-bob")).status == 200
    assert copy(two, ["--dest-creds", "bob:pw-bob"]).returncode != 0
    assert copy(two, creds).returncode != 0
    deadline = time.time() + 15
    while True:
        assert read(ADMIN).status == 200
        done = copy(two, creds)
        if done.returncode == 0 or time.time() > deadline:
            break
        time.sleep(0.5)
    assert done.returncode == 0, done.stderr
    second = current_digest(registry.url, repo, "v1")
    assert second != first
    assert [l["reason"] for l in override_lines(envoy) if l["repository"] == repo] == [REASON]
    # Used up: the next overwrite is refused.
    assert copy(one, creds).returncode != 0
    assert current_digest(registry.url, repo, "v1") == second
