"""Where registries answer differently, the filter still never lets an overwrite through
(issue 15). zuul-registry keeps a digest per (tag, content type), so a push of the same tag
with another manifest type could look like a new tag to a HEAD that asked for that type only;
container-registry's HEAD carries no digest at all. For each registry: a tag pushed as an OCI
manifest (skopeo), then another manifest of the Docker v2 type to the same tag, through Envoy
with the client's own credentials: refused, and the registry still holds the first manifest
for every type.
"""
from __future__ import annotations

import base64
import json
import urllib.parse
import urllib.request

import pytest

from clients import REGISTRIES, Skopeo, Work, fetch, tag_digest
from conftest import SAMPLE_POLICY
from oci import request
from zuul import CREDS as ZUUL_CREDS

DOCKER_V2 = "application/vnd.docker.distribution.manifest.v2+json"
TAG = "v1.0.0"


def write_auth(registry, repo: str) -> dict:
    """The Authorization a client sends on a manifest write, per registry."""
    if registry.name == "zuul-registry":
        basic = base64.b64encode(ZUUL_CREDS.encode()).decode()
        query = urllib.parse.urlencode({"scope": f"repository:{repo}:pull,push", "service": "zuul"})
        req = urllib.request.Request(f"{registry.url}/auth/token?{query}", headers={"Authorization": f"Basic {basic}"})
        with urllib.request.urlopen(req, timeout=10) as r:
            return {"Authorization": f"Bearer {json.load(r)['token']}"}
    return registry.auth_header(repo)


@pytest.fixture
def work(tmp_path):
    w = Work(tmp_path)
    yield w
    w.close()


@pytest.mark.parametrize("registry_name", list(REGISTRIES))
def test_another_manifest_type_to_an_immutable_tag_is_refused(registry_name, workdir, stacks, work, uid):
    registry = REGISTRIES[registry_name](workdir).start()
    try:
        # This test is about the HEADs (no map, so every push asks the registry). With
        # allow_on_headers_stop_iteration the harmless OPTIONS is not sent once a worker has seen
        # a body behind held headers; before that, container-registry may answer it before the
        # body reaches the filter (a 503 "retry", docs/security.md "Limits"; test_every_byte.py covers that
        # case with an upstream of its own).
        envoy = stacks.envoy(registry, {**SAMPLE_POLICY, "cache": {"ttl_seconds": 0}}, stop_on_headers=True)
        repo = f"quirks/t-{uid}"  # container-registry wants two path components
        p, _ = Skopeo().push(work, registry, Skopeo().image(work, f"a{uid}"), f"127.0.0.1:{envoy.port}/{repo}:{TAG}")
        assert p.returncode == 0, p.stderr
        first = tag_digest(registry, repo, TAG)
        oci = json.loads(fetch(registry, repo, TAG))
        # The same blobs, described as a Docker v2 manifest: a different manifest, another type.
        docker = {"schemaVersion": 2, "mediaType": DOCKER_V2,
                  "config": {**oci["config"], "mediaType": "application/vnd.docker.container.image.v1+json"},
                  "layers": [{**layer, "mediaType": "application/vnd.docker.image.rootfs.diff.tar"} for layer in oci["layers"]]}
        body = json.dumps(docker).encode()
        # A worker that has not yet seen a body behind held headers lets the harmless request go
        # once its HEAD answers; container-registry may answer that before the body arrives, and
        # the push is refused 503 "retry" (docs/security.md "Limits"), never written. Clients retry.
        for _ in range(3):
            r = request(envoy.url, "PUT", f"/v2/{repo}/manifests/{TAG}", body=body,
                        headers={"Content-Type": DOCKER_V2, **write_auth(registry, repo)})
            if not (r.status == 503 and b"retry the push" in r.body):
                break
            assert tag_digest(registry, repo, TAG) == first, "a refused push is never written"
        assert r.status == 409, (r.status, r.body)
        assert r.json()["errors"][0]["detail"]["current_digest"] == first
        assert tag_digest(registry, repo, TAG) == first
        if registry_name == "zuul-registry":
            stored = registry.stored_tag(repo, TAG)
            assert list(stored.values()) == [first], f"zuul stores {stored}"
    finally:
        registry.stop()
