"""Real clients (skopeo, podman) push through Envoy and the filter to a registry of another
make, zuul-registry (issue 11): a refused overwrite must leave the immutable tag exactly as it
was, whatever the registry makes of a request that Envoy ends early.

Every tag read here goes straight to zuul (not through Envoy), with a token and the Accept
header zuul needs, and zuul's own record of the tag is checked for the empty-body digest.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from conftest import SAMPLE_POLICY
from oci import oci_layout
from zuul import CREDS, EMPTY_DIGEST, NAMESPACE, Zuul

TAG = "v1.0.0"  # immutable under the sample policy (any repository but dev/, staging/, releases/)
REFUSAL = f"Tag '{TAG}' is immutable and cannot be overwritten"  # the filter's message


@pytest.fixture(scope="module")
def zuul(workdir):
    z = Zuul(workdir).start()
    yield z
    z.stop()


def layout_digest(layout: Path) -> str:
    return json.loads((layout / "index.json").read_text())["manifests"][0]["digest"]


def run(cmd: list[str], env: dict, timeout: float, cwd: Path | None = None) -> tuple[subprocess.CompletedProcess, float]:
    """Runs a client to its end (bounded), returning its result and how long it took."""
    start = time.monotonic()
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd)
    return p, time.monotonic() - start


def client_env(base: Path) -> dict:
    """The clients' credentials file and big temporary files stay under `base`."""
    auth = base / "auth.json"
    auth.write_text("{}")
    (base / "tmp").mkdir(exist_ok=True)
    return {**os.environ, "REGISTRY_AUTH_FILE": str(auth), "TMPDIR": str(base / "tmp")}


def refused_and_intact(p: subprocess.CompletedProcess, took: float, zuul: Zuul, repo: str, digest: str,
                       client: str) -> None:
    """The refused push of another image: the client failed and said why, and zuul still holds
    `digest` under the tag. Every fact goes into the message, so one failure shows them all."""
    now, stored = zuul.tag_digest(repo, TAG), zuul.stored_tag(repo, TAG)
    puts = zuul.log().count(f"Put manifest {NAMESPACE} {repo} {TAG} ")  # zuul logs each PUT it handles
    facts = (f"{client} exited {p.returncode} after {took:.1f}s; zuul's tag {TAG} answers {now} "
             f"(expected {digest}); zuul stores {stored}; manifest PUTs that reached zuul: {puts}\n"
             f"--- {client} output:\n{p.stdout}{p.stderr}")
    assert now == digest, "the immutable tag was changed or destroyed: " + facts
    assert EMPTY_DIGEST not in stored.values(), "zuul stored an empty manifest under the tag: " + facts
    assert p.returncode != 0, "the overwrite was not refused to the client: " + facts
    assert REFUSAL in p.stderr, "the client's output does not say why: " + facts


def test_skopeo_overwrite_is_refused_and_the_tag_stays(stacks, zuul, stop_on_headers, tmp_path, uid):
    envoy = stacks.envoy(zuul, SAMPLE_POLICY, stop_on_headers)
    repo = f"zuul-skopeo-{uid}"
    a = oci_layout(tmp_path / "a", f"a-{uid}")
    b = oci_layout(tmp_path / "b", f"b-{uid}")
    env = client_env(tmp_path)
    dest = f"docker://127.0.0.1:{envoy.port}/{repo}:{TAG}"

    def copy(layout: Path):
        # skopeo's own defaults (no retries in 1.9); it follows zuul's token challenge itself.
        return run(["skopeo", "copy", "--dest-tls-verify=false", "--dest-creds", CREDS,
                    f"oci:{layout}", dest], env, timeout=120)

    first, _ = copy(a)
    assert first.returncode == 0, first.stderr
    digest = layout_digest(a)  # skopeo copies an OCI layout's manifest byte for byte
    assert zuul.tag_digest(repo, TAG) == digest

    # As a person would, who tries again after a refusal (podman does it by itself, below).
    # Each refusal must leave the tag as it was: a refused PUT that destroyed it did so only when
    # Envoy's reset beat zuul's read of the body (about one time in two here), and the damage
    # shows at the next try, which the destroyed tag then lets through.
    for attempt in range(3):
        other, took = copy(b)
        print(f"\nskopeo refused ({ {True: 'stop-on-headers', False: 'body-phase'}.get(stop_on_headers, stop_on_headers) }, try {attempt + 1}): "
              f"exit {other.returncode} after {took:.1f}s\n{other.stderr}")
        refused_and_intact(other, took, zuul, repo, digest, f"skopeo (try {attempt + 1})")

    again, _ = copy(a)
    assert again.returncode == 0, again.stderr
    assert zuul.tag_digest(repo, TAG) == digest


class Podman:
    """podman with storage of its own under `base` (vfs: nothing mounted; no service, no
    cgroups, events to a file), so a test leaves nothing behind on the machine."""

    def __init__(self, base: Path, runroot: Path):
        self.base = base
        self.env = client_env(base)
        self.flags = ["--root", str(base / "root"), "--runroot", str(runroot), "--tmpdir", str(base / "tmp"),
                      "--storage-driver", "vfs", "--cgroup-manager", "cgroupfs", "--events-backend", "file"]

    def __call__(self, *args: str, timeout: float = 180, cwd: Path | None = None
                 ) -> tuple[subprocess.CompletedProcess, float]:
        return run(["podman", *self.flags, *args], self.env, timeout, cwd)

    def load(self, layout: Path) -> str:
        """Puts an OCI layout's image into this storage, offline; returns the image ID."""
        # podman 4.3 names the image `localhost/<the path as given>`, and an image name must be
        # lowercase without `_` next to `-`, which pytest's directories need not be: relative.
        p, _ = self("pull", f"oci:{layout.name}", timeout=60, cwd=layout.parent)
        assert p.returncode == 0, p.stderr
        return p.stdout.split()[-1]

    def push(self, image: str, dest: str) -> tuple[subprocess.CompletedProcess, float, str | None]:
        """podman push as users run it (its own retries included); returns the digest it pushed."""
        digestfile = self.base / "digest"
        digestfile.unlink(missing_ok=True)
        p, took = self("push", "--tls-verify=false", "--creds", CREDS, "--format", "oci",
                       "--digestfile", str(digestfile), image, dest)
        return p, took, digestfile.read_text().strip() if digestfile.exists() else None


@pytest.fixture
def podman(tmp_path):
    # podman refuses a runroot path longer than 50 characters: pytest's are longer.
    runroot = Path(tempfile.mkdtemp(prefix="zuul-podman-"))
    yield Podman(tmp_path, runroot)
    shutil.rmtree(runroot, ignore_errors=True)


def test_podman_overwrite_is_refused_and_the_tag_stays_through_its_retries(stacks, zuul, stop_on_headers,
                                                                          podman, uid):
    # TAG_IMMUTABLE, a code containers/image does not know: podman retries the refused upload
    # (DENIED, the default, it does not).
    envoy = stacks.envoy(zuul, {**SAMPLE_POLICY, "error_code": "TAG_IMMUTABLE"}, stop_on_headers)
    repo = f"zuul-podman-{uid}"
    a = podman.load(oci_layout(podman.base / "image-a", f"a-{uid}"))
    b = podman.load(oci_layout(podman.base / "image-b", f"b-{uid}"))
    dest = f"docker://127.0.0.1:{envoy.port}/{repo}:{TAG}"

    first, _, digest = podman.push(a, dest)
    assert first.returncode == 0, first.stderr
    assert digest is not None and zuul.tag_digest(repo, TAG) == digest

    # podman retries a failed manifest upload on its own, a second or two apart: the tag must
    # still hold A after the last try, and podman must give up.
    other, took, _ = podman.push(b, dest)
    print(f"\npodman refused ({ {True: 'stop-on-headers', False: 'body-phase'}.get(stop_on_headers, stop_on_headers) }): "
          f"exit {other.returncode} after {took:.1f}s\n{other.stderr}")
    refused_and_intact(other, took, zuul, repo, digest, "podman")

    again, _, same = podman.push(a, dest)
    assert again.returncode == 0, again.stderr
    assert same == digest
    assert zuul.tag_digest(repo, TAG) == digest
