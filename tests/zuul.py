"""zuul-registry (PyPI, pinned in requirements.txt): a registry of another make, for the
end-to-end tests with real clients. Plain HTTP on loopback, filesystem storage.

Its ways, read in its source (zuul_registry/main.py): every request needs a Bearer token from
`/auth/token`; a token for `push` needs Basic credentials of a user with `access: write`; a
`pull` token is free while no user has `access: read`. It keeps a manifest digest per (tag,
Content-Type of the PUT), so a HEAD by tag answers only for an Accept naming a stored type
(no Accept at all: 500), and a stored digest whose blob is empty answers 404.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import urllib.parse
import urllib.request
from pathlib import Path

import yaml

import stack
from oci import OCI_MANIFEST, request

USER, PASSWORD = "alice", "secret"
CREDS = f"{USER}:{PASSWORD}"
# What zuul stores for a manifest PUT whose body never arrived: the digest of nothing.
EMPTY_DIGEST = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
# Not namespaced: zuul keeps every repository under this one namespace.
NAMESPACE = "_local"


def binary() -> str:
    """The venv's `zuul-registry` (beside the running Python), else the one on PATH."""
    exe = Path(sys.executable).parent / "zuul-registry"
    found = str(exe) if exe.exists() else shutil.which("zuul-registry")
    if found is None:
        raise RuntimeError("zuul-registry not installed: scripts/deps.sh installs tests/requirements.txt")
    return found


class Zuul:
    """One zuul-registry process with its own port, config and storage."""

    def __init__(self, workdir: Path):
        self.port = stack.free_port()  # `port`: what conftest's Stacks.envoy points Envoy at
        self.dir = workdir / f"zuul-{self.port}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.storage = self.dir / "data"
        self.log_path = self.dir / "zuul.log"
        cfg = {"registry": {
            "address": "127.0.0.1",
            "port": self.port,
            # The token realm in zuul's 401 challenges. It points at zuul itself, not through
            # Envoy: the token endpoint is none of the filter's business (envoy.yaml sends
            # /auth/token down a route without it), zuul needs the URL before any Envoy exists,
            # and one zuul serves two Envoys (one per header-stop mode), which a single URL
            # through Envoy could not. Clients follow the realm wherever it points.
            "public-url": self.url,
            "secret": "immutable-tags-test",
            "users": [{"name": USER, "pass": PASSWORD, "access": "write"}],
            "storage": {"driver": "filesystem", "root": str(self.storage)},
        }}
        self.config_path = self.dir / "registry.yaml"
        self.config_path.write_text(yaml.safe_dump(cfg))
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "Zuul":
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([binary(), "-c", str(self.config_path), "serve"], stdout=log, stderr=log)
        stack.wait_http(self.url + "/v2/", proc=self.proc)  # a 401 challenge: it answers
        return self

    def stop(self) -> None:
        stack.stop(self.proc)
        self.proc = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def token(self, repo: str) -> str:
        """A pull token, as a client gets it (anonymous: no user has `access: read`)."""
        query = urllib.parse.urlencode({"scope": f"repository:{repo}:pull", "service": "zuul"})
        with urllib.request.urlopen(f"{self.url}/auth/token?{query}", timeout=10) as r:
            return json.load(r)["token"]

    def tag_digest(self, repo: str, tag: str, media_type: str = OCI_MANIFEST) -> str | None:
        """The tag's digest for `media_type` as zuul answers a HEAD, straight from zuul (not
        through Envoy); None on 404 (absent, or stored with an empty body)."""
        r = request(self.url, "HEAD", f"/v2/{repo}/manifests/{tag}",
                    headers={"Accept": media_type, "Authorization": f"Bearer {self.token(repo)}"})
        if r.status == 404:
            return None
        assert r.status == 200, (r.status, r.headers)
        return r.digest

    def stored_tag(self, repo: str, tag: str) -> dict:
        """zuul's own record of the tag in its storage: {content type: digest}; {} if none.
        Shows what a HEAD cannot: a tag that now maps to EMPTY_DIGEST."""
        path = self.storage / NAMESPACE / "repos" / repo / "manifests" / tag
        return json.loads(path.read_text()) if path.exists() else {}
