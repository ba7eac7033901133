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
    {"repositories": {"matching": ["team-a/**", "team-b/api"]}, "tags": {"matching": "v*.*.*"}},
    {"repositories": {"excluding": "sandbox/**"}, "tags": {"regex": "\\d+\\.\\d+\\.\\d+"}},
    {"tags": {"matching": "**"}, "disabled": true}
  ]
}"#;

fn policy_file(json: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let p = std::env::temp_dir().join(format!("immutable-tags-explain-{}-{}.json", std::process::id(), N.fetch_add(1, Ordering::Relaxed)));
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
    (out.status.code().unwrap(), String::from_utf8(out.stdout).unwrap(), String::from_utf8(out.stderr).unwrap())
}

#[test]
fn a_rule_decides() {
    let (code, out, err) = explain(ISSUE_EXAMPLE, &["team-a/api", "v1.2.3"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out,
        "team-a/api:v1.2.3: immutable: a push of a different manifest is refused with 409\n\
         reason: rule \"all but scratch tags\" (rules[0])\n\
         first matching rule: rule \"all but scratch tags\" (rules[0]): repositories matching [\"**\"], tags excluding [\"rc\", \"test\", \"nightly\"]\n"
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
         first matching rule: none of 3 enabled\n"
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
    assert_eq!(out, "app:v1: immutable: a push of a different manifest is refused with 409\nreason: global.immutable_tags = true\n");
}

#[test]
fn config_from_stdin() {
    let out = run(&["explain", "--config=-", "app:v1.0.0"], Some(r#"{"rules": [{"tags": {"regex": "^v"}}]}"#));
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
    assert!(text.contains(&format!("invalid {}: invalid configuration: field `rules[0].tags.regex`", bad.display())), "{text}");
    assert_eq!(run(&["check"], None).status.code(), Some(2));
}

#[test]
fn check_and_explain_validate_claims_in_etcd() {
    let good = policy_file(r#"{"global": {"immutable_tags": true}, "claims": {"etcd": {"cluster": "etcd"}}}"#);
    let o = run(&["check", good.to_str().unwrap()], None);
    assert!(o.status.success(), "{o:?}");
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("store=etcd cluster=etcd prefix=/immutable-tags/ timeout_ms=1000"), "{text}");
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
    assert!(out.contains("break-glass: no delete override: break_glass.actions does not include \"delete\"\n"), "{out}");
    let (_, out, _) = explain(BREAK_GLASS, &["dev/api", "v1"]);
    assert!(out.contains("no overwrite override: repository 'dev/api' is not in break_glass.repositories"), "{out}");
    let (_, out, _) = explain(BREAK_GLASS, &["--as", "bob", "--reason", "CVE", "prod/api", "v1"]);
    assert!(out.contains("overwrite by bob: refused: principal 'bob' is not in break_glass.principals"), "{out}");
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
    let f = policy_file(r#"{"global": {"immutable_tags": true, "immutable_tags_exclusions": ["^latest$", "^dev-"]},
        "repository": {"team": {"immutable_tags": true, "immutable_tags_exclusions": ["^rc-.*$", "^nightly"]}}}"#);
    let o = run(&["check", f.to_str().unwrap()], None);
    assert!(o.status.success(), "a warning is not an error: {o:?}");
    let text = String::from_utf8_lossy(&o.stdout);
    let warnings: Vec<&str> = text.lines().filter(|l| l.starts_with("warning ")).collect();
    assert_eq!(warnings.len(), 2, "{text}");
    assert!(warnings[0].contains("field `global.immutable_tags_exclusions[1]`: \"^dev-\" matches only the tag \"dev-\""), "{text}");
    assert!(warnings[1].contains("field `repository.\"team\".immutable_tags_exclusions[1]`: \"^nightly\""), "{text}");
    // What it says is what the filter does: dev-123 is immutable under that policy.
    let o = run(&["explain", "--config", f.to_str().unwrap(), "app", "dev-123"], None);
    assert!(String::from_utf8_lossy(&o.stdout).contains("immutable"), "{o:?}");
}
