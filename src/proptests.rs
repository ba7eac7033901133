//! Property tests over the pure core, with random and adversarial input: nothing panics, and
//! the invariants the filter's promise rests on hold. `cargo fuzz` needs a nightly toolchain;
//! proptest runs on stable, in `cargo test`, in CI. `PROPTEST_CASES=N` runs every property N
//! times instead of the counts below (e.g. for a long run before a release); N must be a positive
//! number: `0` (or garbage) would run no case and pass, so it fails every property instead.
//!
//! Native only: proptest is not a wasm32 dev-dependency.

use crate::config::Config;
use crate::oci::digest::Digest;
use crate::oci::request::{
    classify, is_valid_name, is_valid_tag, may_name_blobs, may_name_manifests, Reference, Request,
};
use crate::policy::is_signature_tag;
use crate::store::claims::{self, Claim, Slot, MAX_RECORDS};
use crate::store::tag_cache::TagCache;
use proptest::prelude::*;
use proptest::test_runner::Config as ProptestConfig;

pub(crate) fn cases(default: u32) -> ProptestConfig {
    let n = match std::env::var("PROPTEST_CASES") {
        Err(_) => default,
        Ok(v) => match v.trim().parse::<u32>() {
            Ok(n) if n > 0 => n,
            _ => panic!("PROPTEST_CASES={v:?}: set a positive number of cases, or unset it (0 runs nothing)"),
        },
    };
    ProptestConfig { cases: n, failure_persistence: None, ..ProptestConfig::default() }
}

// --- strategies ------------------------------------------------------------------------------

fn name_component() -> impl Strategy<Value = String> {
    "[a-z0-9]{1,6}((\\.|_|__|-{1,3})[a-z0-9]{1,6}){0,2}"
}

fn valid_name() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::collection::vec(name_component(), 1..4).prop_map(|c| c.join("/")),
        // Names with a `manifests` component, the awkward case for splitting.
        (name_component(), name_component()).prop_map(|(a, b)| format!("{a}/manifests/{b}")),
    ]
    .prop_filter("OCI name", |n| is_valid_name(n))
}

fn valid_tag() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-zA-Z0-9_][a-zA-Z0-9._-]{0,20}",
        Just("manifests".to_string()),
        "[a-zA-Z0-9_][a-zA-Z0-9._-]{100,127}"
    ]
}

/// Pieces hostile paths are made of.
fn hostile_path() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("/".to_string()),
        Just("//".to_string()),
        Just("v2".to_string()),
        Just("V2".to_string()),
        Just("manifests".to_string()),
        Just("MaNiFeStS".to_string()),
        Just(".".to_string()),
        Just("..".to_string()),
        Just(";".to_string()),
        Just("?".to_string()),
        Just("&".to_string()),
        Just("tag=".to_string()),
        Just("%".to_string()),
        Just("%2F".to_string()),
        Just("%2f".to_string()),
        Just("%2e".to_string()),
        Just("%00".to_string()),
        Just("%ff".to_string()),
        Just("%zz".to_string()),
        Just("sha256:".to_string()),
        "[0-9a-f]{1,64}",
        "[a-zA-Z0-9._-]{1,8}",
        any::<char>().prop_map(String::from),
    ];
    prop::collection::vec(piece, 0..24).prop_map(|p| p.concat())
}

fn method() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("PUT".to_string()),
        Just("put".to_string()),
        Just("DELETE".to_string()),
        Just("GET".to_string()),
        Just("HEAD".to_string()),
        Just("POST".to_string()),
        ".{0,8}",
    ]
}

/// Percent-encodes each byte of `s` where `mask` says so, with upper- or lower-case hex.
fn encode(s: &str, mask: &[u8]) -> String {
    s.bytes()
        .enumerate()
        .map(|(i, b)| match mask.get(i % mask.len().max(1)).copied().unwrap_or(0) % 4 {
            1 => format!("%{b:02X}"),
            2 => format!("%{b:02x}"),
            _ => (b as char).to_string(),
        })
        .collect()
}

fn mentions_manifests(s: &str) -> bool {
    s.to_ascii_lowercase().contains("manifests")
}

fn json_value() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::Value;
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        ".{0,12}".prop_map(Value::String),
        Just(Value::String("(unclosed".into())),
        Just(Value::String("^(?!v[0-9]+$).*$".into())),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        let keys = prop_oneof![
            Just("upstream".to_string()),
            Just("global".to_string()),
            Just("repository".to_string()),
            Just("immutable_tags".to_string()),
            Just("immutable_tags_exclusions".to_string()),
            Just("cache".to_string()),
            Just("claims".to_string()),
            Just("on_upstream_error".to_string()),
            Just("error_code".to_string()),
            Just("timeout_ms".to_string()),
            Just("slots".to_string()),
            "[a-z/_]{1,8}",
        ];
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(keys, inner, 0..5)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A valid policy: random scopes over a small alphabet of names, exclusions from a menu that
/// includes look-around patterns.
fn policy_json() -> impl Strategy<Value = String> {
    let pattern = prop_oneof![
        Just("^latest$"),
        Just("^rc-.*$"),
        Just("^(?!v[0-9]+\\\\.[0-9]+\\\\.[0-9]+$).*$"),
        Just("^.*-SNAPSHOT$"),
        Just("v\\\\d+"),
        Just("(?=a)a+"),
    ];
    let scope =
        (prop::option::of(any::<bool>()), prop::collection::vec(pattern, 0..3)).prop_map(|(imm, ex)| {
            let mut parts = Vec::new();
            if let Some(b) = imm {
                parts.push(format!("\"immutable_tags\": {b}"));
            }
            let list: Vec<String> = ex.iter().map(|p| format!("\"{p}\"")).collect();
            parts.push(format!("\"immutable_tags_exclusions\": [{}]", list.join(", ")));
            format!("{{{}}}", parts.join(", "))
        });
    let key = prop_oneof![Just("a"), Just("a/b"), Just("b"), Just("a/b/c"), Just("manifests")];
    (scope.clone(), prop::collection::btree_map(key, scope, 0..4), any::<bool>()).prop_map(
        |(g, repos, sig)| {
            let r: Vec<String> = repos.iter().map(|(k, s)| format!("\"{k}\": {s}")).collect();
            format!(
                "{{\"global\": {g}, \"repository\": {{{}}}, \"protect_signature_tags\": {sig}}}",
                r.join(", ")
            )
        },
    )
}

#[derive(Debug, Clone)]
enum Op {
    Claim { key: usize, digest: usize },
    Commit { key: usize, digest: usize },
    Release { key: usize, digest: usize },
    Wait(u64),
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    let op = prop_oneof![
        4 => (0..24usize, 0..3usize).prop_map(|(key, digest)| Op::Claim { key, digest }),
        2 => (0..24usize, 0..3usize).prop_map(|(key, digest)| Op::Commit { key, digest }),
        2 => (0..24usize, 0..3usize).prop_map(|(key, digest)| Op::Release { key, digest }),
        1 => (0..30_000u64).prop_map(Op::Wait),
    ];
    prop::collection::vec(op, 0..80)
}

// --- properties ------------------------------------------------------------------------------

proptest! {
    #![proptest_config(cases(3000))]

    /// No method and path panic, and what comes out is always well-formed.
    #[test]
    fn classify_never_panics(m in method(), path in hostile_path(), noise in ".{0,40}") {
        for p in [path.clone(), format!("/v2/{path}"), noise.clone(), format!("/v2/{noise}/manifests/{path}")] {
            // The glue skips everything the pre-filter rules out: it must rule out only Other.
            if !(may_name_manifests(&p) || (may_name_blobs(&p) && m.eq_ignore_ascii_case("DELETE"))) {
                prop_assert_eq!(classify(&m, &p), Request::Other, "{}", p);
            }
            match classify(&m, &p) {
                Request::ManifestPut { repository, tags, reference } => {
                    prop_assert!(is_valid_name(&repository));
                    prop_assert!(tags.iter().all(|t| is_valid_tag(t)));
                    if let Reference::Tag(t) = reference {
                        prop_assert_eq!(tags.first(), Some(&t));
                    }
                }
                Request::ManifestDelete { repository, .. } | Request::ManifestRead { repository, .. } => {
                    prop_assert!(is_valid_name(&repository));
                }
                Request::BlobDelete { repository } => prop_assert!(is_valid_name(&repository)),
                Request::Invalid(e) => prop_assert_eq!(e.status, 400),
                Request::Other => {}
            }
        }
    }
}

proptest! {
    #![proptest_config(cases(5000))]

    /// A write whose path says "manifests" anywhere is judged or refused, never waved through.
    #[test]
    fn manifest_writes_are_never_other(path in hostile_path(), write in prop_oneof![Just("PUT"), Just("put"), Just("DELETE")]) {
        let before_query = path.split_once('?').map_or(path.as_str(), |(p, _)| p);
        if mentions_manifests(before_query) {
            prop_assert_ne!(classify(write, &path), Request::Other, "{}", path);
        }
    }
}

proptest! {
    #![proptest_config(cases(5000))]

    /// decode ∘ encode: however a valid tag path is percent-encoded (upper or lower hex, any
    /// subset of bytes), the filter reads the same repository and tag the registry will.
    #[test]
    fn encoded_tag_paths_read_like_the_registry(name in valid_name(), tag in valid_tag(),
                                                mask in prop::collection::vec(any::<u8>(), 1..64),
                                                query in prop::option::of("[a-z]{1,5}=[a-z0-9]{0,5}")) {
        let plain = format!("/v2/{name}/manifests/{tag}");
        let mut path = format!("/v2/{}/manifests/{}", encode(&name, &mask), encode(&tag, &mask[mask.len() / 2..]));
        if let Some(q) = query.filter(|q| !q.starts_with("tag=")) {
            path = format!("{path}?{q}");
        }
        let want = Request::ManifestPut { repository: name.clone(), reference: Reference::Tag(tag.clone()), tags: vec![tag.clone()] };
        prop_assert_eq!(classify("PUT", &plain), want.clone());
        prop_assert_eq!(classify("PUT", &path), want, "{}", path);
    }
}

proptest! {
    #![proptest_config(cases(3000))]

    /// Any JSON at all, or any bytes: a Config or a ConfigError naming a field, never a panic.
    #[test]
    fn config_parsing_never_panics(v in json_value(), bytes in prop::collection::vec(any::<u8>(), 0..64)) {
        for input in [v.to_string().into_bytes(), bytes] {
            if let Err(e) = Config::from_json(&input) {
                prop_assert!(!e.field.is_empty());
                prop_assert!(e.to_string().starts_with("invalid configuration"));
            }
        }
    }
}

proptest! {
    #![proptest_config(cases(1000))]

    /// Policy evaluation on random valid policies and hostile names and tags.
    #[test]
    fn policy_evaluation_invariants(json in policy_json(), repo in "[a-z/]{0,8}|a/b/c|manifests", tag in ".{0,20}|sha256-[0-9a-f]{64}(\\.sig)?") {
        let config = Config::from_json(json.as_bytes());
        // A scope that would lose global's protection by inheriting is refused at load.
        prop_assume!(!config.as_ref().is_err_and(crate::config::ConfigError::is_lost_global_protection));
        prop_assert!(config.is_ok(), "{} -> {:?}", json, config.err());
        let Ok(c) = config else { return Ok(()) };
        let d = c.policy.decide(&repo, &tag);
        prop_assert!(!d.reason.is_empty());
        if !c.policy.may_protect_anything() {
            prop_assert!(!d.immutable, "nothing enabled, yet {}:{} is immutable: {}", repo, tag, d.reason);
        }
        if !c.policy.protect_signature_tags && is_signature_tag(&tag) {
            prop_assert!(!d.immutable);
        }
        prop_assert_eq!(c.policy.decide(&repo, &tag), d, "deterministic");
    }
}

proptest! {
    #![proptest_config(cases(2000))]

    /// Claims: random sequences of claims, commits, releases and time; the slot stays bounded,
    /// one record per tag, round-trips, and a live claim always fences another digest.
    #[test]
    fn claims_invariants(ops in ops(), junk in prop::collection::vec(any::<u8>(), 0..200)) {
        const TTL: u64 = 60_000;
        let keys: Vec<(String, String)> = (0..24).map(|i| (format!("r{}", i % 3), format!("t{i}"))).collect();
        let digests = ["sha256:aa", "sha256:bb", "sha256:cc"];
        // A view taken now: the slot's counter, read before its HEAD.
        let view = |slot: &[u8]| claims::View { order: claims::slot_counter(slot), absent: false };
        let mut slot = claims::empty_slot();
        let mut now = 0u64;
        for op in ops {
            match op {
                Op::Wait(ms) => now += ms,
                Op::Claim { key, digest } => {
                    let (r, t) = &keys[key];
                    match claims::claim(&slot, r, t, digests[digest], view(&slot), now, TTL) {
                        Claim::Write(b) => {
                            slot = b;
                            let other = digests[(digest + 1) % digests.len()];
                            let conflict = matches!(claims::claim(&slot, r, t, other, view(&slot), now, TTL), Claim::Conflict { .. });
                            prop_assert!(conflict, "a live claim fences another digest");
                        }
                        Claim::Full => {
                            // Nothing live is evicted (a committed record still fences stale views).
                            let live = Slot::decode(&slot).records.iter().filter(|x| x.rec.live(now, TTL)).count();
                            prop_assert!(live >= MAX_RECORDS, "refused only when full of live records");
                        }
                        Claim::Conflict { .. } => {}
                    }
                }
                Op::Commit { key, digest } => {
                    let (r, t) = &keys[key];
                    let before = view(&slot);
                    if let Some(b) = claims::commit(&slot, r, t, digests[digest], now, now, TTL) {
                        slot = b;
                        let other = digests[(digest + 1) % digests.len()];
                        let stale = matches!(claims::claim(&slot, r, t, other, before, now, TTL), Claim::Conflict { committed: true, .. });
                        prop_assert!(stale, "a committed change fences every view not newer than it");
                    }
                }
                Op::Release { key, digest } => {
                    let (r, t) = &keys[key];
                    if let Some(b) = claims::release(&slot, r, t, digests[digest], now, now, TTL) {
                        slot = b;
                    }
                }
            }
            let s = Slot::decode(&slot);
            prop_assert!(s.records.len() <= MAX_RECORDS);
            let mut seen = std::collections::HashSet::new();
            prop_assert!(s.records.iter().all(|x| seen.insert((x.repository.clone(), x.tag.clone()))), "one record per tag");
            prop_assert_eq!(s.encode(), slot.clone(), "round trip");
        }
        // Garbage never panics, and decoding is stable.
        let mut bytes = slot.clone();
        bytes.extend_from_slice(&junk);
        let once = Slot::decode(&bytes);
        prop_assert_eq!(Slot::decode(&once.encode()), once);
        prop_assert!(claims::slot_index(&[3; 16], "r", &String::from_utf8_lossy(&junk), 7) < 7);
    }
}

proptest! {
    #![proptest_config(cases(1000))]

    /// The per-worker tag map never holds more than its maximum, whatever is pushed.
    #[test]
    fn tag_map_is_bounded(cap in 1usize..16, tags in prop::collection::vec((0..4u8, 0..64u16, 0u64..200_000), 0..400)) {
        let mut c = TagCache::new(cap, 60);
        let d = Digest::sha256(b"m");
        for (repo, tag, now) in tags {
            let (repo, tag) = (format!("r{repo}"), format!("t{tag}"));
            match now % 3 {
                0 => c.put(&repo, &tag, d.clone(), now),
                1 => { let _ = c.get(&repo, &tag, now); }
                _ => c.forget(&repo, &tag),
            }
            prop_assert!(c.len() <= cap);
        }
    }
}

/// Far more distinct tags than the maximum, through the calls the filter makes on every HEAD
/// answer and every stored push.
#[test]
fn tag_map_stays_bounded_under_a_flood_of_distinct_tags() {
    let mut c = TagCache::new(1000, 60);
    let d = Digest::sha256(b"m");
    for i in 0..200_000u64 {
        c.put(&format!("repo{}", i % 97), &format!("v{i}"), d.clone(), i);
        assert!(c.len() <= 1000);
    }
    assert_eq!(c.len(), 1000);
    assert_eq!(c.capacity(), 1000);
}

/// Claims memory: every slot is bounded whatever the flood; the total is slots x that.
#[test]
fn claim_slots_stay_bounded_under_a_flood_of_distinct_tags() {
    let slots = 8u32;
    let mut data: Vec<Vec<u8>> = (0..slots).map(|_| claims::empty_slot()).collect();
    let mut refused = 0;
    for i in 0..20_000u64 {
        let tag = format!("v{i}");
        let idx = claims::slot_index(&[3; 16], "app", &tag, slots) as usize;
        match claims::claim(
            &data[idx],
            "app",
            &tag,
            "sha256:aa",
            claims::View { order: i, absent: true },
            i,
            60_000,
        ) {
            Claim::Write(b) => data[idx] = b,
            Claim::Full => refused += 1,
            other => panic!("{other:?}"),
        }
        assert!(Slot::decode(&data[idx]).records.len() <= MAX_RECORDS);
        assert!(data[idx].len() <= 16 + MAX_RECORDS * 64, "{}", data[idx].len());
    }
    assert!(refused > 0, "a flood within one TTL is refused, not stored");
}
