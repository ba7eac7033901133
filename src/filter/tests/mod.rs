//! The state machine on a fake host: every flow's states, without Envoy. Each test drives the
//! callbacks in the order Envoy can deliver them and checks what reached "the registry" (the
//! dispatched calls) and what the client got.
//!
//! Each file holds one topic; this module holds only the helpers more than one of them uses
//! (each file starts `use super::*`). A test that fits none of the topics below goes in a new
//! file with its own line here, not appended to the nearest one.

// The harness.
/// The fake host: `FakeHost` (one stream's request, calls, answers and log), `Process` (what one
/// Envoy's workers share: shared data, clock), `FakeEtcd`, and the small drivers (`on_headers`,
/// `respond`, `answer`, `sha`).
mod fake;
/// The deterministic simulation of the claims protocol on `world` (`make sim`; a failing seed
/// replays with `SIM_SEED=<n> cargo test --lib sim::`). Fixed schedules go in `sequences`.
mod sim;
/// Several replicas over `fake`: one clock, one fake etcd, a registry that stores whatever it is
/// sent and records every write. For tests of the claims protocol across replicas, and `sim`.
mod world;

// Topics.
/// Break-glass on one Envoy: principals, reasons, actions, the audit line, windows, the probe.
mod break_glass;
/// The glue's callbacks past the headers, state kept per stream, requests without a worker.
mod callbacks;
/// Claims in shared data (one Envoy): CAS, one winner, commit, release; the slot key, orphans.
mod claims;
/// Claims in etcd, replicas each with its own process: winner, failures, retries, leases.
mod claims_etcd;
/// A digest delete's check on one worker: tags list bound, HEADs without a digest, size limit.
mod delete_checks;
/// A digest delete against a push of that digest: the fence, in both stores, and the delete's
/// bounded upstream timeout.
mod delete_fence;
/// Deletes (by tag, by digest, GitLab's path): the registry's word decides, break-glass covers
/// every immutable tag a delete removes, every `Link` of the tags list is read.
mod deletes;
/// etcd calls failing over within `claims.etcd.timeout_ms`, and retries that must not undercount
/// holds or bring back a used window.
mod failover;
/// What a request may carry: host reads that fail, bytes that are not UTF-8, bounded work,
/// `;` and `Invalid` writes.
mod input;
/// Method-override headers and query parameters on manifest and blob paths.
mod method_override;
/// Pull pinning: which reads teach the map and which are pinned.
mod pinning;
/// Which reads are pinned at all: not without `pin_immutable_pulls`, not with a query or under
/// another authority; what a pinned read learns and forgets.
mod pinning_scope;
/// Pushes on one worker: lookup, body, size limit, harmless request, audit mode, answers.
mod push;
/// The claims protocol's holes across replicas (issue 27's sequences) on `world`, both stores:
/// held pushes against overrides, clock skew and steps, holds that linger, late changes.
mod sequences;
/// The tag map: what teaches it, how long it is trusted, stale entries after an override.
mod stale_map;
/// What Envoy's telemetry sees: response code details, the client's method header.
mod telemetry;
/// Break-glass windows in etcd: one use across replicas, put back when unused.
mod windows_etcd;

use crate::filter::claims::etcd as etcd_claims;
use crate::filter::host::Host;
use crate::filter::worker::Worker;
use crate::filter::{Action, Filter};
use crate::oci::digest::Digest;
use fake::FakeEtcd;
use fake::{answer, on_headers, respond, sha, worker, FakeHost, Reply};
use std::rc::Rc;

// Pushes on one worker.
const POLICY: &str = r#"{"upstream": {"cluster": "registry"}, "global": {"immutable_tags": true, "immutable_tags_exclusions": ["^latest$"]}}"#;
const M1: &[u8] = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","n":1}"#;
const M2: &[u8] = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","n":2}"#;
const CT: (&str, &str) = ("content-type", "application/vnd.oci.image.manifest.v1+json");

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

/// Starts a PUT of `body` to `app:tag` (headers only).
fn put_headers(f: &mut Filter, h: &FakeHost, tag: &str, body: &[u8]) -> Action {
    let len = body.len().to_string();
    h.request(
        "PUT",
        &format!("/v2/app/manifests/{tag}"),
        &[CT, ("content-length", &len), ("authorization", "Bearer t")],
    );
    on_headers(f, h, false)
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

/// A whole push through one stream: headers, HEAD answer (if one is sent), body, PUT answer.
fn push(h: &FakeHost, w: &Rc<Worker>, tag: &str, body: &[u8], registry_holds: Option<&[u8]>) -> Reply {
    let mut f = Filter::new(Some(w.clone()));
    put_headers(&mut f, h, tag, body);
    while !h.pending.borrow().is_empty()
        && h.last_call().and_then(|c| c.header(":method").map(str::to_string)).as_deref() == Some("HEAD")
    {
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

// Replicas sharing a FakeEtcd (claims_etcd, windows_etcd, stale_map).
/// Answers the oldest pending call of `h` with `reply(call)`; `true` if there was one.
fn respond_with(f: &mut Filter, h: &FakeHost, mut reply: impl FnMut(&fake::Call) -> Reply) -> bool {
    let Some(token) = h.pending.borrow_mut().pop_front() else { return false };
    let call = h.call_of(token);
    let r = reply(&call);
    let size = r.body.len();
    h.set_answer(Some(r));
    f.on_call_response(h, token, size);
    h.set_answer(None);
    true
}

/// The root context's timer, and etcd's answers to what it sent.
fn run_root(h: &FakeHost, w: &Rc<Worker>, etcd: &FakeEtcd) {
    etcd_claims::tick(h, w);
    loop {
        let next = h.pending.borrow_mut().pop_front();
        let Some(token) = next else { break };
        let call = h.call_of(token);
        let r = etcd.answer(&call);
        let size = r.body.len();
        h.set_answer(Some(r));
        etcd_claims::on_root_response(h, w, token, size);
        h.set_answer(None);
    }
}

/// A replica: its own process, its worker.
fn replica(etcd: &FakeEtcd, policy: &str) -> (FakeHost, Rc<Worker>) {
    let h = FakeHost::new();
    let w = worker(&h, policy);
    run_root(&h, &w, etcd);
    (h, w)
}

/// Answers the pending etcd calls (lease grant, claim) until the push waits on something else.
fn answer_etcd(f: &mut Filter, h: &FakeHost, etcd: &FakeEtcd) {
    loop {
        let Some(token) = h.pending.borrow().front().copied() else { return };
        if h.call_of(token).cluster != "etcd" {
            return;
        }
        respond_with(f, h, |c| etcd.answer(c));
    }
}

/// Headers, HEAD (absent), whole body: the push is then at its claim.
fn to_claim(h: &FakeHost, w: &Rc<Worker>, body: &[u8]) -> Filter {
    to_claim_tag(h, w, "v1", body)
}

fn to_claim_tag(h: &FakeHost, w: &Rc<Worker>, tag: &str, body: &[u8]) -> Filter {
    let mut f = Filter::new(Some(w.clone()));
    put_headers(&mut f, h, tag, body);
    respond(&mut f, h, head_answer(None));
    send_body(&mut f, h, &[body]);
    f
}

// Break-glass.
const BG: &str = r#"{"global": {"immutable_tags": true}, "break_glass": {"principals": ["admin", "sre"], "repositories": ["app"], "actions": ["overwrite", "delete"]}}"#;

/// `Basic admin:pw` and `Basic bob:pw`.
const ADMIN: (&str, &str) = ("authorization", "Basic YWRtaW46cHc=");
const BOB: (&str, &str) = ("authorization", "Basic Ym9iOnB3");

/// `Basic sre:pw`: listed too.
const SRE: (&str, &str) = ("authorization", "Basic c3JlOnB3");
const REASON: (&str, &str) = ("x-break-glass-reason", "CVE-2026-1 in v1");

/// A worker that learned whether the registry demands authentication (`None`: not learned).
fn bg_worker(h: &FakeHost, policy: &str, registry_auth: Option<bool>) -> Rc<Worker> {
    let w = worker(h, policy);
    w.registry_auth.set(registry_auth.map(|a| (a, h.now_ms())));
    w
}

/// A push of `body` to `app:tag` with `extra` headers over a tag that holds `holds`; `put`: the
/// registry's answer to the filter's PUT.
fn bg_push(
    h: &FakeHost,
    w: &Rc<Worker>,
    tag: &str,
    body: &[u8],
    holds: &[u8],
    extra: &[(&str, &str)],
    put: Reply,
) -> Reply {
    let mut f = Filter::new(Some(w.clone()));
    let len = body.len().to_string();
    let mut headers = vec![CT, ("content-length", len.as_str())];
    headers.extend_from_slice(extra);
    h.replies.borrow_mut().clear();
    h.request("PUT", &format!("/v2/app/manifests/{tag}"), &headers);
    on_headers(&mut f, h, false);
    if !h.pending.borrow().is_empty() {
        respond(&mut f, h, head_answer(Some(holds)));
    }
    send_body(&mut f, h, &[body]);
    let mut put = Some(put);
    while let Some(call) = h.last_call().filter(|_| !h.pending.borrow().is_empty()) {
        match call.header(":method") {
            Some("HEAD") => respond(&mut f, h, head_answer(Some(holds))),
            _ => respond(&mut f, h, put.take().expect("one PUT")),
        }
    }
    h.reply().expect("an answer")
}

fn bg_lines(h: &FakeHost) -> Vec<serde_json::Value> {
    h.logs
        .borrow()
        .iter()
        .filter_map(|(_, l)| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["event"] == "immutable_tags.break_glass")
        .collect()
}

fn why(r: &Reply) -> String {
    r.json()["errors"][0]["detail"]["break_glass"].as_str().unwrap_or("").to_string()
}

// Size limits and registries whose HEAD names no digest (push, delete_checks).
const LIMIT_1K: &str = r#"{"upstream": {"cluster": "registry"}, "global": {"immutable_tags": true}, "max_manifest_bytes": 1024}"#;

/// A registry whose manifest HEAD answers 200 without `Docker-Content-Digest`
/// (container-registry 0.3.1): the filter GETs the manifest and hashes it.
fn head_without_digest() -> Reply {
    answer(200, &[("content-type", CT.1)], b"")
}

// Break-glass windows in etcd.
const BG_ETCD: &str = r#"{"global": {"immutable_tags": true},
  "break_glass": {"principals": ["admin", "sre"], "repositories": ["app"], "actions": ["overwrite", "delete"]},
  "claims": {"etcd": {"cluster": "etcd", "authority": "etcd.test", "timeout_ms": 500}}}"#;

/// admin's window on app:v1.
const WKEY: &str = "/immutable-tags/window:app:v1:admin";

/// A replica whose worker knows the registry demands authentication.
fn bg_replica(etcd: &FakeEtcd) -> (FakeHost, Rc<Worker>) {
    let (h, w) = replica(etcd, BG_ETCD);
    w.registry_auth.set(Some((true, h.now_ms())));
    (h, w)
}

/// A read of app:v1 with `auth` and the reason, answered 200, up to its answer's headers.
fn read_with_reason(h: &FakeHost, w: &Rc<Worker>, auth: (&str, &str)) -> (Filter, Action) {
    let mut f = Filter::new(Some(w.clone()));
    h.request("HEAD", "/v2/app/manifests/v1", &[auth, REASON]);
    assert_eq!(on_headers(&mut f, h, true), Action::Continue);
    h.response_headers.borrow_mut().push((":status".into(), "200".into()));
    let action = f.on_response_headers(h);
    (f, action)
}

/// Opens admin's window through `h`, etcd answering.
fn open_in_etcd(h: &FakeHost, w: &Rc<Worker>, etcd: &FakeEtcd) {
    let (mut f, _) = read_with_reason(h, w, ADMIN);
    while respond_with(&mut f, h, |c| etcd.answer(c)) {}
}

/// A push of `body` to app:v1 over a tag holding `holds` up to the point where it waits on
/// etcd or on its PUT's answer (nothing answered but the registry's HEADs).
fn push_to_etcd(h: &FakeHost, w: &Rc<Worker>, body: &[u8], holds: &[u8], extra: &[(&str, &str)]) -> Filter {
    let mut f = Filter::new(Some(w.clone()));
    let len = body.len().to_string();
    let mut headers = vec![CT, ("content-length", len.as_str())];
    headers.extend_from_slice(extra);
    h.replies.borrow_mut().clear();
    h.request("PUT", "/v2/app/manifests/v1", &headers);
    on_headers(&mut f, h, false);
    while h.last_call().is_some_and(|c| c.header(":method") == Some("HEAD"))
        && respond_with(&mut f, h, |_| head_answer(Some(holds)))
    {}
    send_body(&mut f, h, &[body]);
    while h.last_call().is_some_and(|c| c.header(":method") == Some("HEAD"))
        && respond_with(&mut f, h, |_| head_answer(Some(holds)))
    {}
    f
}

/// A whole push: etcd answered by `etcd`, the PUT by `put`.
fn bg_push_etcd(
    h: &FakeHost,
    w: &Rc<Worker>,
    etcd: &FakeEtcd,
    body: &[u8],
    holds: &[u8],
    extra: &[(&str, &str)],
    put: Reply,
) -> Reply {
    let mut f = push_to_etcd(h, w, body, holds, extra);
    let mut put = Some(put);
    while respond_with(&mut f, h, |c| match (c.cluster.as_str(), c.header(":method")) {
        ("etcd", _) => etcd.answer(c),
        (_, Some("HEAD")) => head_answer(Some(holds)),
        _ => put.take().expect("one PUT"),
    }) {}
    h.reply().expect("an answer")
}

// A re-push being written when its client leaves (stale_map, callbacks).
/// `app:v1` holds `M1` and the map knows it; an identical re-push of it is being written (its
/// PUT is out, unanswered).
fn rewriting_v1(h: &FakeHost, w: &Rc<Worker>) -> Filter {
    assert_eq!(push(h, w, "v1", M1, None).status, 201);
    let mut f = Filter::new(Some(w.clone()));
    put_headers(&mut f, h, "v1", M1);
    send_body(&mut f, h, &[M1]);
    assert_eq!(h.calls_with("PUT").len(), 2);
    f
}

/// Whether the next push of `app:v1` asks the registry (the map does not know the tag).
fn next_push_heads(h: &FakeHost, w: &Rc<Worker>) -> bool {
    let heads = h.calls_with("HEAD").len();
    put_headers(&mut Filter::new(Some(w.clone())), h, "v1", M1);
    h.calls_with("HEAD").len() > heads
}
