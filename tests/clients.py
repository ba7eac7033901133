"""Real clients and registries of other makes, for the compatibility matrix (test_matrix.py) and
the client-experience measurements (test_client_errors.py).

Clients push through Envoy; every image is built offline (buildah from scratch, umoci, oci.py).
podman and buildah get private storage under the test's directory (vfs, no mounts, nothing left
running). Registries: distribution 2.8 (stack.Registry), zuul-registry (zuul.Zuul) and
container-registry (crates.io, installed into .tools/ by scripts/deps.sh).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import stack
import zuul as zuul_mod
from oci import oci_layout

MANIFEST_TYPES = ", ".join([
    "application/vnd.oci.image.manifest.v1+json", "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
])
CONTAINER_REGISTRY = stack.ROOT / ".tools" / "bin" / "container-registry"
CONTAINER_REGISTRY_VERSION = "0.3.1"  # scripts/deps.sh installs this one


def sh(cmd: list[str], env: dict | None = None, timeout: float = 180, cwd: Path | None = None) -> tuple[subprocess.CompletedProcess, float]:
    """Runs a command to its end (bounded): its result and how long it took."""
    start = time.monotonic()
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd)
    return p, time.monotonic() - start


def must(cmd: list[str], env: dict | None = None, cwd: Path | None = None) -> str:
    p, _ = sh(cmd, env, cwd=cwd)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {p.returncode}:\n{p.stdout}{p.stderr}")
    return p.stdout.strip()


def version(cmd: list[str]) -> str:
    try:
        return sh(cmd, timeout=30)[0].stdout.strip().splitlines()[0]
    except (OSError, IndexError):
        return "unknown"


# --- registries -------------------------------------------------------------------------------

class Distribution(stack.Registry):
    name = "distribution"
    creds: str | None = None
    oras_auth = "basic"

    def version(self) -> str:
        return "distribution " + version(["docker-registry", "--version"]).split()[-1]

    def auth_header(self, repo: str) -> dict:
        return {}


class Zuul(zuul_mod.Zuul):
    name = "zuul-registry"
    creds = zuul_mod.CREDS
    oras_auth = "token"  # zuul's Bearer tokens from /auth/token, asked for with Basic creds

    def version(self) -> str:
        from importlib.metadata import version as v
        return f"zuul-registry {v('zuul-registry')}"

    def auth_header(self, repo: str) -> dict:
        return {"Authorization": f"Bearer {self.token(repo)}"}


class ContainerRegistry:
    """container-registry (crates.io): Basic auth always (any user name, one password); its
    manifest HEAD answers 200 without Docker-Content-Digest."""
    name = "container-registry"
    PASSWORD = "secret"
    creds = f"alice:{PASSWORD}"
    oras_auth = "basic"

    def __init__(self, workdir: Path):
        self.port = stack.free_port()
        self.dir = workdir / f"container-registry-{self.port}"
        (self.dir / "data").mkdir(parents=True, exist_ok=True)
        self.log_path = self.dir / "log"
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "ContainerRegistry":
        if not CONTAINER_REGISTRY.exists():
            raise RuntimeError(f"{CONTAINER_REGISTRY} missing: scripts/deps.sh installs it")
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([str(CONTAINER_REGISTRY), "-b", f"127.0.0.1:{self.port}", "-s",
                                      str(self.dir / "data"), "-p", self.PASSWORD], stdout=log, stderr=log)
        stack.wait_http(self.url + "/v2/", proc=self.proc)
        return self

    def stop(self) -> None:
        stack.stop(self.proc)
        self.proc = None

    def version(self) -> str:
        return f"container-registry {CONTAINER_REGISTRY_VERSION}"

    def auth_header(self, repo: str) -> dict:
        import base64
        return {"Authorization": "Basic " + base64.b64encode(self.creds.encode()).decode()}


REGISTRIES = {"distribution": Distribution, "zuul-registry": Zuul, "container-registry": ContainerRegistry}


def fetch(registry, repo: str, ref: str) -> bytes | None:
    """The manifest a tag or digest holds, straight from the registry (not through Envoy)."""
    req = urllib.request.Request(f"{registry.url}/v2/{repo}/manifests/{ref}",
                                 headers={"Accept": MANIFEST_TYPES, **registry.auth_header(repo)})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.read()
    except urllib.error.HTTPError as e:
        if e.code == 404:
            return None
        raise


def tag_digest(registry, repo: str, tag: str) -> str | None:
    """The digest the tag holds: the sha256 of the manifest a GET returns (every registry here
    agrees on that; not all send Docker-Content-Digest)."""
    body = fetch(registry, repo, tag)
    return None if body is None else "sha256:" + hashlib.sha256(body).hexdigest()


# --- clients ----------------------------------------------------------------------------------

@dataclass
class Work:
    """A test's private client state: storage for podman/buildah, an auth file, temp files."""
    base: Path
    env: dict = field(default_factory=dict)

    def __post_init__(self):
        (self.base / "tmp").mkdir(parents=True, exist_ok=True)
        # podman refuses a runroot longer than 50 characters: a short one of its own.
        self.runroot = Path(tempfile.mkdtemp(prefix="it-run-", dir="/tmp"))
        auth = self.base / "auth.json"
        auth.write_text("{}")
        self.env = {**os.environ, "REGISTRY_AUTH_FILE": str(auth), "TMPDIR": str(self.base / "tmp")}

    def storage(self) -> list[str]:
        return ["--root", str(self.base / "root"), "--runroot", str(self.runroot), "--storage-driver", "vfs"]

    def close(self) -> None:
        shutil.rmtree(self.runroot, ignore_errors=True)

    def podman(self, *args: str) -> list[str]:
        return ["podman", *self.storage(), "--tmpdir", str(self.base / "tmp"), "--cgroup-manager", "cgroupfs",
                "--events-backend", "file", *args]

    def buildah(self, *args: str) -> list[str]:
        return ["buildah", *self.storage(), *args]

    def build(self, name: str, seed: str, arch: str = "amd64") -> str:
        """`buildah from scratch` + one file + commit: a local image, no registry involved."""
        f = self.base / f"{name}.txt"
        f.write_text(seed)
        ctr = must(self.buildah("from", "scratch"), self.env)
        must(self.buildah("copy", ctr, str(f), "/seed.txt"), self.env)
        must(self.buildah("config", "--arch", arch, "--os", "linux", ctr), self.env)
        must(self.buildah("commit", "--quiet", ctr, f"localhost/{name}"), self.env)
        must(self.buildah("rm", ctr), self.env)
        return f"localhost/{name}"

    def umoci_layout(self, name: str, seed: str) -> Path:
        """`umoci init/new/insert`: an OCI layout with one layer, tag `t`."""
        layout = self.base / name
        f = self.base / f"{name}.txt"
        f.write_text(seed)
        must(["umoci", "init", "--layout", str(layout)])
        must(["umoci", "new", "--image", f"{layout}:t"])
        must(["umoci", "insert", "--image", f"{layout}:t", str(f), "/seed.txt"])
        return layout


def creds_flag(flag: str, registry) -> list[str]:
    return [flag, registry.creds] if registry.creds else []


class Client:
    """One way to push. `image(work, seed)` builds an image offline; `push(...)` pushes it to
    `dest` (host:port/repo:tag) and returns the client's result and duration."""
    name = ""

    def version(self) -> str:
        raise NotImplementedError

    def image(self, work: Work, seed: str):
        raise NotImplementedError

    def push(self, work: Work, registry, image, dest: str) -> tuple[subprocess.CompletedProcess, float]:
        raise NotImplementedError


class Skopeo(Client):
    name = "skopeo"

    def version(self):
        return version(["skopeo", "--version"])

    def image(self, work, seed):
        return oci_layout(work.base / f"layout-{seed}", seed)

    def push(self, work, registry, image, dest):
        return sh(["skopeo", "copy", "--dest-tls-verify=false", *creds_flag("--dest-creds", registry),
                   f"oci:{image}", f"docker://{dest}"], work.env)


class Umoci(Skopeo):
    """An image assembled with umoci, copied with skopeo from its OCI layout."""
    name = "umoci+skopeo"

    def version(self):
        return f"{version(['umoci', '--version'])}; {super().version()}"

    def image(self, work, seed):
        return f"{work.umoci_layout(f'umoci-{seed}', seed)}:t"


class Podman(Client):
    name = "podman"

    def version(self):
        return version(["podman", "--version"])

    def image(self, work, seed):
        return work.build(f"img-{seed}", seed)

    def push(self, work, registry, image, dest):
        return sh(work.podman("push", "--tls-verify=false", *creds_flag("--creds", registry), image,
                              f"docker://{dest}"), work.env)


class Buildah(Podman):
    name = "buildah"

    def version(self):
        return version(["buildah", "--version"])

    def push(self, work, registry, image, dest):
        return sh(work.buildah("push", "--tls-verify=false", *creds_flag("--creds", registry), image,
                               f"docker://{dest}"), work.env)


class PodmanManifest(Podman):
    """A multi-arch index: `podman manifest create/add`, pushed with `--all` (children by
    digest, the index by tag)."""
    name = "podman manifest"

    def image(self, work, seed):
        lst = f"localhost/list-{seed}"
        must(work.podman("manifest", "create", lst), work.env)
        for arch in ("amd64", "arm64"):
            img = work.build(f"img-{seed}-{arch}", f"{seed}-{arch}", arch=arch)
            must(work.podman("manifest", "add", "--arch", arch, lst, f"containers-storage:{img}"), work.env)
        return lst

    def push(self, work, registry, image, dest):
        return sh(work.podman("manifest", "push", "--all", "--tls-verify=false", *creds_flag("--creds", registry),
                              image, f"docker://{dest}"), work.env)


ORAS_PUSH = """
import os, sys, time, oras.client
if os.environ.get("ORAS_NO_BACKOFF"):
    time.sleep = lambda s: None  # oras-py waits 2+3^n s between its 5 retries of a 500
host, target, path, creds, backend = sys.argv[1:6]
c = oras.client.OrasClient(hostname=host, insecure=True, auth_backend=backend)
if creds:
    c.auth.set_basic_auth(*creds.split(":", 1))
c.push(target=target, files=[path], disable_path_validation=True)
"""


class Oras(Client):
    """oras-py (PyPI): a non-image artifact (one file, oras's own media types) with a tag."""
    name = "oras"

    def version(self):
        from importlib.metadata import version as v
        return f"oras-py {v('oras')}"

    def image(self, work, seed):
        f = work.base / f"artifact-{seed}.txt"
        f.write_text(f"artifact {seed}\n")
        return f

    def push(self, work, registry, image, dest, no_backoff: bool = False):
        host = dest.split("/", 1)[0]
        env = {**work.env, **({"ORAS_NO_BACKOFF": "1"} if no_backoff else {})}
        return sh([sys.executable, "-c", ORAS_PUSH, host, dest, str(image), registry.creds or "",
                   registry.oras_auth], env,
                  cwd=work.base)


CLIENTS = {c.name: c for c in (Skopeo(), Podman(), Buildah(), PodmanManifest(), Oras(), Umoci())}
