"""Fixtures that start the real stack: one registry for the session, and one Envoy per
(policy, header-stop mode), reused by every test that asks for the same pair."""
from __future__ import annotations

import json
import time
import sys
import uuid
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import stack  # noqa: E402

# The policy most tests run under: envoy/policy.json, the sample users start from.
SAMPLE_POLICY = json.loads((stack.ROOT / "envoy" / "policy.json").read_text())


@pytest.fixture(scope="session", autouse=True)
def module_built():
    if not stack.MODULE.exists():
        pytest.fail(f"{stack.MODULE} is missing: `make test` builds it before running the tests")


@pytest.fixture(scope="session")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("stack")


@pytest.fixture(scope="session")
def registry(workdir):
    r = stack.Registry(workdir).start()
    yield r
    r.stop()


@pytest.fixture
def own_registry(workdir):
    """A registry of the test's own, which it may stop and start (the session one stays up)."""
    r = stack.Registry(workdir).start()
    yield r
    r.stop()


class Stacks:
    """Starts Envoys on demand and stops them all at the end of the session."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.envoys: dict[tuple, stack.Envoy] = {}

    def envoy(self, registry: stack.Registry, policy: dict | str, stop_on_headers: bool | str = True,
              concurrency: int = 2, fresh: bool = False, **kw) -> stack.Envoy:
        key = (registry.port, json.dumps(policy, sort_keys=True), stop_on_headers, concurrency,
               tuple(sorted(kw.items())))
        if not fresh and key in self.envoys and self.envoys[key].proc is not None:
            return self.envoys[key]
        port, admin = stack.free_port(), stack.free_port()
        cfg = stack.envoy_config(policy, port, admin, registry.port, stop_on_headers=stop_on_headers, **kw)
        e = stack.Envoy(self.workdir, cfg, port, admin, concurrency=concurrency).start()
        self.envoys[key if not fresh else key + (port,)] = e
        return e

    def stop(self):
        for e in self.envoys.values():
            e.stop()


@pytest.fixture(scope="session")
def stacks(workdir):
    s = Stacks(workdir)
    yield s
    s.stop()


@pytest.fixture(params=[True, False, stack.ISTIO], ids=["stop-on-headers", "body-phase", "istio"])
def stop_on_headers(request) -> bool | str:
    """Every enforcement test runs with and without `allow_on_headers_stop_iteration`, and in
    the config Istio's WasmPlugin generates (filter on every route, empty vm_id, root_id set,
    no allow_on_headers_stop_iteration)."""
    return request.param


@pytest.fixture
def envoy(stacks, registry, stop_on_headers):
    """Envoy with the sample policy (envoy/policy.json) in front of the session registry."""
    return stacks.envoy(registry, SAMPLE_POLICY, stop_on_headers)


# htpasswd line for alice:secret (bcrypt, cost 4: the registry accepts only bcrypt).
HTPASSWD = "alice:$2y$04$YUzrbVPfWkvjbEDla1Pxb.j3ZmJONaCPsLCSIbzcAMsOxYBtptq22\n"
ALICE = {"Authorization": "Basic YWxpY2U6c2VjcmV0"}


@pytest.fixture
def locked(registry, workdir):
    """A registry that wants credentials (htpasswd: alice), on the session registry's storage,
    so tests seed it without auth through `registry`."""
    htpasswd = workdir / "htpasswd"
    htpasswd.write_text(HTPASSWD)
    storage = {"filesystem": {"rootdirectory": str(registry.dir / "data")}, "delete": {"enabled": True}}
    r = stack.Registry(workdir, extra={"storage": storage,
                                       "auth": {"htpasswd": {"realm": "test-realm", "path": str(htpasswd)}}})
    r.start()
    yield r
    r.stop()


@pytest.fixture
def uid() -> str:
    return uuid.uuid4().hex[:10]


# --- the compatibility matrix: what the tests saw, written for docs/compatibility.md ---------
RESULTS = stack.ROOT / "results"


class CompatRecorder:
    """Records each (client, registry, case) outcome as the test runs it: a case is "pass" only
    if its block ended without an exception; cases a failed test never reached stay "not run"."""

    def __init__(self):
        self.rows: dict[tuple, dict] = {}
        self.versions: dict[str, str] = {}

    def expect(self, client: str, registry: str, cases: list[str]) -> None:
        for c in cases:
            self.rows[(client, registry, c)] = {"client": client, "registry": registry, "case": c,
                                                "outcome": "not run", "detail": "an earlier case of this test failed"}

    def not_tested(self, client: str, registry: str, cases: list[str], reason: str) -> None:
        for c in cases:
            self.rows[(client, registry, c)] = {"client": client, "registry": registry, "case": c,
                                                "outcome": "not tested", "detail": reason}

    def case(self, client: str, registry: str, case: str):
        rec = self

        class Block:
            def __enter__(self):
                self.row = {"client": client, "registry": registry, "case": case, "outcome": "fail", "detail": ""}
                rec.rows[(client, registry, case)] = self.row
                return self.row

            def __exit__(self, kind, err, tb):
                if kind is None:
                    self.row["outcome"] = "pass"
                else:
                    self.row["detail"] = (self.row.get("detail") or "") + f" {kind.__name__}: {str(err)[:600]}"
                return False

        return Block()

    def write(self) -> None:
        if not self.rows:
            return  # this run had no matrix test: keep the last table
        RESULTS.mkdir(exist_ok=True)
        data = {"written": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "versions": self.versions,
                "rows": sorted(self.rows.values(), key=lambda r: (r["client"], r["registry"], r["case"]))}
        (RESULTS / "compat.json").write_text(json.dumps(data, indent=1) + "\n")


COMPAT = CompatRecorder()


@pytest.fixture(scope="session")
def compat():
    yield COMPAT
    COMPAT.write()
