//! immutable-tags: an Envoy proxy-wasm filter that makes OCI registry tags immutable.
//!
//! The pure core (everything but `filter` and `host`) makes every decision and makes no host
//! calls, so it is tested natively and on wasm32. `filter` is the per-request state machine,
//! written against a small host interface and tested natively with a fake host. `host` is the
//! thin proxy-wasm glue that runs it in Envoy, built only for the module (`wasm32-wasip1`).
#![cfg_attr(
    test,
    allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)
)]

pub mod audit;
pub mod base64;
pub mod break_glass;
pub mod cache;
pub mod claims;
pub mod config;
pub mod deletes;
pub mod digest;
pub mod etcd;
pub mod exclusions;
pub mod filter;
pub mod glob;
pub mod header_map;
pub mod json_doc;
pub mod metrics;
pub mod oci_error;
pub mod pattern;
pub mod policy;
pub mod pull;
pub mod request;
pub mod rules;
pub mod verdict;

#[cfg(target_os = "wasi")]
mod host;

// Property tests over the pure core (proptest is a native-only dev-dependency).
#[cfg(all(test, not(target_arch = "wasm32")))]
mod fuzz;

/// Crate version and git commit, stamped by `build.rs`.
pub const BUILD: &str = concat!(env!("CARGO_PKG_VERSION"), " (", env!("IMMUTABLE_TAGS_COMMIT"), ")");
