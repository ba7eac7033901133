//! The root context: loads the configuration (refusing a bad one, so Envoy never runs an
//! unprotected listener) and owns what the worker's HTTP contexts share.
use super::abi;
use super::http::Filter;
use super::log;
use super::metrics::Metrics;
use crate::cache::TagCache;
use crate::config::Config;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{BufferType, ContextType};
use std::cell::RefCell;
use std::rc::Rc;

/// Per-worker state: one VM per worker thread, so no locking is needed.
pub struct Worker {
    pub config: Rc<Config>,
    pub cache: RefCell<TagCache>,
    pub metrics: Metrics,
}

#[derive(Default)]
pub struct Root {
    worker: Option<Rc<Worker>>,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let bytes = match abi::buffer(BufferType::PluginConfiguration, 0, usize::MAX) {
            Ok(b) => b.unwrap_or_default(),
            Err(s) => {
                log::error(&format!("immutable-tags {}: cannot read plugin configuration ({s:?})", crate::BUILD));
                return false;
            }
        };
        match Config::from_json(&bytes) {
            Ok(config) => {
                // Logged on every (re)configuration, so the log says which build and policy run.
                log::info(&format!("immutable-tags {}: policy loaded: {}", crate::BUILD, config.summary()));
                super::claims::create_slots(&config.claims);
                let cache = TagCache::new(config.cache.max_entries, config.cache.ttl_seconds);
                let metrics = Metrics::define();
                self.worker = Some(Rc::new(Worker { config: Rc::new(config), cache: RefCell::new(cache), metrics }));
                true
            }
            Err(e) => {
                log::error(&format!("immutable-tags {}: {e}", crate::BUILD));
                false
            }
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        // Must never be None: the SDK panics on it.
        Some(Box::new(Filter::new(self.worker.clone())))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}
