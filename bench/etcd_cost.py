"""What claims in etcd cost: pushes to new immutable tags through an Envoy whose claims live in
a real 3-member etcd cluster (mutual TLS, tests/etcd.py) against the same Envoy with the default
shared-data claims, side by side in alternating rounds of one run, on one registry.

Measures per push latency (sequential pushes) and pushes/s (concurrent clients), reports medians
over the rounds and their ratios, and writes bench/etcd_results.md (or --out FILE).
"""
from __future__ import annotations

import argparse
import datetime
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import stack  # noqa: E402
from etcd import CLUSTER, EtcdCluster  # noqa: E402
from oci import make_manifest, put_manifest  # noqa: E402

POLICY = {"global": {"immutable_tags": True, "immutable_tags_exclusions": ["^latest$"]}}
ETCD_POLICY = dict(POLICY, claims={"etcd": {"cluster": CLUSTER, "authority": "localhost", "timeout_ms": 1000}})


def start_envoy(work: Path, registry_port: int, policy: dict, etcd: EtcdCluster | None) -> stack.Envoy:
    port, admin = stack.free_port(), stack.free_port()
    cfg = stack.envoy_config(policy, port, admin, registry_port)
    if etcd is not None:
        cfg["static_resources"]["clusters"].append(etcd.envoy_cluster())
    return stack.Envoy(work, cfg, port, admin, concurrency=2).start()


class Pusher:
    def __init__(self, envoy: stack.Envoy, repo: str, manifest: bytes):
        self.envoy, self.repo, self.manifest, self.n = envoy, repo, manifest, 0
        self.lock = threading.Lock()

    def push(self) -> float:
        with self.lock:
            self.n += 1
            tag = f"t{self.n}"
        t0 = time.perf_counter()
        r = put_manifest(self.envoy.url, self.repo, tag, self.manifest)
        dt = time.perf_counter() - t0
        if r.status != 201:
            raise RuntimeError(f"{self.envoy.url} {self.repo}:{tag}: {r.status} {r.body[:300]!r}")
        return dt


def sequential(p: Pusher, n: int) -> list[float]:
    return [p.push() for _ in range(n)]


def concurrent(p: Pusher, clients: int, per_client: int) -> float:
    """Pushes/s with `clients` clients each pushing `per_client` new tags."""
    t0 = time.perf_counter()
    stack.run_together([lambda: [p.push() for _ in range(per_client)]] * clients)
    return clients * per_client / (time.perf_counter() - t0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--pushes", type=int, default=40, help="sequential pushes per round")
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--out", default=str(ROOT / "bench" / "etcd_results.md"))
    a = ap.parse_args()
    load_before = os.getloadavg()[0]

    work = Path(tempfile.mkdtemp(prefix="immutable-tags-etcd-bench-"))
    registry = stack.Registry(work).start()
    etcd = EtcdCluster(work).start()
    envoys = {}
    try:
        envoys["shared data"] = start_envoy(work, registry.port, POLICY, None)
        envoys["etcd"] = start_envoy(work, registry.port, ETCD_POLICY, etcd)
        pushers = {}
        for name, e in envoys.items():
            repo = "bench/" + name.replace(" ", "-")
            pushers[name] = Pusher(e, repo, make_manifest(registry.url, repo, name))
            sequential(pushers[name], 5)  # warm up: connections, the etcd lease
        lat: dict[str, list[float]] = {n: [] for n in envoys}
        p50: dict[str, list[float]] = {n: [] for n in envoys}
        rps: dict[str, list[float]] = {n: [] for n in envoys}
        for r in range(a.rounds):
            order = list(envoys) if r % 2 == 0 else list(reversed(envoys))
            for name in order:
                s = sequential(pushers[name], a.pushes)
                lat[name] += s
                p50[name].append(statistics.median(s))
                rps[name].append(concurrent(pushers[name], a.clients, a.pushes // a.clients))
    finally:
        for e in envoys.values():
            e.stop()
        etcd.stop()
        registry.stop()

    def ms(x: float) -> str:
        return f"{x * 1000:.2f}"

    rows = []
    for name in envoys:
        q = statistics.quantiles(lat[name], n=10)
        rows.append((name, statistics.median(p50[name]), q[8], statistics.median(rps[name])))
    base, etcd_row = rows[0], rows[1]
    lat_ratio = etcd_row[1] / base[1]
    rps_ratio = etcd_row[3] / base[3]
    module = stack.MODULE.stat().st_size if stack.MODULE.exists() else 0
    commit = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    md = [
        "# Claims in etcd: cost of a push to a new immutable tag",
        "",
        f"Measured {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}, commit `{commit}`, load average "
        f"{load_before:.1f} before and {os.getloadavg()[0]:.1f} after, by `bench/etcd_cost.py` on loopback: one distribution 2.8 "
        f"registry, Envoy 1.40 (2 workers) with the filter, claims in Envoy shared data vs. in a "
        f"3-member etcd 3.4 cluster over mutual TLS; {a.rounds} alternating rounds of {a.pushes} "
        f"sequential pushes and {a.clients} concurrent clients. Every push is a new tag (one claim).",
        "",
        "| claims in | median latency (ms) | p90 latency (ms) | pushes/s ({} clients) |".format(a.clients),
        "|---|---|---|---|",
        *[f"| {n} | {ms(m)} | {ms(p)} | {r:.0f} |" for n, m, p, r in rows],
        "",
        f"etcd / shared data: latency x{lat_ratio:.2f} (+{ms(etcd_row[1] - base[1])} ms median), "
        f"pushes/s x{rps_ratio:.2f}.",
        "",
        f"Module size: {module} bytes (limit 524288).",
        "",
    ]
    Path(a.out).write_text("\n".join(md))
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
