//! The tag map (a worker's tag -> digest cache): what teaches it, how long it is trusted, and a
//! stale entry met by an override made through another replica or worker: judged again on
//! the registry's word, never putting the old digest back.
use super::*;

#[test]
fn an_enforce_map_older_than_an_audit_overwrite_is_not_trusted_for_a_same_digest_push() {
    // Two instances on one Envoy (shared data shared): the enforce one learned v1 = M1, the
    // audit one then let v1 = M2 be written unjudged. A push of M1 through the enforce map
    // would turn the tag back: it must be re-judged on the registry's word.
    let h = FakeHost::new();
    let enforce = worker(&h, POLICY);
    let audit = worker(
        &h,
        r#"{"upstream": {"cluster": "registry"}, "global": {"immutable_tags": true}, "mode": "audit"}"#,
    );
    assert_eq!(push(&h, &enforce, "v1", M1, None).status, 201);
    assert_eq!(push(&h, &audit, "v1", M2, Some(M1)).status, 201);
    assert_eq!(push(&h, &enforce, "v1", M1, Some(M2)).status, 409);
}

/// Two replicas: A pushed app:v1 = M1 (A's map holds it), then B overrode v1 with M2.
fn overridden_through_b(etcd: &FakeEtcd) -> (FakeHost, Rc<Worker>, FakeHost, Rc<Worker>) {
    let (ha, wa) = bg_replica(etcd);
    let (hb, wb) = bg_replica(etcd);
    let mut f = to_claim(&ha, &wa, M1);
    answer_etcd(&mut f, &ha, etcd);
    respond(&mut f, &ha, created(M1));
    f.on_done(&ha);
    run_root(&ha, &wa, etcd);
    hb.advance(1);
    assert_eq!(bg_push_etcd(&hb, &wb, etcd, M2, M1, &[ADMIN, REASON], created(M2)).status, 201);
    run_root(&hb, &wb, etcd);
    (ha, wa, hb, wb)
}

#[test]
fn after_an_override_through_another_replica_a_stale_map_does_not_put_the_old_digest_back() {
    // A's map learned app:v1 = M1 from its own push. B overrides v1 with M2 (break-glass).
    // A re-push of M1 through A looks "identical" to A's map: it must meet B's record in etcd
    // and be refused, not put M1 back over the override.
    let etcd = FakeEtcd::default();
    let (ha, wa, _, _) = overridden_through_b(&etcd);
    let puts = ha.calls_with("PUT").len();
    let r = bg_push_etcd(&ha, &wa, &etcd, M1, M2, &[], created(M1));
    assert_eq!(r.status, 409, "{:?}", r.json());
    assert_eq!(r.json()["errors"][0]["detail"]["current_digest"], sha(M2));
    assert_eq!(ha.calls_with("PUT").len(), puts, "nothing written");
}

#[test]
fn after_an_override_through_another_worker_a_stale_map_does_not_put_the_old_digest_back() {
    // The same within one Envoy: each worker has its own map; the claim records are shared.
    let h1 = FakeHost::new();
    let h2 = h1.share_with();
    let (w1, w2) = (bg_worker(&h1, BG, Some(true)), bg_worker(&h2, BG, Some(true)));
    assert_eq!(push(&h1, &w1, "v1", M1, None).status, 201);
    h1.advance(1);
    assert_eq!(bg_push(&h2, &w2, "v1", M2, M1, &[ADMIN, REASON], created(M2)).status, 201);
    let puts = h1.calls_with("PUT").len();
    let r = push(&h1, &w1, "v1", M1, Some(M2));
    assert_eq!(r.status, 409, "{:?}", r.json());
    assert_eq!(h1.calls_with("PUT").len(), puts, "nothing written");
}

#[test]
fn a_stale_map_met_by_an_overrides_record_is_judged_again_on_the_registrys_word() {
    // A's map holds app:v1 = M1 from its own push; B overrides v1 with M2. admin's push of M1
    // through A looks identical to A's map, and its claim meets B's committed record. That
    // record alone is not the registry's word (asked with the client's credentials), and the
    // push is an overwrite: A asks the registry again, and break-glass judges it.
    let etcd = FakeEtcd::default();
    let (ha, wa, hb, wb) = overridden_through_b(&etcd);
    // No window open: refused, and the refusal says so (as it does on a worker without the entry).
    let heads = ha.calls_with("HEAD").len();
    let r = bg_push_etcd(&ha, &wa, &etcd, M1, M2, &[ADMIN], created(M1));
    assert_eq!(r.status, 409, "{:?}", r.json());
    assert_eq!(r.json()["errors"][0]["detail"]["current_digest"], sha(M2));
    assert!(
        why(&r).contains("no break-glass window is open for the principal the request claims, 'admin',"),
        "{}",
        why(&r)
    );
    assert_eq!(ha.calls_with("HEAD").len(), heads + 1, "the registry asked again");
    // A window open (through B), A's map stale again: the same push through A uses the window.
    open_in_etcd(&hb, &wb, &etcd);
    wa.cache.borrow_mut().put(
        "registry.test\napp",
        "v1",
        crate::oci::digest::Digest::sha256(M1),
        ha.now_ms(),
    );
    ha.advance(5); // A's view of the tag (its HEAD) is newer than B's commit
    let puts = ha.calls_with("PUT").len();
    let r = bg_push_etcd(&ha, &wa, &etcd, M1, M2, &[ADMIN], created(M1));
    assert_eq!(r.status, 201, "{:?}", r.json());
    assert_eq!(ha.calls_with("PUT").len(), puts + 1);
    assert_eq!(etcd.window(WKEY), None, "used up");
    assert_eq!(bg_lines(&ha).len(), 1, "audited");
}

/// admin's push of M1 to app:v1 and app:v2 (`?tag=`), headers and whole body.
fn push_m1_to_v1_and_v2(h: &FakeHost, w: &Rc<Worker>) -> Filter {
    let mut f = Filter::new(Some(w.clone()));
    h.replies.borrow_mut().clear();
    let len = M1.len().to_string();
    h.request("PUT", "/v2/app/manifests/v1?tag=v2", &[CT, ADMIN, ("content-length", &len)]);
    on_headers(&mut f, h, false);
    send_body(&mut f, h, &[M1]);
    f
}

#[test]
fn a_window_used_before_a_stale_map_is_rechecked_is_used_once_or_put_back() {
    // One Envoy, two workers. W1's map: v1 = M2 (true), v2 = M1 (stale: W2 overrode it with M3).
    // admin's window is open on v1. admin pushes M1 to v1 and v2 at once through W1: v1's
    // overwrite uses the window, v2 looks identical to W1's map and its claim meets W2's record,
    // so v2 is asked again. What the registry then says of v2 decides; v1's window is used
    // exactly when the push is written, and put back when it is not (the client leaving while
    // v2 is asked again included: `None`).
    const M3: &[u8] =
        br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","n":3}"#;
    let unauthorized = || answer(401, &[("www-authenticate", "Basic realm=\"r\"")], b"");
    let cases: [(&str, Option<Reply>, Option<u16>); 4] = [
        ("holds M3", Some(head_answer(Some(M3))), Some(409)),
        ("401", Some(unauthorized()), Some(401)),
        ("holds M1", Some(head_answer(Some(M1))), Some(201)),
        ("client gone", None, None),
    ];
    for (case, v2_answer, status) in cases {
        let h1 = FakeHost::new();
        let h2 = h1.share_with();
        let (w1, w2) = (bg_worker(&h1, BG, Some(true)), bg_worker(&h2, BG, Some(true)));
        assert_eq!(push(&h1, &w1, "v1", M2, None).status, 201);
        assert_eq!(push(&h1, &w1, "v2", M1, None).status, 201);
        h1.advance(1);
        assert_eq!(bg_push(&h2, &w2, "v2", M3, M1, &[ADMIN, REASON], created(M3)).status, 201);
        h1.advance(1);
        let (mut f, _) = read_with_reason(&h1, &w1, ADMIN);
        f.on_done(&h1);
        h1.advance(1);
        let mut f = push_m1_to_v1_and_v2(&h1, &w1);
        let gone = v2_answer.is_none();
        let mut v2 = v2_answer;
        let mut asked_again = false;
        loop {
            let Some(token) = h1.pending.borrow().front().copied() else { break };
            let call = h1.call_of(token);
            if (call.header(":method"), call.header(":path")) == (Some("HEAD"), Some("/v2/app/manifests/v2"))
            {
                asked_again = true;
                if gone {
                    break;
                }
            }
            respond_with(&mut f, &h1, |c| match (c.header(":method"), c.header(":path")) {
                (Some("HEAD"), Some("/v2/app/manifests/v1")) => head_answer(Some(M2)),
                (Some("HEAD"), _) => v2.take().expect("v2 asked once"),
                _ => created(M1),
            });
        }
        f.on_done(&h1);
        assert!(asked_again, "{case}: v2 asked again");
        assert_eq!(h1.reply().map(|r| r.status), status, "{case}");
        assert_eq!(
            h1.calls_with("PUT").iter().filter(|c| c.body.as_deref() == Some(M1)).count(),
            usize::from(status == Some(201)) + 1,
            "{case}"
        );
        // The window: used up by the written push, else still there for v1.
        let written = status == Some(201);
        let next = bg_push(&h1, &w1, "v1", M3, if written { M1 } else { M2 }, &[ADMIN], created(M3));
        assert_eq!(next.status, if written { 409 } else { 201 }, "{case}: {:?}", next.json());
        assert_eq!(bg_lines(&h1).len(), 1, "{case}: one override per window");
    }
}

#[test]
fn an_etcd_window_kept_across_a_recheck_is_put_back_once() {
    // As above, in etcd: admin's window on v1 is taken (used) for the overwrite of v1;
    // v2's map entry (M1) meets a committed record of M3, and the registry, asked again, answers
    // 401. The window goes back exactly once: a second create sent beside the first could
    // revive a window used in between.
    let etcd = FakeEtcd::default();
    let (h, w) = bg_replica(&etcd);
    open_in_etcd(&h, &w, &etcd);
    w.cache.borrow_mut().put("registry.test\napp", "v1", Digest::sha256(M2), h.now_ms());
    w.cache.borrow_mut().put("registry.test\napp", "v2", Digest::sha256(M1), h.now_ms());
    let record = crate::store::etcd::Record {
        stored: Some((sha(b"m3"), h.now_ms() + 1)),
        claim: None,
        at_ms: h.now_ms() + 1,
    };
    etcd.kv.borrow_mut().insert("/immutable-tags/app:v2".into(), (record.encode(), 1, 0));
    h.advance(5);
    let mut f = push_m1_to_v1_and_v2(&h, &w);
    while respond_with(&mut f, &h, |c| match (c.cluster.as_str(), c.header(":path")) {
        ("etcd", _) => etcd.answer(c),
        (_, Some("/v2/app/manifests/v1")) => head_answer(Some(M2)),
        _ => answer(401, &[("www-authenticate", "Basic realm=\"r\"")], b""),
    }) {}
    f.on_done(&h);
    assert_eq!(h.reply().map(|r| r.status), Some(401));
    assert_eq!(etcd.window(WKEY), None, "taken while v2 was asked again");
    let sent = h.calls.borrow().len();
    run_root(&h, &w, &etcd);
    assert!(etcd.window(WKEY).is_some(), "put back");
    let key = crate::util::base64::encode(WKEY.as_bytes());
    let creates = h.calls.borrow()[sent..]
        .iter()
        .filter(|c| c.body.as_deref().is_some_and(|x| String::from_utf8_lossy(x).contains(&key)))
        .count();
    assert_eq!(creates, 1, "put back once");
}

#[test]
fn where_tags_can_change_the_map_is_trusted_no_longer_than_the_claims() {
    // cache.ttl_seconds 3600, claims.ttl_seconds 60: with break-glass the map entry is
    // revalidated (HEAD) after 60 s, when no claim record would fence a stale one any more;
    // without break-glass (tags never change through the filter) it lives its hour.
    let with = r#"{"global": {"immutable_tags": true}, "cache": {"ttl_seconds": 3600}, "break_glass": {"principals": ["admin"]}}"#;
    let without = r#"{"global": {"immutable_tags": true}, "cache": {"ttl_seconds": 3600}}"#;
    for (policy, heads) in [(with, 1), (without, 0)] {
        let h = FakeHost::new();
        let w = bg_worker(&h, policy, Some(true));
        assert_eq!(push(&h, &w, "v1", M1, None).status, 201);
        let before = h.calls_with("HEAD").len();
        h.advance(61_000);
        assert_eq!(push(&h, &w, "v1", M1, Some(M1)).status, 201);
        assert_eq!(h.calls_with("HEAD").len() - before, heads, "{policy}");
    }
}

#[test]
fn a_client_that_leaves_while_its_push_is_written_makes_the_map_forget_the_tag() {
    // The registry may or may not have stored it: the map no longer vouches for the tag.
    let h = FakeHost::new();
    let w = worker(&h, POLICY);
    let mut f = rewriting_v1(&h, &w);
    f.on_done(&h);
    assert!(f.idle());
    assert!(h.logs.borrow().iter().any(|(_, m)| m.contains("the client left while its push was written")));
    assert!(next_push_heads(&h, &w));
}

#[test]
fn the_harmless_answer_is_held_while_a_stale_map_entry_is_checked_again() {
    let h = FakeHost::new();
    let w = worker(&h, POLICY);
    assert_eq!(push(&h, &w, "v1", M1, None).status, 201);
    h.replies.borrow_mut().clear();
    let mut f = Filter::new(Some(w.clone()));
    assert_eq!(put_headers(&mut f, &h, "v1", M2), Action::Continue, "from the map: the harmless headers go");
    send_body(&mut f, &h, &[M2]);
    assert_eq!(h.last_call().unwrap().header(":method"), Some("HEAD"), "the map disagrees: asked again");
    // The body is here: the harmless answer is held, not taken for an early one.
    *h.response_headers.borrow_mut() = vec![(":status".into(), "200".into())];
    assert_eq!(f.on_response_headers(&h), Action::Pause);
    assert!(h.reply().is_none());
    respond(&mut f, &h, head_answer(Some(M1)));
    let r = h.reply().unwrap();
    assert_eq!(r.status, 409);
    assert_eq!(r.json()["errors"][0]["detail"]["current_digest"], sha(M1));
}

#[test]
fn only_a_201_teaches_the_map_the_written_digest() {
    let h = FakeHost::new();
    let w = worker(&h, POLICY);
    let mut f = Filter::new(Some(w.clone()));
    put_headers(&mut f, &h, "v1", M1);
    respond(&mut f, &h, head_answer(None));
    send_body(&mut f, &h, &[M1]);
    respond(&mut f, &h, answer(200, &[("docker-content-digest", &sha(M1))], b""));
    assert_eq!(h.reply().unwrap().status, 200);
    assert!(next_push_heads(&h, &w));
}
