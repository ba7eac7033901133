//! Logging through the host; a failing log call is not worth failing a request for.
use super::abi;
use proxy_wasm::types::LogLevel;

pub fn info(msg: &str) {
    let _ = abi::log(LogLevel::Info, msg);
}

pub fn warn(msg: &str) {
    let _ = abi::log(LogLevel::Warn, msg);
}

pub fn error(msg: &str) {
    let _ = abi::log(LogLevel::Error, msg);
}
