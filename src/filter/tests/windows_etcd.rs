//! Break-glass windows in etcd: every replica sees them, exactly one uses each; etcd out of
//! reach refuses saying so; a failed or refused write puts the window back.
use super::*;

fn etcd_calls(h: &FakeHost) -> usize {
    h.calls.borrow().iter().filter(|c| c.cluster == "etcd").count()
}

fn window_lines(h: &FakeHost) -> Vec<serde_json::Value> {
    h.logs
        .borrow()
        .iter()
        .filter_map(|(_, l)| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["event"] == "immutable_tags.break_glass_window")
        .collect()
}

#[test]
fn a_window_opened_through_one_replica_is_used_once_through_another() {
    let etcd = FakeEtcd::default();
    let (a, wa) = bg_replica(&etcd);
    let (b, wb) = bg_replica(&etcd);
    // The read's answer is held until etcd has the window, bound to a lease of its own.
    let (mut f, action) = read_with_reason(&a, &wa, ADMIN);
    assert_eq!(action, Action::Pause);
    assert!(f.in_flight());
    assert_eq!(a.last_call().unwrap().header(":path"), Some("/v3/lease/grant"));
    respond_with(&mut f, &a, |c| etcd.answer(c));
    assert_eq!(
        (a.last_call().unwrap().header(":path"), a.response_resumes.get()),
        (Some("/v3/kv/txn"), 0),
        "create if absent"
    );
    respond_with(&mut f, &a, |c| etcd.answer(c));
    assert_eq!(a.response_resumes.get(), 1, "let go once etcd has it");
    assert!(f.idle(), "nothing left to remember");
    let (value, _, lease) = etcd.kv.borrow()[WKEY].clone();
    assert_eq!(etcd.ttls.borrow()[&lease], "300", "etcd drops it when the window ends");
    assert_eq!(value, format!("{}\nadmin\n{}", 1_000_000 + crate::verdict::break_glass::WINDOW_MS, REASON.1));
    assert_eq!(window_lines(&a)[0]["not_opened"], serde_json::Value::Null);
    // Through B, without the header: used up, written, audited there.
    let r = bg_push_etcd(&b, &wb, &etcd, M2, M1, &[ADMIN], created(M2));
    assert_eq!(r.status, 201, "{:?}", r.json());
    assert_eq!(b.calls_with("PUT")[0].body.as_deref(), Some(M2));
    assert_eq!(
        (bg_lines(&b)[0]["reason"].as_str(), bg_lines(&b)[0]["principal"].as_str()),
        (Some(REASON.1), Some("admin"))
    );
    assert_eq!(etcd.window(WKEY), None, "used up");
    // Once: the next overwrite (through A) is refused, and says why.
    let r = bg_push_etcd(&a, &wa, &etcd, M1, M2, &[ADMIN], created(M1));
    assert_eq!(r.status, 409);
    assert!(
        why(&r).contains("no break-glass window is open for the principal the request claims, 'admin',"),
        "{}",
        why(&r)
    );
    assert!(a.calls_with("PUT").is_empty());
    assert_eq!(a.counter("break_glass_overrides") + b.counter("break_glass_overrides"), 1);
}

#[test]
fn no_window_refuses_and_only_a_principal_a_window_could_serve_costs_a_round_trip() {
    let etcd = FakeEtcd::default();
    let (b, wb) = bg_replica(&etcd);
    let r = bg_push_etcd(&b, &wb, &etcd, M2, M1, &[ADMIN], created(M2));
    assert_eq!(r.status, 409);
    assert!(
        why(&r).contains(
            "no break-glass window is open for the principal the request claims, 'admin', on this tag"
        ),
        "{}",
        why(&r)
    );
    assert_eq!(b.calls_with("POST").iter().filter(|c| c.header(":path") == Some("/v3/kv/txn")).count(), 1);
    // Unlisted, or anonymous: no window can exist, no call, nothing said.
    let before = etcd_calls(&b);
    for extra in [vec![BOB], vec![]] {
        let r = bg_push_etcd(&b, &wb, &etcd, M2, M1, &extra, created(M2));
        assert_eq!((r.status, why(&r)), (409, String::new()));
    }
    assert_eq!(etcd_calls(&b), before);
    // Another principal's window is not admin's.
    let (a, wa) = bg_replica(&etcd);
    let (mut f, _) = read_with_reason(&a, &wa, SRE);
    while respond_with(&mut f, &a, |c| etcd.answer(c)) {}
    assert!(etcd.window("/immutable-tags/window:app:v1:sre").is_some());
    assert_eq!(bg_push_etcd(&b, &wb, &etcd, M2, M1, &[ADMIN], created(M2)).status, 409);
    assert!(etcd.window("/immutable-tags/window:app:v1:sre").is_some(), "untouched");
}

#[test]
fn of_two_replicas_racing_for_one_window_exactly_one_overrides() {
    let etcd = FakeEtcd::default();
    let (a, wa) = bg_replica(&etcd);
    let (b, wb) = bg_replica(&etcd);
    open_in_etcd(&a, &wa, &etcd);
    let mut fa = push_to_etcd(&a, &wa, M2, M1, &[ADMIN]);
    let mut fb = push_to_etcd(&b, &wb, b"{\"other\":1}", M1, &[ADMIN]);
    // Both wait on etcd for the window; A's take lands first.
    assert_eq!(a.last_call().unwrap().header(":path"), Some("/v3/kv/txn"));
    assert_eq!(b.last_call().unwrap().header(":path"), Some("/v3/kv/txn"));
    respond_with(&mut fa, &a, |c| etcd.answer(c));
    respond_with(&mut fb, &b, |c| etcd.answer(c));
    // A, with the window, claims the tag in etcd like any write that changes it.
    answer_etcd(&mut fa, &a, &etcd);
    assert_eq!((a.calls_with("PUT").len(), b.calls_with("PUT").len()), (1, 0));
    let r = b.reply().unwrap();
    assert_eq!(r.status, 409);
    assert!(why(&r).contains("another request used it"), "{}", why(&r));
    respond_with(&mut fa, &a, |_| created(M2));
    assert_eq!(a.reply().unwrap().status, 201);
}

#[test]
fn etcd_out_of_reach_refuses_the_override_saying_so() {
    let quorum =
        br#"{"error":"etcdserver: request timed out","message":"etcdserver: request timed out","code":14}"#;
    let reset = Reply { status: 0, headers: Vec::new(), body: Vec::new() };
    for (what, reply) in
        [("an error", Some(answer(503, &[], quorum))), ("a reset", Some(reset)), ("no dispatch", None)]
    {
        let etcd = FakeEtcd::default();
        let (a, wa) = bg_replica(&etcd);
        let (b, wb) = bg_replica(&etcd);
        open_in_etcd(&a, &wa, &etcd);
        let mut f = Filter::new(Some(wb.clone()));
        b.request("PUT", "/v2/app/manifests/v1", &[CT, ADMIN]);
        on_headers(&mut f, &b, false);
        respond(&mut f, &b, head_answer(Some(M1)));
        if reply.is_none() {
            *b.dispatch_error.borrow_mut() = Some("BadArgument".into());
        }
        send_body(&mut f, &b, &[M2]);
        if let Some(reply) = reply {
            while respond_with(&mut f, &b, |_| reply.clone()) {}
        }
        let r = b.reply().expect(what);
        assert_eq!(r.status, 409, "{what}");
        assert!(
            why(&r).contains("the break-glass window store (etcd, cluster 'etcd') is unavailable"),
            "{what}: {}",
            why(&r)
        );
        assert!(b.calls_with("PUT").is_empty(), "{what}: fail closed");
    }
}

#[test]
fn a_connect_failure_to_one_etcd_member_is_tried_again() {
    let etcd = FakeEtcd::default();
    let (a, wa) = bg_replica(&etcd);
    let (b, wb) = bg_replica(&etcd);
    open_in_etcd(&a, &wa, &etcd);
    let mut f = push_to_etcd(&b, &wb, M2, M1, &[ADMIN]);
    let envoy_503 = answer(503, &[], b"upstream connect error or disconnect/reset before headers");
    respond_with(&mut f, &b, |_| envoy_503.clone());
    while respond_with(&mut f, &b, |c| if c.cluster == "etcd" { etcd.answer(c) } else { created(M2) }) {}
    assert_eq!(b.reply().unwrap().status, 201);
}

#[test]
fn a_failed_overriding_write_puts_the_window_back() {
    let etcd = FakeEtcd::default();
    let (a, wa) = bg_replica(&etcd);
    let (b, wb) = bg_replica(&etcd);
    open_in_etcd(&a, &wa, &etcd);
    let (_, _, lease) = etcd.kv.borrow()[WKEY].clone();
    let blob_unknown = answer(
        400,
        &[("content-type", "application/json")],
        br#"{"errors":[{"code":"MANIFEST_BLOB_UNKNOWN"}]}"#,
    );
    let r = bg_push_etcd(&b, &wb, &etcd, M2, M1, &[ADMIN], blob_unknown);
    assert_eq!(r.status, 400, "the registry's answer is relayed");
    assert!(bg_lines(&b).is_empty(), "no override");
    assert_eq!(etcd.window(WKEY), None, "taken while the write was out");
    let sent = b.calls.borrow().len();
    run_root(&b, &wb, &etcd);
    assert_eq!(
        etcd.kv.borrow().get(WKEY).map(|(_, _, l)| *l),
        Some(lease),
        "put back, with its lease (and so its end)"
    );
    // Once: a second create, sent beside the first, would bring back a window used between them.
    let key = crate::util::base64::encode(WKEY.as_bytes());
    let creates = b.calls.borrow()[sent..]
        .iter()
        .filter(|c| c.body.as_deref().is_some_and(|x| String::from_utf8_lossy(x).contains(&key)))
        .count();
    assert_eq!(creates, 1, "put back once");
    assert_eq!(
        bg_push_etcd(&b, &wb, &etcd, M2, M1, &[ADMIN], created(M2)).status,
        201,
        "the retry overrides"
    );
    assert_eq!(bg_lines(&b).len(), 1);
    // A write whose outcome is unknown (reset) may have overwritten: its window stays used.
    // (Once the root committed that override's claim, a moment later: a view of the tag as
    // old as a commit is fenced by it.)
    run_root(&b, &wb, &etcd);
    b.advance(1);
    open_in_etcd(&a, &wa, &etcd);
    let reset = Reply { status: 0, headers: Vec::new(), body: Vec::new() };
    assert_eq!(bg_push_etcd(&b, &wb, &etcd, M1, M2, &[ADMIN], reset).status, 503);
    run_root(&b, &wb, &etcd);
    assert_eq!(etcd.window(WKEY), None);
    // Shared data (one Envoy): the same.
    let h = FakeHost::new();
    let w = bg_worker(&h, BG, Some(true));
    let (mut f, _) = read_with_reason(&h, &w, ADMIN);
    f.on_done(&h);
    let blob_unknown = answer(400, &[], br#"{"errors":[{"code":"MANIFEST_BLOB_UNKNOWN"}]}"#);
    assert_eq!(bg_push(&h, &w, "v1", M2, M1, &[ADMIN], blob_unknown).status, 400);
    assert_eq!(bg_push(&h, &w, "v1", M2, M1, &[ADMIN], created(M2)).status, 201, "put back");
    assert_eq!(bg_push(&h, &w, "v1", M1, M2, &[ADMIN], created(M1)).status, 409, "then used up");
}

#[test]
fn a_refused_multi_tag_push_puts_back_the_window_of_the_tag_it_did_not_write() {
    let h = FakeHost::new();
    let w = bg_worker(&h, BG, Some(true));
    let (mut f, _) = read_with_reason(&h, &w, ADMIN);
    f.on_done(&h);
    // v1 (path) has a window, v2 (?tag=) has none: refused, and v1's window is not spent.
    let mut f = Filter::new(Some(w.clone()));
    h.request("PUT", "/v2/app/manifests/v1?tag=v2", &[CT, ADMIN]);
    on_headers(&mut f, &h, false);
    while respond_with(&mut f, &h, |_| head_answer(Some(M1))) {}
    send_body(&mut f, &h, &[M2]);
    assert_eq!(h.reply().unwrap().status, 409);
    assert!(h.calls_with("PUT").is_empty());
    assert_eq!(bg_push(&h, &w, "v1", M2, M1, &[ADMIN], created(M2)).status, 201, "the window is still there");
}

#[test]
fn a_digest_delete_waiting_on_etcd_for_its_window_takes_only_etcd_s_answer() {
    let etcd = FakeEtcd::default();
    let (a, wa) = bg_replica(&etcd);
    let (b, wb) = bg_replica(&etcd);
    open_in_etcd(&a, &wa, &etcd);
    let mut f = Filter::new(Some(wb.clone()));
    b.request("DELETE", &format!("/v2/app/manifests/{}", sha(M1)), &[ADMIN]);
    assert_eq!(on_headers(&mut f, &b, true), Action::Pause);
    respond_with(&mut f, &b, |c| etcd.answer(c)); // the delete's fence
    respond(
        &mut f,
        &b,
        answer(200, &[("content-type", "application/json")], br#"{"name":"app","tags":["v1","v2"]}"#),
    );
    assert_eq!(b.calls_with("HEAD").len(), 2, "both tags are asked at once");
    // v1 holds the digest: refused unless admin's window is open, which etcd is asked while
    // v2's HEAD is still out. That HEAD's late answer is not etcd's.
    respond(&mut f, &b, head_answer(Some(M1)));
    respond(&mut f, &b, head_answer(Some(M2)));
    assert_eq!((b.reply(), b.resumes.get()), (None, 0), "still waiting on etcd");
    respond_with(&mut f, &b, |c| etcd.answer(c));
    assert_eq!((b.reply(), b.resumes.get()), (None, 1), "let through on the window");
    assert_eq!(etcd.window(WKEY), None, "taken");
}

#[test]
fn a_delete_uses_a_window_from_etcd_and_a_refused_one_puts_it_back() {
    let etcd = FakeEtcd::default();
    let (a, wa) = bg_replica(&etcd);
    let (b, wb) = bg_replica(&etcd);
    open_in_etcd(&a, &wa, &etcd);
    // The registry's own refusal puts the window back (a 5xx may come after the delete).
    *b.code_details.borrow_mut() = Some("via_upstream".into());
    for (status, overrides) in [("403", 0), ("202", 1)] {
        let mut f = Filter::new(Some(wb.clone()));
        b.request("DELETE", "/v2/app/manifests/v1", &[ADMIN]);
        let resumes = b.resumes.get();
        assert_eq!(on_headers(&mut f, &b, true), Action::Pause, "held while etcd answers");
        respond_with(&mut f, &b, |c| etcd.answer(c));
        assert_eq!((b.resumes.get(), b.reply()), (resumes + 1, None), "let through");
        *b.response_headers.borrow_mut() = vec![(":status".into(), status.into())];
        f.on_response_headers(&b);
        run_root(&b, &wb, &etcd);
        assert_eq!(etcd.window(WKEY).is_some(), overrides == 0, "{status}");
        assert_eq!(bg_lines(&b).iter().filter(|l| l["outcome"] == "accepted").count(), overrides, "{status}");
    }
    // Envoy's 504 (timed out): the delete may have happened, so the window stays used.
    open_in_etcd(&a, &wa, &etcd);
    let mut f = Filter::new(Some(wb.clone()));
    b.request("DELETE", "/v2/app/manifests/v1", &[ADMIN]);
    on_headers(&mut f, &b, true);
    respond_with(&mut f, &b, |c| etcd.answer(c));
    *b.response_headers.borrow_mut() = vec![(":status".into(), "504".into())];
    *b.code_details.borrow_mut() = None;
    f.on_response_headers(&b);
    run_root(&b, &wb, &etcd);
    assert_eq!(etcd.window(WKEY), None, "not put back after a 504");
    // Used up.
    let mut f = Filter::new(Some(wb.clone()));
    b.request("DELETE", "/v2/app/manifests/v1", &[ADMIN]);
    on_headers(&mut f, &b, true);
    respond_with(&mut f, &b, |c| etcd.answer(c));
    assert_eq!(b.reply().unwrap().status, 409);
}

#[test]
fn a_window_etcd_cannot_write_is_not_opened_and_the_read_goes_on() {
    let etcd = FakeEtcd::default();
    let (a, wa) = bg_replica(&etcd);
    let (mut f, action) = read_with_reason(&a, &wa, ADMIN);
    assert_eq!(action, Action::Pause);
    let quorum = answer(
        503,
        &[],
        br#"{"error":"etcdserver: request timed out","message":"etcdserver: request timed out","code":14}"#,
    );
    while respond_with(&mut f, &a, |_| quorum.clone()) {}
    assert_eq!(a.response_resumes.get(), 1);
    let why = window_lines(&a)[0]["not_opened"].as_str().unwrap_or_default().to_string();
    assert!(why.contains("window store (etcd, cluster 'etcd') is unavailable: etcd answered 503"), "{why}");
    assert!(etcd.kv.borrow().is_empty());
    // An etcd member that cannot be reached is tried MAX_ATTEMPTS times in all (nothing reached
    // it), then the window is not opened and the read goes on.
    let (b, wb) = bg_replica(&etcd);
    let (mut f, _) = read_with_reason(&b, &wb, ADMIN);
    let refused = answer(
        503,
        &[],
        b"upstream connect error or disconnect/reset before headers. reset reason: connection failure",
    );
    let mut sent = 0;
    while sent < 10 && respond_with(&mut f, &b, |_| refused.clone()) {
        sent += 1;
    }
    assert_eq!(sent, crate::filter::claims::etcd::MAX_ATTEMPTS);
    assert_eq!(b.response_resumes.get(), 1);
    let why = window_lines(&b)[0]["not_opened"].as_str().unwrap_or_default().to_string();
    assert!(why.contains("is unavailable"), "{why}");
    assert!(etcd.kv.borrow().is_empty());
    // A read the exception does not allow opens nothing and costs no call.
    let before = etcd_calls(&a);
    let (_, action) = read_with_reason(&a, &wa, BOB);
    assert_eq!((action, etcd_calls(&a)), (Action::Continue, before));
}

#[test]
fn overrides_through_two_replicas_race_for_the_etcd_claim_like_any_write() {
    // An override changes what the tag holds, as a new tag does: with claims.etcd it takes the
    // claim too, so of two overrides with different manifests through two replicas one wins.
    let etcd = FakeEtcd::default();
    let (ha, wa) = bg_replica(&etcd);
    let (hb, wb) = bg_replica(&etcd);
    let (mut a, mut b) = (Filter::new(Some(wa)), Filter::new(Some(wb)));
    for (f, h, body) in [(&mut a, &ha, M2), (&mut b, &hb, b"{\"other\":1}".as_slice())] {
        h.request("PUT", "/v2/app/manifests/v1", &[CT, ADMIN, REASON]);
        on_headers(f, h, false);
        respond(f, h, head_answer(Some(M1)));
        send_body(f, h, &[body]);
    }
    answer_etcd(&mut a, &ha, &etcd);
    answer_etcd(&mut b, &hb, &etcd);
    assert_eq!(ha.calls_with("PUT").len() + hb.calls_with("PUT").len(), 1, "one winner");
    let r = hb.reply().expect("the loser is answered");
    assert_eq!(r.status, 409);
    assert_eq!(r.json()["errors"][0]["detail"]["current_digest"], sha(M2), "fenced by the winner's claim");
}
