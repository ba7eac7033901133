//! Pushes (manifest writes) on one worker: the lookup (HEAD, or GET when the HEAD names no
//! digest), the body judged whole whatever its parts, the size limit, the harmless request held
//! or sent, `on_upstream_error`, audit mode, and what the client and the registry see.
use super::*;

/// Delivers one more part that does not end the body.
fn send_part(f: &mut Filter, h: &FakeHost, part: &[u8]) -> Action {
    h.body.borrow_mut().extend_from_slice(part);
    let size = h.body.borrow().len();
    f.on_request_body(h, size, false)
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
    assert!(f.in_flight(), "a push holding the harmless answer keeps its state");
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
    let w = worker(
        &h,
        r#"{"upstream": {"cluster": "registry"}, "global": {"immutable_tags": true}, "max_manifest_bytes": 1024}"#,
    );
    let mut f = Filter::new(Some(w.clone()));
    put_headers(&mut f, &h, "v1", &[b' '; 1025]);
    let r = h.reply().unwrap();
    assert_eq!((r.status, r.json()["errors"][0]["code"].as_str()), (413, Some("SIZE_INVALID")));
    assert!(h.calls.borrow().is_empty());
}

#[test]
fn an_oversized_body_without_a_length_is_refused_when_it_outgrows_the_limit() {
    let h = FakeHost::new();
    let w = worker(
        &h,
        r#"{"upstream": {"cluster": "registry"}, "global": {"immutable_tags": true}, "max_manifest_bytes": 1024}"#,
    );
    let mut f = Filter::new(Some(w.clone()));
    h.request("PUT", "/v2/app/manifests/v1", &[CT, ("transfer-encoding", "chunked")]);
    on_headers(&mut f, &h, false);
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
    send_body(&mut f, &h, &[M2]);
    let r = h.reply().unwrap();
    assert_eq!(r.status, 409);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert!(h.calls_with("PUT").is_empty());
    assert_eq!(h.counter("overwrites_refused"), 1);
}

#[test]
fn a_harmless_answer_before_the_body_refuses_instead_of_hanging() {
    // A registry that answers the OPTIONS without reading a body ends the route's upstream
    // exchange; Envoy then hands the filter no more of the body. Refused (503, retry), never
    // written, in audit mode too.
    for policy in [
        POLICY,
        r#"{"upstream": {"cluster": "registry"}, "global": {"immutable_tags": true}, "mode": "audit"}"#,
    ] {
        let h = FakeHost::new();
        let w = worker(&h, policy);
        let mut f = Filter::new(Some(w.clone()));
        put_headers(&mut f, &h, "v1", M2);
        respond(&mut f, &h, head_answer(Some(M1)));
        assert_eq!(h.resumes.get(), 1, "the harmless headers went, to receive the body");
        assert_eq!(f.on_response_headers(&h), Action::Pause);
        let r = h.reply().expect("answered at once");
        assert_eq!(r.status, 503);
        assert!(r.json()["errors"][0]["message"].as_str().unwrap().contains("before the manifest arrived"));
        assert!(h.calls_with("PUT").is_empty());
    }
}

#[test]
fn an_envoy_that_delivers_bodies_behind_held_headers_never_sends_the_harmless_request() {
    let h = FakeHost::new();
    let w = worker(&h, POLICY);
    // First push: the body arrives while the HEAD is out (allow_on_headers_stop_iteration).
    let mut f = Filter::new(Some(w.clone()));
    put_headers(&mut f, &h, "v1", M1);
    send_part(&mut f, &h, &M1[..4]);
    respond(&mut f, &h, head_answer(None));
    send_body(&mut f, &h, &[&M1[4..]]);
    respond(&mut f, &h, created(M1));
    assert_eq!(h.resumes.get(), 0);
    // From the map now: the headers stay held until the body is here.
    let mut f = Filter::new(Some(w.clone()));
    assert_eq!(put_headers(&mut f, &h, "v1", M1), Action::Pause);
    send_body(&mut f, &h, &[M1]);
    respond(&mut f, &h, created(M1));
    assert_eq!(h.reply().unwrap().status, 201);
    assert_eq!(h.resumes.get(), 0);
}

#[test]
fn audit_mode_writes_unjudged_a_push_whose_head_could_not_be_sent() {
    let h = FakeHost::new();
    let w = worker(
        &h,
        r#"{"upstream": {"cluster": "registry"}, "global": {"immutable_tags": true}, "mode": "audit"}"#,
    );
    *h.dispatch_error.borrow_mut() = Some("BadArgument".into());
    let mut f = Filter::new(Some(w.clone()));
    // Let go at once (Istio-style Envoys deliver the body only then)...
    assert_eq!(put_headers(&mut f, &h, "v1", M1), Action::Continue);
    *h.dispatch_error.borrow_mut() = None;
    // ...and written with the whole body, unjudged.
    send_body(&mut f, &h, &[&M1[..5], &M1[5..]]);
    let puts = h.calls_with("PUT");
    assert_eq!(puts.len(), 1);
    assert_eq!(puts[0].body.as_deref(), Some(M1));
    respond(&mut f, &h, created(M1));
    assert_eq!(h.reply().unwrap().status, 201);
    assert_eq!(h.counter("audit_would_refuse"), 1);
}

#[test]
fn audit_mode_writes_what_it_would_refuse() {
    let h = FakeHost::new();
    let w = worker(
        &h,
        r#"{"upstream": {"cluster": "registry"}, "global": {"immutable_tags": true}, "mode": "audit"}"#,
    );
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
fn a_manifest_of_exactly_the_limit_is_judged_and_written() {
    let h = FakeHost::new();
    let w = worker(&h, LIMIT_1K);
    // Announced by its Content-Length.
    assert_eq!(push(&h, &w, "v1", &[b' '; 1024], None).status, 201);
    // Chunked, in two parts.
    let mut f = Filter::new(Some(w.clone()));
    h.request("PUT", "/v2/app/manifests/v2", &[CT, ("transfer-encoding", "chunked")]);
    on_headers(&mut f, &h, false);
    respond(&mut f, &h, head_answer(None));
    h.body.borrow_mut().clear();
    send_body(&mut f, &h, &[&[b' '; 512], &[b' '; 512]]);
    let puts = h.calls_with("PUT");
    assert_eq!(puts.last().and_then(|c| c.body.as_ref()).map(Vec::len), Some(1024));
}

#[test]
fn a_body_jumping_past_the_limit_is_refused_before_it_ends() {
    let h = FakeHost::new();
    let w = worker(&h, LIMIT_1K);
    let mut f = Filter::new(Some(w.clone()));
    h.request("PUT", "/v2/app/manifests/v1", &[CT, ("transfer-encoding", "chunked")]);
    on_headers(&mut f, &h, false);
    respond(&mut f, &h, head_answer(None));
    send_part(&mut f, &h, &[b' '; 1000]);
    assert!(h.reply().is_none());
    send_part(&mut f, &h, &[b' '; 1000]); // 2000 bytes, more to come: refused now, not at the end
    let r = h.reply().expect("refused while the body still grows");
    let e = &r.json()["errors"][0];
    assert_eq!(
        (r.status, e["code"].as_str(), e["detail"]["tag"].as_str()),
        (413, Some("SIZE_INVALID"), Some("v1"))
    );
    assert!(h.calls_with("PUT").is_empty());
}

#[test]
fn an_announced_oversized_manifest_names_the_tag() {
    let h = FakeHost::new();
    let w = worker(&h, LIMIT_1K);
    let mut f = Filter::new(Some(w.clone()));
    put_headers(&mut f, &h, "v7", &[b' '; 1025]);
    let r = h.reply().unwrap();
    assert_eq!(
        r.json()["errors"][0]["detail"],
        serde_json::json!({"repository": "app", "tag": "v7", "limit": 1024})
    );
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
fn on_upstream_error_allow_does_not_write_a_push_whose_head_cannot_be_sent() {
    // `allow` trades the registry's word for availability, but a HEAD Envoy will not even send
    // (unknown cluster) got no answer from the registry: refused either way.
    let allow = r#"{"upstream": {"cluster": "registry"}, "global": {"immutable_tags": true}, "on_upstream_error": "allow"}"#;
    for (policy, status, puts) in [(allow, 503, 0), (POLICY, 503, 0)] {
        let h = FakeHost::new();
        let w = worker(&h, policy);
        *h.dispatch_error_method.borrow_mut() = Some("HEAD".into());
        let r = push(&h, &w, "v1", M1, None);
        assert_eq!(r.status, status, "{policy}");
        assert!(h.calls_with("HEAD").is_empty());
        let written = h.calls_with("PUT");
        assert_eq!(written.len(), puts, "{policy}");
        assert!(written.iter().all(|c| c.body.as_deref() == Some(M1)));
    }
}

#[test]
fn an_empty_body_callback_while_the_head_is_out_does_not_keep_the_headers_held() {
    // Istio-style: the body only comes once the (harmless) headers go. An empty data callback
    // is no body byte: it must neither keep them held nor teach the worker that Envoy
    // delivers bodies behind held headers.
    let h = FakeHost::new();
    let w = worker(&h, POLICY);
    let mut f = Filter::new(Some(w.clone()));
    assert_eq!(put_headers(&mut f, &h, "v1", M1), Action::Pause);
    assert_eq!(f.on_request_body(&h, 0, false), Action::Pause);
    assert!(!w.holds_headers());
    respond(&mut f, &h, head_answer(None));
    assert_eq!(h.resumes.get(), 1, "the harmless headers go, so that the body comes");
    send_body(&mut f, &h, &[M1]);
    respond(&mut f, &h, created(M1));
    assert_eq!(h.reply().unwrap().status, 201);
}

#[test]
fn trailers_end_a_chunked_push_body_and_it_is_written() {
    let h = FakeHost::new();
    let w = worker(&h, POLICY);
    let mut f = Filter::new(Some(w.clone()));
    h.request("PUT", "/v2/app/manifests/v1", &[CT, ("transfer-encoding", "chunked")]);
    assert_eq!(on_headers(&mut f, &h, false), Action::Pause);
    respond(&mut f, &h, head_answer(None));
    assert_eq!(send_part(&mut f, &h, M1), Action::Pause);
    assert!(h.calls_with("PUT").is_empty(), "the body may go on");
    assert_eq!(f.on_request_trailers(&h), Action::Pause);
    let puts = h.calls_with("PUT");
    assert_eq!(puts.len(), 1);
    assert_eq!(puts[0].body.as_deref(), Some(M1));
    respond(&mut f, &h, created(M1));
    assert_eq!(h.reply().unwrap().status, 201);
}

#[test]
fn a_push_answered_early_says_whether_the_registry_or_envoy_answered() {
    let reset = "upstream_reset_before_response_started{connection_failure}";
    for (details, why) in [
        ("via_upstream", "the registry answered before the manifest arrived".to_string()),
        (reset, format!("the registry could not be reached ({reset})")),
    ] {
        let h = FakeHost::new();
        let w = worker(&h, POLICY);
        let mut f = Filter::new(Some(w.clone()));
        put_headers(&mut f, &h, "v1", M2);
        respond(&mut f, &h, head_answer(Some(M1)));
        *h.code_details.borrow_mut() = Some(details.into());
        *h.response_headers.borrow_mut() = vec![(":status".into(), "503".into())];
        assert_eq!(f.on_response_headers(&h), Action::Pause);
        let r = h.reply().expect("answered at once");
        assert_eq!(r.status, 503);
        let message = r.json()["errors"][0]["message"].as_str().unwrap().to_string();
        assert!(message.contains(&why), "{details}: {message}");
        assert!(h.calls_with("PUT").is_empty());
    }
}

const AUDIT: &str =
    r#"{"upstream": {"cluster": "registry"}, "global": {"immutable_tags": true}, "mode": "audit"}"#;

#[test]
fn audit_mode_keeps_headers_held_over_a_buffered_body_part() {
    // Releasing them would send the buffered bytes upstream with the harmless request.
    let h = FakeHost::new();
    let w = worker(&h, AUDIT);
    let mut f = Filter::new(Some(w.clone()));
    put_headers(&mut f, &h, "v1", M1);
    send_part(&mut f, &h, &M1[..4]);
    respond(&mut f, &h, answer(500, &[], b"oops"));
    assert_eq!(h.resumes.get(), 0);
    assert_eq!(h.counter("audit_would_refuse"), 1);
    send_body(&mut f, &h, &[&M1[4..]]);
    assert_eq!(h.calls_with("PUT").last().and_then(|c| c.body.clone()).as_deref(), Some(M1));
    respond(&mut f, &h, created(M1));
    assert_eq!(h.reply().unwrap().status, 201);
}

#[test]
fn an_unjudged_audit_push_answered_early_is_counted_once() {
    let h = FakeHost::new();
    let w = worker(&h, AUDIT);
    *h.dispatch_error.borrow_mut() = Some("BadArgument".into());
    let mut f = Filter::new(Some(w.clone()));
    assert_eq!(put_headers(&mut f, &h, "v1", M1), Action::Continue);
    *h.dispatch_error.borrow_mut() = None;
    assert_eq!(h.counter("audit_would_refuse"), 1);
    *h.response_headers.borrow_mut() = vec![(":status".into(), "200".into())];
    assert_eq!(f.on_response_headers(&h), Action::Pause);
    assert_eq!(h.reply().unwrap().status, 503);
    assert_eq!(h.counter("audit_would_refuse"), 1, "one request, one would-be refusal");
}

#[test]
fn audit_mode_ignores_the_lookups_of_a_push_it_already_let_on() {
    let h = FakeHost::new();
    let w = worker(&h, AUDIT);
    let mut f = Filter::new(Some(w.clone()));
    let len = M1.len().to_string();
    h.request("PUT", &format!("/v2/app/manifests/{}?tag=a&tag=b", sha(M1)), &[CT, ("content-length", &len)]);
    on_headers(&mut f, &h, false);
    assert_eq!(h.calls_with("HEAD").len(), 2);
    respond(&mut f, &h, answer(500, &[], b"oops"));
    assert_eq!(h.resumes.get(), 1, "let on unjudged: the harmless headers go");
    respond(&mut f, &h, answer(500, &[], b"oops"));
    assert!(h.reply().is_none(), "the second lookup no longer matters");
    send_body(&mut f, &h, &[M1]);
    respond(&mut f, &h, created(M1));
    assert_eq!(h.replies.borrow().len(), 1);
    assert_eq!(h.reply().unwrap().status, 201);
    assert_eq!(h.counter("audit_would_refuse"), 1);
}

#[test]
fn a_push_hashes_a_held_manifest_of_exactly_the_limit() {
    let held = vec![b' '; 1024];
    let h = FakeHost::new();
    let w = worker(&h, LIMIT_1K);
    let mut f = Filter::new(Some(w.clone()));
    put_headers(&mut f, &h, "v1", &held);
    respond(&mut f, &h, head_without_digest());
    respond(&mut f, &h, answer(200, &[CT], &held));
    send_body(&mut f, &h, &[&held]);
    respond(&mut f, &h, created(&held));
    assert_eq!(h.reply().unwrap().status, 201, "{:?}", h.reply().unwrap().json());
    assert_eq!(h.counter("pushes_allowed_same_digest"), 1);
}

#[test]
fn a_lookup_the_registry_refuses_is_answered_with_its_status_code_and_challenge() {
    for (status, code) in [(401, "UNAUTHORIZED"), (403, "DENIED")] {
        let h = FakeHost::new();
        let w = worker(&h, POLICY);
        let mut f = Filter::new(Some(w.clone()));
        put_headers(&mut f, &h, "v1", M1);
        respond(&mut f, &h, answer(status, &[("www-authenticate", "Bearer realm=\"x\"")], b""));
        let r = h.reply().unwrap();
        assert_eq!((r.status, r.json()["errors"][0]["code"].as_str()), (status, Some(code)));
        assert_eq!(r.header("www-authenticate"), Some("Bearer realm=\"x\""));
        assert!(h.calls_with("PUT").is_empty());
    }
}

#[test]
fn a_tag_holding_a_sha512_digest_is_judged_by_sha512() {
    use crate::oci::digest::Algorithm;
    for (pushed, status) in [(M1, 201), (M2, 409)] {
        let h = FakeHost::new();
        let w = worker(&h, POLICY);
        let mut f = Filter::new(Some(w.clone()));
        put_headers(&mut f, &h, "v1", pushed);
        let held = Digest::of(Algorithm::Sha512, M1).to_string();
        respond(&mut f, &h, answer(200, &[("docker-content-digest", &held)], b""));
        send_body(&mut f, &h, &[pushed]);
        if status == 201 {
            respond(&mut f, &h, created(pushed));
        }
        let r = h.reply().unwrap();
        assert_eq!(r.status, status, "{:?}", r.json());
        if status == 409 {
            assert_eq!(
                r.json()["errors"][0]["detail"]["pushed_digest"],
                Digest::of(Algorithm::Sha512, M2).to_string()
            );
        }
    }
}

#[test]
fn dispatched_calls_carry_the_clients_authority_or_the_configured_one() {
    let internal = r#"{"upstream": {"cluster": "registry", "authority": "registry.internal"}, "global": {"immutable_tags": true}}"#;
    for (policy, authority) in [(POLICY, "registry.test"), (internal, "registry.internal")] {
        let h = FakeHost::new();
        let w = worker(&h, policy);
        put_headers(&mut Filter::new(Some(w.clone())), &h, "v1", M1);
        assert_eq!(h.last_call().unwrap().header(":authority"), Some(authority));
    }
}

#[test]
fn audit_mode_answers_an_oversized_body_it_cannot_write() {
    // Nothing over max_manifest_bytes is ever written, whatever the mode: once the body is
    // complete (trailers, or its last part), the refusal is answered.
    let h = FakeHost::new();
    let w =
        worker(&h, &LIMIT_1K.replace(r#""max_manifest_bytes""#, r#""mode": "audit", "max_manifest_bytes""#));
    for end in ["trailers", "last part"] {
        let mut f = Filter::new(Some(w.clone()));
        h.replies.borrow_mut().clear();
        h.request(
            "PUT",
            &format!("/v2/app/manifests/{}", if end == "trailers" { "v1" } else { "v2" }),
            &[CT, ("transfer-encoding", "chunked")],
        );
        on_headers(&mut f, &h, false);
        respond(&mut f, &h, head_answer(None));
        if end == "trailers" {
            send_part(&mut f, &h, &[b' '; 2000]);
            f.on_request_trailers(&h);
        } else {
            send_body(&mut f, &h, &[&[b' '; 2000]]);
        }
        let r = h.reply().unwrap_or_else(|| panic!("{end}: no answer"));
        assert_eq!(r.status, 413, "{end}");
        assert!(h.calls_with("PUT").is_empty(), "{end}");
    }
}
