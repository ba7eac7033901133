//! Pull pinning across queries and authorities (attack review F2): a read with a query string,
//! or sent under another `:authority` than the filter's own calls, may reach another upstream
//! (containerd's `?ns=` mirror convention, a Host-routed registry): it neither teaches the map
//! nor is pinned.
//! Also: no pinning without `pin_immutable_pulls`, and what a pinned read learns and forgets.
use super::fake::{sha, worker, FakeHost};
use super::*;
use crate::filter::host::Host;
use crate::filter::worker::Worker;
use crate::filter::{Action, Filter};
use std::rc::Rc;

const PINNING: &str = r#"{"upstream": {"cluster": "registry"}, "pin_immutable_pulls": true, "global": {"immutable_tags": true}}"#;
const PINNING_AUTHORITY: &str = r#"{"upstream": {"cluster": "registry", "authority": "registry.example"},
    "pin_immutable_pulls": true, "global": {"immutable_tags": true}}"#;
const M1: &[u8] = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","n":1}"#;
const EVIL: &[u8] =
    br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","n":666}"#;
const OCI: &str = "application/vnd.oci.image.manifest.v1+json";
const FULL: &str = "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, \
application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json";

/// A client GET of `path` (every stored type in Accept) under `authority`, answered `body`:
/// the `:path` the registry was asked.
fn read(h: &FakeHost, w: &Rc<Worker>, path: &str, authority: &str, body: &[u8]) -> String {
    let mut f = Filter::new(Some(w.clone()));
    h.request("GET", path, &[("accept", FULL)]);
    h.set_request_header(":authority", authority).unwrap();
    let action = match Filter::first_look(h) {
        Some(p) => f.on_request_headers(h, p, true),
        None => Action::Continue,
    };
    assert_eq!(action, Action::Continue);
    let sent = h.request_header_value(":path").unwrap();
    *h.response_headers.borrow_mut() =
        [(":status", "200"), ("content-type", OCI), ("docker-content-digest", &sha(body))]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
    assert_eq!(f.on_response_headers(h), Action::Continue);
    f.on_done(h);
    sent
}

#[test]
fn a_read_with_a_query_teaches_nothing() {
    let h = FakeHost::new();
    let w = worker(&h, PINNING);
    // The attacker's read goes to their own upstream namespace.
    let evil = "/v2/library/app/manifests/v1?ns=evil.example";
    assert_eq!(read(&h, &w, evil, "mirror.example", EVIL), evil);
    // Neither a victim's read with another query nor one without is pinned to that digest.
    let victim = "/v2/library/app/manifests/v1?ns=docker.io";
    assert_eq!(read(&h, &w, victim, "mirror.example", M1), victim);
    assert_eq!(
        read(&h, &w, "/v2/library/app/manifests/v1", "mirror.example", M1),
        "/v2/library/app/manifests/v1"
    );
}

#[test]
fn a_read_with_a_query_is_not_pinned() {
    let h = FakeHost::new();
    let w = worker(&h, PINNING);
    // A plain read teaches the map (the control) ...
    assert_eq!(read(&h, &w, "/v2/app/manifests/v1", "mirror.example", M1), "/v2/app/manifests/v1");
    assert_eq!(
        read(&h, &w, "/v2/app/manifests/v1", "mirror.example", M1),
        format!("/v2/app/manifests/{}", sha(M1))
    );
    // ... but a read whose query may pick another upstream goes as it came.
    let other = "/v2/app/manifests/v1?ns=docker.io";
    assert_eq!(read(&h, &w, other, "mirror.example", EVIL), other);
    assert_eq!(read(&h, &w, "/v2/app/manifests/v1?", "mirror.example", EVIL), "/v2/app/manifests/v1?");
}

#[test]
fn a_read_under_another_authority_than_the_calls_neither_teaches_nor_is_pinned() {
    let h = FakeHost::new();
    let w = worker(&h, PINNING_AUTHORITY);
    // Sent under another Host than the filter's calls: may be another registry.
    assert_eq!(read(&h, &w, "/v2/app/manifests/v1", "other-registry.example", EVIL), "/v2/app/manifests/v1");
    assert_eq!(read(&h, &w, "/v2/app/manifests/v1", "registry.example", M1), "/v2/app/manifests/v1");
    // Under the calls' authority (any case): taught, then pinned; the other Host still is not.
    assert_eq!(
        read(&h, &w, "/v2/app/manifests/v1", "Registry.Example", M1),
        format!("/v2/app/manifests/{}", sha(M1))
    );
    assert_eq!(read(&h, &w, "/v2/app/manifests/v1", "other-registry.example", EVIL), "/v2/app/manifests/v1");
}

// ---- Pinning off without `pin_immutable_pulls`; what a pinned read learns and forgets.

#[test]
fn reads_are_not_pinned_without_pin_immutable_pulls() {
    let h = FakeHost::new();
    let w = worker(&h, POLICY);
    assert_eq!(push(&h, &w, "v1", M1, None).status, 201);
    let mut f = Filter::new(Some(w.clone()));
    h.request("GET", "/v2/app/manifests/v1", &[]);
    assert_eq!(on_headers(&mut f, &h, true), Action::Continue);
    assert_eq!(h.request_header_value(":path").as_deref(), Some("/v2/app/manifests/v1"));
    assert!(f.idle());
}

#[test]
fn pinned_reads_learn_from_the_answer_and_forget_a_digest_that_is_gone() {
    let h = FakeHost::new();
    let w = worker(
        &h,
        r#"{"upstream": {"cluster": "registry"}, "pin_immutable_pulls": true, "global": {"immutable_tags": true}}"#,
    );
    let read = |answer: &[(&str, &str)]| {
        let mut f = Filter::new(Some(w.clone()));
        h.request("GET", "/v2/app/manifests/v1", &[("accept", crate::filter::upstream::MANIFEST_ACCEPT)]);
        assert_eq!(on_headers(&mut f, &h, true), Action::Continue);
        let path = h.request_header_value(":path").unwrap();
        *h.response_headers.borrow_mut() =
            answer.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        assert_eq!(f.on_response_headers(&h), Action::Continue);
        path
    };
    let pinned = format!("/v2/app/manifests/{}", sha(M1));
    // Unknown: read by tag; the registry's answer teaches the map its digest.
    assert_eq!(read(&[(":status", "200"), CT, ("docker-content-digest", &sha(M1))]), "/v2/app/manifests/v1");
    // Known: read by digest; the digest is gone (404), so the map forgets it.
    assert_eq!(read(&[(":status", "404")]), pinned);
    assert_eq!(read(&[(":status", "404")]), "/v2/app/manifests/v1");
}
