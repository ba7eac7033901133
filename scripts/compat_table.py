#!/usr/bin/env python3
"""Renders results/compat.json (written by the end-to-end tests, tests/conftest.py) and
results/client_errors.json (tests/test_client_errors.py) into docs/compatibility.md.
A cell the run did not reach says so; nothing is filled in that a test did not record.
The page holds no run-specific text (dates, ports, random names, timings), so a run that saw
the same outcomes leaves it unchanged and `make test` leaves the tree clean; the raw results,
timings included, stay in results/ (untracked)."""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Run-specific parts of a client's message, replaced by a placeholder.
VOLATILE = [
    (re.compile(r"(127\.0\.0\.1|localhost):\d+"), r"\1:PORT"),
    (re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"), "UUID"),
    (re.compile(r"sha256(:|%3A)[0-9a-f]{64}"), r"sha256\1DIGEST"),
    (re.compile(r"-[0-9a-f]{10}(?=[-/:\s]|$)"), "-UID"),
    (re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z?"), "TIME"),
]


def stable(text: str) -> str:
    for pattern, placeholder in VOLATILE:
        text = pattern.sub(placeholder, text)
    return text


MARK = {"pass": "pass", "fail": "**FAIL**", "not run": "not run", "not tested": "not tested"}


def load(name: str) -> dict | None:
    p = ROOT / "results" / name
    return json.loads(p.read_text()) if p.exists() else None


def matrix(data: dict) -> list[str]:
    rows = data["rows"]
    registries = sorted({r["registry"] for r in rows})
    cases = list(dict.fromkeys(r["case"] for r in rows))
    clients = list(dict.fromkeys(r["client"] for r in sorted(rows, key=lambda r: r["client"])))
    cell = {(r["client"], r["registry"], r["case"]): r for r in rows}
    out = ["Written by the tests (`make test`; `python scripts/compat_table.py` renders it).", "",
           "| client | case | " + " | ".join(registries) + " |", "|---|---|" + "---|" * len(registries)]
    notes = []
    for c in clients:
        for case in cases:
            marks = []
            for reg in registries:
                r = cell.get((c, reg, case))
                if r is None:
                    marks.append("not tested (not in this run)")
                    continue
                m = MARK.get(r["outcome"], r["outcome"])
                if r["outcome"] != "pass":
                    note = f"{c} / {reg}: {r['outcome']}: {stable(r['detail'].strip())}"
                    if note not in notes:
                        notes.append(note)
                    m += f" [{notes.index(note) + 1}]"
                marks.append(m)
            out.append(f"| {c} | {case} | " + " | ".join(marks) + " |")
    out += ["", "Versions: " + "; ".join(f"{k}: {v}" for k, v in sorted(data["versions"].items())) + "."]
    if notes:
        out += ["", "Notes:", ""] + [f"{i + 1}. {n.replace('|', '/')}" for i, n in enumerate(notes)]
    return out


def errors(data: dict) -> list[str]:
    # Seconds to fail vary from run to run: they stay in results/client_errors.json.
    out = ["| client | error_code | exit | what the client prints (last line) |", "|---|---|---|---|"]
    for r in data["rows"]:
        out.append(f"| {r['client']} | {r['error_code']} | {r['exit']} | `{stable(r['line']).replace('|', '/')}` |")
    return out


def main() -> int:
    compat, errs = load("compat.json"), load("client_errors.json")
    lines = ["# Compatibility", "", "Generated from test outcomes: do not edit by hand.", "",
             "## Clients × registries (tests/test_matrix.py)", ""]
    lines += matrix(compat) if compat else ["No results: run `make test`."]
    lines += ["", "## What clients show on a refused overwrite (tests/test_client_errors.py)", ""]
    lines += errors(errs) if errs else ["No results: run `make test`."]
    (ROOT / "docs" / "compatibility.md").write_text("\n".join(lines) + "\n")
    failed = [r for r in (compat or {}).get("rows", []) if r["outcome"] in ("fail", "not run")]
    print(f"docs/compatibility.md: {len((compat or {}).get('rows', []))} cells, {len(failed)} failed or not run")
    return 0


if __name__ == "__main__":
    sys.exit(main())
