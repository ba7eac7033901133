//! The OCI distribution protocol, read the way the registry reads it:
//!
//! * [`request`]: which requests touch a tag (classification, path and name grammar).
//! * [`digest`]: content digests, as registries report them and the filter computes them.
//! * [`error`]: the OCI error responses the filter answers with when it refuses.

pub mod digest;
pub mod error;
pub mod request;
