//! The multi-replica world the claims tests and the simulator run on: replicas (each its own
//! worker, lease and map) that share one clock (`Process`), one fake etcd whose leases end on
//! that clock, and a registry that stores whatever it is sent and records every stored write and
//! deleted tag. Every stream is its own `FakeHost` sharing its replica's worker.
use super::fake::{answer, Call, FakeEtcd, FakeHost, Reply};
use crate::config::Config;
use crate::filter::host::Host;
use crate::filter::worker::Worker;
use crate::filter::Filter;
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

pub const X: &[u8] =
    br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","n":"x"}"#;
pub const Y: &[u8] =
    br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","n":"y"}"#;
pub const OCI: &str = "application/vnd.oci.image.manifest.v1+json";
/// `Basic admin:pw` (listed for break-glass) and `Basic bob:pw` (a plain pusher).
pub const ADMIN: (&str, &str) = ("authorization", "Basic YWRtaW46cHc=");
pub const BOB: (&str, &str) = ("authorization", "Basic Ym9iOnB3");
pub const REASON: (&str, &str) = ("x-break-glass-reason", "CVE-2026-1 in v1");

pub const ETCD_BG: &str = r#"{"upstream": {"cluster": "registry"}, "global": {"immutable_tags": true},
  "break_glass": {"principals": ["admin"], "repositories": ["app"], "actions": ["overwrite", "delete"]},
  "claims": {"etcd": {"cluster": "etcd", "authority": "etcd.test", "timeout_ms": 500}}}"#;
pub const SHARED: &str = r#"{"upstream": {"cluster": "registry"}, "global": {"immutable_tags": true}}"#;

/// The sha256 digest of `b`, as the registry names it.
pub use super::fake::sha;

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
            let mut list: Vec<String> =
                self.tags.borrow().keys().filter(|t| !t.starts_with("sha256:")).cloned().collect();
            list.sort();
            return answer(
                200,
                &[("content-type", "application/json")],
                serde_json::json!({"name": "app", "tags": list}).to_string().as_bytes(),
            );
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
                    true => self
                        .tags
                        .borrow()
                        .iter()
                        .filter(|(_, d)| **d == tag)
                        .map(|(t, _)| t.clone())
                        .collect(),
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
