//! Issue 21 on the fake host: nothing the filter cannot read gets through (host reads that fail,
//! bytes that are not UTF-8), bounded work per request, `on_upstream_error: allow` only for the
//! registry's own answers, `Invalid` writes and `;` refused with or without a configuration.
use super::fake::{answer, on_headers, respond, sha, worker, FakeHost, Reply};
use crate::filter::{Action, Filter};
use crate::proxy_wasm::header_map::text;

const POLICY: &str = r#"{"upstream": {"cluster": "registry"}, "global": {"immutable_tags": true, "immutable_tags_exclusions": ["^latest$"]}}"#;
const M1: &[u8] = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","n":1}"#;
const M2: &[u8] = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","n":2}"#;
const CT: (&str, &str) = ("content-type", "application/vnd.oci.image.manifest.v1+json");

fn head_answer(body: Option<&[u8]>) -> Reply {
    match body {
        Some(b) => {
            answer(200, &[("docker-content-digest", &sha(b)), ("x-envoy-upstream-service-time", "1")], b"")
        }
        None => answer(404, &[("x-envoy-upstream-service-time", "1")], b""),
    }
}

/// A request's headers as the host glue hands them over: raw bytes read with `header_map::text`.
fn raw_request(h: &FakeHost, method: &[u8], path: &[u8], extra: &[(&str, &str)]) {
    h.request(&text(method.to_vec()), &text(path.to_vec()), extra);
}

fn refused(h: &FakeHost, status: u16, code: &str) -> serde_json::Value {
    let r = h.reply().expect("the client got an answer");
    assert_eq!(r.status, status, "{:?}", String::from_utf8_lossy(&r.body));
    let err = r.json()["errors"][0].clone();
    assert_eq!(err["code"], code, "{err}");
    err
}

#[test]
fn a_put_with_a_non_utf8_query_byte_is_judged_as_a_push_of_its_tag() {
    let h = FakeHost::new();
    let w = worker(&h, POLICY);
    let mut f = Filter::new(Some(w));
    let len = M2.len().to_string();
    raw_request(&h, b"PUT", b"/v2/app/manifests/v1?x=\xff", &[CT, ("content-length", &len)]);
    assert_eq!(on_headers(&mut f, &h, false), Action::Pause, "judged: held while the HEAD is out");
    let head = h.last_call().expect("a HEAD of v1");
    assert_eq!(head.header(":method"), Some("HEAD"));
    assert_eq!(head.header(":path"), Some("/v2/app/manifests/v1"));
    respond(&mut f, &h, head_answer(Some(M1)));
    h.body.borrow_mut().extend_from_slice(M2);
    f.on_request_body(&h, M2.len(), true);
    refused(&h, 409, "DENIED");
    assert!(h.calls_with("PUT").is_empty(), "nothing written");
}

#[test]
fn a_delete_with_a_non_utf8_query_byte_is_judged() {
    let h = FakeHost::new();
    let w = worker(&h, POLICY);
    let mut f = Filter::new(Some(w));
    raw_request(&h, b"DELETE", b"/v2/app/manifests/v1?\xff", &[]);
    assert_eq!(on_headers(&mut f, &h, true), Action::Pause);
    refused(&h, 409, "DENIED");
}

#[test]
fn a_non_utf8_name_or_tag_is_invalid() {
    for path in [
        &b"/v2/app/manifests/v1\xff"[..],
        b"/v2/a\xffp/manifests/v1",
        b"/v2/app/manifests/\xc3\xa9",
        b"/v2/app/manifests/v\x01",
    ] {
        for method in ["PUT", "DELETE"] {
            let h = FakeHost::new();
            let w = worker(&h, POLICY);
            let mut f = Filter::new(Some(w));
            raw_request(&h, method.as_bytes(), path, &[CT]);
            assert_eq!(on_headers(&mut f, &h, false), Action::Pause, "{path:?}");
            let r = h.reply().expect("refused");
            assert_eq!(r.status, 400, "{method} {path:?}");
            assert!(h.calls.borrow().is_empty());
        }
    }
}

#[test]
fn an_ordinary_read_with_a_non_utf8_byte_passes() {
    let h = FakeHost::new();
    let w = worker(&h, POLICY);
    let mut f = Filter::new(Some(w));
    raw_request(&h, b"GET", b"/v2/app/manifests/v1?x=\xff", &[]);
    assert_eq!(on_headers(&mut f, &h, true), Action::Continue);
    assert!(h.reply().is_none());
}

#[test]
fn an_unreadable_path_or_method_refuses_the_request() {
    for name in [":path", ":method"] {
        let h = FakeHost::new();
        let w = worker(&h, POLICY);
        let mut f = Filter::new(Some(w));
        h.request("PUT", "/v2/app/manifests/v1", &[CT]);
        h.unreadable.borrow_mut().push(name.to_string());
        assert_eq!(on_headers(&mut f, &h, false), Action::Pause, "{name}");
        let err = refused(&h, 503, "UNAVAILABLE");
        assert!(err["message"].as_str().unwrap().contains(name), "{err}");
        assert!(h.calls.borrow().is_empty());
    }
}

#[test]
fn an_unreadable_path_refuses_even_a_path_that_looks_ordinary() {
    // The host would not say what the path is: it may be a manifest write.
    let h = FakeHost::new();
    let mut f = Filter::new(Some(worker(&h, POLICY)));
    h.request("GET", "/v2/", &[]);
    h.unreadable.borrow_mut().push(":path".into());
    assert_eq!(on_headers(&mut f, &h, true), Action::Pause);
    refused(&h, 503, "UNAVAILABLE");
}

#[test]
fn an_unreadable_method_override_header_counts_as_present() {
    let h = FakeHost::new();
    let mut f = Filter::new(Some(worker(&h, POLICY)));
    h.request("POST", "/v2/app/manifests/v1", &[]);
    h.unreadable.borrow_mut().push("x-http-method".into());
    assert_eq!(on_headers(&mut f, &h, false), Action::Pause);
    refused(&h, 400, "UNSUPPORTED");
}

#[test]
fn unreadable_headers_at_a_push_refuse_it() {
    let h = FakeHost::new();
    let mut f = Filter::new(Some(worker(&h, POLICY)));
    h.request("PUT", "/v2/app/manifests/v1", &[CT]);
    h.unreadable.borrow_mut().push("*".into());
    assert_eq!(on_headers(&mut f, &h, false), Action::Pause);
    refused(&h, 503, "UNAVAILABLE");
    assert!(h.calls.borrow().is_empty());
}

#[test]
fn invalid_writes_are_refused_without_a_configuration_too() {
    for (method, path) in [
        ("PUT", "//v2/app/manifests/v1"),
        ("PUT", "/v2/app/manifests/v1;x"),
        ("DELETE", "/v2/app/manifests/v1%zz"),
    ] {
        let h = FakeHost::new();
        let mut f = Filter::new(None);
        h.request(method, path, &[CT]);
        assert_eq!(on_headers(&mut f, &h, false), Action::Pause, "{method} {path}");
        let r = h.reply().expect("refused");
        assert_eq!(r.status, 400, "{method} {path}");
    }
    // A read still passes, and a valid write still gets 503 (no policy to judge it with).
    let h = FakeHost::new();
    let mut f = Filter::new(None);
    h.request("GET", "//v2/app/manifests/v1", &[]);
    assert_eq!(on_headers(&mut f, &h, true), Action::Continue);
    h.request("PUT", "/v2/app/manifests/v1", &[CT]);
    let mut f = Filter::new(None);
    assert_eq!(on_headers(&mut f, &h, false), Action::Pause);
    refused(&h, 503, "UNAVAILABLE");
}

#[test]
fn a_semicolon_in_a_write_query_is_refused() {
    let h = FakeHost::new();
    let mut f = Filter::new(Some(worker(&h, POLICY)));
    h.request("PUT", "/v2/app/manifests/v9?x=1;tag=v1", &[CT]);
    assert_eq!(on_headers(&mut f, &h, false), Action::Pause);
    refused(&h, 400, "UNSUPPORTED");
    assert!(h.calls.borrow().is_empty());
}

#[test]
fn a_push_naming_thousands_of_tags_is_refused_before_any_call() {
    let d = sha(M1);
    let query: Vec<String> = (0..8000).map(|i| format!("tag=v{i}")).collect();
    let h = FakeHost::new();
    let mut f = Filter::new(Some(worker(&h, POLICY)));
    h.request("PUT", &format!("/v2/app/manifests/{d}?{}", query.join("&")), &[CT]);
    assert_eq!(on_headers(&mut f, &h, false), Action::Pause);
    let err = refused(&h, 400, "UNSUPPORTED");
    assert!(err["message"].as_str().unwrap().contains("at most 16"), "{err}");
    assert!(h.calls.borrow().is_empty(), "not one registry call");
    // At the cap: one HEAD per tag, no more.
    let h = FakeHost::new();
    let mut f = Filter::new(Some(worker(&h, POLICY)));
    h.request("PUT", &format!("/v2/app/manifests/{d}?{}", query[..16].join("&")), &[CT]);
    assert_eq!(on_headers(&mut f, &h, false), Action::Pause);
    assert!(h.reply().is_none());
    assert_eq!(h.calls_with("HEAD").len(), 16);
    // The cap is the configuration's.
    let h = FakeHost::new();
    let mut f = Filter::new(Some(worker(
        &h,
        r#"{"upstream": {"cluster": "registry"}, "global": {"immutable_tags": true}, "max_tags_per_push": 2}"#,
    )));
    h.request("PUT", &format!("/v2/app/manifests/{d}?{}", query[..3].join("&")), &[CT]);
    on_headers(&mut f, &h, false);
    let err = refused(&h, 400, "UNSUPPORTED");
    assert!(err["message"].as_str().unwrap().contains("at most 2"), "{err}");
}

#[test]
fn the_body_leaves_wasm_memory_once_handed_to_the_write() {
    let h = FakeHost::new();
    let w = worker(&h, POLICY);
    let mut f = Filter::new(Some(w));
    let len = M1.len().to_string();
    h.request("PUT", "/v2/app/manifests/v1", &[CT, ("content-length", &len)]);
    on_headers(&mut f, &h, false);
    respond(&mut f, &h, head_answer(None));
    h.body.borrow_mut().extend_from_slice(M1);
    f.on_request_body(&h, M1.len(), true);
    let put = h.calls_with("PUT");
    assert_eq!(put.len(), 1);
    assert_eq!(put[0].body.as_deref(), Some(M1), "the write carries the judged bytes");
    let crate::filter::State::Push(p) = &f.state else { panic!("still a push") };
    assert_eq!(p.buffered(), 0, "the write has the bytes; the filter keeps none");
}

const ALLOW: &str = r#"{"upstream": {"cluster": "registry"}, "global": {"immutable_tags": true}, "on_upstream_error": "allow", "cache": {"ttl_seconds": 0}}"#;

/// Pushes M2 over a tag whose HEAD gets `head`; the client's answer and the PUTs written.
fn push_over(head: Reply) -> (Reply, usize) {
    let h = FakeHost::new();
    let mut f = Filter::new(Some(worker(&h, ALLOW)));
    let len = M2.len().to_string();
    h.request("PUT", "/v2/app/manifests/v1", &[CT, ("content-length", &len)]);
    on_headers(&mut f, &h, false);
    respond(&mut f, &h, head);
    h.body.borrow_mut().extend_from_slice(M2);
    f.on_request_body(&h, M2.len(), true);
    if h.reply().is_none() {
        respond(
            &mut f,
            &h,
            answer(201, &[("docker-content-digest", &sha(M2)), ("x-envoy-upstream-service-time", "2")], b""),
        );
    }
    (h.reply().expect("an answer"), h.calls_with("PUT").len())
}

#[test]
fn allow_never_applies_to_envoys_own_answers() {
    // What Envoy's router answers itself (no `x-envoy-upstream-service-time`): overflow, no
    // healthy host, a reset or connection failure before headers, a timeout's 504.
    for local in [
        answer(
            503,
            &[("x-envoy-overloaded", "true"), ("content-type", "text/plain")],
            b"upstream connect error or disconnect/reset before headers. reset reason: overflow",
        ),
        answer(503, &[("content-type", "text/plain")], b"no healthy upstream"),
        answer(
            503,
            &[("content-type", "text/plain")],
            b"upstream connect error or disconnect/reset before headers. reset reason: connection failure",
        ),
        answer(504, &[("content-type", "text/plain")], b"upstream request timeout"),
    ] {
        let (r, puts) = push_over(local.clone());
        assert_eq!((r.status, puts), (503, 0), "{:?}", String::from_utf8_lossy(&local.body));
    }
    // A reset with no answer at all (zero headers).
    let (r, puts) = push_over(Reply { status: 0, headers: Vec::new(), body: Vec::new() });
    assert_eq!((r.status, puts), (503, 0));
}

#[test]
fn allow_still_applies_to_the_registrys_own_error() {
    let (r, puts) = push_over(answer(500, &[("x-envoy-upstream-service-time", "4")], b""));
    assert_eq!((r.status, puts), (201, 1), "the trade-off `allow` is set for");
    let (r, puts) = push_over(answer(503, &[("x-envoy-upstream-service-time", "4")], b"registry overloaded"));
    assert_eq!((r.status, puts), (201, 1));
}

/// A 4xx is the registry's word about this client (its pull quota, a bad request), not a sign
/// the registry is down: an attacker who spends their own quota must not get `allow`'s pass.
#[test]
fn allow_never_applies_to_a_clients_own_4xx() {
    for status in [400, 405, 406, 412, 429] {
        let (r, puts) = push_over(answer(status, &[("x-envoy-upstream-service-time", "1")], b""));
        assert_eq!((r.status, puts), (503, 0), "{status}");
    }
}

/// Found by `make fuzz` (FUZZ_SEED=2378254564 FUZZ_CASE=3809): an escaped `manifests` and a raw
/// byte >= 0x80 (escaped by the glue, so the path no longer decodes) passed unjudged, `?tag=` of
/// an immutable tag included.
#[test]
fn an_undecodable_write_path_that_spells_manifests_escaped_is_refused() {
    for p in [&b"/v2/app/%6danifests/sha256:770c48b387405868d242753a202780c8b3de7269254b17386d0\xa3a705f2e9f29e3?tag=new87&tag=v2"[..], b"/v2/app/%6danifests/v1\xff", b"/v2/app/%6danifests/v1%ff"] {
        for method in ["PUT", "DELETE"] {
            let h = FakeHost::new();
            let w = worker(&h, POLICY);
            let mut f = Filter::new(Some(w));
            raw_request(&h, method.as_bytes(), p, &[CT]);
            assert_eq!(on_headers(&mut f, &h, false), Action::Pause, "{method} {p:?}");
            assert_eq!(h.reply().map(|r| r.status), Some(400), "{method} {p:?}");
            assert!(h.calls.borrow().is_empty());
        }
    }
}
