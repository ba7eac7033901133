"""Adversarial end-to-end fuzzer: hostile HTTP/1.1 and HTTP/2 (h2c, prior knowledge) requests,
built from a grammar of hostile parts, sent through Envoy with the filter to a real registry
(distribution) and to a recording upstream, in the shipped config and in the Istio-style one.

The oracle is the invariant, read from the upstreams themselves, never from what the filter
answered:
- no immutable tag's digest ever changes or disappears (HEAD on the registry after every case;
  the recording upstream's store);
- no write (PUT, DELETE, POST, PATCH) to a manifests path reached the recording upstream during a
  case the filter refused, and no write that names a tracked immutable tag with other content
  (or deletes its manifest) ever reached it, whatever the filter answered.

Seeded and reproducible: `FUZZ_SEED` (printed at the start) fixes every case; case `i` is built
from `Random(f"{seed}:{i}")`, so `FUZZ_CASE=i` replays one case alone. `FUZZ_SECONDS` is the
budget. `make fuzz` runs it long and writes `tests/fuzz_results.md`; `tests/test_fuzz.py` runs a
short budget in `make test`. The fixed regression cases of issue 21 run first, every time.

    python tests/fuzz_e2e.py --seconds 1800 --results tests/fuzz_results.md
"""
from __future__ import annotations

import argparse
import json
import os
import random
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import h2c  # noqa: E402
import stack  # noqa: E402
from oci import ACCEPT, OCI_MANIFEST, make_manifest, put_manifest, request, sha256  # noqa: E402
from recording_upstream import RecordingUpstream  # noqa: E402

POLICY = json.loads((stack.ROOT / "envoy" / "policy.json").read_text())
# Every HEAD asks the registry (a map would hide nothing, but judging afresh exercises more).
POLICY = dict(POLICY, cache={"ttl_seconds": 0})
CONFIGS = {"shipped": True, "istio": stack.ISTIO}
HOSTILE = [bytes([b]) for b in list(range(0x80, 0x100, 7)) + [0x00, 0x01, 0x09, 0x0a, 0x0d, 0x1f, 0x7f]] + \
    [b"%", b"%ff", b"%00", b"%2F", b"%2e", b";", b"?", b"#", b" ", b"\\", b"&tag=", b"/.."]


@dataclass
class Case:
    proto: str  # "h1" | "h2"
    method: bytes
    path: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes
    framing: str = "length"  # h1: length | chunked | both | none
    pieces: int = 1
    delay: float = 0.0
    reset_after: int | None = None  # send RST (h2) / close with RST (h1) after that many pieces
    label: str = ""

    def short(self) -> str:
        return (f"{self.label or 'random'} {self.proto} {self.method!r} {self.path[:160]!r} body={len(self.body)}B "
                f"framing={self.framing} pieces={self.pieces} reset_after={self.reset_after} "
                f"headers={[(k, v[:40]) for k, v in self.headers]!r}")


@dataclass
class Answer:
    status: int | None
    content_type: str = ""
    body: bytes = b""

    def refused_by_filter(self) -> bool:
        """The filter's own refusal: its OCI errors carry a JSON object as `detail` (the
        registries' and Envoy's own answers do not)."""
        if self.status is None or self.status < 400 or "json" not in self.content_type:
            return False
        try:
            err = json.loads(self.body)["errors"][0]
        except (ValueError, KeyError, IndexError, TypeError):
            return False
        return isinstance(err.get("detail"), dict)


@dataclass
class World:
    """The tracked immutable tags: (repository, tag) -> digest, and the manifests to push."""
    tags: dict[tuple[str, str], str] = field(default_factory=dict)
    bodies: dict[str, bytes] = field(default_factory=dict)  # name -> manifest (m1, m2, m3)
    repo: str = ""
    release_repo: str = ""


# --- the grammar ------------------------------------------------------------------------------

def pct(s: str, rng: random.Random) -> str:
    """Percent-encodes one random character of `s`, in upper or lower case."""
    if not s:
        return s
    i = rng.randrange(len(s))
    h = f"%{ord(s[i]):02x}"
    return s[:i] + (h.upper() if rng.random() < 0.5 else h) + s[i + 1:]


def build(rng: random.Random, w: World) -> Case:
    repo, tag = rng.choice([(w.repo, "v1"), (w.repo, "v2"), (w.release_repo, "v1.0.0"), (w.repo, f"n{rng.randrange(10**6)}")])
    m1, m2, m3 = w.bodies["m1"], w.bodies["m2"], w.bodies["m3"]
    held = w.tags.get((repo, tag))
    name = rng.choice([repo, repo, repo.replace("/", "%2F"), pct(repo, rng), repo.upper(), repo + "/", "/" + repo,
                       repo.replace("/", "//"), repo + "/."])
    ref = rng.choice([tag, tag, tag, pct(tag, rng), tag + ";x", tag + "/", tag.upper(), sha256(m1), sha256(m3),
                      "sha256:abc", held or tag])
    prefix = rng.choice(["/v2/"] * 6 + ["//v2/", "/V2/", "/v2/./", "/x/../v2/", "/v2/%2e/", "/v2/%2E%2E/v2/"])
    route = rng.choice(["/manifests/"] * 6 + ["/%6danifests/", "/MANIFESTS/", "/manifests%2F", "/manifests/./"])
    many = "&".join(f"tag=t{i}" for i in range(rng.choice([17, 64, 2000])))
    query = rng.choice(["", "", "", "?x=\xff", "?\x80\x81", f"?tag={tag}", f"?tag=new{rng.randrange(99)}&tag={tag}",
                        "?" + many, f"?x=1;tag={tag}", f"?%74ag={tag}", f"?tag={pct(tag, rng)}", f"?tag={tag}\xff",
                        "#frag", f"?tag={tag}&tag={tag}"])
    path = (prefix + name + route + ref + query).encode("latin-1")
    for _ in range(rng.choice([0, 0, 0, 1, 1, 2, 3])):
        at = rng.randrange(len(path) + 1)
        path = path[:at] + rng.choice(HOSTILE) + path[at:]
    method = rng.choice([b"PUT"] * 8 + [b"DELETE"] * 4 + [b"GET", b"HEAD", b"POST", b"PATCH", b"OPTIONS", b"put",
                                                          b"Put", b"PUT\xff", b"P\x00T", b"DELET\xc9", b"MOVE"])
    body = rng.choices([m3, m1, m2, b"", b"\xff\x00garbage", m3 + b" " * (5 << 20)], [50, 15, 10, 10, 10, 2])[0]
    headers: list[tuple[bytes, bytes]] = [(b"content-type", OCI_MANIFEST.encode())]
    if rng.random() < 0.15:
        headers.append((rng.choice([b"x-http-method-override", b"x-http-method", b"X-Method-Override"]), b"PUT"))
    if rng.random() < 0.2:
        headers.append((b"x-junk", b"a\xffb\x80"))
    if rng.random() < 0.1:
        headers.append((b"Content-Type", b"application/json"))  # repeated, mixed case
    if rng.random() < 0.1:
        headers.append((b"content-type", b"text/\xff"))
    if rng.random() < 0.15:
        headers.append((b"authorization", rng.choice([b"Bearer \xff\xfe", b"Basic Zm9vOmJhcg==", b"Bearer x"])))
    proto = rng.choice(["h1", "h2", "h2"])
    framing = rng.choice(["length"] * 5 + ["chunked", "chunked", "both", "none", "wrong-length"]) if proto == "h1" else "length"
    pieces = rng.choice([1, 1, 1, 2, 3, 5])
    reset_after = rng.randrange(pieces + 1) if rng.random() < 0.15 else None
    return Case(proto, method, path, headers, body, framing, pieces, rng.choice([0.0, 0.0, 0.05, 0.3]), reset_after)


def regression_cases(w: World) -> list[Case]:
    """Issue 21, fixed: each case once, per target, before the random ones."""
    repo, m1, m3 = w.repo, w.bodies["m1"], w.bodies["m3"]
    ct = [(b"content-type", OCI_MANIFEST.encode())]
    p = f"/v2/{repo}/manifests/".encode()
    cases = [
        Case("h2", b"PUT", p + b"v1?x=\xff", ct, m3, label="h2 PUT, 0xFF in the query"),
        Case("h2", b"PUT", p + b"v1?\x80", ct, m3, label="h2 PUT, 0x80 alone as the query"),
        Case("h2", b"DELETE", p + sha256(m1).encode() + b"?x=\xff", [], b"", label="h2 DELETE by digest, 0xFF in the query"),
        Case("h2", b"DELETE", p + b"v1?\xff", [], b"", label="h2 DELETE by tag, 0xFF in the query"),
        Case("h2", b"PUT", p + b"v1\xff", ct, m3, label="h2 PUT, 0xFF in the tag"),
        Case("h2", b"PUT", f"/v2/{repo}".encode() + b"\xff/manifests/v1", ct, m3, label="h2 PUT, 0xFF in the name"),
        Case("h2", b"PUT", p + b"v1?x=%ff\xfe", ct, m3, label="h2 PUT, encoded and raw high bytes"),
        Case("h1", b"PUT", p + b"v1?x=\xff", ct, m3, label="h1 PUT, 0xFF in the query"),
        Case("h1", b"PUT", p + b"v9?x=1;tag=v1", ct, m3, label="';' in a write's query"),
        Case("h2", b"PUT", p + sha256(m3).encode() + b"?" + "&".join(f"tag=t{i}" for i in range(2000)).encode() + b"&tag=v1",
             ct, m3, label="2000 ?tag= parameters"),
        Case("h1", b"PUT", p + sha256(m3).encode() + b"?" + "&".join(f"tag=t{i}" for i in range(17)).encode(), ct, m3,
             label="17 ?tag= parameters"),
        Case("h1", b"PUT", b"/" + p + b"v1", ct, m3, label="//v2/ (Invalid)"),
        Case("h2", b"PUT", p + b"v1", ct + [(b"x-http-method", b"\xff")], m3, label="override header with 0xFF"),
        Case("h2", b"PUT", p + b"v1", ct, m3, reset_after=1, pieces=2, label="h2 PUT reset after half the body"),
        Case("h1", b"PUT", p + b"v1", ct, m3, framing="chunked", pieces=3, delay=0.1, label="chunked, delayed"),
        # Found by make fuzz (FUZZ_SEED=2378254564 FUZZ_CASE=3809): an escaped "manifests" and a
        # raw high byte (the path no longer decodes) passed unjudged, ?tag= of v1 included.
        Case("h2", b"PUT", f"/v2/{repo}/%6danifests/".encode() + sha256(m3).encode()[:-8] + b"\xa3" + b"?tag=new1&tag=v1", ct, m3,
             label="h2 PUT, escaped manifests and a raw 0xA3 in a digest, ?tag=v1"),
        Case("h2", b"PUT", f"/v2/{repo}/%6danifests/v1".encode() + b"\xff", ct, m3, label="h2 PUT, escaped manifests, 0xFF in the tag"),
    ]
    return cases


# --- sending ------------------------------------------------------------------------------

def split(body: bytes, n: int) -> list[bytes]:
    if n <= 1 or len(body) < n:
        return [body]
    step = len(body) // n
    return [body[i * step:(i + 1) * step] if i < n - 1 else body[i * step:] for i in range(n)]


def send(port: int, c: Case, timeout: float = 15.0) -> Answer:
    if c.proto == "h2":
        r = h2c.request(port, c.method, c.path, c.headers, split(c.body, c.pieces) if c.body else b"",
                        timeout=timeout, reset_after=c.reset_after, delay=c.delay)
        return Answer(r.status, r.header("content-type") or "", r.body)
    return send_h1(port, c, timeout)


def send_h1(port: int, c: Case, timeout: float) -> Answer:
    head = c.method + b" " + c.path + b" HTTP/1.1\r\nHost: registry.test\r\nConnection: close\r\n"
    for k, v in c.headers:
        head += k + b": " + v + b"\r\n"
    body = c.body
    if c.framing in ("length", "both"):
        head += b"Content-Length: " + str(len(body)).encode() + b"\r\n"
    if c.framing == "wrong-length":
        head += b"Content-Length: " + str(max(0, len(body) - 7)).encode() + b"\r\n"
    if c.framing in ("chunked", "both"):
        head += b"Transfer-Encoding: chunked\r\n"
    head += b"\r\n"
    parts = split(body, c.pieces)
    if c.framing in ("chunked", "both"):
        parts = [b"%x\r\n%s\r\n" % (len(p), p) for p in parts if p] + [b"0\r\n\r\n"]
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        s.sendall(head)
        for i, p in enumerate(parts):
            if c.reset_after is not None and i >= c.reset_after:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                return Answer(None)
            if c.delay:
                time.sleep(c.delay)
            s.sendall(p)
        data = b""
        while not _complete(data):
            try:
                chunk = s.recv(65536)
            except OSError:
                break  # reset: what arrived before it is the answer
            if not chunk:
                break
            data += chunk
    except OSError:
        return Answer(None)
    finally:
        s.close()
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    try:
        status = int(lines[0].split()[1])
    except (IndexError, ValueError):
        return Answer(None)
    return Answer(status, _header(lines, b"content-type").decode("latin-1"), rest)


def _header(lines: list[bytes], name: bytes) -> bytes:
    return next((ln.split(b":", 1)[1].strip() for ln in lines[1:] if ln.lower().startswith(name + b":")), b"")


def _complete(data: bytes) -> bool:
    """A whole HTTP/1.1 answer with a Content-Length (Envoy waits a second before it closes a
    connection after an error: do not wait for the close)."""
    head, sep, rest = data.partition(b"\r\n\r\n")
    if not sep:
        return False
    length = _header(head.split(b"\r\n"), b"content-length")
    return length.isdigit() and len(rest) >= int(length)


# --- targets and the oracle -----------------------------------------------------------------

def decoded(path: str) -> str:
    return urllib.parse.unquote(path.split("?", 1)[0], encoding="latin-1")


class Target:
    """One Envoy (one config) in front of one upstream, and how to read the truth from it."""

    def __init__(self, name: str, envoy: stack.Envoy, world: World, registry: stack.Registry | None = None,
                 recorder: RecordingUpstream | None = None):
        self.name, self.envoy, self.world, self.registry, self.recorder = name, envoy, world, registry, recorder
        self.cases = 0

    def holds(self, repo: str, tag: str) -> str | None:
        if self.registry is None:
            return self.recorder.stored_digest(repo, tag)
        r = request(self.registry.url, "HEAD", f"/v2/{repo}/manifests/{tag}", headers={"Accept": ACCEPT})
        return r.headers.get("docker-content-digest") if r.status == 200 else f"no digest (HEAD {r.status})"

    def truth(self) -> list[str]:
        """Broken invariants, read from the upstream itself. A tag that reads wrong is read again
        for a second: distribution's filesystem storage rewrites a manifest's revision link in
        place when the same manifest is pushed again (an allowed re-push, or a push of it under
        another tag), and a HEAD that meets the half-written link answers 500 ("invalid checksum
        digest format"). Only a digest that stays wrong is a broken invariant."""
        bad = []
        for (repo, tag), digest in self.world.tags.items():
            for _ in range(6):
                now = self.holds(repo, tag)
                if now == digest:
                    break
                time.sleep(0.2)
            else:
                bad.append(f"{repo}:{tag} holds {now}, not {digest}")
        return bad

    def check(self, before: int, answer: Answer) -> list[str]:
        bad = self.truth()
        if self.recorder is None:
            return bad
        self.recorder.wait_idle(timeout=5, grace=0.05)
        for r in self.recorder.requests()[before:]:
            if r.method in ("GET", "HEAD", "OPTIONS"):
                continue
            path = decoded(r.path)
            if "manifests" not in path.lower():
                continue
            if answer.refused_by_filter():
                bad.append(f"refused ({answer.status}) yet {r.method} {r.path[:120]!r} reached the upstream")
            ref = path.rsplit("/manifests/", 1)[-1]
            name = path.split("/v2/", 1)[-1].rsplit("/manifests/", 1)[0]
            query = urllib.parse.parse_qs(r.path.split("?", 1)[1] if "?" in r.path else "", keep_blank_values=True)
            named = {ref, *query.get("tag", [])}
            for (repo, tag), digest in self.world.tags.items():
                if name != repo:
                    continue
                if r.method == "PUT" and tag in named and sha256(r.body) != digest:
                    bad.append(f"{r.method} {r.path[:120]!r} with {sha256(r.body)} reached the upstream over {repo}:{tag}")
                if r.method == "DELETE" and ref in (tag, digest):
                    bad.append(f"DELETE {r.path[:120]!r} of {repo}:{tag} reached the upstream")
        return bad

    def run(self, c: Case) -> list[str]:
        before = len(self.recorder.requests()) if self.recorder else 0
        try:
            answer = send(self.envoy.port, c)
        except Exception:  # noqa: BLE001 - a client-side failure is no answer; the oracle still runs
            answer = Answer(None)
        self.cases += 1
        if self.envoy.proc is None or self.envoy.proc.poll() is not None:
            return ["envoy exited"]
        return self.check(before, answer)


def seed_world(registry: stack.Registry, run_id: str) -> World:
    w = World(repo=f"fz{run_id}/app", release_repo=f"releases/fz{run_id}")
    for n in ("m1", "m2", "m3"):
        w.bodies[n] = make_manifest(registry.url, w.repo, n)
    for repo, tag, body in [(w.repo, "v1", w.bodies["m1"]), (w.repo, "v2", w.bodies["m2"]),
                            (w.release_repo, "v1.0.0", w.bodies["m1"])]:
        if repo == w.release_repo:
            make_manifest(registry.url, repo, "m1")  # its blobs, in that repository too
        assert put_manifest(registry.url, repo, tag, body).status == 201, (repo, tag)
        w.tags[(repo, tag)] = sha256(body)
    return w


def recorder_for(world: World) -> RecordingUpstream:
    """A recording upstream holding the tracked tags (one per target: cases there run alone)."""
    r = RecordingUpstream().start()
    bodies = {sha256(b): b for b in world.bodies.values()}
    for (repo, tag), digest in world.tags.items():
        r.seed(repo, tag, bodies[digest])
    return r


def start_targets(registry: stack.Registry, world: World, envoy_for) -> list[Target]:
    """Per config: Envoy to distribution, and Envoy to a recording upstream of its own."""
    targets = []
    for cname, mode in CONFIGS.items():
        targets.append(Target(f"{cname}/distribution", envoy_for(registry.port, mode), world, registry=registry))
        recorder = recorder_for(world)
        targets.append(Target(f"{cname}/recording", envoy_for(recorder.port, mode), world, recorder=recorder))
    return targets


def stop_targets(targets: list[Target]) -> None:
    for t in targets:
        t.envoy.stop()
        if t.recorder is not None:
            t.recorder.stop()


def fuzz(targets: list[Target], world: World, seed: int, seconds: float, only: int | None = None,
         log=print) -> dict:
    """The regression cases, then random cases until `seconds` ran out (or only case `only`).
    Case `i` goes to target `i % len(targets)`; each target runs its cases in a thread of its
    own (one at a time: a recording target tells which requests a case caused)."""
    failures: list[str] = []
    slow: list = []
    started = time.monotonic()
    lock = threading.Lock()
    n = len(targets)

    def note(msg: str) -> None:
        with lock:
            log(msg)
            failures.append(msg)

    def worker(k: int, t: Target) -> None:
        for c in regression_cases(world) if only is None else []:
            for b in t.run(c):
                note(f"[{t.name}] regression case '{c.label}': {b}")
        i = k if only is None else only
        while len(failures) <= 20:
            if only is None and time.monotonic() - started >= seconds:
                return
            c = build(random.Random(f"{seed}:{i}"), world)
            t0 = time.monotonic()
            bad = t.run(c)
            with lock:
                slow.append((round(time.monotonic() - t0, 2), i, t.name, c.short()[:200]))
                slow[:] = sorted(slow, reverse=True)[:5]
            if bad:
                note(f"[{t.name}] case {i} (FUZZ_SEED={seed} FUZZ_CASE={i}): {c.short()}: {bad}")
            if only is not None:
                return
            i += n

    runs = [(k, t) for k, t in enumerate(targets) if only is None or only % n == k]
    threads = [threading.Thread(target=worker, args=kt) for kt in runs]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    regressions = len(regression_cases(world)) * n if only is None else 0
    return {"seed": seed, "seconds": round(time.monotonic() - started, 1),
            "random_cases": sum(t.cases for t in targets) - regressions, "regression_cases": regressions,
            "per_target": {t.name: t.cases for t in targets}, "slowest": slow, "failures": failures}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=float(os.environ.get("FUZZ_SECONDS", 1800)))
    ap.add_argument("--results", type=Path)
    a = ap.parse_args()
    seed = int(os.environ.get("FUZZ_SEED") or random.SystemRandom().randrange(1 << 32))
    only = int(os.environ["FUZZ_CASE"]) if os.environ.get("FUZZ_CASE") else None
    print(f"fuzz_e2e: FUZZ_SEED={seed} budget {a.seconds:.0f} s", flush=True)
    workdir = Path(tempfile.mkdtemp(prefix="immutable-tags-fuzz-"))
    registry = stack.Registry(workdir).start()
    targets: list[Target] = []

    def envoy_for(upstream_port: int, mode) -> stack.Envoy:
        port, admin = stack.free_port(), stack.free_port()
        cfg = stack.envoy_config(POLICY, port, admin, upstream_port, stop_on_headers=mode)
        return stack.Envoy(workdir, cfg, port, admin, concurrency=1).start()

    try:
        world = seed_world(registry, str(seed))
        targets = start_targets(registry, world, envoy_for)
        result = fuzz(targets, world, seed, a.seconds, only)
    finally:
        stop_targets(targets)
        registry.stop()
    ok = not result["failures"]
    print(json.dumps(result, indent=1))
    if a.results:
        write_results(a.results, result)
    return 0 if ok else 1


def write_results(path: Path, r: dict) -> None:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=stack.ROOT).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True,
                           cwd=stack.ROOT).stdout.strip()
    size = stack.MODULE.stat().st_size if stack.MODULE.exists() else 0
    lines = [
        "# Last `make fuzz` run",
        "",
        "Written by `tests/fuzz_e2e.py` (`make fuzz`); replay with `FUZZ_SEED=<seed> make fuzz`, one case",
        "with `FUZZ_SEED=<seed> FUZZ_CASE=<i> python tests/fuzz_e2e.py`.",
        "",
        f"- finished: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        f"- commit: {commit}{' (with uncommitted changes)' if dirty else ''}; module {size:,} B",
        f"- seed: `FUZZ_SEED={r['seed']}`",
        f"- ran: {r['seconds']} s; {r['random_cases']} random cases, {r['regression_cases']} regression cases",
        f"- per target (config/upstream): " + ", ".join(f"{k} {v}" for k, v in r["per_target"].items()),
        f"- invariant broken: {'no' if not r['failures'] else 'YES'}",
        "",
    ]
    if r["failures"]:
        lines += ["## Failures", ""] + [f"- {f}" for f in r["failures"]] + [""]
    path.write_text("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
