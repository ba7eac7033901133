//! What the HTTP contexts of one worker share: one VM per worker thread, so no locking.
use super::host::Host;
use crate::cache::TagCache;
use crate::config::Config;
use crate::metrics::Counter;
use std::cell::{Cell, RefCell};

pub struct Worker {
    pub config: Config,
    pub cache: RefCell<TagCache>,
    /// Envoy's metric id per `Counter::ALL` position; `None` if it could not be defined.
    counters: Vec<Option<u32>>,
    /// Whether the registry demands authentication, and when that was learned (break-glass).
    pub registry_auth: Cell<Option<(bool, u64)>>,
}

impl Worker {
    /// Defines every counter (Envoy answers the same id for a name defined before, so this is
    /// safe to repeat on reconfiguration) and creates the claim slots.
    pub fn new(host: &dyn Host, config: Config) -> Worker {
        let cache = TagCache::new(config.cache.max_entries, config.cache.ttl_seconds);
        let counters = Counter::ALL.iter().map(|c| host.define_counter(&c.name())).collect();
        super::claims::create_slots(host, &config.claims);
        Worker { config, cache: RefCell::new(cache), counters, registry_auth: Cell::new(None) }
    }

    /// Best effort: a metric is never worth failing a request for.
    pub fn count(&self, host: &dyn Host, counter: Counter) {
        if let Some(Some(id)) = self.counters.get(counter.index()) {
            host.increment(*id);
        }
    }
}
