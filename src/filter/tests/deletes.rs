//! Deletes by digest on the fake host: the registry's word decides (issue 28 item 3, issue 26
//! step 4), and break-glass must cover every immutable tag a delete removes (issue 29).
use super::fake::{answer, sha, FakeEtcd, FakeHost, Reply};
use crate::config::Config;
use crate::filter::claims::etcd as etcd_claims;
use crate::filter::host::Host;
use crate::filter::worker::Worker;
use crate::filter::{Action, Filter};
use crate::oci::digest::Digest;
use crate::oci::request::{classify, Reference, Request};
use std::rc::Rc;

const BG: &str = r#"{"global": {"immutable_tags": true, "immutable_tags_exclusions": ["^latest$"]}, "break_glass": {"principals": ["admin"], "repositories": ["app"]}}"#;
const M1: &[u8] = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","n":1}"#;
const M2: &[u8] = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","n":2}"#;
const CT: (&str, &str) = ("content-type", "application/vnd.oci.image.manifest.v1+json");
/// `Basic admin:pw`.
const ADMIN: (&str, &str) = ("authorization", "Basic YWRtaW46cHc=");
const REASON: (&str, &str) = ("x-break-glass-reason", "INC-9 retire v9.9.9");

fn worker(h: &FakeHost, policy: &str) -> Rc<Worker> {
    let w = Rc::new(Worker::new(h, Config::from_json(policy.as_bytes()).unwrap()));
    w.registry_auth.set(Some((true, h.now_ms())));
    w
}

fn head(body: &[u8]) -> Reply {
    answer(200, &[("docker-content-digest", &sha(body))], b"")
}

fn tags(list: &[&str]) -> Reply {
    answer(
        200,
        &[("content-type", "application/json")],
        serde_json::json!({"name": "app", "tags": list}).to_string().as_bytes(),
    )
}

/// Answers the pending call for `path` (any order the registry likes).
fn respond_to(f: &mut Filter, h: &FakeHost, path: &str, reply: Reply) {
    let token = {
        let calls = h.calls.borrow();
        let pending = h.pending.borrow();
        *pending
            .iter()
            .find(|t| calls[**t as usize - 1].header(":path") == Some(path))
            .unwrap_or_else(|| panic!("no call for {path}"))
    };
    h.pending.borrow_mut().retain(|t| *t != token);
    let size = reply.body.len();
    h.set_answer(Some(reply));
    f.on_call_response(h, token, size);
    h.set_answer(None);
}

/// A 2xx read of `app:tag` carrying the reason header: opens admin's window for that tag.
fn open_window(h: &FakeHost, w: &Rc<Worker>, tag: &str) {
    let mut f = Filter::new(Some(w.clone()));
    h.request("HEAD", &format!("/v2/app/manifests/{tag}"), &[ADMIN, REASON]);
    let path = Filter::first_look(h).unwrap();
    assert_eq!(f.on_request_headers(h, path, true), Action::Continue);
    h.response_headers.borrow_mut().push((":status".into(), "200".into()));
    f.on_response_headers(h);
    f.on_done(h);
}

/// `DELETE /v2/app/manifests/<digest of M1>` while `a-scratch` and `v9` hold M1 and `v1` holds M2;
/// the HEADs answered in `order`. The client's answer (`None`: let through), and the filter.
fn delete_m1(
    h: &FakeHost,
    w: &Rc<Worker>,
    extra: &[(&str, &str)],
    order: &[&str],
) -> (Option<Reply>, Filter) {
    let mut f = Filter::new(Some(w.clone()));
    h.replies.borrow_mut().clear();
    h.request("DELETE", &format!("/v2/app/manifests/{}", sha(M1)), extra);
    let path = Filter::first_look(h).unwrap();
    assert_eq!(f.on_request_headers(h, path, true), Action::Pause);
    respond_to(&mut f, h, "/v2/app/tags/list", tags(&["v9", "a-scratch", "v1", "latest"]));
    for tag in order {
        if h.reply().is_some() {
            break;
        }
        let holds = if *tag == "v1" { M2 } else { M1 };
        respond_to(&mut f, h, &format!("/v2/app/manifests/{tag}"), head(holds));
    }
    (h.reply(), f)
}

/// The override records: decisions (`outcome: sent`) and outcomes.
fn bg_lines(h: &FakeHost) -> Vec<serde_json::Value> {
    let events = ["immutable_tags.break_glass", "immutable_tags.break_glass_decision"];
    let lines: Vec<serde_json::Value> =
        h.logs.borrow().iter().filter_map(|(_, l)| serde_json::from_str(l).ok()).collect();
    for l in &lines {
        assert!(l["event"] != events[1] || l["outcome"] == "sent", "a decision is a sent line: {l}");
    }
    lines.into_iter().filter(|v| events.iter().any(|e| v["event"] == *e)).collect()
}

fn detail(r: &Reply) -> serde_json::Value {
    r.json()["errors"][0]["detail"].clone()
}

const ORDERS: [[&str; 3]; 3] =
    [["v9", "a-scratch", "v1"], ["a-scratch", "v9", "v1"], ["v1", "v9", "a-scratch"]];

/// The registry's answer to a delete that went upstream (`details`: Envoy's response code
/// details, if any), then the stream's end.
fn answered(h: &FakeHost, f: &mut Filter, status: &str, details: Option<&str>) {
    *h.response_headers.borrow_mut() = vec![(":status".into(), status.into())];
    if let Some(d) = details {
        *h.code_details.borrow_mut() = Some(d.into());
    }
    f.on_response_headers(h);
    f.on_done(h);
}

#[test]
fn a_window_for_one_tag_does_not_delete_the_manifest_another_tag_holds() {
    for order in ORDERS {
        let h = FakeHost::new();
        let w = worker(&h, BG);
        open_window(&h, &w, "v9");
        let (reply, _) = delete_m1(&h, &w, &[ADMIN], &order);
        let r = reply.unwrap_or_else(|| panic!("{order:?}: let through: {:?}", h.logs.borrow()));
        assert_eq!(r.status, 409, "{order:?}");
        let d = detail(&r);
        assert_eq!(d["not_covered"], serde_json::json!(["a-scratch"]), "{order:?}: {d}");
        assert_eq!(d["tags"], serde_json::json!(["a-scratch", "v9"]), "{order:?}");
        assert!(d["break_glass"].as_str().unwrap().contains("tag 'a-scratch': no break-glass window is open for the principal the request claims, 'admin', on it"), "{d}");
        assert_eq!(h.counter("break_glass_overrides"), 0);
        // The window for v9 was not spent on the refused delete: v9 alone can still go.
        let mut f = Filter::new(Some(w.clone()));
        h.replies.borrow_mut().clear();
        h.request("DELETE", "/v2/app/manifests/v9", &[ADMIN]);
        let path = Filter::first_look(&h).unwrap();
        assert_eq!(
            f.on_request_headers(&h, path, true),
            Action::Continue,
            "{order:?}: {:?}",
            h.reply().map(|r| r.json())
        );
    }
}

#[test]
fn a_reason_for_a_delete_by_digest_is_recorded_for_every_tag_it_removes() {
    for order in ORDERS {
        let h = FakeHost::new();
        let w = worker(&h, BG);
        let (reply, mut f) = delete_m1(&h, &w, &[ADMIN, REASON], &order);
        assert!(reply.is_none(), "{order:?}: {:?}", reply.map(|r| r.json()));
        *h.response_headers.borrow_mut() = vec![(":status".into(), "202".into())];
        f.on_response_headers(&h);
        let lines: Vec<_> = bg_lines(&h).into_iter().filter(|l| l["outcome"] == "accepted").collect();
        let named: Vec<&str> = lines.iter().map(|l| l["tag"].as_str().unwrap()).collect();
        assert_eq!(named, vec!["a-scratch", "v9"], "{order:?}");
        assert!(lines.iter().all(|l| l["action"] == "delete" && l["current_digest"] == sha(M1)));
        assert_eq!(h.counter("break_glass_overrides"), 2);
    }
}

#[test]
fn windows_for_every_tag_let_a_delete_by_digest_through_and_record_each() {
    let h = FakeHost::new();
    let w = worker(&h, BG);
    open_window(&h, &w, "v9");
    open_window(&h, &w, "a-scratch");
    let (reply, mut f) = delete_m1(&h, &w, &[ADMIN], &ORDERS[2]);
    assert!(reply.is_none(), "{:?}", reply.map(|r| r.json()));
    *h.response_headers.borrow_mut() = vec![(":status".into(), "202".into())];
    f.on_response_headers(&h);
    let named: Vec<String> = bg_lines(&h)
        .iter()
        .filter(|l| l["outcome"] == "accepted")
        .map(|l| l["tag"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(named, vec!["a-scratch", "v9"]);
    assert_eq!(h.counter("break_glass_overrides"), 2);
}

#[test]
fn a_digest_delete_asks_the_registry_when_the_map_says_elsewhere() {
    // Issue 28 item 3: v1 = M1 pushed through the filter (the map learns it), then v1 moved to
    // M2 behind the filter's back. A delete of M2 must ask the registry, which says v1 holds it.
    let h = FakeHost::new();
    let w = worker(&h, r#"{"upstream": {"cluster": "registry"}, "global": {"immutable_tags": true}}"#);
    let mut f = Filter::new(Some(w.clone()));
    h.request("PUT", "/v2/app/manifests/v1", &[CT, ("content-length", &M1.len().to_string())]);
    let path = Filter::first_look(&h).unwrap();
    f.on_request_headers(&h, path, false);
    respond_to(&mut f, &h, "/v2/app/manifests/v1", answer(404, &[], b""));
    h.body.borrow_mut().extend_from_slice(M1);
    f.on_request_body(&h, M1.len(), true);
    let created = answer(201, &[("docker-content-digest", &sha(M1))], b"");
    respond_to(&mut f, &h, "/v2/app/manifests/v1", created);
    assert_eq!(h.reply().unwrap().status, 201);
    f.on_done(&h);

    let mut f = Filter::new(Some(w.clone()));
    h.replies.borrow_mut().clear();
    h.request("DELETE", &format!("/v2/app/manifests/{}", sha(M2)), &[]);
    let path = Filter::first_look(&h).unwrap();
    assert_eq!(f.on_request_headers(&h, path, true), Action::Pause);
    let resumes = h.resumes.get();
    respond_to(&mut f, &h, "/v2/app/tags/list", tags(&["v1"]));
    assert_eq!(h.resumes.get(), resumes, "not let through on the map's word");
    respond_to(&mut f, &h, "/v2/app/manifests/v1", head(M2));
    let r = h.reply().expect("refused");
    assert_eq!(r.status, 409);
    assert_eq!(detail(&r)["tag"], "v1");
}

#[test]
fn a_map_entry_holding_the_digest_refuses_without_a_head() {
    let h = FakeHost::new();
    let w = worker(&h, r#"{"upstream": {"cluster": "registry"}, "global": {"immutable_tags": true}}"#);
    w.cache.borrow_mut().put(&w.map_key("app", Some("registry.test")), "v1", Digest::sha256(M1), h.now_ms());
    let mut f = Filter::new(Some(w.clone()));
    h.request("DELETE", &format!("/v2/app/manifests/{}", sha(M1)), &[]);
    let path = Filter::first_look(&h).unwrap();
    f.on_request_headers(&h, path, true);
    respond_to(&mut f, &h, "/v2/app/tags/list", tags(&["v1"]));
    assert_eq!(h.reply().unwrap().status, 409);
    assert!(h.calls_with("HEAD").is_empty());
}

#[test]
fn an_over_long_reason_neither_overrides_nor_opens_a_window() {
    let h = FakeHost::new();
    let w = worker(&h, BG);
    let long = "x".repeat(50_031);
    let mut f = Filter::new(Some(w.clone()));
    h.request("DELETE", "/v2/app/manifests/v9", &[ADMIN, ("x-break-glass-reason", &long)]);
    let path = Filter::first_look(&h).unwrap();
    f.on_request_headers(&h, path, true);
    let r = h.reply().expect("refused");
    assert_eq!(r.status, 409);
    assert!(
        detail(&r)["break_glass"]
            .as_str()
            .unwrap()
            .contains("50031 bytes, longer than break_glass.max_reason_bytes (256)"),
        "{}",
        detail(&r)
    );
    // A read with it opens no window, and says why.
    let mut f = Filter::new(Some(w.clone()));
    h.request("HEAD", "/v2/app/manifests/v9", &[ADMIN, ("x-break-glass-reason", &long)]);
    let path = Filter::first_look(&h).unwrap();
    f.on_request_headers(&h, path, true);
    h.response_headers.borrow_mut().push((":status".into(), "200".into()));
    f.on_response_headers(&h);
    let logs = h.logs.borrow();
    let line = logs.iter().rev().find(|(_, l)| l.contains("break_glass_window")).expect("logged");
    assert!(line.1.contains("max_reason_bytes (256)"), "{}", line.1);
    assert!(!line.1.contains(&long), "the reason is not logged");
}

// ---- Windows in etcd: each tag's window is taken by its own round trip.

const BG_ETCD: &str = r#"{"global": {"immutable_tags": true, "immutable_tags_exclusions": ["^latest$"]},
  "break_glass": {"principals": ["admin"], "repositories": ["app"]},
  "claims": {"etcd": {"cluster": "etcd", "authority": "etcd.test", "timeout_ms": 500}}}"#;

fn wkey(tag: &str) -> String {
    format!("/immutable-tags/window:app:{tag}:admin")
}

/// Answers whatever is pending (etcd's calls) until nothing is.
fn answer_etcd(f: &mut Filter, h: &FakeHost, etcd: &FakeEtcd) {
    loop {
        let next = h.pending.borrow_mut().pop_front();
        let Some(token) = next else { break };
        let call = h.calls.borrow()[token as usize - 1].clone();
        let r = etcd.answer(&call);
        let size = r.body.len();
        h.set_answer(Some(r));
        f.on_call_response(h, token, size);
        h.set_answer(None);
    }
}

/// The root context's timer, and etcd's answers to what it sent (windows put back).
fn run_root(h: &FakeHost, w: &Rc<Worker>, etcd: &FakeEtcd) {
    etcd_claims::tick(h, w);
    loop {
        let next = h.pending.borrow_mut().pop_front();
        let Some(token) = next else { break };
        let call = h.calls.borrow()[token as usize - 1].clone();
        let r = etcd.answer(&call);
        let size = r.body.len();
        h.set_answer(Some(r));
        etcd_claims::on_root_response(h, w, token, size);
        h.set_answer(None);
    }
}

fn etcd_replica(etcd: &FakeEtcd) -> (FakeHost, Rc<Worker>) {
    let h = FakeHost::new();
    let w = worker(&h, BG_ETCD);
    run_root(&h, &w, etcd);
    (h, w)
}

fn open_in_etcd(h: &FakeHost, w: &Rc<Worker>, etcd: &FakeEtcd, tag: &str) {
    let mut f = Filter::new(Some(w.clone()));
    h.request("HEAD", &format!("/v2/app/manifests/{tag}"), &[ADMIN, REASON]);
    let path = Filter::first_look(h).unwrap();
    f.on_request_headers(h, path, true);
    h.response_headers.borrow_mut().push((":status".into(), "200".into()));
    f.on_response_headers(h);
    answer_etcd(&mut f, h, etcd);
    assert!(etcd.window(&wkey(tag)).is_some(), "window for {tag} opened");
}

/// The digest delete of M1 through `h`, up to where it waits on etcd (the registry answered).
fn delete_m1_etcd(h: &FakeHost, w: &Rc<Worker>, etcd: &FakeEtcd) -> Filter {
    let mut f = Filter::new(Some(w.clone()));
    h.replies.borrow_mut().clear();
    h.request("DELETE", &format!("/v2/app/manifests/{}", sha(M1)), &[ADMIN]);
    let path = Filter::first_look(h).unwrap();
    assert_eq!(f.on_request_headers(h, path, true), Action::Pause);
    // Its fence (etcd's calls only).
    loop {
        let next = h.pending.borrow().iter().copied().find(|t| h.call_of(*t).cluster == "etcd");
        let Some(token) = next else { break };
        h.pending.borrow_mut().retain(|t| *t != token);
        let r = etcd.answer(&h.call_of(token));
        let size = r.body.len();
        h.set_answer(Some(r));
        f.on_call_response(h, token, size);
        h.set_answer(None);
    }
    respond_to(&mut f, h, "/v2/app/tags/list", tags(&["v9", "a-scratch", "v1"]));
    for (tag, holds) in [("v1", M2), ("v9", M1), ("a-scratch", M1)] {
        respond_to(&mut f, h, &format!("/v2/app/manifests/{tag}"), head(holds));
    }
    f
}

#[test]
fn windows_in_etcd_must_cover_every_tag_and_one_alone_is_put_back() {
    let etcd = FakeEtcd::default();
    let (a, wa) = etcd_replica(&etcd);
    let (b, wb) = etcd_replica(&etcd);
    open_in_etcd(&a, &wa, &etcd, "v9");
    let mut f = delete_m1_etcd(&b, &wb, &etcd);
    answer_etcd(&mut f, &b, &etcd);
    let r = b.reply().expect("refused");
    assert_eq!(r.status, 409);
    assert_eq!(detail(&r)["not_covered"], serde_json::json!(["a-scratch"]));
    assert_eq!(b.resumes.get(), 0);
    run_root(&b, &wb, &etcd);
    assert!(etcd.window(&wkey("v9")).is_some(), "v9's window is put back");
    // With a-scratch's window too: through, and both recorded.
    open_in_etcd(&a, &wa, &etcd, "a-scratch");
    let mut f = delete_m1_etcd(&b, &wb, &etcd);
    answer_etcd(&mut f, &b, &etcd);
    assert_eq!((b.reply().map(|r| r.status), b.resumes.get()), (None, 1), "let through");
    *b.response_headers.borrow_mut() = vec![(":status".into(), "202".into())];
    f.on_response_headers(&b);
    let named: Vec<String> = bg_lines(&b)
        .iter()
        .filter(|l| l["outcome"] == "accepted")
        .map(|l| l["tag"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(named, vec!["a-scratch", "v9"]);
    assert_eq!(b.counter("break_glass_overrides"), 2);
    assert!(etcd.window(&wkey("v9")).is_none() && etcd.window(&wkey("a-scratch")).is_none(), "both used up");
}

#[test]
fn a_delete_that_ends_while_taking_windows_puts_back_those_it_took() {
    let etcd = FakeEtcd::default();
    let (a, wa) = etcd_replica(&etcd);
    let (b, wb) = etcd_replica(&etcd);
    open_in_etcd(&a, &wa, &etcd, "v9");
    open_in_etcd(&a, &wa, &etcd, "a-scratch");
    let mut f = delete_m1_etcd(&b, &wb, &etcd);
    // a-scratch's window is taken (first in order); the client goes before v9's answer.
    let token = b.pending.borrow_mut().pop_front().unwrap();
    let call = b.calls.borrow()[token as usize - 1].clone();
    let r = etcd.answer(&call);
    b.set_answer(Some(r.clone()));
    f.on_call_response(&b, token, r.body.len());
    b.set_answer(None);
    assert!(etcd.window(&wkey("a-scratch")).is_none(), "taken");
    b.pending.borrow_mut().clear();
    f.on_done(&b);
    run_root(&b, &wb, &etcd);
    assert!(etcd.window(&wkey("a-scratch")).is_some(), "put back");
    assert!(etcd.window(&wkey("v9")).is_some(), "never taken");
}

// ---- A break-glass delete that reached the registry is recorded whatever comes back (attack
// review 2, item 1): a line when it is sent, a line with the outcome; its windows go back only
// when the registry itself refused it.

fn window_open(h: &FakeHost, tag: &str) -> bool {
    h.shared_get(&format!("immutable_tags.break_glass/app:{tag}:admin"))
        .unwrap()
        .0
        .is_some_and(|v| !v.is_empty())
}

/// The override lines with `outcome`, as (tag, outcome).
fn outcomes(h: &FakeHost) -> Vec<(String, String)> {
    bg_lines(h)
        .iter()
        .map(|l| {
            (
                l["tag"].as_str().unwrap_or_default().to_string(),
                l["outcome"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
}

/// A delete of M1 lifted by both windows, sent to the registry.
fn sent_with_windows(h: &FakeHost, w: &Rc<Worker>) -> Filter {
    open_window(h, w, "v9");
    open_window(h, w, "a-scratch");
    let (reply, f) = delete_m1(h, w, &[ADMIN], &ORDERS[0]);
    assert!(reply.is_none(), "{:?}", reply.map(|r| r.json()));
    assert!(!window_open(h, "v9") && !window_open(h, "a-scratch"), "both taken");
    f
}

#[test]
fn a_break_glass_delete_is_recorded_when_it_is_sent() {
    let h = FakeHost::new();
    let w = worker(&h, BG);
    let (reply, _) = delete_m1(&h, &w, &[ADMIN, REASON], &ORDERS[0]);
    assert!(reply.is_none());
    assert_eq!(h.resumes.get(), 1, "sent to the registry");
    let lines = bg_lines(&h);
    assert_eq!(outcomes(&h), pairs(&[("a-scratch", "sent"), ("v9", "sent")]), "{lines:?}");
    for l in &lines {
        assert_eq!(
            (l["principal"].as_str(), l["reason"].as_str(), l["action"].as_str()),
            (Some("admin"), Some(REASON.1), Some("delete"))
        );
        assert_eq!(l["current_digest"], sha(M1));
        assert_eq!(l["tags"], serde_json::json!(["a-scratch", "v9"]), "every tag the delete removes");
    }
}

#[test]
fn a_client_reset_after_the_delete_was_sent_records_an_unknown_outcome() {
    let h = FakeHost::new();
    let w = worker(&h, BG);
    let (_, mut f) = delete_m1(&h, &w, &[ADMIN, REASON], &ORDERS[0]);
    f.on_done(&h); // RST_STREAM before the registry's 202: distribution deletes anyway
    assert_eq!(
        outcomes(&h),
        pairs(&[("a-scratch", "sent"), ("v9", "sent"), ("a-scratch", "unknown"), ("v9", "unknown")])
    );
    assert_eq!(h.counter("break_glass_overrides"), 2, "counted: it may have happened");
}

#[test]
fn a_swept_delete_that_was_sent_records_an_unknown_outcome() {
    let h = FakeHost::new();
    let w = worker(&h, BG);
    let (_, mut f) = delete_m1(&h, &w, &[ADMIN, REASON], &ORDERS[0]);
    f.on_swept(&h);
    assert_eq!(outcomes(&h).iter().filter(|(_, o)| o == "unknown").count(), 2);
}

#[test]
fn an_upstream_reset_after_the_delete_keeps_the_windows_used_and_records_it() {
    let h = FakeHost::new();
    let w = worker(&h, BG);
    let mut f = sent_with_windows(&h, &w);
    answered(&h, &mut f, "503", Some("upstream_reset_before_response_started{connection_termination}"));
    assert!(!window_open(&h, "v9") && !window_open(&h, "a-scratch"), "not put back");
    assert_eq!(
        outcomes(&h),
        pairs(&[("a-scratch", "sent"), ("v9", "sent"), ("a-scratch", "unknown"), ("v9", "unknown")])
    );
}

#[test]
fn a_window_is_not_used_twice_after_an_upstream_reset() {
    let h = FakeHost::new();
    let w = worker(&h, BG);
    let mut f = sent_with_windows(&h, &w);
    answered(&h, &mut f, "503", None);
    let mut f = Filter::new(Some(w.clone()));
    h.replies.borrow_mut().clear();
    h.request("DELETE", "/v2/app/manifests/v9", &[ADMIN]);
    let path = Filter::first_look(&h).unwrap();
    assert_ne!(f.on_request_headers(&h, path, true), Action::Continue, "one window, two removals of v9");
    assert_eq!(h.reply().map(|r| r.status), Some(409));
}

#[test]
fn a_gateway_timeout_records_an_unknown_outcome() {
    let h = FakeHost::new();
    let w = worker(&h, BG);
    let (_, mut f) = delete_m1(&h, &w, &[ADMIN, REASON], &ORDERS[0]);
    answered(&h, &mut f, "504", None);
    assert_eq!(
        outcomes(&h),
        pairs(&[("a-scratch", "sent"), ("v9", "sent"), ("a-scratch", "unknown"), ("v9", "unknown")])
    );
}

#[test]
fn a_registry_5xx_keeps_the_windows_used() {
    let h = FakeHost::new();
    let w = worker(&h, BG);
    let mut f = sent_with_windows(&h, &w);
    answered(&h, &mut f, "500", Some("via_upstream"));
    assert!(!window_open(&h, "v9") && !window_open(&h, "a-scratch"), "a 5xx may come after the delete");
    assert_eq!(outcomes(&h).iter().filter(|(_, o)| o == "unknown").count(), 2);
}

#[test]
fn a_refusal_from_the_registry_itself_puts_the_windows_back() {
    let h = FakeHost::new();
    let w = worker(&h, BG);
    let mut f = sent_with_windows(&h, &w);
    answered(&h, &mut f, "403", Some("via_upstream"));
    assert!(window_open(&h, "v9") && window_open(&h, "a-scratch"), "put back");
    assert_eq!(
        outcomes(&h),
        pairs(&[("a-scratch", "sent"), ("v9", "sent"), ("a-scratch", "refused"), ("v9", "refused")])
    );
    assert_eq!(h.counter("break_glass_overrides"), 0);
}

#[test]
fn an_envoy_local_4xx_keeps_the_windows_used() {
    let h = FakeHost::new();
    let w = worker(&h, BG);
    let mut f = sent_with_windows(&h, &w);
    answered(&h, &mut f, "408", Some("request_overall_timeout"));
    assert!(!window_open(&h, "v9") && !window_open(&h, "a-scratch"));
}

#[test]
fn an_accepted_delete_is_recorded_once_sent_and_once_accepted() {
    let h = FakeHost::new();
    let w = worker(&h, BG);
    let mut f = sent_with_windows(&h, &w);
    answered(&h, &mut f, "202", Some("via_upstream"));
    assert_eq!(
        outcomes(&h),
        pairs(&[("a-scratch", "sent"), ("v9", "sent"), ("a-scratch", "accepted"), ("v9", "accepted")])
    );
    assert_eq!(h.counter("break_glass_overrides"), 2);
}

// ---- The tags list's `Link` headers: all of them are read (the ABI's single read returns the
// first value only), and next links that disagree refuse (attack review 2, item 2).

const GLOBAL: &str = r#"{"upstream": {"cluster": "registry"}, "global": {"immutable_tags": true}}"#;

fn paged(list: &[&str], links: &[&str]) -> Reply {
    let mut r = tags(list);
    r.headers.extend(links.iter().map(|l| ("link".to_string(), l.to_string())));
    r
}

fn delete_m1_paged(h: &FakeHost, first_page: Reply) -> Filter {
    let w = worker(h, GLOBAL);
    let mut f = Filter::new(Some(w));
    h.request("DELETE", &format!("/v2/app/manifests/{}", sha(M1)), &[]);
    let path = Filter::first_look(h).unwrap();
    assert_eq!(f.on_request_headers(h, path, true), Action::Pause);
    respond_to(&mut f, h, "/v2/app/tags/list", first_page);
    f
}

#[test]
fn a_next_link_in_a_second_link_header_is_followed() {
    let h = FakeHost::new();
    let first = paged(
        &["v1"],
        &[r#"</v2/app/tags/list?n=1>; rel="first""#, r#"</v2/app/tags/list?n=1&last=v1>; rel="next""#],
    );
    let mut f = delete_m1_paged(&h, first);
    assert!(h.reply().is_none(), "{:?}", h.reply().map(|r| r.json()));
    respond_to(&mut f, &h, "/v2/app/tags/list?n=1&last=v1", tags(&["v9"]));
    for (tag, holds) in [("v1", M2), ("v9", M1)] {
        if h.reply().is_none() {
            respond_to(&mut f, &h, &format!("/v2/app/manifests/{tag}"), head(holds));
        }
    }
    assert_eq!(h.resumes.get(), 0, "not let through");
    let r = h.reply().expect("refused");
    assert_eq!((r.status, detail(&r)["tag"].as_str()), (409, Some("v9")));
}

#[test]
fn next_links_that_disagree_refuse_the_delete() {
    for links in [
        vec![
            r#"</v2/app/tags/list?n=1&last=v1>; rel="next""#,
            r#"</v2/app/tags/list?n=1&last=zz>; rel="next""#,
        ],
        vec![r#"</v2/app/tags/list?n=1&last=v1>; rel="next", </v2/app/tags/list?n=1&last=zz>; rel="next""#],
    ] {
        let h = FakeHost::new();
        delete_m1_paged(&h, paged(&["v1"], &links));
        let r = h.reply().unwrap_or_else(|| panic!("{links:?}: not refused"));
        assert_eq!(r.status, 503, "{links:?}");
        assert!(r.json().to_string().contains("next page"), "{}", r.json());
        assert_eq!(h.resumes.get(), 0);
    }
}

#[test]
fn the_same_next_link_twice_is_followed() {
    let h = FakeHost::new();
    let next = r#"</v2/app/tags/list?n=1&last=v1>; rel="next""#;
    let mut f = delete_m1_paged(&h, paged(&["v1"], &[next, next]));
    assert!(h.reply().is_none());
    respond_to(&mut f, &h, "/v2/app/tags/list?n=1&last=v1", tags(&["v9"]));
}

/// The refusal line of a digest delete names every tag it would remove (attack review 2, item 3).
#[test]
fn a_refused_digest_delete_logs_every_tag_it_would_remove() {
    let h = FakeHost::new();
    let w = worker(&h, BG);
    open_window(&h, &w, "v9");
    let (reply, _) = delete_m1(&h, &w, &[ADMIN], &ORDERS[0]);
    assert_eq!(reply.map(|r| r.status), Some(409));
    let logs = h.logs.borrow();
    let line = logs
        .iter()
        .filter_map(|(_, l)| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["event"] == "immutable_tags.refusal")
        .expect("logged");
    assert_eq!(line["tags"], serde_json::json!(["a-scratch", "v9"]));
    assert_eq!(line["not_covered"], serde_json::json!(["a-scratch"]));
    assert_eq!(line["digest"], sha(M1));
}

/// The client leaves while a window's use is out: etcd runs it all the same, and its
/// answer reaches the root (proxy-wasm dispatches every call on the root context), which puts
/// the window back (attack review 2, item 4).
#[test]
fn a_window_taken_after_the_client_left_is_put_back_when_etcd_answers() {
    let etcd = FakeEtcd::default();
    let (a, wa) = etcd_replica(&etcd);
    let (b, wb) = etcd_replica(&etcd);
    open_in_etcd(&a, &wa, &etcd, "v9");
    open_in_etcd(&a, &wa, &etcd, "a-scratch");
    let mut f = delete_m1_etcd(&b, &wb, &etcd);
    assert!(f.in_flight(), "its state is kept until it ends, so that it gives back what it took");
    f.on_done(&b);
    let token = b.pending.borrow_mut().pop_front().expect("a-scratch's use is out");
    let call = b.calls.borrow()[token as usize - 1].clone();
    let r = etcd.answer(&call);
    assert!(etcd.window(&wkey("a-scratch")).is_none(), "etcd took it");
    b.set_answer(Some(r.clone()));
    assert!(crate::filter::root_answer(&b, &wb, token, r.body.len()), "the root knows the call");
    b.set_answer(None);
    run_root(&b, &wb, &etcd);
    assert!(etcd.window(&wkey("a-scratch")).is_some(), "put back");
    assert!(etcd.window(&wkey("v9")).is_some(), "never taken");
}

/// Envoy answers a delete itself (a timeout) while a window's use is out: the request
/// never goes upstream, so the windows go back, the one being taken once etcd answers.
#[test]
fn a_local_reply_while_taking_windows_puts_them_back() {
    let etcd = FakeEtcd::default();
    let (a, wa) = etcd_replica(&etcd);
    let (b, wb) = etcd_replica(&etcd);
    open_in_etcd(&a, &wa, &etcd, "v9");
    open_in_etcd(&a, &wa, &etcd, "a-scratch");
    let mut f = delete_m1_etcd(&b, &wb, &etcd);
    *b.response_headers.borrow_mut() = vec![(":status".into(), "408".into())];
    *b.code_details.borrow_mut() = Some("request_overall_timeout".into());
    f.on_response_headers(&b);
    assert!(f.idle(), "nothing left to judge: its state goes, the call's answer is the root's");
    let token = b.pending.borrow_mut().pop_front().expect("a-scratch's use is out");
    let call = b.calls.borrow()[token as usize - 1].clone();
    let r = etcd.answer(&call);
    b.set_answer(Some(r.clone()));
    assert!(crate::filter::root_answer(&b, &wb, token, r.body.len()));
    b.set_answer(None);
    assert_eq!(b.resumes.get(), 0, "never sent");
    run_root(&b, &wb, &etcd);
    assert!(etcd.window(&wkey("a-scratch")).is_some(), "put back");
    assert!(bg_lines(&b).is_empty(), "no override");
}

// ---- GitLab's registry deletes a tag with `DELETE /v2/<name>/tags/reference/<tag>`: the filter
// judges it as `DELETE /v2/<name>/manifests/<tag>`.

#[test]
fn a_gitlab_tag_delete_is_a_tag_delete() {
    for p in [
        "/v2/team/app/tags/reference/v1",
        "/v2/team/app/TAGS/Reference/v1",
        "/v2/team%2Fapp/tags/%72eference/v%31?x=1",
    ] {
        assert_eq!(
            classify("DELETE", p),
            Request::ManifestDelete { repository: "team/app".into(), reference: Reference::Tag("v1".into()) },
            "{p}"
        );
        assert!(crate::oci::request::may_name_manifests(p), "{p}");
        assert_eq!(classify("GET", p), Request::Other, "{p}");
    }
    for p in [
        "/v2/App/tags/reference/v1",
        "/v2/app/tags/reference/",
        "/v2/app/tags/reference/a/b",
        "//v2/app/tags/reference/v1",
        "/v2/app/tags/reference/v%zz",
    ] {
        assert!(matches!(classify("DELETE", p), Request::Invalid(_)), "{p}");
    }
}

#[test]
fn the_filter_refuses_a_gitlab_delete_of_an_immutable_tag_as_it_does_a_manifests_one() {
    use super::fake::{on_headers, worker, FakeHost};
    use crate::filter::{Action, Filter};
    let policy = r#"{"upstream": {"cluster": "registry"}, "global": {"immutable_tags": true}}"#;
    let mut seen = Vec::new();
    for path in ["/v2/app/manifests/v1", "/v2/app/tags/reference/v1", "/v2/app/Tags/Reference/v%31"] {
        let h = FakeHost::new();
        let mut f = Filter::new(Some(worker(&h, policy)));
        h.request("DELETE", path, &[]);
        assert_eq!(on_headers(&mut f, &h, true), Action::Pause, "{path}");
        let r = h.reply().expect("refused");
        assert!(r.status >= 400, "{path}");
        seen.push((r.status, r.json()["errors"][0]["code"].clone()));
    }
    assert!(seen.windows(2).all(|w| w[0] == w[1]), "{seen:?}");
}
