"""`make bench`: what the filter costs, measured side by side on loopback and reported as median
ratios (absolute numbers on a shared 2-core machine are noise; ratios of alternating rounds in
one run are not).

1. Ordinary traffic (blob GETs and `/v2/`, mixed) with `wrk`: the same Envoy binary and config
   without the filter, with it as shipped (envoy/envoy.yaml), and with it on every route, in
   front of an Envoy direct response (an upstream that is never the bottleneck).
2. Manifest pushes to a real registry: new tags, identical re-pushes (warm map), overwrites
   (refused); pushes/s and latency against the same Envoy without the filter, and the HEADs the
   registry served per push (from its access log).
3. Pull pinning: pulls/s of an immutable tag through a distribution registry in proxy mode in
   front of a second registry behind a delaying TCP proxy, with and without pin_immutable_pulls.
4. Module size, the tag-digest map's memory at its maximum, and policy decision time with 1 vs
   1,000 exclusion patterns / repository scopes (native benches, `cargo bench`).

Writes bench/results.md, bench/results.json and bench/ratios.svg (or --out DIR).
`--quick` runs every part in seconds (the test suite's smoke test).
"""
from __future__ import annotations

import argparse
import asyncio
import copy
import datetime
import http.client
import json
import os
import re
import shutil
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
from oci import ACCEPT, OCI_MANIFEST, push_blob, sha256  # noqa: E402

KIB = 1024
TARGETS = {
    "shipped_rps": 0.98,
    # Istio's path (section 5): paired per-round differences of per-CPU ratios.
    "istio_behind_floor": 0.04,
    "istio_ahead_of_sdk": 0.02,
    "istio_blobs": 0.98,
    "everywhere_rps": 0.85,
    "module_bytes": 512 * KIB,
}
BLOB = "/v2/bench/app/blobs/sha256:" + "ab" * 32
POLICY = {"global": {"immutable_tags": True, "immutable_tags_exclusions": ["^latest$"]}}


# ---------------------------------------------------------------------------------------------
# Envoy configurations: the same envoy/envoy.yaml, differing only in the filter.

def without_filter(cfg: dict) -> dict:
    """The same config with the wasm filter removed (and the per-route settings naming it)."""
    cfg = copy.deepcopy(cfg)
    hcm = cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    hcm["http_filters"] = [f for f in hcm["http_filters"] if f["name"] != "immutable-tags"]
    for route in hcm["route_config"]["virtual_hosts"][0]["routes"]:
        route.pop("typed_per_filter_config", None)
    return cfg


def direct_response_config(port: int, admin: int) -> dict:
    """An Envoy that answers every request itself: 200 and a 1 KiB body."""
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
        "static_resources": {"listeners": [{
            "name": "upstream",
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
            "filter_chains": [{"filters": [{
                "name": "envoy.filters.network.http_connection_manager",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                    "stat_prefix": "upstream",
                    "route_config": {"virtual_hosts": [{
                        "name": "all", "domains": ["*"],
                        "routes": [{"match": {"prefix": "/"},
                                    "direct_response": {"status": 200, "body": {"inline_string": "x" * 1024}}}],
                    }]},
                    "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}],
                },
            }]}],
        }]},
    }


class Stack:
    """Starts processes and stops them all at the end."""

    def __init__(self, work: Path):
        self.work = work
        self.procs: list = []

    def envoy(self, cfg_for_ports, concurrency: int = 1) -> stack.Envoy:
        port, admin = stack.free_port(), stack.free_port()
        e = stack.Envoy(self.work, cfg_for_ports(port, admin), port, admin, concurrency=concurrency)
        self.procs.append(e)
        try:
            return e.start()
        except RuntimeError:
            sys.stderr.write(e.log()[-3000:])
            raise

    def registry(self, **kw) -> stack.Registry:
        r = stack.Registry(self.work, **kw)
        self.procs.append(r)
        return r.start()

    def stop(self):
        for p in reversed(self.procs):
            p.stop()


def filtered(policy, registry_port, **kw):
    return lambda port, admin: stack.envoy_config(policy, port, admin, registry_port, **kw)


def unfiltered(registry_port, **kw):
    return lambda port, admin: without_filter(stack.envoy_config(POLICY, port, admin, registry_port, **kw))


def med(xs):
    return statistics.median(xs) if xs else float("nan")


# ---------------------------------------------------------------------------------------------
# 1. Ordinary traffic

WRK_SCRIPT = """
local paths = {"/v2/", "%s"}
local i = 0
request = function()
  i = i + 1
  return wrk.format("GET", paths[(i %% 2) + 1])
end
""" % BLOB


def parse_duration(s: str) -> float:
    """wrk's latency (`123.45us`, `1.20ms`, `2.00s`) in microseconds."""
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", s)
    if not m:
        raise ValueError(s)
    return float(m.group(1)) * {"us": 1, "ms": 1e3, "s": 1e6, "m": 6e7}[m.group(2)]


def cpu_seconds(pid: int) -> float:
    """CPU time a process has used: the sum of its threads' run time in nanoseconds
    (/proc/PID/task/*/schedstat), or else user + system in clock ticks (/proc/PID/stat, 10 ms
    steps: too coarse for a few transfers)."""
    try:
        return sum(int((t / "schedstat").read_text().split()[0]) for t in Path(f"/proc/{pid}/task").iterdir()) / 1e9
    except (OSError, ValueError, IndexError):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wrk(url: str, seconds: float, script: Path, connections: int = 8, pid: int | None = None) -> dict:
    cpu0 = cpu_seconds(pid) if pid else 0.0
    out = subprocess.run(
        (["taskset", "-c", str(LOAD_CPU)] if PIN else []) + ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency", "-s", str(script), url],
        capture_output=True, text=True, check=True, timeout=seconds + 60).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    total = int(re.search(r"(\d+) requests in", out).group(1))
    # CPU per request of the Envoy under test: far less sensitive to other load than throughput.
    cpu_us = (cpu_seconds(pid) - cpu0) * 1e6 / max(total, 1) if pid else float("nan")
    pct = dict(re.findall(r"^\s+(50|99)%\s+(\S+)", out, re.M))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors:
        raise RuntimeError(f"wrk saw {errors.group(1)} error responses from {url}")
    return {"rps": rps, "p50_us": parse_duration(pct["50"]), "p99_us": parse_duration(pct["99"]), "cpu_us": cpu_us}


def ordinary_traffic(st: Stack, rounds: int, seconds: float) -> dict:
    upstream = st.envoy(direct_response_config)
    configs = {
        "no filter": st.envoy(unfiltered(upstream.port)),
        "filter, shipped config": st.envoy(filtered(POLICY, upstream.port)),
        "filter on every route": st.envoy(filtered(POLICY, upstream.port, filter_everywhere=True)),
    }
    script = st.work / "mixed.lua"
    script.write_text(WRK_SCRIPT)
    for e in configs.values():  # warm up: connections, the wasm VM, the CPU governor
        wrk(e.url, 1, script)
    runs = {name: [] for name in configs}
    names = list(configs)
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]  # alternate who goes first
        for name in order:
            runs[name].append(wrk(configs[name].url, seconds, script, pid=configs[name].proc.pid))
    out = {}
    for name in names:
        ratios = [
            {k: run[k] / base[k] for k in ("rps", "p50_us", "p99_us", "cpu_us")}
            for run, base in zip(runs[name], runs["no filter"])
        ]
        out[name] = {
            "rps": med([x["rps"] for x in runs[name]]),
            "p50_us": med([x["p50_us"] for x in runs[name]]),
            "p99_us": med([x["p99_us"] for x in runs[name]]),
            "rps_ratio": med([x["rps"] for x in ratios]),
            "rps_ratio_range": [min(x["rps"] for x in ratios), max(x["rps"] for x in ratios)],
            "p50_ratio": med([x["p50_us"] for x in ratios]),
            "p99_ratio": med([x["p99_us"] for x in ratios]),
            "cpu_us": med([x["cpu_us"] for x in runs[name]]),
            # Throughput the same CPU buys, relative to no filter: 1 / (CPU per request ratio).
            "capacity_ratio": med([1 / x["cpu_us"] for x in ratios]),
        }
    return out


# ---------------------------------------------------------------------------------------------
# 2. Manifest pushes

class Client:
    """One keep-alive connection, so a push's latency is the request, not a TCP handshake."""

    def __init__(self, url: str):
        host, port = url.removeprefix("http://").split(":")
        self.conn = http.client.HTTPConnection(host, int(port), timeout=30)

    def send(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
        t = time.perf_counter()
        self.conn.request(method, path, body=body, headers=headers or {})
        r = self.conn.getresponse()
        data = r.read()
        return r.status, (time.perf_counter() - t) * 1e6, r, data

    def close(self):
        self.conn.close()


def manifests(registry_url: str, repo: str, n: int, seed: str) -> list[bytes]:
    """`n` distinct manifests over one uploaded config and layer (they differ in an annotation)."""
    config = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}}).encode()
    layer = b"bench layer"
    cd, ld = push_blob(registry_url, repo, config), push_blob(registry_url, repo, layer)
    return [json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": ld, "size": len(layer)}],
        "annotations": {"seed": f"{seed}-{i}"},
    }).encode() for i in range(n)]


def push_all(url: str, repo: str, tags: list[str], bodies: list[bytes], expect: int, pid: int | None = None) -> dict:
    c = Client(url)
    lat = []
    cpu0 = cpu_seconds(pid) if pid else 0.0
    t0 = time.perf_counter()
    try:
        for tag, body in zip(tags, bodies):
            status, us, _, data = c.send("PUT", f"/v2/{repo}/manifests/{tag}", body, {"Content-Type": OCI_MANIFEST})
            if status != expect:
                raise RuntimeError(f"push {repo}:{tag} answered {status}, expected {expect}: {data[:300]!r}")
            lat.append(us)
    finally:
        c.close()
    cpu_us = (cpu_seconds(pid) - cpu0) * 1e6 / len(tags) if pid else float("nan")
    return {"pushes_per_s": len(tags) / (time.perf_counter() - t0), "p50_us": med(lat), "cpu_us": cpu_us}


def heads_now(registry: stack.Registry) -> int:
    time.sleep(0.05)  # let the registry flush its access log line
    return registry.head_requests()


def pushes(st: Stack, rounds: int, n: int) -> dict:
    registry = st.registry()
    envoys = {"filter": st.envoy(filtered(POLICY, registry.port)), "no filter": st.envoy(unfiltered(registry.port))}
    phases = ["new tag", "identical re-push", "overwrite"]
    res = {p: {k: [] for k in envoys} for p in phases}
    heads = {p: [] for p in phases}
    for r in range(rounds):
        for name in (list(envoys) if r % 2 == 0 else list(envoys)[::-1]):
            e = envoys[name]
            repo = f"bench/push-{r}-{name.replace(' ', '-')}"
            first = manifests(registry.url, repo, n, f"{r}-a")
            second = manifests(registry.url, repo, n, f"{r}-b")
            tags = [f"v1.{r}.{i}" for i in range(n)]
            plan = [
                ("new tag", first, 201),
                ("identical re-push", first, 201),
                # Without the filter an overwrite succeeds: same work for the registry, a 201.
                ("overwrite", second, 409 if name == "filter" else 201),
            ]
            for phase, bodies, expect in plan:
                h0 = heads_now(registry)
                res[phase][name].append(push_all(e.url, repo, tags, bodies, expect, pid=e.proc.pid))
                if name == "filter":
                    heads[phase].append((heads_now(registry) - h0) / n)
    out = {}
    for phase in phases:
        f, p = res[phase]["filter"], res[phase]["no filter"]
        out[phase] = {
            "pushes_per_s": med([x["pushes_per_s"] for x in f]),
            "pushes_per_s_no_filter": med([x["pushes_per_s"] for x in p]),
            "ratio": med([a["pushes_per_s"] / b["pushes_per_s"] for a, b in zip(f, p)]),
            "added_us": med([a["p50_us"] - b["p50_us"] for a, b in zip(f, p)]),
            # Envoy CPU per push, with the filter over without (the harmless OPTIONS, the HEAD,
            # the filter's own PUT and the relayed answer, against one PUT passed through).
            "cpu_us": med([x["cpu_us"] for x in f]),
            "cpu_us_no_filter": med([x["cpu_us"] for x in p]),
            "cpu_ratio": med([a["cpu_us"] / b["cpu_us"] for a, b in zip(f, p) if b["cpu_us"] > 0]),
            "heads_per_push": max(heads[phase]),
        }
    return out


# ---------------------------------------------------------------------------------------------
# 3. Pull pinning

class DelayProxy:
    """A TCP proxy on loopback that holds every client-to-server chunk for `delay` seconds: a
    distant upstream registry."""

    def __init__(self, target_port: int, delay: float):
        self.target, self.delay = target_port, delay
        self.port = stack.free_port()
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(ready,), daemon=True)
        self.thread.start()
        ready.wait(10)

    def _run(self, ready):
        asyncio.set_event_loop(self.loop)
        self.server = self.loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", self.port))
        ready.set()
        self.loop.run_forever()

    async def _pipe(self, src, dst, delay):
        try:
            while data := await src.read(65536):
                if delay:
                    await asyncio.sleep(delay)
                dst.write(data)
                await dst.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            dst.close()

    async def _handle(self, reader, writer):
        try:
            up_r, up_w = await asyncio.open_connection("127.0.0.1", self.target)
        except OSError:
            writer.close()
            return
        await asyncio.gather(self._pipe(reader, up_w, self.delay), self._pipe(up_r, writer, 0))

    def stop(self):
        async def shutdown():
            self.server.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        asyncio.run_coroutine_threadsafe(shutdown(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


def pull_all(url: str, repo: str, tag: str, n: int, digest: str) -> dict:
    c = Client(url)
    lat = []
    t0 = time.perf_counter()
    try:
        for _ in range(n):
            status, us, r, _ = c.send("GET", f"/v2/{repo}/manifests/{tag}", None, {"Accept": ACCEPT})
            if status != 200 or r.getheader("docker-content-digest") != digest:
                raise RuntimeError(f"pull answered {status} {r.getheader('docker-content-digest')}")
            lat.append(us)
    finally:
        c.close()
    return {"pulls_per_s": n / (time.perf_counter() - t0), "p50_us": med(lat)}


def pinning(st: Stack, rounds: int, n: int, delay: float) -> dict:
    origin = st.registry()
    proxy = DelayProxy(origin.port, delay)
    try:
        mirror = st.registry(extra={"proxy": {"remoteurl": f"http://127.0.0.1:{proxy.port}"}})
        repo, tag = "bench/pull", "v1.0.0"
        body = manifests(origin.url, repo, 1, "pull")[0]
        c = Client(origin.url)
        status, *_ = c.send("PUT", f"/v2/{repo}/manifests/{tag}", body, {"Content-Type": OCI_MANIFEST})
        c.close()
        assert status == 201, status
        digest = sha256(body)
        envoys = {
            "pinned": st.envoy(filtered(dict(POLICY, pin_immutable_pulls=True), mirror.port, manifest_reads=True)),
            "not pinned": st.envoy(filtered(POLICY, mirror.port, manifest_reads=True)),
        }
        for e in envoys.values():
            pull_all(e.url, repo, tag, 2, digest)  # the mirror caches it, the map learns it
        res = {k: [] for k in envoys}
        for r in range(rounds):
            for name in (list(envoys) if r % 2 == 0 else list(envoys)[::-1]):
                res[name].append(pull_all(envoys[name].url, repo, tag, n, digest))
        p, u = res["pinned"], res["not pinned"]
        return {
            "delay_ms": delay * 1000,
            "pulls_per_s": med([x["pulls_per_s"] for x in p]),
            "pulls_per_s_not_pinned": med([x["pulls_per_s"] for x in u]),
            "p50_us": med([x["p50_us"] for x in p]),
            "p50_us_not_pinned": med([x["p50_us"] for x in u]),
            "speedup": med([a["pulls_per_s"] / b["pulls_per_s"] for a, b in zip(p, u)]),
        }
    finally:
        proxy.stop()


# ---------------------------------------------------------------------------------------------
# 5. Istio's path: the filter on every route, configured as Istio's WasmPlugin does it, against
#    two peers built here (bench/peers): the floor (no SDK, one callback that does nothing) and a
#    proxy-wasm Rust SDK filter that does nothing.

PEERS = ROOT / "bench" / "peers"
PEER_TARGET = ROOT / "target" / "peers"
MIB = 1024 * KIB
# Envoy under test on one core, load generator and upstream on the other, where the machine allows.
PIN = (os.cpu_count() or 1) >= 2 and shutil.which("taskset") is not None
ENVOY_CPU, LOAD_CPU = 1, 0


# The peers (crate, cargo features): each a tiny module built here, measured in the same run.
PEERS_BUILT = {
    "floor": ("floor", []),
    "floor_read": ("floor-read", []),
    "floor_read_resp": ("floor-read", ["--features", "response"]),
    "sdk-noop": ("sdk-noop", []),
}


def build_peers() -> dict[str, Path]:
    out = {}
    for name, (crate, features) in PEERS_BUILT.items():
        target = PEER_TARGET / name
        subprocess.run(["cargo", "build", "--release", "--target", "wasm32-wasip1", "--target-dir", str(target), *features],
                       cwd=PEERS / crate, check=True, capture_output=True)
        out[name] = target / "wasm32-wasip1" / "release" / f"{crate.replace('-', '_')}.wasm"
    return out


def pin(e: stack.Envoy, cpu: int) -> stack.Envoy:
    if PIN:
        subprocess.run(["taskset", "-a", "-pc", str(cpu), str(e.proc.pid)], capture_output=True, check=False)
    return e


def istio(upstream_port: int, module: Path | None = stack.MODULE, reads_off: bool = False):
    """The Istio-style config (stack.istio_style: filter on every route, empty vm_id, root_id
    set, no allow_on_headers_stop_iteration); `module` None: no filter; `reads_off`: with the
    optional EnvoyFilter patch (envoy/istio) that disables the filter on GET/HEAD routes."""
    def cfg(port, admin):
        c = stack.envoy_config(POLICY, port, admin, upstream_port, stop_on_headers=stack.ISTIO, module=module or stack.MODULE)
        if module is None:
            return without_filter(c)
        if reads_off:
            hcm = c["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
            reads = next(r for r in hcm["route_config"]["virtual_hosts"][0]["routes"] if r["name"] == "reads")
            reads["typed_per_filter_config"] = {"immutable-tags": {
                "@type": "type.googleapis.com/envoy.config.route.v3.FilterConfig", "disabled": True}}
        return c
    return cfg


def spread(xs: list[float]) -> dict:
    return {"median": med(xs), "min": min(xs), "max": max(xs), "rounds": xs}


def order(names: list[str], r: int) -> list[str]:
    """Round r's order: rotated by r and reversed every other round, so no config always goes
    first or always follows the same one."""
    o = names[r % len(names):] + names[:r % len(names)]
    return o if r % 2 == 0 else o[::-1]


PEER_NAMES = {
    "floor": "floor filter (no SDK, exports only proxy_on_request_headers)",
    "floor_read": "floor + one `:path` read (the least a classifying filter does)",
    "floor_read_resp": "floor + one `:path` read + `proxy_on_response_headers` exported",
    "sdk": "proxy-wasm Rust SDK filter that does nothing",
    "this": "immutable-tags",
    "reads_off": "immutable-tags, filter disabled on GET/HEAD routes (EnvoyFilter patch)",
}


def side_by_side(envoys: dict, seconds: float, script: Path) -> dict[str, float]:
    """One round: every Envoy loaded at the same moment (one `wrk` each, 4 connections), so a
    disturbance of the machine falls on all of them alike; Envoy CPU per request, in µs."""
    c0 = {k: cpu_seconds(e.proc.pid) for k, e in envoys.items()}
    procs = {k: subprocess.Popen((["taskset", "-c", str(LOAD_CPU)] if PIN else []) + [
        "wrk", "-t1", "-c4", f"-d{max(1, round(seconds))}s", "-s", str(script), e.url],
        stdout=subprocess.PIPE, text=True) for k, e in envoys.items()}
    out = {k: p.communicate(timeout=seconds + 60)[0] for k, p in procs.items()}
    cpu = {}
    for k, e in envoys.items():
        if "Non-2xx" in out[k]:
            raise RuntimeError(f"wrk saw error responses from {k}: {out[k]}")
        total = int(re.search(r"(\d+) requests in", out[k]).group(1))
        cpu[k] = (cpu_seconds(e.proc.pid) - c0[k]) * 1e6 / max(total, 1)
    return cpu


def istio_small(st: Stack, rounds: int, seconds: float) -> dict:
    """Small requests (blob GETs and `/v2/`) against an Envoy direct response; per round, each
    config's requests per Envoy CPU second relative to the same round's bare Envoy, all loaded
    side by side (every Envoy pinned to one CPU, every load generator to the other)."""
    upstream = pin(st.envoy(direct_response_config), LOAD_CPU)
    peers = build_peers()
    configs = {
        "bare": istio(upstream.port, None),
        "floor": istio(upstream.port, peers["floor"]),
        "floor_read": istio(upstream.port, peers["floor_read"]),
        "floor_read_resp": istio(upstream.port, peers["floor_read_resp"]),
        "sdk": istio(upstream.port, peers["sdk-noop"]),
        "this": istio(upstream.port),
        "reads_off": istio(upstream.port, reads_off=True),
    }
    envoys = {k: pin(st.envoy(c), ENVOY_CPU) for k, c in configs.items()}
    script = st.work / "mixed.lua"
    script.write_text(WRK_SCRIPT)
    side_by_side(envoys, 1, script)  # warm up: connections, the wasm VMs
    cpu = {k: [] for k in envoys}
    for _ in range(rounds):
        for k, us in side_by_side(envoys, seconds, script).items():
            cpu[k].append(us)
    per_cpu = {k: [b / max(x, 1e-9) for b, x in zip(cpu["bare"], cpu[k])] for k in envoys}
    paired = lambda a, b: spread([x - y for x, y in zip(per_cpu[a], per_cpu[b])])  # noqa: E731
    return {
        "configs": {k: {"cpu_us": med(cpu[k]), "per_cpu": spread(per_cpu[k])} for k in envoys},
        "rounds": rounds,
        "this_minus_floor": paired("this", "floor"),
        "this_minus_sdk": paired("this", "sdk"),
        "read_minus_floor": paired("floor_read", "floor"),
        "read_minus_sdk": paired("floor_read", "sdk"),
        "resp_minus_read": paired("floor_read_resp", "floor_read"),
        "this_minus_read_resp": paired("this", "floor_read_resp"),
        "peer_bytes": {k: p.stat().st_size for k, p in peers.items()},
    }


def upload(url: str, repo: str, data: bytes, digest: str) -> None:
    c = Client(url)
    try:
        status, _, r, body = c.send("POST", f"/v2/{repo}/blobs/uploads/")
        if status != 202:
            raise RuntimeError(f"upload start answered {status}: {body[:200]!r}")
        loc = r.getheader("location")
        loc = loc[loc.index("/v2/"):]
        sep = "&" if "?" in loc else "?"
        status, _, _, body = c.send("PUT", f"{loc}{sep}digest={digest}", data, {"Content-Type": "application/octet-stream"})
        if status != 201:
            raise RuntimeError(f"upload answered {status}: {body[:200]!r}")
    finally:
        c.close()


def download(url: str, path: str, size: int) -> None:
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=120)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        got = 0
        while chunk := r.read(1 << 20):
            got += len(chunk)
        if r.status != 200 or got != size:
            raise RuntimeError(f"download answered {r.status} with {got} bytes")
    finally:
        conn.close()


def istio_blobs(st: Stack, rounds: int, mib: int, repeat: int) -> dict:
    """A `mib` MiB blob downloaded and uploaded through the Istio-style config, with and without
    the filter: Envoy CPU per transfer."""
    registry = st.registry()
    envoys = {"bare": pin(st.envoy(istio(registry.port, None)), ENVOY_CPU), "this": pin(st.envoy(istio(registry.port)), ENVOY_CPU)}
    data = os.urandom(mib * MIB)
    digest = sha256(data)
    repo = "bench/big"
    push_blob(registry.url, repo, data)
    path = f"/v2/{repo}/blobs/{digest}"
    cpu = {(k, d): [] for k in envoys for d in ("download", "upload")}
    transfer = {"download": lambda url: download(url, path, len(data)), "upload": lambda url: upload(url, repo, data, digest)}
    for _ in range(rounds):
        for d, run in transfer.items():
            # Both Envoys at the same moment (one thread each), so the machine's mood is shared.
            c0 = {k: cpu_seconds(e.proc.pid) for k, e in envoys.items()}
            stack.run_together([lambda url=e.url, run=run: [run(url) for _ in range(repeat)] for e in envoys.values()])
            for k, e in envoys.items():
                cpu[(k, d)].append(cpu_seconds(e.proc.pid) - c0[k])
    out = {"mib": mib, "repeat": repeat}
    for d in ("download", "upload"):
        out[d] = {
            "cpu_ms": med(cpu[("this", d)]) * 1e3 / repeat, "cpu_ms_bare": med(cpu[("bare", d)]) * 1e3 / repeat,
            "per_cpu": spread([b / max(x, 1e-9) for b, x in zip(cpu[("bare", d)], cpu[("this", d)])]),
        }
    return out


def image_cycle(url: str, repo: str, tag: str, layer: bytes) -> None:
    """One image pushed (config blob, layer blob, manifest to a new immutable tag) and pulled back."""
    config = json.dumps({"architecture": "amd64", "os": "linux", "tag": tag, "rootfs": {"type": "layers", "diff_ids": []}}).encode()
    cd, ld = sha256(config), sha256(layer)
    upload(url, repo, config, cd)
    upload(url, repo, layer, ld)
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": ld, "size": len(layer)}],
    }).encode()
    c = Client(url)
    try:
        status, _, _, body = c.send("PUT", f"/v2/{repo}/manifests/{tag}", manifest, {"Content-Type": OCI_MANIFEST})
        if status != 201:
            raise RuntimeError(f"push {repo}:{tag} answered {status}: {body[:200]!r}")
        status, _, _, body = c.send("GET", f"/v2/{repo}/manifests/{tag}", None, {"Accept": ACCEPT})
        if status != 200:
            raise RuntimeError(f"pull {repo}:{tag} answered {status}")
        for d, size in ((cd, len(config)), (ld, len(layer))):
            status, _, _, body = c.send("GET", f"/v2/{repo}/blobs/{d}")
            if status != 200 or len(body) != size:
                raise RuntimeError(f"blob {d} answered {status}")
    finally:
        c.close()


def registry_traffic(st: Stack, rounds: int, images: int, layer_mib: int) -> dict:
    """Real registry traffic through the shipped config vs no filter: per round, `images` images
    pushed (each a new immutable tag: the filter checks and writes the manifest) and pulled back."""
    registry = st.registry()
    envoys = {"bare": pin(st.envoy(unfiltered(registry.port)), ENVOY_CPU), "shipped": pin(st.envoy(filtered(POLICY, registry.port)), ENVOY_CPU)}
    cpu = {k: [] for k in envoys}
    for r in range(rounds):
        for k in order(list(envoys), r):
            pid = envoys[k].proc.pid
            c0 = cpu_seconds(pid)
            for i in range(images):
                image_cycle(envoys[k].url, f"bench/traffic-{k}-{r}", f"v1.{r}.{i}", os.urandom(layer_mib * MIB))
            cpu[k].append(cpu_seconds(pid) - c0)
    return {"images": images, "layer_mib": layer_mib,
            "per_cpu": spread([b / max(x, 1e-9) for b, x in zip(cpu["bare"], cpu["shipped"])])}


# ---------------------------------------------------------------------------------------------
# 4. Native: module size, map memory, decision time

def native(quick: bool) -> dict:
    out = {"decision": [], "memory": None}
    args = ["cargo", "bench", "--bench", "decision", "--bench", "tag_cache_memory"]
    if quick:  # test-profile build and one pass: proves the machinery, measures nothing
        args = ["cargo", "test", "--bench", "decision", "--bench", "tag_cache_memory", "--", "--nocapture"]
    text = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, check=True).stdout
    for line in text.splitlines():
        if not line.startswith("{"):
            continue
        d = json.loads(line)
        if d["bench"] == "decision":
            out["decision"].append(d)
        elif d["bench"] == "tag_cache_memory":
            out["memory"] = d
    return out


# ---------------------------------------------------------------------------------------------
# Report

def fmt_us(us: float) -> str:
    return f"{us / 1000:.2f} ms" if us >= 1000 else f"{us:.0f} µs"


def report(res: dict) -> tuple[str, list[tuple[str, float, float | None, str]]]:
    """The markdown and the chart's bars: (label, ratio, target, direction)."""
    bars = []
    L = []
    meta = res["meta"]
    L.append("# immutable-tags: benchmark results\n")
    L.append(f"`make bench` on {meta['date']}, commit `{meta['commit']}`, {meta['cpus']} CPUs, "
             f"Envoy {meta['envoy']}, mode `{meta['mode']}`, load average {meta['load_before']:.1f} before and "
             f"{meta['load_after']:.1f} after. Ratios are medians over {meta['rounds']} alternating rounds of the "
             "same run; absolute numbers on a shared machine are noise.\n")
    L.append("![ratios](ratios.svg)\n")

    t = res["traffic"]
    shipped, every = t["filter, shipped config"], t["filter on every route"]
    size = res["module_bytes"]
    push = res["pushes"]
    L.append("## Targets\n")
    L.append("| target | measured | |")
    L.append("|---|---|---|")

    def row(name, measured, ok):
        L.append(f"| {name} | {measured} | {'met' if ok else '**not met**'} |")

    for label, x, target in [("ordinary traffic, shipped config", shipped, TARGETS["shipped_rps"]),
                             ("filter on every route", every, TARGETS["everywhere_rps"])]:
        row(f"{label}: >= {target} of no-filter throughput (requests/s ratio)", f"{x['rps_ratio']:.3f}",
            x["rps_ratio"] >= target)
        row(f"{label}: >= {target} of no-filter throughput (per CPU second)", f"{x['capacity_ratio']:.3f}",
            x["capacity_ratio"] >= target)
    # Section 5's targets are met only when every round clears them (the rounds' spread), not
    # only the median.
    ist, blobs, traffic = res["istio"], res["istio_blobs"], res["registry_traffic"]
    fl, sd = ist["this_minus_floor"], ist["this_minus_sdk"]
    row(f"Istio-style, small requests: within {TARGETS['istio_behind_floor']} of the floor filter per CPU second "
        "(this − floor, median [rounds' min, max])", f"{fl['median']:+.3f} [{fl['min']:+.3f}, {fl['max']:+.3f}]",
        fl["min"] >= -TARGETS["istio_behind_floor"])
    row(f"Istio-style, small requests: >= {TARGETS['istio_ahead_of_sdk']} ahead of the do-nothing SDK filter per CPU "
        "second (this − SDK)", f"{sd['median']:+.3f} [{sd['min']:+.3f}, {sd['max']:+.3f}]",
        sd["min"] >= TARGETS["istio_ahead_of_sdk"])
    for d in ("download", "upload"):
        x = blobs[d]["per_cpu"]
        row(f"Istio-style, {blobs['mib']} MiB blob {d}: >= {TARGETS['istio_blobs']} of bare Envoy per CPU",
            f"{x['median']:.3f} [{x['min']:.3f}, {x['max']:.3f}]", x["min"] >= TARGETS["istio_blobs"])
    x = traffic["per_cpu"]
    row(f"shipped config, registry traffic (image pushes and pulls): >= {TARGETS['shipped_rps']} of bare Envoy per CPU",
        f"{x['median']:.3f} [{x['min']:.3f}, {x['max']:.3f}]", x["min"] >= TARGETS["shipped_rps"])
    row("new tag push: at most one upstream HEAD", f"{push['new tag']['heads_per_push']:.2f} HEAD/push",
        push["new tag"]["heads_per_push"] <= 1)
    row("identical re-push, fresh map entry: no HEAD", f"{push['identical re-push']['heads_per_push']:.2f} HEAD/push",
        push["identical re-push"]["heads_per_push"] == 0)
    row("module <= 512 KiB (release, stripped, wasm-opt -Oz)", f"{size:,} bytes ({size / KIB:.0f} KiB)",
        size <= TARGETS["module_bytes"])
    for d in res["native"]["decision"]:
        row(f"decision time independent of the number of {d['case']} (1 vs 1,000)",
            f"{d['ratio']:.2f}× ({d['ns_1']:.0f} ns vs {d['ns_1000']:.0f} ns)", d["ratio"] <= 1.5)
    L.append("")

    L.append("## 1. Ordinary traffic (blob GETs and `/v2/`, `wrk`, in front of an Envoy direct response)\n")
    L.append("| Envoy | requests/s | p50 | p99 | Envoy CPU/request | throughput ratio (rounds' range) | "
             "per-CPU ratio | p50 ratio | p99 ratio |")
    L.append("|---|---|---|---|---|---|---|---|---|")
    for name, x in t.items():
        lo, hi = x["rps_ratio_range"]
        L.append(f"| {name} | {x['rps']:,.0f} | {fmt_us(x['p50_us'])} | {fmt_us(x['p99_us'])} | "
                 f"{x['cpu_us']:.1f} µs | {x['rps_ratio']:.3f} ({lo:.2f}–{hi:.2f}) | {x['capacity_ratio']:.3f} | "
                 f"{x['p50_ratio']:.2f} | {x['p99_ratio']:.2f} |")
    L.append("\nThroughput ratio: requests/s with the filter over requests/s without, per round. Per-CPU "
             "ratio: the same from the Envoy process's CPU time per request (the throughput a saturated "
             "Envoy would reach), which other load on the machine disturbs much less.\n")
    L.append("")
    bars.append(("requests/s, shipped config", shipped["rps_ratio"], TARGETS["shipped_rps"], "min"))
    bars.append(("requests/CPU-s, shipped config", shipped["capacity_ratio"], TARGETS["shipped_rps"], "min"))
    bars.append(("requests/s, filter on every route", every["rps_ratio"], TARGETS["everywhere_rps"], "min"))
    bars.append(("requests/CPU-s, filter on every route", every["capacity_ratio"], TARGETS["everywhere_rps"], "min"))

    L.append(f"## 2. Manifest pushes to a real registry ({meta['pushes']} per round, one client, keep-alive)\n")
    L.append("| push | pushes/s with filter | without | ratio | latency added per push | Envoy CPU per push (without) | registry HEADs per push |")
    L.append("|---|---|---|---|---|---|---|")
    for phase, x in push.items():
        if phase == "overwrite":
            # Without the filter the registry stores the overwrite: not the same work, no ratio.
            L.append(f"| overwrite, refused with 409 (without the filter: stored, {x['pushes_per_s_no_filter']:,.0f}/s) | "
                     f"{x['pushes_per_s']:,.0f} | | | | {fmt_us(x['cpu_us'])} ({fmt_us(x['cpu_us_no_filter'])}) | {x['heads_per_push']:.2f} |")
            continue
        L.append(f"| {phase} | {x['pushes_per_s']:,.0f} | {x['pushes_per_s_no_filter']:,.0f} | {x['ratio']:.2f} | "
                 f"{fmt_us(x['added_us'])} | {fmt_us(x['cpu_us'])} ({fmt_us(x['cpu_us_no_filter'])}) | {x['heads_per_push']:.2f} |")
        bars.append((f"pushes/s, {phase}", x["ratio"], None, ""))
    L.append("")

    p = res["pinning"]
    L.append(f"## 3. Pull pinning (distribution in proxy mode, upstream registry {p['delay_ms']:.0f} ms away)\n")
    L.append("| pulls of an immutable tag | pulls/s | p50 |")
    L.append("|---|---|---|")
    L.append(f"| `pin_immutable_pulls: true` | {p['pulls_per_s']:,.0f} | {fmt_us(p['p50_us'])} |")
    L.append(f"| not pinned | {p['pulls_per_s_not_pinned']:,.0f} | {fmt_us(p['p50_us_not_pinned'])} |")
    L.append(f"| speed-up | {p['speedup']:.1f}× | |")
    L.append("")
    bars.append(("pulls/s, pinned vs not", p["speedup"], None, ""))

    L.append("## 5. Istio's path (filter on every route, empty vm_id, root_id set, no allow_on_headers_stop_iteration)\n")
    L.append(f"Envoy {'pinned to CPU %d, load generator and upstream to CPU %d' % (ENVOY_CPU, LOAD_CPU) if meta.get('pinned') else 'not pinned (one CPU or no taskset)'}; "
             "CPU from /proc (threads' run time, ns). Small requests: blob GETs and `/v2/` against an Envoy direct "
             "response, every config loaded at the same moment (one `wrk` each), so a disturbance of the machine falls "
             "on all alike. Per round: requests per Envoy CPU second relative to the same round's bare Envoy; "
             f"median [rounds' min, max] over {ist['rounds']} rounds.\n")
    L.append("| filter on every route | Envoy CPU/request | per CPU vs bare |")
    L.append("|---|---|---|")
    for k, x in ist["configs"].items():
        pc = x["per_cpu"]
        L.append(f"| {PEER_NAMES.get(k, 'no filter')} | {x['cpu_us']:.1f} µs | {pc['median']:.3f} [{pc['min']:.3f}, {pc['max']:.3f}] |")
    def pair(key):
        x = ist[key]
        return f"{x['median']:+.3f} [{x['min']:+.3f}, {x['max']:+.3f}]"
    L.append("\nPaired per round (differences of per-CPU ratios, median [min, max]):\n")
    L.append("| | |")
    L.append("|---|---|")
    L.append(f"| immutable-tags − floor | {pair('this_minus_floor')} |")
    L.append(f"| immutable-tags − do-nothing SDK filter | {pair('this_minus_sdk')} |")
    L.append(f"| one `:path` read − floor (what classifying costs any filter) | {pair('read_minus_floor')} |")
    L.append(f"| one `:path` read − do-nothing SDK filter | {pair('read_minus_sdk')} |")
    L.append(f"| exporting `proxy_on_response_headers` (read + response − read) | {pair('resp_minus_read')} |")
    L.append(f"| immutable-tags − (read + response): the filter's own work | {pair('this_minus_read_resp')} |")
    L.append("\nPeers' modules: " + ", ".join(f"{k} {v:,} bytes" for k, v in ist["peer_bytes"].items()) + ".\n")
    L.append(f"| {blobs['mib']} MiB blob, real registry ({blobs['repeat']} transfers per measurement) | Envoy CPU per transfer, bare | with the filter | per CPU vs bare |")
    L.append("|---|---|---|---|")
    for d in ("download", "upload"):
        x = blobs[d]
        pc = x["per_cpu"]
        L.append(f"| {d} | {x['cpu_ms_bare']:.1f} ms | {x['cpu_ms']:.1f} ms | {pc['median']:.3f} [{pc['min']:.3f}, {pc['max']:.3f}] |")
    x = traffic["per_cpu"]
    L.append(f"\nShipped config, real registry traffic: per round {traffic['images']} images, each a config blob and "
             f"a {traffic['layer_mib']} MiB layer uploaded, a manifest pushed to a new immutable tag (checked and written "
             f"by the filter), then the manifest and both blobs pulled: Envoy CPU bare / shipped "
             f"{x['median']:.3f} [{x['min']:.3f}, {x['max']:.3f}].\n")
    bars.append(("Istio-style, requests/CPU-s", ist["configs"]["this"]["per_cpu"]["median"], None, ""))
    bars.append(("Istio-style, floor filter", ist["configs"]["floor"]["per_cpu"]["median"], None, ""))
    bars.append(("Istio-style, do-nothing SDK filter", ist["configs"]["sdk"]["per_cpu"]["median"], None, ""))
    bars.append(("Istio-style, floor + one :path read", ist["configs"]["floor_read"]["per_cpu"]["median"], None, ""))
    for d in ("download", "upload"):
        bars.append((f"Istio-style, {blobs['mib']} MiB {d}/CPU-s", blobs[d]["per_cpu"]["median"], TARGETS["istio_blobs"], "min"))
    bars.append(("shipped, registry traffic/CPU-s", traffic["per_cpu"]["median"], TARGETS["shipped_rps"], "min"))

    m = res["native"]["memory"]
    L.append("## 4. Module, memory, decision time\n")
    L.append("| | |")
    L.append("|---|---|")
    L.append(f"| module (release, stripped, `wasm-opt -Oz`) | {size:,} bytes ({size / KIB:.0f} KiB) |")
    if m:
        L.append(f"| tag-digest map at its maximum ({m['max_entries']:,} entries, per worker) | "
                 f"{m['bytes']:,} bytes ({m['bytes_per_entry']:.0f} bytes/entry) |")
    for d in res["native"]["decision"]:
        L.append(f"| decision, 1 vs 1,000 {d['case']} | {d['ns_1']:.0f} ns vs {d['ns_1000']:.0f} ns "
                 f"({d['ratio']:.2f}×) |")
        bars.append((f"decision time, 1,000 vs 1 {d['case']}", d["ratio"], 1.0, "max"))
    bars.append(("module size / 512 KiB", size / TARGETS["module_bytes"], 1.0, "max"))
    L.append("")
    return "\n".join(L), bars


def svg(bars) -> str:
    """A horizontal bar chart of the ratios; a target is a red tick (min: at least, max: at most)."""
    width, left, right, row_h, top = 760, 290, 60, 28, 40
    # Bars past the axis (pinning's speed-up) are clipped; their label carries the value.
    top_value = 1.5
    scale = (width - left - right) / top_value
    h = top + row_h * len(bars) + 30
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{h}" '
           f'font-family="sans-serif" font-size="12">',
           f'<rect width="{width}" height="{h}" fill="white"/>',
           f'<text x="{left}" y="20" font-size="14" font-weight="bold">immutable-tags: ratios '
           '(filter ÷ baseline; red tick = target)</text>']
    x1 = left + scale
    out.append(f'<line x1="{x1:.1f}" y1="{top - 6}" x2="{x1:.1f}" y2="{h - 24}" stroke="#999" stroke-dasharray="3,3"/>')
    out.append(f'<text x="{x1:.1f}" y="{h - 10}" text-anchor="middle" fill="#666">1.0</text>')
    for i, (label, value, target, direction) in enumerate(bars):
        y = top + i * row_h
        ok = target is None or (value >= target if direction == "min" else value <= target)
        color = "#3a7" if ok else "#d44"
        esc = label.replace("&", "&amp;").replace("<", "&lt;")
        out.append(f'<text x="{left - 8}" y="{y + 15}" text-anchor="end">{esc}</text>')
        shown = min(value, top_value)
        out.append(f'<rect x="{left}" y="{y + 3}" width="{max(1.0, shown * scale):.1f}" height="16" fill="{color}"/>')
        more = " ▶" if value > top_value else ""
        out.append(f'<text x="{left + shown * scale + 4:.1f}" y="{y + 15}">{value:.2f}{more}</text>')
        if target is not None:
            tx = left + target * scale
            out.append(f'<line x1="{tx:.1f}" y1="{y}" x2="{tx:.1f}" y2="{y + 22}" stroke="#c00" stroke-width="2"/>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="seconds, not minutes: checks the machinery only")
    ap.add_argument("--out", default=str(ROOT / "bench"))
    a = ap.parse_args(argv)
    if not stack.MODULE.exists():
        sys.exit(f"{stack.MODULE} is missing: run `make bench` (it builds the module first)")
    rounds, seconds, n_push, n_pull = (1, 1, 4, 5) if a.quick else (7, 2, 50, 60)
    blob_mib, images, layer_mib = (2, 1, 1) if a.quick else (64, 5, 4)
    work = Path(tempfile.mkdtemp(prefix="immutable-tags-bench-"))
    st = Stack(work)
    res = {}
    try:
        commit = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=ROOT, capture_output=True,
                                text=True).stdout.strip()
        envoy_version = re.search(r"\d+\.\d+\.\d+", subprocess.run(
            [stack.envoy_binary(), "--version"], capture_output=True, text=True).stdout)
        res["meta"] = {
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "commit": commit, "cpus": os.cpu_count(), "envoy": envoy_version.group(0) if envoy_version else "?",
            "mode": "quick" if a.quick else "full", "rounds": rounds, "pushes": n_push,
            "load_before": os.getloadavg()[0], "pinned": bool(PIN),
        }
        res["module_bytes"] = stack.MODULE.stat().st_size
        print("== ordinary traffic", flush=True)
        res["traffic"] = ordinary_traffic(st, rounds, seconds)
        print("== pushes", flush=True)
        res["pushes"] = pushes(st, rounds, n_push)
        print("== pull pinning", flush=True)
        res["pinning"] = pinning(st, rounds, n_pull, delay=0.02)
        print("== Istio's path: small requests", flush=True)
        # More rounds here: the targets are read from the rounds' spread, not only the median.
        res["istio"] = istio_small(st, rounds if a.quick else 11, seconds)
        print(f"== Istio's path: {blob_mib} MiB blob", flush=True)
        res["istio_blobs"] = istio_blobs(st, rounds, blob_mib, 1 if a.quick else 4)
        print("== shipped config: registry traffic", flush=True)
        res["registry_traffic"] = registry_traffic(st, rounds, images, layer_mib)
        print("== native benches", flush=True)
        res["native"] = native(a.quick)
        res["meta"]["load_after"] = os.getloadavg()[0]
    finally:
        st.stop()
    md, bars = report(res)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.md").write_text(md)
    (out / "results.json").write_text(json.dumps(res, indent=2) + "\n")
    (out / "ratios.svg").write_text(svg(bars))
    print(md)
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
