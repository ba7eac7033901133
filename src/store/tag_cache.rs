//! The per-worker tag-to-digest map: bounded (least recently used entries go first) and
//! expiring (a stale entry is revalidated by HEAD before use). It is only ever a hint that
//! saves a HEAD: a fresh entry is trusted for at most `ttl` and absence is never cached.
//!
//! Each entry records where it was learned ([`Source`]), which decides what it may be used for:
//!
//! | source | pins a read | backs a push verdict alone |
//! |---|---|---|
//! | [`Source::Head`]: the filter's own HEAD/GET | yes | yes |
//! | [`Source::Push`]: the registry's 201 to a push the filter wrote | yes | yes |
//! | [`Source::Read`]: a client's read (pinning) | yes | no: the registry is asked |
//!
//! [`TagCache::get`] and [`TagCache::get_since`] (the push and delete checks) only return entries
//! that may back a verdict; [`TagCache::get_for_read`] (pinning) returns any. A delete is never let
//! through on any entry: the map can only make it refuse sooner ([`crate::verdict::delete`]).

use crate::oci::digest::Digest;
use lru::LruCache;
use std::num::NonZeroUsize;

/// Where the map learned an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The filter's own HEAD (or GET) of the tag: sent to `upstream.cluster` with every manifest
    /// type accepted and no query, so the registry answers with the tag's manifest as stored.
    Head,
    /// The registry's `201` (with its digest) to a push the filter wrote itself.
    Push,
    /// A client's read of the tag (pinning), whose `Accept` named every stored manifest type
    /// (`pull::accepts_every_stored_type`). Good enough to pin other such reads, but the client
    /// chose the request (its query, its other headers, the route that took it, perhaps to
    /// another cluster than the filter's), so a write or delete is never let through on it.
    Read,
}

impl Source {
    /// Whether an entry of this source may alone back a verdict that lets a write or a delete
    /// through (one that agrees with the push, or says a tag does not hold a deleted digest).
    pub fn backs_verdicts(self) -> bool {
        matches!(self, Source::Head | Source::Push)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    repository: String,
    tag: String,
}

#[derive(Debug)]
struct Entry {
    digest: Digest,
    learned_at_ms: u64,
    /// The claim store's order of the view that taught it (`claims::View`; 0: none known).
    order: u64,
    source: Source,
}

#[derive(Debug)]
pub struct TagCache {
    map: LruCache<Key, Entry>,
    ttl_ms: u64,
}

impl TagCache {
    pub fn new(max_entries: usize, ttl_seconds: u64) -> TagCache {
        let cap = NonZeroUsize::new(max_entries).unwrap_or(NonZeroUsize::MIN);
        TagCache { map: LruCache::new(cap), ttl_ms: ttl_seconds.saturating_mul(1000) }
    }

    fn key(repository: &str, tag: &str) -> Key {
        Key { repository: repository.to_string(), tag: tag.to_string() }
    }

    /// The digest learned for `repository:tag`, if learned less than `ttl` ago from a source
    /// that may back a push or delete verdict ([`Source::backs_verdicts`]).
    pub fn get(&mut self, repository: &str, tag: &str, now_ms: u64) -> Option<Digest> {
        self.get_since(repository, tag, now_ms).map(|(d, _)| d)
    }

    /// Like `get`, with the time the entry was learned: what the map says is only known to be
    /// true since then.
    pub fn get_since(&mut self, repository: &str, tag: &str, now_ms: u64) -> Option<(Digest, u64)> {
        self.get_view(repository, tag, now_ms).map(|(d, at, _)| (d, at))
    }

    /// Like `get_since`, with the claim store's order of the view that taught the entry.
    pub fn get_view(&mut self, repository: &str, tag: &str, now_ms: u64) -> Option<(Digest, u64, u64)> {
        let order = self.map.peek(&Self::key(repository, tag)).map_or(0, |e| e.order);
        self.entry(repository, tag, now_ms)
            .filter(|(_, _, s)| s.backs_verdicts())
            .map(|(d, at, _)| (d, at, order))
    }

    /// The digest a read may be pinned to: learned less than `ttl` ago, from any source.
    pub fn get_for_read(&mut self, repository: &str, tag: &str, now_ms: u64) -> Option<Digest> {
        self.entry(repository, tag, now_ms).map(|(d, _, _)| d)
    }

    /// A fresh entry (a stale one is dropped), marked used.
    fn entry(&mut self, repository: &str, tag: &str, now_ms: u64) -> Option<(Digest, u64, Source)> {
        let key = Self::key(repository, tag);
        let fresh = match self.map.get(&key) {
            None => return None,
            Some(e) => now_ms.saturating_sub(e.learned_at_ms) < self.ttl_ms,
        };
        if fresh {
            self.map.peek(&key).map(|e| (e.digest.clone(), e.learned_at_ms, e.source))
        } else {
            self.map.pop(&key);
            None
        }
    }

    /// Learned from the filter's own HEAD or GET ([`Source::Head`]).
    pub fn put(&mut self, repository: &str, tag: &str, digest: Digest, now_ms: u64) {
        self.put_from(repository, tag, digest, now_ms, Source::Head);
    }

    /// Learned from `source`. A client's read never makes an entry that backs verdicts younger:
    /// one that agrees with it is kept as it is, one that disagrees is replaced (and so no
    /// longer backs any verdict).
    pub fn put_from(&mut self, repository: &str, tag: &str, digest: Digest, now_ms: u64, source: Source) {
        self.put_ordered(repository, tag, digest, now_ms, 0, source);
    }

    /// Like `put_from`, for a view of this claim-store `order` (0: unknown, the oldest).
    pub fn put_ordered(
        &mut self,
        repository: &str,
        tag: &str,
        digest: Digest,
        now_ms: u64,
        order: u64,
        source: Source,
    ) {
        if self.ttl_ms == 0 {
            return;
        }
        let key = Self::key(repository, tag);
        if source == Source::Read {
            if let Some(e) = self.map.peek(&key) {
                let fresh = now_ms.saturating_sub(e.learned_at_ms) < self.ttl_ms;
                if fresh && e.source.backs_verdicts() && e.digest == digest {
                    return;
                }
            }
        }
        self.map.put(key, Entry { digest, learned_at_ms: now_ms, order, source });
    }

    pub fn forget(&mut self, repository: &str, tag: &str) {
        self.map.pop(&Self::key(repository, tag));
    }

    /// Forgets every tag of `repository` learned to point to `digest` (the manifest is gone).
    pub fn forget_digest(&mut self, repository: &str, digest: &Digest) {
        let keys: Vec<Key> = self
            .map
            .iter()
            .filter(|(k, e)| k.repository == repository && e.digest == *digest)
            .map(|(k, _)| k.clone())
            .collect();
        for k in keys {
            self.map.pop(&k);
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn capacity(&self) -> usize {
        self.map.cap().get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    // The same tests run on wasm32 under wasm-bindgen-test (Node.js).
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn d(s: &str) -> Digest {
        Digest::sha256(s.as_bytes())
    }

    #[test]
    fn fresh_entries_are_served_and_stale_ones_dropped() {
        let mut c = TagCache::new(10, 60);
        assert!(c.is_empty());
        c.put("app", "v1", d("a"), 1_000);
        assert!(!c.is_empty());
        assert_eq!(c.get("app", "v1", 60_999), Some(d("a")));
        assert_eq!(c.get_since("app", "v1", 60_999), Some((d("a"), 1_000)));
        assert_eq!(c.get("app", "v1", 61_000), None);
        assert!(c.is_empty(), "a stale entry is removed on lookup");
        assert_eq!(c.get("app", "v2", 0), None);
    }

    #[test]
    fn bounded_by_max_entries_least_recent_first() {
        let mut c = TagCache::new(3, 60);
        for (i, t) in ["a", "b", "c"].iter().enumerate() {
            c.put("app", t, d(t), i as u64);
        }
        assert!(c.get("app", "a", 10).is_some()); // a is now the most recent
        c.put("app", "d", d("d"), 11);
        assert_eq!(c.len(), 3);
        assert_eq!(c.get("app", "b", 12), None, "least recently used goes first");
        assert!(c.get("app", "a", 12).is_some());
        for i in 0..10_000 {
            c.put("app", &format!("t{i}"), d("x"), 20);
            assert!(c.len() <= 3);
        }
    }

    #[test]
    fn zero_ttl_disables_and_forget_removes() {
        let mut c = TagCache::new(3, 0);
        c.put("app", "v1", d("a"), 0);
        assert_eq!(c.get("app", "v1", 0), None);
        let mut c = TagCache::new(3, 60);
        c.put("app", "v1", d("a"), 0);
        c.forget("app", "v1");
        assert_eq!(c.get("app", "v1", 0), None);
    }

    #[test]
    fn forget_digest_drops_only_that_repository_and_digest() {
        let mut c = TagCache::new(10, 60);
        c.put("app", "a", d("1"), 0);
        c.put("app", "b", d("1"), 0);
        c.put("app", "c", d("2"), 0);
        c.put("other", "a", d("1"), 0);
        c.forget_digest("app", &d("1"));
        assert_eq!(c.get("app", "a", 0), None);
        assert_eq!(c.get("app", "b", 0), None);
        assert_eq!(c.get("app", "c", 0), Some(d("2")));
        assert_eq!(c.get("other", "a", 0), Some(d("1")));
    }

    #[test]
    fn repository_and_tag_are_separate_key_parts() {
        let mut c = TagCache::new(10, 60);
        c.put("a/b", "c", d("1"), 0);
        assert_eq!(c.get("a", "b/c", 0), None);
    }

    #[test]
    fn only_entries_from_the_filter_s_own_reads_and_writes_back_verdicts() {
        let mut c = TagCache::new(10, 60);
        c.put("app", "head", d("h"), 0);
        c.put_from("app", "push", d("p"), 0, Source::Push);
        c.put_from("app", "read", d("r"), 0, Source::Read);
        assert_eq!(c.get("app", "head", 1), Some(d("h")));
        assert_eq!(c.get_since("app", "push", 1), Some((d("p"), 0)));
        assert_eq!(c.get("app", "read", 1), None, "a client's read backs no verdict");
        assert_eq!(c.get_since("app", "read", 1), None);
        for (t, v) in [("head", "h"), ("push", "p"), ("read", "r")] {
            assert_eq!(c.get_for_read("app", t, 1), Some(d(v)), "every entry pins a read");
        }
        assert_eq!(c.get_for_read("app", "read", 60_000), None, "and expires");
    }

    #[test]
    fn a_read_never_freshens_or_lends_its_word_to_a_trusted_entry() {
        let mut c = TagCache::new(10, 60);
        c.put("app", "v1", d("a"), 0);
        c.put_from("app", "v1", d("a"), 50_000, Source::Read);
        assert_eq!(c.get_since("app", "v1", 50_000), Some((d("a"), 0)), "kept as learned");
        assert_eq!(c.get("app", "v1", 60_000), None, "not freshened");
        c.put("app", "v1", d("a"), 0);
        c.put_from("app", "v1", d("b"), 1, Source::Read);
        assert_eq!(c.get("app", "v1", 2), None, "a disagreeing read: no verdict on the map's word");
        assert_eq!(c.get_for_read("app", "v1", 2), Some(d("b")));
        c.put("app", "v1", d("c"), 3);
        assert_eq!(c.get("app", "v1", 4), Some(d("c")), "the filter's own HEAD replaces a read");
        // Once the trusted entry is stale, the read's word is taken (for reads only).
        c.put("app", "v1", d("a"), 0);
        c.put_from("app", "v1", d("a"), 60_000, Source::Read);
        assert_eq!(c.get_for_read("app", "v1", 60_001), Some(d("a")));
        assert_eq!(c.get("app", "v1", 60_001), None);
        let mut c = TagCache::new(10, 0);
        c.put_from("app", "v1", d("a"), 0, Source::Read);
        assert!(c.is_empty());
    }
}
