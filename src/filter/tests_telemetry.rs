//! What Envoy's own telemetry sees of the filter (issue 23): the response code details of every
//! local reply, and the client's method kept in a header the filter alone sets.
use super::fake::{answer, FakeHost, Reply};
use super::push::METHOD_HEADER;
use super::worker::Worker;
use super::{Action, Filter};
use crate::config::Config;
use crate::digest::Digest;
use std::rc::Rc;

const POLICY: &str = r#"{"upstream": {"cluster": "registry"}, "global": {"immutable_tags": true}}"#;
const M1: &[u8] = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","n":1}"#;
const M2: &[u8] = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","n":2}"#;

fn worker(h: &FakeHost, policy: &str) -> Rc<Worker> {
    Rc::new(Worker::new(h, Config::from_json(policy.as_bytes()).unwrap()))
}

fn sha(b: &[u8]) -> String {
    Digest::sha256(b).to_string()
}

fn on_headers(f: &mut Filter, h: &FakeHost, end_of_stream: bool) -> Action {
    match Filter::first_look(h) {
        Some(path) => f.on_request_headers(h, path, end_of_stream),
        None => Action::Continue,
    }
}

fn respond(f: &mut Filter, h: &FakeHost, reply: Reply) {
    let token = h.pending.borrow_mut().pop_front().expect("a call to answer");
    let size = reply.body.len();
    h.set_answer(Some(reply));
    f.on_call_response(h, token, size);
    h.set_answer(None);
}

/// A push of `body` to `app:v1` while the registry holds `holds`, the PUT answered `put`:
/// the response code details of the client's answer, and the request's headers as they left
/// the filter (what an access log reads).
fn push(policy: &str, body: &[u8], holds: Option<&[u8]>, put: u16, extra: &[(&str, &str)]) -> (String, u16, FakeHost) {
    let h = FakeHost::new();
    let w = worker(&h, policy);
    let mut f = Filter::new(Some(w));
    let len = body.len().to_string();
    let mut headers = vec![("content-length", len.as_str()), ("content-type", "application/vnd.oci.image.manifest.v1+json")];
    headers.extend_from_slice(extra);
    h.request("PUT", "/v2/app/manifests/v1", &headers);
    on_headers(&mut f, &h, false);
    let head = match holds {
        Some(b) => answer(200, &[("docker-content-digest", &sha(b))], b""),
        None => answer(404, &[], b""),
    };
    respond(&mut f, &h, head);
    h.body.borrow_mut().extend_from_slice(body);
    f.on_request_body(&h, body.len(), true);
    while !h.pending.borrow().is_empty() {
        respond(&mut f, &h, answer(put, &[("docker-content-digest", &sha(body))], b""));
    }
    let status = h.reply().expect("an answer").status;
    let details = h.details.borrow().last().cloned().expect("a local reply");
    (details, status, h)
}

#[test]
fn a_stored_push_says_written_and_keeps_its_method() {
    let (details, status, h) = push(POLICY, M1, None, 201, &[]);
    assert_eq!((status, details.as_str()), (201, "immutable_tags_written"));
    assert_eq!(h.request_header_value(":method").as_deref(), Some("OPTIONS"));
    assert_eq!(h.request_header_value(METHOD_HEADER).as_deref(), Some("PUT"));
}

#[test]
fn a_refused_overwrite_says_refused() {
    let (details, status, h) = push(POLICY, M2, Some(M1), 201, &[]);
    assert_eq!((status, details.as_str()), (409, "immutable_tags_refused"));
    assert_eq!(h.request_header_value(METHOD_HEADER).as_deref(), Some("PUT"));
    // Nothing but the HEAD was sent.
    assert!(h.calls_with("PUT").is_empty());
}

#[test]
fn a_write_the_registry_refuses_says_so() {
    let (details, status, _) = push(POLICY, M1, None, 400, &[]);
    assert_eq!((status, details.as_str()), (400, "immutable_tags_write_failed"));
}

#[test]
fn audit_mode_names_an_unjudged_write() {
    let audit = r#"{"mode": "audit", "upstream": {"cluster": "registry"}, "global": {"immutable_tags": true}}"#;
    let (details, status, _) = push(audit, M2, Some(M1), 201, &[]);
    assert_eq!((status, details.as_str()), (201, "immutable_tags_written_unjudged_audit"));
}

#[test]
fn a_client_cannot_claim_a_method_for_the_log() {
    // On a push the filter's own value replaces it, and the PUT it sends does not carry it.
    let (_, _, h) = push(POLICY, M1, None, 201, &[(METHOD_HEADER, "GET")]);
    assert_eq!(h.request_header_value(METHOD_HEADER).as_deref(), Some("PUT"));
    assert!(h.calls_with("PUT").iter().all(|c| c.header(METHOD_HEADER).is_none()));
    // On any other request it is removed.
    for path in ["/v2/app/blobs/sha256:00", "/v2/app/manifests/v1"] {
        let h = FakeHost::new();
        let mut f = Filter::new(Some(worker(&h, POLICY)));
        h.request("GET", path, &[(METHOD_HEADER, "PUT")]);
        assert_eq!(on_headers(&mut f, &h, true), Action::Continue);
        assert_eq!(h.request_header_value(METHOD_HEADER), None, "{path}");
    }
}

#[test]
fn a_push_whose_method_cannot_be_recorded_is_refused() {
    let h = FakeHost::new();
    let mut f = Filter::new(Some(worker(&h, POLICY)));
    h.refuse_header_writes.set(true);
    h.request("PUT", "/v2/app/manifests/v1", &[("content-length", "10")]);
    assert_eq!(on_headers(&mut f, &h, false), Action::Pause);
    assert_eq!(h.reply().unwrap().status, 500);
    assert_eq!(h.details.borrow().as_slice(), ["immutable_tags_unavailable"]);
    assert!(h.calls.borrow().is_empty());
}

#[test]
fn every_refusal_names_the_filter_and_its_outcome() {
    for (status, want) in [
        (409, "immutable_tags_refused"),
        (503, "immutable_tags_unavailable"),
        (500, "immutable_tags_unavailable"),
        (401, "immutable_tags_unauthorized"),
        (400, "immutable_tags_invalid_request"),
        (413, "immutable_tags_invalid_request"),
    ] {
        assert_eq!(super::details(status), want);
    }
    // An unreadable write, answered by the filter.
    let h = FakeHost::new();
    let mut f = Filter::new(Some(worker(&h, POLICY)));
    h.request("PUT", "/v2/app/manifests/v1", &[("x-http-method-override", "GET")]);
    on_headers(&mut f, &h, false);
    assert_eq!(h.details.borrow().as_slice(), ["immutable_tags_invalid_request"]);
}
