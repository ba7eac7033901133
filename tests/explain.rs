//! The `immutable-tags explain` command, run as a user runs it: the built binary, a policy file.
#![cfg(not(target_arch = "wasm32"))]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use immutable_tags::config::Config;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

const ISSUE_EXAMPLE: &str = r#"{
  "global": {"immutable_tags": false},
  "repository": {"prod": {"immutable_tags": true, "immutable_tags_exclusions": ["^latest$"]}},
  "rules": [
    {"name": "all but scratch tags", "repositories": {"matching": "**"}, "tags": {"excluding": "rc,test,nightly"}},
    {"projects": "team-a", "tags": {"matching": "v*.*.*"}},
    {"projects": {"excluding": "sandbox"}, "tags": {"regex": "\\d+\\.\\d+\\.\\d+"}},
    {"tags": {"matching": "**"}, "disabled": true}
  ]
}"#;

fn policy_file(json: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let p = std::env::temp_dir().join(format!(
        "immutable-tags-explain-{}-{}.json",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::write(&p, json).unwrap();
    p
}

fn run(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_immutable-tags"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.unwrap_or("").as_bytes()).unwrap();
    drop(input);
    child.wait_with_output().unwrap()
}

fn explain(json: &str, reference: &[&str]) -> (i32, String, String) {
    let file = policy_file(json);
    let mut args = vec!["explain", "--config", file.to_str().unwrap()];
    args.extend_from_slice(reference);
    let out = run(&args, None);
    std::fs::remove_file(file).unwrap();
    (
        out.status.code().unwrap(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[test]
fn a_rule_decides() {
    let (code, out, err) = explain(ISSUE_EXAMPLE, &["team-a/api", "v1.2.3"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out,
        "team-a/api:v1.2.3: immutable: a push of a different manifest is refused with 409\n\
         reason: rule \"all but scratch tags\" (rules[0])\n\
         first matching rule: rule \"all but scratch tags\" (rules[0]): repositories matching [\"**\"], tags excluding [\"rc\", \"test\", \"nightly\"]\n\
         scope global: immutable_tags from global, immutable_tags_exclusions from global\n\
         delete: refused with 409\n\
         registry unreachable: the push is refused with 503 (on_upstream_error = refuse)\n\
         size: a manifest over max_manifest_bytes (4194304) is refused with 413\n"
    );
}

#[test]
fn reference_form_and_mutable_tags() {
    let (code, out, _) = explain(ISSUE_EXAMPLE, &["team-a/api:rc"]);
    assert_eq!(code, 0);
    assert_eq!(
        out,
        "team-a/api:rc: mutable: pushes pass unchecked\n\
         reason: global.immutable_tags = false; no rule matches\n\
         first matching rule: none of 3 enabled\n\
         scope global: immutable_tags from global, immutable_tags_exclusions from global\n"
    );
    // prod's exclusion makes `latest` mutable for the scope, but a rule still selects it (OR).
    let (_, out, _) = explain(ISSUE_EXAMPLE, &["prod/web", "latest"]);
    assert!(out.starts_with("prod/web:latest: immutable"), "{out}");
    assert!(out.contains("reason: rule \"all but scratch tags\" (rules[0])\n"), "{out}");
    let (_, out, _) = explain(ISSUE_EXAMPLE, &["prod/web", "rc"]);
    assert!(out.starts_with("prod/web:rc: immutable"), "{out}");
    assert!(out.contains("reason: repository.\"prod\".immutable_tags = true\n"), "the scope decides: {out}");
}

#[test]
fn without_rules_there_is_no_rule_line() {
    let (code, out, _) = explain(r#"{"global": {"immutable_tags": true}}"#, &["app", "v1"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("app:v1: immutable: a push of a different manifest is refused with 409\nreason: global.immutable_tags = true\nscope global:"), "{out}");
    assert!(!out.contains("first matching rule"), "{out}");
}

#[test]
fn config_from_stdin() {
    let out =
        run(&["explain", "--config=-", "app:v1.0.0"], Some(r#"{"rules": [{"tags": {"regex": "^v"}}]}"#));
    assert_eq!(out.status.code(), Some(0));
    let out = String::from_utf8(out.stdout).unwrap();
    assert!(out.contains("reason: rules[0]\n"), "{out}");
}

#[test]
fn invalid_config_prints_the_filters_log_line() {
    let bad = r#"{"rules": [{}, {}, {"tags": {"regex": "(unclosed"}}]}"#;
    let (code, out, err) = explain(bad, &["app", "v1"]);
    assert_eq!(code, 1);
    assert!(out.is_empty(), "{out}");
    let expected = Config::from_json(bad.as_bytes()).unwrap_err();
    assert_eq!(err, format!("immutable-tags {}: {expected}\n", immutable_tags::BUILD));
    assert!(err.contains("field `rules[2].tags.regex` = \"(unclosed\""), "{err}");
}

#[test]
fn usage_errors() {
    for args in [
        &[][..],
        &["explain"][..],
        &["explain", "app", "v1"][..],
        &["explain", "--config"][..],
        &["frobnicate"][..],
        &["explain", "--config", "x.json", "app"][..],
        &["explain", "--config", "x.json", "App", "v1"][..],
        &["explain", "--config", "x.json", "app", "-bad"][..],
        &["explain", "--bogus", "--config", "x.json", "app", "v1"][..],
    ] {
        let out = run(args, None);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(String::from_utf8(out.stderr).unwrap().contains("usage:"), "{args:?}");
    }
    let out = run(&["explain", "--config", "/nonexistent/policy.json", "app", "v1"], None);
    assert_eq!(out.status.code(), Some(1));
    let out = run(&["--help"], None);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8(out.stdout).unwrap().contains("explain --config"));
}

#[test]
fn check_validates_every_file_and_names_the_bad_field() {
    let good = policy_file(ISSUE_EXAMPLE);
    let bad = policy_file(r#"{"rules": [{"tags": {"regex": "("}}]}"#);
    let o = run(&["check", good.to_str().unwrap()], None);
    assert!(o.status.success(), "{o:?}");
    assert!(String::from_utf8_lossy(&o.stdout).starts_with(&format!("ok {}: mode=enforce", good.display())));

    let o = run(&["check", good.to_str().unwrap(), bad.to_str().unwrap()], None);
    assert_eq!(o.status.code(), Some(1));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains(&format!(
            "invalid {}: invalid configuration: field `rules[0].tags.regex`",
            bad.display()
        )),
        "{text}"
    );
    assert_eq!(run(&["check"], None).status.code(), Some(2));
}

#[test]
fn check_and_explain_validate_claims_in_etcd() {
    let good =
        policy_file(r#"{"global": {"immutable_tags": true}, "claims": {"etcd": {"cluster": "etcd"}}}"#);
    let o = run(&["check", good.to_str().unwrap()], None);
    assert!(o.status.success(), "{o:?}");
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains(
            "store=etcd cluster=etcd prefix=/immutable-tags/ timeout_ms=1000 attempt_timeout_ms=250"
        ),
        "{text}"
    );
    for (json, field) in [
        (r#"{"claims": {"etcd": {}}}"#, "claims.etcd.cluster"),
        (r#"{"claims": {"etcd": {"cluster": "etcd", "timeout_ms": 0}}}"#, "claims.etcd.timeout_ms"),
        (r#"{"claims": {"etcd": {"cluster": "etcd", "endpoint": "x"}}}"#, "claims.etcd.endpoint"),
    ] {
        let bad = policy_file(json);
        let o = run(&["check", bad.to_str().unwrap()], None);
        assert_eq!(o.status.code(), Some(1), "{json}");
        assert!(String::from_utf8_lossy(&o.stdout).contains(&format!("field `{field}`")), "{json}: {o:?}");
        let (code, _, err) = explain(json, &["app", "v1"]);
        assert_eq!(code, 1, "{json}");
        assert!(err.contains(&format!("field `{field}`")), "{json}: {err}");
    }
}

const BREAK_GLASS: &str = r#"{"global": {"immutable_tags": true},
  "break_glass": {"principals": ["release-admin", "sre"], "repositories": ["prod/**"], "actions": ["overwrite"]}}"#;

#[test]
fn explain_says_who_may_override_and_why_a_request_would_not() {
    let (code, out, _) = explain(BREAK_GLASS, &["prod/api", "v1"]);
    assert_eq!(code, 0);
    assert!(out.contains("break-glass: overwrite may be overridden by release-admin, sre with the x-break-glass-reason header\n"), "{out}");
    assert!(
        out.contains("break-glass: no delete override: break_glass.actions does not include \"delete\"\n"),
        "{out}"
    );
    let (_, out, _) = explain(BREAK_GLASS, &["dev/api", "v1"]);
    assert!(
        out.contains("no overwrite override: repository 'dev/api' is not in break_glass.repositories"),
        "{out}"
    );
    let (_, out, _) = explain(BREAK_GLASS, &["--as", "bob", "--reason", "CVE", "prod/api", "v1"]);
    assert!(
        out.contains("overwrite by bob: refused: principal 'bob' is not in break_glass.principals"),
        "{out}"
    );
    let (_, out, _) = explain(BREAK_GLASS, &["--as", "sre", "prod/api", "v1"]);
    assert!(out.contains("overwrite by sre: refused: no x-break-glass-reason header"), "{out}");
    let (_, out, _) = explain(BREAK_GLASS, &["--as", "sre", "--reason", "CVE", "prod/api:v1"]);
    assert!(out.contains("overwrite by sre: overridden"), "{out}");
}

#[test]
fn check_prints_break_glass_and_names_its_bad_field() {
    let good = policy_file(BREAK_GLASS);
    let o = run(&["check", good.to_str().unwrap()], None);
    assert!(o.status.success(), "{o:?}");
    let text = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(text.contains("; break_glass: principals [release-admin, sre], repositories [prod/**], actions [overwrite], reason header x-break-glass-reason (at most 256 bytes)"), "{text}");
    let bad = policy_file(r#"{"break_glass": {"principals": "release-admin"}}"#);
    let o = run(&["check", bad.to_str().unwrap()], None);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stdout).contains("field `break_glass.principals`"), "{o:?}");
}

#[test]
fn check_warns_about_an_exclusion_that_matches_one_literal_tag_but_reads_like_a_prefix() {
    let f = policy_file(
        r#"{"global": {"immutable_tags": true, "immutable_tags_exclusions": ["^latest$", "^dev-"]},
        "repository": {"team": {"immutable_tags": true, "immutable_tags_exclusions": ["^rc-.*$", "^nightly"]}}}"#,
    );
    let o = run(&["check", f.to_str().unwrap()], None);
    assert!(o.status.success(), "a warning is not an error: {o:?}");
    let text = String::from_utf8_lossy(&o.stdout);
    let warnings: Vec<&str> = text.lines().filter(|l| l.starts_with("warning ")).collect();
    assert_eq!(warnings.len(), 2, "{text}");
    assert!(
        warnings[0]
            .contains("field `global.immutable_tags_exclusions[1]`: \"^dev-\" matches only the tag \"dev-\""),
        "{text}"
    );
    assert!(
        warnings[1].contains("field `repository.\"team\".immutable_tags_exclusions[1]`: \"^nightly\""),
        "{text}"
    );
    // What it says is what the filter does: dev-123 is immutable under that policy.
    let o = run(&["explain", "--config", f.to_str().unwrap(), "app", "dev-123"], None);
    assert!(String::from_utf8_lossy(&o.stdout).contains("immutable"), "{o:?}");
}

/// The same table src/policy.rs runs through `Policy::decide`: what `explain` says is what the
/// filter decides.
#[test]
fn the_seeds_documented_examples_explained() {
    let table: serde_json::Value = serde_json::from_str(include_str!("seed_examples.json")).unwrap();
    for entry in table.as_array().unwrap() {
        let seed = entry["seed"].as_str().unwrap();
        let policy = entry["policy"].to_string();
        for case in entry["cases"].as_array().unwrap() {
            let (reference, want) = (case[0].as_str().unwrap(), case[1].as_bool().unwrap());
            let (code, out, err) = explain(&policy, &[reference]);
            assert_eq!(code, 0, "{seed}: {reference}: {err}");
            let verdict = if want { "immutable" } else { "mutable" };
            assert!(out.starts_with(&format!("{reference}: {verdict}: ")), "{seed}: {reference}: {out}");
        }
    }
}

#[test]
fn explain_names_the_scope_each_part_came_from() {
    let json = r#"{"repository": {"prod": {"immutable_tags": true}, "prod/legacy": {"immutable_tags_exclusions": ["^latest$"]}}}"#;
    let (_, out, _) = explain(json, &["prod/legacy/app:v1.0.0"]);
    assert!(out.starts_with("prod/legacy/app:v1.0.0: immutable"), "{out}");
    assert!(out.contains("reason: repository.\"prod\".immutable_tags = true\n"), "{out}");
    assert!(out.contains("scope repository.\"prod/legacy\": immutable_tags from repository.\"prod\", immutable_tags_exclusions from repository.\"prod/legacy\"\n"), "{out}");
}

#[test]
fn explain_tells_what_the_filter_does_in_audit_mode_and_other_settings() {
    let (_, out, _) = explain(r#"{"mode": "audit", "global": {"immutable_tags": true}}"#, &["app:v1"]);
    assert!(out.starts_with("app:v1: immutable: a push of a different manifest would be refused; logged and let through (mode = audit)\n"), "{out}");
    assert!(out.contains("delete: would be refused; logged and let through (mode = audit)\n"), "{out}");
    assert!(!out.contains("refused with 409"), "{out}");
    assert!(
        out.contains(
            "size: a manifest over max_manifest_bytes (4194304) is refused with 413, in audit mode too\n"
        ),
        "{out}"
    );
    let (_, out, _) = explain(
        r#"{"global": {"immutable_tags": true}, "deletes": {"protect": false}, "on_upstream_error": "allow"}"#,
        &["app:v1"],
    );
    assert!(out.contains("delete: passes unchecked (deletes.protect = false)\n"), "{out}");
    assert!(
        out.contains("registry unreachable: the push passes unchecked (on_upstream_error = allow)\n"),
        "{out}"
    );
    let (_, out, _) =
        explain(r#"{"global": {"immutable_tags": true}, "pin_immutable_pulls": true}"#, &["app:v1"]);
    let pull =
        "pull: a GET or HEAD whose Accept names all four stored manifest types (OCI manifest and index, \
Docker v2 manifest and list) and that has no query string is sent to the registry by the digest the filter \
knows (pin_immutable_pulls); any other read goes as it came\n";
    assert!(out.contains(pull), "{out}");
    let (_, out, _) = explain(
        r#"{"global": {"immutable_tags": true}, "pin_immutable_pulls": true, "upstream": {"cluster": "r", "authority": "reg.example"}}"#,
        &["app:v1"],
    );
    assert!(out.contains("has no query string and is sent under :authority reg.example is sent"), "{out}");
    let (_, out, _) = explain(r#"{"mode": "audit", "global": {"immutable_tags": false}}"#, &["app:v1"]);
    assert!(out.starts_with("app:v1: mutable: pushes pass unchecked\n"), "{out}");
}

const NEVER: &str = r#"{"global": {"immutable_tags": true, "immutable_tags_exclusions": ["^Latest/x$"]},
  "repository": {"dev": {"immutable_tags": false, "immutable_tags_exclusions": ["^x$"]}, "empty": {}},
  "rules": [
    {"projects": "*", "repositories": {"matching": "Team-A/**"}},
    {"tags": {"matching": "release/*"}},
    {"tags": {"regex": "^v\\d+$x"}},
    {"projects": ["ok", "Team-B"], "repositories": {"matching": "app,App"}, "tags": {"excluding": ["rc", "a b"]}},
    {"repositories": {"matching": "**"}, "tags": {"regex": "^v\\d+$"}}
  ]}"#;

#[test]
fn check_warns_on_selectors_and_scopes_that_can_never_apply() {
    let f = policy_file(NEVER);
    let o = run(&["check", f.to_str().unwrap()], None);
    assert!(o.status.success(), "warnings are not errors without --strict: {o:?}");
    let text = String::from_utf8_lossy(&o.stdout).to_string();
    for field in [
        "global.immutable_tags_exclusions[0]",
        "repository.\"dev\".immutable_tags_exclusions",
        "repository.\"empty\"",
        "rules[0].repositories.matching",
        "rules[1].tags.matching",
        "rules[2].tags.regex",
        "rules[3].projects[1]",
        "rules[3].repositories.matching",
        "rules[3].tags.excluding[1]",
    ] {
        assert!(text.contains(&format!(": field `{field}`: ")), "{field}: {text}");
    }
    let warnings = text.lines().filter(|l| l.starts_with("warning ")).count();
    assert_eq!(warnings, 9, "nothing about what can match: {text}");
    assert!(text.contains("\"Team-A/**\" can never match"), "{text}");
    assert!(text.contains("\"release/*\" can never match a tag"), "{text}");
    assert!(text.contains("\"^v\\\\d+$x\" can never match a tag"), "{text}");
    assert!(text.contains("\"App\" can never match"), "{text}");
    // --strict: the same warnings fail the check, for CI.
    let o = run(&["check", "--strict", f.to_str().unwrap()], None);
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    let good = policy_file(ISSUE_EXAMPLE);
    let o = run(&["check", "--strict", good.to_str().unwrap()], None);
    assert!(o.status.success(), "{o:?}");
}

#[test]
fn check_refuses_a_scope_whose_inherited_setting_would_protect_less() {
    // Before nested scopes inherited, `dev/keep` took global's `true`; now `dev`'s `false`:
    // refused at load (the filter's own refusal), not only warned about.
    let f = policy_file(
        r#"{"global": {"immutable_tags": true}, "repository": {"dev": {"immutable_tags": false}, "dev/keep": {"immutable_tags_exclusions": ["^x$"]}}}"#,
    );
    let o = run(&["check", f.to_str().unwrap()], None);
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    let text = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(
        text.contains("field `repository.\"dev/keep\".immutable_tags` = (unset): inherits false from repository.\"dev\".immutable_tags"),
        "{text}"
    );
}

#[test]
fn a_full_path_rule_is_refused_with_its_migration() {
    let (code, _, err) =
        explain(r#"{"rules": [{"repositories": {"matching": "team-a/**"}}]}"#, &["team-a/api:v1"]);
    assert_eq!(code, 1);
    assert!(err.contains("field `rules[0].repositories.matching` = \"team-a/**\": repositories match the name below the project"), "{err}");
}

/// Attack review F3: a scope's exclusions apply below it where a nested scope turns
/// `immutable_tags` on, so `check` must not call them dead there.
#[test]
fn check_does_not_call_exclusions_dead_that_a_nested_immutable_scope_inherits() {
    let json = r#"{"global": {"immutable_tags": true},
        "repository": {"dev": {"immutable_tags": false, "immutable_tags_exclusions": [".*"]},
                       "dev/release": {"immutable_tags": true}}}"#;
    let (_, out, _) = explain(json, &["dev/release/app:v1.0.0"]);
    assert!(out.contains("repository.\"dev\".immutable_tags_exclusions"), "the exclusion decides: {out}");
    let f = policy_file(json);
    let o = run(&["check", f.to_str().unwrap()], None);
    let text = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(!text.contains("never apply"), "{text}");
    // It still names what differs from before (global's exclusions applied to dev/release).
    assert!(
        text.contains(
            "field `repository.\"dev/release\"`: inherits immutable_tags_exclusions from repository.\"dev\""
        ),
        "{text}"
    );
    // With no immutable scope below, they are dead.
    let f = policy_file(
        r#"{"global": {"immutable_tags": true},
        "repository": {"dev": {"immutable_tags": false, "immutable_tags_exclusions": [".*"]}, "dev/x": {"immutable_tags": false}}}"#,
    );
    let o = run(&["check", f.to_str().unwrap()], None);
    let text = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(text.contains("field `repository.\"dev\".immutable_tags_exclusions`: never apply: immutable_tags is false here (from repository.\"dev\") and in every scope that inherits them"), "{text}");
}

/// The effective policy `check` prints (and the filter logs at load): each scope's resolved
/// fields and where each came from.
#[test]
fn check_prints_each_scopes_resolved_fields_and_their_origin() {
    let f = policy_file(
        r#"{"global": {"immutable_tags": true, "immutable_tags_exclusions": ["^g$"]},
        "repository": {"team": {"immutable_tags_exclusions": ["^t$", "^u$"]}, "team/a": {"immutable_tags": false}, "team/a/b": {"immutable_tags": true}}}"#,
    );
    let o = run(&["check", f.to_str().unwrap()], None);
    let text = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(text.contains("global: immutable_tags=true exclusions=1; repositories: ["), "{text}");
    assert!(
        text.contains(r#"team/a/b: immutable_tags=true (here) exclusions=2 (from repository."team")"#),
        "{text}"
    );
    assert!(
        text.contains(r#"team/a: immutable_tags=false (here) exclusions=2 (from repository."team")"#),
        "{text}"
    );
    assert!(text.contains(r#"team: immutable_tags=true (from global) exclusions=2 (here)"#), "{text}");
}
