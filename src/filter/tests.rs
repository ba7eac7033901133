//! The state machine on a fake host: every flow's states, without Envoy. Each test drives the
//! callbacks in the order Envoy can deliver them and checks what reached "the registry" (the
//! dispatched calls) and what the client got.
use super::fake::{answer, FakeHost, Reply};
use super::worker::Worker;
use super::{Action, Filter};
use crate::config::Config;
use crate::digest::Digest;
use std::rc::Rc;

const POLICY: &str = r#"{"upstream": {"cluster": "registry"}, "global": {"immutable_tags": true, "immutable_tags_exclusions": ["^latest$"]}}"#;
const M1: &[u8] = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","n":1}"#;
const M2: &[u8] = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","n":2}"#;
const CT: (&str, &str) = ("content-type", "application/vnd.oci.image.manifest.v1+json");

fn worker(h: &FakeHost, policy: &str) -> Rc<Worker> {
    Rc::new(Worker::new(h, Config::from_json(policy.as_bytes()).unwrap()))
}

fn sha(b: &[u8]) -> String {
    Digest::sha256(b).to_string()
}

/// The HEAD answer of a tag that holds `body` (or 404 for `None`).
fn head_answer(body: Option<&[u8]>) -> Reply {
    match body {
        Some(b) => answer(200, &[("docker-content-digest", &sha(b))], b""),
        None => answer(404, &[], br#"{"errors":[{"code":"MANIFEST_UNKNOWN"}]}"#),
    }
}

/// The registry's answer to a PUT of `body`.
fn created(body: &[u8]) -> Reply {
    let d = sha(body);
    answer(201, &[("location", &format!("/v2/app/manifests/{d}")), ("docker-content-digest", &d)], b"")
}

/// Answers the oldest pending dispatched call with `reply`.
fn respond(f: &mut Filter, h: &FakeHost, reply: Reply) {
    let token = h.pending.borrow_mut().pop_front().expect("a call to answer");
    let size = reply.body.len();
    h.set_answer(Some(reply));
    f.on_call_response(h, token, size);
    h.set_answer(None);
}

/// Starts a PUT of `body` to `app:tag` (headers only).
fn put_headers(f: &mut Filter, h: &FakeHost, tag: &str, body: &[u8]) -> Action {
    let len = body.len().to_string();
    h.request("PUT", &format!("/v2/app/manifests/{tag}"), &[CT, ("content-length", &len), ("authorization", "Bearer t")]);
    f.on_request_headers(h, false)
}

/// Delivers body parts as Envoy does: each callback sees the whole buffer so far.
fn send_body(f: &mut Filter, h: &FakeHost, parts: &[&[u8]]) -> Vec<Action> {
    let mut actions = Vec::new();
    for (i, p) in parts.iter().enumerate() {
        h.body.borrow_mut().extend_from_slice(p);
        let size = h.body.borrow().len();
        actions.push(f.on_request_body(h, size, i + 1 == parts.len()));
    }
    actions
}

/// Delivers one more part that does not end the body.
fn send_part(f: &mut Filter, h: &FakeHost, part: &[u8]) -> Action {
    h.body.borrow_mut().extend_from_slice(part);
    let size = h.body.borrow().len();
    f.on_request_body(h, size, false)
}

/// A whole push through one stream: headers, HEAD answer (if one is sent), body, PUT answer.
fn push(h: &FakeHost, w: &Rc<Worker>, tag: &str, body: &[u8], registry_holds: Option<&[u8]>) -> Reply {
    let mut f = Filter::new(Some(w.clone()));
    put_headers(&mut f, h, tag, body);
    while !h.pending.borrow().is_empty() && h.last_call().and_then(|c| c.header(":method").map(str::to_string)).as_deref() == Some("HEAD") {
        respond(&mut f, h, head_answer(registry_holds));
    }
    send_body(&mut f, h, &[body]);
    while let Some(call) = h.last_call().filter(|_| !h.pending.borrow().is_empty()) {
        match call.header(":method") {
            Some("HEAD") => respond(&mut f, h, head_answer(registry_holds)),
            _ => respond(&mut f, h, created(body)),
        }
    }
    f.on_done(h);
    h.reply().expect("the client got an answer")
}

#[test]
fn a_new_tag_is_written_by_the_filter_with_exactly_the_judged_bytes() {
    let h = FakeHost::new();
    let w = worker(&h, POLICY);
    let mut f = Filter::new(Some(w.clone()));
    // Headers: held while the HEAD is out, and the request is made harmless at once.
    assert_eq!(put_headers(&mut f, &h, "v1", M1), Action::Pause);
    assert_eq!(h.request_header_value(":method").as_deref(), Some("OPTIONS"));
    let head = h.last_call().unwrap();
    assert_eq!(head.header(":method"), Some("HEAD"));
    assert_eq!(head.cluster, "registry");
    assert_eq!(head.header(":path"), Some("/v2/app/manifests/v1"));
    assert_eq!(head.header("authorization"), Some("Bearer t"));
    // The HEAD answers before the body: the (harmless) headers go, so the body can arrive.
    respond(&mut f, &h, head_answer(None));
    assert_eq!(h.resumes.get(), 1);
    // The body in two parts: never released.
    let half = M1.len() / 2;
    assert_eq!(send_body(&mut f, &h, &[&M1[..half], &M1[half..]]), vec![Action::Pause, Action::Pause]);
    let puts = h.calls_with("PUT");
    assert_eq!(puts.len(), 1);
    assert_eq!(puts[0].body.as_deref(), Some(M1));
    assert_eq!(puts[0].cluster, "registry");
    assert_eq!(puts[0].header(":path"), Some("/v2/app/manifests/v1"));
    assert_eq!(puts[0].header("content-type"), Some(CT.1));
    assert_eq!(puts[0].header("authorization"), Some("Bearer t"));
    assert_eq!(puts[0].header("content-length"), None, "Envoy frames the call's body itself");
    assert_eq!(puts[0].timeout_ms, 30_000);
    assert!(h.replies.borrow().is_empty(), "no answer before the registry's");
    // Its answer to the harmless request is held, never passed on.
    assert_eq!(f.on_response_headers(&h), Action::Pause);
    assert_eq!(f.on_response_body(), Action::Pause);
    respond(&mut f, &h, created(M1));
    let r = h.reply().unwrap();
    assert_eq!(r.status, 201);
    assert_eq!(r.header("location"), Some(format!("/v2/app/manifests/{}", sha(M1)).as_str()));
    assert_eq!(r.header("docker-content-digest"), Some(sha(M1).as_str()));
    assert_eq!(h.counter("pushes_allowed_new_tag"), 1);
}

#[test]
fn a_body_split_around_the_head_answer_is_judged_whole() {
    // The attack of issue 11: spaces, wait for the HEAD, then the manifest the tag holds.
    let h = FakeHost::new();
    let w = worker(&h, POLICY);
    let mut f = Filter::new(Some(w.clone()));
    put_headers(&mut f, &h, "v1", M1);
    let spaces = vec![b' '; 1024];
    assert_eq!(send_part(&mut f, &h, &spaces), Action::Pause);
    respond(&mut f, &h, head_answer(Some(M1)));
    // Resuming now would release the spaces upstream: the headers stay held.
    assert_eq!(h.resumes.get(), 0);
    assert_eq!(send_body(&mut f, &h, &[M1]), vec![Action::Pause]);
    assert!(h.calls_with("PUT").is_empty(), "a refused push never reaches the registry");
    let r = h.reply().unwrap();
    assert_eq!(r.status, 409);
    let mut all = spaces.clone();
    all.extend_from_slice(M1);
    assert_eq!(r.json()["errors"][0]["detail"]["pushed_digest"], sha(&all));
    assert_eq!(r.json()["errors"][0]["detail"]["current_digest"], sha(M1));
}

#[test]
fn an_honest_identical_repush_in_parts_is_allowed() {
    let h = FakeHost::new();
    let w = worker(&h, POLICY);
    let mut f = Filter::new(Some(w.clone()));
    put_headers(&mut f, &h, "v1", M1);
    let half = M1.len() / 2;
    send_part(&mut f, &h, &M1[..half]);
    respond(&mut f, &h, head_answer(Some(M1)));
    assert_eq!(h.resumes.get(), 0);
    send_body(&mut f, &h, &[&M1[half..]]);
    let puts = h.calls_with("PUT");
    assert_eq!(puts.len(), 1);
    assert_eq!(puts[0].body.as_deref(), Some(M1));
    respond(&mut f, &h, created(M1));
    assert_eq!(h.reply().unwrap().status, 201);
    assert_eq!(h.counter("pushes_allowed_same_digest"), 1);
}

#[test]
fn body_before_the_head_answer_keeps_the_headers_held() {
    // allow_on_headers_stop_iteration: the body arrives while the headers are held; nothing
    // goes upstream before the decision, not even the harmless request.
    let h = FakeHost::new();
    let w = worker(&h, POLICY);
    let mut f = Filter::new(Some(w.clone()));
    put_headers(&mut f, &h, "v1", M2);
    send_body(&mut f, &h, &[M2]);
    respond(&mut f, &h, head_answer(Some(M1)));
    assert_eq!(h.resumes.get(), 0);
    assert_eq!(h.reply().unwrap().status, 409);
    assert!(h.calls_with("PUT").is_empty());
}

#[test]
fn a_map_hit_lets_the_harmless_headers_go_and_judges_the_whole_body() {
    let h = FakeHost::new();
    let w = worker(&h, POLICY);
    assert_eq!(push(&h, &w, "v1", M1, None).status, 201);
    let heads = h.calls_with("HEAD").len();
    // Identical re-push from the map: no HEAD, the harmless headers go at once.
    let mut f = Filter::new(Some(w.clone()));
    assert_eq!(put_headers(&mut f, &h, "v1", M1), Action::Continue);
    assert_eq!(h.request_header_value(":method").as_deref(), Some("OPTIONS"));
    send_body(&mut f, &h, &[&M1[..3], &M1[3..]]);
    assert_eq!(h.calls_with("HEAD").len(), heads);
    assert_eq!(h.calls_with("PUT").len(), 2);
    respond(&mut f, &h, created(M1));
    assert_eq!(h.reply().unwrap().status, 201);
    // A different manifest: the map's word is confirmed by the registry before the 409.
    let mut f = Filter::new(Some(w.clone()));
    assert_eq!(put_headers(&mut f, &h, "v1", M2), Action::Continue);
    send_body(&mut f, &h, &[M2]);
    assert_eq!(h.calls_with("HEAD").len(), heads + 1);
    respond(&mut f, &h, head_answer(Some(M1)));
    assert_eq!(h.reply().unwrap().status, 409);
    assert_eq!(h.calls_with("PUT").len(), 2);
}

#[test]
fn a_head_that_cannot_be_sent_refuses_the_push() {
    let h = FakeHost::new();
    let w = worker(&h, POLICY);
    *h.dispatch_error.borrow_mut() = Some("BadArgument".into());
    let mut f = Filter::new(Some(w.clone()));
    assert_eq!(put_headers(&mut f, &h, "v1", M1), Action::Pause);
    let r = h.reply().unwrap();
    assert_eq!(r.status, 503);
    assert!(r.json()["errors"][0]["message"].as_str().unwrap().contains("cluster 'registry'"));
    assert!(h.calls.borrow().is_empty());
}

#[test]
fn an_absent_answer_older_than_the_claim_ttl_is_not_trusted() {
    let h = FakeHost::new();
    let w = worker(&h, POLICY);
    let mut f = Filter::new(Some(w.clone()));
    put_headers(&mut f, &h, "v1", M1);
    respond(&mut f, &h, head_answer(None));
    h.advance(61_000); // claims.ttl_seconds defaults to 60
    send_body(&mut f, &h, &[M1]);
    let r = h.reply().unwrap();
    assert_eq!(r.status, 503);
    assert!(r.json()["errors"][0]["message"].as_str().unwrap().contains("claims.ttl_seconds"));
    assert!(h.calls_with("PUT").is_empty());
}

#[test]
fn an_announced_oversized_manifest_is_refused_before_anything_is_sent() {
    let h = FakeHost::new();
    let w = worker(&h, r#"{"upstream": {"cluster": "registry"}, "global": {"immutable_tags": true}, "max_manifest_bytes": 1024}"#);
    let mut f = Filter::new(Some(w.clone()));
    put_headers(&mut f, &h, "v1", &[b' '; 1025]);
    let r = h.reply().unwrap();
    assert_eq!((r.status, r.json()["errors"][0]["code"].as_str()), (413, Some("SIZE_INVALID")));
    assert!(h.calls.borrow().is_empty());
}

#[test]
fn an_oversized_body_without_a_length_is_refused_when_it_outgrows_the_limit() {
    let h = FakeHost::new();
    let w = worker(&h, r#"{"upstream": {"cluster": "registry"}, "global": {"immutable_tags": true}, "max_manifest_bytes": 1024}"#);
    let mut f = Filter::new(Some(w.clone()));
    h.request("PUT", "/v2/app/manifests/v1", &[CT, ("transfer-encoding", "chunked")]);
    f.on_request_headers(&h, false);
    respond(&mut f, &h, head_answer(None));
    send_body(&mut f, &h, &[&[b' '; 1024], b"x"]);
    let r = h.reply().unwrap();
    assert_eq!((r.status, r.json()["errors"][0]["code"].as_str()), (413, Some("SIZE_INVALID")));
    assert!(h.calls_with("PUT").is_empty());
}

#[test]
fn a_refused_push_holds_the_harmless_answer_and_sends_no_put() {
    let h = FakeHost::new();
    let w = worker(&h, POLICY);
    let mut f = Filter::new(Some(w.clone()));
    put_headers(&mut f, &h, "v1", M2);
    respond(&mut f, &h, head_answer(Some(M1)));
    // The harmless request's answer arrives before the body is complete: held.
    assert_eq!(f.on_response_headers(&h), Action::Pause);
    send_body(&mut f, &h, &[M2]);
    let r = h.reply().unwrap();
    assert_eq!(r.status, 409);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert!(h.calls_with("PUT").is_empty());
    assert_eq!(h.counter("overwrites_refused"), 1);
}

#[test]
fn claims_retry_on_every_cas_conflict_and_give_up_after_the_bound() {
    let h = FakeHost::new();
    let w = worker(&h, POLICY);
    h.process.forced_cas_mismatches.set(5);
    assert_eq!(push(&h, &w, "v1", M1, None).status, 201);
    assert_eq!(h.process.forced_cas_mismatches.get(), 0, "every forced conflict was met and retried");
    let h2 = h.share_with();
    h2.process.forced_cas_mismatches.set(1000);
    let r = push(&h2, &w, "v2", M1, None);
    assert_eq!(r.status, 503);
    assert!(r.json()["errors"][0]["message"].as_str().unwrap().contains("still contended"));
    assert!(h2.calls_with("PUT").is_empty());
}

#[test]
fn a_claim_written_between_read_and_swap_is_seen_not_overwritten() {
    // Worker B reads the slot, worker A claims the tag before B's compare-and-swap: B's write
    // must fail, and B must then see A's claim.
    let a = FakeHost::new();
    let w = worker(&a, POLICY);
    let b = a.share_with();
    let wa = w.clone();
    let mut fb = Filter::new(Some(w.clone()));
    put_headers(&mut fb, &b, "v1", M2);
    respond(&mut fb, &b, head_answer(None));
    let a2 = a.share_with();
    *b.intruder.borrow_mut() = Some(Box::new(move |_| {
        let mut fa = Filter::new(Some(wa));
        put_headers(&mut fa, &a2, "v1", M1);
        respond(&mut fa, &a2, head_answer(None));
        send_body(&mut fa, &a2, &[M1]);
        assert_eq!(a2.calls_with("PUT").len(), 1, "A holds the claim and is writing");
    }));
    send_body(&mut fb, &b, &[M2]);
    let r = b.reply().unwrap();
    assert_eq!(r.status, 409);
    assert_eq!(r.json()["errors"][0]["detail"]["current_digest"], sha(M1));
    assert!(r.json()["errors"][0]["detail"]["in_flight"].is_string());
    assert!(b.calls_with("PUT").is_empty());
}

#[test]
fn concurrent_pushes_of_different_manifests_to_a_new_tag_have_one_winner() {
    let h = FakeHost::new();
    let w = worker(&h, POLICY);
    let hosts: Vec<FakeHost> = (0..8).map(|_| h.share_with()).collect();
    let mut filters: Vec<Filter> = hosts.iter().map(|_| Filter::new(Some(w.clone()))).collect();
    let bodies: Vec<Vec<u8>> = (0..8).map(|i| format!("{{\"n\":{i}}}").into_bytes()).collect();
    for ((f, h), b) in filters.iter_mut().zip(&hosts).zip(&bodies) {
        put_headers(f, h, "v1", b);
        respond(f, h, head_answer(None));
    }
    for ((f, h), b) in filters.iter_mut().zip(&hosts).zip(&bodies) {
        send_body(f, h, &[b]);
    }
    let writers: Vec<usize> = hosts.iter().enumerate().filter(|(_, h)| !h.calls_with("PUT").is_empty()).map(|(i, _)| i).collect();
    assert_eq!(writers, vec![0]);
    for h in &hosts[1..] {
        assert_eq!(h.reply().unwrap().status, 409);
    }
}

#[test]
fn a_failed_write_releases_the_claim_and_is_relayed() {
    let h = FakeHost::new();
    let w = worker(&h, POLICY);
    let mut f = Filter::new(Some(w.clone()));
    put_headers(&mut f, &h, "v1", M1);
    respond(&mut f, &h, head_answer(None));
    send_body(&mut f, &h, &[M1]);
    let body = br#"{"errors":[{"code":"MANIFEST_BLOB_UNKNOWN","message":"blob unknown"}]}"#;
    respond(&mut f, &h, answer(400, &[("content-type", "application/json"), ("content-length", "70")], body));
    let r = h.reply().unwrap();
    assert_eq!(r.status, 400);
    assert_eq!(r.body, body.to_vec());
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.header("content-length"), None, "framing is Envoy's");
    // The claim is gone: another manifest may now be the first push.
    assert_eq!(push(&h, &w, "v1", M2, None).status, 201);
}

#[test]
fn a_reset_write_keeps_the_claim_until_it_expires() {
    let h = FakeHost::new();
    let w = worker(&h, POLICY);
    let mut f = Filter::new(Some(w.clone()));
    put_headers(&mut f, &h, "v1", M1);
    respond(&mut f, &h, head_answer(None));
    send_body(&mut f, &h, &[M1]);
    respond(&mut f, &h, Reply { status: 0, headers: Vec::new(), body: Vec::new() });
    assert_eq!(h.reply().unwrap().status, 503);
    // The registry may hold M1 now: M2 must not get in on an "absent" answer.
    let r = push(&h, &w, "v1", M2, None);
    assert_eq!(r.status, 409);
    assert!(r.json()["errors"][0]["detail"]["in_flight"].is_string());
}

#[test]
fn audit_mode_writes_what_it_would_refuse() {
    let h = FakeHost::new();
    let w = worker(&h, r#"{"upstream": {"cluster": "registry"}, "global": {"immutable_tags": true}, "mode": "audit"}"#);
    let mut f = Filter::new(Some(w.clone()));
    put_headers(&mut f, &h, "v1", M2);
    respond(&mut f, &h, head_answer(Some(M1)));
    send_body(&mut f, &h, &[M2]);
    assert_eq!(h.calls_with("PUT").len(), 1);
    respond(&mut f, &h, created(M2));
    assert_eq!(h.reply().unwrap().status, 201);
    assert_eq!(h.counter("audit_would_refuse"), 1);
}

#[test]
fn a_request_that_cannot_be_made_harmless_is_refused() {
    let h = FakeHost::new();
    let w = worker(&h, POLICY);
    h.refuse_header_writes.set(true);
    let mut f = Filter::new(Some(w.clone()));
    put_headers(&mut f, &h, "v1", M1);
    assert_eq!(h.reply().unwrap().status, 500);
    assert!(h.calls.borrow().is_empty());
}

#[test]
fn ordinary_requests_and_mutable_tags_pass_untouched() {
    let h = FakeHost::new();
    let w = worker(&h, POLICY);
    let mut f = Filter::new(Some(w.clone()));
    h.request("PATCH", "/v2/app/blobs/uploads/abc", &[]);
    assert_eq!(f.on_request_headers(&h, false), Action::Continue);
    assert_eq!(f.on_request_body(&h, 10, true), Action::Continue);
    let mut f = Filter::new(Some(w.clone()));
    put_headers(&mut f, &h, "latest", M1);
    assert_eq!(h.request_header_value(":method").as_deref(), Some("PUT"));
    assert_eq!(f.on_request_body(&h, 10, true), Action::Continue);
    assert!(h.calls.borrow().is_empty());
}

#[test]
fn a_delete_by_digest_makes_the_map_forget_its_tags() {
    let h = FakeHost::new();
    let w = worker(&h, POLICY);
    assert_eq!(push(&h, &w, "v1", M1, None).status, 201);
    // The registry deletes the manifest (no tag of the repository holds it any more).
    let mut f = Filter::new(Some(w.clone()));
    h.request("DELETE", &format!("/v2/app/manifests/{}", sha(M1)), &[]);
    assert_eq!(f.on_request_headers(&h, true), Action::Pause);
    let resumes = h.resumes.get();
    respond(&mut f, &h, answer(200, &[("content-type", "application/json")], br#"{"name":"app","tags":[]}"#));
    assert_eq!(h.resumes.get(), resumes + 1);
    *h.response_headers.borrow_mut() = vec![(":status".into(), "202".into())];
    f.on_response_headers(&h);
    f.on_done(&h);
    // The next push of v1 asks the registry again instead of trusting the map.
    let heads = h.calls_with("HEAD").len();
    let mut f = Filter::new(Some(w.clone()));
    assert_eq!(put_headers(&mut f, &h, "v1", M2), Action::Pause);
    assert_eq!(h.calls_with("HEAD").len(), heads + 1);
}

/// A registry whose manifest HEAD answers 200 without `Docker-Content-Digest`
/// (container-registry 0.3.1): the filter GETs the manifest and hashes it.
fn head_without_digest() -> Reply {
    answer(200, &[("content-type", CT.1)], b"")
}

#[test]
fn a_head_without_digest_is_followed_by_a_get_whose_body_is_hashed() {
    for (pushed, status) in [(M2, 409), (M1, 201)] {
        let h = FakeHost::new();
        let w = worker(&h, POLICY);
        let mut f = Filter::new(Some(w.clone()));
        put_headers(&mut f, &h, "v1", pushed);
        respond(&mut f, &h, head_without_digest());
        // Same Accept list and credentials as the HEAD; the headers stay held meanwhile.
        let get = h.last_call().unwrap();
        assert_eq!(get.header(":method"), Some("GET"));
        assert_eq!(get.header(":path"), Some("/v2/app/manifests/v1"));
        assert_eq!(get.header("authorization"), Some("Bearer t"));
        assert_eq!(get.header("accept"), h.calls_with("HEAD")[0].header("accept"));
        assert_eq!(h.resumes.get(), 0);
        respond(&mut f, &h, answer(200, &[("content-type", CT.1)], M1));
        send_body(&mut f, &h, &[pushed]);
        if status == 201 {
            respond(&mut f, &h, created(M1));
        }
        let r = h.reply().unwrap();
        assert_eq!(r.status, status, "{:?}", r.json());
        if status == 409 {
            assert_eq!(r.json()["errors"][0]["detail"]["current_digest"], sha(M1));
            assert!(h.calls_with("PUT").is_empty());
        }
    }
}

#[test]
fn a_get_that_cannot_tell_the_digest_refuses_the_push() {
    let big = vec![b' '; 5 << 20];
    for (reply, why) in [
        (answer(200, &[], b""), "without a body"),
        (answer(500, &[], b"oops"), "GET of the manifest with status 500"),
        (answer(200, &[], &big), "larger than max_manifest_bytes"),
    ] {
        let h = FakeHost::new();
        let w = worker(&h, POLICY);
        let mut f = Filter::new(Some(w.clone()));
        put_headers(&mut f, &h, "v1", M1);
        respond(&mut f, &h, head_without_digest());
        respond(&mut f, &h, reply);
        let r = h.reply().unwrap();
        assert_eq!(r.status, 503);
        assert!(r.json()["errors"][0]["message"].as_str().unwrap().contains(why), "{:?}", r.json());
        assert!(h.calls_with("PUT").is_empty());
    }
    // A 404 to the GET (deleted in between): the tag is new.
    let h = FakeHost::new();
    let w = worker(&h, POLICY);
    let mut f = Filter::new(Some(w.clone()));
    put_headers(&mut f, &h, "v1", M1);
    respond(&mut f, &h, head_without_digest());
    respond(&mut f, &h, head_answer(None));
    send_body(&mut f, &h, &[M1]);
    respond(&mut f, &h, created(M1));
    assert_eq!(h.reply().unwrap().status, 201);
}

#[test]
fn a_delete_by_digest_gets_the_manifests_of_tags_whose_head_has_no_digest() {
    let h = FakeHost::new();
    let w = worker(&h, POLICY);
    let mut f = Filter::new(Some(w.clone()));
    h.request("DELETE", &format!("/v2/app/manifests/{}", sha(M1)), &[]);
    assert_eq!(f.on_request_headers(&h, true), Action::Pause);
    respond(&mut f, &h, answer(200, &[("content-type", "application/json")], br#"{"name":"app","tags":["v1"]}"#));
    respond(&mut f, &h, head_without_digest());
    assert_eq!(h.last_call().unwrap().header(":method"), Some("GET"));
    respond(&mut f, &h, answer(200, &[], M1));
    let r = h.reply().unwrap();
    assert_eq!(r.status, 409, "{:?}", r.json());
    assert_eq!(h.resumes.get(), 0);
}
