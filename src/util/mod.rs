//! Small utilities of the pure core, written here rather than taken from a crate for module
//! size (each says why in its own doc):
//!
//! * [`json_doc`]: a parsed JSON document read field by field with its JSON path, and
//!   [`ConfigError`](json_doc::ConfigError), the error every configuration reader returns.
//! * [`base64`]: the two alphabets the filter reads and writes (etcd's gateway, credentials).

pub mod base64;
pub mod json_doc;
