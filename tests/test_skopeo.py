"""A real client: skopeo copies images from OCI layouts through Envoy."""
from __future__ import annotations

import subprocess

from oci import current_digest, oci_layout


def skopeo_copy(src, dest: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["skopeo", "copy", "--dest-tls-verify=false", "--retry-times=0", f"oci:{src}", dest],
        capture_output=True, text=True, timeout=120,
    )


def test_skopeo_overwrite_fails_with_the_message_and_same_image_succeeds(envoy, registry, tmp_path, uid):
    one = oci_layout(tmp_path / "one", "one")
    two = oci_layout(tmp_path / "two", "two")
    dest = f"docker://127.0.0.1:{envoy.port}/skopeo-{uid}:v1.0.0"

    first = skopeo_copy(one, dest)
    assert first.returncode == 0, first.stderr
    digest = current_digest(registry.url, f"skopeo-{uid}", "v1.0.0")
    assert digest is not None

    other = skopeo_copy(two, dest)
    assert other.returncode != 0
    assert "Tag 'v1.0.0' is immutable and cannot be overwritten" in other.stderr, other.stderr
    assert current_digest(registry.url, f"skopeo-{uid}", "v1.0.0") == digest

    again = skopeo_copy(one, dest)
    assert again.returncode == 0, again.stderr
    assert current_digest(registry.url, f"skopeo-{uid}", "v1.0.0") == digest
