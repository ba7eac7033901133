//! The HTTP context: a small state machine around one request.
//!
//! A push to an immutable tag needs two things: the tag's current digest (map or HEAD) and the
//! pushed manifest's digest (the whole body). Headers are paused while a HEAD is in flight and
//! resumed when it answers. Without `allow_on_headers_stop_iteration` Envoy holds the body back
//! until then and replays it to `on_http_request_body`; with it the body may arrive first. Either
//! way the decision is taken once both are known, in whichever callback completes the pair.
//!
//! A delete by digest is held at its headers (a DELETE has no body to wait for) while
//! `super::deletes` lists and checks the repository's immutable tags, then resumed or refused.
use super::deletes::{DigestDelete, Next};
use super::root::Worker;
use super::{abi, claims, headers, log, pull, upstream};
use crate::audit::{self, RequestInfo};
use crate::claims::absence_still_fenced;
use crate::config::{Mode, OnUpstreamError};
use crate::deletes::tag_delete;
use crate::digest::Digest;
use crate::metrics::{Counter, Refusal};
use crate::oci_error::OciError;
use crate::request::{classify, may_name_manifests, refuses_method_override, Reference, Request, METHOD_OVERRIDE_HEADERS};
use crate::verdict::{judge, read_head, Current, Verdict};
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;
use serde_json::json;
use std::rc::Rc;

pub struct Filter {
    worker: Option<Rc<Worker>>,
    state: State,
    /// The tag in a push's path. Only it is learned from a `201`: a registry may ignore
    /// `?tag=` (distribution 2.8 does) and still answer `201`.
    path_tag: Option<String>,
    /// Who sent a checked request, read in the headers phase for the audit record (Envoy
    /// refuses header reads in later phases with BadArgument, which the SDK turns into a panic).
    request: RequestInfo,
}

enum State {
    /// Nothing to do for this request.
    Pass,
    /// A push to at least one immutable tag, being checked.
    Check(Box<Push>),
    /// Let through; learn the tags' digest from the registry's answer, and commit (2xx) or
    /// release (anything else, or a stream that dies first) the tags' claims.
    Allowed { repository: String, tags: Vec<String>, claims: Vec<TagClaim> },
    /// A delete by digest, being checked against the repository's immutable tags.
    Delete(Box<DigestDelete>),
    /// A delete by digest let through; on success the map forgets tags pointing to it.
    Deleting { repository: String, digest: Digest },
    /// Answered locally.
    Done,
    /// A read of an immutable tag with `pin_immutable_pulls`; `pinned`: sent by digest.
    Pull { repository: String, tag: String, pinned: bool },
}

struct Push {
    repository: String,
    tags: Vec<TagCheck>,
    /// The complete request body, once it has arrived.
    body: Option<Vec<u8>>,
    headers_paused: bool,
    /// The client's `:authority` and credentials, for HEADs sent after the headers phase.
    authority: Option<String>,
    authorization: Option<String>,
}

/// A tag's process-wide claim (see `claims`), taken just before the push is let through.
struct TagClaim {
    tag: String,
    digest: String,
    /// Whether this push holds the claim (and so must release it if the push fails).
    held: bool,
}

struct TagCheck {
    tag: String,
    reason: String,
    lookup: Lookup,
    /// What the lookup says is known to hold since then: the map entry's learning time, or
    /// when the HEAD was sent. An "absent" older than the claim TTL is not trusted.
    since_ms: u64,
    /// The lookup came from the map, not from the registry.
    from_map: bool,
}

enum Lookup {
    Pending(u32),
    Known(Option<Digest>),
}

impl Push {
    fn pending(&self) -> bool {
        self.tags.iter().any(|t| matches!(t.lookup, Lookup::Pending(_)))
    }
}

/// What to do with the request once a decision is taken.
enum Outcome {
    /// Let through: one counter per tag (new tag or same digest), and the claims taken.
    Allow(Vec<Counter>, Vec<TagClaim>),
    Refuse(OciError, Vec<(&'static str, String)>),
}

impl Filter {
    pub fn new(worker: Option<Rc<Worker>>) -> Filter {
        Filter { worker, state: State::Pass, path_tag: None, request: RequestInfo::default() }
    }

    fn count(&self, counter: Counter) {
        if let Some(w) = &self.worker {
            w.metrics.add(counter);
        }
    }

    /// The single refusal path. Counts the refusal, logs one JSON record of it, then answers
    /// with `err` (enforce mode: returns `Pause`) or lets the request through unchanged (audit
    /// mode: returns `Continue`). Return the result from a request callback; from a call
    /// response, `Continue` means the caller must resume the request.
    fn respond(&mut self, err: &OciError, extra: &[(&str, String)]) -> Action {
        let kind = Refusal::of(self.request.method.as_deref().unwrap_or_default(), err.status, &err.code);
        let mode = self.worker.as_ref().map_or(Mode::Enforce, |w| w.config.mode);
        let rule = match (&self.worker, audit::subject(err)) {
            (Some(w), Some((repository, tag))) => Some(w.config.policy.decide(repository, tag).reason),
            _ => None,
        };
        // Warn: a refused write deserves an operator's eye; it shows at Envoy's default level.
        log::warn(&audit::refusal_record(mode, kind, err, rule.as_deref(), &self.request).to_string());
        self.count(kind.counter());
        if mode == Mode::Audit {
            self.count(Counter::AuditWouldRefuse);
            // Let it through as an allowed push would go, so the map learns the new digest.
            self.state = match std::mem::replace(&mut self.state, State::Pass) {
                State::Check(push) => State::Allowed {
                    repository: push.repository,
                    tags: push.tags.into_iter().map(|t| t.tag).collect(),
                    claims: Vec::new(),
                },
                other => other,
            };
            return Action::Continue;
        }
        let mut hdrs: Vec<(&str, &str)> = vec![("content-type", "application/json")];
        hdrs.extend(extra.iter().map(|(k, v)| (*k, v.as_str())));
        if let Err(s) = abi::send_local_response(u32::from(err.status), &hdrs, err.body().as_bytes()) {
            log::error(&format!("immutable-tags: cannot send local reply ({s:?})"));
        }
        self.state = State::Done;
        Action::Pause
    }

    fn on_put(&mut self, worker: &Worker, repository: String, tags: Vec<String>, end_of_stream: bool) -> Action {
        let mut checks = Vec::new();
        for tag in tags {
            let d = worker.config.policy.decide(&repository, &tag);
            if d.immutable {
                checks.push((tag, d.reason));
            } else {
                worker.metrics.add(Counter::PushesMutable);
            }
        }
        if checks.is_empty() {
            return Action::Continue;
        }
        let now = headers::now_ms();
        let mut push = Push {
            repository,
            tags: Vec::new(),
            body: end_of_stream.then(Vec::new),
            headers_paused: false,
            authority: headers::request(":authority"),
            authorization: headers::request("authorization"),
        };
        for (tag, reason) in checks {
            let cached = worker.cache.try_borrow_mut().ok().and_then(|mut c| c.get_since(&push.repository, &tag, now));
            worker.metrics.add(if cached.is_some() { Counter::MapHits } else { Counter::MapMisses });
            let since_ms = cached.as_ref().map_or(now, |(_, learned)| *learned);
            let from_map = cached.is_some();
            let lookup = match cached {
                Some((d, _)) => Lookup::Known(Some(d)),
                None => match send_head(worker, &push, &tag) {
                    Ok(token) => Lookup::Pending(token),
                    Err(why) if worker.config.on_upstream_error == OnUpstreamError::Allow => {
                        log::warn(&format!("immutable-tags: {}:{tag}: {why}; allowed (on_upstream_error = allow)", push.repository));
                        Lookup::Known(None)
                    }
                    Err(why) => return self.respond(&OciError::upstream(&push.repository, &tag, &why), &[]),
                },
            };
            push.tags.push(TagCheck { tag, reason, lookup, since_ms, from_map });
        }
        self.state = State::Check(Box::new(push));
        if let Some(action) = self.try_decide() {
            return action;
        }
        // Waiting: for a HEAD (hold the headers until it answers), or only for the body.
        match &mut self.state {
            State::Check(push) if push.pending() => {
                push.headers_paused = true;
                Action::Pause
            }
            _ => Action::Continue,
        }
    }

    /// Decides if both digests are known. `None`: still waiting. The returned action is for a
    /// request callback; from a call response, `Continue` means resume.
    fn try_decide(&mut self) -> Option<Action> {
        let State::Check(push) = &self.state else { return None };
        if push.pending() {
            return None;
        }
        let Some(body) = &push.body else { return None };
        let worker = self.worker.clone()?;
        // A refusal rests on the registry's own word, asked with the client's credentials: a
        // map entry that disagrees with the push is checked again first (it may be stale, and
        // a 409 from the map alone would tell an unauthenticated client the tag's digest).
        let stale: Vec<usize> = push
            .tags
            .iter()
            .enumerate()
            .filter(|(_, t)| t.from_map && matches!(&t.lookup, Lookup::Known(Some(d)) if *d != Digest::of(d.algorithm(), body)))
            .map(|(i, _)| i)
            .collect();
        if !stale.is_empty() {
            let State::Check(push) = &mut self.state else { return None };
            for i in stale {
                let Some(tag) = push.tags.get(i).map(|t| t.tag.clone()) else { continue };
                match send_head(&worker, push, &tag) {
                    Ok(token) => {
                        if let Some(t) = push.tags.get_mut(i) {
                            (t.lookup, t.from_map, t.since_ms) = (Lookup::Pending(token), false, headers::now_ms());
                        }
                    }
                    Err(why) => {
                        let err = OciError::upstream(&push.repository, &tag, &why);
                        return Some(self.respond(&err, &[]));
                    }
                }
            }
            return None;
        }
        let State::Check(push) = &self.state else { return None };
        let Some(body) = &push.body else { return None };
        match decide(&worker, push, body) {
            Outcome::Allow(counters, claims) => {
                for c in counters {
                    worker.metrics.add(c);
                }
                let tags = push.tags.iter().map(|t| t.tag.clone()).collect();
                self.state = State::Allowed { repository: push.repository.clone(), tags, claims };
                Some(Action::Continue)
            }
            Outcome::Refuse(err, extra) => Some(self.respond(&err, &extra)),
        }
    }

    fn body_complete(&mut self, size: usize) -> Action {
        let State::Check(push) = &mut self.state else { return Action::Continue };
        if push.body.is_some() {
            return Action::Continue;
        }
        match headers::request_body(size) {
            Some(b) => push.body = Some(b),
            None => {
                let (repo, tag) = (push.repository.clone(), first_tag(push));
                let err = OciError::new(500, "MANIFEST_INVALID", "The filter could not read the manifest body", json!({"repository": repo, "tag": tag}));
                return self.respond(&err, &[]);
            }
        }
        // Still waiting for a HEAD: the call response decides and resumes.
        self.try_decide().unwrap_or(Action::Pause)
    }
}

impl Filter {
    fn on_delete(&mut self, worker: &Worker, repository: String, reference: Reference) -> Action {
        let config = &worker.config;
        if !config.deletes.protect {
            return Action::Continue;
        }
        match reference {
            Reference::Tag(tag) => match tag_delete(&config.policy, &config.error_code, &repository, &tag) {
                Some(err) => self.respond(&err, &[]),
                None => Action::Continue,
            },
            // No tag of this repository can be immutable: no listing to pay for.
            Reference::Digest(_) if !config.policy.may_protect_in(&repository) => Action::Continue,
            Reference::Digest(digest) => {
                let (check, next) = DigestDelete::start(worker, &repository, digest);
                self.state = State::Delete(Box::new(check));
                self.delete_next(next, false)
            }
        }
    }

    /// Acts on a digest delete's next step. From a call response, letting it go means resuming.
    fn delete_next(&mut self, next: Next, from_call: bool) -> Action {
        let action = match next {
            Next::Wait => return Action::Pause,
            Next::Allow => Action::Continue,
            Next::Refuse(err, extra) => self.respond(&err, &extra),
        };
        if action == Action::Continue {
            if let State::Delete(d) = &self.state {
                self.state = State::Deleting { repository: d.repository().to_string(), digest: d.digest().clone() };
            }
            if from_call {
                resume_request("delete check");
            }
        }
        action
    }
}

fn resume_request(after: &str) {
    if let Err(s) = abi::resume_request() {
        log::error(&format!("immutable-tags: cannot resume request after {after} ({s:?})"));
    }
}

/// Sends the HEAD that learns `tag`'s current digest, counted.
fn send_head(worker: &Worker, push: &Push, tag: &str) -> Result<u32, String> {
    let (authority, authorization) = (push.authority.as_deref(), push.authorization.as_deref());
    let token = upstream::head_manifest(&worker.config.upstream, authority, authorization, &push.repository, tag)?;
    worker.metrics.add(Counter::HeadCallsDispatched);
    Ok(token)
}

fn first_tag(push: &Push) -> String {
    push.tags.first().map(|t| t.tag.clone()).unwrap_or_default()
}

fn decide(worker: &Worker, push: &Push, body: &[u8]) -> Outcome {
    let sha256 = Digest::sha256(body);
    let mut counters = Vec::new();
    let mut allowed = Vec::new();
    for t in &push.tags {
        let Lookup::Known(current) = &t.lookup else { continue };
        let pushed = match current {
            Some(c) if c.algorithm() != sha256.algorithm() => Digest::of(c.algorithm(), body),
            _ => sha256.clone(),
        };
        match judge(current.as_ref(), &pushed) {
            Verdict::AllowNew => counters.push(Counter::PushesAllowedNewTag),
            Verdict::AllowSame => counters.push(Counter::PushesAllowedSameDigest),
            Verdict::Overwrite { current } => {
                let err = OciError::new(
                    409,
                    &worker.config.error_code,
                    format!("Tag '{}' is immutable and cannot be overwritten", t.tag),
                    json!({
                        "repository": push.repository,
                        "tag": t.tag,
                        "current_digest": current.to_string(),
                        "pushed_digest": pushed.to_string(),
                        "reason": t.reason,
                    }),
                );
                return Outcome::Refuse(err, Vec::new());
            }
        }
        allowed.push((t, current.is_none(), pushed.to_string()));
    }
    match claim_all(worker, push, allowed) {
        Outcome::Allow(_, claims) => Outcome::Allow(counters, claims),
        refused => refused,
    }
}

/// Claims every tag of a push about to be let through (see `claims`); on any refusal, gives
/// back the claims already taken and refuses the whole push.
fn claim_all(worker: &Worker, push: &Push, allowed: Vec<(&TagCheck, bool, String)>) -> Outcome {
    let settings = &worker.config.claims;
    let now = headers::now_ms();
    let mut taken: Vec<TagClaim> = Vec::new();
    let give_back = |taken: &[TagClaim]| {
        for c in taken.iter().filter(|c| c.held) {
            claims::release(settings, &push.repository, &c.tag, &c.digest, now);
        }
    };
    for (t, absent, pushed) in allowed {
        if absent && !absence_still_fenced(t.since_ms, now, settings.ttl_ms) {
            give_back(&taken);
            let why = "the push took longer than claims.ttl_seconds; retry it";
            return Outcome::Refuse(OciError::upstream(&push.repository, &t.tag, why), Vec::new());
        }
        match claims::claim(settings, &push.repository, &t.tag, &pushed, now, t.since_ms) {
            claims::Claimed::Proceed { held } => taken.push(TagClaim { tag: t.tag.clone(), digest: pushed, held }),
            claims::Claimed::Conflict { digest, committed } => {
                give_back(&taken);
                let mut detail = json!({
                    "repository": push.repository,
                    "tag": t.tag,
                    "current_digest": digest,
                    "pushed_digest": pushed,
                    "reason": t.reason,
                });
                if !committed {
                    // The registry does not hold it yet: say why it is refused all the same.
                    if let Some(d) = detail.as_object_mut() {
                        d.insert("in_flight".into(), json!(format!("a push of tag '{}' with digest {digest} is in flight", t.tag)));
                    }
                }
                let msg = format!("Tag '{}' is immutable and cannot be overwritten", t.tag);
                let err = OciError::new(409, &worker.config.error_code, msg, detail);
                log::info(&format!(
                    "immutable-tags: refused concurrent push of {}:{} ({pushed}; claimed by {digest})",
                    push.repository, t.tag
                ));
                return Outcome::Refuse(err, Vec::new());
            }
            claims::Claimed::Unavailable(why) => {
                give_back(&taken);
                log::warn(&format!("immutable-tags: {}:{}: {why}", push.repository, t.tag));
                return Outcome::Refuse(OciError::upstream(&push.repository, &t.tag, &why), Vec::new());
            }
        }
    }
    Outcome::Allow(Vec::new(), taken)
}

/// Commits (the registry stored the push) or releases a push's claims.
/// Settles a push's claims once the registry answered, or the stream died (`stored`: None).
/// Only the path's tag is known to be written by a 2xx (a registry may ignore `?tag=`): its
/// record is committed with the digest stored; every other claim held is released.
fn settle(worker: &Worker, repository: &str, tag_claims: &[TagClaim], stored: Option<(&str, &str)>) {
    let now = headers::now_ms();
    let settings = &worker.config.claims;
    if let Some((tag, digest)) = stored {
        claims::commit(settings, repository, tag, digest, now);
    }
    for c in tag_claims.iter().filter(|c| c.held) {
        if stored.is_some_and(|(tag, _)| tag == c.tag) {
            continue; // the commit replaced our claim
        }
        claims::release(settings, repository, &c.tag, &c.digest, now);
    }
}

impl Context for Filter {
    /// The stream ended. A push let through that never saw the registry's answer (client gone,
    /// upstream reset) gives its claims back now rather than at expiry.
    fn on_done(&mut self) -> bool {
        if let (State::Allowed { repository, claims, .. }, Some(worker)) = (&self.state, self.worker.clone()) {
            settle(&worker, repository, claims, None);
            self.state = State::Pass;
        }
        true
    }

    fn on_http_call_response(&mut self, token: u32, _headers: usize, body: usize, _trailers: usize) {
        let Some(worker) = self.worker.clone() else { return };
        if let State::Delete(d) = &mut self.state {
            let next = d.on_response(&worker, token, body);
            self.delete_next(next, true);
            return;
        }
        let State::Check(push) = &mut self.state else { return };
        let Some(check) = push.tags.iter_mut().find(|t| matches!(t.lookup, Lookup::Pending(x) if x == token)) else {
            return;
        };
        let status = headers::call_response(":status");
        let digest = headers::call_response("docker-content-digest");
        match read_head(status.as_deref(), digest.as_deref()) {
            Current::Present(d) => {
                if let Ok(mut c) = worker.cache.try_borrow_mut() {
                    c.put(&push.repository, &check.tag, d.clone(), headers::now_ms());
                }
                check.lookup = Lookup::Known(Some(d));
            }
            Current::Absent => check.lookup = Lookup::Known(None),
            Current::AuthRequired { status } => {
                let challenge = headers::call_response("www-authenticate");
                let (code, msg) = if status == 401 {
                    ("UNAUTHORIZED", "authentication required")
                } else {
                    ("DENIED", "requested access to the resource is denied")
                };
                let err = OciError::new(status, code, msg, json!({"repository": push.repository, "tag": check.tag}));
                let extra: Vec<(&str, String)> = challenge.map(|c| ("www-authenticate", c)).into_iter().collect();
                if let Action::Continue = self.respond(&err, &extra) {
                    resume_request("audit");
                }
                return;
            }
            Current::Unknown { reason } if worker.config.on_upstream_error == OnUpstreamError::Allow => {
                log::warn(&format!("immutable-tags: {}:{}: {reason}; allowed (on_upstream_error = allow)", push.repository, check.tag));
                check.lookup = Lookup::Known(None);
            }
            Current::Unknown { reason } => {
                let err = OciError::upstream(&push.repository, &check.tag, &reason);
                // The request is paused while a HEAD is in flight: audit mode resumes it.
                if let Action::Continue = self.respond(&err, &[]) {
                    resume_request("audit");
                }
                return;
            }
        }
        if push.pending() {
            return;
        }
        if push.body.is_none() {
            // Without the body yet: let the headers go (Envoy then replays the held body to us).
            if push.headers_paused {
                push.headers_paused = false;
                resume_request("HEAD");
            }
            return;
        }
        if let Some(Action::Continue) = self.try_decide() {
            resume_request("decision");
        }
    }
}

impl HttpContext for Filter {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        self.count(Counter::RequestsSeen);
        let path = headers::request(":path").unwrap_or_default();
        // Most traffic (blobs, uploads, /v2/) ends here, after one header read.
        if !may_name_manifests(&path) {
            return Action::Continue;
        }
        let method = headers::request(":method").unwrap_or_default();
        if METHOD_OVERRIDE_HEADERS.iter().any(|h| headers::request(h).is_some()) && refuses_method_override(&path) {
            let msg = "Method override headers are not accepted on manifest routes";
            return self.respond(&OciError::unclassifiable("UNSUPPORTED", msg, &path), &[]);
        }
        let request = classify(&method, &path);
        if matches!(request, Request::ManifestPut { .. } | Request::ManifestDelete { .. } | Request::Invalid(_)) {
            self.count(Counter::RequestsChecked);
            self.request = RequestInfo {
                method: Some(method),
                path: Some(path.clone()),
                request_id: headers::request("x-request-id"),
                client_address: headers::property(&["source", "address"]),
                user_agent: headers::request("user-agent"),
            };
        }
        match request {
            Request::ManifestRead { repository, reference: Reference::Tag(tag) } => {
                if let Some(worker) = self.worker.clone().filter(|w| w.config.pin_immutable_pulls) {
                    if let Some(pinned) = pull::on_read(&worker, &repository, &tag, &path) {
                        self.state = State::Pull { repository, tag, pinned };
                    }
                }
                Action::Continue
            }
            Request::Other | Request::ManifestRead { .. } => Action::Continue,
            Request::Invalid(err) => self.respond(&err, &[]),
            Request::ManifestPut { repository, reference, tags } => {
                if let Reference::Tag(t) = reference {
                    self.path_tag = Some(t);
                }
                let Some(worker) = self.worker.clone() else {
                    let err = OciError::new(503, "UNAVAILABLE", "immutable-tags has no valid configuration", json!({}));
                    return self.respond(&err, &[]);
                };
                self.on_put(&worker, repository, tags, end_of_stream)
            }
            Request::ManifestDelete { repository, reference } => {
                let Some(worker) = self.worker.clone() else {
                    let err = OciError::new(503, "UNAVAILABLE", "immutable-tags has no valid configuration", json!({}));
                    return self.respond(&err, &[]);
                };
                self.on_delete(&worker, repository, reference)
            }
        }
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        let max = self.worker.as_ref().map_or(usize::MAX, |w| w.config.max_manifest_bytes);
        match &self.state {
            // Refused here rather than left to Envoy's buffer limit: a body that outgrows the
            // buffer while the headers are held meets flow control, not a 413, and would hang.
            State::Check(push) if body_size > max => {
                let detail = json!({"repository": push.repository, "tag": first_tag(push), "limit": max});
                let msg = format!("The manifest is larger than max_manifest_bytes ({max} bytes)");
                self.respond(&OciError::new(413, "SIZE_INVALID", msg, detail), &[])
            }
            State::Check(_) if end_of_stream => self.body_complete(body_size),
            // Buffer until the whole manifest is here.
            State::Check(_) => Action::Pause,
            State::Done | State::Delete(_) => Action::Pause,
            _ => Action::Continue,
        }
    }

    fn on_http_request_trailers(&mut self, _num_trailers: usize) -> Action {
        match &self.state {
            // Trailers end the body.
            State::Check(_) => self.body_complete(usize::MAX),
            State::Done | State::Delete(_) => Action::Pause,
            _ => Action::Continue,
        }
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let Some(worker) = self.worker.clone() else { return Action::Continue };
        if let State::Pull { repository, tag, pinned } = &self.state {
            pull::on_response(&worker, repository, tag, *pinned);
            return Action::Continue;
        }
        if let State::Deleting { repository, digest } = &self.state {
            // The manifest is gone, and with it every tag that pointed to it.
            if headers::response(":status").is_some_and(|s| s.starts_with('2')) {
                if let Ok(mut cache) = worker.cache.try_borrow_mut() {
                    cache.forget_digest(repository, digest);
                }
            }
            return Action::Continue;
        }
        let State::Allowed { repository, tags, claims } = &self.state else { return Action::Continue };
        let status = headers::response(":status");
        let digest = headers::response("docker-content-digest").and_then(|d| Digest::parse(d.trim()));
        let stored_ok = status.as_deref().is_some_and(|s| s.len() == 3 && s.starts_with('2'));
        // The digest the path's tag now holds: the registry's word, else the one we claimed.
        let path_tag = self.path_tag.as_deref().filter(|t| tags.iter().any(|x| x == t));
        let stored_digest = digest.as_ref().map(Digest::to_string).or_else(|| {
            claims.iter().find(|c| Some(c.tag.as_str()) == path_tag).map(|c| c.digest.clone())
        });
        let stored = match (stored_ok, path_tag, stored_digest.as_deref()) {
            (true, Some(t), Some(d)) => Some((t, d)),
            _ => None,
        };
        settle(&worker, repository, claims, stored);
        if let Ok(mut cache) = worker.cache.try_borrow_mut() {
            match (status.as_deref(), digest) {
                (Some("201"), Some(d)) => {
                    let now = headers::now_ms();
                    for t in tags {
                        if self.path_tag.as_ref() == Some(t) {
                            cache.put(repository, t, d.clone(), now);
                        } else {
                            cache.forget(repository, t);
                        }
                    }
                }
                _ => {
                    for t in tags {
                        cache.forget(repository, t);
                    }
                }
            }
        }
        self.state = State::Pass;
        Action::Continue
    }
}
