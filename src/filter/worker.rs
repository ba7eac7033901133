//! What the HTTP contexts of one worker share: one VM per worker thread, so no locking.
use super::host::Host;
use crate::cache::TagCache;
use crate::config::Config;
use crate::metrics::Counter;
use std::cell::{Cell, RefCell};

pub struct Worker {
    pub config: Config,
    pub cache: RefCell<TagCache>,
    /// With `claims.etcd`: this worker's lease and the root context's queue.
    pub etcd: RefCell<super::claims::etcd::State>,
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
    /// Windows being taken for requests that ended (`window::orphan_answer`).
    pub orphan_takes: RefCell<Vec<super::window::Taking>>,
}

impl Worker {
    /// Defines every counter (Envoy answers the same id for a name defined before, so this is
    /// safe to repeat on reconfiguration) and creates the claim slots.
    pub fn new(host: &dyn Host, config: Config) -> Worker {
        // Where a tag can change behind this worker's map (a break-glass override, a delete and
        // a new push, through another worker or replica), a map entry is trusted no longer than
        // the claim records that fence it: only a live record of that change stops a stale
        // "identical re-push" from putting the old digest back.
        let ttl_seconds = match config.tags_can_change() {
            true => config.cache.ttl_seconds.min(config.claims.ttl_ms / 1000),
            false => config.cache.ttl_seconds,
        };
        let cache = TagCache::new(config.cache.max_entries, ttl_seconds);
        let counters = Counter::ALL.iter().map(|c| host.define_counter(&c.name())).collect();
        if config.claims.etcd.is_none() {
            super::claims::shared_data::create_slots(host, &config.claims);
        }
        Worker { config, cache: RefCell::new(cache), etcd: RefCell::default(), counters, registry_auth: Cell::new(None), auth_probe: Cell::new((None, 0)), holds_headers: Cell::new(false), orphan_takes: RefCell::new(Vec::new()) }
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
