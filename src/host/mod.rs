//! proxy-wasm glue, without the SDK: `exports` holds the callbacks Envoy calls (only those the
//! filter needs, see there why) and drives `crate::filter::Filter` on `wasm::WasmHost`. Every
//! host call goes through `abi`, which turns every host status into a `Result`: a panic would
//! trap the VM for every later request.

mod abi;
mod exports;
mod root;
mod streams;
mod wasm;
