//! What the HTTP contexts of one worker share: one VM per worker thread, so no locking.
use super::host::Host;
use crate::config::Config;
use crate::observability::metrics::Counter;
use crate::store::tag_cache::TagCache;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;

pub struct Worker {
    pub config: Config,
    pub cache: RefCell<TagCache>,
    /// What the flows leave to this worker beyond one request ([`super::Pending`]).
    pub pending: super::Pending,
    /// Envoy's metric id per `Counter::ALL` position; `None` if it could not be defined.
    counters: Vec<Option<u32>>,
    /// Whether the registry demands authentication, and when that was learned (break-glass).
    pub registry_auth: Cell<Option<(bool, u64)>>,
    /// The root's probe of that: the call in flight, and when the next one is due.
    pub auth_probe: Cell<(Option<u32>, u64)>,
    /// A push's body reached the filter while its headers were held: this Envoy runs the filter
    /// with `allow_on_headers_stop_iteration`, so held headers never need to go upstream early.
    /// Learned per worker (a new configuration makes a new worker, and relearns): not shared,
    /// so that no other configuration's Envoy could ever hold headers that must go.
    holds_headers: Cell<bool>,
    /// Claims held per client address: when each was taken (an entry outlives its claim by
    /// at most a TTL, so a lost one never blocks a client for long).
    client_claims: RefCell<HashMap<String, Vec<u64>>>,
}

/// Claims one client address may hold at once through one worker: past this its pushes are
/// refused (429), so that one client cannot fill the claim slots.
pub const MAX_CLAIMS_PER_CLIENT: usize = 16;

/// Writes whose client left that one worker keeps waiting for the registry's answer: past
/// this, new protected writes are refused (503) rather than one dropped unsettled or the list
/// grown (each is answered within the write timeout, so the list drains on its own).
pub const MAX_ORPHANS: usize = 256;

/// Client addresses tracked per worker (past this, the expired are dropped first; a new
/// client then goes untracked rather than grow the map).
const MAX_CLIENTS: usize = 4096;

impl Worker {
    /// Defines every counter (Envoy answers the same id for a name defined before, so this is
    /// safe to repeat on reconfiguration). The claim slots are created by `Worker::new`
    /// (`filter/mod.rs`), so that this file names no flow and no claim store.
    pub(super) fn without_slots(host: &dyn Host, config: Config) -> Worker {
        // Where a tag can change behind this worker's map (a break-glass override, a delete and
        // a new push, through another worker or replica), a map entry is trusted no longer than
        // the claim records that fence it: only a live record of that change stops a stale
        // "identical re-push" from putting the old digest back.
        let ttl_seconds = match config.tags_can_change() {
            // Half the TTL: as long as any view is trusted (`push::claim_next`).
            true => config.cache.ttl_seconds.min((config.claims.ttl_ms / 2000).max(1)),
            false => config.cache.ttl_seconds,
        };
        let cache = TagCache::new(config.cache.max_entries, ttl_seconds);
        let counters = Counter::ALL.iter().map(|c| host.define_counter(&c.name())).collect();
        Worker {
            config,
            cache: RefCell::new(cache),
            pending: super::Pending::default(),
            counters,
            registry_auth: Cell::new(None),
            auth_probe: Cell::new((None, 0)),
            holds_headers: Cell::new(false),
            client_claims: RefCell::default(),
        }
    }

    /// Whether `client` may take one more claim now (fewer than the bound live).
    pub fn client_may_claim(&self, client: &str, now_ms: u64) -> bool {
        let ttl = self.config.claims.ttl_ms;
        let Ok(mut m) = self.client_claims.try_borrow_mut() else { return true };
        match m.get_mut(client) {
            Some(v) => {
                v.retain(|t| t.saturating_add(ttl) > now_ms);
                v.len() < MAX_CLAIMS_PER_CLIENT
            }
            None => true,
        }
    }

    /// `client` took a claim.
    pub fn client_claimed(&self, client: &str, now_ms: u64) {
        let ttl = self.config.claims.ttl_ms;
        let Ok(mut m) = self.client_claims.try_borrow_mut() else { return };
        if m.len() >= MAX_CLIENTS && !m.contains_key(client) {
            m.retain(|_, v| v.iter().any(|t| t.saturating_add(ttl) > now_ms));
            if m.len() >= MAX_CLIENTS {
                return;
            }
        }
        m.entry(client.to_string()).or_default().push(now_ms);
    }

    /// `client` settled (committed or released) `n` claims.
    pub fn client_settled(&self, client: &str, n: usize) {
        let Ok(mut m) = self.client_claims.try_borrow_mut() else { return };
        if let Some(v) = m.get_mut(client) {
            v.drain(..n.min(v.len()));
            if v.is_empty() {
                m.remove(client);
            }
        }
    }

    /// The map's key for `repository`. With `upstream.authority` unset the filter's calls go to
    /// the client's `:authority`, and one cluster may serve several registries by host: a
    /// digest learned on one must not answer for a tag of another, so the map keys by both.
    /// (Claims stay keyed by repository and tag: split by a client's spelling of the host, two
    /// pushes to one registry could race past each other; a claim shared by two hosts' tags
    /// only ever refuses or asks the registry again.)
    pub fn map_key(&self, repository: &str, authority: Option<&str>) -> String {
        match (&self.config.upstream.authority, authority) {
            // A line break: in no header value, so no host and repository can spell another's.
            (None, Some(a)) => format!("{}\n{repository}", a.trim().to_ascii_lowercase()),
            _ => repository.to_string(),
        }
    }

    /// Whether this Envoy delivers request bodies behind held headers (see `holds_headers`).
    pub fn holds_headers(&self) -> bool {
        self.holds_headers.get()
    }

    /// A body arrived behind held headers.
    pub fn learn_holds_headers(&self) {
        self.holds_headers.set(true);
    }

    /// Best effort: a metric is never worth failing a request for.
    pub fn count(&self, host: &dyn Host, counter: Counter) {
        self.count_many(host, counter, 1);
    }

    /// Adds `n` at once (the ordinary requests the host glue counted between two ticks).
    pub fn count_many(&self, host: &dyn Host, counter: Counter, n: u64) {
        if let Some(Some(id)) = self.counters.get(counter.index()) {
            if n > 0 {
                host.increment(*id, n);
            }
        }
    }
}
