"""Configuration through real Envoy: a bad policy stops Envoy from starting the filter."""
from __future__ import annotations

import stack


def test_invalid_policy_refuses_to_start(workdir, registry):
    port, admin = stack.free_port(), stack.free_port()
    cfg = stack.envoy_config({"global": {"immutable_tags_exclusions": ["(unclosed"]}}, port, admin, registry.port)
    e = stack.Envoy(workdir, cfg, port, admin).start(expect_failure=True)
    assert e.proc is None or e.proc.returncode != 0
    log = e.log()
    assert "global.immutable_tags_exclusions[0]" in log, log[-3000:]
    assert '"(unclosed"' in log
