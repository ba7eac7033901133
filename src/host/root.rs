//! The root context: loads the configuration (refusing a bad one, so Envoy never runs an
//! unprotected listener) and owns what the worker's HTTP contexts share.
use super::abi;
use super::wasm::WasmHost;
use crate::config::Config;
use crate::filter::host::{Host, Level};
use crate::filter::worker::Worker;
use crate::filter::Filter;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{BufferType, ContextType};
use std::rc::Rc;

#[derive(Default)]
pub struct Root {
    worker: Option<Rc<Worker>>,
}

impl Context for Root {
    /// A call the root context sent: the break-glass probe, or etcd claims' lease, commits
    /// and releases.
    fn on_http_call_response(&mut self, token: u32, _headers: usize, body: usize, _trailers: usize) {
        if let Some(w) = &self.worker {
            if !crate::filter::break_glass::learn(&WasmHost, w, token) {
                crate::filter::claims::etcd::on_root_response(&WasmHost, w, token, body);
            }
        }
    }
}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let host = WasmHost;
        let bytes = match abi::buffer(BufferType::PluginConfiguration, 0, usize::MAX) {
            Ok(b) => b.unwrap_or_default(),
            Err(s) => {
                host.log(Level::Error, &format!("immutable-tags {}: cannot read plugin configuration ({s:?})", crate::BUILD));
                return false;
            }
        };
        match Config::from_json(&bytes) {
            Ok(config) => {
                // Logged on every (re)configuration, so the log says which build and policy run.
                host.log(Level::Info, &format!("immutable-tags {}: policy loaded: {}", crate::BUILD, config.summary()));
                let worker = Rc::new(Worker::new(&host, config));
                // The root keeps an etcd lease alive and sends commits/releases (claims.etcd),
                // and asks the registry whether it demands authentication (break_glass).
                let etcd = worker.config.claims.etcd.is_some();
                let period = if etcd {
                    crate::filter::claims::etcd::TICK_MS
                } else if worker.config.break_glass.is_some() {
                    crate::filter::break_glass::PROBE_PERIOD_MS
                } else {
                    0
                };
                if let Err(s) = abi::set_tick_period(u32::try_from(period).unwrap_or(u32::MAX)) {
                    host.log(Level::Error, &format!("immutable-tags: cannot set the tick period ({s:?})"));
                    return !etcd;
                }
                crate::filter::break_glass::probe(&host, &worker);
                self.worker = Some(worker);
                true
            }
            Err(e) => {
                host.log(Level::Error, &format!("immutable-tags {}: {e}", crate::BUILD));
                false
            }
        }
    }

    fn on_tick(&mut self) {
        if let Some(w) = &self.worker {
            crate::filter::claims::etcd::tick(&WasmHost, w);
            crate::filter::break_glass::probe(&WasmHost, w);
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        // Must never be None: the SDK panics on it.
        Some(Box::new(super::Stream(Filter::new(self.worker.clone()))))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}
