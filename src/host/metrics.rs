//! Envoy counters for the filter (`crate::metrics` names them). Defined once per VM by the root
//! context; incrementing is best effort: a metric is never worth failing a request for.
use crate::metrics::Counter;
use proxy_wasm::hostcalls;
use proxy_wasm::types::MetricType;

pub struct Metrics {
    /// Envoy's metric id per `Counter::ALL` position; `None` if it could not be defined.
    ids: Vec<Option<u32>>,
}

impl Metrics {
    /// Defines every counter. Envoy answers a valid type and name with Ok and the same id for a
    /// name defined before, so this is safe to repeat on reconfiguration (the SDK's wrapper
    /// panics on any other status; only fixed, valid names and the counter type are passed).
    pub fn define() -> Metrics {
        let ids = Counter::ALL
            .iter()
            .map(|c| hostcalls::define_metric(MetricType::Counter, &c.name()).ok())
            .collect();
        Metrics { ids }
    }

    pub fn add(&self, counter: Counter) {
        if let Some(Some(id)) = self.ids.get(counter.index()) {
            let _ = hostcalls::increment_metric(*id, 1);
        }
    }
}
