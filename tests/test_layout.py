"""The source tree keeps its layers: no import circle between two files or two folders of the
crate's non-test code (scripts/import_graph.py, issue 25). The check runs on the tree, and on a
copy with a circle planted, so that it is seen to fail. Needs no Envoy and no registry.

A pytest rather than a Rust test: the check reads the source tree, not the crate's behaviour,
and is a Python script; here it runs with `make e2e` beside test_docs.py, which checks the
documentation tree the same way."""
from __future__ import annotations

import shutil
import subprocess
import sys

import stack

ROOT = stack.ROOT
SCRIPT = ROOT / "scripts" / "import_graph.py"

# Circles the tree is known to have: none (the last, through `filter::worker`, was cut in
# 4110918). A new one fails the test; cut it rather than list it here.
KNOWN: set[str] = set()


def circles(src) -> tuple[int, set[str]]:
    r = subprocess.run([sys.executable, str(SCRIPT), str(src)], capture_output=True, text=True, timeout=60)
    assert "modules" in r.stdout, r.stdout + r.stderr
    return r.returncode, {line for line in r.stdout.splitlines() if line.startswith("import circle")}


def test_the_tree_has_no_new_import_circle():
    _, found = circles(ROOT / "src")
    assert found == KNOWN, "\n".join(sorted(found ^ KNOWN))


def test_a_planted_circle_is_found(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(ROOT / "src", src)
    # config reads through util::json_doc; json_doc naming config back closes a circle both
    # between the two files and between the folders `config` and `util`.
    doc = src / "util" / "json_doc.rs"
    doc.write_text(doc.read_text() + "\npub fn planted() -> Option<crate::config::Mode> {\n    None\n}\n")
    code, found = circles(src)
    assert code == 1
    new = found - KNOWN
    assert any(line.startswith("import circle (files):") and "config" in line and "util::json_doc" in line for line in new), new
    assert any(line.startswith("import circle (in crate):") and "config" in line and "util" in line for line in new), new


def test_a_circle_in_test_code_is_not_one(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(ROOT / "src", src)
    doc = src / "util" / "json_doc.rs"
    doc.write_text(doc.read_text() + "\n#[cfg(test)]\nmod planted {\n    use crate::config::Mode;\n}\n")
    _, found = circles(src)
    assert found == KNOWN
