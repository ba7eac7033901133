//! A fake host for native tests of the state machine: headers, body, dispatched calls, shared
//! data with CAS, a clock and local replies, all in memory and inspectable. Shared data and the
//! clock can be shared between several fakes (`share_with`), so tests run "workers" that race.
use crate::filter::host::{Host, Level, SharedError};
use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;

/// More calls than any test sends (see `dispatch`).
const MAX_CALLS: u32 = 1_000;

#[derive(Debug, Clone)]
pub struct Call {
    pub cluster: String,
    pub headers: Vec<(String, String)>,
    pub body: Option<Vec<u8>>,
    pub timeout_ms: u64,
    /// When it was dispatched (the process clock).
    pub at_ms: u64,
}

impl Call {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

pub type Intruder = Box<dyn FnOnce(&Process)>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// Process-wide things: shared data and the clock.
#[derive(Default)]
pub struct Process {
    pub shared: RefCell<HashMap<String, (Vec<u8>, u32)>>,
    pub next_cas: Cell<u32>,
    /// Hosts made by `share_with` so far (each gets its own token range).
    pub hosts: Cell<u32>,
    pub now_ms: Cell<u64>,
    /// CAS mismatches to force on the next shared-data writes (another worker "wrote first").
    pub forced_cas_mismatches: Cell<u32>,
    pub cas_writes: Cell<u32>,
    pub counters: RefCell<Vec<(String, u64)>>,
    /// Draws of `random` so far (each draw differs, as two workers' would).
    pub random_draws: Cell<u64>,
    /// `random` fails.
    pub random_fails: Cell<bool>,
    /// Reads of these shared-data keys fail.
    pub unreadable_shared: RefCell<Vec<String>>,
}

#[derive(Default)]
pub struct FakeHost {
    pub process: Rc<Process>,
    pub request_headers: RefCell<Vec<(String, String)>>,
    /// The body Envoy has buffered so far.
    pub body: RefCell<Vec<u8>>,
    pub response_headers: RefCell<Vec<(String, String)>>,
    /// Envoy's `response.code_details`: `via_upstream` for the registry's own answer.
    pub code_details: RefCell<Option<String>>,
    /// Envoy's `source.address` (default `127.0.0.1:40000`).
    pub source: RefCell<Option<String>>,
    pub calls: RefCell<Vec<Call>>,
    next_token: Cell<u32>,
    /// Set while `answer` runs: the dispatched call's answer.
    call_answer: RefCell<Option<Reply>>,
    pub replies: RefCell<Vec<Reply>>,
    /// The response code details of each local reply, in order.
    pub details: RefCell<Vec<String>>,
    pub resumes: Cell<u32>,
    pub response_resumes: Cell<u32>,
    pub logs: RefCell<Vec<(Level, String)>>,
    /// Runs once inside the next `shared_get`, after the value was read: another worker
    /// writing between this one's read and its compare-and-swap.
    pub intruder: RefCell<Option<Intruder>>,
    /// Dispatches fail with this message (e.g. an unknown cluster).
    pub dispatch_error: RefCell<Option<String>>,
    /// Only dispatches with this `:method` fail (with `dispatch_error`'s message, or a default).
    pub dispatch_error_method: RefCell<Option<String>>,
    /// Header writes fail.
    pub refuse_header_writes: Cell<bool>,
    /// The `sub` of the payload Envoy's jwt_authn verified, under any `payload_in_metadata`.
    pub jwt_authn_sub: RefCell<Option<String>>,
    /// Reads of these request headers fail (a host status error); `*`: the whole map
    /// (`request_headers`) only.
    pub unreadable: RefCell<Vec<String>>,
    pub pending: RefCell<VecDeque<u32>>,
    /// This host's clock minus the true one (`process.now_ms`): a replica's skew, or a step.
    /// Shared by every host made from it with `share_with`, so a replica's streams read its
    /// clock; `World::replica` gives each replica its own.
    pub clock_offset: Rc<Cell<i64>>,
    /// Tokens of this host start above this (hosts sharing a process never share a token, as
    /// calls of one VM never do).
    token_base: u32,
}

impl FakeHost {
    pub fn new() -> FakeHost {
        let h = FakeHost::default();
        h.process.now_ms.set(1_000_000);
        h
    }

    /// Another "worker" of the same Envoy: same shared data and clock, its own streams.
    pub fn share_with(&self) -> FakeHost {
        let n = self.process.hosts.get() + 1;
        self.process.hosts.set(n);
        FakeHost {
            process: self.process.clone(),
            token_base: n * 100_000,
            clock_offset: self.clock_offset.clone(),
            ..FakeHost::default()
        }
    }

    pub fn request(&self, method: &str, path: &str, extra: &[(&str, &str)]) {
        let mut h = vec![
            (":method".to_string(), method.to_string()),
            (":path".to_string(), path.to_string()),
            (":authority".to_string(), "registry.test".to_string()),
            (":scheme".to_string(), "http".to_string()),
        ];
        h.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        *self.request_headers.borrow_mut() = h;
        self.body.borrow_mut().clear();
        *self.response_headers.borrow_mut() = Vec::new();
    }

    pub fn request_header_value(&self, name: &str) -> Option<String> {
        self.request_headers.borrow().iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
    }

    pub fn advance(&self, ms: u64) {
        self.process.now_ms.set(self.process.now_ms.get() + ms);
    }

    /// The calls dispatched so far with this method.
    pub fn calls_with(&self, method: &str) -> Vec<Call> {
        self.calls.borrow().iter().filter(|c| c.header(":method") == Some(method)).cloned().collect()
    }

    /// The call dispatched as `token`.
    pub fn call_of(&self, token: u32) -> Call {
        self.calls.borrow()[(token - self.token_base) as usize - 1].clone()
    }

    pub fn last_call(&self) -> Option<Call> {
        self.calls.borrow().last().cloned()
    }

    /// Makes `reply` the answer visible while the filter handles the call's response.
    pub fn set_answer(&self, reply: Option<Reply>) {
        *self.call_answer.borrow_mut() = reply;
    }

    pub fn reply(&self) -> Option<Reply> {
        self.replies.borrow().last().cloned()
    }

    pub fn counter(&self, short: &str) -> u64 {
        self.process.counters.borrow().iter().filter(|(n, _)| n.ends_with(short)).map(|(_, v)| *v).sum()
    }
}

pub fn answer(status: u16, headers: &[(&str, &str)], body: &[u8]) -> Reply {
    let mut h = vec![(":status".to_string(), status.to_string())];
    h.extend(headers.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    Reply { status, headers: h, body: body.to_vec() }
}

impl Host for FakeHost {
    fn read_request_header(&self, name: &str) -> Result<Option<String>, String> {
        if self.unreadable.borrow().iter().any(|n| n == name) {
            return Err("BadArgument".into());
        }
        Ok(self.request_header_value(name))
    }

    fn request_headers(&self) -> Vec<(String, String)> {
        if self.unreadable.borrow().iter().any(|n| n == "*") {
            return Vec::new();
        }
        self.request_headers.borrow().clone()
    }

    fn set_request_header(&self, name: &str, value: &str) -> Result<(), String> {
        if self.refuse_header_writes.get() {
            return Err("BadArgument".into());
        }
        let mut h = self.request_headers.borrow_mut();
        match h.iter_mut().find(|(k, _)| k == name) {
            Some(e) => e.1 = value.to_string(),
            None => h.push((name.to_string(), value.to_string())),
        }
        Ok(())
    }

    fn remove_request_header(&self, name: &str) -> Result<(), String> {
        if self.refuse_header_writes.get() {
            return Err("BadArgument".into());
        }
        self.request_headers.borrow_mut().retain(|(k, _)| k != name);
        Ok(())
    }

    fn request_body(&self, size: usize) -> Option<Vec<u8>> {
        let b = self.body.borrow();
        Some(b.get(..size.min(b.len())).unwrap_or_default().to_vec())
    }

    fn response_header(&self, name: &str) -> Option<String> {
        self.response_headers.borrow().iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
    }

    fn property(&self, path: &[&str]) -> Option<String> {
        match path {
            ["source", "address"] => {
                Some(self.source.borrow().clone().unwrap_or_else(|| "127.0.0.1:40000".to_string()))
            }
            ["response", "code_details"] => self.code_details.borrow().clone(),
            ["metadata", "filter_metadata", "envoy.filters.http.jwt_authn", _, "sub"] => {
                self.jwt_authn_sub.borrow().clone()
            }
            _ => None,
        }
    }

    fn dispatch(
        &self,
        cluster: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
        timeout_ms: u64,
    ) -> Result<u32, String> {
        let method = headers.iter().find(|(k, _)| *k == ":method").map(|(_, v)| *v);
        match (self.dispatch_error.borrow().clone(), self.dispatch_error_method.borrow().as_deref()) {
            (Some(e), None) => return Err(e),
            (e, Some(m)) if Some(m) == method => return Err(e.unwrap_or_else(|| "BadArgument".into())),
            _ => {}
        }
        let n = self.next_token.get() + 1;
        // A filter that calls without end would hang its test (`while respond_with(..) {}`):
        // fail it instead. No test sends more than 40.
        assert!(n <= MAX_CALLS, "more than {MAX_CALLS} calls on one host: the filter is looping");
        self.next_token.set(n);
        let token = self.token_base + n;
        self.calls.borrow_mut().push(Call {
            cluster: cluster.to_string(),
            headers: headers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            body: body.map(<[u8]>::to_vec),
            timeout_ms,
            at_ms: self.process.now_ms.get(),
        });
        self.pending.borrow_mut().push_back(token);
        Ok(token)
    }

    fn call_response_header(&self, name: &str) -> Option<String> {
        let a = self.call_answer.borrow();
        a.as_ref()?.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
    }

    fn call_response_headers(&self) -> Vec<(String, String)> {
        self.call_answer.borrow().as_ref().map(|a| a.headers.clone()).unwrap_or_default()
    }

    fn call_response_body(&self, size: usize) -> Option<Vec<u8>> {
        let a = self.call_answer.borrow();
        let b = &a.as_ref()?.body;
        Some(b.get(..size.min(b.len())).unwrap_or_default().to_vec())
    }

    fn shared_get(&self, key: &str) -> Result<(Option<Vec<u8>>, u32), String> {
        if self.process.unreadable_shared.borrow().iter().any(|k| k == key) {
            return Err("InternalFailure".into());
        }
        let read = match self.process.shared.borrow().get(key) {
            Some((v, cas)) => (Some(v.clone()), *cas),
            None => (None, 0),
        };
        if let Some(intrude) = self.intruder.borrow_mut().take() {
            intrude(&self.process);
        }
        Ok(read)
    }

    fn shared_set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), SharedError> {
        let p = &self.process;
        if cas != 0 {
            p.cas_writes.set(p.cas_writes.get() + 1);
            if p.forced_cas_mismatches.get() > 0 {
                p.forced_cas_mismatches.set(p.forced_cas_mismatches.get() - 1);
                return Err(SharedError::CasMismatch);
            }
        }
        let mut shared = p.shared.borrow_mut();
        // As Envoy: a write to a missing key succeeds whatever its token.
        if cas != 0 && shared.get(key).is_some_and(|(_, c)| *c != cas) {
            return Err(SharedError::CasMismatch);
        }
        let next = p.next_cas.get() + 1;
        p.next_cas.set(next);
        shared.insert(key.to_string(), (value.to_vec(), next));
        Ok(())
    }

    fn now_ms(&self) -> u64 {
        self.process.now_ms.get().saturating_add_signed(self.clock_offset.get())
    }

    fn random(&self, buf: &mut [u8]) -> Result<(), String> {
        if self.process.random_fails.get() {
            return Err("random_get: WASI errno 52".into());
        }
        let n = self.process.random_draws.get() + 1;
        self.process.random_draws.set(n);
        for (i, b) in buf.iter_mut().enumerate() {
            *b = (n.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> ((i % 8) * 8)) as u8 ^ (i as u8);
        }
        Ok(())
    }

    fn send_response(
        &self,
        status: u16,
        details: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<(), String> {
        assert!(!details.is_empty() && !details.contains(char::is_whitespace), "details {details:?}");
        self.details.borrow_mut().push(details.to_string());
        let headers = headers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        self.replies.borrow_mut().push(Reply { status, headers, body: body.to_vec() });
        Ok(())
    }

    fn resume_request(&self) -> Result<(), String> {
        self.resumes.set(self.resumes.get() + 1);
        Ok(())
    }

    fn resume_response(&self) -> Result<(), String> {
        self.response_resumes.set(self.response_resumes.get() + 1);
        Ok(())
    }

    fn log(&self, level: Level, message: &str) {
        self.logs.borrow_mut().push((level, message.to_string()));
    }

    fn define_counter(&self, name: &str) -> Option<u32> {
        let mut c = self.process.counters.borrow_mut();
        if let Some(i) = c.iter().position(|(n, _)| n == name) {
            return u32::try_from(i).ok();
        }
        c.push((name.to_string(), 0));
        u32::try_from(c.len() - 1).ok()
    }

    fn increment(&self, id: u32, by: u64) {
        if let Some(e) = self.process.counters.borrow_mut().get_mut(id as usize) {
            e.1 += by;
        }
    }
}

/// A tiny etcd for the claims in etcd: answers the gateway calls the filter sends (txn with
/// one compare, lease grant and keepalive) as etcd 3.4 does, over one key space shared by
/// every "replica" (each its own `FakeHost`).
#[derive(Default)]
pub struct FakeEtcd {
    /// key (raw) -> (value (raw), mod_revision, lease)
    pub kv: RefCell<HashMap<String, (String, u64, u64)>>,
    pub revision: Cell<u64>,
    pub leases: RefCell<Vec<u64>>,
    /// The TTL each lease was granted with, as asked.
    pub ttls: RefCell<HashMap<u64, String>>,
    /// With a clock, leases end on their own: lease -> when it expires (ms on that clock).
    pub clock: RefCell<Option<Rc<Process>>>,
    pub lease_ends: RefCell<HashMap<u64, u64>>,
}

impl FakeEtcd {
    pub fn answer(&self, call: &Call) -> Reply {
        use crate::util::base64::{decode as unb64, encode as b64};
        use serde_json::{json, Value};
        let body: Value =
            serde_json::from_slice(call.body.as_deref().unwrap_or_default()).unwrap_or(Value::Null);
        let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
        let raw = |v: &Value| {
            String::from_utf8(unb64(v.as_str().unwrap_or_default()).unwrap_or_default()).unwrap_or_default()
        };
        let ok = |v: Value| answer(200, &[("content-type", "application/json")], v.to_string().as_bytes());
        let header = |r: u64| json!({"cluster_id": "1", "revision": r.to_string()});
        let now = self.clock.borrow().as_ref().map(|p| p.now_ms.get());
        if let Some(now) = now {
            let due: Vec<u64> =
                self.lease_ends.borrow().iter().filter(|(_, end)| **end <= now).map(|(l, _)| *l).collect();
            for l in due {
                self.expire(l);
                self.lease_ends.borrow_mut().remove(&l);
            }
        }
        let ttl_ms =
            |id: u64| self.ttls.borrow().get(&id).and_then(|t| t.parse::<u64>().ok()).unwrap_or(0) * 1000;
        match call.header(":path") {
            Some("/v3/lease/grant") => {
                let id = 7_000 + self.ttls.borrow().len() as u64 + 1;
                self.leases.borrow_mut().push(id);
                self.ttls.borrow_mut().insert(id, s(&body["TTL"]));
                if let Some(now) = now {
                    self.lease_ends.borrow_mut().insert(id, now + ttl_ms(id));
                }
                ok(
                    json!({"header": header(self.revision.get()), "ID": id.to_string(), "TTL": s(&body["TTL"])}),
                )
            }
            Some("/v3/lease/keepalive") => {
                let id: u64 = s(&body["ID"]).parse().unwrap_or(0);
                let mut result = json!({"header": header(self.revision.get()), "ID": id.to_string()});
                if self.leases.borrow().contains(&id) {
                    result["TTL"] = json!("60");
                    if let Some(now) = now {
                        self.lease_ends.borrow_mut().insert(id, now + ttl_ms(id));
                    }
                }
                ok(json!({"result": result}))
            }
            Some("/v3/kv/put") => {
                let lease: u64 = s(&body["lease"]).parse().unwrap_or(0);
                if lease != 0 && !self.leases.borrow().contains(&lease) {
                    let m = "etcdserver: requested lease not found";
                    return answer(
                        400,
                        &[],
                        json!({"error": m, "message": m, "code": 5}).to_string().as_bytes(),
                    );
                }
                self.revision.set(self.revision.get() + 1);
                self.kv
                    .borrow_mut()
                    .insert(raw(&body["key"]), (raw(&body["value"]), self.revision.get(), lease));
                ok(json!({"header": header(self.revision.get())}))
            }
            Some("/v3/kv/deleterange") => {
                let mut out = json!({"header": header(self.revision.get())});
                if let Some((v, m, l)) = self.kv.borrow_mut().remove(&raw(&body["key"])) {
                    self.revision.set(self.revision.get() + 1);
                    out = json!({"header": header(self.revision.get()), "deleted": "1",
                                 "prev_kvs": [{"key": body["key"], "mod_revision": m.to_string(), "value": b64(v.as_bytes()), "lease": l.to_string()}]});
                }
                ok(out)
            }
            Some("/v3/kv/txn") => {
                let c = &body["compare"][0];
                let key = raw(&c["key"]);
                let current = self.kv.borrow().get(&key).cloned();
                let holds = match s(&c["target"]).as_str() {
                    "CREATE" => current.is_none(),
                    // A missing key is at revision 0.
                    "MOD" => current.as_ref().map_or(0, |(_, m, _)| *m).to_string() == s(&c["mod_revision"]),
                    // A value compare on a missing key fails whatever the result asked.
                    "VALUE" => current.as_ref().is_some_and(|(v, _, _)| {
                        (*v == raw(&c["value"])) == (s(&c["result"]) != "NOT_EQUAL")
                    }),
                    _ => false,
                };
                let ops = if holds { &body["success"] } else { &body["failure"] };
                let mut responses = Vec::new();
                for op in ops.as_array().cloned().unwrap_or_default() {
                    if let Some(p) = op.get("request_put") {
                        let mut lease: u64 = s(&p["lease"]).parse().unwrap_or(0);
                        let prev = self.kv.borrow().get(&raw(&p["key"])).cloned();
                        if p["ignore_lease"] == true {
                            lease = prev.as_ref().map_or(0, |(_, _, l)| *l);
                        }
                        if lease != 0 && !self.leases.borrow().contains(&lease) {
                            let m = "etcdserver: requested lease not found";
                            return answer(
                                400,
                                &[],
                                json!({"error": m, "message": m, "code": 5}).to_string().as_bytes(),
                            );
                        }
                        self.revision.set(self.revision.get() + 1);
                        self.kv
                            .borrow_mut()
                            .insert(raw(&p["key"]), (raw(&p["value"]), self.revision.get(), lease));
                        let mut r = json!({"header": header(self.revision.get())});
                        if let (Some((v, m, l)), true) = (&prev, p["prev_kv"] == true) {
                            r["prev_kv"] = json!({"key": p["key"], "mod_revision": m.to_string(), "value": b64(v.as_bytes()), "lease": l.to_string()});
                        }
                        responses.push(json!({"response_put": r}));
                    } else if op.get("request_delete_range").is_some() {
                        self.revision.set(self.revision.get() + 1);
                        self.kv.borrow_mut().remove(&key);
                        responses.push(json!({"response_delete_range": {"header": header(self.revision.get()), "deleted": "1"}}));
                    } else if let Some(q) = op.get("request_range") {
                        // Its own key (to `range_end`, exclusive, when given), as read now.
                        let (from, end) = (raw(&q["key"]), q.get("range_end").map(&raw));
                        let mut r = json!({"header": header(self.revision.get())});
                        let mut kvs: Vec<(String, (String, u64, u64))> = self
                            .kv
                            .borrow()
                            .iter()
                            .filter(|(k, _)| match &end {
                                Some(e) => **k >= from && *k < e,
                                None => **k == from,
                            })
                            .map(|(k, v)| (k.clone(), v.clone()))
                            .collect();
                        kvs.sort();
                        if !kvs.is_empty() {
                            r["count"] = json!(kvs.len().to_string());
                            r["kvs"] = kvs.iter().map(|(k, (v, m, l))| json!({"key": b64(k.as_bytes()), "mod_revision": m.to_string(), "create_revision": m.to_string(), "value": b64(v.as_bytes()), "lease": l.to_string()})).collect();
                        }
                        responses.push(json!({"response_range": r}));
                    }
                }
                let mut out = json!({"header": header(self.revision.get()), "responses": responses});
                if holds {
                    out["succeeded"] = json!(true); // omitted when false, as the gateway does
                }
                ok(out)
            }
            _ => answer(404, &[], b"404 page not found"),
        }
    }

    /// The lease ends (its replica died and the TTL passed): its keys go.
    pub fn expire(&self, lease: u64) {
        self.leases.borrow_mut().retain(|l| *l != lease);
        self.kv.borrow_mut().retain(|_, (_, _, l)| *l != lease);
    }

    pub fn value(&self, key: &str) -> Option<String> {
        self.kv.borrow().get(key).map(|(v, _, _)| v.clone())
    }

    /// A break-glass window's value as a use sees it: `None` if absent or used.
    pub fn window(&self, key: &str) -> Option<String> {
        self.value(key).filter(|v| v.as_bytes() != crate::store::etcd::USED)
    }
}

// Helpers shared by the state machine's test files (`tests*.rs`).

/// A worker with `policy` (a test's policy is valid).
pub fn worker(h: &FakeHost, policy: &str) -> Rc<crate::filter::worker::Worker> {
    Rc::new(crate::filter::worker::Worker::new(
        h,
        crate::config::Config::from_json(policy.as_bytes()).unwrap(),
    ))
}

pub fn sha(b: &[u8]) -> String {
    crate::oci::digest::Digest::sha256(b).to_string()
}

/// Answers the oldest pending dispatched call with `reply`.
pub fn respond(f: &mut crate::filter::Filter, h: &FakeHost, reply: Reply) {
    let token = h.pending.borrow_mut().pop_front().expect("a call to answer");
    let size = reply.body.len();
    h.set_answer(Some(reply));
    f.on_call_response(h, token, size);
    h.set_answer(None);
}

/// What the host glue does at a request's headers: the first look, then the filter.
pub fn on_headers(f: &mut crate::filter::Filter, h: &FakeHost, end_of_stream: bool) -> crate::filter::Action {
    match crate::filter::Filter::first_look(h) {
        Some(path) => f.on_request_headers(h, path, end_of_stream),
        None => crate::filter::Action::Continue,
    }
}
