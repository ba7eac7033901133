//! Header, body, property and clock access that never panics: values are read as bytes (the
//! SDK's `String` getters unwrap on non-UTF-8) through `abi`, and anything unreadable is `None`.
use super::abi;
use proxy_wasm::types::{BufferType, MapType};

fn value(map: MapType, name: &str) -> Option<String> {
    abi::header(map, name).ok().flatten().and_then(|v| String::from_utf8(v).ok())
}

/// A request header. Only valid in the request-headers phase: Envoy refuses the read later.
pub fn request(name: &str) -> Option<String> {
    value(MapType::HttpRequestHeaders, name)
}

pub fn response(name: &str) -> Option<String> {
    value(MapType::HttpResponseHeaders, name)
}

pub fn call_response(name: &str) -> Option<String> {
    value(MapType::HttpCallResponseHeaders, name)
}

fn body(kind: BufferType, size: usize) -> Option<Vec<u8>> {
    abi::buffer(kind, 0, size).ok().map(Option::unwrap_or_default)
}

/// The whole buffered request body; `None` if the host will not give it.
pub fn request_body(size: usize) -> Option<Vec<u8>> {
    body(BufferType::HttpRequestBody, size)
}

/// The body of a dispatched call's answer; `None` if the host will not give it.
pub fn call_response_body(size: usize) -> Option<Vec<u8>> {
    body(BufferType::HttpCallResponseBody, size)
}

/// A host property as text (e.g. `["source", "address"]`); `None` if absent or unreadable.
pub fn property(path: &[&str]) -> Option<String> {
    abi::property(path).ok().flatten().and_then(|v| String::from_utf8(v).ok())
}

pub fn now_ms() -> u64 {
    abi::now_nanos().map_or(0, |n| n / 1_000_000)
}
