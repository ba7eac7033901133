//! immutable-tags: an Envoy proxy-wasm filter that makes OCI registry tags immutable.
//!
//! # Layers
//!
//! Each layer imports only those below it (`scripts/import_graph.py`, run by
//! `tests/test_layout.py`, keeps files and folders free of import circles).
//!
//! * **The pure core** makes every decision and makes no host call, so it is tested natively
//!   and on wasm32:
//!   - [`config`]: the plugin configuration, JSON bytes -> a validated [`config::Config`]
//!     (any error names the field and the value).
//!   - [`policy`]: the policy language: is `<repository>:<tag>` immutable, and why.
//!   - [`oci`]: the distribution protocol as the registry reads it (requests, digests, errors).
//!   - [`verdict`]: each flow's decisions (push, delete, pull, break-glass), given the answers.
//!   - [`store`]: what the filter remembers about tags, as values and bytes (tag cache, claim
//!     slots, etcd records).
//!   - [`observability`]: counter names and the refusal log record.
//!   - [`util`]: the JSON reader and base64, written here for module size.
//! * [`filter`]: the per-request state machine over the [`filter::host::Host`] trait, tested
//!   natively with a fake host.
//! * [`proxy_wasm`]: the proxy-wasm ABI glue, without the SDK; built for the module only
//!   (`wasm32-wasip1`), except its pure header-map encoding.
//!
//! `proptests` (native tests only) holds the property tests over the pure core; `src/bin` the
//! `immutable-tags` CLI (`check`, `explain`) on the same parser and policy.
//!
//! # Vocabulary
//!
//! * **immutable tag**: a `<repository>:<tag>` the [`policy`] protects: once it names a
//!   manifest, a push of another digest and a delete are refused.
//! * **harmless request**: the `OPTIONS` of the same path a protected push is rewritten into at
//!   its headers: safe by HTTP's rules, it is all the registry sees of a push the filter then
//!   refuses; an allowed push is written by the filter itself with exactly the judged bytes.
//! * **tag cache**: the per-worker map tag -> digest ([`store::tag_cache`]); a hint that saves a
//!   HEAD, never trusted for absence.
//! * **claim**: a push's reservation of a tag for a digest before the registry answers, so that
//!   concurrent pushes of one immutable tag cannot both win ([`store::claims`],
//!   [`filter::claims`]); kept in shared data (one Envoy) or etcd (several replicas).
//! * **committed record**: a claim made final once the registry accepted the push: the tag's
//!   digest, which later pushes are judged against.
//! * **hold**: one push's share of a claim record: several pushes of the same digest hold one
//!   record at once, each with its own take time; a record with holds refuses every other
//!   digest, and a hold ends with its push (commit or release) or two TTLs after its take.
//! * **order**: the claim store's own counter (etcd's revision, the slot's write count), by
//!   which a view of a tag and a committed change are compared; never a wall clock.
//! * **principal**: who a request's credentials name ([`verdict::break_glass`]), the subject of
//!   a break-glass exception and of the audit record.
//! * **window**: a break-glass grant: a short time in which the named principal may overwrite or
//!   delete one immutable tag ([`filter::break_glass`], [`filter::break_glass::window`]).
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing))]

// The pure core.
pub mod config;
pub mod observability;
pub mod oci;
pub mod policy;
pub mod store;
pub mod util;
pub mod verdict;

// The per-request state machine.
pub mod filter;

// The glue (wasm32-wasip1 only, but for the header-map encoding: see its mod.rs).
pub mod proxy_wasm;

// Property tests over the pure core (proptest is a native-only dev-dependency).
#[cfg(all(test, not(target_arch = "wasm32")))]
mod proptests;

/// Crate version and git commit, stamped by `build.rs`.
pub const BUILD: &str = concat!(env!("CARGO_PKG_VERSION"), " (", env!("IMMUTABLE_TAGS_COMMIT"), ")");
