//! The HTTP filter's state machine, one instance per request, written against the small
//! [`host::Host`] interface: [`crate::proxy_wasm`] drives it from Envoy's proxy-wasm callbacks, and the
//! native tests drive it with a fake host. It classifies the request at its headers and hands
//! it to its flow: `push` (manifest writes), `delete` (deletes), `pull` (pinned reads); every
//! other request leaves after one header read.
//!
//! * [`push`], [`delete`], [`pull`]: one flow each, over the decisions in [`crate::verdict`].
//! * [`claims`]: one claim interface over two stores (shared data, etcd).
//! * [`break_glass`]: the grant flow, what a request asks, the registry probe, the windows.
//! * [`worker`]: what one worker's streams share (configuration, tag cache, counters, queues).
//! * [`upstream`]: the calls to the registry; [`host`]: the [`host::Host`] trait.
//! * `tests` (native only): the tests on the fake host, one file per topic.
pub mod break_glass;
pub mod claims;
pub mod delete;
pub mod host;
pub mod pull;
pub mod push;
pub mod upstream;
pub mod worker;

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests;

use crate::config::BlobDeletes;
use crate::config::{Config, Mode};
use crate::observability::audit::{self, RequestInfo};
use crate::observability::metrics::{Counter, Refusal};
use crate::oci::digest::Digest;
use crate::oci::error::OciError;
use crate::oci::request::{
    classify_with, may_name_blobs, may_name_manifests, query_overrides_method, Reference, Request,
    DEFAULT_MAX_TAGS_PER_PUSH, METHOD_OVERRIDE_HEADERS,
};
use crate::verdict::break_glass::Action as BgAction;
use crate::verdict::delete::tag_delete;
use break_glass::{self as bg, window, Asked, Cover, Covered, Granted};
use delete::DigestDelete;
use host::{Host, Level};
use push::Push;
use serde_json::{json, Value};
use std::rc::Rc;
use worker::Worker;

/// The response code details of a refusal (Envoy's `%RESPONSE_CODE_DETAILS%`): the filter
/// and the outcome, so access logs and traces tell its answers from the registry's.
pub fn details(status: u16) -> &'static str {
    match status {
        405 | 409 => "immutable_tags_refused",
        401 | 403 => "immutable_tags_unauthorized",
        500..=599 => "immutable_tags_unavailable",
        _ => "immutable_tags_invalid_request",
    }
}

/// Removes from the request every credential header break-glass strips (`Cookie`, API keys):
/// the error of the first removal that failed.
fn strip_credentials(h: &dyn Host, worker: &Option<Rc<Worker>>) -> Option<String> {
    let bg = worker.as_ref()?.config.break_glass.as_ref()?;
    let names = std::iter::once("cookie").chain(bg.credential_headers.iter().map(String::as_str));
    names.filter_map(|n| h.remove_request_header(n).err()).next()
}

/// What the flows leave to their worker beyond one request: with `claims.etcd`, the lease and
/// the root context's queue; writes and window takes whose client left, answered later through
/// the root. Defined here beside `State`, which holds the flows' types too, so that
/// [`worker`] holds it without importing the flows that take the worker (no import circle).
#[derive(Default)]
pub struct Pending {
    /// With `claims.etcd`: this worker's lease and the root context's queue.
    pub etcd: std::cell::RefCell<claims::etcd::State>,
    /// Windows being taken for requests that ended (`window::orphan_answer`).
    pub orphan_takes: std::cell::RefCell<Vec<window::Taking>>,
    /// Writes whose client left, waiting for the registry's answer (`push::orphan_answer`).
    pub orphans: std::cell::RefCell<Vec<Push>>,
}

impl Worker {
    /// A worker for `config`: `Worker::without_slots`, then the claim slots in shared data
    /// (unless claims live in etcd). Here rather than in [`worker`], which then imports no claim
    /// store (no import circle).
    pub fn new(host: &dyn Host, config: Config) -> Worker {
        let worker = Worker::without_slots(host, config);
        if worker.config.claims.etcd.is_none() {
            claims::shared_data::create_slots(host, &worker.config.claims);
        }
        worker
    }
}

/// What a request callback tells the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Continue,
    /// Hold the headers, or buffer the body chunk.
    Pause,
}

pub struct Filter {
    worker: Option<Rc<Worker>>,
    state: State,
    /// Who sent a checked request, read in the headers phase for the audit record (Envoy
    /// refuses header reads in later phases).
    request: RequestInfo,
    /// What a delete asks of break-glass, read at its headers.
    asked: Asked,
    /// The client's `:authority`, read at a checked write's headers (`Worker::map_key`).
    authority: Option<String>,
    /// A digest delete's fence (repository, digest, when taken), once its check ended: given
    /// back when the filter refuses the delete or the registry answers it; an unknown outcome
    /// leaves it to expire.
    fence: Option<(String, String, u64)>,
}

enum State {
    /// Nothing to do for this request.
    Pass,
    /// A push to at least one immutable tag: being checked, or written by the filter.
    Push(Box<Push>),
    /// A delete by digest, being checked against the repository's immutable tags.
    Delete(Box<DigestDelete>),
    /// A delete by digest let through; on success the map forgets tags pointing to it
    /// (`repository`: the map's key, `Worker::map_key`).
    Deleting { repository: String, digest: Digest },
    /// A read of an immutable tag with `pin_immutable_pulls`; `pinned`: sent by digest
    /// (`repository`: the map's key, `Worker::map_key`).
    Pull { repository: String, tag: String, pinned: bool },
    /// Answered locally.
    Done,
    /// A refused delete let through by break-glass, one override for each immutable tag it
    /// removes: logged when sent, and again with its outcome (`overridden`) (`repository`: the
    /// map's key, `Worker::map_key`).
    Overridden { repository: String, digest: Option<Digest>, granted: Vec<Granted>, before: Vec<u64> },
    /// A read of a tag carrying the reason header: a 2xx answer opens a break-glass window.
    Window { repository: String, tag: String },
    /// That answer, held while etcd writes the window.
    Opening(Box<window::Opening>),
    /// A refused delete, held while etcd says whether a window lifts the refusal for a tag.
    Unlocking(Box<Cover>, Box<OciError>),
}

/// Which callback a flow's next step is acted on from (named `Callback`, not `From`, so as not
/// to shadow the standard trait): a request callback answers with an `Action`; a call
/// response must resume the request itself.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Callback {
    Request,
    Call,
}

impl Filter {
    pub fn new(worker: Option<Rc<Worker>>) -> Filter {
        Filter {
            worker,
            state: State::Pass,
            request: RequestInfo::default(),
            asked: Asked::default(),
            authority: None,
            fence: None,
        }
    }

    fn count(&self, h: &dyn Host, counter: Counter) {
        if let Some(w) = &self.worker {
            w.count(h, counter);
        }
    }

    /// The first look at a request, before any state exists for it: its path, if it may name
    /// manifests, or names blobs with a delete or a method override. Most traffic (blobs,
    /// uploads, `/v2/`) is ordinary (`None`): it ends here, after a few header reads, and the caller counts it (`Counter::RequestsSeen`), in batches if
    /// it likes: on Istio's path this runs for every request, and each host call costs.
    /// `Some(Err(why))`: the host would not give `:path`; the request cannot be judged, so
    /// `on_request_headers` refuses it (see the rule on [`Host`]).
    pub fn first_look(h: &dyn Host) -> Option<Result<String, String>> {
        // Only the filter says what a request was before it rewrote it: a client's own copy of
        // that header goes (a failure here leaves at worst a false log line on a request the
        // filter does not rewrite: a push sets the header or is refused).
        let _ = h.remove_request_header(push::METHOD_HEADER);
        let path = match h.read_request_header(":path") {
            Ok(path) => path.unwrap_or_default(),
            Err(why) => return Some(Err(why)),
        };
        if may_name_manifests(&path) {
            return Some(Ok(path));
        }
        // On blob paths only: a delete (an unreadable method is looked at closer), or a method
        // override, which an intermediary could turn into a delete (refused below).
        let judge = may_name_blobs(&path)
            && (h
                .read_request_header(":method")
                .map_or(true, |m| m.map_or(true, |m| m.eq_ignore_ascii_case("DELETE")))
                || method_overridden(h)
                || query_overrides_method(&path));
        judge.then_some(Ok(path))
    }

    /// A request that may name manifests (`path`, from [`Filter::first_look`]) at its headers.
    pub fn on_request_headers(
        &mut self,
        h: &dyn Host,
        path: Result<String, String>,
        end_of_stream: bool,
    ) -> Action {
        self.count(h, Counter::RequestsSeen);
        // A request whose path or method cannot be read may be a write: refused, never passed.
        let (path, method) = match (path, h.read_request_header(":method")) {
            (Ok(path), Ok(method)) => (path, method.unwrap_or_default()),
            (Err(why), _) => return self.unreadable(h, ":path", &why),
            (_, Err(why)) => return self.unreadable(h, ":method", &why),
        };
        // Every path here may name manifests or blobs, where the verdict depends on the method.
        if method_overridden(h) || query_overrides_method(&path) {
            let msg = "Method override headers (X-HTTP-Method-Override, X-HTTP-Method, X-Method-Override) and ?_method= are not accepted on manifest or blob routes";
            return self.refuse(
                h,
                &OciError::unclassifiable("UNSUPPORTED", msg, &path),
                &[],
                Callback::Request,
            );
        }
        let max_tags = self.worker.as_ref().map_or(DEFAULT_MAX_TAGS_PER_PUSH, |w| w.config.max_tags_per_push);
        let request = classify_with(&method, &path, max_tags);
        if matches!(
            request,
            Request::ManifestPut { .. }
                | Request::ManifestDelete { .. }
                | Request::BlobDelete { .. }
                | Request::Invalid(_)
        ) {
            self.count(h, Counter::RequestsChecked);
            self.request = RequestInfo {
                method: Some(method),
                path: Some(path.clone()),
                request_id: h.request_header("x-request-id"),
                client_address: h.property(&["source", "address"]),
                user_agent: h.request_header("user-agent"),
            };
            self.authority = h.request_header(":authority");
        }
        // A write the filter cannot judge is refused whether or not it has a configuration.
        if let Request::Invalid(err) = &request {
            return self.refuse(h, err, &[], Callback::Request);
        }
        let needs_worker = matches!(
            request,
            Request::ManifestPut { .. } | Request::ManifestDelete { .. } | Request::BlobDelete { .. }
        );
        let Some(worker) = self.worker.clone() else {
            if !needs_worker {
                return Action::Continue;
            }
            let err =
                OciError::new(503, "UNAVAILABLE", "immutable-tags has no valid configuration", json!({}));
            return self.refuse(h, &err, &[], Callback::Request);
        };
        if matches!(request, Request::ManifestRead { reference: Reference::Tag(_), .. })
            && worker.config.break_glass.is_some()
        {
            self.asked = Asked::read(&worker, &|n| h.request_header(n)).verify(h, &worker);
            if let (Some(_), Request::ManifestRead { repository, reference: Reference::Tag(tag) }) =
                (&self.asked.reason, &request)
            {
                self.state = State::Window { repository: repository.clone(), tag: tag.clone() };
                return Action::Continue;
            }
        }
        match request {
            Request::ManifestRead { repository, reference: Reference::Tag(tag) }
                if worker.config.pin_immutable_pulls =>
            {
                let key = worker.map_key(&repository, h.request_header(":authority").as_deref());
                if let Some(pinned) = pull::on_read(h, &worker, &repository, &key, &tag, &path) {
                    self.state = State::Pull { repository: key, tag, pinned };
                }
                Action::Continue
            }
            Request::Other | Request::ManifestRead { .. } => Action::Continue,
            // Refused above.
            Request::Invalid(err) => self.refuse(h, &err, &[], Callback::Request),
            Request::ManifestPut { repository, reference, tags } => {
                self.on_put(h, &worker, repository, reference, tags, end_of_stream)
            }
            Request::ManifestDelete { repository, reference } => {
                self.asked = Asked::read(&worker, &|n| h.request_header(n)).verify(h, &worker);
                self.on_delete(h, &worker, repository, reference)
            }
            Request::BlobDelete { repository } => self.on_blob_delete(h, &worker, &repository),
        }
    }

    /// A blob delete (`deletes.blobs`): unlinking a layer of an image behind an immutable tag
    /// would make it unpullable, and the registry's garbage collection is the way blobs go.
    fn on_blob_delete(&mut self, h: &dyn Host, worker: &Worker, repository: &str) -> Action {
        let allowed = match worker.config.deletes.blobs {
            BlobDeletes::Allow => true,
            BlobDeletes::Unprotected => !worker.config.policy.may_protect_in(repository),
            BlobDeletes::Refuse => false,
        };
        if allowed {
            return Action::Continue;
        }
        let msg = "Blob deletes are refused here: the registry's garbage collection removes blobs no manifest references";
        let err = OciError::new(
            405,
            "UNSUPPORTED",
            msg,
            json!({"repository": repository, "setting": "deletes.blobs"}),
        );
        self.refuse(h, &err, &[], Callback::Request)
    }

    /// The host would not give `name`: the request may be a write, so it is refused.
    fn unreadable(&mut self, h: &dyn Host, name: &str, why: &str) -> Action {
        let msg = format!("immutable-tags could not read the request's {name} (host status {why}); a request it cannot judge is refused");
        self.refuse(h, &OciError::new(503, "UNAVAILABLE", msg, json!({})), &[], Callback::Request)
    }

    fn on_put(
        &mut self,
        h: &dyn Host,
        worker: &Worker,
        repository: String,
        reference: Reference,
        tags: Vec<String>,
        end_of_stream: bool,
    ) -> Action {
        let mut checks = Vec::new();
        for tag in tags {
            let d = worker.config.policy.decide(&repository, &tag);
            if d.immutable {
                checks.push((tag, d.reason));
            } else {
                worker.count(h, Counter::PushesMutable);
            }
        }
        if checks.is_empty() {
            return Action::Continue;
        }
        let path_tag = match reference {
            Reference::Tag(t) => Some(t),
            Reference::Digest(_) => None,
        };
        match Push::start(h, worker, repository, path_tag, checks, end_of_stream) {
            Ok((push, next)) => {
                self.state = State::Push(Box::new(push));
                self.push_next(h, next, Callback::Request)
            }
            Err(err) => self.refuse(h, &err, &[], Callback::Request),
        }
    }

    /// Acts on a push's next step.
    fn push_next(&mut self, h: &dyn Host, next: push::Next, from: Callback) -> Action {
        match next {
            push::Next::Wait => Action::Pause,
            push::Next::Release => self.resume(h, from, "the lookup"),
            push::Next::Refuse(err, extra) => self.refuse(h, &err, &extra, from),
            push::Next::Relay { status, headers, body } => {
                let details = match (&self.state, (200..300).contains(&status)) {
                    (State::Push(p), true) if p.audit_pass() => "immutable_tags_written_unjudged_audit",
                    (_, true) => "immutable_tags_written",
                    (_, false) => "immutable_tags_write_failed",
                };
                self.state = State::Done;
                let headers: Vec<(&str, &str)> =
                    headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                if let Err(s) = h.send_response(status, details, &headers, &body) {
                    h.log(Level::Error, &format!("immutable-tags: cannot relay the registry's answer ({s})"));
                }
                Action::Pause
            }
        }
    }

    /// Lets held headers go: from a request callback by answering `Continue`, from a call
    /// response by resuming.
    fn resume(&self, h: &dyn Host, from: Callback, after: &str) -> Action {
        if from == Callback::Call {
            if let Err(s) = h.resume_request() {
                h.log(Level::Error, &format!("immutable-tags: cannot resume request after {after} ({s})"));
            }
        }
        Action::Continue
    }

    /// The single refusal path. Counts the refusal, logs one JSON record of it, then answers with
    /// `err` (enforce mode) or lets the request through as if allowed (audit mode).
    fn refuse(&mut self, h: &dyn Host, err: &OciError, extra: &[(&str, String)], from: Callback) -> Action {
        self.unfence(h);
        let kind = Refusal::of(self.request.method.as_deref().unwrap_or_default(), err.status, &err.code);
        let mode = self.worker.as_ref().map_or(Mode::Enforce, |w| w.config.mode);
        let rule = match (&self.worker, audit::subject(err)) {
            (Some(w), Some((repository, tag))) => Some(w.config.policy.decide(repository, tag).reason),
            _ => None,
        };
        // Warn: a refused write deserves an operator's eye; it shows at Envoy's default level.
        h.log(
            Level::Warn,
            &audit::refusal_record(mode, kind, err, rule.as_deref(), &self.request).to_string(),
        );
        self.count(h, kind.counter());
        if mode == Mode::Audit {
            self.count(h, Counter::AuditWouldRefuse);
            return self.let_through(h, from, err);
        }
        self.answer(h, err, extra)
    }

    /// Answers the client with `err`; the request goes no further.
    fn answer(&mut self, h: &dyn Host, err: &OciError, extra: &[(&str, String)]) -> Action {
        let mut hdrs: Vec<(&str, &str)> = vec![("content-type", "application/json")];
        hdrs.extend(extra.iter().map(|(k, v)| (*k, v.as_str())));
        if let Err(s) = h.send_response(err.status, details(err.status), &hdrs, err.body().as_bytes()) {
            h.log(Level::Error, &format!("immutable-tags: cannot send local reply ({s})"));
        }
        self.state = State::Done;
        Action::Pause
    }

    /// Audit mode: a request that would have been refused goes on as an allowed one would.
    fn let_through(&mut self, h: &dyn Host, from: Callback, err: &OciError) -> Action {
        let Some(worker) = self.worker.clone() else { return self.resume(h, from, "audit") };
        match std::mem::replace(&mut self.state, State::Pass) {
            State::Push(mut push) => {
                if !push.checking() || push.audit_pass() {
                    // Nothing can be written (the write failed, or the push was abandoned):
                    // the refusal is answered whatever the mode.
                    return self.answer(h, err, &[]);
                }
                let next = push.pass_unjudged(h, &worker);
                self.state = State::Push(push);
                self.push_next(h, next, from)
            }
            State::Delete(d) => {
                self.state = State::Deleting { repository: d.map_key(&worker), digest: d.digest().clone() };
                self.resume(h, from, "audit")
            }
            other => {
                self.state = other;
                self.resume(h, from, "audit")
            }
        }
    }

    pub fn on_request_body(&mut self, h: &dyn Host, body_size: usize, end_of_stream: bool) -> Action {
        let Some(worker) = self.worker.clone() else { return Action::Continue };
        match &mut self.state {
            State::Push(push) => {
                let next = push.on_body(h, &worker, body_size, end_of_stream);
                self.push_next(h, next, Callback::Request);
                // Never release a byte of a push: it is buffered until the filter writes it.
                Action::Pause
            }
            State::Done | State::Delete(_) | State::Unlocking(..) => Action::Pause,
            _ => Action::Continue,
        }
    }

    pub fn on_request_trailers(&mut self, h: &dyn Host) -> Action {
        let Some(worker) = self.worker.clone() else { return Action::Continue };
        match &mut self.state {
            State::Push(push) => {
                let next = push.on_trailers(h, &worker);
                self.push_next(h, next, Callback::Request);
                Action::Pause
            }
            State::Done | State::Delete(_) | State::Unlocking(..) => Action::Pause,
            _ => Action::Continue,
        }
    }

    pub fn on_call_response(&mut self, h: &dyn Host, token: u32, body_size: usize) {
        let Some(worker) = self.worker.clone() else { return };
        match &mut self.state {
            State::Delete(d) => {
                let next = d.on_response(h, &worker, token, body_size);
                self.delete_next(h, next, Callback::Call);
            }
            State::Push(push) => {
                let next = push.on_call_response(h, &worker, token, body_size);
                self.push_next(h, next, Callback::Call);
            }
            // Done once the window is written (or could not be): the held answer goes on.
            State::Opening(o) if o.token() == token => {
                if !window::on_open_response(h, &worker, o, body_size) {
                    return;
                }
                self.state = State::Pass;
                if let Err(s) = h.resume_response() {
                    h.log(
                        Level::Error,
                        &format!("immutable-tags: cannot resume response after break-glass ({s})"),
                    );
                }
            }
            State::Unlocking(c, _) if c.token() == Some(token) => {
                let State::Unlocking(c, err) = std::mem::replace(&mut self.state, State::Pass) else {
                    return;
                };
                let covered = c.answered(h, &worker, body_size);
                self.unlocked(h, covered, *err, Vec::new(), Callback::Call);
            }
            _ => {}
        }
    }

    /// The registry's answer to what went upstream. For a push that is the harmless request's
    /// answer: held (`Pause`: the host stops it whole, body included), and replaced by the
    /// filter's own answer.
    pub fn on_response_headers(&mut self, h: &dyn Host) -> Action {
        let Some(worker) = self.worker.clone() else { return Action::Continue };
        // The registry answered the delete: it is done or refused, and lands no more.
        if self.fence.is_some()
            && h.property(&["response", "code_details"]).as_deref() == Some("via_upstream")
        {
            self.unfence(h);
        }
        let ok = h.response_header(":status").is_some_and(|s| s.starts_with('2'));
        match &self.state {
            State::Push(p) if p.awaiting_body() => {
                // The registry answered the harmless request before the client's body reached
                // Envoy (a registry that answers without reading a body): Envoy hands the filter
                // no more of it, so the push cannot be judged. Refused, never written: retry.
                // Or Envoy answered for the route (the registry unreachable): say which.
                let why = match h.property(&["response", "code_details"]) {
                    Some(d) if d != "via_upstream" => format!("the registry could not be reached ({d})"),
                    _ => "the registry answered before the manifest arrived; retry the push".to_string(),
                };
                let err = OciError::upstream(&p.repository, &p.first_tag(), &why);
                // In audit mode a push let on unjudged was counted when it would have been
                // refused: it is only answered now.
                let counted = p.audit_pass();
                if let State::Push(p) = &mut self.state {
                    p.abandon();
                }
                if counted {
                    h.log(Level::Warn, &format!("immutable-tags: {}", err.message));
                    return self.answer(h, &err, &[]);
                }
                self.refuse(h, &err, &[], Callback::Request)
            }
            State::Push(_) => Action::Pause,
            State::Pull { repository, tag, pinned } => {
                pull::on_response(h, &worker, repository, tag, *pinned);
                Action::Continue
            }
            State::Deleting { repository, digest } => {
                // The manifest is gone, and with it every tag that pointed to it.
                if ok {
                    if let Ok(mut cache) = worker.cache.try_borrow_mut() {
                        cache.forget_digest(repository, digest);
                    }
                }
                Action::Continue
            }
            State::Overridden { .. } => {
                // Refused only on the registry's own 4xx; anything else may have deleted.
                let own = h.property(&["response", "code_details"]).as_deref() == Some("via_upstream");
                let outcome = match h.response_header(":status") {
                    _ if ok => bg::Outcome::Accepted,
                    Some(s) if own && s.starts_with('4') => bg::Outcome::Refused,
                    _ => bg::Outcome::Unknown,
                };
                if let State::Overridden { repository, digest, granted, before } =
                    std::mem::replace(&mut self.state, State::Pass)
                {
                    overridden(h, &worker, &repository, digest, &granted, &before, outcome);
                }
                Action::Continue
            }
            // Envoy answered a delete held while windows are taken (a timeout): it never goes
            // upstream, so the windows go back (the one being taken once etcd answers).
            State::Unlocking(..) => {
                if let State::Unlocking(mut c, _) = std::mem::replace(&mut self.state, State::Pass) {
                    c.abandon(h, &worker);
                }
                Action::Continue
            }
            State::Window { repository, tag } if ok => {
                match window::open(h, &worker, repository, tag, &self.asked) {
                    Some(o) => {
                        self.state = State::Opening(Box::new(o));
                        Action::Pause
                    }
                    None => Action::Continue,
                }
            }
            _ => Action::Continue,
        }
    }

    /// Nothing to remember for this request: it keeps no state past its headers.
    pub fn idle(&self) -> bool {
        matches!(self.state, State::Pass)
    }

    /// Still judging or writing once the answer from upstream arrived: a push, which holds the
    /// harmless request's answer (whole: the response body never reaches the filter) until it
    /// relays the registry's answer to its own PUT; a delete still judged, or taking windows
    /// (an answer of Envoy's own, e.g. a timeout): kept until it ends, to give back what it took.
    pub fn in_flight(&self) -> bool {
        matches!(self.state, State::Push(_) | State::Delete(_) | State::Opening(_) | State::Unlocking(..))
    }

    /// The host destroyed the stream before its answer passed (found by the root's timer).
    /// An answered stream (a relayed push, a refusal) is not counted: its answer was sent.
    pub fn on_swept(&mut self, h: &dyn Host) {
        if !matches!(self.state, State::Done) {
            self.count(h, Counter::StreamsSwept);
        }
        self.on_done(h);
    }

    /// The stream ended.
    pub fn on_done(&mut self, h: &dyn Host) {
        match (std::mem::replace(&mut self.state, State::Pass), self.worker.clone()) {
            (State::Push(push), Some(worker)) => push.on_done(h, &worker),
            // Gone while break-glass was taking windows: those it took go back.
            (State::Unlocking(mut c, _), Some(worker)) => {
                c.abandon(h, &worker);
                self.unfence(h);
            }
            // Never sent: its fence goes back.
            (State::Delete(d), Some(_)) => {
                self.fence = d.fence_taken();
                self.unfence(h);
            }
            // Sent, and no answer came: the registry may have deleted it all the same.
            (State::Overridden { repository, digest, granted, before }, Some(worker)) => {
                overridden(h, &worker, &repository, digest, &granted, &before, bg::Outcome::Unknown)
            }
            _ => {}
        }
    }

    fn on_delete(
        &mut self,
        h: &dyn Host,
        worker: &Worker,
        repository: String,
        reference: Reference,
    ) -> Action {
        let config = &worker.config;
        if !config.deletes.protect {
            return Action::Continue;
        }
        match reference {
            Reference::Tag(tag) => match tag_delete(&config.policy, &config.error_code, &repository, &tag) {
                Some(err) => {
                    self.delete_refused(h, worker, err, Vec::new(), vec![tag], true, Callback::Request)
                }
                None => Action::Continue,
            },
            // No tag of this repository can be immutable: no listing to pay for.
            Reference::Digest(_) if !config.policy.may_protect_in(&repository) => Action::Continue,
            Reference::Digest(digest) => {
                let exhaustive = bg::may_override(worker, BgAction::Delete, &repository, &self.asked);
                let (check, next) = DigestDelete::start(h, worker, &repository, digest, exhaustive);
                self.state = State::Delete(Box::new(check));
                self.delete_next(h, next, Callback::Request)
            }
        }
    }

    /// Gives the delete fence back, if taken and young enough to still be ours alone to
    /// release (a release after it expired could take another delete's hold).
    fn unfence(&mut self, h: &dyn Host) {
        if let (Some((repository, digest, at)), Some(w)) = (self.fence.take(), &self.worker) {
            if h.now_ms().saturating_sub(at) < w.config.claims.ttl_ms / 2 {
                claims::release(h, w, &repository, &claims::fence_tag(&digest), &digest, at);
            }
        }
    }

    /// A delete about to go upstream: its fence must outlive its landing, so Envoy's router
    /// gives up (504, upstream reset) at half the TTL since the fence was taken, whatever the
    /// route or the client said (the expected timeout too: a router may respect it first).
    /// `None`: it may go.
    fn fence_stale(&self, h: &dyn Host) -> Option<OciError> {
        let (repository, digest, at) = self.fence.as_ref()?;
        let ttl = self.worker.as_ref()?.config.claims.ttl_ms;
        let left = (ttl / 2).saturating_sub(h.now_ms().saturating_sub(*at));
        let why = if left == 0 {
            "its check took half of claims.ttl_seconds or more; retry the delete"
        } else if ["x-envoy-upstream-rq-timeout-ms", "x-envoy-expected-rq-timeout-ms"]
            .iter()
            .any(|n| h.set_request_header(n, &left.to_string()).is_err())
        {
            "the filter could not bound its time upstream"
        } else {
            return None;
        };
        Some(OciError::upstream(repository, digest, why))
    }

    /// Acts on a digest delete's next step.
    fn delete_next(&mut self, h: &dyn Host, next: delete::Next, from: Callback) -> Action {
        if let (State::Delete(d), false) = (&self.state, matches!(next, delete::Next::Wait)) {
            self.fence = d.fence_taken();
        }
        match next {
            delete::Next::Wait => Action::Pause,
            delete::Next::Refuse(err, extra, held) => match self.worker.clone() {
                Some(worker) => {
                    let complete = matches!(&self.state, State::Delete(d) if d.exhaustive());
                    self.delete_refused(h, &worker, err, extra, held, complete, from)
                }
                None => self.refuse(h, &err, &extra, from),
            },
            delete::Next::Allow => {
                if let Some(err) = self.fence_stale(h) {
                    return self.refuse(h, &err, &[], from);
                }
                if let (State::Delete(d), Some(w)) = (&self.state, &self.worker) {
                    self.state = State::Deleting { repository: d.map_key(w), digest: d.digest().clone() };
                }
                self.resume(h, from, "delete check")
            }
        }
    }

    /// A delete of an immutable tag (or of a manifest immutable tags hold: `held`) is refused,
    /// unless break-glass covers every one of them (`complete`: `held` is all of them, on the
    /// registry's word): then it goes to the registry, and is logged once the registry accepted.
    #[allow(clippy::too_many_arguments)]
    fn delete_refused(
        &mut self,
        h: &dyn Host,
        worker: &Worker,
        err: OciError,
        extra: Vec<(&str, String)>,
        held: Vec<String>,
        complete: bool,
        from: Callback,
    ) -> Action {
        let covered = match audit::subject(&err).filter(|_| err.status == 409 && !held.is_empty()) {
            Some((repository, _)) => Cover::new(repository, held, &self.asked, complete).run(h, worker),
            None => Covered::No(None, Vec::new()),
        };
        self.unlocked(h, covered, err, extra, from)
    }

    /// Acts on break-glass's answer to a refused delete.
    fn unlocked(
        &mut self,
        h: &dyn Host,
        covered: Covered,
        mut err: OciError,
        extra: Vec<(&str, String)>,
        from: Callback,
    ) -> Action {
        match covered {
            Covered::Yes(granted) => {
                // The delete goes on as the client sent it, but with no credential other than
                // the `Authorization` its principal was read from (as an overriding push).
                // Each tag's claim-store order before the delete goes: its forget erases only a
                // change at or below it (a first push after the delete is newer and stays).
                let before: Result<Vec<u64>, String> = match &self.worker {
                    Some(w) => {
                        granted.iter().map(|g| claims::view_order(h, w, g.repository(), g.tag())).collect()
                    }
                    None => Ok(Vec::new()),
                };
                let failed = match (self.fence_stale(h), &before) {
                    (Some(e), _) => Some(e),
                    (None, Err(why)) => Some(OciError::new(
                        503,
                        "UNAVAILABLE",
                        format!("The filter could not read the claim store before the delete ({why})"),
                        json!({}),
                    )),
                    (None, Ok(_)) => strip_credentials(h, &self.worker).map(|why| {
                        let msg = format!(
                            "The filter could not remove other credentials from the override ({why})"
                        );
                        OciError::new(500, "UNKNOWN", msg, json!({}))
                    }),
                };
                if let (Some(w), Some(e)) = (self.worker.clone(), failed) {
                    for g in granted.iter() {
                        bg::restore(h, &w, g);
                    }
                    return self.refuse(h, &e, &extra, from);
                }
                let digest = err.detail.get("digest").and_then(Value::as_str).and_then(Digest::parse);
                let repository = audit::subject(&err).map(|(r, _)| r.to_string()).unwrap_or_default();
                if let Some(worker) = &self.worker {
                    // Recorded before it goes: once sent it may happen, whatever comes back.
                    bg::delete_record(
                        h,
                        worker,
                        &granted,
                        digest.as_ref().map(Digest::to_string).as_deref(),
                        bg::Outcome::Sent,
                    );
                }
                let authority = self.authority.as_deref();
                let repository = self
                    .worker
                    .as_ref()
                    .map_or_else(|| repository.clone(), |w| w.map_key(&repository, authority));
                self.state =
                    State::Overridden { repository, digest, granted, before: before.unwrap_or_default() };
                self.resume(h, from, "break-glass")
            }
            Covered::Ask(c) => {
                self.state = State::Unlocking(c, Box::new(err));
                Action::Pause
            }
            Covered::No(why, missing) => {
                if why.is_some() {
                    if let Some(d) = err.detail.as_object_mut() {
                        d.insert(
                            "not_covered".into(),
                            Value::Array(missing.into_iter().map(Value::from).collect()),
                        );
                    }
                }
                bg::explain(&mut err, why);
                self.refuse(h, &err, &extra, from)
            }
        }
    }
}

/// An answer the root context got for a call whose stream is gone (proxy-wasm dispatches every
/// call on the root, so it still comes): a window's use puts back what it took.
/// `false`: not such a call.
pub fn root_answer(h: &dyn Host, worker: &Worker, token: u32, body_size: usize) -> bool {
    window::orphan_answer(h, worker, token, body_size)
}

/// A delete break-glass let through has its outcome: recorded; the map forgets what it may
/// have removed; windows go back only when the registry refused it.
fn overridden(
    h: &dyn Host,
    worker: &Worker,
    repository: &str,
    digest: Option<Digest>,
    granted: &[Granted],
    before: &[u64],
    outcome: bg::Outcome,
) {
    if outcome == bg::Outcome::Refused {
        for g in granted.iter() {
            bg::restore(h, worker, g);
        }
    } else if let Ok(mut cache) = worker.cache.try_borrow_mut() {
        for g in granted.iter() {
            cache.forget(repository, g.tag());
        }
        if let Some(d) = &digest {
            cache.forget_digest(repository, d);
        }
    }
    if outcome == bg::Outcome::Accepted {
        let deleted_digest = digest.as_ref().map(|d| d.to_string());
        for (g, before) in granted.iter().zip(before) {
            // A delete the filter granted: the one way the tag becomes new again. Claims are
            // keyed by repository alone (`repository` here is the map's key). Not on an
            // unknown outcome: the record then keeps refusing stale views (fail closed).
            claims::forget(h, worker, g.repository(), g.tag(), *before, deleted_digest.as_deref());
        }
    }
    bg::delete_record(h, worker, granted, digest.map(|d| d.to_string()).as_deref(), outcome);
}

/// Whether the request carries a method-override header; one the host would not give counts.
fn method_overridden(h: &dyn Host) -> bool {
    METHOD_OVERRIDE_HEADERS.iter().any(|n| !matches!(h.read_request_header(n), Ok(None)))
}
