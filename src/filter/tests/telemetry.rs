//! What Envoy's own telemetry sees of the filter (issue 23): the response code details of every
//! local reply, and the client's method kept in a header the filter alone sets.
use super::fake::{answer, on_headers, respond, sha, worker, FakeHost};
use crate::filter::host::Host;
use crate::filter::push::METHOD_HEADER;
use crate::filter::worker::Worker;
use crate::filter::{Action, Filter};
use std::rc::Rc;

const POLICY: &str = r#"{"upstream": {"cluster": "registry"}, "global": {"immutable_tags": true}}"#;
const M1: &[u8] = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","n":1}"#;
const M2: &[u8] = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","n":2}"#;

/// A push of `body` to `app:v1` while the registry holds `holds`, the PUT answered `put`:
/// the response code details of the client's answer, and the request's headers as they left
/// the filter (what an access log reads).
fn push(
    policy: &str,
    body: &[u8],
    holds: Option<&[u8]>,
    put: u16,
    extra: &[(&str, &str)],
) -> (String, u16, FakeHost) {
    let h = FakeHost::new();
    let w = worker(&h, policy);
    let mut f = Filter::new(Some(w));
    let len = body.len().to_string();
    let mut headers = vec![
        ("content-length", len.as_str()),
        ("content-type", "application/vnd.oci.image.manifest.v1+json"),
    ];
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
    let audit =
        r#"{"mode": "audit", "upstream": {"cluster": "registry"}, "global": {"immutable_tags": true}}"#;
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
        assert_eq!(crate::filter::details(status), want);
    }
    // An unreadable write, answered by the filter.
    let h = FakeHost::new();
    let mut f = Filter::new(Some(worker(&h, POLICY)));
    h.request("PUT", "/v2/app/manifests/v1", &[("x-http-method-override", "GET")]);
    on_headers(&mut f, &h, false);
    assert_eq!(h.details.borrow().as_slice(), ["immutable_tags_invalid_request"]);
}

// --- blob deletes (`deletes.blobs`) ------------------------------------------------------------

/// A DELETE of a blob of `repository` under `policy`: the status answered (None: let through).
fn blob_delete(policy: &str, repository: &str) -> Option<u16> {
    let h = FakeHost::new();
    let mut f = Filter::new(Some(worker(&h, policy)));
    h.request("DELETE", &format!("/v2/{repository}/blobs/sha256:{}", "a".repeat(64)), &[]);
    match on_headers(&mut f, &h, true) {
        Action::Continue => {
            assert!(h.reply().is_none());
            None
        }
        Action::Pause => {
            let r = h.reply().expect("an answer");
            assert!(String::from_utf8_lossy(&r.body).contains("UNSUPPORTED"));
            assert_eq!(h.details.borrow().as_slice(), ["immutable_tags_refused"]);
            Some(r.status)
        }
    }
}

#[test]
fn blob_deletes_are_refused_unless_allowed_where_no_tag_can_be_immutable() {
    let scoped = |blobs: &str| {
        format!(
            r#"{{"upstream": {{"cluster": "registry"}}, "deletes": {{"blobs": "{blobs}"}}, "repository": {{"prod": {{"immutable_tags": true}}}}}}"#
        )
    };
    // The default: refused everywhere, also where no tag is immutable.
    assert_eq!(blob_delete(POLICY, "app"), Some(405));
    assert_eq!(blob_delete(&scoped("refuse"), "scratch"), Some(405));
    assert_eq!(blob_delete(&scoped("unprotected"), "prod/api"), Some(405));
    assert_eq!(blob_delete(&scoped("unprotected"), "scratch"), None);
    assert_eq!(blob_delete(&scoped("allow"), "prod/api"), None);
    let rules = r#"{"upstream": {"cluster": "registry"}, "deletes": {"blobs": "unprotected"}, "rules": [{"projects": "team", "repositories": {"matching": "**"}, "tags": {"matching": "v*"}}]}"#;
    assert_eq!(blob_delete(rules, "team/app"), Some(405));
    assert_eq!(blob_delete(rules, "other"), None);
}

#[test]
fn a_blob_delete_without_configuration_is_refused() {
    let h = FakeHost::new();
    let mut f = Filter::new(None);
    h.request("DELETE", &format!("/v2/app/blobs/sha256:{}", "a".repeat(64)), &[]);
    assert_eq!(on_headers(&mut f, &h, true), Action::Pause);
    assert_eq!(h.reply().unwrap().status, 503);
}

#[test]
fn blob_reads_and_uploads_cost_one_more_header_read_and_pass() {
    let h = FakeHost::new();
    let mut f = Filter::new(Some(worker(&h, POLICY)));
    for (method, path) in [
        ("GET", "/v2/app/blobs/sha256:00"),
        ("PATCH", "/v2/app/blobs/uploads/x"),
        ("DELETE", "/v2/app/blobs/uploads/x"),
    ] {
        h.request(method, path, &[]);
        assert_eq!(on_headers(&mut f, &h, true), Action::Continue);
        assert!(h.reply().is_none());
    }
}

// --- credentials on an override (break-glass) ----------------------------------------------------

const BG: &str = r#"{"upstream": {"cluster": "registry"}, "global": {"immutable_tags": true}, "break_glass": {"principals": ["admin"]}}"#;
/// `Basic admin:pw`.
const ADMIN: (&str, &str) = ("authorization", "Basic YWRtaW46cHc=");
const REASON: (&str, &str) = ("x-break-glass-reason", "CVE-2026-1 in v1");
const OTHER_CREDENTIALS: [(&str, &str); 3] =
    [("cookie", "session=valid"), ("x-api-key", "k"), ("private-token", "t")];

fn bg_worker(h: &FakeHost) -> Rc<Worker> {
    let w = worker(h, BG);
    w.registry_auth.set(Some((true, h.now_ms())));
    w
}

#[test]
fn an_overriding_write_carries_only_the_credential_its_principal_was_read_from() {
    let h = FakeHost::new();
    let w = bg_worker(&h);
    let mut f = Filter::new(Some(w));
    let len = M2.len().to_string();
    let mut headers = vec![("content-length", len.as_str()), ADMIN, REASON];
    headers.extend_from_slice(&OTHER_CREDENTIALS);
    h.request("PUT", "/v2/app/manifests/v1", &headers);
    on_headers(&mut f, &h, false);
    respond(&mut f, &h, answer(200, &[("docker-content-digest", &sha(M1))], b""));
    h.body.borrow_mut().extend_from_slice(M2);
    f.on_request_body(&h, M2.len(), true);
    let put = h.calls_with("PUT").pop().expect("the override is written");
    assert_eq!(put.header("authorization"), Some(ADMIN.1));
    for (k, _) in OTHER_CREDENTIALS {
        assert_eq!(put.header(k), None, "{k}");
    }
    assert_eq!(put.header("x-break-glass-reason"), Some(REASON.1));
}

#[test]
fn a_write_without_override_carries_the_clients_headers() {
    let (_, status, h) = push(BG, M1, None, 201, &OTHER_CREDENTIALS);
    assert_eq!(status, 201);
    let put = h.calls_with("PUT").pop().unwrap();
    for (k, v) in OTHER_CREDENTIALS {
        assert_eq!(put.header(k), Some(v), "{k}");
    }
}

#[test]
fn an_overriding_delete_goes_on_without_other_credentials() {
    let h = FakeHost::new();
    let mut f = Filter::new(Some(bg_worker(&h)));
    let mut headers = vec![ADMIN, REASON];
    headers.extend_from_slice(&OTHER_CREDENTIALS);
    h.request("DELETE", "/v2/app/manifests/v1", &headers);
    assert_eq!(on_headers(&mut f, &h, true), Action::Continue, "granted");
    assert!(h.reply().is_none());
    assert_eq!(h.request_header_value("authorization").as_deref(), Some(ADMIN.1));
    for (k, _) in OTHER_CREDENTIALS {
        assert_eq!(h.request_header_value(k), None, "{k}");
    }
    // The removal cannot be made: refused, not sent with them.
    let h = FakeHost::new();
    let mut f = Filter::new(Some(bg_worker(&h)));
    h.request("DELETE", "/v2/app/manifests/v1", &headers);
    h.refuse_header_writes.set(true);
    assert_eq!(on_headers(&mut f, &h, true), Action::Pause);
    assert_eq!(h.reply().unwrap().status, 500);
}

// --- break-glass windows in shared data: one per principal ---------------------------------

#[test]
fn one_principals_window_does_not_replace_anothers() {
    let h = FakeHost::new();
    let policy = r#"{"upstream": {"cluster": "registry"}, "global": {"immutable_tags": true}, "break_glass": {"principals": ["admin", "sre"]}}"#;
    let w = worker(&h, policy);
    w.registry_auth.set(Some((true, h.now_ms())));
    // admin, then sre, open a window on app:v1 by a read carrying the reason.
    for who in [ADMIN, ("authorization", "Basic c3JlOnB3")] {
        let mut f = Filter::new(Some(w.clone()));
        h.request("GET", "/v2/app/manifests/v1", &[who, REASON]);
        assert_eq!(on_headers(&mut f, &h, true), Action::Continue);
        *h.response_headers.borrow_mut() = vec![(":status".to_string(), "200".to_string())];
        assert_eq!(f.on_response_headers(&h), Action::Continue);
        f.on_done(&h);
    }
    // admin's overwrite, without the header (skopeo cannot send it), uses admin's window.
    let mut f = Filter::new(Some(w));
    let len = M2.len().to_string();
    h.request("PUT", "/v2/app/manifests/v1", &[("content-length", len.as_str()), ADMIN]);
    on_headers(&mut f, &h, false);
    respond(&mut f, &h, answer(200, &[("docker-content-digest", &sha(M1))], b""));
    h.body.borrow_mut().extend_from_slice(M2);
    f.on_request_body(&h, M2.len(), true);
    assert_eq!(
        h.calls_with("PUT").len(),
        1,
        "{:?}",
        h.reply().map(|r| String::from_utf8_lossy(&r.body).to_string())
    );
}

// --- the map keys by the registry's host when the client's :authority picks it ---------------

/// Pushes `body` to `app:v1` through `authority`; the registry holds `holds` there. Returns the
/// status and whether a HEAD was sent.
fn push_via(h: &FakeHost, w: &Rc<Worker>, authority: &str, body: &[u8], holds: Option<&[u8]>) -> (u16, bool) {
    let mut f = Filter::new(Some(w.clone()));
    let len = body.len().to_string();
    h.request("PUT", "/v2/app/manifests/v1", &[("content-length", len.as_str())]);
    h.set_request_header(":authority", authority).unwrap();
    h.calls.borrow_mut().clear();
    h.replies.borrow_mut().clear();
    on_headers(&mut f, h, false);
    let headed = !h.calls_with("HEAD").is_empty();
    if headed {
        let head = match holds {
            Some(b) => answer(200, &[("docker-content-digest", &sha(b))], b""),
            None => answer(404, &[], b""),
        };
        respond(&mut f, h, head);
    }
    h.body.borrow_mut().extend_from_slice(body);
    f.on_request_body(h, body.len(), true);
    while !h.pending.borrow().is_empty() {
        respond(&mut f, h, answer(201, &[("docker-content-digest", &sha(body))], b""));
    }
    f.on_done(h);
    (h.reply().expect("an answer").status, headed)
}

#[test]
fn a_digest_learned_on_one_host_does_not_answer_for_another() {
    // One cluster serving two registries by host, upstream.authority unset: a.example holds M1
    // at app:v1, b.example holds M2 there.
    let h = FakeHost::new();
    let w = worker(&h, POLICY);
    assert_eq!(push_via(&h, &w, "a.example", M1, Some(M1)), (201, true));
    // b's tag is M2: pushing M1 there is an overwrite, whatever a's map entry says.
    assert_eq!(push_via(&h, &w, "b.example", M1, Some(M2)), (409, true), "asked b, not a's entry");
    // The same host in another case is the same key.
    assert!(!push_via(&h, &w, "A.EXAMPLE", M1, Some(M1)).1, "a's entry answers");
    // No host and repository spell another's key.
    assert_ne!(w.map_key("app", Some("a.example/x")), w.map_key("x/app", Some("a.example")));
    // With upstream.authority set every call goes to that host: one key.
    let h = FakeHost::new();
    let w = worker(
        &h,
        r#"{"upstream": {"cluster": "registry", "authority": "r.internal"}, "global": {"immutable_tags": true}}"#,
    );
    assert_eq!(push_via(&h, &w, "a.example", M1, Some(M1)), (201, true));
    assert_eq!(push_via(&h, &w, "b.example", M1, Some(M1)), (201, false));
}

// --- break-glass: a principal verified by Envoy's jwt_authn -----------------------------------

#[test]
fn a_principal_verified_by_jwt_authn_needs_no_proof_from_the_registry() {
    let policy = r#"{"upstream": {"cluster": "registry"}, "global": {"immutable_tags": true},
      "break_glass": {"principals": ["admin"], "jwt_authn_payload": "jwt_payload"}}"#;
    // The registry demands no authentication: only Envoy's verification proves anyone.
    let overwrite = |sub: Option<&str>, auth: (&str, &str)| {
        let h = FakeHost::new();
        let w = worker(&h, policy);
        w.registry_auth.set(Some((false, h.now_ms())));
        *h.jwt_authn_sub.borrow_mut() = sub.map(str::to_string);
        let mut f = Filter::new(Some(w));
        let len = M2.len().to_string();
        h.request("PUT", "/v2/app/manifests/v1", &[("content-length", len.as_str()), auth, REASON]);
        on_headers(&mut f, &h, false);
        respond(&mut f, &h, answer(200, &[("docker-content-digest", &sha(M1))], b""));
        h.body.borrow_mut().extend_from_slice(M2);
        f.on_request_body(&h, M2.len(), true);
        let written = !h.calls_with("PUT").is_empty();
        let why = h
            .reply()
            .map(|r| r.json()["errors"][0]["detail"]["break_glass"].as_str().unwrap_or("").to_string());
        (written, why)
    };
    assert!(overwrite(Some("admin"), ("authorization", "Bearer x")).0);
    // Verified, but not listed; or only claimed (Basic admin): refused.
    assert!(overwrite(Some("bob"), ADMIN).1.unwrap().contains("principal 'bob' is not in"));
    assert!(overwrite(None, ADMIN).1.unwrap().contains("unproven"));
    // Without the setting the metadata is not read at all.
    let h = FakeHost::new();
    let w = worker(&h, BG);
    w.registry_auth.set(Some((false, h.now_ms())));
    *h.jwt_authn_sub.borrow_mut() = Some("admin".into());
    let mut f = Filter::new(Some(w));
    h.request("DELETE", "/v2/app/manifests/v1", &[("authorization", "Bearer x"), REASON]);
    assert_eq!(on_headers(&mut f, &h, true), Action::Pause);
    assert_eq!(h.reply().unwrap().status, 409);
}
