//! proxy-wasm glue, without the SDK: `exports` holds the callbacks Envoy calls (only those the
//! filter needs, see there why) and drives [`crate::filter::Filter`] on `wasm_host::WasmHost`.
//! Every host call goes through `abi`, which turns every host status into a `Result`: a panic
//! would trap the VM for every later request. `streams` holds the per-stream tables both the
//! callbacks and the host impl write; `root` loads the configuration and owns the worker.
//!
//! Only [`header_map`] (the ABI's header-map encoding, pure) is compiled natively, so that it is
//! tested there; the rest is built for the module only (`wasm32-wasip1`).

pub mod header_map;

#[cfg(target_os = "wasi")]
mod abi;
#[cfg(target_os = "wasi")]
mod exports;
#[cfg(target_os = "wasi")]
mod root;
#[cfg(target_os = "wasi")]
mod streams;
#[cfg(target_os = "wasi")]
mod wasm_host;
