"""The adversarial end-to-end fuzzer (tests/fuzz_e2e.py) on a short budget: issue 21's fixed
regression cases, then random hostile requests for `FUZZ_SECONDS` (default 40 s), through the
shipped config and the Istio-style one, to distribution and to a recording upstream. The seed is
printed; replay with `FUZZ_SEED=<seed>` (and one case with `FUZZ_CASE=<i>`). `make fuzz` runs
the long campaign and records its result in tests/fuzz_results.md."""
from __future__ import annotations

import os
import random

import fuzz_e2e
import stack


def test_hostile_requests_never_change_an_immutable_tag(workdir, registry):
    seed = int(os.environ.get("FUZZ_SEED") or random.SystemRandom().randrange(1 << 32))
    seconds = float(os.environ.get("FUZZ_SECONDS", 40))
    only = int(os.environ["FUZZ_CASE"]) if os.environ.get("FUZZ_CASE") else None
    print(f"FUZZ_SEED={seed}")
    targets: list = []

    def envoy_for(upstream_port: int, mode) -> stack.Envoy:
        port, admin = stack.free_port(), stack.free_port()
        cfg = stack.envoy_config(fuzz_e2e.POLICY, port, admin, upstream_port, stop_on_headers=mode)
        return stack.Envoy(workdir, cfg, port, admin, concurrency=1).start()

    try:
        world = fuzz_e2e.seed_world(registry, str(seed))
        targets = fuzz_e2e.start_targets(registry, world, envoy_for)
        result = fuzz_e2e.fuzz(targets, world, seed, seconds, only)
    finally:
        fuzz_e2e.stop_targets(targets)
    print(result)
    assert result["random_cases"] > 0
    assert not result["failures"], f"FUZZ_SEED={seed}: " + "\n".join(result["failures"])
