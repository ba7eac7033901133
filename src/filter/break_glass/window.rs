//! Break-glass windows (see `break_glass`): where they live, opened by a read of a tag that
//! carries the reason header (`open`), used up by the principal's next overwrite or delete of
//! that tag (`take`), put back when that write fails (`restore`).
//!
//! - Without `claims.etcd`: Envoy shared data, seen by every worker of one Envoy. One key per
//!   tag and principal, as in etcd; a used window is written empty (shared data has no delete).
//! - With `claims.etcd`: etcd, seen by every replica. One key per tag and principal
//!   ([`crate::store::etcd::window_key`]), bound to a lease of its own with the window's length, so etcd
//!   drops it when it expires. The read's answer is held until etcd has it (a client may push
//!   right after reading). Every write is a txn whose compare no late or repeated attempt
//!   passes: opening creates the key if absent, else replaces what it read there (at its
//!   `mod_revision`: a used window, or an older one); using it is one txn that replaces
//!   anything but `USED` by `USED` on the same lease and answers what was there (of several
//!   replicas, or attempts, exactly one gets it); so the key stays taken until the window's
//!   end, and a late create of it fails. A use whose answer is lost spends the window (fail
//!   closed). A window put back (at the `mod_revision` of its `USED`: once, and never over a
//!   newer window) keeps its lease, and so its end, through the root context's queue.
use super::asked::{line, Asked};
use super::probe::registry_auth;
use crate::config::EtcdSettings;
use crate::filter::claims::etcd::Call;
use crate::filter::host::{Host, Level, SharedError};
use crate::filter::worker::Worker;
use crate::store::etcd::{self as wire, Answer};
use crate::verdict::break_glass::{Action, Ask, BreakGlass, Window, WINDOW_MS};

/// A window used for a write: what `restore` writes back.
#[derive(Debug, Clone)]
pub struct Used {
    key: String,
    value: Vec<u8>,
    /// Its etcd lease, and the revision of the `USED` that replaced it (0 in shared data).
    lease: u64,
    at: u64,
}

fn down(e: &EtcdSettings, why: &str) -> String {
    format!("the break-glass window store (etcd, cluster '{}') is unavailable: {why}", e.cluster)
}

/// A window being written to etcd while the read's answer is held.
#[derive(Debug)]
pub struct Opening {
    call: Call,
    /// The lease, once granted (`call` is then a write), and the writes sent.
    lease: u64,
    writes: u8,
    key: String,
    value: Vec<u8>,
    repository: String,
    tag: String,
    principal: Option<String>,
}

impl Opening {
    pub fn token(&self) -> u32 {
        self.call.token
    }
}

fn opened(host: &dyn Host, repository: &str, tag: &str, principal: Option<&str>, why: Option<&str>) {
    host.log(
        Level::Warn,
        &line(&[
            ("event", Some("immutable_tags.break_glass_window")),
            ("not_opened", why),
            ("principal", principal),
            ("repository", Some(repository)),
            ("tag", Some(tag)),
        ]),
    );
}

/// The registry answered 2xx to a read of `repository:tag` that carried the reason header, with
/// the request's credentials: opens a window for that principal and tag if the exception
/// allows it. Logged either way, once written. `Some`: etcd is writing it; hold the answer
/// until `on_open_response` says it is done.
pub fn open(host: &dyn Host, worker: &Worker, repository: &str, tag: &str, asked: &Asked) -> Option<Opening> {
    let bg = worker.config.break_glass.as_ref()?;
    let ask = Ask {
        principal: asked.principal.as_deref(),
        reason: asked.reason.as_deref(),
        registry_auth: registry_auth(host, worker),
        verified: asked.verified,
    };
    // Any action the exception allows: the push or delete that uses the window is judged again.
    let why = bg.grant(bg.actions.first().copied().unwrap_or(Action::Overwrite), repository, &ask).err();
    let w = Window {
        principal: asked.principal.clone().unwrap_or_default(),
        reason: asked.reason.clone().unwrap_or_default(),
        expires_ms: host.now_ms() + WINDOW_MS,
    };
    let why = match (why, &worker.config.claims.etcd) {
        (Some(why), _) => Some(why),
        (None, None) => host
            .shared_set(&Window::key(repository, tag, &w.principal), &w.encode(), 0)
            .err()
            .map(|e| format!("{e:?}")),
        (None, Some(e)) => match Call::send(host, e, "/v3/lease/grant", wire::grant_body(WINDOW_MS / 1000)) {
            Ok(call) => {
                let key = wire::window_key(&e.prefix, repository, tag, &w.principal);
                let (repository, tag, principal) =
                    (repository.to_string(), tag.to_string(), asked.principal.clone());
                return Some(Opening {
                    call,
                    lease: 0,
                    writes: 0,
                    key,
                    value: w.encode(),
                    repository,
                    tag,
                    principal,
                });
            }
            Err(why) => Some(down(e, &why)),
        },
    };
    opened(host, repository, tag, asked.principal.as_deref(), why.as_deref());
    None
}

/// etcd answered `o`'s call: the lease granted, the window is put with it. `true`: done
/// (written or not, logged); let the answer go.
pub fn on_open_response(host: &dyn Host, worker: &Worker, o: &mut Opening, body_size: usize) -> bool {
    let Some(e) = &worker.config.claims.etcd else { return true };
    let Some((status, body)) = o.call.answer(host, worker, e, body_size) else { return false };
    // The key as last read: 0 absent (create it), else its `mod_revision` (replace that).
    let at = match o.lease {
        0 => match wire::parse_grant(status, &body) {
            Answer::Ok(lease) => {
                o.lease = lease;
                Answer::Ok(Err(0))
            }
            Answer::LeaseGone => Answer::Failed("no lease granted".into()),
            Answer::Failed(why) => Answer::Failed(why),
        },
        _ => wire::parse_written(status, &body),
    };
    let outcome = match at {
        // The key changed as we wrote (another window, or its use): three writes at most.
        Answer::Ok(Err(m)) if o.writes < 3 => {
            o.writes += 1;
            let body = if m == 0 {
                wire::create_txn(&o.key, &o.value, o.lease)
            } else {
                wire::replace_txn(&o.key, m, &o.value, o.lease)
            };
            match Call::send(host, e, "/v3/kv/txn", body) {
                Ok(call) => {
                    o.call = call;
                    return false;
                }
                Err(why) => Answer::Failed(why),
            }
        }
        Answer::Ok(Err(_)) => Answer::Failed("the key kept changing".into()),
        a => a,
    };
    let why = match outcome {
        Answer::Ok(_) => None,
        Answer::LeaseGone => Some(down(e, "its lease is gone")),
        Answer::Failed(why) => Some(down(e, &why)),
    };
    opened(host, &o.repository, &o.tag, o.principal.as_deref(), why.as_deref());
    true
}

/// What `take` found.
#[derive(Debug)]
pub enum Taken {
    /// The principal's open window, now used up, and what puts it back.
    Found(Window, Used),
    /// None to use; why, when the refusal should say it.
    Not(Option<String>),
    /// Asked etcd: hand the call's answer to `on_take_response`.
    Pending(Taking),
}

/// A window being taken from etcd.
#[derive(Debug)]
pub struct Taking {
    call: Call,
    key: String,
    principal: String,
}

impl Taking {
    pub fn token(&self) -> u32 {
        self.call.token
    }
}

/// Uses up `principal`'s window on `repository:tag`, if one is open.
pub fn take(
    host: &dyn Host,
    worker: &Worker,
    bg: &BreakGlass,
    action: Action,
    repository: &str,
    tag: &str,
    principal: &str,
) -> Taken {
    let Some(e) = &worker.config.claims.etcd else {
        let key = Window::key(repository, tag, principal);
        let Ok((Some(value), cas)) = host.shared_get(&key) else { return Taken::Not(None) };
        let Some(w) = Window::open(&value, host.now_ms()).filter(|w| w.principal == principal) else {
            return Taken::Not(None);
        };
        return match host.shared_set(&key, b"", cas) {
            Ok(()) => Taken::Found(w, Used { key, value, lease: 0, at: 0 }),
            Err(SharedError::CasMismatch) => {
                Taken::Not(Some("the break-glass window was used by another request".into()))
            }
            Err(SharedError::Other(s)) => {
                Taken::Not(Some(format!("the break-glass window could not be used up ({s})")))
            }
        };
    };
    // A round trip only for a principal and a write a window could serve.
    if !bg.principals.iter().any(|p| p == principal) || bg.covers(action, repository).is_err() {
        return Taken::Not(None);
    }
    let key = wire::window_key(&e.prefix, repository, tag, principal);
    match Call::send(host, e, "/v3/kv/txn", wire::use_txn(&key)) {
        Ok(call) => Taken::Pending(Taking { call, key, principal: principal.to_string() }),
        Err(why) => Taken::Not(Some(down(e, &why))),
    }
}

/// etcd answered a `Taking`.
pub fn on_take_response(host: &dyn Host, worker: &Worker, mut t: Taking, body_size: usize) -> Taken {
    let Some(e) = &worker.config.claims.etcd else { return Taken::Not(None) };
    let Some((status, body)) = t.call.answer(host, worker, e, body_size) else { return Taken::Pending(t) };
    let value = match wire::parse_taken(status, &body) {
        Answer::Ok(v) => v,
        Answer::LeaseGone => return Taken::Not(Some(down(e, "lease not found"))),
        Answer::Failed(why) => return Taken::Not(Some(down(e, &why))),
    };
    // An expired window may outlive its lease a little (etcd renews leases on a leader change).
    match value.and_then(|(v, lease, at)| Some((Window::open(&v, host.now_ms()).filter(|w| w.principal == t.principal)?, v, lease, at))) {
        Some((w, value, lease, at)) => Taken::Found(w, Used { key: t.key, value, lease, at }),
        None => Taken::Not(Some(format!(
            "no break-glass window is open for the principal the request claims, '{}', on this tag (none was opened, it expired, or another request used it)",
            t.principal
        ))),
    }
}

/// Takes whose stream ended a worker keeps, waiting for etcd's answer: past this, the oldest
/// goes (its window is then lost until its lease ends: fail closed).
const MAX_ORPHANS: usize = 256;

/// A take whose stream ended before etcd answered: its answer comes to the root.
pub fn park(worker: &Worker, t: Taking) {
    if let Ok(mut o) = worker.pending.orphan_takes.try_borrow_mut() {
        if o.len() >= MAX_ORPHANS {
            o.remove(0);
        }
        o.push(t);
    }
}

/// etcd answered a parked take: a window it took is put back. `false`: not a parked take.
pub fn orphan_answer(host: &dyn Host, worker: &Worker, token: u32, body_size: usize) -> bool {
    let parked = worker.pending.orphan_takes.try_borrow_mut().ok().and_then(|mut o| {
        let i = o.iter().position(|t| t.token() == token)?;
        Some(o.remove(i))
    });
    let Some(t) = parked else { return false };
    match on_take_response(host, worker, t, body_size) {
        Taken::Found(_, used) => {
            restore(host, worker, &used);
            host.log(
                Level::Info,
                "immutable-tags: a break-glass window taken for a request that ended is put back",
            );
        }
        Taken::Pending(t) => park(worker, t),
        Taken::Not(_) => {}
    }
    true
}

/// Puts a used window back (its write failed), unless a newer one was opened meanwhile.
pub fn restore(host: &dyn Host, worker: &Worker, u: &Used) {
    if worker.config.claims.etcd.is_some() {
        crate::filter::claims::etcd::put_later(worker, wire::replace_txn(&u.key, u.at, &u.value, u.lease));
    } else if let Ok((Some(v), cas)) = host.shared_get(&u.key) {
        if v.is_empty() {
            let _ = host.shared_set(&u.key, &u.value, cas);
        }
    }
}
