//! The root context: loads the configuration (refusing a bad one, so Envoy never runs an
//! unprotected listener) and owns what the worker's streams share.
use super::abi::{self, BufferType};
use super::wasm_host::WasmHost;
use crate::config::{Config, Mode};
use crate::filter::host::{Host, Level};
use crate::filter::worker::Worker;
use std::rc::Rc;

/// One configured plugin instance in this VM: a root context. Several exist when plugins with
/// the same code share a VM (two listeners, one `vm_id`), and while streams opened under an
/// earlier configuration are still open. The host names each stream's root context when it
/// creates the stream (`proxy_on_context_create`), so a stream finds its instance by `id`.
pub struct Root {
    /// The host's root context id: what binds a stream to this instance.
    pub id: u32,
    /// The host's `plugin_name` and `plugin_vm_id`: name the instance in the log and its gauge.
    pub name: String,
    pub vm_id: String,
    pub worker: Option<Rc<Worker>>,
    /// The VM's configuration count when this instance was configured.
    pub configured: u64,
    /// The latest configuration of its name at which this instance was said (logged, gauged) to
    /// serve new streams: at its configuration, or when Envoy brought it back after a later one.
    pub announced: u64,
}

impl Root {
    /// How the log names the instance.
    pub fn label(&self) -> String {
        format!("plugin '{}' instance {} (vm_id '{}')", self.name, self.id, self.vm_id)
    }

    /// Sets the instance's name's gauge to its mode: `immutable_tags.auditing.<plugin name>` is
    /// 1 while the instance serving new streams audits, 0 while it enforces.
    pub fn show_mode(&self) {
        let Some(w) = &self.worker else { return };
        let name: String = match self.name.as_str() {
            "" => "unnamed".into(),
            n => n
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() || "_.-".contains(c) { c } else { '_' })
                .collect(),
        };
        if let Ok(id) =
            abi::define_gauge(&format!("{}auditing.{name}", crate::observability::metrics::PREFIX))
        {
            let _ = abi::record(id, u64::from(w.config.mode == Mode::Audit));
        }
    }
}

/// Reads and loads the plugin configuration; `None` (with the error logged) refuses it.
/// `label` names the instance in the log.
pub fn configure(label: &str) -> Option<Rc<Worker>> {
    let host = WasmHost;
    let bytes = match abi::buffer(BufferType::PluginConfiguration, 0, usize::MAX) {
        Ok(b) => b.unwrap_or_default(),
        Err(s) => {
            host.log(
                Level::Error,
                &format!(
                    "immutable-tags {}: {label}: cannot read plugin configuration ({s:?})",
                    crate::BUILD
                ),
            );
            return None;
        }
    };
    match Config::from_json(&bytes) {
        Ok(config) => {
            // Logged on every (re)configuration, so the log says which build and policy run.
            host.log(
                Level::Info,
                &format!("immutable-tags {}: {label}: policy loaded: {}", crate::BUILD, config.summary()),
            );
            Some(Rc::new(Worker::new(&host, config)))
        }
        Err(e) => {
            host.log(Level::Error, &format!("immutable-tags {}: {label}: {e}", crate::BUILD));
            None
        }
    }
}
