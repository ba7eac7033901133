//! Logging through the host; a failing log call is not worth failing a request for.
use proxy_wasm::hostcalls;
use proxy_wasm::types::LogLevel;

pub fn info(msg: &str) {
    let _ = hostcalls::log(LogLevel::Info, msg);
}

pub fn warn(msg: &str) {
    let _ = hostcalls::log(LogLevel::Warn, msg);
}

pub fn error(msg: &str) {
    let _ = hostcalls::log(LogLevel::Error, msg);
}
