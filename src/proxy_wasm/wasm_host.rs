//! [`filter::host::Host`](crate::filter::host::Host) on Envoy's proxy-wasm ABI, through `abi` (which never panics).
use super::abi::{self, BufferType, LogLevel, MapType, Status, CAS_MISMATCH};
use crate::filter::host::{Host, Level, SharedError};

pub struct WasmHost;

/// A value read from the host as text (`header_map::text`: never dropped for not being UTF-8).
fn text(v: Result<Option<Vec<u8>>, Status>) -> Option<String> {
    v.ok().flatten().map(crate::proxy_wasm::header_map::text)
}

fn body(kind: BufferType, size: usize) -> Option<Vec<u8>> {
    abi::buffer(kind, 0, size).ok().map(Option::unwrap_or_default)
}

impl Host for WasmHost {
    fn read_request_header(&self, name: &str) -> Result<Option<String>, String> {
        match abi::header(MapType::RequestHeaders, name) {
            Ok(v) => Ok(v.map(crate::proxy_wasm::header_map::text)),
            Err(s) => Err(format!("{s:?}")),
        }
    }

    fn request_headers(&self) -> Vec<(String, String)> {
        abi::headers(MapType::RequestHeaders).unwrap_or_default()
    }

    fn set_request_header(&self, name: &str, value: &str) -> Result<(), String> {
        abi::replace_header(MapType::RequestHeaders, name, value.as_bytes()).map_err(|s| format!("{s:?}"))
    }

    fn remove_request_header(&self, name: &str) -> Result<(), String> {
        abi::remove_header(MapType::RequestHeaders, name).map_err(|s| format!("{s:?}"))
    }

    fn request_body(&self, size: usize) -> Option<Vec<u8>> {
        body(BufferType::HttpRequestBody, size)
    }

    fn response_header(&self, name: &str) -> Option<String> {
        text(abi::header(MapType::ResponseHeaders, name))
    }

    fn property(&self, path: &[&str]) -> Option<String> {
        text(abi::property(path))
    }

    fn dispatch(
        &self,
        cluster: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
        timeout_ms: u64,
    ) -> Result<u32, String> {
        let timeout = u32::try_from(timeout_ms).unwrap_or(u32::MAX);
        let token = abi::http_call(cluster, headers, body, timeout).map_err(|s| format!("{s:?}"))?;
        // The answer is routed to the stream that is calling now.
        super::streams::register_call(token);
        Ok(token)
    }

    fn call_response_header(&self, name: &str) -> Option<String> {
        text(abi::header(MapType::CallResponseHeaders, name))
    }

    fn call_response_headers(&self) -> Vec<(String, String)> {
        abi::headers(MapType::CallResponseHeaders).unwrap_or_default()
    }

    fn call_response_body(&self, size: usize) -> Option<Vec<u8>> {
        body(BufferType::HttpCallResponseBody, size)
    }

    fn shared_get(&self, key: &str) -> Result<(Option<Vec<u8>>, u32), String> {
        abi::get_shared(key).map_err(|s| format!("{s:?}"))
    }

    fn random(&self, buf: &mut [u8]) -> Result<(), String> {
        abi::random(buf).map_err(|errno| format!("random_get: WASI errno {errno}"))
    }

    fn shared_set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), SharedError> {
        match abi::set_shared(key, value, cas) {
            Ok(()) => Ok(()),
            Err(Status(CAS_MISMATCH)) => Err(SharedError::CasMismatch),
            Err(s) => Err(SharedError::Other(format!("{s:?}"))),
        }
    }

    fn now_ms(&self) -> u64 {
        abi::now_nanos().map_or(0, |n| n / 1_000_000)
    }

    fn send_response(
        &self,
        status: u16,
        details: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<(), String> {
        abi::send_local_response(u32::from(status), details, headers, body).map_err(|s| format!("{s:?}"))
    }

    fn resume_request(&self) -> Result<(), String> {
        abi::resume_request().map_err(|s| format!("{s:?}"))
    }

    fn resume_response(&self) -> Result<(), String> {
        abi::resume_response().map_err(|s| format!("{s:?}"))
    }

    fn log(&self, level: Level, message: &str) {
        let level = match level {
            Level::Info => LogLevel::Info,
            Level::Warn => LogLevel::Warn,
            Level::Error => LogLevel::Error,
        };
        let _ = abi::log(level, message);
    }

    fn define_counter(&self, name: &str) -> Option<u32> {
        abi::define_counter(name).ok()
    }

    fn increment(&self, id: u32, by: u64) {
        let _ = abi::increment(id, i64::try_from(by).unwrap_or(i64::MAX));
    }
}
