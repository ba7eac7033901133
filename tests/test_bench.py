"""The benchmark (`make bench`) in its quick mode: every part runs, so it cannot rot, and the
push targets that are counts, not timings, hold."""
from __future__ import annotations

import json
import sys
import xml.etree.ElementTree as ET

import stack

sys.path.insert(0, str(stack.ROOT / "bench"))

import bench  # noqa: E402


def test_quick_benchmark_runs_and_counts_heads(tmp_path):
    assert bench.main(["--quick", "--out", str(tmp_path)]) == 0
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["pushes"]["new tag"]["heads_per_push"] <= 1, "a new tag costs at most one HEAD"
    assert res["pushes"]["identical re-push"]["heads_per_push"] == 0, "a warm map costs no HEAD"
    # A refusal rests on the registry's word, asked with the client's credentials: one HEAD.
    assert res["pushes"]["overwrite"]["heads_per_push"] == 1
    assert set(res["traffic"]) == {"no filter", "filter, shipped config", "filter on every route"}
    assert all(x["rps"] > 0 for x in res["traffic"].values())
    assert res["pinning"]["pulls_per_s"] > 0 and res["pinning"]["pulls_per_s_not_pinned"] > 0
    assert {d["case"] for d in res["native"]["decision"]} == {"exclusion patterns", "repository scopes", "rules"}
    assert res["native"]["memory"]["max_entries"] > 0
    # Istio's path: both peers built and measured in the same run as the filter, paired by round.
    ist = res["istio"]
    assert set(ist["configs"]) == {"bare", "floor", "floor_read", "floor_read_resp", "sdk", "this", "reads_off"}
    assert all(x["cpu_us"] >= 0 for x in ist["configs"].values())
    assert ist["peer_bytes"]["floor"] < ist["peer_bytes"]["sdk-noop"]
    assert ist["peer_bytes"]["floor"] < ist["peer_bytes"]["floor_read"] < ist["peer_bytes"]["sdk-noop"]
    for pair in ("this_minus_floor", "this_minus_sdk", "read_minus_floor", "read_minus_sdk", "resp_minus_read",
                 "this_minus_read_resp"):
        assert len(ist[pair]["rounds"]) == ist["rounds"] == res["meta"]["rounds"], pair
    assert res["istio_blobs"]["mib"] > 0 and "per_cpu" in res["istio_blobs"]["upload"]
    assert res["registry_traffic"]["per_cpu"]["median"] >= 0
    assert res["pushes"]["new tag"]["cpu_us"] >= 0  # clock ticks: a quick run may see none
    md = (tmp_path / "results.md").read_text()
    for heading in ["## Targets", "## 1. Ordinary traffic", "## 2. Manifest pushes", "## 3. Pull pinning", "## 4. Module",
                    "## 5. Istio's path"]:
        assert heading in md
    svg = ET.parse(tmp_path / "ratios.svg").getroot()
    assert svg.tag.endswith("svg") and len(svg.findall(".//{http://www.w3.org/2000/svg}rect")) > 5
