//! The claims protocol's holes (issue 27's sequences, issue 21's items 1-3), each replayed on
//! fake hosts against a fake etcd and a fake registry that stores whatever it is sent and
//! records every stored write. Every stream is its own `FakeHost` (its own request and calls)
//! sharing its replica's worker; every replica shares the one clock (`Process`), and etcd's
//! leases end on that clock.
use super::fake::{answer, Call, FakeEtcd, FakeHost, Reply};
use crate::filter::host::Host;
use crate::filter::worker::Worker;
use crate::filter::Filter;
use crate::config::Config;
use crate::digest::Digest;
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

pub const X: &[u8] = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","n":"x"}"#;
pub const Y: &[u8] = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","n":"y"}"#;
pub const OCI: &str = "application/vnd.oci.image.manifest.v1+json";
/// `Basic admin:pw` (listed for break-glass) and `Basic bob:pw` (a plain pusher).
pub const ADMIN: (&str, &str) = ("authorization", "Basic YWRtaW46cHc=");
pub const BOB: (&str, &str) = ("authorization", "Basic Ym9iOnB3");
pub const REASON: (&str, &str) = ("x-break-glass-reason", "CVE-2026-1 in v1");

pub const ETCD_BG: &str = r#"{"upstream": {"cluster": "registry"}, "global": {"immutable_tags": true},
  "break_glass": {"principals": ["admin"], "repositories": ["app"], "actions": ["overwrite", "delete"]},
  "claims": {"etcd": {"cluster": "etcd", "authority": "etcd.test", "timeout_ms": 500}}}"#;
pub const SHARED: &str = r#"{"upstream": {"cluster": "registry"}, "global": {"immutable_tags": true}}"#;

pub fn sha(b: &[u8]) -> String {
    Digest::sha256(b).to_string()
}

/// A registry that stores whatever it is sent (only a manifest content type is checked, and a
/// token "bob-readonly" is refused 401), honours `?tag=`, and records every stored write.
/// Deletes by tag or by digest (a digest's every tag goes, as distribution does) and lists tags.
#[derive(Default)]
pub struct Registry {
    pub tags: RefCell<HashMap<String, String>>,
    /// (tag, digest) of every stored write, in order; a deleted tag as (tag, "").
    pub history: RefCell<Vec<(String, String)>>,
    /// How the next write (PUT, DELETE) goes wrong: 0 it does not; 1 it is done, then answered
    /// 503 (the filter cannot tell); 2 answered 503, not done.
    pub fault: std::cell::Cell<u8>,
}

impl Registry {
    pub fn answer(&self, c: &Call) -> Reply {
        let path = c.header(":path").unwrap_or_default().to_string();
        let (path, query) = path.split_once('?').unwrap_or((&path, ""));
        if path == "/v2/" {
            return answer(401, &[("www-authenticate", "Basic realm=\"r\"")], b"");
        }
        let tag = path.rsplit('/').next().unwrap_or_default().to_string();
        if path.ends_with("/tags/list") {
            let mut list: Vec<String> = self.tags.borrow().keys().filter(|t| !t.starts_with("sha256:")).cloned().collect();
            list.sort();
            return answer(200, &[("content-type", "application/json")], serde_json::json!({"name": "app", "tags": list}).to_string().as_bytes());
        }
        let fault = match c.header(":method") {
            Some("PUT" | "DELETE") => self.fault.replace(0),
            _ => 0,
        };
        if fault == 2 {
            return answer(503, &[], b"upstream overloaded");
        }
        let reply = self.act(c, tag, query);
        match fault {
            1 => answer(503, &[], b"upstream reset after the write"),
            _ => reply,
        }
    }

    fn act(&self, c: &Call, tag: String, query: &str) -> Reply {
        match c.header(":method") {
            Some("HEAD") | Some("GET") => match self.tags.borrow().get(&tag) {
                Some(d) => answer(200, &[("docker-content-digest", d)], b""),
                None => answer(404, &[], br#"{"errors":[{"code":"MANIFEST_UNKNOWN"}]}"#),
            },
            Some("PUT") => {
                if c.header("authorization") == Some("Bearer bob-readonly") {
                    return answer(401, &[], br#"{"errors":[{"code":"UNAUTHORIZED"}]}"#);
                }
                if c.header("content-type") != Some(OCI) {
                    return answer(400, &[], br#"{"errors":[{"code":"MANIFEST_INVALID"}]}"#);
                }
                let d = sha(c.body.as_deref().unwrap_or_default());
                let mut tags = vec![tag];
                tags.extend(query.split('&').filter_map(|kv| kv.strip_prefix("tag=")).map(str::to_string));
                for t in tags {
                    self.tags.borrow_mut().insert(t.clone(), d.clone());
                    self.history.borrow_mut().push((t, d.clone()));
                }
                answer(201, &[("docker-content-digest", &d)], b"")
            }
            Some("DELETE") => {
                let gone: Vec<String> = match tag.starts_with("sha256:") {
                    true => self.tags.borrow().iter().filter(|(_, d)| **d == tag).map(|(t, _)| t.clone()).collect(),
                    false => self.tags.borrow().contains_key(&tag).then(|| tag.clone()).into_iter().collect(),
                };
                let known = !gone.is_empty() || self.history.borrow().iter().any(|(_, d)| *d == tag);
                for t in gone {
                    self.tags.borrow_mut().remove(&t);
                    self.history.borrow_mut().push((t, String::new()));
                }
                match known {
                    true => answer(202, &[], b""),
                    false => answer(404, &[], br#"{"errors":[{"code":"MANIFEST_UNKNOWN"}]}"#),
                }
            }
            _ => answer(405, &[], b""),
        }
    }

    pub fn holds(&self, tag: &str) -> Option<String> {
        self.tags.borrow().get(tag).cloned()
    }
}

/// One Envoy replica: its worker, and the host its root context runs on.
pub struct Replica {
    pub root: FakeHost,
    pub w: Rc<Worker>,
    /// Stopped (SIGKILL): its root no longer ticks; its streams are gone.
    pub dead: bool,
}

/// A request in flight: its own host (request, calls), its filter.
pub struct Stream {
    pub h: FakeHost,
    pub f: Filter,
    /// PUT calls held back (token), answered by `answer_put`.
    pub held_puts: Vec<u32>,
}

pub struct World {
    pub clock: FakeHost,
    pub etcd: FakeEtcd,
    pub reg: Registry,
    pub policy: String,
}

impl World {
    pub fn new(policy: &str) -> World {
        let clock = FakeHost::new();
        let etcd = FakeEtcd::default();
        *etcd.clock.borrow_mut() = Some(clock.process.clone());
        World { clock, etcd, reg: Registry::default(), policy: policy.to_string() }
    }

    pub fn replica(&self) -> Replica {
        let mut root = self.clock.share_with();
        root.clock_offset = Rc::new(std::cell::Cell::new(0));
        let w = Rc::new(Worker::new(&root, Config::from_json(self.policy.as_bytes()).unwrap()));
        // Learned by the root's probe in life; set here so break-glass can judge at once.
        w.registry_auth.set(Some((true, root.now_ms())));
        let r = Replica { root, w, dead: false };
        self.tick(&r);
        r
    }

    pub fn advance(&self, ms: u64) {
        self.clock.advance(ms);
    }

    /// The replica's root timer, and the answers to what it sent (etcd, the registry).
    pub fn tick(&self, r: &Replica) {
        if r.dead {
            return;
        }
        r.w.registry_auth.set(Some((true, r.root.now_ms())));
        crate::filter::claims::etcd::tick(&r.root, &r.w);
        self.answer_root(r);
    }

    pub fn answer_root(&self, r: &Replica) {
        loop {
        let next = r.root.pending.borrow_mut().pop_front();
        let Some(token) = next else { break };
            let call = r.root.call_of(token);
            let reply = if call.cluster == "etcd" { self.etcd.answer(&call) } else { self.reg.answer(&call) };
            let size = reply.body.len();
            r.root.set_answer(Some(reply));
            root_response(&r.root, &r.w, token, size);
            r.root.set_answer(None);
        }
    }

    /// Starts a request through `r`.
    pub fn open(&self, r: &Replica, method: &str, path: &str, headers: &[(&str, &str)]) -> Stream {
        let h = r.root.share_with();
        h.request(method, path, headers);
        let mut f = Filter::new(Some(r.w.clone()));
        if let Some(p) = Filter::first_look(&h) {
            f.on_request_headers(&h, p, false);
        }
        Stream { h, f, held_puts: Vec::new() }
    }

    /// A PUT of `body` to `app:tag` (headers only), with a manifest content type.
    pub fn open_put(&self, r: &Replica, tag: &str, body: &[u8], extra: &[(&str, &str)]) -> Stream {
        let len = body.len().to_string();
        let mut headers = vec![("content-type", OCI), ("content-length", len.as_str())];
        headers.extend_from_slice(extra);
        self.open(r, "PUT", &format!("/v2/app/manifests/{tag}"), &headers)
    }

    /// Answers the stream's calls (etcd, registry) until it waits on something else; PUTs are
    /// held back if `hold_puts`.
    pub fn pump(&self, s: &mut Stream, hold_puts: bool) {
        loop {
            let Some(token) = s.h.pending.borrow_mut().pop_front() else { return };
            let call = s.h.call_of(token);
            if hold_puts && call.header(":method") == Some("PUT") {
                s.held_puts.push(token);
                continue;
            }
            let reply = if call.cluster == "etcd" { self.etcd.answer(&call) } else { self.reg.answer(&call) };
            deliver(s, token, reply);
        }
    }

    /// The registry answers a held PUT now (it stores what it was sent, or refuses it).
    pub fn answer_put(&self, s: &mut Stream) {
        let token = s.held_puts.remove(0);
        let reply = self.reg.answer(&s.h.call_of(token));
        deliver(s, token, reply);
    }

    /// Body bytes; `last`: they end the body.
    pub fn body(&self, s: &mut Stream, bytes: &[u8], last: bool) {
        s.h.body.borrow_mut().extend_from_slice(bytes);
        let size = s.h.body.borrow().len();
        s.f.on_request_body(&s.h, size, last);
    }

    /// A whole push through `r`: its answer.
    pub fn push(&self, r: &Replica, tag: &str, body: &[u8], extra: &[(&str, &str)]) -> Reply {
        let mut s = self.open_put(r, tag, body, extra);
        self.pump(&mut s, false);
        self.body(&mut s, body, true);
        self.pump(&mut s, false);
        s.f.on_done(&s.h);
        reply(&s)
    }
}

/// The client's answer.
pub fn reply(s: &Stream) -> Reply {
    s.h.reply().expect("the client got an answer")
}

/// A dispatched call's answer reaches the stream that made it (the host glue's routing).
pub fn deliver(s: &mut Stream, token: u32, reply: Reply) {
    let size = reply.body.len();
    s.h.set_answer(Some(reply));
    s.f.on_call_response(&s.h, token, size);
    s.h.set_answer(None);
}

/// A call answered whose stream is gone (or a root call): what the host glue does with it.
pub fn root_response(h: &FakeHost, w: &Worker, token: u32, size: usize) {
    if !crate::filter::break_glass::learn(h, w, token) {
        crate::filter::claims::etcd::on_root_response(h, w, token, size);
    }
}

/// The answer to a PUT whose client left reaches the root (the call is the root context's).
pub fn answer_orphan(world: &World, r: &Replica, s: &mut Stream) {
    let token = s.held_puts.remove(0);
    let reply = world.reg.answer(&s.h.call_of(token));
    let size = reply.body.len();
    r.root.set_answer(Some(reply));
    crate::filter::push::orphan_answer(&r.root, &r.w, token, size);
    r.root.set_answer(None);
}

/// Ticks every live replica every 250 ms for `ms`.
pub fn run_for(world: &World, replicas: &[&Replica], ms: u64) {
    let mut t = 0;
    while t < ms {
        world.advance(250);
        t += 250;
        for r in replicas {
            world.tick(r);
        }
    }
}

const V1: &str = "v1";

/// Issue 27, sequence 1: a plain push of the old digest, opened before an override and held at
/// its last byte, must not undo the override.
#[test]
fn a_held_same_digest_push_does_not_undo_an_override() {
    for same_replica in [true, false] {
        let world = World::new(ETCD_BG);
        let (a, b) = (world.replica(), world.replica());
        assert_eq!(world.push(&a, V1, X, &[BOB]).status, 201);
        run_for(&world, &[&a, &b], 1_000);
        let through = if same_replica { &a } else { &b };
        let mut p = world.open_put(through, V1, X, &[BOB]);
        world.pump(&mut p, false);
        world.body(&mut p, &X[..X.len() - 1], false);
        world.pump(&mut p, false);
        world.advance(100);
        assert_eq!(world.push(&a, V1, Y, &[ADMIN, REASON]).status, 201, "the override");
        run_for(&world, &[&a, &b], 500);
        world.body(&mut p, &X[X.len() - 1..], true);
        world.pump(&mut p, false);
        assert_eq!(reply(&p).status, 409, "same replica: {same_replica}");
        assert_eq!(world.reg.holds(V1), Some(sha(Y)), "same replica: {same_replica}");
    }
}

/// Issue 27, sequence 2: a same-digest push that joins a claim holds it too, and a release by
/// one holder never removes the record another stored write depends on.
#[test]
fn a_new_tag_never_has_two_winners_when_one_holder_fails() {
    let world = World::new(ETCD_BG);
    let (a, b) = (world.replica(), world.replica());
    let mut p2 = world.open_put(&a, V1, Y, &[BOB]);
    world.pump(&mut p2, false);
    world.body(&mut p2, &Y[..Y.len() - 1], false);
    let mut p1 = world.open(&b, "PUT", "/v2/app/manifests/v1", &[("content-type", "text/plain"), BOB]);
    world.pump(&mut p1, false);
    world.body(&mut p1, X, true);
    world.pump(&mut p1, true);
    assert_eq!(p1.held_puts.len(), 1, "P1 holds the claim, its PUT is in flight");
    let mut p1b = world.open_put(&a, V1, X, &[BOB]);
    world.pump(&mut p1b, false);
    world.body(&mut p1b, X, true);
    world.pump(&mut p1b, true);
    assert_eq!(p1b.held_puts.len(), 1, "P1' joins the claim");
    world.answer_put(&mut p1);
    assert_eq!(reply(&p1).status, 400);
    run_for(&world, &[&a, &b], 500);
    world.answer_put(&mut p1b);
    assert_eq!(reply(&p1b).status, 201);
    run_for(&world, &[&a, &b], 500);
    world.body(&mut p2, &Y[Y.len() - 1..], true);
    world.pump(&mut p2, false);
    assert_eq!(reply(&p2).status, 409);
    assert_eq!(world.reg.holds(V1), Some(sha(X)));
    assert_eq!(world.reg.history.borrow().len(), 1, "one stored write");
}

/// Issue 27, sequence 3: the override's record outlives the overriding replica, so the other
/// replica's map entry (the old digest) cannot put the old digest back.
#[test]
fn an_override_outlives_the_replica_that_made_it() {
    let world = World::new(ETCD_BG);
    let (mut a, b) = (world.replica(), world.replica());
    assert_eq!(world.push(&a, V1, X, &[BOB]).status, 201);
    run_for(&world, &[&a, &b], 15_000);
    // B learns X (its map) from an identical re-push.
    assert_eq!(world.push(&b, V1, X, &[BOB]).status, 201);
    run_for(&world, &[&a, &b], 1_000);
    assert_eq!(world.push(&a, V1, Y, &[ADMIN, REASON]).status, 201, "the override");
    run_for(&world, &[&a, &b], 500);
    a.dead = true; // SIGKILL: its lease is no longer kept alive
    run_for(&world, &[&a, &b], 50_000);
    let r = world.push(&b, V1, X, &[BOB]);
    assert_eq!((r.status, world.reg.holds(V1)), (409, Some(sha(Y))), "{:?}", String::from_utf8_lossy(&r.body));
}

/// Issue 27, sequence 4: a claim answer that arrives after the TTL is not trusted.
#[test]
fn a_claim_answer_older_than_the_ttl_is_discarded() {
    let world = World::new(ETCD_BG);
    let a = world.replica();
    let mut p = world.open_put(&a, V1, X, &[BOB]);
    world.pump(&mut p, false);
    world.body(&mut p, X, true);
    // The claim's txn is in flight; the replica pauses for longer than the TTL.
    let token = p.h.pending.borrow_mut().pop_front().unwrap();
    let call = p.h.call_of(token);
    assert_eq!(call.cluster, "etcd");
    world.advance(61_000);
    let r = world.etcd.answer(&call);
    deliver(&mut p, token, r);
    world.pump(&mut p, false);
    assert_eq!(reply(&p).status, 503);
    assert!(p.h.calls_with("PUT").is_empty(), "nothing written");
}

#[test]
fn an_etcd_timeout_not_well_below_the_ttl_is_refused_naming_both_fields() {
    let c = r#"{"claims": {"ttl_seconds": 60, "etcd": {"cluster": "etcd", "timeout_ms": 60000}}}"#;
    let err = Config::from_json(c.as_bytes()).map(|_| ()).expect_err("refused").to_string();
    assert!(err.contains("claims.etcd.timeout_ms") && err.contains("claims.ttl_seconds"), "{err}");
    // A write must land while its claim lives (found by the simulation, seed 5619 before).
    let c = r#"{"upstream": {"write_timeout_ms": 40000}, "claims": {"ttl_seconds": 60}}"#;
    let err = Config::from_json(c.as_bytes()).map(|_| ()).expect_err("refused").to_string();
    assert!(err.contains("upstream.write_timeout_ms") && err.contains("claims.ttl_seconds"), "{err}");
    let ok = r#"{"claims": {"ttl_seconds": 60, "etcd": {"cluster": "etcd", "timeout_ms": 1000}}}"#;
    assert!(Config::from_json(ok.as_bytes()).is_ok());
}

/// Issue 27, sequence 5: the claim key of a push whose client left (and whose answer never
/// came) is gone within two TTLs while its replica lives on.
#[test]
fn a_claim_whose_push_ended_without_an_answer_does_not_linger() {
    let world = World::new(ETCD_BG);
    let a = world.replica();
    let mut p = world.open_put(&a, V1, X, &[BOB]);
    world.pump(&mut p, false);
    world.body(&mut p, X, true);
    world.pump(&mut p, true);
    p.f.on_done(&p.h);
    assert!(world.etcd.value("/immutable-tags/app:v1").is_some());
    run_for(&world, &[&a], 130_000);
    world.etcd.answer(&answer_probe());
    assert_eq!(world.etcd.value("/immutable-tags/app:v1"), None);
}

/// A call that only makes the fake etcd look at its clock.
fn answer_probe() -> Call {
    Call { cluster: "etcd".into(), headers: vec![(":path".into(), "/v3/none".into())], body: None, timeout_ms: 0, at_ms: 0 }
}

/// Issue 27, sequence 6 and issue 21, item 3: the filter's own write survives its client. An
/// override's decision is logged when it is made; its outcome when the registry answers.
#[test]
fn an_override_whose_client_leaves_is_logged_and_settled() {
    let world = World::new(ETCD_BG);
    let a = world.replica();
    assert_eq!(world.push(&a, V1, X, &[BOB]).status, 201);
    run_for(&world, &[&a], 1_000);
    let mut p = world.open_put(&a, V1, Y, &[ADMIN, REASON]);
    world.pump(&mut p, false);
    world.body(&mut p, Y, true);
    world.pump(&mut p, true);
    let decided = |h: &FakeHost| h.logs.borrow().iter().filter(|(_, l)| l.contains("break_glass_decision")).count();
    assert_eq!(decided(&p.h), 1, "logged when made");
    let line = p.h.logs.borrow().iter().find(|(_, l)| l.contains("break_glass_decision")).unwrap().1.clone();
    assert!(line.contains("\"principal\":\"admin\"") && line.contains(&sha(X)) && line.contains(&sha(Y)), "{line}");
    p.f.on_done(&p.h); // the client left
    answer_orphan(&world, &a, &mut p);
    assert_eq!(world.reg.holds(V1), Some(sha(Y)));
    let outcome = a.root.logs.borrow().iter().any(|(_, l)| l.contains("\"event\":\"immutable_tags.break_glass\""));
    assert!(outcome, "the outcome is logged though the client left");
    run_for(&world, &[&a], 500);
    let v = world.etcd.value("/immutable-tags/app:v1").unwrap();
    assert!(v.contains(&sha(Y)) && !v.contains(" c "), "committed: {v}");
}

/// Issue 21, item 3: an unauthorised push that resets right after its body does not block the
/// tag: its write's answer (401) releases the claim at once.
#[test]
fn an_unauthorised_push_that_vanishes_does_not_block_the_tag() {
    let world = World::new(ETCD_BG);
    let a = world.replica();
    let mut p = world.open_put(&a, V1, Y, &[("authorization", "Bearer bob-readonly")]);
    world.pump(&mut p, false);
    world.body(&mut p, Y, true);
    world.pump(&mut p, true);
    p.f.on_done(&p.h);
    assert_eq!((a.root.counter("claims_taken"), a.root.counter("claims_settled")), (1, 0), "one claim in flight");
    answer_orphan(&world, &a, &mut p);
    assert_eq!(a.root.counter("claims_settled"), 1, "settled by the orphaned write's answer");
    run_for(&world, &[&a], 1_000);
    assert_eq!(world.push(&a, V1, X, &[BOB]).status, 201, "the pipeline's push a second later");
}

/// Issue 21, item 1: every tag a stored write named is committed, `?tag=` ones included.
#[test]
fn query_tags_of_a_stored_write_are_committed_not_released() {
    for policy in [SHARED, ETCD_BG] {
        let world = World::new(policy);
        let a = world.replica();
        let mut old = world.open_put(&a, "v2", Y, &[BOB]);
        world.pump(&mut old, false);
        world.body(&mut old, &Y[..Y.len() - 1], false);
        let r = {
            let len = X.len().to_string();
            let mut s = world.open(&a, "PUT", "/v2/app/manifests/v1?tag=v2", &[("content-type", OCI), ("content-length", &len), BOB]);
            world.pump(&mut s, false);
            world.body(&mut s, X, true);
            world.pump(&mut s, false);
            reply(&s)
        };
        assert_eq!(r.status, 201);
        run_for(&world, &[&a], 500);
        world.body(&mut old, &Y[Y.len() - 1..], true);
        world.pump(&mut old, false);
        assert_eq!(reply(&old).status, 409, "{policy}");
        assert_eq!(world.reg.holds("v2"), Some(sha(X)), "{policy}");
    }
}

/// Issue 21, item 2: a tag that vanished after a committed record (a delete race, or behind
/// the filter's back) is not "new" while the record lives.
#[test]
fn absent_after_a_commit_is_not_a_first_push() {
    for policy in [SHARED, ETCD_BG] {
        let world = World::new(policy);
        let a = world.replica();
        assert_eq!(world.push(&a, V1, X, &[BOB]).status, 201);
        run_for(&world, &[&a], 1_000);
        world.reg.tags.borrow_mut().remove(V1);
        let r = world.push(&a, V1, Y, &[BOB]);
        assert_eq!(r.status, 409, "{policy}");
        assert_eq!(world.reg.holds(V1), None, "{policy}");
    }
}

/// Issue 21, item 3: one client cannot fill the claim slots: past its bound of claims in
/// flight its pushes are refused (429), other clients' are not, and its own go again once its
/// writes are answered.
#[test]
fn claims_in_flight_are_bounded_per_client() {
    let world = World::new(SHARED);
    let a = world.replica();
    let max = crate::filter::worker::MAX_CLAIMS_PER_CLIENT;
    let mut held = Vec::new();
    for i in 0..max {
        let mut s = world.open_put(&a, &format!("t{i}"), X, &[BOB]);
        world.pump(&mut s, false);
        world.body(&mut s, X, true);
        world.pump(&mut s, true);
        assert_eq!(s.held_puts.len(), 1, "push {i} is written");
        held.push(s);
    }
    assert_eq!(world.push(&a, "one-more", X, &[BOB]).status, 429);
    let mut s = {
        let h = a.root.share_with();
        *h.source.borrow_mut() = Some("10.0.0.2:1234".into());
        let len = X.len().to_string();
        h.request("PUT", "/v2/app/manifests/other", &[("content-type", OCI), ("content-length", &len), BOB]);
        let mut f = Filter::new(Some(a.w.clone()));
        let p = Filter::first_look(&h).unwrap();
        f.on_request_headers(&h, p, false);
        Stream { h, f, held_puts: Vec::new() }
    };
    world.pump(&mut s, false);
    world.body(&mut s, X, true);
    world.pump(&mut s, false);
    assert_eq!(reply(&s).status, 201, "another client");
    for s in &mut held {
        world.answer_put(s);
    }
    assert_eq!(world.push(&a, "one-more", X, &[BOB]).status, 201, "answered: free again");
}

/// The one way a protected tag becomes new again: a delete the filter itself granted
/// (break-glass). After it, a first push of other content is no longer refused by the record.
#[test]
fn a_granted_delete_makes_the_tag_new_again() {
    for policy in [ETCD_BG, ETCD_BG.replace(r#""claims": {"etcd": {"cluster": "etcd", "authority": "etcd.test", "timeout_ms": 500}}"#, r#""claims": {}"#).as_str()] {
        let world = World::new(policy);
        let a = world.replica();
        assert_eq!(world.push(&a, V1, X, &[BOB]).status, 201);
        run_for(&world, &[&a], 500);
        let mut d = world.open(&a, "DELETE", "/v2/app/manifests/v1", &[ADMIN, REASON]);
        assert!(d.h.reply().is_none(), "granted: {:?}", d.h.reply());
        world.reg.tags.borrow_mut().remove(V1);
        *d.h.response_headers.borrow_mut() = vec![(":status".into(), "202".into())];
        d.f.on_response_headers(&d.h);
        run_for(&world, &[&a], 500);
        assert_eq!(world.push(&a, V1, Y, &[BOB]).status, 201, "{policy}");
        assert_eq!(world.reg.holds(V1), Some(sha(Y)));
    }
}

/// Found by the simulation (seed 111888): a replica claims, sends its write and dies before
/// committing; another push's "absent" view taken between that claim and the write's landing
/// must not outlive the dead claim's record (views are trusted for half a TTL).
#[test]
fn a_view_taken_while_a_dead_replicas_write_was_in_flight_is_not_trusted_past_its_claim() {
    let world = World::new(ETCD_BG);
    let (mut a, b) = (world.replica(), world.replica());
    let mut pa = world.open_put(&a, V1, X, &[BOB]);
    world.pump(&mut pa, false);
    world.body(&mut pa, X, true);
    world.pump(&mut pa, true);
    assert_eq!(pa.held_puts.len(), 1, "A claimed and sent its write");
    a.dead = true;
    world.advance(5_000);
    let mut pb = world.open_put(&b, V1, Y, &[BOB]);
    world.pump(&mut pb, false); // HEAD: absent
    let token = pa.held_puts.remove(0);
    world.reg.answer(&pa.h.call_of(token)); // A's write lands; nobody hears of it
    world.advance(56_000);
    world.body(&mut pb, Y, true);
    world.pump(&mut pb, false);
    assert_ne!(reply(&pb).status, 201);
    assert_eq!(world.reg.holds(V1), Some(sha(X)));
}

/// Hole A (attack 3): a full shared-data slot must never evict a live committed record, or
/// "absent" passes again and an override can be undone (colliding tags are easy to find).
mod slot_full {
    use super::*;
    use crate::claims::slot_index;

    const V1: &str = "v1";
    const SHARED_BG: &str = r#"{"upstream": {"cluster": "registry"}, "global": {"immutable_tags": true},
  "break_glass": {"principals": ["admin"], "repositories": ["app"], "actions": ["overwrite", "delete"]}}"#;

    /// Tags of `app` whose records land in the same shared-data slot as `app:v1` (default 1024
    /// slots), under the world's slot key (an attacker who knew it; see `tests_bounds`).
    fn colliding(world: &World, n: usize) -> Vec<String> {
        let key = super::super::claims::slot_key_of(world);
        let target = slot_index(&key, "app", V1, 1024);
        (0..).map(|i| format!("c{i}")).filter(|t| slot_index(&key, "app", t, 1024) == target).take(n).collect()
    }
/// and committed; the attacker (push rights to any protected tag of the same slot) commits 16
/// colliding tags: the committed record of v1 is evicted, and the held push of Y is stored over X.
#[test]
fn attack_slot_eviction_lets_absent_overwrite_a_new_tag() {
    let world = World::new(SHARED_BG);
    let a = world.replica();
    let mut p2 = world.open_put(&a, V1, Y, &[BOB]);
    world.pump(&mut p2, false); // HEAD: absent
    world.body(&mut p2, &Y[..Y.len() - 1], false);
    assert_eq!(world.push(&a, V1, X, &[BOB]).status, 201, "the legitimate first push");
    // v1's record and 15 others fill the slot; the 16th is refused, nothing is evicted.
    let ts = colliding(&world, 16);
    for t in &ts[..15] {
        assert_eq!(world.push(&a, t, X, &[BOB]).status, 201);
    }
    assert_eq!(world.push(&a, &ts[15], X, &[BOB]).status, 503, "slot full: refused, not evicted");
    world.advance(1_000);
    world.body(&mut p2, &Y[Y.len() - 1..], true);
    world.pump(&mut p2, false);
    let hist: Vec<_> = world.reg.history.borrow().iter().filter(|(t, _)| t == V1).cloned().collect();
    assert_eq!(world.reg.holds(V1), Some(sha(X)), "the tag was overwritten: {hist:?}");
}

/// B: an override is undone: worker B's map says X (learned before the override through A);
/// the override's record is evicted; B's same-digest push of X is let through on the map's word.
#[test]
fn attack_slot_eviction_undoes_an_override() {
    let world = World::new(SHARED_BG);
    let a = world.replica();
    // A second worker of the same Envoy: its own map, the same shared data.
    let b = Replica { root: a.root.share_with(), w: Rc::new(Worker::new(&a.root, Config::from_json(SHARED_BG.as_bytes()).unwrap())), dead: false };
    b.w.registry_auth.set(Some((true, b.root.now_ms())));
    assert_eq!(world.push(&a, V1, X, &[BOB]).status, 201);
    assert_eq!(world.push(&b, V1, X, &[BOB]).status, 201, "B learns X (identical re-push)");
    world.advance(1_000);
    assert_eq!(world.push(&a, V1, Y, &[ADMIN, REASON]).status, 201, "the override");
    world.advance(1_000);
    // v1's record and 15 others fill the slot; the 16th is refused, nothing is evicted.
    let ts = colliding(&world, 16);
    for t in &ts[..15] {
        assert_eq!(world.push(&a, t, X, &[BOB]).status, 201);
    }
    assert_eq!(world.push(&a, &ts[15], X, &[BOB]).status, 503, "slot full: refused, not evicted");
    let r = world.push(&b, V1, X, &[BOB]);
    let hist: Vec<_> = world.reg.history.borrow().iter().filter(|(t, _)| t == V1).cloned().collect();
    assert_eq!(r.status, 409, "the override's committed record still fences the map's stale X");
    assert_eq!(world.reg.holds(V1), Some(sha(Y)), "override undone: {hist:?}");
}

/// A': the eviction needs no stored write: 16 read-only pushes to colliding tags, in flight
/// at once (one HTTP/2 connection: one worker), evict the committed record; all get 401.
#[test]
fn attack_read_only_claims_in_flight_evict_a_committed_record() {
    const RO: (&str, &str) = ("authorization", "Bearer bob-readonly");
    let world = World::new(SHARED_BG);
    let a = world.replica();
    let mut p2 = world.open_put(&a, V1, Y, &[BOB]);
    world.pump(&mut p2, false); // HEAD: absent
    world.body(&mut p2, &Y[..Y.len() - 1], false);
    assert_eq!(world.push(&a, V1, X, &[BOB]).status, 201, "the legitimate first push");
    let mut held = Vec::new();
    let ts = colliding(&world, 16);
    for t in &ts[..15] {
        let mut s = world.open_put(&a, t, X, &[RO]);
        world.pump(&mut s, false);
        world.body(&mut s, X, true);
        world.pump(&mut s, true);
        held.push(s);
    }
    assert_eq!(world.push(&a, &ts[15], X, &[RO]).status, 503, "slot full: refused, not evicted");
    for s in &mut held {
        world.answer_put(s);
        assert_eq!(reply(s).status, 401);
    }
    world.body(&mut p2, &Y[Y.len() - 1..], true);
    world.pump(&mut p2, false);
    let hist: Vec<_> = world.reg.history.borrow().iter().filter(|(t, _)| t == V1).map(|(_, d)| d[7..15].to_string()).collect();
    assert_eq!(world.reg.holds(V1), Some(sha(X)), "overwritten: {hist:?}");
}
}

/// Hole D (attack 3): a release whose etcd delete loses its compare must be re-applied on the
/// record it lost to, never read as "the key is gone".
mod lost_release {
    use super::*;
    const V1: &str = "v1";

#[test]
fn attack_lost_release_lets_a_read_only_client_block_a_new_tag() {
    const RO: (&str, &str) = ("authorization", "Bearer bob-readonly");
    let world = World::new(ETCD_BG);
    let a = world.replica();
    run_for(&world, &[&a], 500);
    let mut p1 = world.open_put(&a, V1, X, &[RO]);
    world.pump(&mut p1, false);
    world.body(&mut p1, X, true);
    world.pump(&mut p1, false);
    assert_eq!(reply(&p1).status, 401);
    // The root's tick: the release reads the record; its answer sends the delete.
    world.advance(250);
    crate::filter::claims::etcd::tick(&a.root, &a.w);
    let read = a.root.pending.borrow_mut().pop_front().unwrap();
    let r = world.etcd.answer(&a.root.call_of(read));
    let size = r.body.len();
    a.root.set_answer(Some(r));
    root_response(&a.root, &a.w, read, size);
    a.root.set_answer(None);
    // Meanwhile a second read-only push of X joins the claim (holders 1 -> 2).
    let mut p2 = world.open_put(&a, V1, X, &[RO]);
    world.pump(&mut p2, false);
    world.body(&mut p2, X, true);
    world.pump(&mut p2, true);
    assert_eq!(p2.held_puts.len(), 1, "P2 joined the claim");
    world.answer_root(&a); // the delete loses its compare: read as "gone"
    world.answer_put(&mut p2);
    assert_eq!(reply(&p2).status, 401);
    run_for(&world, &[&a], 1_000);
    println!("record: {:?}", world.etcd.value("/immutable-tags/app:v1"));
    run_for(&world, &[&a], 1_000);
    let r = world.push(&a, V1, Y, &[BOB]);
    assert_eq!(r.status, 201, "blocked by a hold nobody owns: {}", String::from_utf8_lossy(&r.body));
}
}

/// Hole C (attack 3): a write the registry stored but answered 5xx (a proxy's 502, Envoy's 503
/// for a reset after sending, a 500 after the tag link) is an unknown outcome: its claim stays.
mod stored_5xx {
    use super::*;
    const V1: &str = "v1";
    const SHARED_BG: &str = r#"{"upstream": {"cluster": "registry"}, "global": {"immutable_tags": true},
  "break_glass": {"principals": ["admin"], "repositories": ["app"], "actions": ["overwrite", "delete"]}}"#;

#[test]
fn attack_stored_write_answered_5xx_releases_the_claim() {
    for status in [500u16, 502, 503] {
        for policy in [SHARED_BG, ETCD_BG] {
            let world = World::new(policy);
            let a = world.replica();
            let mut p2 = world.open_put(&a, V1, Y, &[BOB]);
            world.pump(&mut p2, false); // HEAD: absent
            world.body(&mut p2, &Y[..Y.len() - 1], false);
            let mut p1 = world.open_put(&a, V1, X, &[BOB]);
            world.pump(&mut p1, false);
            world.body(&mut p1, X, true);
            world.pump(&mut p1, true);
            let token = p1.held_puts.remove(0);
            world.reg.answer(&p1.h.call_of(token)); // stored...
            deliver(&mut p1, token, answer(status, &[], b"upstream connect error or disconnect/reset before headers"));
            run_for(&world, &[&a], 500);
            world.body(&mut p2, &Y[Y.len() - 1..], true);
            world.pump(&mut p2, false);
            let hist: Vec<_> = world.reg.history.borrow().iter().filter(|(t, _)| t == V1).map(|(_, d)| d[7..15].to_string()).collect();
            assert_eq!(world.reg.holds(V1), Some(sha(X)), "{status}: the stored X was overwritten: {hist:?}");
        }
    }
}
}

/// Hole E (attack 3): orphans (writes whose client left) are never dropped unsettled, so a
/// read-only client's claim is released when the registry's 401 arrives, however many vanish.
mod orphan_overflow {
    use super::*;
    const V1: &str = "v1";
    const SHARED_BG: &str = r#"{"upstream": {"cluster": "registry"}, "global": {"immutable_tags": true},
  "break_glass": {"principals": ["admin"], "repositories": ["app"], "actions": ["overwrite", "delete"]}}"#;

#[test]
fn attack_orphan_overflow_keeps_a_read_only_claim() {
    const RO: (&str, &str) = ("authorization", "Bearer bob-readonly");
    let world = World::new(SHARED_BG);
    let a = world.replica();
    let open_from = |tag: &str, src: String| {
        let h = a.root.share_with();
        *h.source.borrow_mut() = Some(src);
        let len = X.len().to_string();
        h.request("PUT", &format!("/v2/app/manifests/{tag}"), &[("content-type", OCI), ("content-length", &len), RO]);
        let mut f = Filter::new(Some(a.w.clone()));
        let p = Filter::first_look(&h).unwrap();
        f.on_request_headers(&h, p, false);
        Stream { h, f, held_puts: Vec::new() }
    };
    let mut all = Vec::new();
    // As many as a worker keeps (`tests_bounds`: one more is refused).
    for i in 0..crate::filter::worker::MAX_ORPHANS {
        let tag = if i == 0 { V1.to_string() } else { format!("junk{i}") };
        let mut s = open_from(&tag, format!("10.9.{}.{}:1", i / 16, i % 16));
        world.pump(&mut s, false);
        world.body(&mut s, X, true);
        world.pump(&mut s, true);
        assert_eq!(s.held_puts.len(), 1, "push {i} written");
        s.f.on_done(&s.h); // the client vanishes
        all.push(s);
    }
    for s in &mut all {
        answer_orphan(&world, &a, s); // 401s, settled from the root (the first is no orphan any more)
    }
    world.advance(5_000);
    let r = world.push(&a, V1, Y, &[BOB]);
    assert_eq!(r.status, 201);
}
}
