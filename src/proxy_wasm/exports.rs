//! The module's entry points: only the proxy-wasm callbacks the filter needs.
//!
//! The host (proxy-wasm-cpp-host) skips a callback the module does not export, and every
//! exported per-stream callback is one more VM entry for every request. So there is no
//! `proxy_on_done`, `proxy_on_delete`, `proxy_on_log`, no response body or trailers callback:
//! an ordinary request (blob GET or upload chunk aside) costs `proxy_on_context_create`,
//! `proxy_on_request_headers` (one `:path` read: the host hands the value over through
//! `proxy_on_memory_allocate`, a VM entry of its own) and `proxy_on_response_headers`, makes
//! no other host call (it is counted in `ORDINARY`, added to `requests_seen` by the root's
//! timer), and keeps no state.
//!
//! `proxy_on_context_create` is the one way the ABI tells a stream which plugin instance (root
//! context) Envoy bound it to: no property does (`plugin_name`, `plugin_root_id`, `plugin_vm_id`
//! are equal for the instances of one filter's successive configurations, and Envoy brings back
//! a still-live instance for a byte-identical configuration without configuring it again). Envoy
//! creates the context right before the stream's request headers (`decodeHeaders`: `onCreate`,
//! then `onRequestHeaders`), so the module keeps only the last (stream, root) pair, no table.
//!
//! Streams under judgement (a push, a delete, a pinned read) get an entry in `STREAMS` at their
//! headers; it leaves when the registry's answer passes the filter. The host never tells us a
//! stream died (that is `proxy_on_done`/`proxy_on_delete`), so the root's timer sweeps: the host
//! refuses `proxy_set_effective_context` for a context it destroyed. Roots Envoy dropped are
//! swept the same way; until then no new stream names them (the host never reuses a live
//! context's id), so they are never chosen.
//!
//! `tests/test_exports.py` pins this export set.
use super::abi;
use super::root::{self, Root};
use super::streams::{with_stream, CALLS, CONTINUE, CURRENT, STREAMS};
use super::wasm_host::WasmHost;
use crate::filter::host::{Host, Level};
use crate::filter::worker::Worker;
use crate::filter::{Action, Filter};
use crate::observability::metrics::Counter;
use std::cell::{Cell, RefCell};
use std::rc::Rc;

/// The root's timer period: how long a finished stream's state may outlive it.
const SWEEP_PERIOD_MS: u32 = 2_000;

// The ABI's header and data statuses (CONTINUE, also what a stream without state answers, is
// in streams).
/// Headers: StopIteration (Envoy turns it into StopAllIterationAndWatermark without
/// `allow_on_headers_stop_iteration`); body: StopIterationAndBuffer; trailers: StopIteration.
const PAUSE: u32 = 1;
/// Headers: StopAllIterationAndWatermark whatever the filter config says, so the body of a held
/// response never reaches a body callback (the module exports none).
const STOP_ALL: u32 = 4;

thread_local! {
    static ROOTS: RefCell<Vec<Root>> = const { RefCell::new(Vec::new()) };
    /// Ordinary requests since the last tick, not yet in `requests_seen`.
    static ORDINARY: Cell<u64> = const { Cell::new(0) };
    /// The stream the host created last, and its root context (`proxy_on_context_create`).
    static CREATED: Cell<(u32, u32)> = const { Cell::new((0, 0)) };
    /// The root of the stream created before it: a change may be Envoy bringing an instance back.
    static SERVING: Cell<u32> = const { Cell::new(0) };
    /// Configurations loaded in this VM: orders the instances of one plugin name.
    static CONFIGURATIONS: Cell<u64> = const { Cell::new(0) };
}

fn code(a: Action) -> u32 {
    match a {
        Action::Continue => CONTINUE,
        Action::Pause => PAUSE,
    }
}

/// The configuration a new stream runs with: its own root context's, as the host named it when
/// it created the stream. None (a host that did not name it): no configuration, so writes are
/// refused (fail closed).
fn worker_for_stream(id: u32) -> Option<Rc<Worker>> {
    let (created, root) = CREATED.with(Cell::get);
    (created == id).then(|| worker_of(root)).flatten()
}

/// A new stream of another root than the one before: if a later configuration of its plugin
/// name was loaded since this instance was last said to serve, Envoy brought it back (without
/// configuring it again): the log and the gauge say so, once.
fn serving(root_id: u32) {
    let message = ROOTS.with(|r| {
        let mut roots = r.borrow_mut();
        let at = roots.iter().position(|root| root.id == root_id)?;
        let root = roots.get(at)?;
        let latest =
            roots.iter().filter(|other| other.name == root.name).map(|other| other.configured).max()?;
        if root.configured >= latest || root.announced >= latest {
            return None;
        }
        let root = roots.get_mut(at)?;
        root.announced = latest;
        root.show_mode();
        let mode = root.worker.as_ref().map_or("none (no valid configuration)", |w| w.config.mode.as_str());
        Some(format!(
            "immutable-tags {}: {} serves new streams again: mode={mode}",
            crate::BUILD,
            root.label()
        ))
    });
    if let Some(m) = message {
        WasmHost.log(Level::Info, &m);
    }
}

/// The host creates a context: a stream's names its root context (0: a root's own).
#[no_mangle]
pub extern "C" fn proxy_on_context_create(id: u32, root_id: u32) {
    CREATED.with(|c| c.set((id, root_id)));
    if root_id != 0 && SERVING.with(|s| s.replace(root_id)) != root_id {
        serving(root_id);
    }
}

/// Declares the ABI version the host speaks to us in.
#[no_mangle]
pub extern "C" fn proxy_abi_version_0_2_1() {}

/// The host's allocator for buffers it hands us: `abi::owned` frees them as a `Vec<u8>` of
/// exactly `size` bytes, so the allocation is a boxed slice of exactly that size.
#[no_mangle]
pub extern "C" fn proxy_on_memory_allocate(size: usize) -> *mut u8 {
    Box::into_raw(vec![0u8; size].into_boxed_slice()).cast::<u8>()
}

#[cfg(target_os = "wasi")]
extern "C" {
    fn __wasm_call_ctors();
}

/// The reactor's initializer: the host calls it once after instantiating the module.
#[no_mangle]
pub extern "C" fn _initialize() {
    // SAFETY: runs the module's static constructors once, as the host calls this once.
    #[cfg(target_os = "wasi")]
    unsafe {
        __wasm_call_ctors();
    }
}

#[no_mangle]
pub extern "C" fn proxy_on_configure(root_id: u32, _size: usize) -> u32 {
    let text =
        |p| abi::property(&[p]).ok().flatten().and_then(|b| String::from_utf8(b).ok()).unwrap_or_default();
    let configured = CONFIGURATIONS.with(|n| n.get().saturating_add(1));
    CONFIGURATIONS.with(|n| n.set(configured));
    let mut root = Root {
        id: root_id,
        name: text("plugin_name"),
        vm_id: text("plugin_vm_id"),
        worker: None,
        configured,
        announced: configured,
    };
    root.worker = root::configure(&root.label());
    let ok = root.worker.is_some();
    root.show_mode();
    ROOTS.with(|r| {
        let mut roots = r.borrow_mut();
        // A root reconfigured in place (Envoy reuses its id) gets its new configuration.
        roots.retain(|old| old.id != root_id);
        roots.push(root);
    });
    if let Some(w) = worker_of(root_id) {
        // The root's timer sweeps dead streams; with claims.etcd it also keeps the worker's
        // lease alive and sends commits and releases, so it runs more often.
        let period = if w.config.claims.etcd.is_some() {
            crate::filter::claims::etcd::TICK_MS as u32
        } else {
            SWEEP_PERIOD_MS
        };
        if let Err(s) = abi::set_tick_period_ms(period) {
            WasmHost.log(Level::Error, &format!("immutable-tags: cannot set the tick period ({s:?})"));
            return 0;
        }
        // Break-glass: does the registry demand authentication?
        crate::filter::break_glass::probe(&WasmHost, &w);
    }
    u32::from(ok)
}

#[no_mangle]
pub extern "C" fn proxy_on_request_headers(id: u32, _headers: usize, end_of_stream: u32) -> u32 {
    let Some(path) = Filter::first_look(&WasmHost) else {
        ORDINARY.with(|n| n.set(n.get().saturating_add(1)));
        return CONTINUE;
    };
    let mut filter = Filter::new(worker_for_stream(id));
    CURRENT.with(|c| c.set(id));
    let action = filter.on_request_headers(&WasmHost, path, end_of_stream != 0);
    CURRENT.with(|c| c.set(0));
    // Most requests leave here with nothing to remember.
    if !filter.idle() {
        STREAMS.with(|s| s.borrow_mut().insert(id, filter));
    }
    code(action)
}

#[no_mangle]
pub extern "C" fn proxy_on_request_body(id: u32, size: usize, end_of_stream: u32) -> u32 {
    with_stream(id, |f| code(f.on_request_body(&WasmHost, size, end_of_stream != 0)), |_| true)
}

#[no_mangle]
pub extern "C" fn proxy_on_request_trailers(id: u32, _trailers: usize) -> u32 {
    with_stream(id, |f| code(f.on_request_trailers(&WasmHost)), |_| true)
}

#[no_mangle]
pub extern "C" fn proxy_on_response_headers(id: u32, _headers: usize, _end_of_stream: u32) -> u32 {
    with_stream(
        id,
        |f| match f.on_response_headers(&WasmHost) {
            Action::Continue => CONTINUE,
            Action::Pause => STOP_ALL,
        },
        // The answer passed: only a push still holding the harmless request's answer stays.
        Filter::in_flight,
    )
}

/// The worker of a root context, if it has a valid configuration.
fn worker_of(root_id: u32) -> Option<Rc<Worker>> {
    ROOTS.with(|r| r.borrow().iter().find(|root| root.id == root_id).and_then(|root| root.worker.clone()))
}

#[no_mangle]
pub extern "C" fn proxy_on_http_call_response(
    id: u32,
    token: u32,
    _headers: usize,
    body_size: usize,
    _trailers: usize,
) {
    // Every call is the root context's (proxy-wasm dispatches `http_call` on the root), so its
    // answer comes even when the stream that made it is gone.
    let stream = CALLS.with(|c| c.borrow_mut().remove(&token)).unwrap_or(0);
    // Host calls from here act on the stream that made the call, if it still lives.
    if stream != 0 && abi::set_effective_context(stream).is_err() {
        // Gone, and not swept yet: its state ends now, then the answer is the root's.
        if let Some(mut f) = STREAMS.with(|s| s.borrow_mut().remove(&stream)) {
            f.on_swept(&WasmHost);
        }
        let _ = abi::set_effective_context(id);
        return root_response(id, token, body_size);
    }
    // The root's own call, or a stream whose state ended (a delete answered while it took windows).
    if stream == 0 || !STREAMS.with(|s| s.borrow().contains_key(&stream)) {
        let _ = abi::set_effective_context(id);
        return root_response(id, token, body_size);
    }
    with_stream(
        stream,
        |f| {
            f.on_call_response(&WasmHost, token, body_size);
            CONTINUE
        },
        // A stream with nothing left to do (a held answer let go) leaves at once.
        |f| !f.idle(),
    );
}

/// An answer to a call of the root's own (the break-glass probe; etcd claims' leases, commits,
/// releases), to a write whose client left (its claims are settled all the same), or to a
/// window's use whose stream ended (the window goes back).
fn root_response(root_id: u32, token: u32, body_size: usize) {
    let Some(w) = worker_of(root_id) else { return };
    if !crate::filter::break_glass::learn(&WasmHost, &w, token)
        && !crate::filter::push::orphan_answer(&WasmHost, &w, token, body_size)
        && !crate::filter::root_answer(&WasmHost, &w, token, body_size)
    {
        crate::filter::claims::etcd::on_root_response(&WasmHost, &w, token, body_size);
    }
}

/// The root's timer: drops the state of streams, and the roots, the host has destroyed.
#[no_mangle]
pub extern "C" fn proxy_on_tick(root_id: u32) {
    if let Some(w) = worker_of(root_id) {
        w.count_many(&WasmHost, Counter::RequestsSeen, ORDINARY.with(|n| n.replace(0)));
        crate::filter::claims::etcd::tick(&WasmHost, &w);
        crate::filter::break_glass::probe(&WasmHost, &w);
    }
    let ids: Vec<u32> = STREAMS.with(|s| s.borrow().keys().copied().collect());
    let mut gone = Vec::new();
    for id in ids {
        if abi::set_effective_context(id).is_err() {
            gone.push(id);
        }
    }
    // Roots of replaced configurations go too, so that one root is again the common case.
    ROOTS.with(|r| {
        r.borrow_mut().retain(|root| root.id == root_id || abi::set_effective_context(root.id).is_ok())
    });
    let _ = abi::set_effective_context(root_id);
    if gone.is_empty() {
        return;
    }
    for id in &gone {
        if let Some(mut f) = STREAMS.with(|s| s.borrow_mut().remove(id)) {
            f.on_swept(&WasmHost);
        }
    }
    // Their calls' answers still come: to the root now (a write's settles its claims).
    CALLS.with(|c| c.borrow_mut().values_mut().filter(|s| gone.contains(s)).for_each(|s| *s = 0));
}
