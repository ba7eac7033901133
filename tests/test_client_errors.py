"""What a person sees when the filter refuses an overwrite (issue 15), for each `error_code` the
docs/registries-and-clients.md discusses: each client's exit code, time to fail and the line that says why, recorded
into results/client_errors.json (rendered into docs/compatibility.md and quoted in docs/registries-and-clients.md).

containers/image (skopeo, podman, buildah) prints a code it does not know as `unknown:` and
podman and buildah retry such a failed manifest upload; `DENIED` is a code it knows. Runs
against distribution 2.8, Envoy in the body-phase mode (Istio's).
"""
from __future__ import annotations

import json
import re

import pytest

import stack
from clients import CLIENTS, Distribution, Work, tag_digest

TAG = "v1.0.0"
CODES = ["TAG_IMMUTABLE", "DENIED"]
MEASURED = ["skopeo", "podman", "buildah", "podman manifest", "oras"]
ROWS: list[dict] = []


@pytest.fixture(scope="module")
def distribution(workdir):
    r = Distribution(workdir).start()
    yield r
    r.stop()
    if ROWS:
        (stack.ROOT / "results").mkdir(exist_ok=True)
        rows = sorted(ROWS, key=lambda r: (MEASURED.index(r["client"]), CODES.index(r["error_code"])))
        (stack.ROOT / "results" / "client_errors.json").write_text(json.dumps({"rows": rows}, indent=1) + "\n")


@pytest.fixture
def work(tmp_path):
    w = Work(tmp_path)
    yield w
    w.close()


@pytest.mark.parametrize("error_code", CODES)
@pytest.mark.parametrize("client_name", MEASURED)
def test_a_refused_overwrite_as_the_client_shows_it(client_name, error_code, distribution, stacks, work, uid):
    from conftest import SAMPLE_POLICY
    envoy = stacks.envoy(distribution, {**SAMPLE_POLICY, "error_code": error_code}, stop_on_headers=False)
    client = CLIENTS[client_name]
    repo = f"errors/{client_name.replace(' ', '-')}-{uid}"
    a, b = client.image(work, f"a{uid}"), client.image(work, f"b{uid}")
    dest = f"127.0.0.1:{envoy.port}/{repo}:{TAG}"
    p, _ = client.push(work, distribution, a, dest)
    assert p.returncode == 0, p.stdout + p.stderr
    first = tag_digest(distribution, repo, TAG)
    p, took = client.push(work, distribution, b, dest)
    out = p.stdout + p.stderr
    assert tag_digest(distribution, repo, TAG) == first
    assert p.returncode != 0, out
    why = [line.strip() for line in out.splitlines() if "is immutable" in line]
    assert why, "the client's output does not say why:\n" + out
    # Strip what changes from run to run (ports, names, digests) so the table reads the same.
    line = why[-1].replace(str(envoy.port), "PORT").replace(uid, "UID")
    line = re.sub(r'^time="[^"]*" level=fatal msg=', "", line)
    ROWS.append({"client": client_name, "error_code": error_code, "exit": p.returncode, "seconds": round(took, 1),
                 "line": line[-400:]})
    if error_code == "DENIED" and client_name != "oras":
        # containers/image knows DENIED: it says "denied:" and does not retry.
        assert "denied: Tag" in out, out
