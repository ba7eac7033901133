#!/usr/bin/env python3
"""Import circles in the crate's non-test code, between files and between folders.

    python3 scripts/import_graph.py [SRC_DIR]      # default: src (exit 1 if a circle is found)

Reads every module reachable from SRC_DIR/lib.rs through `mod` declarations (skipping modules
declared under a `#[cfg(...test...)]` and inline `#[cfg(test)] mod x { .. }` blocks), drops
comments and string literals, and resolves each `crate::`/`super::`/`self::`/child-module path
(in `use` trees and inline in code) to the longest existing module. A module's references to its
own ancestors are not edges: a folder's `mod.rs` holding the interface its children use is the
usual Rust shape, not a circle. A circle is then:
  * between files: a strongly connected component of the module graph;
  * between folders: for each edge A -> B, the children of their closest common ancestor that
    contain A and B; a circle among one folder's children (files or sub-folders) is reported as
    a circle of that folder.
Why a script and not a crate: it runs with plain python3 in `make e2e`/pytest, adds no
dependency, and a `use` line is all it needs to read.
"""
import os
import re
import sys

TEST_CFG = re.compile(r"#\s*\[\s*cfg\s*\(([^\]]*)\)\s*\]")


def strip(src):
    """Source without comments, string/char literals (their contents become spaces)."""
    out, i, n = [], 0, len(src)
    while i < n:
        c = src[i]
        if src.startswith("//", i):
            j = src.find("\n", i)
            i = n if j < 0 else j
        elif src.startswith("/*", i):
            depth, i = 1, i + 2
            while i < n and depth:
                if src.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif src.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                else:
                    i += 1
        elif c == "r" and re.match(r'r#*"', src[i:i + 10]) and not (i and (src[i - 1].isalnum() or src[i - 1] == "_")):
            m = re.match(r'r(#*)"', src[i:])
            end = src.find('"' + m.group(1), i + len(m.group(0)))
            i = n if end < 0 else end + 1 + len(m.group(1))
            out.append('""')
        elif c == '"':
            i += 1
            while i < n and src[i] != '"':
                i += 2 if src[i] == "\\" else 1
            i += 1
            out.append('""')
        elif c == "'" and re.match(r"'(\\.|[^\\'])'|'\\u\{[0-9a-fA-F]+\}'|'\\x[0-9a-fA-F]{2}'", src[i:]):
            m = re.match(r"'(\\.|[^\\'])'|'\\u\{[0-9a-fA-F]+\}'|'\\x[0-9a-fA-F]{2}'", src[i:])
            i += len(m.group(0))
            out.append("' '")
        else:
            out.append(c)
            i += 1
    return "".join(out)


def is_test_cfg(attr):
    # `test` as a predicate, not negated (not(test) code is production code).
    return re.search(r"\btest\b", attr) is not None and "not(test" not in attr.replace(" ", "")


def drop_test_blocks(code):
    """Remove `#[cfg(test)] mod x { ... }` blocks (and other cfg(test) items with a body)."""
    while True:
        for m in TEST_CFG.finditer(code):
            if not is_test_cfg(m.group(1)):
                continue
            rest = code[m.end():]
            mm = re.match(r"\s*(?:#\s*\[[^\]]*\]\s*)*(?:pub(?:\([^)]*\))?\s+)?mod\s+\w+\s*\{", rest)
            if not mm:
                continue
            start, i, depth = m.start(), m.end() + mm.end(), 1
            while i < len(code) and depth:
                depth += {"{": 1, "}": -1}.get(code[i], 0)
                i += 1
            code = code[:start] + code[i:]
            break
        else:
            return code


def load(src_dir):
    """{module path tuple: (file, stripped code)} for the non-test modules."""
    mods = {}

    def visit(path, file, own_dir):
        code = drop_test_blocks(strip(open(file, encoding="utf-8").read()))
        mods[path] = (file, code)
        for m in re.finditer(r"((?:#\s*\[[^\]]*\]\s*)*)(?:pub(?:\([^)]*\))?\s+)?mod\s+(\w+)\s*;", code):
            attrs, name = m.group(1), m.group(2)
            if any(is_test_cfg(a) for a in TEST_CFG.findall(attrs)):
                continue
            pm = re.search(r'#\s*\[\s*path\s*=\s*""', attrs)
            if pm:
                continue
            for cand, sub in ((os.path.join(own_dir, name + ".rs"), os.path.join(own_dir, name)),
                              (os.path.join(own_dir, name, "mod.rs"), os.path.join(own_dir, name))):
                if os.path.exists(cand):
                    visit(path + (name,), cand, sub)
                    break

    visit((), os.path.join(src_dir, "lib.rs"), src_dir)
    return mods


def use_paths(code):
    """Every path named in `use` trees, expanded, plus inline `a::b::c` paths."""
    paths = []

    def expand(prefix, tree):
        tree = tree.strip()
        if not tree:
            return
        depth, parts, cur = 0, [], ""
        if tree.startswith("{") and tree.endswith("}"):
            for ch in tree[1:-1]:
                if ch == "," and depth == 0:
                    parts.append(cur)
                    cur = ""
                    continue
                depth += {"{": 1, "}": -1}.get(ch, 0)
                cur += ch
            parts.append(cur)
            for p in parts:
                expand(prefix, p)
            return
        i = tree.find("::{")
        if i >= 0:
            expand(prefix + tree[:i].split("::"), tree[i + 2:])
            return
        head = tree.split(" as ")[0].strip()
        segs = [s.strip() for s in head.split("::") if s.strip()]
        if segs and segs[-1] == "self":
            segs = segs[:-1]
        paths.append(prefix + segs)

    for m in re.finditer(r"\buse\s+([^;]+);", code):
        expand([], re.sub(r"\s+", " ", m.group(1)).replace(":: ", "::").replace(" ::", "::"))
    no_use = re.sub(r"\buse\s+[^;]+;", ";", code)
    for m in re.finditer(r"\b((?:crate|super|self|[a-z_][a-z0-9_]*)(?:\s*::\s*[A-Za-z_][A-Za-z0-9_]*)+)", no_use):
        paths.append([s.strip() for s in m.group(1).split("::")])
    return paths


def resolve(mods, here, segs):
    if not segs:
        return None
    if segs[0] == "crate":
        base, segs = (), segs[1:]
    elif segs[0] in ("super", "self"):
        base = here
        while segs and segs[0] in ("super", "self"):
            if segs[0] == "super":
                base = base[:-1]
            segs = segs[1:]
    elif here + (segs[0],) in mods:
        base = here
    else:
        return None  # std, a dependency, a local item, or `immutable_tags::` (bin/bench only)
    best = base
    for s in segs:
        if best + (s,) in mods:
            best = best + (s,)
        else:
            break
    return best


def graph(mods):
    edges = {m: set() for m in mods}
    for here, (_, code) in mods.items():
        for segs in use_paths(code):
            t = resolve(mods, here, segs)
            if t is None or t == here or here[:len(t)] == t:
                continue  # itself, or one of its ancestors
            edges[here].add(t)
    return edges


def sccs(nodes, edges):
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def strong(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(nodes):
        if v not in index:
            strong(v)
    return out


def name(m):
    return "::".join(m) or "crate"


def circles(src_dir):
    mods = load(src_dir)
    edges = graph(mods)
    found = [("files", c) for c in sccs(mods, edges)]
    # Folder level: edges between the children of the closest common ancestor.
    sib = {}
    for a, targets in edges.items():
        for b in targets:
            k = 0
            while k < min(len(a), len(b)) and a[k] == b[k]:
                k += 1
            if k < len(a) and k < len(b):
                parent = a[:k]
                sib.setdefault(parent, {}).setdefault(a[:k + 1], set()).add(b[:k + 1])
    for parent, e in sorted(sib.items()):
        nodes = set(e) | {t for ts in e.values() for t in ts}
        for c in sccs(nodes, e):
            found.append(("in " + name(parent), c))
    return mods, edges, found


def main():
    src = sys.argv[1] if len(sys.argv) > 1 else "src"
    mods, edges, found = circles(src)
    if "-v" in sys.argv:
        for m in sorted(edges):
            print(name(m), "->", ", ".join(name(t) for t in sorted(edges[m])))
    seen = set()
    for level, comp in found:
        key = (level if level == "files" else "", tuple(comp))
        text = " <-> ".join(name(m) for m in comp)
        if (level, text) in seen:
            continue
        seen.add((level, text))
        print(f"import circle ({level}): {text}")
    print(f"{len(mods)} modules, {sum(map(len, edges.values()))} edges, {len(seen)} circle(s)")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
