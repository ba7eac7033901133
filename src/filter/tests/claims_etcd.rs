//! Claims in etcd (`claims.etcd`): every "replica" is its own FakeHost (own process, own
//! shared data), all talking to one FakeEtcd: one winner, etcd failures refused, connect
//! retries, leases, a claim released through the root, multi-tag claims, the settle bound.
use super::*;

const ETCD_POLICY: &str = r#"{"upstream": {"cluster": "registry"},
  "global": {"immutable_tags": true, "immutable_tags_exclusions": ["^latest$"]},
  "claims": {"etcd": {"cluster": "etcd", "authority": "etcd.test", "timeout_ms": 500}}}"#;

const KEY: &str = "/immutable-tags/app:v1";

#[test]
fn replicas_sharing_etcd_have_one_winner() {
    let etcd = FakeEtcd::default();
    let (h1, w1) = replica(&etcd, ETCD_POLICY);
    let (h2, w2) = replica(&etcd, ETCD_POLICY);
    let mut f1 = to_claim(&h1, &w1, M1);
    let mut f2 = to_claim(&h2, &w2, M2);
    answer_etcd(&mut f1, &h1, &etcd);
    answer_etcd(&mut f2, &h2, &etcd);
    assert_eq!(h1.calls_with("PUT").len(), 1);
    assert!(h2.calls_with("PUT").is_empty(), "the second replica must not write");
    let r = h2.reply().unwrap();
    assert_eq!(r.status, 409);
    assert_eq!(r.json()["errors"][0]["detail"]["current_digest"], sha(M1));
    assert!(r.json()["errors"][0]["detail"]["in_flight"].as_str().unwrap().contains("in flight"));
    // Once committed, a later view of the tag from before the commit still meets the record.
    respond(&mut f1, &h1, created(M1));
    run_root(&h1, &w1, &etcd);
    let mut f3 = to_claim(&h2, &w2, M2);
    answer_etcd(&mut f3, &h2, &etcd);
    assert_eq!(h2.reply().unwrap().status, 409);
    assert!(h2.calls_with("PUT").is_empty());
}

#[test]
fn without_etcd_replicas_each_let_a_different_manifest_through() {
    // Shared data is per process: this is the hole `claims.etcd` closes (and what the test
    // above would see if the claims were not in etcd).
    let (h1, h2) = (FakeHost::new(), FakeHost::new());
    let (w1, w2) = (worker(&h1, POLICY), worker(&h2, POLICY));
    let _f1 = to_claim(&h1, &w1, M1);
    let _f2 = to_claim(&h2, &w2, M2);
    assert_eq!(h1.calls_with("PUT").len() + h2.calls_with("PUT").len(), 2);
}

#[test]
fn etcd_failures_refuse_with_503_naming_the_claim_store_and_send_no_put() {
    let quorum =
        br#"{"error":"etcdserver: request timed out","message":"etcdserver: request timed out","code":14}"#;
    let cases: Vec<(&str, Reply)> = vec![
        ("error body", answer(503, &[], quorum)),
        ("5xx", answer(500, &[], b"internal")),
        ("garbage", answer(200, &[], b"<html>not json")),
        ("timeout", answer(504, &[], b"upstream request timeout")),
        ("reset", Reply { status: 0, headers: vec![], body: vec![] }),
    ];
    for ((what, reply), warm) in cases.into_iter().flat_map(|c| [(c.clone(), false), (c, true)]) {
        let etcd = FakeEtcd::default();
        let (h, w) = replica(&etcd, ETCD_POLICY);
        if warm {
            // The lease is there: the claim txn itself fails (else the lease grant does).
            let mut f = to_claim_tag(&h, &w, "v0", M2);
            answer_etcd(&mut f, &h, &etcd);
            respond(&mut f, &h, created(M2));
            f.on_done(&h);
        }
        let puts = h.calls_with("PUT").len();
        let mut f = to_claim(&h, &w, M1);
        // Every attempt fails alike (the error body, the timeout and the reset are retried).
        while respond_with(&mut f, &h, |_| reply.clone()) {}
        let r = h.reply().unwrap_or_else(|| panic!("{what}: no answer"));
        assert_eq!(r.status, 503, "{what}");
        let msg = r.json()["errors"][0]["message"].as_str().unwrap().to_string();
        assert!(msg.contains("claim store (etcd, cluster 'etcd')"), "{what}: {msg}");
        assert_eq!(h.calls_with("PUT").len(), puts, "{what}");
        assert_eq!(etcd.value(KEY), None, "{what}");
    }
}

#[test]
fn a_connect_failure_is_tried_once_more_before_refusing() {
    let envoy_503 = answer(
        503,
        &[],
        b"upstream connect error or disconnect/reset before headers. reset reason: connection failure",
    );
    let etcd = FakeEtcd::default();
    let (h, w) = replica(&etcd, ETCD_POLICY);
    let mut f = to_claim(&h, &w, M1);
    respond_with(&mut f, &h, |_| envoy_503.clone());
    assert!(h.reply().is_none(), "tried again");
    answer_etcd(&mut f, &h, &etcd);
    assert_eq!(h.calls_with("PUT").len(), 1);
    respond(&mut f, &h, created(M1));
    // MAX_ATTEMPTS times in a row: refused.
    let mut f = to_claim_tag(&h, &w, "v2", M2);
    let mut n = 0;
    while respond_with(&mut f, &h, |c| {
        assert_eq!(c.cluster, "etcd");
        envoy_503.clone()
    }) {
        n += 1;
    }
    assert_eq!((n, h.reply().unwrap().status), (crate::filter::claims::etcd::MAX_ATTEMPTS, 503));
}

#[test]
fn a_failed_write_releases_its_etcd_claim_through_the_root() {
    let etcd = FakeEtcd::default();
    let (h, w) = replica(&etcd, ETCD_POLICY);
    let mut f = to_claim(&h, &w, M1);
    answer_etcd(&mut f, &h, &etcd);
    respond(&mut f, &h, answer(400, &[], b"{}"));
    assert_eq!(h.reply().unwrap().status, 400);
    assert!(etcd.value(KEY).is_some());
    run_root(&h, &w, &etcd);
    assert_eq!(etcd.value(KEY), None, "released");
}

#[test]
fn a_lease_that_is_gone_is_granted_again_and_a_dead_replicas_claim_goes_with_its_lease() {
    let etcd = FakeEtcd::default();
    let (h1, w1) = replica(&etcd, ETCD_POLICY);
    let (h2, w2) = replica(&etcd, ETCD_POLICY);
    // Replica 1 claims and dies before writing.
    let mut f1 = to_claim(&h1, &w1, M1);
    answer_etcd(&mut f1, &h1, &etcd);
    let mut f2 = to_claim(&h2, &w2, M2);
    answer_etcd(&mut f2, &h2, &etcd);
    assert_eq!(h2.reply().unwrap().status, 409);
    let first = etcd.leases.borrow()[0];
    etcd.expire(first);
    // Replica 2 may now push; its own lease expired too (etcd was away): granted again.
    let second = etcd.leases.borrow()[0];
    etcd.expire(second);
    let mut f3 = to_claim(&h2, &w2, M2);
    while respond_with(&mut f3, &h2, |c| if c.cluster == "etcd" { etcd.answer(c) } else { created(M2) }) {}
    assert_eq!(h2.reply().unwrap().status, 201);
    assert_eq!(etcd.value(KEY), Some(format!("1000000 - 0 {}@1000000 1", sha(M2))));
    assert_eq!(etcd.leases.borrow().len(), 1, "a new lease");
    assert!(h2.calls.borrow().iter().any(|c| c.header(":path") == Some("/v3/lease/grant")));
}

#[test]
fn a_multi_tag_push_claims_one_tag_at_a_time_and_gives_back_on_a_conflict() {
    let etcd = FakeEtcd::default();
    let (h, w) = replica(&etcd, ETCD_POLICY);
    // Tag b is claimed by another replica's push of M2.
    etcd.kv.borrow_mut().insert("/immutable-tags/app:b".into(), (format!("c 1000000 {}", sha(M2)), 1, 0));
    let mut f = Filter::new(Some(w.clone()));
    let len = M1.len().to_string();
    h.request("PUT", &format!("/v2/app/manifests/{}?tag=a&tag=b", sha(M1)), &[CT, ("content-length", &len)]);
    on_headers(&mut f, &h, false);
    respond(&mut f, &h, head_answer(None));
    respond(&mut f, &h, head_answer(None));
    send_body(&mut f, &h, &[M1]);
    let mut claimed = Vec::new();
    while respond_with(&mut f, &h, |c| {
        claimed.push(c.header(":path").unwrap_or_default().to_string());
        assert_eq!(h.pending.borrow().len(), 0, "one etcd call at a time");
        etcd.answer(c)
    }) {}
    assert_eq!(claimed, ["/v3/kv/txn", "/v3/kv/txn"], "the lease comes from the root");
    let r = h.reply().unwrap();
    assert_eq!(r.status, 409);
    assert_eq!(r.json()["errors"][0]["detail"]["tag"], "b");
    assert!(h.calls_with("PUT").is_empty());
    assert!(etcd.value("/immutable-tags/app:a").is_some(), "claimed before b was refused");
    run_root(&h, &w, &etcd);
    assert_eq!(etcd.value("/immutable-tags/app:a"), None, "given back");
}

#[test]
fn an_etcd_claim_that_never_settles_is_refused_after_the_bound() {
    // Every txn finds the key gone between its compare and its read: claimed again, 6 txns
    // (the lease is the root's), then refused.
    let etcd = FakeEtcd::default();
    let (h, w) = replica(&etcd, ETCD_POLICY);
    let mut f = to_claim(&h, &w, M1);
    let gone = answer(200, &[], br#"{"header": {"cluster_id": "1", "revision": "9"}, "responses": [{"response_range": {"header": {"revision": "9"}}}]}"#);
    let mut txns = 0;
    for _ in 0..20 {
        let more = respond_with(&mut f, &h, |c| match c.header(":path") {
            Some("/v3/kv/txn") => {
                txns += 1;
                gone.clone()
            }
            _ => etcd.answer(c),
        });
        if !more {
            break;
        }
    }
    assert_eq!(txns, 6);
    let r = h.reply().expect("refused");
    assert_eq!(r.status, 503);
    assert!(r.json()["errors"][0]["message"].as_str().unwrap().contains("did not settle"), "{:?}", r.json());
    assert!(h.calls_with("PUT").is_empty());
}
