//! Envoy counters for the filter (`crate::metrics` names them). Defined once per VM by the root
//! context; incrementing is best effort: a metric is never worth failing a request for.
use crate::metrics::Counter;
use super::abi;

pub struct Metrics {
    /// Envoy's metric id per `Counter::ALL` position; `None` if it could not be defined.
    ids: Vec<Option<u32>>,
}

impl Metrics {
    /// Defines every counter. Envoy answers the same id for a name defined before, so this is
    /// safe to repeat on reconfiguration.
    pub fn define() -> Metrics {
        let ids = Counter::ALL
            .iter()
            .map(|c| abi::define_counter(&c.name()).ok())
            .collect();
        Metrics { ids }
    }

    pub fn add(&self, counter: Counter) {
        if let Some(Some(id)) = self.ids.get(counter.index()) {
            let _ = abi::increment(*id, 1);
        }
    }
}
