"""A real etcd cluster on loopback for the claims in etcd (`claims.etcd`): Debian's etcd
(`etcd-server`), 3 members, clients only over mutual TLS with certificates made here with the
openssl CLI, and the Envoy cluster that reaches it the way docs/etcd.md shows.
"""
from __future__ import annotations

import base64
import json
import shutil
import ssl
import subprocess
import time
import urllib.request
from pathlib import Path

import stack

CLUSTER = "etcd"


def make_certs(d: Path) -> dict:
    """A CA, a server certificate for 127.0.0.1 and a client certificate (Envoy's)."""
    d.mkdir(parents=True, exist_ok=True)
    ssl_ = shutil.which("openssl")
    if ssl_ is None:
        raise RuntimeError("openssl not on PATH: scripts/deps.sh installs it")

    def run(*args: str) -> None:
        subprocess.run([ssl_, *args], check=True, capture_output=True)

    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    run("req", "-x509", *ec, "-keyout", str(d / "ca.key"), "-out", str(d / "ca.crt"), "-subj", "/CN=test-etcd-ca", "-days", "2")
    for name, ext in (("server", "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth"),
                      ("client", "extendedKeyUsage=clientAuth")):
        run("req", *ec, "-keyout", str(d / f"{name}.key"), "-out", str(d / f"{name}.csr"), "-subj", f"/CN=immutable-tags-{name}")
        (d / f"{name}.ext").write_text(ext + "\n")
        run("x509", "-req", "-in", str(d / f"{name}.csr"), "-CA", str(d / "ca.crt"), "-CAkey", str(d / "ca.key"),
            "-CAcreateserial", "-out", str(d / f"{name}.crt"), "-days", "2", "-extfile", str(d / f"{name}.ext"))
    return {"ca": str(d / "ca.crt"), "server": str(d / "server.crt"), "server_key": str(d / "server.key"),
            "client": str(d / "client.crt"), "client_key": str(d / "client.key")}


class Member:
    def __init__(self, cluster: "EtcdCluster", i: int):
        self.cluster, self.i = cluster, i
        self.name = f"m{i}"
        self.client_port, self.peer_port = stack.free_port(), stack.free_port()
        self.dir = cluster.dir / self.name
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.client_port}"

    def start(self) -> None:
        c = self.cluster.certs
        state = "existing" if (self.dir / "data").exists() else "new"
        log = open(self.dir.parent / f"{self.name}.log", "ab")
        self.proc = subprocess.Popen([
            "etcd", "--name", self.name, "--data-dir", str(self.dir / "data"),
            "--listen-client-urls", self.url, "--advertise-client-urls", self.url,
            "--listen-peer-urls", f"http://127.0.0.1:{self.peer_port}",
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{self.peer_port}",
            "--initial-cluster", self.cluster.initial, "--initial-cluster-state", state,
            "--initial-cluster-token", "immutable-tags-test",
            "--cert-file", c["server"], "--key-file", c["server_key"],
            "--client-cert-auth", "--trusted-ca-file", c["ca"],
            # etcd's defaults: at 50/500 ms a loaded 2-core machine stalled a leader's
            # heartbeats past the timeout, electing anew mid-test ("leader changed" 503s).
            "--heartbeat-interval", "100", "--election-timeout", "1000",
        ], stdout=log, stderr=log)

    def stop(self) -> None:
        stack.stop(self.proc)
        self.proc = None


class EtcdCluster:
    def __init__(self, workdir: Path, size: int = 3):
        self.dir = workdir / f"etcd-{stack.free_port()}"
        self.dir.mkdir(parents=True)
        self.certs = make_certs(self.dir / "certs")
        self.members = [Member(self, i) for i in range(size)]
        self.initial = ",".join(f"{m.name}=http://127.0.0.1:{m.peer_port}" for m in self.members)

    def ssl_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=self.certs["ca"])
        ctx.load_cert_chain(self.certs["client"], self.certs["client_key"])
        return ctx

    def call(self, path: str, body: dict, member: int | None = None, timeout: float = 3) -> dict:
        """POSTs to etcd's JSON gateway (the first live member, or `member`)."""
        members = [self.members[member]] if member is not None else [m for m in self.members if m.proc]
        last = None
        for m in members:
            req = urllib.request.Request(m.url + path, data=json.dumps(body).encode(), method="POST")
            try:
                with urllib.request.urlopen(req, timeout=timeout, context=self.ssl_context()) as r:
                    return json.loads(r.read())
            except OSError as e:
                last = e
        raise RuntimeError(f"no etcd member answered {path}: {last}")

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self.live()[0].url + "/health", timeout=2, context=self.ssl_context()) as r:
                return json.loads(r.read()).get("health") == "true"
        except (OSError, IndexError, ValueError):
            return False

    def live(self) -> list[Member]:
        return [m for m in self.members if m.proc]

    def wait_healthy(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.healthy():
                return
            time.sleep(0.1)
        raise RuntimeError(f"etcd did not become healthy; logs in {self.dir}")

    def start(self) -> "EtcdCluster":
        for m in self.members:
            m.start()
        self.wait_healthy()
        return self

    def stop(self) -> None:
        for m in self.members:
            m.stop()

    def get_kv(self, key: str) -> dict | None:
        """The key-value record at `key` as the gateway gives it (value still base64), or None."""
        r = self.call("/v3/kv/range", {"key": base64.b64encode(key.encode()).decode()})
        kvs = r.get("kvs") or []
        return kvs[0] if kvs else None

    def get(self, key: str) -> str | None:
        """The value at `key` (text), or None."""
        kv = self.get_kv(key)
        return base64.b64decode(kv["value"]).decode() if kv else None

    def lease_ttl(self, lease: str) -> int:
        """Seconds the lease has left; -1 once it expired."""
        return int(self.call("/v3/lease/timetolive", {"ID": lease})["TTL"])

    def envoy_cluster(self) -> dict:
        """The Envoy cluster the filter calls: every member, mutual TLS, and a member that
        refuses connections is ejected at once (the filter also retries a connect failure)."""
        c = self.certs
        return {
            "name": CLUSTER,
            "type": "STATIC",
            "connect_timeout": "0.25s",
            "lb_policy": "ROUND_ROBIN",
            "load_assignment": {"cluster_name": CLUSTER, "endpoints": [{"lb_endpoints": [
                {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": m.client_port}}}}
                for m in self.members]}]},
            "outlier_detection": {"consecutive_local_origin_failure": 1, "split_external_local_origin_errors": True,
                                  "base_ejection_time": "1s", "max_ejection_percent": 100, "interval": "1s"},
            "transport_socket": {"name": "envoy.transport_sockets.tls", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                "sni": "localhost",
                "common_tls_context": {
                    "tls_certificates": [{"certificate_chain": {"filename": c["client"]},
                                          "private_key": {"filename": c["client_key"]}}],
                    "validation_context": {"trusted_ca": {"filename": c["ca"]}},
                }}},
        }
