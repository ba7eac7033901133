#!/usr/bin/env python3
"""Packages the filter as the OCI image Istio's WasmPlugin and Envoy Gateway pull, without a
Docker engine, and optionally pushes it with skopeo.

The image is the "compat" variant of the Wasm image spec (solo-io/wasm spec-compat.md), the form
`FROM scratch` + `COPY plugin.wasm ./` produces and Istio, Envoy Gateway, Kuadrant and Coraza
use: an OCI image manifest with one `application/vnd.oci.image.layer.v1.tar+gzip` layer holding
exactly `plugin.wasm`, annotated `module.wasm.image/variant: compat`. The layout is
reproducible (fixed mtimes and owners), so the same module always gives the same digest and a
re-push of an unchanged build is idempotent, even through an immutable-tags proxy.

    python3 scripts/wasm_image.py --module target/wasm32-wasip1/release/immutable_tags.wasm \\
        --layout target/oci --tag 0.1.0 [--push 127.0.0.1:5000/immutable-tags:0.1.0 --dest-tls-verify=false]
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def layer_tar(module: bytes) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("plugin.wasm")
        info.size = len(module)
        info.mode = 0o644
        info.mtime = 0
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        tar.addfile(info, io.BytesIO(module))
    return buf.getvalue()


def build(module_path: Path, layout: Path, tag: str, version: str) -> str:
    """Writes an OCI image layout at `layout` with the image under `tag`; returns its digest."""
    module = module_path.read_bytes()
    if module[:4] != b"\0asm":
        raise SystemExit(f"{module_path} is not a wasm module")
    raw = layer_tar(module)
    layer = gzip.compress(raw, compresslevel=9, mtime=0)
    config = json.dumps({
        # The platform Go and containerd use for WASI modules; proxies ignore it.
        "architecture": "wasm",
        "os": "wasip1",
        "config": {"Labels": {"org.opencontainers.image.title": "immutable-tags",
                              "org.opencontainers.image.version": version}},
        "rootfs": {"type": "layers", "diff_ids": [digest(raw)]},
    }, sort_keys=True, separators=(",", ":")).encode()
    manifest = json.dumps({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": digest(config), "size": len(config)},
        "layers": [{"mediaType": OCI_LAYER, "digest": digest(layer), "size": len(layer),
                    "annotations": {"org.opencontainers.image.title": "plugin.wasm"}}],
        "annotations": {"module.wasm.image/variant": "compat",
                        "org.opencontainers.image.title": "immutable-tags",
                        "org.opencontainers.image.version": version},
    }, sort_keys=True, separators=(",", ":")).encode()

    if layout.exists():
        shutil.rmtree(layout)
    blobs = layout / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    for blob in (layer, config, manifest):
        (blobs / digest(blob).split(":", 1)[1]).write_bytes(blob)
    (layout / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    (layout / "index.json").write_text(json.dumps({
        "schemaVersion": 2,
        "manifests": [{"mediaType": OCI_MANIFEST, "digest": digest(manifest), "size": len(manifest),
                       "annotations": {"org.opencontainers.image.ref.name": tag}}],
    }))
    return digest(manifest)


def push(layout: Path, tag: str, image: str, tls_verify: bool) -> None:
    # --preserve-digests: skopeo must not recompress or rewrite anything it pushes.
    subprocess.run(
        ["skopeo", "copy", "--preserve-digests", f"--dest-tls-verify={str(tls_verify).lower()}",
         f"oci:{layout}:{tag}", f"docker://{image}"],
        check=True,
    )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--module", required=True, type=Path)
    p.add_argument("--layout", required=True, type=Path, help="OCI image layout directory to write")
    p.add_argument("--tag", required=True)
    p.add_argument("--version", help="image version label (default: the tag)")
    p.add_argument("--push", metavar="IMAGE", help="push to this image reference with skopeo")
    p.add_argument("--dest-tls-verify", default="true", choices=["true", "false"])
    a = p.parse_args()
    d = build(a.module, a.layout, a.tag, a.version or a.tag)
    print(f"oci:{a.layout}:{a.tag} {d}")
    if a.push:
        push(a.layout, a.tag, a.push, a.dest_tls_verify == "true")
        print(f"pushed {a.push}@{d}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
