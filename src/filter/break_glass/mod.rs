//! Break-glass over the host: what a request asks for (read at its headers), the anonymous
//! `GET /v2/` that learns whether the registry demands authentication (cached per worker), the
//! decision (with a window standing in for the reason header: `window`), and the audit line
//! once the registry accepted an override.
//!
//! This file is the grant flow (grant, looked up, restore, explain, the records); its children
//! are the pieces it and the tag reads that open windows share:
//!
//! * [`asked`]: what a request brings ([`Asked`]) and the JSON log line.
//! * [`probe`](mod@probe): does the registry demand authentication (the tick's anonymous `GET /v2/`).
//! * [`window`]: windows in shared data or etcd: open, take, put back.

pub mod asked;
pub mod probe;
pub mod window;

use super::host::{Host, Level};
use super::worker::Worker;
use crate::verdict::break_glass::{Action, Ask};
use asked::{line, object};
use window::{Taken, Taking, Used};
// The filter's other modules, the glue and the tests reach these through break_glass.
use crate::observability::metrics::Counter;
use crate::oci::error::OciError;
pub use asked::Asked;
pub use probe::{learn, probe, registry_auth, PROBE_PERIOD_MS};
use serde_json::{Map, Value};

/// An override granted, logged once the registry accepted the request.
#[derive(Debug, Clone)]
pub struct Granted {
    principal: String,
    reason: String,
    action: Action,
    repository: String,
    tag: String,
    request_id: Option<String>,
    /// The window it used, if any (put back if the write fails).
    window: Option<Used>,
}

/// What break-glass says to a refused overwrite or delete.
#[derive(Debug)]
pub enum Grant {
    Yes(Granted),
    /// Refused; why, or `None`: nothing was asked, and the refusal says nothing about break-glass.
    No(Option<String>),
    /// Waiting for etcd (a window): hand the call's answer to `looked_up`.
    Ask(Box<Lookup>),
}

/// A refused write waiting for etcd's answer: is a window of its principal open?
#[derive(Debug)]
pub struct Lookup {
    taking: Taking,
    action: Action,
    repository: String,
    pub tag: String,
    asked: Asked,
}

impl Granted {
    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// The repository as the policy and the claims know it (not the map's key).
    pub fn repository(&self) -> &str {
        &self.repository
    }
}

impl Lookup {
    pub fn token(&self) -> u32 {
        self.taking.token()
    }
}

#[inline(never)] // called from the push and the delete flows (module size)
/// Lifts a refusal of `action` on `repository:tag`, or says why not. Without the reason header,
/// a window opened for this principal and tag stands in for it, and is used up here.
pub fn grant(
    host: &dyn Host,
    worker: &Worker,
    action: Action,
    repository: &str,
    tag: &str,
    asked: &Asked,
) -> Grant {
    let Some(bg) = &worker.config.break_glass else { return Grant::No(None) };
    match (&asked.reason, &asked.principal) {
        (Some(reason), _) => finish(host, worker, action, repository, tag, asked, reason.clone(), None),
        (None, Some(p)) => settle(
            host,
            worker,
            window::take(host, worker, bg, action, repository, tag, p),
            action,
            repository,
            tag,
            asked,
        ),
        (None, None) => Grant::No(None),
    }
}

/// etcd answered a `Lookup`.
pub fn looked_up(host: &dyn Host, worker: &Worker, l: Lookup, body_size: usize) -> Grant {
    let taken = window::on_take_response(host, worker, l.taking, body_size);
    settle(host, worker, taken, l.action, &l.repository, &l.tag, &l.asked)
}

fn settle(
    host: &dyn Host,
    worker: &Worker,
    taken: Taken,
    action: Action,
    repository: &str,
    tag: &str,
    asked: &Asked,
) -> Grant {
    match taken {
        Taken::Found(w, used) => finish(host, worker, action, repository, tag, asked, w.reason, Some(used)),
        Taken::Not(why) => Grant::No(why),
        Taken::Pending(taking) => {
            let (repository, tag, asked) = (repository.to_string(), tag.to_string(), asked.clone());
            Grant::Ask(Box::new(Lookup { taking, action, repository, tag, asked }))
        }
    }
}

/// Judges the request with `reason` (its header's, or a window's); a window used for a
/// refused request is put back.
#[allow(clippy::too_many_arguments)]
fn finish(
    host: &dyn Host,
    worker: &Worker,
    action: Action,
    repository: &str,
    tag: &str,
    asked: &Asked,
    reason: String,
    window: Option<Used>,
) -> Grant {
    let Some(bg) = &worker.config.break_glass else { return Grant::No(None) };
    let ask = Ask {
        principal: asked.principal.as_deref(),
        reason: Some(&reason),
        registry_auth: registry_auth(host, worker),
        verified: asked.verified,
    };
    if let Err(why) = bg.grant(action, repository, &ask) {
        if let Some(u) = &window {
            window::restore(host, worker, u);
        }
        return Grant::No(Some(why));
    }
    Grant::Yes(Granted {
        principal: asked.principal.clone().unwrap_or_default(),
        reason,
        action,
        repository: repository.into(),
        tag: tag.into(),
        request_id: asked.request_id.clone(),
        window,
    })
}

/// The write an override was granted for failed: its window (if it used one) is put back, so
/// that the operator can try again.
pub fn restore(host: &dyn Host, worker: &Worker, g: &Granted) {
    if let Some(u) = &g.window {
        window::restore(host, worker, u);
        host.log(
            Level::Info,
            &format!(
                "immutable-tags: {}:{}: the write failed; break-glass window put back",
                g.repository, g.tag
            ),
        );
    }
}

/// Puts why an asked-for override was not granted into the refusal's detail.
pub fn explain(err: &mut OciError, why: Option<String>) {
    if let (Some(why), Some(d)) = (why, err.detail.as_object_mut()) {
        d.insert("break_glass".into(), Value::from(why));
    }
}

/// An override was granted for a write about to be sent: one warning line at once, whatever
/// becomes of the write or its client (`done` logs the outcome).
pub fn decided(host: &dyn Host, g: &Granted, current: &str, pushed: &str) {
    host.log(
        Level::Warn,
        &line(&[
            ("event", Some("immutable_tags.break_glass_decision")),
            ("principal", Some(&g.principal)),
            ("reason", Some(&g.reason)),
            ("action", Some(g.action.as_str())),
            ("repository", Some(&g.repository)),
            ("tag", Some(&g.tag)),
            ("current_digest", Some(current)),
            ("pushed_digest", Some(pushed)),
            ("request_id", g.request_id.as_deref()),
        ]),
    );
}

/// Whether break-glass could lift a refused `action` on `repository` for this request: its
/// principal is listed and the exception covers the action there (a reason or a window may
/// then lift it). A digest delete that it could is checked against every immutable tag.
pub fn may_override(worker: &Worker, action: Action, repository: &str, asked: &Asked) -> bool {
    let Some(bg) = &worker.config.break_glass else { return false };
    asked.principal.as_ref().is_some_and(|p| bg.principals.contains(p))
        && bg.covers(action, repository).is_ok()
}

/// A refused delete: every immutable tag it would remove needs an override of its own (a
/// window for one tag never removes another). Asked tag by tag, in order.
#[derive(Debug)]
pub struct Cover {
    repository: String,
    tags: Vec<String>,
    next: usize,
    granted: Vec<Granted>,
    missing: Vec<(String, Option<String>)>,
    asked: Asked,
    /// The tags are every holder, each confirmed by the registry: only then may it be lifted.
    complete: bool,
    pending: Option<Box<Lookup>>,
}

/// What break-glass says to a refused delete.
#[derive(Debug)]
pub enum Covered {
    /// Every tag is covered: one override each.
    Yes(Vec<Granted>),
    /// Refused; why (`None`: nothing was asked), and the tags not covered.
    No(Option<String>, Vec<String>),
    /// Waiting for etcd: hand the call's answer to `Cover::answered`.
    Ask(Box<Cover>),
}

impl Cover {
    pub fn new(repository: &str, tags: Vec<String>, asked: &Asked, complete: bool) -> Cover {
        let repository = repository.to_string();
        Cover {
            repository,
            tags,
            next: 0,
            granted: Vec::new(),
            missing: Vec::new(),
            asked: asked.clone(),
            complete,
            pending: None,
        }
    }

    pub fn token(&self) -> Option<u32> {
        self.pending.as_ref().map(|l| l.token())
    }

    fn record(&mut self, grant: Grant) -> bool {
        let tag = self.tags.get(self.next).cloned().unwrap_or_default();
        match grant {
            Grant::Yes(g) => self.granted.push(g),
            Grant::No(why) => self.missing.push((tag, why)),
            Grant::Ask(l) => {
                self.pending = Some(l);
                return false;
            }
        }
        self.next += 1;
        true
    }

    /// Asks for the remaining tags.
    pub fn run(mut self, host: &dyn Host, worker: &Worker) -> Covered {
        while let Some(tag) = self.tags.get(self.next).cloned() {
            let grant = grant(host, worker, Action::Delete, &self.repository, &tag, &self.asked);
            if !self.record(grant) {
                return Covered::Ask(Box::new(self));
            }
        }
        self.finish(host, worker)
    }

    /// etcd answered the pending lookup.
    pub fn answered(mut self, host: &dyn Host, worker: &Worker, body_size: usize) -> Covered {
        if let Some(l) = self.pending.take() {
            if !self.record(looked_up(host, worker, *l, body_size)) {
                return Covered::Ask(Box::new(self));
            }
        }
        self.run(host, worker)
    }

    /// Puts back every window taken so far (the delete is not lifted, or its stream ended).
    pub fn give_back(&self, host: &dyn Host, worker: &Worker) {
        for g in &self.granted {
            if let Some(u) = &g.window {
                window::restore(host, worker, u);
            }
        }
    }

    /// The stream ended: windows taken go back, and so will the one being taken, when etcd's
    /// answer reaches the root (`window::orphan_answer`).
    pub fn abandon(&mut self, host: &dyn Host, worker: &Worker) {
        self.give_back(host, worker);
        if let Some(l) = self.pending.take() {
            window::park(worker, l.taking);
        }
    }

    fn finish(self, host: &dyn Host, worker: &Worker) -> Covered {
        let lifted = self.missing.is_empty() && !self.granted.is_empty();
        if lifted && self.complete {
            return Covered::Yes(self.granted);
        }
        self.give_back(host, worker);
        if lifted {
            // A check break-glass could lift lists every holder (`may_override`): never here.
            return Covered::No(Some("not every tag holding the manifest is known".into()), Vec::new());
        }
        let (one, p) = (self.tags.len() == 1, self.asked.principal.as_deref().unwrap_or_default());
        let (mut names, mut why, mut asked) = (Vec::new(), String::new(), !self.granted.is_empty());
        for (t, w) in self.missing {
            asked |= w.is_some();
            let w = w.unwrap_or_else(|| {
                format!("no break-glass window is open for the principal the request claims, '{p}', on it")
            });
            if one {
                why = w;
            } else {
                why.push_str(if why.is_empty() {
                    "a delete by digest removes every tag holding it, and break-glass does not cover "
                } else {
                    "; "
                });
                why.push_str(&format!("tag '{t}': {w}"));
            }
            names.push(t);
        }
        Covered::No(asked.then_some(why), names)
    }
}

/// The registry accepted an overriding write: one warning line, one count.
#[inline(never)] // called from the push and the delete flows (module size)
pub fn done(host: &dyn Host, worker: &Worker, g: &Granted, current: Option<&str>, pushed: Option<&str>) {
    host.log(Level::Warn, &Value::Object(record(worker, g, current, pushed)).to_string());
    worker.count(host, Counter::BreakGlassOverrides);
}

/// The override record's fields (never a credential).
fn record(worker: &Worker, g: &Granted, current: Option<&str>, pushed: Option<&str>) -> Map<String, Value> {
    object(&[
        ("event", Some("immutable_tags.break_glass")),
        ("mode", Some(worker.config.mode.as_str())),
        ("principal", Some(&g.principal)),
        ("reason", Some(&g.reason)),
        ("action", Some(g.action.as_str())),
        ("repository", Some(&g.repository)),
        ("tag", Some(&g.tag)),
        ("current_digest", current),
        ("pushed_digest", pushed),
        ("request_id", g.request_id.as_deref()),
    ])
}

/// What became of a delete break-glass let through, for the record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Resumed to the registry: from here on it may happen whatever the client does.
    Sent,
    /// The registry answered 2xx.
    Accepted,
    /// The registry itself answered 4xx: nothing was deleted; its windows were put back.
    Refused,
    /// A 5xx, an answer of Envoy's own, or none (a reset, a timeout, the client gone): it may
    /// have happened, so it is counted and its windows stay used.
    Unknown,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Outcome::Sent => "sent",
            Outcome::Accepted => "accepted",
            Outcome::Refused => "refused",
            Outcome::Unknown => "unknown",
        }
    }
}

/// A delete lifted by break-glass: one warning line per tag it removes (each naming all of
/// them), when it is sent and again with its outcome; counted once per tag unless refused.
#[inline(never)]
pub fn delete_record(
    host: &dyn Host,
    worker: &Worker,
    granted: &[Granted],
    digest: Option<&str>,
    outcome: Outcome,
) {
    let tags: Value = granted.iter().map(|g| Value::from(g.tag.as_str())).collect();
    for g in granted {
        let mut map = record(worker, g, digest, None);
        if outcome == Outcome::Sent {
            // The decision line, named as a push's (`decided`).
            map.insert("event".into(), Value::from("immutable_tags.break_glass_decision"));
        }
        map.insert("outcome".into(), Value::from(outcome.as_str()));
        map.insert("tags".into(), tags.clone());
        host.log(Level::Warn, &Value::Object(map).to_string());
        if matches!(outcome, Outcome::Accepted | Outcome::Unknown) {
            worker.count(host, Counter::BreakGlassOverrides);
        }
    }
}
