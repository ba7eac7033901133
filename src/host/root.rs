//! The root context: loads the configuration (refusing a bad one, so Envoy never runs an
//! unprotected listener) and owns what the worker's streams share.
use super::abi::{self, BufferType};
use super::wasm::WasmHost;
use crate::config::Config;
use crate::filter::host::{Host, Level};
use crate::filter::worker::Worker;
use std::rc::Rc;

/// One configured plugin instance in this VM. Several exist when plugins with the same code
/// share a VM, and for a while after a configuration update (the old one drains).
pub struct Root {
    pub id: u32,
    /// The host's `plugin_name` property: tells a stream which root it belongs to.
    pub name: Option<String>,
    pub worker: Option<Rc<Worker>>,
}

/// Reads and loads the plugin configuration; `None` (with the error logged) refuses it.
pub fn configure() -> Option<Rc<Worker>> {
    let host = WasmHost;
    let bytes = match abi::buffer(BufferType::PluginConfiguration, 0, usize::MAX) {
        Ok(b) => b.unwrap_or_default(),
        Err(s) => {
            host.log(Level::Error, &format!("immutable-tags {}: cannot read plugin configuration ({s:?})", crate::BUILD));
            return None;
        }
    };
    match Config::from_json(&bytes) {
        Ok(config) => {
            // Logged on every (re)configuration, so the log says which build and policy run.
            host.log(Level::Info, &format!("immutable-tags {}: policy loaded: {}", crate::BUILD, config.summary()));
            Some(Rc::new(Worker::new(&host, config)))
        }
        Err(e) => {
            host.log(Level::Error, &format!("immutable-tags {}: {e}", crate::BUILD));
            None
        }
    }
}
