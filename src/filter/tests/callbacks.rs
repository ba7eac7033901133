//! The host glue's callbacks past the headers, and requests without a worker: which streams
//! keep state and for how long, the body and trailers of a request the filter holds or
//! answered, swept streams, requests that pass untouched.
use super::*;

#[test]
fn ordinary_requests_and_mutable_tags_pass_untouched() {
    let h = FakeHost::new();
    let w = worker(&h, POLICY);
    let mut f = Filter::new(Some(w.clone()));
    h.request("PATCH", "/v2/app/blobs/uploads/abc", &[]);
    assert_eq!(on_headers(&mut f, &h, false), Action::Continue);
    assert_eq!(f.on_request_body(&h, 10, true), Action::Continue);
    let mut f = Filter::new(Some(w.clone()));
    put_headers(&mut f, &h, "latest", M1);
    assert_eq!(h.request_header_value(":method").as_deref(), Some("PUT"));
    assert_eq!(f.on_request_body(&h, 10, true), Action::Continue);
    assert!(h.calls.borrow().is_empty());
}

/// The host glue keeps state only for streams that are not `idle` at their headers, and drops it
/// when the answer passes unless the stream is `in_flight`: ordinary requests cost no state.
#[test]
fn only_streams_under_judgement_keep_state_and_only_until_their_answer() {
    let h = FakeHost::new();
    let pinning = r#"{"upstream": {"cluster": "registry"}, "pin_immutable_pulls": true, "global": {"immutable_tags": true}}"#;
    let w = worker(&h, pinning);
    for (method, path) in [
        ("GET", "/v2/"),
        ("GET", "/v2/app/blobs/sha256:0000000000000000000000000000000000000000000000000000000000000000"),
        ("PATCH", "/v2/app/blobs/uploads/abc"),
        ("GET", "/v2/app/tags/list"),
    ] {
        let mut f = Filter::new(Some(w.clone()));
        h.request(method, path, &[]);
        assert_eq!(on_headers(&mut f, &h, true), Action::Continue);
        assert!(f.idle(), "{method} {path} keeps no state");
    }
    // A read of an immutable tag under pinning: state until its answer, none after.
    let mut f = Filter::new(Some(w.clone()));
    h.request("GET", "/v2/app/manifests/v1", &[("accept", crate::filter::upstream::MANIFEST_ACCEPT)]);
    assert_eq!(on_headers(&mut f, &h, true), Action::Continue);
    assert!(!f.idle());
    *h.response_headers.borrow_mut() = vec![(":status".into(), "200".into())];
    assert_eq!(f.on_response_headers(&h), Action::Continue);
    assert!(!f.in_flight());
    // A push stays in flight past the harmless answer, until its own answer is relayed.
    let mut f = Filter::new(Some(w.clone()));
    put_headers(&mut f, &h, "v2", M1);
    assert!(!f.idle());
    respond(&mut f, &h, head_answer(None));
    send_body(&mut f, &h, &[M1]);
    assert_eq!(f.on_response_headers(&h), Action::Pause);
    assert!(f.in_flight());
    respond(&mut f, &h, created(M1));
    assert_eq!(h.reply().unwrap().status, 201);
    assert!(!f.in_flight());
}

#[test]
fn without_a_valid_configuration_writes_are_refused_and_reads_pass() {
    let h = FakeHost::new();
    for (method, path) in
        [("PUT", "/v2/app/manifests/v1".to_string()), ("DELETE", format!("/v2/app/manifests/{}", sha(M1)))]
    {
        let mut f = Filter::new(None);
        h.replies.borrow_mut().clear();
        h.request(method, &path, &[CT]);
        assert_eq!(on_headers(&mut f, &h, false), Action::Pause, "{method}");
        let r = h.reply().expect("refused");
        assert_eq!(
            (r.status, r.json()["errors"][0]["code"].as_str()),
            (503, Some("UNAVAILABLE")),
            "{method}"
        );
    }
    h.replies.borrow_mut().clear();
    let mut f = Filter::new(None);
    h.request("GET", "/v2/app/manifests/v1", &[]);
    assert_eq!(on_headers(&mut f, &h, true), Action::Continue);
    assert!(h.reply().is_none(), "a read needs no configuration");
    assert!(h.calls.borrow().is_empty());
}

#[test]
fn a_request_held_or_answered_by_the_filter_never_lets_its_body_or_trailers_go() {
    // Continue on a body or trailers would resume held headers (Envoy's filter chain
    // semantics): a delete under check would reach the registry before its verdict.
    let h = FakeHost::new();
    let w = worker(&h, POLICY);
    let mut f = Filter::new(Some(w.clone()));
    h.request("DELETE", &format!("/v2/app/manifests/{}", sha(M1)), &[]);
    assert_eq!(on_headers(&mut f, &h, false), Action::Pause);
    assert_eq!(f.on_request_body(&h, 10, false), Action::Pause);
    assert_eq!(f.on_request_trailers(&h), Action::Pause);
    assert_eq!(h.resumes.get(), 0);
    // Answered locally (413): what follows of the request stays with the filter.
    let w = worker(&h, LIMIT_1K);
    let mut f = Filter::new(Some(w.clone()));
    put_headers(&mut f, &h, "v1", &[b' '; 1025]);
    assert_eq!(h.reply().unwrap().status, 413);
    assert_eq!(f.on_request_body(&h, 10, false), Action::Pause);
    assert_eq!(f.on_request_trailers(&h), Action::Pause);
    assert!(h.calls_with("PUT").is_empty());
}

#[test]
fn a_swept_stream_is_counted_only_when_its_answer_never_went() {
    let h = FakeHost::new();
    let w = worker(&h, LIMIT_1K);
    let mut f = Filter::new(Some(w.clone()));
    put_headers(&mut f, &h, "v9", &[b' '; 1025]);
    assert_eq!(h.reply().unwrap().status, 413);
    f.on_swept(&h);
    assert_eq!(h.counter("streams_swept"), 0, "answered");
    // Swept while written: counted, and ended like any stream (the map forgets the tag).
    let mut f = rewriting_v1(&h, &w);
    f.on_swept(&h);
    assert_eq!(h.counter("streams_swept"), 1);
    assert!(f.idle());
    assert!(next_push_heads(&h, &w));
}
