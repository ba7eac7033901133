//! What operators see:
//!
//! * [`metrics`]: the counters' names and which counter a refusal moves.
//! * [`audit`]: the JSON log record of a refusal (or, in audit mode, of a would-be refusal).

pub mod audit;
pub mod metrics;
