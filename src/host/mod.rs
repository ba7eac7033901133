//! proxy-wasm glue: reads host values, calls the pure core, acts on its answer. Every host call
//! goes through `abi`, which turns every host status into a `Result`: the SDK's trait helpers
//! and `hostcalls` wrappers panic on statuses they do not expect, and a panic traps the VM for
//! every later request.

mod abi;
mod deletes;
mod claims;
mod headers;
mod http;
mod log;
mod metrics;
mod pull;
mod root;
mod upstream;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(proxy_wasm::types::LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn proxy_wasm::traits::RootContext> {
        Box::new(root::Root::default())
    });
}}
