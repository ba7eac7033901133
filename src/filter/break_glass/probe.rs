//! Does the registry demand authentication? The anonymous `GET /v2/` the root context sends
//! on its tick ([`probe`]), what its answer teaches the worker ([`learn`]), and how long that
//! stays trusted ([`registry_auth`]). A leaf: the grant flow and the windows both ask it.

use crate::filter::host::Host;
use crate::filter::upstream::{self, Caller};
use crate::filter::worker::Worker;

/// How long a worker trusts what it learned about the registry's authentication.
const AUTH_TTL_MS: u64 = 60_000;

/// What the worker knows fresh: whether the registry demands authentication.
pub fn registry_auth(host: &dyn Host, worker: &Worker) -> Option<bool> {
    worker
        .registry_auth
        .get()
        .filter(|(_, at)| host.now_ms() < at.saturating_add(AUTH_TTL_MS))
        .map(|(auth, _)| auth)
}

/// Sends the anonymous `GET /v2/` (from the root context, on every tick), so that what a
/// worker knows is never older than a tick when an override is asked for.
pub fn probe(host: &dyn Host, worker: &Worker) {
    let u = &worker.config.upstream;
    let now = host.now_ms();
    let (_, due_ms) = worker.auth_probe.get();
    if worker.config.break_glass.is_some() && now >= due_ms {
        let anonymous = Caller {
            authority: Some(u.authority.clone().unwrap_or_else(|| u.cluster.clone())),
            authorization: None,
        };
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
