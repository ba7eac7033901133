//! The proxy-wasm host calls this filter makes, declared here so that every status the host
//! returns is a value we handle. The SDK's `hostcalls` wrappers `panic!` on any status they do
//! not expect (Envoy answers BadArgument to a request-header read after the headers phase, for
//! example), and a panic traps the VM for every later request. Statuses are read as raw `u32`:
//! an unknown value is an error here, not undefined behaviour.
//!
//! The module has no proxy-wasm SDK: the enum values below are the ABI's (proxy-wasm spec 0.2.1).
use std::ptr::{null, null_mut};

/// Header maps (`proxy_get_header_map_*`).
#[allow(clippy::enum_variant_names)] // the ABI's names
#[derive(Debug, Clone, Copy)]
pub enum MapType {
    RequestHeaders = 0,
    ResponseHeaders = 2,
    CallResponseHeaders = 6,
}

/// Buffers (`proxy_get_buffer_bytes`).
#[derive(Debug, Clone, Copy)]
pub enum BufferType {
    HttpRequestBody = 0,
    HttpCallResponseBody = 4,
    PluginConfiguration = 7,
}

#[derive(Debug, Clone, Copy)]
pub enum LogLevel {
    Info = 2,
    Warn = 3,
    Error = 4,
}

const METRIC_COUNTER: u32 = 0;
const METRIC_GAUGE: u32 = 1;

#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_log(level: u32, message_data: *const u8, message_size: usize) -> u32;
    fn proxy_get_current_time_nanoseconds(return_time: *mut u64) -> u32;
    fn proxy_get_header_map_value(
        map_type: u32,
        key_data: *const u8,
        key_size: usize,
        return_value_data: *mut *mut u8,
        return_value_size: *mut usize,
    ) -> u32;
    fn proxy_replace_header_map_value(
        map_type: u32,
        key_data: *const u8,
        key_size: usize,
        value_data: *const u8,
        value_size: usize,
    ) -> u32;
    fn proxy_remove_header_map_value(map_type: u32, key_data: *const u8, key_size: usize) -> u32;
    fn proxy_get_buffer_bytes(
        buffer_type: u32,
        start: usize,
        max_size: usize,
        return_buffer_data: *mut *mut u8,
        return_buffer_size: *mut usize,
    ) -> u32;
    fn proxy_get_property(
        path_data: *const u8,
        path_size: usize,
        return_value_data: *mut *mut u8,
        return_value_size: *mut usize,
    ) -> u32;
    fn proxy_send_local_response(
        status_code: u32,
        status_code_details_data: *const u8,
        status_code_details_size: usize,
        body_data: *const u8,
        body_size: usize,
        headers_data: *const u8,
        headers_size: usize,
        grpc_status: i32,
    ) -> u32;
    fn proxy_continue_stream(stream_type: u32) -> u32;
    fn proxy_get_header_map_pairs(
        map_type: u32,
        return_map_data: *mut *mut u8,
        return_map_size: *mut usize,
    ) -> u32;
    fn proxy_define_metric(
        metric_type: u32,
        name_data: *const u8,
        name_size: usize,
        return_id: *mut u32,
    ) -> u32;
    fn proxy_increment_metric(metric_id: u32, offset: i64) -> u32;
    fn proxy_record_metric(metric_id: u32, value: u64) -> u32;
    fn proxy_get_shared_data(
        key_data: *const u8,
        key_size: usize,
        return_value_data: *mut *mut u8,
        return_value_size: *mut usize,
        return_cas: *mut u32,
    ) -> u32;
    fn proxy_set_shared_data(
        key_data: *const u8,
        key_size: usize,
        value_data: *const u8,
        value_size: usize,
        cas: u32,
    ) -> u32;
    fn proxy_http_call(
        upstream_data: *const u8,
        upstream_size: usize,
        headers_data: *const u8,
        headers_size: usize,
        body_data: *const u8,
        body_size: usize,
        trailers_data: *const u8,
        trailers_size: usize,
        timeout_ms: u32,
        return_token: *mut u32,
    ) -> u32;
    fn proxy_set_tick_period_milliseconds(period_ms: u32) -> u32;
    fn proxy_set_effective_context(context_id: u32) -> u32;
}

const OK: u32 = 0;
const NOT_FOUND: u32 = 1;
pub const CAS_MISMATCH: u32 = 8;
const STREAM_HTTP_REQUEST: u32 = 0;
const STREAM_HTTP_RESPONSE: u32 = 1;

/// A host status other than Ok.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Status(pub u32);

fn check(status: u32) -> Result<(), Status> {
    if status == OK {
        Ok(())
    } else {
        Err(Status(status))
    }
}

/// Takes ownership of a buffer the host allocated through our `proxy_on_memory_allocate`.
///
/// # Safety
/// `data`/`size` must come from a host call that just returned Ok with them.
unsafe fn owned(data: *mut u8, size: usize) -> Vec<u8> {
    if data.is_null() {
        Vec::new()
    } else {
        Vec::from_raw_parts(data, size, size)
    }
}

/// Reads something the host returns as bytes: `Ok(None)` for NotFound.
fn read(call: impl FnOnce(*mut *mut u8, *mut usize) -> u32) -> Result<Option<Vec<u8>>, Status> {
    let (mut data, mut size) = (null_mut(), 0usize);
    match call(&mut data, &mut size) {
        // SAFETY: the host returned Ok with a buffer it allocated for us.
        OK => Ok(Some(unsafe { owned(data, size) })),
        NOT_FOUND => Ok(None),
        s => Err(Status(s)),
    }
}

pub fn log(level: LogLevel, message: &str) -> Result<(), Status> {
    // SAFETY: pointer and length of a live &str.
    check(unsafe { proxy_log(level as u32, message.as_ptr(), message.len()) })
}

pub fn now_nanos() -> Result<u64, Status> {
    let mut t = 0u64;
    // SAFETY: the host writes one u64 through a valid pointer.
    check(unsafe { proxy_get_current_time_nanoseconds(&mut t) })?;
    Ok(t)
}

pub fn header(map: MapType, name: &str) -> Result<Option<Vec<u8>>, Status> {
    // SAFETY: valid key pointer/length; out-pointers are valid for the call.
    read(|d, s| unsafe { proxy_get_header_map_value(map as u32, name.as_ptr(), name.len(), d, s) })
}

/// Every entry of a header map (undecodable entries dropped, see `header_map::decode`).
pub fn headers(map: MapType) -> Result<Vec<(String, String)>, Status> {
    // SAFETY: out-pointers are valid for the call.
    let bytes = read(|d, s| unsafe { proxy_get_header_map_pairs(map as u32, d, s) })?;
    Ok(bytes.map(|b| crate::proxy_wasm::header_map::decode(&b)).unwrap_or_default())
}

pub fn replace_header(map: MapType, name: &str, value: &[u8]) -> Result<(), Status> {
    // SAFETY: valid pointers and lengths for the duration of the call.
    check(unsafe {
        proxy_replace_header_map_value(map as u32, name.as_ptr(), name.len(), value.as_ptr(), value.len())
    })
}

pub fn remove_header(map: MapType, name: &str) -> Result<(), Status> {
    // SAFETY: valid pointer and length for the duration of the call.
    check(unsafe { proxy_remove_header_map_value(map as u32, name.as_ptr(), name.len()) })
}

pub fn buffer(kind: BufferType, start: usize, max_size: usize) -> Result<Option<Vec<u8>>, Status> {
    // SAFETY: out-pointers are valid for the call.
    read(|d, s| unsafe { proxy_get_buffer_bytes(kind as u32, start, max_size, d, s) })
}

pub fn property(path: &[&str]) -> Result<Option<Vec<u8>>, Status> {
    // The host's path encoding: each segment followed by a NUL.
    let mut p = Vec::new();
    for seg in path {
        p.extend_from_slice(seg.as_bytes());
        p.push(0);
    }
    // SAFETY: valid path pointer/length; out-pointers are valid for the call.
    read(|d, s| unsafe { proxy_get_property(p.as_ptr(), p.len(), d, s) })
}

/// `details` becomes the stream's response code details (`%RESPONSE_CODE_DETAILS%`).
pub fn send_local_response(
    status: u32,
    details: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<(), Status> {
    let h = crate::proxy_wasm::header_map::encode(headers);
    // SAFETY: valid pointers and lengths for the duration of the call; -1: no gRPC status.
    check(unsafe {
        proxy_send_local_response(
            status,
            details.as_ptr(),
            details.len(),
            body.as_ptr(),
            body.len(),
            h.as_ptr(),
            h.len(),
            -1,
        )
    })
}

pub fn resume_request() -> Result<(), Status> {
    // SAFETY: no pointers.
    check(unsafe { proxy_continue_stream(STREAM_HTTP_REQUEST) })
}

pub fn resume_response() -> Result<(), Status> {
    // SAFETY: no pointers.
    check(unsafe { proxy_continue_stream(STREAM_HTTP_RESPONSE) })
}

pub fn define_counter(name: &str) -> Result<u32, Status> {
    define_metric(METRIC_COUNTER, name)
}

pub fn define_gauge(name: &str) -> Result<u32, Status> {
    define_metric(METRIC_GAUGE, name)
}

fn define_metric(kind: u32, name: &str) -> Result<u32, Status> {
    let mut id = 0u32;
    // SAFETY: valid name pointer/length; the host writes one u32.
    check(unsafe { proxy_define_metric(kind, name.as_ptr(), name.len(), &mut id) })?;
    Ok(id)
}

/// Sets a gauge.
pub fn record(id: u32, value: u64) -> Result<(), Status> {
    // SAFETY: no pointers.
    check(unsafe { proxy_record_metric(id, value) })
}

pub fn increment(id: u32, by: i64) -> Result<(), Status> {
    // SAFETY: no pointers.
    check(unsafe { proxy_increment_metric(id, by) })
}

#[link(wasm_import_module = "wasi_snapshot_preview1")]
extern "C" {
    fn random_get(buf: *mut u8, len: usize) -> u16;
}

/// Fills `buf` from the host's cryptographic generator (Envoy: BoringSSL's `RAND_bytes`).
/// Called directly rather than through std, whose wrapper panics on an error.
pub fn random(buf: &mut [u8]) -> Result<(), u16> {
    // SAFETY: valid buffer pointer/length; the host writes at most `len` bytes.
    match unsafe { random_get(buf.as_mut_ptr(), buf.len()) } {
        0 => Ok(()),
        errno => Err(errno),
    }
}

/// Process-wide shared data: the value (if any) and its CAS token.
pub fn get_shared(key: &str) -> Result<(Option<Vec<u8>>, u32), Status> {
    let (mut data, mut size, mut cas) = (null_mut(), 0usize, 0u32);
    // SAFETY: valid key pointer/length; out-pointers are valid for the call.
    match unsafe { proxy_get_shared_data(key.as_ptr(), key.len(), &mut data, &mut size, &mut cas) } {
        // SAFETY: Ok with a host-allocated buffer.
        OK => Ok((Some(unsafe { owned(data, size) }), cas)),
        NOT_FOUND => Ok((None, 0)),
        s => Err(Status(s)),
    }
}

/// Writes shared data if its CAS token is still `cas` (0: unconditionally);
/// `Err(Status(CAS_MISMATCH))` if another writer came first.
pub fn set_shared(key: &str, value: &[u8], cas: u32) -> Result<(), Status> {
    // SAFETY: valid pointers and lengths for the duration of the call.
    check(unsafe { proxy_set_shared_data(key.as_ptr(), key.len(), value.as_ptr(), value.len(), cas) })
}

/// Sends an HTTP call to `cluster`; the host answers with `proxy_on_http_call_response` on the
/// calling stream's context, carrying the returned token.
pub fn http_call(
    cluster: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
    timeout_ms: u32,
) -> Result<u32, Status> {
    let h = crate::proxy_wasm::header_map::encode(headers);
    let t = crate::proxy_wasm::header_map::encode(&[]);
    let (b, n) = body.map_or((null(), 0), |b| (b.as_ptr(), b.len()));
    let mut token = 0u32;
    // SAFETY: valid pointers and lengths for the duration of the call.
    check(unsafe {
        proxy_http_call(
            cluster.as_ptr(),
            cluster.len(),
            h.as_ptr(),
            h.len(),
            b,
            n,
            t.as_ptr(),
            t.len(),
            timeout_ms,
            &mut token,
        )
    })?;
    Ok(token)
}

pub fn set_tick_period_ms(period_ms: u32) -> Result<(), Status> {
    // SAFETY: no pointers.
    check(unsafe { proxy_set_tick_period_milliseconds(period_ms) })
}

/// Makes `context_id` the target of the following host calls. BadArgument when no such
/// context exists any more: the host forgets a stream's context when the stream is destroyed,
/// which is how the root's timer tells a finished stream from a live one.
pub fn set_effective_context(context_id: u32) -> Result<(), Status> {
    // SAFETY: no pointers.
    check(unsafe { proxy_set_effective_context(context_id) })
}
