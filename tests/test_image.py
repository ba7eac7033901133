"""The packaged OCI image (scripts/wasm_image.py, `make image`): pushed with skopeo to a real
registry, read back, and checked against what Istio and Envoy Gateway pull."""
from __future__ import annotations

import gzip
import io
import json
import subprocess
import sys
import tarfile

import stack
from conftest import SAMPLE_POLICY
from oci import request, sha256

SCRIPT = stack.ROOT / "scripts" / "wasm_image.py"


def make_image(workdir, tag: str, push: str | None = None) -> str:
    cmd = [sys.executable, str(SCRIPT), "--module", str(stack.MODULE), "--layout", str(workdir / f"oci-{tag}"),
           "--tag", tag]
    if push:
        cmd += ["--push", push, "--dest-tls-verify=false"]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return out.split()[1]  # "oci:DIR:TAG sha256:..."


def test_image_pushed_to_a_registry_holds_the_module(workdir, registry, uid):
    repo = f"wasm/immutable-tags-{uid}"
    d = make_image(workdir, "0.1.0", push=f"127.0.0.1:{registry.port}/{repo}:0.1.0")

    r = request(registry.url, "GET", f"/v2/{repo}/manifests/0.1.0",
                headers={"Accept": "application/vnd.oci.image.manifest.v1+json"})
    assert r.status == 200, r
    assert r.headers["content-type"] == "application/vnd.oci.image.manifest.v1+json"
    assert sha256(r.body) == d == r.digest, "skopeo pushed the manifest unchanged"
    m = r.json()
    assert m["schemaVersion"] == 2 and m["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    assert m["annotations"]["module.wasm.image/variant"] == "compat"
    assert m["config"]["mediaType"] == "application/vnd.oci.image.config.v1+json"
    assert len(m["layers"]) == 1, "exactly one layer"
    layer = m["layers"][0]
    assert layer["mediaType"] == "application/vnd.oci.image.layer.v1.tar+gzip"

    blob = request(registry.url, "GET", f"/v2/{repo}/blobs/{layer['digest']}")
    assert blob.status == 200 and sha256(blob.body) == layer["digest"] and len(blob.body) == layer["size"]
    raw = gzip.decompress(blob.body)
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        members = tar.getmembers()
        assert [x.name for x in members] == ["plugin.wasm"]
        assert members[0].isfile()
        wasm = tar.extractfile(members[0]).read()
    assert wasm == stack.MODULE.read_bytes(), "the layer holds the built module, byte for byte"

    cfg = request(registry.url, "GET", f"/v2/{repo}/blobs/{m['config']['digest']}")
    assert cfg.status == 200
    config = json.loads(cfg.body)
    assert config["rootfs"] == {"type": "layers", "diff_ids": [sha256(raw)]}
    assert (config["architecture"], config["os"]) == ("wasm", "wasip1")


def test_image_is_reproducible_and_repushes_through_the_filter(workdir, stacks, registry, uid):
    # The same module always gives the same digest, so a CI re-run that pushes the image
    # again through an immutable-tags proxy is an idempotent re-push, not a refused overwrite.
    assert make_image(workdir, "a") == make_image(workdir, "a")
    envoy = stacks.envoy(registry, SAMPLE_POLICY)
    ref = f"127.0.0.1:{envoy.port}/plugins-{uid}/immutable-tags:0.1.0"
    d1 = make_image(workdir, "0.1.0", push=ref)
    d2 = make_image(workdir, "0.1.0", push=ref)
    assert d1 == d2
    r = request(registry.url, "HEAD", f"/v2/plugins-{uid}/immutable-tags/manifests/0.1.0",
                headers={"Accept": "application/vnd.oci.image.manifest.v1+json"})
    assert r.status == 200 and r.digest == d1
