//! The HTTP context: a small state machine around one request.
//!
//! A push to an immutable tag needs two things: the tag's current digest (map or HEAD) and the
//! pushed manifest's digest (the whole body). Headers are paused while a HEAD is in flight and
//! resumed when it answers. Without `allow_on_headers_stop_iteration` Envoy holds the body back
//! until then and replays it to `on_http_request_body`; with it the body may arrive first. Either
//! way the decision is taken once both are known, in whichever callback completes the pair.
use super::root::Worker;
use super::{headers, log, pull, upstream};
use crate::digest::Digest;
use crate::oci_error::OciError;
use crate::request::{classify, Reference, Request};
use crate::verdict::{judge, read_head, Current, Verdict};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;
use serde_json::json;
use std::rc::Rc;

pub struct Filter {
    worker: Option<Rc<Worker>>,
    state: State,
}

enum State {
    /// Nothing to do for this request.
    Pass,
    /// A push to at least one immutable tag, being checked.
    Check(Box<Push>),
    /// Let through; learn the tags' digest from the registry's answer.
    Allowed { repository: String, tags: Vec<String> },
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
}

struct TagCheck {
    tag: String,
    reason: String,
    lookup: Lookup,
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
    Allow,
    Refuse(OciError, Vec<(&'static str, String)>),
}

impl Filter {
    pub fn new(worker: Option<Rc<Worker>>) -> Filter {
        Filter { worker, state: State::Pass }
    }

    fn respond(&mut self, err: &OciError, extra: &[(&str, String)]) {
        let mut hdrs: Vec<(&str, &str)> = vec![("content-type", "application/json")];
        hdrs.extend(extra.iter().map(|(k, v)| (*k, v.as_str())));
        if let Err(s) = hostcalls::send_http_response(u32::from(err.status), hdrs, Some(err.body().as_bytes())) {
            log::error(&format!("immutable-tags: cannot send local reply ({s:?})"));
        }
        self.state = State::Done;
    }

    fn on_put(&mut self, worker: &Worker, repository: String, tags: Vec<String>, end_of_stream: bool) -> Action {
        let mut checks = Vec::new();
        for tag in tags {
            let d = worker.config.policy.decide(&repository, &tag);
            if d.immutable {
                checks.push((tag, d.reason));
            }
        }
        if checks.is_empty() {
            return Action::Continue;
        }
        let authority = headers::request(":authority");
        let authorization = headers::request("authorization");
        let now = headers::now_ms();
        let mut push = Push { repository, tags: Vec::new(), body: end_of_stream.then(Vec::new), headers_paused: false };
        for (tag, reason) in checks {
            let cached = worker.cache.try_borrow_mut().ok().and_then(|mut c| c.get(&push.repository, &tag, now));
            let lookup = match cached {
                Some(d) => Lookup::Known(Some(d)),
                None => match upstream::head_manifest(
                    &worker.config.upstream,
                    authority.as_deref(),
                    authorization.as_deref(),
                    &push.repository,
                    &tag,
                ) {
                    Ok(token) => Lookup::Pending(token),
                    Err(why) => {
                        log::warn(&format!("immutable-tags: {why}"));
                        self.respond(&OciError::upstream(&push.repository, &tag, &why), &[]);
                        return Action::Pause;
                    }
                },
            };
            push.tags.push(TagCheck { tag, reason, lookup });
        }
        if push.pending() {
            push.headers_paused = true;
            self.state = State::Check(Box::new(push));
            return Action::Pause;
        }
        self.state = State::Check(Box::new(push));
        self.try_decide().unwrap_or(Action::Continue)
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
        match decide(&worker, push, body) {
            Outcome::Allow => {
                let tags = push.tags.iter().map(|t| t.tag.clone()).collect();
                self.state = State::Allowed { repository: push.repository.clone(), tags };
                Some(Action::Continue)
            }
            Outcome::Refuse(err, extra) => {
                self.respond(&err, &extra);
                Some(Action::Pause)
            }
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
                self.respond(&err, &[]);
                return Action::Pause;
            }
        }
        // Still waiting for a HEAD: the call response decides and resumes.
        self.try_decide().unwrap_or(Action::Pause)
    }
}

fn first_tag(push: &Push) -> String {
    push.tags.first().map(|t| t.tag.clone()).unwrap_or_default()
}

fn decide(worker: &Worker, push: &Push, body: &[u8]) -> Outcome {
    let sha256 = Digest::sha256(body);
    for t in &push.tags {
        let Lookup::Known(current) = &t.lookup else { continue };
        let pushed = match current {
            Some(c) if c.algorithm() != sha256.algorithm() => Digest::of(c.algorithm(), body),
            _ => sha256.clone(),
        };
        if let Verdict::Overwrite { current } = judge(current.as_ref(), &pushed) {
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
            log::info(&format!(
                "immutable-tags: refused overwrite of {}:{} ({} -> {}): {}",
                push.repository, t.tag, current, pushed, t.reason
            ));
            return Outcome::Refuse(err, Vec::new());
        }
    }
    Outcome::Allow
}

impl Context for Filter {
    fn on_http_call_response(&mut self, token: u32, _headers: usize, _body: usize, _trailers: usize) {
        let Some(worker) = self.worker.clone() else { return };
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
                self.respond(&err, &extra);
                return;
            }
            Current::Unknown { reason } => {
                log::warn(&format!("immutable-tags: {}:{}: {reason}", push.repository, check.tag));
                let err = OciError::upstream(&push.repository, &check.tag, &reason);
                self.respond(&err, &[]);
                return;
            }
        }
        if push.pending() {
            return;
        }
        let resume = |what: &str| {
            if let Err(s) = hostcalls::resume_http_request() {
                log::error(&format!("immutable-tags: cannot resume request after {what} ({s:?})"));
            }
        };
        if push.body.is_none() {
            // Without the body yet: let the headers go (Envoy then replays the held body to us).
            if push.headers_paused {
                push.headers_paused = false;
                resume("HEAD");
            }
            return;
        }
        if let Some(Action::Continue) = self.try_decide() {
            resume("decision");
        }
    }
}

impl HttpContext for Filter {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        let method = headers::request(":method").unwrap_or_default();
        let path = headers::request(":path").unwrap_or_default();
        match classify(&method, &path) {
            Request::ManifestRead { repository, reference: Reference::Tag(tag) } => {
                if let Some(worker) = self.worker.clone().filter(|w| w.config.pin_immutable_pulls) {
                    if let Some(pinned) = pull::on_read(&worker, &repository, &tag, &path) {
                        self.state = State::Pull { repository, tag, pinned };
                    }
                }
                Action::Continue
            }
            Request::Other | Request::ManifestRead { .. } | Request::ManifestDelete { .. } => Action::Continue,
            Request::Invalid(err) => {
                self.respond(&err, &[]);
                Action::Pause
            }
            Request::ManifestPut { repository, tags, .. } => {
                let Some(worker) = self.worker.clone() else {
                    let err = OciError::new(503, "UNAVAILABLE", "immutable-tags has no valid configuration", json!({}));
                    self.respond(&err, &[]);
                    return Action::Pause;
                };
                self.on_put(&worker, repository, tags, end_of_stream)
            }
        }
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        match &self.state {
            State::Check(_) if end_of_stream => self.body_complete(body_size),
            // Buffer until the whole manifest is here.
            State::Check(_) => Action::Pause,
            State::Done => Action::Pause,
            _ => Action::Continue,
        }
    }

    fn on_http_request_trailers(&mut self, _num_trailers: usize) -> Action {
        match &self.state {
            // Trailers end the body.
            State::Check(_) => self.body_complete(usize::MAX),
            State::Done => Action::Pause,
            _ => Action::Continue,
        }
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let Some(worker) = &self.worker else { return Action::Continue };
        if let State::Pull { repository, tag, pinned } = &self.state {
            pull::on_response(worker, repository, tag, *pinned);
            return Action::Continue;
        }
        let State::Allowed { repository, tags } = &self.state else { return Action::Continue };
        let status = headers::response(":status");
        let digest = headers::response("docker-content-digest").and_then(|d| Digest::parse(d.trim()));
        if let Ok(mut cache) = worker.cache.try_borrow_mut() {
            match (status.as_deref(), digest) {
                (Some("201"), Some(d)) => {
                    let now = headers::now_ms();
                    for t in tags {
                        cache.put(repository, t, d.clone(), now);
                    }
                }
                _ => {
                    for t in tags {
                        cache.forget(repository, t);
                    }
                }
            }
        }
        Action::Continue
    }
}
