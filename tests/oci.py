"""A minimal OCI distribution client for the tests: blob uploads, manifest pushes and reads,
raw requests, and OCI image layouts for skopeo."""
from __future__ import annotations

import hashlib
import http.client
import json
import os
from dataclasses import dataclass
from pathlib import Path

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
ACCEPT = ", ".join([
    OCI_MANIFEST,
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
])


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass
class Response:
    status: int
    headers: dict
    body: bytes

    def json(self):
        return json.loads(self.body)

    @property
    def digest(self) -> str | None:
        return self.headers.get("docker-content-digest")


def request(base: str, method: str, path: str, body: bytes | None = None, headers: dict | None = None,
            timeout: float = 30) -> Response:
    host, port = base.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        data = r.read()
        return Response(r.status, {k.lower(): v for k, v in r.getheaders()}, data)
    finally:
        conn.close()


def push_blob(base: str, repo: str, data: bytes) -> str:
    d = sha256(data)
    r = request(base, "POST", f"/v2/{repo}/blobs/uploads/")
    assert r.status == 202, (r.status, r.body)
    loc = r.headers["location"]
    loc = loc.split("127.0.0.1", 1)[-1].split(":", 1)[-1]
    loc = loc[loc.index("/"):]
    sep = "&" if "?" in loc else "?"
    r = request(base, "PUT", f"{loc}{sep}digest={d}", body=data,
                headers={"Content-Type": "application/octet-stream"})
    assert r.status == 201, (r.status, r.body)
    return d


def make_manifest(base: str, repo: str, seed: str) -> bytes:
    """Uploads a distinct config and layer for `seed` and returns an OCI manifest over them."""
    config = json.dumps({"architecture": "amd64", "os": "linux", "seed": seed,
                         "rootfs": {"type": "layers", "diff_ids": []}}).encode()
    layer = f"layer for {seed}".encode()
    cd = push_blob(base, repo, config)
    ld = push_blob(base, repo, layer)
    return json.dumps({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": ld, "size": len(layer)}],
    }, indent=2).encode()


def put_manifest(base: str, repo: str, ref: str, manifest: bytes, headers: dict | None = None) -> Response:
    h = {"Content-Type": OCI_MANIFEST}
    h.update(headers or {})
    return request(base, "PUT", f"/v2/{repo}/manifests/{ref}", body=manifest, headers=h)


def head_manifest(base: str, repo: str, ref: str) -> Response:
    return request(base, "HEAD", f"/v2/{repo}/manifests/{ref}", headers={"Accept": ACCEPT})


def current_digest(base: str, repo: str, tag: str) -> str | None:
    """The tag's digest as the registry itself reports it; None if absent."""
    r = head_manifest(base, repo, tag)
    if r.status == 404:
        return None
    assert r.status == 200, r
    return r.digest


def oci_layout(path: Path, seed: str) -> Path:
    """Writes a one-image OCI layout (for `skopeo copy oci:PATH ...`)."""
    blobs = path / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)

    def blob(data: bytes) -> str:
        d = sha256(data)
        (blobs / d.split(":")[1]).write_bytes(data)
        return d

    import gzip
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        content = f"hello from {seed}\n".encode()
        info = tarfile.TarInfo("hello.txt")
        info.size = len(content)
        info.mtime = 0
        tar.addfile(info, io.BytesIO(content))
    raw = buf.getvalue()
    gz = gzip.compress(raw, mtime=0)
    config = json.dumps({"architecture": "amd64", "os": "linux", "config": {"Labels": {"seed": seed}},
                         "rootfs": {"type": "layers", "diff_ids": [sha256(raw)]}}).encode()
    manifest = json.dumps({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": blob(config), "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": blob(gz), "size": len(gz)}],
    }).encode()
    md = blob(manifest)
    (path / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    (path / "index.json").write_text(json.dumps({
        "schemaVersion": 2,
        "manifests": [{"mediaType": OCI_MANIFEST, "digest": md, "size": len(manifest)}],
    }))
    return path
