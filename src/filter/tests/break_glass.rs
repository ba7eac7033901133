//! Break-glass on one Envoy: who may override or delete and why not, the audit line, the
//! race for the claim, windows opened by a read, and the probe that learns whether the
//! registry demands authentication.
use super::*;

#[test]
fn a_proven_listed_principal_with_a_reason_overwrites_and_is_audited() {
    let h = FakeHost::new();
    let w = bg_worker(&h, BG, Some(true));
    let r = bg_push(&h, &w, "v1", M2, M1, &[ADMIN, REASON, ("x-request-id", "req-7")], created(M2));
    assert_eq!(r.status, 201);
    let puts = h.calls_with("PUT");
    assert_eq!(puts.len(), 1);
    assert_eq!(puts[0].body.as_deref(), Some(M2));
    assert_eq!(puts[0].header("authorization"), Some(ADMIN.1), "the registry checks the same credentials");
    let lines = bg_lines(&h);
    assert_eq!(lines.len(), 1);
    let l = &lines[0];
    assert_eq!(
        (l["principal"].as_str(), l["reason"].as_str(), l["action"].as_str()),
        (Some("admin"), Some(REASON.1), Some("overwrite"))
    );
    assert_eq!(
        (l["repository"].as_str(), l["tag"].as_str(), l["request_id"].as_str()),
        (Some("app"), Some("v1"), Some("req-7"))
    );
    assert_eq!(l["current_digest"], sha(M1));
    assert_eq!(l["pushed_digest"], sha(M2));
    assert!(!h.logs.borrow().iter().any(|(_, m)| m.contains("YWRtaW46cHc")), "never a credential");
    assert_eq!(h.counter("break_glass_overrides"), 1);
    assert_eq!(h.counter("overwrites_refused"), 0);
}

#[test]
fn an_override_the_registry_refuses_is_not_counted() {
    let h = FakeHost::new();
    let w = bg_worker(&h, BG, Some(true));
    let denied =
        answer(401, &[("www-authenticate", "Basic realm=x")], br#"{"errors":[{"code":"UNAUTHORIZED"}]}"#);
    let r = bg_push(&h, &w, "v1", M2, M1, &[ADMIN, REASON], denied);
    assert_eq!(r.status, 401, "the registry's answer is relayed");
    assert!(bg_lines(&h).is_empty());
    assert_eq!(h.counter("break_glass_overrides"), 0);
}

#[test]
fn an_override_is_refused_and_the_refusal_says_why() {
    for (auth, extra, expect) in [
        (
            Some(false),
            vec![ADMIN, REASON],
            "does not demand authentication, so principal 'admin' is unproven",
        ),
        (None, vec![ADMIN, REASON], "could not learn"),
        (Some(true), vec![BOB, REASON], "principal 'bob' is not in break_glass.principals"),
        (Some(true), vec![ADMIN, ("x-break-glass-reason", " ")], "header is empty"),
        (Some(true), vec![("authorization", "Bearer opaque"), REASON], "names no principal"),
        (Some(true), vec![ADMIN], ""),
    ] {
        let h = FakeHost::new();
        let w = bg_worker(&h, BG, auth);
        let r = bg_push(&h, &w, "v1", M2, M1, &extra, created(M2));
        assert_eq!(r.status, 409, "{expect}");
        assert!(h.calls_with("PUT").is_empty(), "{expect}");
        assert!(why(&r).contains(expect), "{} / {expect}", why(&r));
        assert_eq!(why(&r).is_empty(), expect.is_empty(), "nothing asked: nothing said");
        assert_eq!(h.counter("break_glass_overrides"), 0);
    }
    // Out of scope: another repository.
    let h = FakeHost::new();
    let w = bg_worker(&h, &BG.replace(r#"["app"]"#, r#"["prod/**"]"#), Some(true));
    let r = bg_push(&h, &w, "v1", M2, M1, &[ADMIN, REASON], created(M2));
    assert!(why(&r).contains("repository 'app' is not in break_glass.repositories"), "{}", why(&r));
}

#[test]
fn overrides_race_for_the_claim_like_any_write() {
    // Two workers of one Envoy, two overriding pushes of different manifests: one winner.
    let h1 = FakeHost::new();
    let h2 = h1.share_with();
    let (w1, w2) = (bg_worker(&h1, BG, Some(true)), bg_worker(&h2, BG, Some(true)));
    let (mut a, mut b) = (Filter::new(Some(w1)), Filter::new(Some(w2)));
    for (f, h, body) in [(&mut a, &h1, M2), (&mut b, &h2, b"{\"other\":1}".as_slice())] {
        h.request("PUT", "/v2/app/manifests/v1", &[CT, ADMIN, REASON]);
        on_headers(f, h, false);
        respond(f, h, head_answer(Some(M1)));
        send_body(f, h, &[body]);
    }
    assert_eq!(h1.calls_with("PUT").len() + h2.calls_with("PUT").len(), 1, "one winner");
    assert_eq!(h2.reply().unwrap().status, 409);
}

#[test]
fn deletes_are_overridden_only_when_the_actions_allow_it() {
    for (policy, status, count) in
        [(BG.to_string(), None, 1), (BG.replace(r#", "delete"]"#, "]"), Some(409), 0)]
    {
        let h = FakeHost::new();
        let w = bg_worker(&h, &policy, Some(true));
        let mut f = Filter::new(Some(w.clone()));
        h.request("DELETE", "/v2/app/manifests/v1", &[ADMIN, REASON]);
        let action = on_headers(&mut f, &h, true);
        assert_eq!(h.reply().map(|r| r.status), status);
        if status.is_none() {
            assert_eq!(action, Action::Continue);
            h.response_headers.borrow_mut().push((":status".into(), "202".into()));
            f.on_response_headers(&h);
        } else {
            assert!(why(&h.reply().unwrap()).contains("does not include \"delete\""));
        }
        assert_eq!(h.counter("break_glass_overrides"), count);
        assert_eq!(bg_lines(&h).iter().filter(|l| l["outcome"] == "accepted").count() as u64, count);
    }
}

#[test]
fn a_window_lets_one_push_of_its_principal_through_without_the_header() {
    let h = FakeHost::new();
    let w = bg_worker(&h, BG, Some(true));
    // Opened by a read of the tag carrying the reason that the registry answered 2xx.
    let open = |status: &str, auth| {
        let mut f = Filter::new(Some(w.clone()));
        h.request("HEAD", "/v2/app/manifests/v1", &[auth, REASON]);
        assert_eq!(on_headers(&mut f, &h, true), Action::Continue);
        h.response_headers.borrow_mut().push((":status".into(), status.into()));
        f.on_response_headers(&h);
    };
    open("401", ADMIN);
    assert_eq!(
        bg_push(&h, &w, "v1", M2, M1, &[ADMIN], created(M2)).status,
        409,
        "a read the registry refused opens nothing"
    );
    open("200", BOB);
    assert_eq!(
        bg_push(&h, &w, "v1", M2, M1, &[BOB], created(M2)).status,
        409,
        "an unlisted principal opens nothing"
    );
    open("200", ADMIN);
    assert_eq!(
        bg_push(&h, &w, "v1", M2, M1, &[SRE], created(M2)).status,
        409,
        "the window is the principal's"
    );
    let r = bg_push(&h, &w, "v1", M2, M1, &[ADMIN], created(M2));
    assert_eq!(r.status, 201, "{:?} {:?}", r.json(), h.logs.borrow());
    assert_eq!(bg_lines(&h)[0]["reason"], REASON.1);
    let r = bg_push(&h, &w, "v1", M1, M2, &[ADMIN], created(M1));
    assert_eq!(r.status, 409, "used up");
    // A window expires.
    open("200", ADMIN);
    h.advance(crate::verdict::break_glass::WINDOW_MS);
    assert_eq!(bg_push(&h, &w, "v1", M1, M2, &[ADMIN], created(M1)).status, 409, "expired");
}

#[test]
fn the_probe_learns_from_the_registry_answer() {
    let h = FakeHost::new();
    let w = worker(&h, BG);
    crate::filter::break_glass::probe(&h, &w);
    let call = h.last_call().unwrap();
    assert_eq!(
        (call.header(":method"), call.header(":path"), call.header("authorization")),
        (Some("GET"), Some("/v2/"), None)
    );
    for (status, learned) in [("500", None), ("401", Some(true)), ("200", Some(false))] {
        let token = h.pending.borrow_mut().pop_front().unwrap();
        h.set_answer(Some(answer(status.parse().unwrap(), &[], b"")));
        // Another root call's answer (etcd) is not the probe's.
        assert!(!crate::filter::break_glass::learn(&h, &w, token + 100));
        assert!(crate::filter::break_glass::learn(&h, &w, token));
        assert_eq!(crate::filter::break_glass::registry_auth(&h, &w), learned, "{status}");
        h.advance(crate::filter::break_glass::PROBE_PERIOD_MS);
        crate::filter::break_glass::probe(&h, &w);
    }
    h.advance(60_000);
    assert_eq!(crate::filter::break_glass::registry_auth(&h, &w), None, "stale knowledge is no knowledge");
}

#[test]
fn audit_mode_overrides_and_logs_like_enforce() {
    let h = FakeHost::new();
    let w = bg_worker(&h, &BG.replace(r#"{"global""#, r#"{"mode": "audit", "global""#), Some(true));
    assert_eq!(bg_push(&h, &w, "v1", M2, M1, &[ADMIN, REASON], created(M2)).status, 201);
    assert_eq!(bg_lines(&h)[0]["mode"], "audit");
    assert_eq!(
        (h.counter("break_glass_overrides"), h.counter("audit_would_refuse")),
        (1, 0),
        "an override is no refusal"
    );
}

#[test]
fn a_break_glass_delete_the_registry_refuses_is_neither_audited_nor_forgotten() {
    let h = FakeHost::new();
    let w = bg_worker(&h, BG, Some(true));
    assert_eq!(push(&h, &w, "v1", M1, None).status, 201);
    let mut f = Filter::new(Some(w.clone()));
    h.request("DELETE", "/v2/app/manifests/v1", &[ADMIN, REASON]);
    assert_eq!(on_headers(&mut f, &h, true), Action::Continue, "let through by break-glass");
    *h.response_headers.borrow_mut() = vec![(":status".into(), "401".into())];
    *h.code_details.borrow_mut() = Some("via_upstream".into());
    assert_eq!(f.on_response_headers(&h), Action::Continue);
    let outcomes: Vec<_> = bg_lines(&h).iter().map(|l| l["outcome"].clone()).collect();
    assert_eq!(outcomes, vec!["refused"]);
    assert_eq!(h.counter("break_glass_overrides"), 0);
    // The tag is still there: the map still knows it (no HEAD for the next push).
    let heads = h.calls_with("HEAD").len();
    let mut f = Filter::new(Some(w.clone()));
    put_headers(&mut f, &h, "v1", M2);
    assert_eq!(h.calls_with("HEAD").len(), heads);
}

#[test]
fn what_a_worker_learned_of_the_registry_auth_is_trusted_for_a_minute_only() {
    let h = FakeHost::new();
    let w = bg_worker(&h, BG, Some(true));
    h.advance(59_999);
    assert_eq!(crate::filter::break_glass::registry_auth(&h, &w), Some(true));
    h.advance(1);
    assert_eq!(crate::filter::break_glass::registry_auth(&h, &w), None, "60 s old: stale");
}

#[test]
fn the_probe_runs_only_with_break_glass_and_only_when_due() {
    let h = FakeHost::new();
    let w = worker(&h, POLICY);
    crate::filter::break_glass::probe(&h, &w);
    assert!(h.calls.borrow().is_empty(), "no break-glass: nothing to learn");
    let w = worker(&h, BG);
    crate::filter::break_glass::probe(&h, &w);
    assert_eq!(h.calls.borrow().len(), 1);
    h.advance(crate::filter::break_glass::PROBE_PERIOD_MS - 1);
    crate::filter::break_glass::probe(&h, &w);
    assert_eq!(h.calls.borrow().len(), 1, "not due yet");
    h.advance(1);
    crate::filter::break_glass::probe(&h, &w);
    assert_eq!(h.calls.borrow().len(), 2);
}

#[test]
fn a_window_lasts_window_ms_from_the_read_that_opened_it() {
    use crate::verdict::break_glass::WINDOW_MS;
    for (after, status) in [(WINDOW_MS - 1, 201), (WINDOW_MS, 409)] {
        let h = FakeHost::new();
        let w = bg_worker(&h, BG, Some(true));
        let mut f = Filter::new(Some(w.clone()));
        h.request("HEAD", "/v2/app/manifests/v1", &[ADMIN, REASON]);
        on_headers(&mut f, &h, true);
        *h.response_headers.borrow_mut() = vec![(":status".into(), "200".into())];
        f.on_response_headers(&h);
        h.advance(after);
        // Fresh knowledge of the registry's authentication: only the window's age counts.
        w.registry_auth.set(Some((true, h.now_ms())));
        let r = bg_push(&h, &w, "v1", M2, M1, &[ADMIN], created(M2));
        assert_eq!(r.status, status, "{after} ms after: {:?}", r.json());
        assert_eq!(h.counter("break_glass_overrides"), u64::from(status == 201));
    }
}
