//! Pull pinning on the fake host (issue 26): which reads teach the map, which reads are pinned,
//! and what each source of a map entry may let through on its own.
use super::fake::{answer, on_headers, respond, sha, FakeHost};
use crate::config::Config;
use crate::filter::upstream::MANIFEST_ACCEPT;
use crate::filter::worker::Worker;
use crate::filter::{Action, Filter};
use crate::verdict::pull::accepts_every_stored_type;
use std::rc::Rc;

const PINNING: &str = r#"{"upstream": {"cluster": "registry"}, "pin_immutable_pulls": true, "global": {"immutable_tags": true}}"#;
const V2: &str = "application/vnd.docker.distribution.manifest.v2+json";
const LIST_TYPE: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// What an ordinary client accepts (every stored type), as `tests/oci.py` sends it.
const FULL: &str = "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, \
application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json";
/// `v1` holds LIST; distribution answers a read of `v1` that lacks the list type with CHILD.
const LIST: &[u8] = br#"{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.list.v2+json","manifests":[]}"#;
const CHILD: &[u8] =
    br#"{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json","n":1}"#;

fn worker(h: &FakeHost) -> Rc<Worker> {
    Rc::new(Worker::new(h, Config::from_json(PINNING.as_bytes()).unwrap()))
}

/// A client's `method` of `app:v1` with these `Accept` headers, answered `body` (of its media
/// type) by the registry: the `:path` the registry was asked.
fn read(
    h: &FakeHost,
    w: &Rc<Worker>,
    method: &str,
    accept: &[&str],
    body: &[u8],
    media_type: &str,
) -> String {
    let mut f = Filter::new(Some(w.clone()));
    let headers: Vec<(&str, &str)> = accept.iter().map(|a| ("accept", *a)).collect();
    h.request(method, "/v2/app/manifests/v1", &headers);
    assert_eq!(on_headers(&mut f, h, true), Action::Continue);
    let path = h.request_header_value(":path").unwrap();
    *h.response_headers.borrow_mut() =
        [(":status", "200"), ("content-type", media_type), ("docker-content-digest", &sha(body))]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
    assert_eq!(f.on_response_headers(h), Action::Continue);
    f.on_done(h);
    path
}

/// What distribution answers: the list to a read that accepts it, else the child.
fn distribution_read(h: &FakeHost, w: &Rc<Worker>, method: &str, accept: &[&str]) -> String {
    let full = accept.iter().all(|a| a.contains(LIST_TYPE));
    let (body, media_type) = if full { (LIST, LIST_TYPE) } else { (CHILD, V2) };
    read(h, w, method, accept, body, media_type)
}

const BY_TAG: &str = "/v2/app/manifests/v1";

fn by_digest(body: &[u8]) -> String {
    format!("/v2/app/manifests/{}", sha(body))
}

/// A push of `body` to `app:v1` while the registry holds `holds`: the HEADs it sent, and the
/// client's answer (201 written, 409 refused).
fn push(h: &FakeHost, w: &Rc<Worker>, body: &[u8], holds: &[u8]) -> (usize, u16) {
    let heads = h.calls_with("HEAD").len();
    let mut f = Filter::new(Some(w.clone()));
    let len = body.len().to_string();
    h.request("PUT", "/v2/app/manifests/v1", &[("content-type", V2), ("content-length", &len)]);
    on_headers(&mut f, h, false);
    h.body.borrow_mut().extend_from_slice(body);
    f.on_request_body(h, body.len(), true);
    while let Some(call) = h.last_call().filter(|_| !h.pending.borrow().is_empty()) {
        match call.header(":method") {
            Some("HEAD") => respond(&mut f, h, answer(200, &[("docker-content-digest", &sha(holds))], b"")),
            _ => {
                let d = sha(body);
                respond(&mut f, h, answer(201, &[("docker-content-digest", &d)], b""));
            }
        }
    }
    f.on_done(h);
    (h.calls_with("HEAD").len() - heads, h.reply().expect("an answer").status)
}

#[test]
fn the_filter_s_own_head_names_every_stored_type() {
    assert!(accepts_every_stored_type([MANIFEST_ACCEPT]));
    assert!(accepts_every_stored_type([FULL]));
}

#[test]
fn a_narrow_read_is_served_as_answered_and_teaches_nothing() {
    let h = FakeHost::new();
    let w = worker(&h);
    for method in ["GET", "HEAD"] {
        for accept in [&[V2][..], &[], &["*/*"], &[V2, FULL], &[&format!("{FULL};q=0")]] {
            assert_eq!(distribution_read(&h, &w, method, accept), BY_TAG, "{accept:?}");
            assert!(w.cache.borrow().is_empty(), "{method} {accept:?} taught the map");
        }
    }
    // A full read is not pinned to the child, and teaches the list.
    assert_eq!(distribution_read(&h, &w, "GET", &[FULL]), BY_TAG);
    assert_eq!(distribution_read(&h, &w, "GET", &[FULL]), by_digest(LIST));
    // Issue 26, step 3: a push of the child to v1 is judged on the registry's word: refused.
    assert_eq!(push(&h, &w, CHILD, LIST), (1, 409));
}

#[test]
fn a_pinned_digest_is_served_only_to_reads_that_would_get_it() {
    let h = FakeHost::new();
    let w = worker(&h);
    assert_eq!(distribution_read(&h, &w, "GET", &[FULL]), BY_TAG);
    for method in ["GET", "HEAD"] {
        // Narrow: by tag (by digest, distribution would answer the list).
        assert_eq!(distribution_read(&h, &w, method, &[V2]), BY_TAG);
        assert_eq!(distribution_read(&h, &w, method, &[FULL, V2]), BY_TAG);
        assert_eq!(distribution_read(&h, &w, method, &[MANIFEST_ACCEPT]), by_digest(LIST));
        assert_eq!(
            distribution_read(&h, &w, method, &[FULL]),
            by_digest(LIST),
            "the narrow reads left the pin alone"
        );
    }
}

#[test]
fn an_entry_from_a_client_s_read_pins_reads_but_never_lets_a_push_through_alone() {
    let h = FakeHost::new();
    let w = worker(&h);
    // A full read whose answer names CHILD (say the route took it elsewhere): it pins...
    assert_eq!(read(&h, &w, "GET", &[FULL], CHILD, V2), BY_TAG);
    assert_eq!(read(&h, &w, "GET", &[FULL], CHILD, V2), by_digest(CHILD));
    // ...but a push of CHILD is asked about: the registry says LIST, so it is refused.
    assert_eq!(push(&h, &w, CHILD, LIST), (1, 409));
    // Where the registry agrees, the push is written after its HEAD.
    assert_eq!(read(&h, &w, "GET", &[FULL], LIST, LIST_TYPE), by_digest(LIST), "the HEAD taught LIST");
    let h = FakeHost::new();
    let w = worker(&h);
    assert_eq!(read(&h, &w, "GET", &[FULL], CHILD, V2), BY_TAG);
    assert_eq!(push(&h, &w, CHILD, CHILD), (1, 201));
}

#[test]
fn entries_from_the_filter_s_own_head_or_write_let_an_identical_push_through_alone() {
    let h = FakeHost::new();
    let w = worker(&h);
    // Head: the first push asks, the second trusts the map.
    assert_eq!(push(&h, &w, LIST, LIST), (1, 201));
    assert_eq!(push(&h, &w, LIST, LIST), (0, 201));
    // Push: the registry's 201 to the filter's own write (here after a HEAD that said absent,
    // which teaches nothing).
    let h = FakeHost::new();
    let w = worker(&h);
    let mut f = Filter::new(Some(w.clone()));
    h.request("PUT", "/v2/app/manifests/v1", &[("content-type", V2)]);
    on_headers(&mut f, &h, false);
    respond(&mut f, &h, answer(404, &[], b""));
    assert!(w.cache.borrow().is_empty());
    h.body.borrow_mut().extend_from_slice(LIST);
    f.on_request_body(&h, LIST.len(), true);
    respond(&mut f, &h, answer(201, &[("docker-content-digest", &sha(LIST))], b""));
    f.on_done(&h);
    assert_eq!(push(&h, &w, LIST, LIST), (0, 201));
    // And either pins a full read.
    assert_eq!(distribution_read(&h, &w, "GET", &[FULL]), by_digest(LIST));
}

/// A digest delete of `digest` (tags: v1): the HEADs it sent for v1, and whether it went on.
fn delete(h: &FakeHost, w: &Rc<Worker>, digest: &str, v1_holds: &[u8]) -> (usize, bool) {
    let heads = h.calls_with("HEAD").len();
    let resumes = h.resumes.get();
    let mut f = Filter::new(Some(w.clone()));
    h.request("DELETE", &format!("/v2/app/manifests/{digest}"), &[]);
    on_headers(&mut f, h, true);
    while let Some(call) = h.last_call().filter(|_| !h.pending.borrow().is_empty()) {
        match call.header(":method") {
            Some("HEAD") => {
                respond(&mut f, h, answer(200, &[("docker-content-digest", &sha(v1_holds))], b""))
            }
            _ => respond(
                &mut f,
                h,
                answer(200, &[("content-type", "application/json")], br#"{"name":"app","tags":["v1"]}"#),
            ),
        }
    }
    (h.calls_with("HEAD").len() - heads, h.resumes.get() > resumes)
}

#[test]
fn no_map_entry_whatever_its_source_lets_a_digest_delete_through() {
    // Read: the map says v1 -> CHILD, the registry says LIST: deleting LIST is asked, refused.
    let h = FakeHost::new();
    let w = worker(&h);
    assert_eq!(read(&h, &w, "GET", &[FULL], CHILD, V2), BY_TAG);
    assert_eq!(delete(&h, &w, &sha(LIST), LIST), (1, false));
    assert_eq!(h.reply().unwrap().status, 409);
    // Head (learned just now): deleting another digest is still asked of the registry (a
    // delete goes on only on the registry's word: issue 28), and goes on.
    assert_eq!(delete(&h, &w, &sha(CHILD), LIST), (1, true));
    // Push.
    let h = FakeHost::new();
    let w = worker(&h);
    assert_eq!(push(&h, &w, LIST, LIST), (1, 201));
    w.cache.borrow_mut().forget("registry.test\napp", "v1");
    let mut f = Filter::new(Some(w.clone()));
    h.request("PUT", "/v2/app/manifests/v1", &[("content-type", V2)]);
    on_headers(&mut f, &h, false);
    respond(&mut f, &h, answer(404, &[], b""));
    h.body.borrow_mut().extend_from_slice(LIST);
    f.on_request_body(&h, LIST.len(), true);
    respond(&mut f, &h, answer(201, &[("docker-content-digest", &sha(LIST))], b""));
    f.on_done(&h);
    assert_eq!(delete(&h, &w, &sha(CHILD), LIST), (1, true));
}
