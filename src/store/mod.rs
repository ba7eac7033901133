//! What the filter remembers about tags, as values and bytes (pure: the host calls that read
//! and write them are in [`crate::filter`]):
//!
//! * [`tag_cache`]: the per-worker bounded, expiring tag -> digest map (a hint, never trusted
//!   for absence).
//! * [`claims`]: the record of a tag and the rule that orders claims; shared data's slots.
//! * [`etcd`]: etcd v3 gateway bodies for claim records, windows and leases, and their answers.

pub mod claims;
pub mod etcd;
pub mod tag_cache;
