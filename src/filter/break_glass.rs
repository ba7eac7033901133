//! Break-glass over the host: what a request asks for (read at its headers), the anonymous
//! `GET /v2/` that learns whether the registry demands authentication (cached per worker), the
//! windows in shared data, and the audit line once the registry accepted an override.
use super::host::{Host, Level, SharedError};
use super::upstream::{self, Caller};
use super::worker::Worker;
use crate::break_glass::{principal, Action, Ask, Window};
use crate::metrics::Counter;
use crate::oci_error::OciError;
use serde_json::{json, Value};

/// How long a worker trusts what it learned about the registry's authentication.
const AUTH_TTL_MS: u64 = 60_000;

/// What a request brings, read at its headers.
#[derive(Debug, Clone, Default)]
pub struct Asked {
    pub principal: Option<String>,
    pub reason: Option<String>,
    pub request_id: Option<String>,
}

impl Asked {
    pub fn read(worker: &Worker, header: impl Fn(&str) -> Option<String>) -> Asked {
        let Some(bg) = &worker.config.break_glass else { return Asked::default() };
        Asked {
            principal: header("authorization").and_then(|a| principal(&a)),
            reason: header(&bg.reason_header),
            request_id: header("x-request-id"),
        }
    }
}

/// What the worker knows fresh: whether the registry demands authentication.
pub fn registry_auth(host: &dyn Host, worker: &Worker) -> Option<bool> {
    worker.registry_auth.get().filter(|(_, at)| host.now_ms() < at.saturating_add(AUTH_TTL_MS)).map(|(auth, _)| auth)
}

/// Sends the anonymous `GET /v2/` if an override may be asked for and the answer is not known.
pub fn probe(host: &dyn Host, worker: &Worker, asked: &Asked, caller: &Caller) -> Option<u32> {
    if asked.principal.is_none() || registry_auth(host, worker).is_some() {
        return None;
    }
    let anonymous = Caller { authority: caller.authority.clone(), authorization: None };
    upstream::get_tags_list(host, &worker.config.upstream, &anonymous, "/v2/").ok()
}

/// The probe answered: 401 means the registry demands authentication, 2xx that it does not.
pub fn learn(host: &dyn Host, worker: &Worker) {
    let auth = match host.call_response_header(":status").as_deref() {
        Some("401") => true,
        Some(s) if s.starts_with('2') => false,
        _ => return,
    };
    worker.registry_auth.set(Some((auth, host.now_ms())));
}

/// Lifts a refusal of `action` on `repository:tag`, or says why not (`None`: nothing was asked,
/// and the refusal says nothing about break-glass). A window opened for this principal and tag
/// stands in for the reason header, and is used up here (one push).
pub fn grant(host: &dyn Host, worker: &Worker, action: Action, repository: &str, tag: &str, asked: &Asked) -> Result<Value, Option<String>> {
    let Some(bg) = &worker.config.break_glass else { return Err(None) };
    let mut ask = Ask { principal: asked.principal.as_deref(), reason: asked.reason.as_deref(), registry_auth: registry_auth(host, worker) };
    let key = Window::key(repository, tag);
    let mut window = None;
    if ask.reason.is_none() {
        if let Ok((Some(bytes), cas)) = host.shared_get(&key) {
            window = Window::open(&bytes, host.now_ms()).filter(|w| Some(w.principal.as_str()) == ask.principal).map(|w| (w, cas));
        }
    }
    if let Some((w, _)) = &window {
        ask.reason = Some(&w.reason);
    }
    if ask.reason.is_none() {
        return Err(None);
    }
    bg.grant(action, repository, &ask)?;
    if let Some((_, cas)) = &window {
        if host.shared_set(&key, b"", *cas) == Err(SharedError::CasMismatch) {
            return Err(Some("the break-glass window was used by another request".into()));
        }
    }
    Ok(json!({
        "event": "immutable_tags.break_glass",
        "mode": worker.config.mode.as_str(),
        "principal": ask.principal,
        "reason": ask.reason,
        "action": action.as_str(),
        "repository": repository,
        "tag": tag,
        "request_id": asked.request_id,
    }))
}

/// Puts why an asked-for override was not granted into the refusal's detail.
pub fn explain(err: &mut OciError, why: Option<String>) {
    if let (Some(why), Some(d)) = (why, err.detail.as_object_mut()) {
        d.insert("break_glass".into(), json!(why));
    }
}

/// The registry accepted an overriding write: one warning line, one count.
pub fn done(host: &dyn Host, worker: &Worker, mut record: Value, current: Option<String>, pushed: Option<String>) {
    if let Some(r) = record.as_object_mut() {
        r.insert("current_digest".into(), json!(current));
        r.insert("pushed_digest".into(), json!(pushed));
    }
    host.log(Level::Warn, &record.to_string());
    worker.count(host, Counter::BreakGlassOverrides);
}

/// `POST /immutable-tags/break-glass/<repository>:<tag>`: opens a window once the probe says
/// the registry demands authentication and a HEAD of the tag with the request's credentials
/// was not refused. `calls`: (probe, head) tokens still awaited.
pub struct Opening {
    pub repository: String,
    pub tag: String,
    pub asked: Asked,
    pub probe: Option<u32>,
    pub head: Option<u32>,
    pub head_status: Option<String>,
}

impl Opening {
    /// A call answered; `Some`: the answer to send.
    pub fn on_response(&mut self, host: &dyn Host, worker: &Worker, token: u32) -> Option<Result<Value, OciError>> {
        if self.probe == Some(token) {
            learn(host, worker);
            self.probe = None;
        } else if self.head == Some(token) {
            self.head_status = host.call_response_header(":status");
            self.head = None;
        }
        (self.probe.is_none() && self.head.is_none()).then(|| self.decide(host, worker))
    }

    pub fn decide(&self, host: &dyn Host, worker: &Worker) -> Result<Value, OciError> {
        let refused = |status: u16, code: &str, why: String| {
            let detail = json!({"repository": self.repository, "tag": self.tag, "break_glass": why});
            OciError::new(status, code, "No break-glass window was opened", detail)
        };
        if let Some(s @ ("401" | "403")) = self.head_status.as_deref() {
            return Err(refused(401, "UNAUTHORIZED", format!("the registry refused the credentials ({s})")));
        }
        let Some(bg) = &worker.config.break_glass else { return Err(refused(404, "UNSUPPORTED", "not configured".into())) };
        let ask = Ask { principal: self.asked.principal.as_deref(), reason: self.asked.reason.as_deref(), registry_auth: registry_auth(host, worker) };
        let denied = |why| refused(403, "DENIED", why);
        bg.grant(Action::Overwrite, &self.repository, &ask).or_else(|_| bg.grant(Action::Delete, &self.repository, &ask)).map_err(denied)?;
        if !self.head_status.as_deref().is_some_and(|s| s.starts_with('2') || s == "404") {
            return Err(denied("the registry did not answer the credentials check".into()));
        }
        let (principal, reason) = (ask.principal.unwrap_or_default(), ask.reason.unwrap_or_default());
        let w = Window { principal: principal.into(), reason: reason.into(), expires_ms: host.now_ms() + crate::break_glass::WINDOW_MS };
        host.shared_set(&Window::key(&self.repository, &self.tag), &w.encode(), 0).map_err(|e| refused(503, "UNAVAILABLE", format!("{e:?}")))?;
        host.log(Level::Warn, &json!({"event": "immutable_tags.break_glass_window", "principal": principal, "reason": reason,
            "repository": self.repository, "tag": self.tag, "request_id": self.asked.request_id}).to_string());
        Ok(json!({"repository": self.repository, "tag": self.tag, "principal": principal, "expires_in_seconds": crate::break_glass::WINDOW_MS / 1000}))
    }
}
