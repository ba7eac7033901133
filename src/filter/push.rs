//! A push to at least one immutable tag: the one flow that can change what a tag holds.
//!
//! The invariant: no request that can store a manifest reaches the registry before the filter
//! decided to let that write through, and the digest judged is the digest of exactly the bytes
//! the registry receives. So the client's PUT itself never goes upstream:
//!
//! 1. At its headers the request is rewritten into a harmless `OPTIONS` of the same path, and
//!    the tag's current digest is learned (map, or a dispatched HEAD). While a HEAD is in flight
//!    the headers are held; with `allow_on_headers_stop_iteration` Envoy still delivers the
//!    body meanwhile.
//! 2. If the lookups are done before any of the body is here, the headers are let go: the
//!    harmless request goes upstream, so that Envoy (Istio-style, without
//!    `allow_on_headers_stop_iteration`) delivers the body. Its answer is held and dropped. If
//!    part of the body already arrived behind held headers, they stay held: resuming them would
//!    release those bytes upstream.
//! 3. The body is buffered whole (never released), hashed, judged, claimed: one tag at a time,
//!    each claim answered at once (shared data) or by a dispatched call (etcd, `claims`).
//! 4. An allowed push is written by the filter itself: a dispatched PUT with the client's path,
//!    headers and exactly the judged bytes; the registry's answer (status, headers, body) is
//!    relayed to the client. A refused push is answered locally; nothing reached the registry.
use super::break_glass::{self as bg, Asked, Grant, Granted};
use super::claims::{self, Claimed};
use super::host::{Host, Level};
use super::upstream::{self, Caller};
use super::worker::Worker;
use crate::config::OnUpstreamError;
use crate::observability::metrics::Counter;
use crate::oci::digest::Digest;
use crate::oci::error::OciError;
use crate::store::claims::absence_still_fenced;
use crate::verdict::break_glass::Action;
use crate::verdict::push::{judge, read_get, read_head, Current, Verdict};
use serde_json::json;

/// The method the request that goes upstream before the decision is rewritten to: safe and
/// idempotent by HTTP's rules, so no registry stores anything for it; the path (and so the
/// route) stays the same.
pub const HARMLESS_METHOD: &str = "OPTIONS";

/// The request header that keeps the client's method once the request is rewritten, for
/// access logs and traces (`%REQ(X-IMMUTABLE-TAGS-METHOD?:METHOD)%`). Set only by the filter:
/// a client's own copy is removed (`Filter::first_look`, and the shipped configs' early header
/// mutation on routes the filter skips).
pub const METHOD_HEADER: &str = "x-immutable-tags-method";

pub struct Push {
    pub repository: String,
    /// `repository` as the map knows it (`Worker::map_key`).
    map_key: String,
    /// The tag in the path: only it is known to be written by a 2xx (a registry may ignore
    /// `?tag=`, as distribution 2.8 does).
    path_tag: Option<String>,
    /// The client's path, query included, for the PUT the filter sends.
    path: String,
    tags: Vec<TagCheck>,
    caller: Caller,
    /// The client's headers, replayed on the PUT.
    client_headers: Vec<(String, String)>,
    /// The complete request body, once it has arrived; emptied once handed to the write.
    body: Option<Vec<u8>>,
    /// The client's headers are held (a HEAD is in flight).
    headers_held: bool,
    /// Body bytes reached the filter while the headers were held (only with
    /// `allow_on_headers_stop_iteration`): the headers must then stay held until the decision,
    /// since resuming them would also release the buffered bytes upstream.
    body_seen: bool,
    /// Audit mode let a push that would have been refused go on: written unjudged.
    audit_pass: bool,
    /// The digest an audit-mode pass wrote (committed to the claims once stored).
    audit_digest: Option<String>,
    phase: Phase,
    /// Break-glass: what the request asks for, and the overrides granted (logged once the
    /// registry accepted the write).
    asked: Asked,
    overrides: Vec<(Granted, String, String)>,
    /// What etcd said of a window, per tag (judged again with it).
    windows: Vec<(String, Result<Granted, Option<String>>)>,
    /// The client's address (no port): claims are bounded per client (`Worker::client_*`).
    client: String,
    /// Judged again once on the registry's word after a view of a digest was found older than
    /// a committed change (its order lagged, or the tag changed while it was judged).
    rechecked: bool,
}

enum Phase {
    Checking,
    /// Judged an overwrite a break-glass window may lift: waiting for etcd.
    Unlocking(Box<bg::Lookup>),
    /// Judged allowed: claiming the tags one at a time (`claims`).
    Claiming(Claiming),
    /// The PUT is on its way; `claims` are settled when it answers.
    Writing {
        token: u32,
        claims: Vec<TagClaim>,
    },
    /// The registry answered the PUT (or reset it).
    Written,
}

/// A tag's claim (see `claims`), held from just before the push is written until the
/// registry's answer is known.
#[derive(Debug, Clone)]
pub struct TagClaim {
    tag: String,
    digest: String,
    /// The take time of its hold (see `claims::Claimed::Proceed`).
    at_ms: u64,
}

/// A tag judged allowed, still to be claimed.
struct Want {
    tag: String,
    reason: String,
    /// The registry does not hold the tag.
    absent: bool,
    /// The verdict rests on this worker's map, not on the registry's word: the tag may have
    /// changed since (a committed change of another digest sends it to `recheck`).
    from_map: bool,
    pushed: String,
    since_ms: u64,
    /// The claim store's order of the view (`claims::View`).
    order: u64,
}

struct Claiming {
    /// Last first.
    wants: Vec<Want>,
    taken: Vec<TagClaim>,
    /// The claim waiting for the store's answer, and for which tag.
    in_flight: Option<Box<(claims::etcd::InFlight, Want)>>,
    /// When the first claim was asked for.
    started_ms: u64,
}

struct TagCheck {
    tag: String,
    reason: String,
    lookup: Lookup,
    /// What the lookup says is known to hold since then: the map entry's learning time, or
    /// when the HEAD was sent. An "absent" older than the claim TTL is not trusted.
    /// [`NO_VIEW`] when nothing was learned (`on_upstream_error = allow`).
    since_ms: u64,
    /// The claim store's order of the view (`claims::View`), read before the HEAD was sent:
    /// what orders it against committed changes (clocks never do). 0 with [`NO_VIEW`].
    order: u64,
    /// The lookup came from the map, not from the registry.
    from_map: bool,
}

enum Lookup {
    Pending(u32),
    /// The HEAD answered 200 without a digest: a GET of the manifest is in flight.
    Fetching(u32),
    Known(Option<Digest>),
}

/// The `since_ms` of a lookup that learned nothing (the registry could not answer and
/// `on_upstream_error = allow` let the push on as if the tag were absent): such a guess is no
/// view of the registry, so every claim record still fences it.
const NO_VIEW: u64 = 0;

/// What `judge` found.
enum Judged {
    Allowed(Vec<Counter>, Vec<Want>),
    Refused(OciError),
    Ask(Box<bg::Lookup>),
}

/// What the filter does next with a push.
pub enum Next {
    /// Nothing yet (waiting for a HEAD, the body, or the registry's answer to the PUT).
    Wait,
    /// Let the held headers go (the harmless request), so that the body arrives.
    Release,
    Refuse(OciError, Vec<(&'static str, String)>),
    /// Answer the client with the registry's answer to the PUT.
    Relay {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    },
}

impl Push {
    /// Starts checking a push at its headers: reads what later phases need, rewrites the request
    /// into the harmless one, and looks the tags up. `Err`: refuse at once.
    pub fn start(
        host: &dyn Host,
        worker: &Worker,
        repository: String,
        path_tag: Option<String>,
        checks: Vec<(String, String)>,
        end_of_stream: bool,
    ) -> Result<(Push, Next), OciError> {
        let client_headers = host.request_headers();
        let header = |name: &str| client_headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
        // The PUT the filter sends replays these headers: without them it cannot be sent as judged.
        let Some(path) = header(":path").map(str::to_string) else {
            let msg =
                "immutable-tags could not read the request's headers; a push it cannot judge is refused";
            return Err(OciError::new(503, "UNAVAILABLE", msg, json!({"repository": repository})));
        };
        let first = checks.first().map(|(t, _)| t.clone()).unwrap_or_default();
        // A body announced larger than the limit is refused before a byte of it is buffered.
        let max = worker.config.max_manifest_bytes;
        if let Some(len) = header("content-length").and_then(|v| v.trim().parse::<u64>().ok()) {
            if len > max as u64 {
                return Err(too_large(&repository, &first, max));
            }
        }
        let method = header(":method").unwrap_or_default().to_string();
        let rewritten = host.set_request_header(METHOD_HEADER, &method);
        if let Err(why) = rewritten.and_then(|()| host.set_request_header(":method", HARMLESS_METHOD)) {
            let msg = format!("The filter could not hold the push back from the registry ({why})");
            return Err(OciError::new(500, "UNKNOWN", msg, json!({"repository": repository, "tag": first})));
        }
        let caller = Caller {
            authority: header(":authority").map(str::to_string),
            authorization: header("authorization").map(str::to_string),
        };
        let asked = Asked::read(worker, &|n| header(n).map(str::to_string)).verify(host, worker);
        let map_key = worker.map_key(&repository, caller.authority.as_deref());
        let mut push = Push {
            repository,
            map_key,
            path_tag,
            path,
            tags: Vec::new(),
            caller,
            client_headers,
            body: end_of_stream.then(Vec::new),
            headers_held: false,
            body_seen: false,
            audit_pass: false,
            audit_digest: None,
            phase: Phase::Checking,
            asked,
            overrides: Vec::new(),
            windows: Vec::new(),
            client: client_address(host),
            rechecked: false,
        };
        let now = host.now_ms();
        for (tag, reason) in checks {
            let cached =
                worker.cache.try_borrow_mut().ok().and_then(|mut c| c.get_view(&push.map_key, &tag, now));
            worker.count(host, if cached.is_some() { Counter::MapHits } else { Counter::MapMisses });
            let since_ms = cached.as_ref().map_or(now, |(_, learned, _)| *learned);
            let from_map = cached.is_some();
            let (lookup, order) = match cached {
                Some((d, _, order)) => (Lookup::Known(Some(d)), order),
                None => match push.order_then_head(host, worker, &tag) {
                    Ok(sent) => sent,
                    // Envoy would not even send the HEAD: no answer of the registry's, so
                    // `on_upstream_error = allow` does not apply (see `upstream::from_registry`).
                    Err(why) => {
                        // Refused, or in audit mode written unjudged: either way the push
                        // (already made harmless) is the state that answers.
                        push.headers_held = true;
                        let err = OciError::upstream(&push.repository, &tag, &why);
                        return Ok((push, Next::Refuse(err, Vec::new())));
                    }
                },
            };
            push.tags.push(TagCheck { tag, reason, lookup, since_ms, order, from_map });
        }
        // The headers are held until `progress` lets them go.
        push.headers_held = true;
        let next = push.progress(host, worker);
        Ok((push, next))
    }

    /// Bytes of the manifest this push keeps in wasm memory.
    #[cfg(test)]
    pub fn buffered(&self) -> usize {
        self.body.as_ref().map_or(0, Vec::len)
    }

    pub fn first_tag(&self) -> String {
        self.tags.first().map(|t| t.tag.clone()).unwrap_or_default()
    }

    fn pending(&self) -> bool {
        self.tags.iter().any(|t| matches!(t.lookup, Lookup::Pending(_) | Lookup::Fetching(_)))
    }

    /// Still judging, and the body is not complete. If the harmless request is answered now,
    /// Envoy delivers no more of the body (the route's upstream exchange is over).
    pub fn awaiting_body(&self) -> bool {
        self.checking() && self.body.is_none()
    }

    /// Nothing will be written for this push any more (it is being answered locally).
    pub fn abandon(&mut self) {
        self.phase = Phase::Written;
    }

    /// Audit mode: write the push without judging it, once its body is here.
    pub fn pass_unjudged(&mut self, host: &dyn Host, worker: &Worker) -> Next {
        self.audit_pass = true;
        if self.body.is_some() {
            return self.write(host, worker, Vec::new());
        }
        if self.headers_held && !self.body_seen && !worker.holds_headers() {
            self.headers_held = false;
            return Next::Release;
        }
        Next::Wait
    }

    pub fn audit_pass(&self) -> bool {
        self.audit_pass
    }

    /// Whether the filter is still judging (as opposed to writing).
    pub fn checking(&self) -> bool {
        matches!(self.phase, Phase::Checking | Phase::Claiming(_) | Phase::Unlocking(_))
    }

    /// Sends the HEAD that learns `tag`'s current digest, counted.
    fn send_head(&self, host: &dyn Host, worker: &Worker, tag: &str) -> Result<u32, String> {
        let token =
            upstream::head_manifest(host, &worker.config.upstream, &self.caller, &self.repository, tag)?;
        worker.count(host, Counter::HeadCallsDispatched);
        Ok(token)
    }

    /// Reads the claim store's order, then sends the HEAD: the view it learns is at least that
    /// new (read first, so a change committed before the HEAD may be counted in, never one after).
    fn order_then_head(&self, host: &dyn Host, worker: &Worker, tag: &str) -> Result<(Lookup, u64), String> {
        let order = claims::view_order(host, worker, &self.repository, tag)?;
        Ok((Lookup::Pending(self.send_head(host, worker, tag)?), order))
    }

    /// A body chunk arrived; `end_of_stream`: the body is complete (`size` bytes buffered).
    pub fn on_body(&mut self, host: &dyn Host, worker: &Worker, size: usize, end_of_stream: bool) -> Next {
        let max = worker.config.max_manifest_bytes;
        if !self.checking() || self.body.is_some() {
            return Next::Wait;
        }
        self.body_seen |= size > 0;
        if self.headers_held && size > 0 {
            worker.learn_holds_headers();
        }
        // Refused here rather than left to Envoy's buffer limit: a body that outgrows the buffer
        // while the headers are held meets flow control, not a 413, and would hang. It can never
        // be written, so it is answered in audit mode too (left waiting, a last part would hang).
        if size > max {
            self.abandon();
            return Next::Refuse(too_large(&self.repository, &self.first_tag(), max), Vec::new());
        }
        if !end_of_stream {
            return Next::Wait;
        }
        self.body_complete(host, worker, size)
    }

    /// Trailers end the body.
    pub fn on_trailers(&mut self, host: &dyn Host, worker: &Worker) -> Next {
        if !self.checking() || self.body.is_some() {
            return Next::Wait;
        }
        self.body_complete(host, worker, usize::MAX)
    }

    fn body_complete(&mut self, host: &dyn Host, worker: &Worker, size: usize) -> Next {
        match host.request_body(size) {
            Some(b) if b.len() > worker.config.max_manifest_bytes => {
                let max = worker.config.max_manifest_bytes;
                Next::Refuse(too_large(&self.repository, &self.first_tag(), max), Vec::new())
            }
            Some(b) => {
                self.body = Some(b);
                if self.audit_pass {
                    return self.write(host, worker, Vec::new());
                }
                self.progress(host, worker)
            }
            None => {
                let detail = json!({"repository": self.repository, "tag": self.first_tag()});
                Next::Refuse(
                    OciError::new(
                        500,
                        "MANIFEST_INVALID",
                        "The filter could not read the manifest body",
                        detail,
                    ),
                    Vec::new(),
                )
            }
        }
    }

    /// A dispatched call answered: a HEAD of the check, or the PUT.
    pub fn on_call_response(
        &mut self,
        host: &dyn Host,
        worker: &Worker,
        token: u32,
        body_size: usize,
    ) -> Next {
        if let Phase::Writing { token: t, .. } = &self.phase {
            return if *t == token { self.written(host, worker, body_size) } else { Next::Wait };
        }
        if let Phase::Claiming(c) = &mut self.phase {
            let Some(b) = c.in_flight.take_if(|b| b.0.token == token) else { return Next::Wait };
            let (f, want) = *b;
            let result = claims::on_response(host, worker, f, body_size);
            return match self.claimed(host, worker, want, result) {
                Some(next) => next,
                None => self.claim_next(host, worker),
            };
        }
        if let Phase::Unlocking(l) = &self.phase {
            if l.token() != token {
                return Next::Wait;
            }
            let Phase::Unlocking(l) = std::mem::replace(&mut self.phase, Phase::Checking) else {
                return Next::Wait;
            };
            let tag = l.tag.clone();
            match bg::looked_up(host, worker, *l, body_size) {
                Grant::Ask(l) => self.phase = Phase::Unlocking(l),
                Grant::Yes(g) => self.windows.push((tag, Ok(g))),
                Grant::No(why) => self.windows.push((tag, Err(why))),
            }
            return if matches!(self.phase, Phase::Checking) {
                self.decide(host, worker)
            } else {
                Next::Wait
            };
        }
        if self.audit_pass || !self.checking() {
            return Next::Wait; // an answer the push no longer waits for
        }
        let next = self.looked_up(host, worker, token, body_size);
        if matches!(next, Next::Refuse(..)) {
            self.restore_windows(host, worker); // kept across a `recheck`
        }
        next
    }

    /// A HEAD (or GET) of a tag's check answered.
    fn looked_up(&mut self, host: &dyn Host, worker: &Worker, token: u32, body_size: usize) -> Next {
        let Some(check) = self
            .tags
            .iter_mut()
            .find(|t| matches!(t.lookup, Lookup::Pending(x) | Lookup::Fetching(x) if x == token))
        else {
            return Next::Wait;
        };
        let status = host.call_response_header(":status");
        let answer = if matches!(check.lookup, Lookup::Fetching(_)) {
            let max = worker.config.max_manifest_bytes;
            let body = if body_size > max { None } else { host.call_response_body(body_size) };
            read_get(status.as_deref(), body.as_deref(), body_size, max)
        } else {
            read_head(status.as_deref(), host.call_response_header("docker-content-digest").as_deref())
        };
        match answer {
            Current::Present(d) => {
                if let Ok(mut c) = worker.cache.try_borrow_mut() {
                    c.put_ordered(
                        &self.map_key,
                        &check.tag,
                        d.clone(),
                        host.now_ms(),
                        check.order,
                        crate::store::tag_cache::Source::Head,
                    );
                }
                check.lookup = Lookup::Known(Some(d));
            }
            Current::Absent => check.lookup = Lookup::Known(None),
            Current::NoDigest if matches!(check.lookup, Lookup::Pending(_)) => {
                match upstream::get_manifest(
                    host,
                    &worker.config.upstream,
                    &self.caller,
                    &self.repository,
                    &check.tag,
                ) {
                    Ok(token) => check.lookup = Lookup::Fetching(token),
                    Err(why) => {
                        return Next::Refuse(
                            OciError::upstream(&self.repository, &check.tag, &why),
                            Vec::new(),
                        )
                    }
                }
                return Next::Wait;
            }
            Current::AuthRequired { status } => {
                let (code, msg) = if status == 401 {
                    ("UNAUTHORIZED", "authentication required")
                } else {
                    ("DENIED", "requested access to the resource is denied")
                };
                let err = OciError::new(
                    status,
                    code,
                    msg,
                    json!({"repository": self.repository, "tag": check.tag}),
                );
                let challenge = host.call_response_header("www-authenticate");
                return Next::Refuse(err, challenge.map(|c| ("www-authenticate", c)).into_iter().collect());
            }
            // `allow` only for the registry's own answer, never for one Envoy made up.
            Current::Unknown { reason }
                if worker.config.on_upstream_error == OnUpstreamError::Allow
                    && upstream::from_registry(host) =>
            {
                let msg = format!(
                    "immutable-tags: {}:{}: {reason}; allowed (on_upstream_error = allow)",
                    self.repository, check.tag
                );
                host.log(Level::Warn, &msg);
                (check.lookup, check.since_ms, check.order) = (Lookup::Known(None), NO_VIEW, 0);
            }
            Current::Unknown { reason } => {
                return Next::Refuse(OciError::upstream(&self.repository, &check.tag, &reason), Vec::new());
            }
            // Unreachable: `read_get` never answers `NoDigest`.
            Current::NoDigest => {
                let why = "the registry answered without a digest";
                return Next::Refuse(OciError::upstream(&self.repository, &check.tag, why), Vec::new());
            }
        }
        self.progress(host, worker)
    }

    /// After any new fact: decides if both digests are known; lets the held headers go if only
    /// the body is missing and none of it is buffered behind them.
    fn progress(&mut self, host: &dyn Host, worker: &Worker) -> Next {
        if self.pending() {
            return Next::Wait;
        }
        if self.body.is_none() {
            // Once this Envoy is known to deliver bodies behind held headers, nothing goes
            // upstream before the decision, not even the harmless request.
            if self.headers_held && !self.body_seen && !worker.holds_headers() {
                self.headers_held = false;
                return Next::Release;
            }
            return Next::Wait;
        }
        self.decide(host, worker)
    }

    fn decide(&mut self, host: &dyn Host, worker: &Worker) -> Next {
        let Some(body) = &self.body else { return Next::Wait };
        // A refusal rests on the registry's own word, asked with the client's credentials: a map
        // entry that disagrees with the push is checked again first (it may be stale, and a 409
        // from the map alone would tell an unauthenticated client the tag's digest).
        let stale: Vec<String> = self
            .tags
            .iter()
            .filter(|t| {
                t.from_map
                    && matches!(&t.lookup, Lookup::Known(Some(d)) if *d != Digest::of(d.algorithm(), body))
            })
            .map(|t| t.tag.clone())
            .collect();
        if !stale.is_empty() {
            for tag in stale {
                if let Err(err) = self.ask_again(host, worker, &tag) {
                    return Next::Refuse(err, Vec::new());
                }
            }
            return Next::Wait;
        }
        let mut overrides = Vec::new();
        match self.judge(host, worker, body, &mut overrides) {
            Judged::Allowed(counters, wants) => {
                for (g, current, pushed) in &overrides {
                    bg::decided(host, g, current, pushed);
                }
                self.overrides = overrides;
                for c in counters {
                    worker.count(host, c);
                }
                let wants = wants.into_iter().rev().collect();
                self.phase = Phase::Claiming(Claiming {
                    wants,
                    taken: Vec::new(),
                    in_flight: None,
                    started_ms: host.now_ms(),
                });
                self.claim_next(host, worker)
            }
            Judged::Ask(l) => {
                self.phase = Phase::Unlocking(l);
                Next::Wait
            }
            Judged::Refused(err) => {
                // Windows used for this push's other tags are not used up by a refusal.
                self.overrides = overrides;
                self.restore_windows(host, worker);
                Next::Refuse(err, Vec::new())
            }
        }
    }

    /// The push will not be written: the windows it used are put back, its overrides' and those
    /// kept for a judgement still to come (`windows`), once each.
    fn restore_windows(&mut self, host: &dyn Host, worker: &Worker) {
        let overrides = std::mem::take(&mut self.overrides);
        for (tag, w) in std::mem::take(&mut self.windows) {
            match w {
                Ok(g) if !overrides.iter().any(|(o, _, _)| o.tag() == tag) => bg::restore(host, worker, &g),
                _ => {}
            }
        }
        for (g, _, _) in &overrides {
            bg::restore(host, worker, g);
        }
    }

    /// Judges every tag against the body: the tags to claim and the break-glass overrides
    /// granted (into `overrides`), or the overwrite refused, or a window to ask etcd for.
    fn judge(
        &self,
        host: &dyn Host,
        worker: &Worker,
        body: &[u8],
        overrides: &mut Vec<(Granted, String, String)>,
    ) -> Judged {
        let sha256 = Digest::sha256(body);
        let mut counters = Vec::new();
        let mut allowed = Vec::new();
        for t in &self.tags {
            let Lookup::Known(current) = &t.lookup else { continue };
            let pushed = match current {
                Some(c) if c.algorithm() != sha256.algorithm() => Digest::of(c.algorithm(), body),
                _ => sha256.clone(),
            };
            match judge(current.as_ref(), &pushed) {
                Verdict::AllowNew => counters.push(Counter::PushesAllowedNewTag),
                Verdict::AllowSame => counters.push(Counter::PushesAllowedSameDigest),
                Verdict::Overwrite { current } => {
                    let (current, new) = (current.to_string(), pushed.to_string());
                    let grant = match self.windows.iter().find(|(tag, _)| *tag == t.tag) {
                        Some((_, Ok(g))) => Grant::Yes(g.clone()),
                        Some((_, Err(why))) => Grant::No(why.clone()),
                        None => {
                            bg::grant(host, worker, Action::Overwrite, &self.repository, &t.tag, &self.asked)
                        }
                    };
                    match grant {
                        // Judged as allowed from here on: claimed like any other write.
                        Grant::Yes(record) => {
                            overrides.push((record, current, new));
                        }
                        Grant::Ask(l) => return Judged::Ask(l),
                        Grant::No(why) => {
                            let mut err = self.conflict(worker, &t.tag, &t.reason, &current, &new, None);
                            bg::explain(&mut err, why);
                            return Judged::Refused(err);
                        }
                    }
                }
            }
            let (tag, reason, absent, since_ms, order) =
                (t.tag.clone(), t.reason.clone(), current.is_none(), t.since_ms, t.order);
            allowed.push(Want {
                tag,
                reason,
                absent,
                from_map: t.from_map,
                pushed: pushed.to_string(),
                since_ms,
                order,
            });
        }
        Judged::Allowed(counters, allowed)
    }

    fn conflict(
        &self,
        worker: &Worker,
        tag: &str,
        reason: &str,
        current: &str,
        pushed: &str,
        in_flight: Option<String>,
    ) -> OciError {
        let mut detail = json!({
            "repository": self.repository,
            "tag": tag,
            "current_digest": current,
            "pushed_digest": pushed,
            "reason": reason,
        });
        if let (Some(why), Some(d)) = (in_flight, detail.as_object_mut()) {
            d.insert("in_flight".into(), json!(why));
        }
        let msg = format!("Tag '{tag}' is immutable and cannot be overwritten");
        OciError::new(409, &worker.config.error_code, msg, detail)
    }

    /// Claims the next tag of a push about to be written (see `claims`); once every tag is
    /// claimed, writes it. A claim the store answers later leaves the push waiting.
    fn claim_next(&mut self, host: &dyn Host, worker: &Worker) -> Next {
        // Writes whose client left are never dropped unsettled: while too many wait, no new
        // write is sent (it could become one more), so the list stays bounded.
        if worker.pending.orphans.try_borrow().map_or(true, |o| o.len() >= super::worker::MAX_ORPHANS) {
            self.give_back(host, worker);
            let why = format!("{} writes whose client left are still waiting for the registry's answer on this worker; retry shortly", super::worker::MAX_ORPHANS);
            return Next::Refuse(OciError::upstream(&self.repository, &self.first_tag(), &why), Vec::new());
        }
        loop {
            let Phase::Claiming(c) = &mut self.phase else { return Next::Wait };
            let Some(want) = c.wants.pop() else { break };
            let ttl_ms = worker.config.claims.ttl_ms;
            // A view is trusted for half a TTL: a write claimed before it was taken lands within
            // half a TTL of its claim (see below), so the claim's record, which lives a TTL,
            // still stands when such a view is judged, even if its writer died before its
            // commit (found by the simulation, seed 111888). A digest can only go stale where
            // tags can change through the filter.
            let may_be_stale = want.absent || worker.config.tags_can_change();
            if may_be_stale
                && want.since_ms != NO_VIEW
                && !absence_still_fenced(want.since_ms, host.now_ms(), ttl_ms / 2)
            {
                self.give_back(host, worker);
                let why = "the push took longer than half of claims.ttl_seconds; retry it";
                return Next::Refuse(OciError::upstream(&self.repository, &want.tag, why), Vec::new());
            }
            if !worker.client_may_claim(&self.client, host.now_ms()) {
                self.give_back(host, worker);
                let why = format!(
                    "this client holds {} claims in flight already; retry once they are answered",
                    super::worker::MAX_CLAIMS_PER_CLIENT
                );
                return Next::Refuse(
                    OciError::new(
                        429,
                        "TOOMANYREQUESTS",
                        &why,
                        json!({"repository": self.repository, "tag": want.tag}),
                    ),
                    Vec::new(),
                );
            }
            let view = claims::View { order: want.order, absent: want.absent };
            let result = claims::claim(host, worker, &self.repository, &want.tag, &want.pushed, view);
            if let Some(next) = self.claimed(host, worker, want, result) {
                return next;
            }
        }
        // The write lands within the write timeout; the claims must still live then.
        if let Phase::Claiming(c) = &self.phase {
            if host.now_ms().saturating_sub(c.started_ms) >= worker.config.claims.ttl_ms / 2 {
                self.give_back(host, worker);
                let why = "the claims took half of claims.ttl_seconds or more; retry the push";
                return Next::Refuse(
                    OciError::upstream(&self.repository, &self.first_tag(), why),
                    Vec::new(),
                );
            }
        }
        let Phase::Claiming(c) = std::mem::replace(&mut self.phase, Phase::Checking) else {
            return Next::Wait;
        };
        self.write(host, worker, c.taken)
    }

    /// Acts on a claim's outcome: `None` to go on with the next tag.
    fn claimed(&mut self, host: &dyn Host, worker: &Worker, want: Want, result: Claimed) -> Option<Next> {
        let Phase::Claiming(c) = &mut self.phase else { return Some(Next::Wait) };
        match result {
            Claimed::Proceed { at_ms, .. } => {
                c.taken.push(TagClaim { tag: want.tag, digest: want.pushed, at_ms });
                worker.client_claimed(&self.client, host.now_ms());
                worker.count(host, Counter::ClaimsTaken);
                None
            }
            Claimed::Pending(f) => {
                c.in_flight = Some(Box::new((f, want)));
                Some(Next::Wait)
            }
            // A committed record of another digest behind a map-confirmed verdict: the map is
            // stale (the tag changed through another worker or replica). Judged again on the
            // registry's word, like a map entry that disagrees with the push: the refusal then
            // rests on what the client may see, and break-glass gets to judge the overwrite.
            // So is a HEAD's view once (etcd: the worker's order may have lagged; the claim's
            // answer brought it up to date, so the HEAD sent now is ordered after the change).
            Claimed::Conflict { committed: true, .. }
                if want.from_map || (!want.absent && !self.rechecked) =>
            {
                self.rechecked |= !want.from_map;
                Some(self.recheck(host, worker, &want.tag))
            }
            Claimed::Conflict { digest, committed } => {
                self.give_back(host, worker);
                let (repository, tag, pushed) = (&self.repository, &want.tag, &want.pushed);
                host.log(Level::Info, &format!("immutable-tags: refused concurrent push of {repository}:{tag} ({pushed}; claimed by {digest})"));
                // The registry does not hold it yet: say why it is refused all the same. A view
                // of a digest refused by a committed change predates it: the tag changed while
                // the push was judged, or (etcd) the worker's order lagged; the claim's answer
                // brought it up to date, so a retry is judged on the registry's word now.
                let in_flight = match committed {
                    false => Some(format!("a push of tag '{tag}' with digest {digest} is in flight")),
                    true if !want.absent => {
                        Some(format!("tag '{tag}' changed to {digest} while this push was judged; retry it"))
                    }
                    true => None,
                };
                Some(Next::Refuse(
                    self.conflict(worker, tag, &want.reason, &digest, pushed, in_flight),
                    Vec::new(),
                ))
            }
            Claimed::Fenced => {
                self.give_back(host, worker);
                // 409 DENIED: retrying later is the answer, not another digest.
                let mut err = OciError::upstream(
                    &self.repository,
                    &want.tag,
                    "a delete of this manifest is in flight; retry the push",
                );
                (err.status, err.code) = (409, "DENIED".into());
                Some(Next::Refuse(err, Vec::new()))
            }
            Claimed::Unavailable(why) => {
                self.give_back(host, worker);
                host.log(Level::Warn, &format!("immutable-tags: {}:{}: {why}", self.repository, want.tag));
                Some(Next::Refuse(OciError::upstream(&self.repository, &want.tag, &why), Vec::new()))
            }
        }
    }

    /// Back to checking `tag` with a HEAD (its map entry was stale): the claims taken so far are
    /// released; the overrides granted keep their windows, reused by the next judgement.
    fn recheck(&mut self, host: &dyn Host, worker: &Worker, tag: &str) -> Next {
        self.release_claims(host, worker);
        self.phase = Phase::Checking;
        for (g, _, _) in std::mem::take(&mut self.overrides) {
            if !self.windows.iter().any(|(t, _)| t == g.tag()) {
                self.windows.push((g.tag().to_string(), Ok(g)));
            }
        }
        if let Ok(mut cache) = worker.cache.try_borrow_mut() {
            cache.forget(&self.map_key, tag);
        }
        match self.ask_again(host, worker, tag) {
            Ok(()) => Next::Wait,
            Err(err) => {
                self.restore_windows(host, worker);
                Next::Refuse(err, Vec::new())
            }
        }
    }

    /// Asks the registry again what `tag` holds (the map's word on it is in doubt): its check
    /// waits for the HEAD.
    fn ask_again(&mut self, host: &dyn Host, worker: &Worker, tag: &str) -> Result<(), OciError> {
        let (lookup, order) = self
            .order_then_head(host, worker, tag)
            .map_err(|why| OciError::upstream(&self.repository, tag, &why))?;
        if let Some(t) = self.tags.iter_mut().find(|t| t.tag == tag) {
            (t.lookup, t.from_map, t.since_ms, t.order) = (lookup, false, host.now_ms(), order);
        }
        Ok(())
    }

    /// Releases the claims this push took so far, and puts back the windows it used (it is
    /// refused, or its stream ended: nothing was written).
    fn give_back(&mut self, host: &dyn Host, worker: &Worker) {
        self.release_claims(host, worker);
        // Still judging: windows taken for it (kept across a `recheck`, or used by overrides).
        if self.checking() {
            self.restore_windows(host, worker);
        }
    }

    /// Releases the claims this push took so far.
    fn release_claims(&mut self, host: &dyn Host, worker: &Worker) {
        if let Phase::Claiming(c) = &mut self.phase {
            let taken = std::mem::take(&mut c.taken);
            worker.client_settled(&self.client, taken.len());
            worker.count_many(host, Counter::ClaimsSettled, taken.len() as u64);
            for t in taken {
                claims::release(host, worker, &self.repository, &t.tag, &t.digest, t.at_ms);
            }
        }
    }

    /// Sends the PUT: exactly the judged bytes, with the client's path and headers. Also the
    /// audit-mode path for a push that would have been refused (`claims` empty then).
    pub fn write(&mut self, host: &dyn Host, worker: &Worker, claims: Vec<TagClaim>) -> Next {
        let body = self.body.as_deref().unwrap_or_default();
        if self.audit_pass {
            self.audit_digest = Some(Digest::sha256(body).to_string());
        }
        // An override was granted on the principal `Authorization` names: the write carries
        // no other credential the registry might authenticate instead.
        let mut headers = std::borrow::Cow::Borrowed(&self.client_headers);
        if let (false, Some(bg)) = (self.overrides.is_empty(), &worker.config.break_glass) {
            headers.to_mut().retain(|(k, _)| !bg.strips(k));
        }
        match upstream::put_manifest(host, &worker.config.upstream, &self.caller, &self.path, &headers, body)
        {
            Ok(token) => {
                self.phase = Phase::Writing { token, claims };
                // The host copied the bytes into the call: none of a manifest stays in wasm
                // memory for as long as the registry takes to answer.
                if let Some(b) = self.body.as_mut() {
                    *b = Vec::new();
                }
                Next::Wait
            }
            Err(why) => {
                self.settle(host, worker, &claims, false);
                self.restore_windows(host, worker);
                Next::Refuse(OciError::upstream(&self.repository, &self.first_tag(), &why), Vec::new())
            }
        }
    }

    /// The registry answered the PUT: settle the claims, teach the map, relay the answer.
    fn written(&mut self, host: &dyn Host, worker: &Worker, body_size: usize) -> Next {
        let Phase::Writing { claims, .. } = std::mem::replace(&mut self.phase, Phase::Written) else {
            return Next::Wait;
        };
        let status = host.call_response_header(":status").and_then(|s| s.trim().parse::<u16>().ok());
        let tags: Vec<String> = self.tags.iter().map(|t| t.tag.clone()).collect();
        let forget_all = |worker: &Worker| {
            if let Ok(mut cache) = worker.cache.try_borrow_mut() {
                for t in &tags {
                    cache.forget(&self.map_key, t);
                }
            }
        };
        let Some(status) = status.filter(|s| (100..=599).contains(s)) else {
            // A reset: the registry may or may not have stored it. The claims stay until they
            // expire, so no other digest gets in meanwhile.
            forget_all(worker);
            let why = "the registry reset the manifest upload; it may or may not have stored it";
            return Next::Refuse(OciError::upstream(&self.repository, &self.first_tag(), why), Vec::new());
        };
        let digest = host.call_response_header("docker-content-digest").and_then(|d| Digest::parse(d.trim()));
        let path_tag = self.path_tag.clone().filter(|t| tags.contains(t));
        if (200..300).contains(&status) {
            self.settle(host, worker, &claims, true);
            // Audit mode wrote it unjudged and unclaimed, yet the tags really changed: record the
            // change like a claimed write's, so that a map elsewhere (a kept enforce instance, a
            // replica) that still holds the old digest is sent back to the registry.
            if self.audit_pass {
                if let Some(d) = digest.as_ref().map(|d| d.to_string()).or_else(|| self.audit_digest.clone())
                {
                    for t in &tags {
                        claims::commit(host, worker, &self.repository, t, &d, claims::NO_HOLD);
                    }
                }
            }
            for (g, current, pushed) in &self.overrides {
                bg::done(host, worker, g, Some(current), Some(pushed));
            }
            if let Ok(mut cache) = worker.cache.try_borrow_mut() {
                for t in &tags {
                    match (&digest, Some(t) == path_tag.as_ref()) {
                        // Its order: this push's own view's, a lower bound of its commit's
                        // (a change after it refuses the entry; so may this commit: a recheck).
                        (Some(d), true) if status == 201 => {
                            let order = self.tags.iter().find(|c| c.tag == *t).map_or(0, |c| c.order);
                            cache.put_ordered(
                                &self.map_key,
                                t,
                                d.clone(),
                                host.now_ms(),
                                order,
                                crate::store::tag_cache::Source::Push,
                            )
                        }
                        _ => cache.forget(&self.map_key, t),
                    }
                }
            }
        } else if !(400..500).contains(&status) {
            // A 5xx (Envoy's 504 for a timeout, its 503 for a reset after sending, a proxy's
            // 502, a registry's 500 after the tag link) or an odd 1xx/3xx does not prove nothing was
            // stored: the outcome is unknown, as for a reset. The claim stays until it expires.
            forget_all(worker);
        } else {
            self.settle(host, worker, &claims, false);
            forget_all(worker);
            self.restore_windows(host, worker);
        }
        let headers = host
            .call_response_headers()
            .into_iter()
            .filter(|(k, _)| upstream::relayed_response_header(k))
            .collect();
        let body =
            if body_size == 0 { Vec::new() } else { host.call_response_body(body_size).unwrap_or_default() };
        Next::Relay { status, headers, body }
    }

    /// Settles the claims once the registry answered: a stored write commits every tag it
    /// claimed, `?tag=` ones included (a registry that ignores them only makes their records
    /// stricter than needed until they expire); a refused one releases them.
    fn settle(&self, host: &dyn Host, worker: &Worker, tag_claims: &[TagClaim], stored: bool) {
        worker.client_settled(&self.client, tag_claims.len());
        worker.count_many(host, Counter::ClaimsSettled, tag_claims.len() as u64);
        for c in tag_claims {
            match stored {
                true => claims::commit(host, worker, &self.repository, &c.tag, &c.digest, c.at_ms),
                false => claims::release(host, worker, &self.repository, &c.tag, &c.digest, c.at_ms),
            }
        }
    }

    /// The stream ended early (client gone). Claims taken for a push that never went out
    /// are given back, and so are the windows taken for its judgement. A write in flight is
    /// the root context's call: its answer still comes, and settles it (`orphan_answer`).
    pub fn on_done(self: Box<Self>, host: &dyn Host, worker: &Worker) {
        let mut push = self;
        push.give_back(host, worker);
        if let Phase::Writing { .. } = push.phase {
            host.log(
                Level::Info,
                &format!("immutable-tags: {}: the client left while its push was written", push.repository),
            );
            if let Ok(mut cache) = worker.cache.try_borrow_mut() {
                for t in &push.tags {
                    cache.forget(&push.map_key, &t.tag);
                }
            }
            // Never dropped unsettled (its claims would outlive a refused write): the list is
            // bounded by the writes in flight, each answered by Envoy within the write timeout.
            if let Ok(mut o) = worker.pending.orphans.try_borrow_mut() {
                push.body = None;
                o.push(*push);
                worker.count(host, Counter::WritesOrphaned);
            }
        }
    }
}

/// The client's address without its port (one client, whatever connection it uses).
fn client_address(host: &dyn Host) -> String {
    let a = host.property(&["source", "address"]).unwrap_or_default();
    a.rsplit_once(':').map_or(a.clone(), |(ip, _)| ip.to_string())
}

fn too_large(repository: &str, tag: &str, max: usize) -> OciError {
    let detail = json!({"repository": repository, "tag": tag, "limit": max});
    let msg = format!("The manifest is larger than max_manifest_bytes ({max} bytes)");
    OciError::new(413, "SIZE_INVALID", msg, detail)
}

/// The answer to a write whose client left (the call is the root context's, so it arrives
/// all the same): its claims are settled and its overrides' outcome logged, as if the client
/// were there; nobody to relay it to. `false`: not such a write's answer.
pub fn orphan_answer(host: &dyn Host, worker: &Worker, token: u32, body_size: usize) -> bool {
    let orphan = worker.pending.orphans.try_borrow_mut().ok().and_then(|mut o| {
        let i = o.iter().position(|p| matches!(p.phase, Phase::Writing { token: t, .. } if t == token))?;
        Some(o.swap_remove(i))
    });
    let Some(mut push) = orphan else { return false };
    worker.count(host, Counter::OrphansSettled);
    if let Next::Relay { status, .. } = push.written(host, worker, body_size) {
        host.log(
            Level::Info,
            &format!(
                "immutable-tags: {}: the registry answered {status} to a push whose client left",
                push.repository
            ),
        );
    }
    true
}
