//! Heap bytes of one worker's tag-to-digest map at its configured maximum (the default
//! `cache.max_entries`, 10,000), with realistic repository and tag names, counted by a global
//! allocator. Prints one JSON line for bench/bench.py.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use immutable_tags::config::Config;
use immutable_tags::oci::digest::Digest;
use immutable_tags::store::tag_cache::TagCache;
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

struct Counting;
static LIVE: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        LIVE.fetch_add(new as isize - l.size() as isize, Ordering::Relaxed);
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn main() {
    let max = Config::from_json(b"").unwrap().cache.max_entries;
    let before = LIVE.load(Ordering::Relaxed);
    let mut cache = TagCache::new(max, 60);
    // Twice the bound: the map must stay at `max` entries while it keeps learning.
    for i in 0..2 * max {
        let repo = format!("platform-team/service-{:03}/api", i % 500);
        let tag = format!("v1.{}.{}-build.{:06}", i % 40, i % 17, i);
        cache.put(&repo, &tag, Digest::sha256(tag.as_bytes()), i as u64);
    }
    assert_eq!(cache.len(), max);
    let bytes = LIVE.load(Ordering::Relaxed) - before;
    println!(
        "{}",
        serde_json::json!({"bench": "tag_cache_memory", "max_entries": max, "bytes": bytes,
                           "bytes_per_entry": bytes as f64 / max as f64})
    );
}
