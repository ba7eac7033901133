//! Header and clock access that never panics: values are read as bytes (the SDK's `String`
//! getters unwrap on non-UTF-8) and anything unreadable is `None`.
use proxy_wasm::hostcalls;
use proxy_wasm::types::{BufferType, MapType};
use std::time::UNIX_EPOCH;

fn value(map: MapType, name: &str) -> Option<String> {
    match hostcalls::get_map_value_bytes(map, name) {
        Ok(Some(v)) => String::from_utf8(v).ok(),
        _ => None,
    }
}

pub fn request(name: &str) -> Option<String> {
    value(MapType::HttpRequestHeaders, name)
}

pub fn response(name: &str) -> Option<String> {
    value(MapType::HttpResponseHeaders, name)
}

pub fn call_response(name: &str) -> Option<String> {
    value(MapType::HttpCallResponseHeaders, name)
}

/// The whole buffered request body; `None` if the host will not give it.
pub fn request_body(size: usize) -> Option<Vec<u8>> {
    match hostcalls::get_buffer(BufferType::HttpRequestBody, 0, size) {
        Ok(b) => Some(b.unwrap_or_default()),
        Err(_) => None,
    }
}

pub fn now_ms() -> u64 {
    hostcalls::get_current_time()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The body of a dispatched call's answer; `None` if the host will not give it.
pub fn call_response_body(size: usize) -> Option<Vec<u8>> {
    match hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, size) {
        Ok(b) => Some(b.unwrap_or_default()),
        Err(_) => None,
    }
}

/// A host property as text (e.g. `["source", "address"]`); `None` if absent or unreadable.
pub fn property(path: &[&str]) -> Option<String> {
    match hostcalls::get_property(path.to_vec()) {
        Ok(Some(v)) => String::from_utf8(v).ok(),
        _ => None,
    }
}
