//! Each flow's decisions, given the request and what the registry said (pure: the flows that
//! make the calls are in [`crate::filter`]):
//!
//! * [`push`]: reading a HEAD/GET answer, and the verdict on a tag push.
//! * [`delete`]: tag deletes, and the digest-delete check (tags/list paging and bounds).
//! * [`pull`]: pull pinning: the digest path, and what a read teaches the tag cache.
//! * [`break_glass`]: who may override a refusal and why not; the principal a credential names.

pub mod break_glass;
pub mod delete;
pub mod pull;
pub mod push;
