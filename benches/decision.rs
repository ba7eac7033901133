//! Policy decision time with 1 vs 1,000 exclusion patterns, 1 vs 1,000 repository scopes and
//! 1 vs 1,000 rules (the pure core, natively). `cargo bench --bench decision` measures; run
//! without `--bench` (as `cargo test --all-targets` does) it only checks that it works, in a blink.
//! Prints one JSON line per case for bench/bench.py.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use immutable_tags::config::Config;
use std::hint::black_box;
use std::time::Instant;

/// A policy with `n` exclusion patterns in the global scope.
fn exclusions(n: usize) -> Config {
    let list: Vec<String> = (0..n).map(|i| format!("^feature-{i}-.*$")).collect();
    let json = serde_json::json!({"global": {"immutable_tags": true, "immutable_tags_exclusions": list}});
    Config::from_json(json.to_string().as_bytes()).unwrap()
}

/// A policy with `n` repository scopes, each with its own exclusion.
fn scopes(n: usize) -> Config {
    let repos: serde_json::Map<String, serde_json::Value> = (0..n)
        .map(|i| (format!("team{i}/app"), serde_json::json!({"immutable_tags": true, "immutable_tags_exclusions": [format!("^dev-{i}$")]})))
        .collect();
    let json = serde_json::json!({"global": {"immutable_tags": true}, "repository": repos});
    Config::from_json(json.to_string().as_bytes()).unwrap()
}

/// A policy of `n` glob rules in the Harbor/STACKIT form, rule i protecting tags `dev-*` of the
/// repositories `app/**` of project `team<i>`, then one GitLab-style regex rule (so that `queries` hits the
/// same kinds of rules for any `n`).
fn rules(n: usize) -> Config {
    let mut list: Vec<serde_json::Value> = (0..n)
        .map(|i| serde_json::json!({"name": format!("r{i}"), "projects": format!("team{i}"), "repositories": {"matching": "app/**"}, "tags": {"matching": "dev-*"}}))
        .collect();
    list.push(serde_json::json!({"name": "features", "tags": {"regex": "^feature-\\d+-"}}));
    Config::from_json(serde_json::json!({"rules": list}).to_string().as_bytes()).unwrap()
}

type Case = (&'static str, fn(usize) -> Config);
const CASES: [Case; 3] =
    [("exclusion patterns", exclusions), ("repository scopes", scopes), ("rules", rules)];

/// The same mix of work for any `n`: a third of the requests match an exclusion pattern, a
/// third fall in a repository scope and match its pattern, a third miss everything (the full
/// pass). Only which pattern or scope they hit depends on `n`.
fn queries(n: usize) -> Vec<(String, String)> {
    let mut q = Vec::new();
    for i in 0..64 {
        q.push((format!("other/svc{i}"), format!("v1.{i}.0")));
        q.push((format!("other/svc{i}"), format!("feature-{}-x", (i * 7) % n)));
        q.push((format!("team{}/app/api", (i * 13) % n), format!("dev-{}", (i * 13) % n)));
    }
    q
}

/// Nanoseconds per decision: the median of `rounds` timed passes over the queries.
fn time(config: &Config, queries: &[(String, String)], passes: usize, rounds: usize) -> f64 {
    let mut samples = Vec::new();
    for _ in 0..rounds {
        let start = Instant::now();
        for _ in 0..passes {
            for (repo, tag) in queries {
                black_box(config.policy.decide(black_box(repo), black_box(tag)));
            }
        }
        samples.push(start.elapsed().as_nanos() as f64 / (passes * queries.len()) as f64);
    }
    samples.sort_by(|a, b| a.total_cmp(b));
    samples[samples.len() / 2]
}

fn main() {
    let measure = std::env::args().any(|a| a == "--bench");
    let (passes, rounds) = if measure { (300, 7) } else { (1, 1) };
    for (name, build) in CASES {
        let (one, many) = (build(1), build(1000));
        let (q1, q1000) = (queries(1), queries(1000));
        time(&one, &q1, passes, 1); // warm the lazy DFAs' caches
        time(&many, &q1000, passes, 1);
        let t1 = time(&one, &q1, passes, rounds);
        let t1000 = time(&many, &q1000, passes, rounds);
        println!(
            "{}",
            serde_json::json!({"bench": "decision", "case": name, "ns_1": t1, "ns_1000": t1000, "ratio": t1000 / t1})
        );
    }
}
