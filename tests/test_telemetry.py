"""What Envoy's own telemetry shows of the filter (issue 23), read from the access log of the
shipped envoy/envoy.yaml (and its Istio-style variant): a protected push logs with the client's
method and the filter's outcome in the response code details, though it left the chain as an
OPTIONS; a client cannot put a method of its own into that log."""
from __future__ import annotations

import base64
import json
import time
import uuid

import stack
from conftest import SAMPLE_POLICY
from oci import OCI_MANIFEST, current_digest, make_manifest, put_manifest, request, sha256


def access_line(envoy: stack.Envoy, request_id: str, timeout: float = 10.0) -> str:
    """The access log line of one request (the file logger writes about once a second)."""
    deadline = time.monotonic() + timeout
    while True:
        lines = [l for l in envoy.log().splitlines() if f"id={request_id} " in l]
        if lines or time.monotonic() > deadline:
            assert len(lines) == 1, (request_id, lines)
            return lines[0]
        time.sleep(0.2)


def rid() -> str:
    return uuid.uuid4().hex


def envoy_id(r) -> str:
    """The request's id as Envoy logged it: Envoy replaces a client's x-request-id with its own
    (use_remote_address) and hands it back (always_set_request_id_in_response)."""
    return r.headers["x-request-id"]


def test_a_stored_and_a_refused_push_log_their_method_and_outcome(stacks, registry, stop_on_headers, uid):
    envoy = stacks.envoy(registry, SAMPLE_POLICY, stop_on_headers)
    repo = f"telemetry-{uid}"
    m1 = make_manifest(registry.url, repo, "one")
    m2 = make_manifest(registry.url, repo, "two")

    r = put_manifest(envoy.url, repo, "v1", m1, {"x-request-id": rid()})
    assert r.status == 201
    stored = envoy_id(r)
    r = put_manifest(envoy.url, repo, "v1", m2, {"x-request-id": rid()})
    assert r.status == 409
    refused = envoy_id(r)

    line = access_line(envoy, stored)
    assert f'"PUT /v2/{repo}/manifests/v1 ' in line, line
    assert " 201 immutable_tags_written " in line, line
    assert "upstream_method=OPTIONS " in line, line

    line = access_line(envoy, refused)
    assert f'"PUT /v2/{repo}/manifests/v1 ' in line, line
    assert " 409 immutable_tags_refused " in line, line


def test_the_registrys_own_answers_and_other_requests_log_as_they_were(stacks, registry, stop_on_headers, uid):
    envoy = stacks.envoy(registry, SAMPLE_POLICY, stop_on_headers)
    repo = f"telemetry-{uid}"
    m1 = make_manifest(registry.url, repo, "one")
    assert put_manifest(envoy.url, repo, "v1", m1).status == 201

    # A read of a manifest (no filter on the reads route) and a mutable tag's push (the filter
    # lets it through unchanged): the registry's own answers, with their own methods.
    r = request(envoy.url, "GET", f"/v2/{repo}/manifests/v1",
                headers={"x-request-id": rid(), "Accept": "application/vnd.oci.image.manifest.v1+json"})
    assert r.status == 200
    read = envoy_id(r)
    r = put_manifest(envoy.url, repo, "latest", m1, {"x-request-id": rid()})
    assert r.status == 201
    mutable = envoy_id(r)
    line = access_line(envoy, read)
    assert f'"GET /v2/{repo}/manifests/v1 ' in line and " 200 via_upstream " in line, line
    line = access_line(envoy, mutable)
    assert f'"PUT /v2/{repo}/manifests/latest ' in line and " 201 via_upstream " in line, line
    assert "upstream_method=PUT " in line, line


def test_a_client_cannot_put_a_method_into_the_log(stacks, registry, stop_on_headers, uid):
    envoy = stacks.envoy(registry, SAMPLE_POLICY, stop_on_headers)
    repo = f"telemetry-{uid}"
    m1 = make_manifest(registry.url, repo, "one")
    spoof = {"x-immutable-tags-method": "DELETE"}
    # Routes with the filter off (a blob read), with it on (a manifest write it lets through
    # unchanged), and a push it rewrites.
    blob = envoy_id(request(envoy.url, "GET", f"/v2/{repo}/blobs/sha256:{'0' * 64}", headers=spoof))
    r = put_manifest(envoy.url, repo, "latest", m1, spoof)
    assert r.status == 201
    manifest = envoy_id(r)
    r = put_manifest(envoy.url, repo, "v1", m1, spoof)
    assert r.status == 201
    push = envoy_id(r)
    assert f'"GET /v2/{repo}/blobs/' in access_line(envoy, blob)
    assert f'"PUT /v2/{repo}/manifests/latest ' in access_line(envoy, manifest)
    assert f'"PUT /v2/{repo}/manifests/v1 ' in access_line(envoy, push)


def test_an_unreachable_registry_logs_unavailable(stacks, own_registry, stop_on_headers, uid):
    envoy = stacks.envoy(own_registry, SAMPLE_POLICY, stop_on_headers, fresh=True)
    repo = f"telemetry-{uid}"
    m1 = make_manifest(own_registry.url, repo, "one")
    own_registry.stop()
    r = put_manifest(envoy.url, repo, "v1", m1)
    assert r.status == 503
    down = envoy_id(r)
    line = access_line(envoy, down)
    assert f'"PUT /v2/{repo}/manifests/v1 ' in line and " 503 immutable_tags_unavailable " in line, line
    envoy.stop()


# --- blob deletes (deletes.blobs) ----------------------------------------------------------


def test_a_blob_delete_of_an_immutable_images_layer_is_refused_and_the_image_still_pulls(
        stacks, registry, stop_on_headers, uid):
    envoy = stacks.envoy(registry, SAMPLE_POLICY, stop_on_headers)
    repo = f"blobs-{uid}"
    m1 = make_manifest(registry.url, repo, "one")
    assert put_manifest(envoy.url, repo, "v1", m1).status == 201
    layer = json.loads(m1)["layers"][0]["digest"]
    r = request(envoy.url, "DELETE", f"/v2/{repo}/blobs/{layer}")
    assert r.status == 405, (r.status, r.body)
    i = envoy_id(r)
    assert json.loads(r.body)["errors"][0]["code"] == "UNSUPPORTED"
    assert f'"DELETE /v2/{repo}/blobs/{layer} ' in (line := access_line(envoy, i)), line
    assert " 405 immutable_tags_refused " in line, line
    # Encoded: the registry decodes the path, the filter too.
    r = request(envoy.url, "DELETE", f"/v2/{repo}/blob%73/{layer}")
    assert r.status == 405, (r.status, r.body)
    # The image still pulls whole through Envoy.
    r = request(envoy.url, "GET", f"/v2/{repo}/manifests/v1", headers={"Accept": OCI_MANIFEST})
    assert r.status == 200 and r.body == m1
    assert request(envoy.url, "GET", f"/v2/{repo}/blobs/{layer}").status == 200
    # Nothing else about blobs changed: an upload's cancel passes.
    r = request(envoy.url, "POST", f"/v2/{repo}/blobs/uploads/")
    assert r.status == 202
    assert request(envoy.url, "DELETE", r.headers["location"].split(str(envoy.port), 1)[-1]).status == 204


def test_blob_deletes_may_be_allowed_where_no_tag_can_be_immutable(stacks, registry, stop_on_headers, uid):
    envoy = stacks.envoy(registry, dict(SAMPLE_POLICY, deletes={"blobs": "unprotected"}), stop_on_headers)
    scratch, prod = f"dev/blobs-{uid}", f"blobs-{uid}"
    for repo in (scratch, prod):
        assert put_manifest(envoy.url, repo, "v1", make_manifest(registry.url, repo, repo)).status == 201
    layer = lambda repo: json.loads(request(registry.url, "GET", f"/v2/{repo}/manifests/v1",
                                            headers={"Accept": OCI_MANIFEST}).body)["layers"][0]["digest"]
    assert request(envoy.url, "DELETE", f"/v2/{prod}/blobs/{layer(prod)}").status == 405
    assert request(envoy.url, "DELETE", f"/v2/{scratch}/blobs/{layer(scratch)}").status == 202


# --- credentials on an override (break-glass) ----------------------------------------------


class CookieOrBasicRegistry:
    """A registry front of the test's own that, like many registries behind a web UI, accepts a
    session cookie as well as Basic credentials for writes; reads are anonymous, but an
    anonymous `GET /v2/` is answered 401 (so the registry demands authentication). Everything
    it accepts goes on to the real registry."""

    USER, PASSWORD, COOKIE = "release-admin", "pw-admin", "session=valid-session"

    def __init__(self, backend: stack.Registry):
        import http.server
        import threading

        front = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def authenticated(self) -> bool:
                want = "Basic " + base64.b64encode(f"{front.USER}:{front.PASSWORD}".encode()).decode()
                return self.headers.get("Authorization") == want or front.COOKIE in (self.headers.get("Cookie") or "")

            def handle_one(self):
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n) if n else None
                read = self.command in ("GET", "HEAD") and self.path != "/v2/"
                if not read and not self.authenticated():
                    msg = b'{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}'
                    self.send_response(401)
                    self.send_header("WWW-Authenticate", 'Basic realm="front"')
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(msg)))
                    self.end_headers()
                    self.wfile.write(msg)
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "authorization", "cookie")}
                r = request(backend.url, self.command, self.path, body=body, headers=headers)
                self.send_response(r.status)
                for k, v in r.headers.items():
                    if k not in ("content-length", "connection", "date", "server", "transfer-encoding"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(r.body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(r.body)

            do_GET = do_HEAD = do_PUT = do_POST = do_PATCH = do_DELETE = handle_one

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


def test_an_override_with_a_wrong_password_and_a_valid_cookie_is_refused(stacks, registry, stop_on_headers, uid):
    front = CookieOrBasicRegistry(registry)
    try:
        policy = {"global": {"immutable_tags": True}, "break_glass": {"principals": ["release-admin"]}}
        envoy = stacks.envoy(front, policy, stop_on_headers, fresh=True)
        repo = f"prod/cookie-{uid}"
        m1, m2 = make_manifest(registry.url, repo, "one"), make_manifest(registry.url, repo, "two")
        admin = {"Authorization": "Basic " + base64.b64encode(b"release-admin:pw-admin").decode()}
        wrong = {"Authorization": "Basic " + base64.b64encode(b"release-admin:wrong").decode()}
        cookie = {"Cookie": front.COOKIE}

        def push(manifest: bytes, headers: dict):
            # Retried only on the filter's own retryable refusals (nothing was written): the
            # root learns at start-up that the registry demands authentication, and this front
            # answers the harmless OPTIONS at once without reading a body (http.server has no
            # do_OPTIONS), so under load its answer can beat the body to Envoy, which the filter
            # refuses with 503 "retry the push" (docs/security.md "Limits", tests/test_every_byte.py's eager upstream).
            deadline = time.monotonic() + 15
            while True:
                r = put_manifest(envoy.url, repo, "v1", manifest, headers)
                retry = b"could not learn" in r.body or b"before the manifest arrived" in r.body
                if not retry or time.monotonic() > deadline:
                    return r
                time.sleep(0.2)

        # The front accepts either credential: a new tag pushed with the cookie alone is stored.
        assert push(m1, cookie).status == 201
        assert current_digest(registry.url, repo, "v1") == sha256(m1)

        reason = {"X-Break-Glass-Reason": "CVE-2026-0001"}
        r = push(m2, {**wrong, **cookie, **reason})
        # The override's write carries only the Authorization its principal was read from:
        # the registry refuses that, and the tag keeps its digest.
        assert r.status == 401, (r.status, r.body)
        assert current_digest(registry.url, repo, "v1") == sha256(m1)
        # The right password overrides (the same request, nothing else changed).
        r = push(m2, {**admin, **cookie, **reason})
        assert r.status == 201, (r.status, r.body)
        assert current_digest(registry.url, repo, "v1") == sha256(m2)
        envoy.stop()
    finally:
        front.stop()


# --- filter order, shipped and checked ---------------------------------------------------------

import yaml  # noqa: E402

ENVOY_DIR = stack.ROOT / "envoy"
# Envoy Gateway's default HTTP filter order (internal/xds/translator/httpfilters.go,
# newOrderedHTTPFilter; /work/shared/notes/gateway-facts.md).
EG_DEFAULT_ORDER = [
    "custom_response", "health_check", "fault", "cors", "csrf", "header_mutation", "ext_authz",
    "api_key_auth", "basic_auth", "oauth2", "jwt_authn", "session_persistence", "buffer", "lua",
    "ext_proc", "wasm", "dynamic_modules", "geoip", "rbac", "local_ratelimit", "ratelimit",
    "bandwidth_limit", "grpc_web", "grpc_stats", "credential_injector", "compressor",
    "dynamic_forward_proxy", "router",
]
# Filters that judge, count or change a request: the wasm filter must come after each.
MUST_PRECEDE = ["ext_authz", "api_key_auth", "basic_auth", "oauth2", "jwt_authn", "rbac",
                "local_ratelimit", "ratelimit", "bandwidth_limit", "credential_injector"]
# What may follow it before the router: neither judges nor changes requests.
MAY_FOLLOW = {"compressor", "dynamic_forward_proxy"}


def eg_order(filter_order: list[dict]) -> list[str]:
    """Envoy Gateway's order after `EnvoyProxy.spec.filterOrder` (each entry moves one filter
    right before or after another, in turn)."""
    order = list(EG_DEFAULT_ORDER)
    short = lambda n: n.removeprefix("envoy.filters.http.")
    for entry in filter_order:
        name = short(entry["name"])
        order.remove(name)
        if "after" in entry:
            order.insert(order.index(short(entry["after"])) + 1, name)
        else:
            order.insert(order.index(short(entry["before"])), name)
    return order


def test_envoy_gateway_example_puts_the_filter_last_before_the_router():
    docs = list(yaml.safe_load_all((ENVOY_DIR / "envoy-gateway" / "immutable-tags.yaml").read_text()))
    proxies = [d for d in docs if d["kind"] == "EnvoyProxy"]
    assert len(proxies) == 1, "the example ships the EnvoyProxy that orders the filters"
    order = eg_order(proxies[0]["spec"]["filterOrder"])
    wasm = order.index("wasm")
    for f in MUST_PRECEDE:
        assert order.index(f) < wasm, (f, order)
    assert set(order[wasm + 1:-1]) <= MAY_FOLLOW, order
    # Without it, the default order would not do.
    default = EG_DEFAULT_ORDER.index("wasm")
    assert any(EG_DEFAULT_ORDER.index(f) > default for f in MUST_PRECEDE)


def test_istio_example_runs_the_filter_after_authorization():
    docs = list(yaml.safe_load_all((ENVOY_DIR / "istio" / "immutable-tags.yaml").read_text()))
    (plugin,) = [d for d in docs if d["kind"] == "WasmPlugin"]
    # AUTHN and AUTHZ insert before Istio's authentication / authorization; STATS after both
    # (only Istio's stats filter follows); unset: at the end, before the router.
    assert plugin["spec"].get("phase", "UNSPECIFIED_PHASE") in ("STATS", "UNSPECIFIED_PHASE")


def test_envoy_yaml_puts_the_filter_last_before_the_router():
    cfg = yaml.safe_load((ENVOY_DIR / "envoy.yaml").read_text())
    hcm = cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    names = [f["name"] for f in hcm["http_filters"]]
    assert names[-2:] == ["immutable-tags", "envoy.filters.http.router"], names


# --- break-glass: identities verified by Envoy's jwt_authn ---------------------------------


def test_a_principal_verified_by_envoys_jwt_authn_overrides_on_a_registry_without_auth(
        workdir, registry, stop_on_headers, uid):
    import jwt
    from cryptography.hazmat.primitives.asymmetric import rsa

    def b64u(n: int) -> str:
        return base64.urlsafe_b64encode(n.to_bytes((n.bit_length() + 7) // 8, "big")).rstrip(b"=").decode()

    key, stranger = (rsa.generate_private_key(public_exponent=65537, key_size=2048) for _ in range(2))
    pub = key.public_key().public_numbers()
    jwks = {"keys": [{"kty": "RSA", "alg": "RS256", "use": "sig", "kid": "k1", "n": b64u(pub.n), "e": b64u(pub.e)}]}

    def bearer(sub: str, signer=key) -> dict:
        token = jwt.encode({"iss": "https://issuer.test", "sub": sub}, signer, algorithm="RS256", headers={"kid": "k1"})
        return {"Authorization": f"Bearer {token}"}

    policy = {"global": {"immutable_tags": True},
              "break_glass": {"principals": ["release-admin"], "jwt_authn_payload": "jwt_payload"}}
    port, admin = stack.free_port(), stack.free_port()
    cfg = stack.envoy_config(policy, port, admin, registry.port, stop_on_headers=stop_on_headers)
    hcm = cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    # Envoy verifies tokens and passes their payloads on (allow_missing_or_failed: the filter
    # decides); the wasm filter stays last before the router.
    hcm["http_filters"].insert(0, {"name": "envoy.filters.http.jwt_authn", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
        "providers": {"test": {"issuer": "https://issuer.test", "local_jwks": {"inline_string": json.dumps(jwks)},
                               "payload_in_metadata": "jwt_payload", "forward": True}},
        "rules": [{"match": {"prefix": "/"}, "requires": {"allow_missing_or_failed": {}}}]}})
    envoy = stack.Envoy(workdir, cfg, port, admin).start()
    try:
        repo = f"prod/jwt-{uid}"
        m1, m2 = make_manifest(registry.url, repo, "one"), make_manifest(registry.url, repo, "two")
        reason = {"X-Break-Glass-Reason": "CVE-2026-0001"}
        assert put_manifest(envoy.url, repo, "v1", m1).status == 201

        def why(r) -> str:
            return json.loads(r.body)["errors"][0]["detail"].get("break_glass") or ""

        # The same claim signed by a key Envoy does not know: not verified, and the registry
        # (no auth) proves nobody.
        deadline = time.monotonic() + 15
        while True:
            r = put_manifest(envoy.url, repo, "v1", m2, {**bearer("release-admin", stranger), **reason})
            if "could not learn" not in why(r) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert r.status == 409 and "unproven" in why(r), (r.status, r.body)
        # Verified, but not listed.
        r = put_manifest(envoy.url, repo, "v1", m2, {**bearer("bob"), **reason})
        assert r.status == 409 and "principal 'bob' is not in" in why(r), (r.status, r.body)
        assert current_digest(registry.url, repo, "v1") == sha256(m1)
        # Verified and listed: the override goes through, in that principal's name.
        r = put_manifest(envoy.url, repo, "v1", m2, {**bearer("release-admin"), **reason})
        assert r.status == 201, (r.status, r.body)
        assert current_digest(registry.url, repo, "v1") == sha256(m2)
        deadline = time.monotonic() + 5
        while '"principal":"release-admin"' not in envoy.log() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert '"event":"immutable_tags.break_glass"' in envoy.log()
    finally:
        envoy.stop()
