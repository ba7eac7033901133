//! The per-stream tables: the state of each stream under judgement, which stream made each
//! dispatched call, and the stream whose callback runs now. `exports` (the callbacks) and
//! `wasm` (the `Host` impl, which records each call it dispatches) both write them, so they
//! live here, below both.

use crate::filter::Filter;
use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;

/// The ABI's Continue status: what a callback answers for a stream without state.
pub const CONTINUE: u32 = 0;

thread_local! {
    pub static STREAMS: RefCell<BTreeMap<u32, Filter>> = const { RefCell::new(BTreeMap::new()) };
    /// Dispatched call token -> the stream that made it.
    pub static CALLS: RefCell<BTreeMap<u32, u32>> = const { RefCell::new(BTreeMap::new()) };
    /// The stream whose callback runs now (0: a root callback).
    pub static CURRENT: Cell<u32> = const { Cell::new(0) };
}

/// Records that `token`'s answer belongs to the current stream.
pub fn register_call(token: u32) {
    let stream = CURRENT.with(Cell::get);
    CALLS.with(|c| c.borrow_mut().insert(token, stream));
}

/// Runs `f` on the stream's state, if it has any; the state is out of the table meanwhile, so
/// nothing the host does during the callback can find it borrowed. `keep` decides whether it
/// goes back.
pub fn with_stream(id: u32, f: impl FnOnce(&mut Filter) -> u32, keep: impl FnOnce(&Filter) -> bool) -> u32 {
    let Some(mut filter) = STREAMS.with(|s| s.borrow_mut().remove(&id)) else { return CONTINUE };
    CURRENT.with(|c| c.set(id));
    let status = f(&mut filter);
    CURRENT.with(|c| c.set(0));
    if keep(&filter) {
        STREAMS.with(|s| s.borrow_mut().insert(id, filter));
    }
    status
}
