//! `immutable-tags check` prints the effective policy as a table a reviewer of a policy change can
//! read: what is immutable and from where, the exclusions, the rules, deletes, and who may break
//! glass. Run as a user runs it: the built binary, a policy file.
#![cfg(not(target_arch = "wasm32"))]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::path::PathBuf;
use std::process::Command;

fn check(json: &str, name: &str) -> (i32, String) {
    let p: PathBuf =
        std::env::temp_dir().join(format!("immutable-tags-check-table-{}-{name}.json", std::process::id()));
    std::fs::write(&p, json).unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_immutable-tags"))
        .args(["check", p.to_str().unwrap()])
        .output()
        .unwrap();
    (o.status.code().unwrap(), String::from_utf8(o.stdout).unwrap())
}

#[test]
fn check_prints_scopes_exclusions_rules_deletes_and_break_glass_as_a_table() {
    let (code, out) = check(
        r#"{"global": {"immutable_tags": true, "immutable_tags_exclusions": ["^latest$", "^(a|b)$"]},
            "repository": {"dev": {"immutable_tags": false},
                           "prod": {"immutable_tags_exclusions": ["^rc-.*$"]}},
            "rules": [{"name": "releases", "projects": "team-a", "tags": {"matching": "v*.*.*"}},
                      {"tags": {"matching": "**"}, "disabled": true}],
            "deletes": {"blobs": "unprotected"},
            "break_glass": {"principals": ["release-admin", "sre"], "repositories": ["prod/**"], "actions": ["overwrite"]}}"#,
        "full",
    );
    assert_eq!(code, 0, "{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("ok "), "the summary line stays first: {out}");
    for expected in [
        "  | scope | tags immutable | set in | exclusions (tags that stay mutable) | set in |",
        "  | global | yes | global | `^latest$`, `^(a\\|b)$` | global |",
        "  | prod | yes | global | `^rc-.*$` | here |",
        "  | dev | no | here | none apply (tags are mutable) | global |",
        "  | rule (a tag the scopes leave mutable is immutable if one selects it) | selects |",
        "  | rule \"releases\" (rules[0]) | projects matching [\"team-a\"], tags matching [\"v*.*.*\"] |",
        "  disabled rules: 1 (validated, no effect)",
        "  signature tags (sha256-<hex>, .sig, .att, .sbom): mutable (protect_signature_tags = false)",
        "  mode: enforce (refusals are answered)",
        "  deletes: of a manifest an immutable tag holds, or of an immutable tag: refused; blob deletes: let through in repositories no immutable scope or rule can select",
        "  break-glass: release-admin, sre may override an overwrite in prod/**, with a reason in the x-break-glass-reason header",
    ] {
        assert!(lines.contains(&expected), "missing {expected:?} in\n{out}");
    }
}

#[test]
fn check_table_says_when_nothing_is_immutable_and_nobody_may_break_glass() {
    let (code, out) = check(r#"{"mode": "audit", "deletes": {"protect": false}}"#, "empty");
    assert_eq!(code, 0, "{out}");
    for expected in [
        "  | global | no | (unset) | none apply (tags are mutable) | (unset) |",
        "  rules: none",
        "  mode: audit (refusals are logged and counted, and the request is let through)",
        "  deletes: pass unchecked (deletes.protect = false); blob deletes: refused",
        "  break-glass: nobody (break_glass is not set)",
    ] {
        assert!(out.lines().any(|l| l == expected), "missing {expected:?} in\n{out}");
    }
}
