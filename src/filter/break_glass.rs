//! Break-glass over the host: what a request asks for (read at its headers), the anonymous
//! `GET /v2/` that learns whether the registry demands authentication (cached per worker), the
//! windows in shared data, and the audit line once the registry accepted an override.
use super::host::{Host, Level, SharedError};
use super::upstream::{self, Caller};
use super::worker::Worker;
use crate::break_glass::{principal, Action, Ask, Window, WINDOW_MS};
use crate::metrics::Counter;
use crate::oci_error::OciError;
use serde_json::{Map, Value};

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
    pub fn read(worker: &Worker, header: &dyn Fn(&str) -> Option<String>) -> Asked {
        let Some(bg) = &worker.config.break_glass else { return Asked::default() };
        Asked {
            principal: header("authorization").and_then(|a| principal(&a)),
            reason: header(&bg.reason_header),
            request_id: header("x-request-id"),
        }
    }
}

/// An override granted, logged once the registry accepted the request.
#[derive(Debug, Clone)]
pub struct Granted {
    principal: String,
    reason: String,
    action: Action,
    repository: String,
    tag: String,
    request_id: Option<String>,
}

/// One JSON log line from string fields (one code path rather than a `json!` per record).
fn line(fields: &[(&str, Option<&str>)]) -> String {
    let mut map = Map::new();
    for (k, v) in fields {
        map.insert(k.to_string(), v.map_or(Value::Null, Value::from));
    }
    Value::Object(map).to_string()
}

/// What the worker knows fresh: whether the registry demands authentication.
pub fn registry_auth(host: &dyn Host, worker: &Worker) -> Option<bool> {
    worker.registry_auth.get().filter(|(_, at)| host.now_ms() < at.saturating_add(AUTH_TTL_MS)).map(|(auth, _)| auth)
}

/// Sends the anonymous `GET /v2/` (from the root context, on every tick), so that what a
/// worker knows is never older than a tick when an override is asked for.
pub fn probe(host: &dyn Host, worker: &Worker) {
    let u = &worker.config.upstream;
    let now = host.now_ms();
    let (_, due_ms) = worker.auth_probe.get();
    if worker.config.break_glass.is_some() && now >= due_ms {
        let anonymous = Caller { authority: Some(u.authority.clone().unwrap_or_else(|| u.cluster.clone())), authorization: None };
        let token = upstream::get_tags_list(host, u, &anonymous, "/v2/").ok();
        worker.auth_probe.set((token, now.saturating_add(PROBE_PERIOD_MS)));
    }
}

/// How often the root context asks the registry whether it demands authentication.
pub const PROBE_PERIOD_MS: u64 = 10_000;

/// A root call answered: if it is the probe, 401 means the registry demands authentication,
/// 2xx that it does not. `false`: not the probe's answer.
pub fn learn(host: &dyn Host, worker: &Worker, token: u32) -> bool {
    let (probe, due_ms) = worker.auth_probe.get();
    if probe != Some(token) {
        return false;
    }
    worker.auth_probe.set((None, due_ms));
    let auth = match host.call_response_header(":status").as_deref() {
        Some("401") => true,
        Some(s) if s.starts_with('2') => false,
        _ => return true,
    };
    worker.registry_auth.set(Some((auth, host.now_ms())));
    true
}

#[inline(never)] // called from the push and the delete flows (module size)
/// Lifts a refusal of `action` on `repository:tag`, or says why not (`None`: nothing was asked,
/// and the refusal says nothing about break-glass). A window opened for this principal and tag
/// stands in for the reason header, and is used up here (one request).
pub fn grant(host: &dyn Host, worker: &Worker, action: Action, repository: &str, tag: &str, asked: &Asked) -> Result<Granted, Option<String>> {
    let Some(bg) = &worker.config.break_glass else { return Err(None) };
    let key = Window::key(repository, tag);
    let window = match (&asked.reason, host.shared_get(&key)) {
        (None, Ok((Some(bytes), cas))) => Window::open(&bytes, host.now_ms()).filter(|w| Some(&w.principal) == asked.principal.as_ref()).map(|w| (w.reason, cas)),
        _ => None,
    };
    let Some(reason) = asked.reason.as_ref().or(window.as_ref().map(|(r, _)| r)) else { return Err(None) };
    let ask = Ask { principal: asked.principal.as_deref(), reason: Some(reason), registry_auth: registry_auth(host, worker) };
    bg.grant(action, repository, &ask)?;
    if let Some((_, cas)) = &window {
        if host.shared_set(&key, b"", *cas) == Err(SharedError::CasMismatch) {
            return Err(Some("the break-glass window was used by another request".into()));
        }
    }
    Ok(Granted {
        principal: asked.principal.clone().unwrap_or_default(),
        reason: reason.clone(),
        action,
        repository: repository.into(),
        tag: tag.into(),
        request_id: asked.request_id.clone(),
    })
}

/// Puts why an asked-for override was not granted into the refusal's detail.
pub fn explain(err: &mut OciError, why: Option<String>) {
    if let (Some(why), Some(d)) = (why, err.detail.as_object_mut()) {
        d.insert("break_glass".into(), Value::from(why));
    }
}

/// The registry accepted an overriding write: one warning line, one count.
pub fn done(host: &dyn Host, worker: &Worker, g: &Granted, current: Option<&str>, pushed: Option<&str>) {
    host.log(
        Level::Warn,
        &line(&[
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
        ]),
    );
    worker.count(host, Counter::BreakGlassOverrides);
}

/// The registry answered 2xx to a read of `repository:tag` that carried the reason header, with
/// the request's credentials: opens a window for that principal and tag if the exception
/// allows it, seen by every worker. Logged either way.
pub fn open_window(host: &dyn Host, worker: &Worker, repository: &str, tag: &str, asked: &Asked) {
    let Some(bg) = &worker.config.break_glass else { return };
    let ask = Ask { principal: asked.principal.as_deref(), reason: asked.reason.as_deref(), registry_auth: registry_auth(host, worker) };
    // Any action the exception allows: the push or delete that uses the window is judged again.
    let why = bg.grant(bg.actions.first().copied().unwrap_or(Action::Overwrite), repository, &ask).err();
    let w = Window { principal: asked.principal.clone().unwrap_or_default(), reason: asked.reason.clone().unwrap_or_default(), expires_ms: host.now_ms() + WINDOW_MS };
    let why = why.or_else(|| host.shared_set(&Window::key(repository, tag), &w.encode(), 0).err().map(|e| format!("{e:?}")));
    host.log(
        Level::Warn,
        &line(&[
            ("event", Some("immutable_tags.break_glass_window")),
            ("not_opened", why.as_deref()),
            ("principal", asked.principal.as_deref()),
            ("repository", Some(repository)),
            ("tag", Some(tag)),
        ]),
    );
}
