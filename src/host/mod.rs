//! proxy-wasm glue: reads host values, calls the pure core, acts on its answer. Every host call
//! goes through `proxy_wasm::hostcalls`, whose `Result`s we handle: the SDK's trait helpers
//! `unwrap()` host results, and a panic would trap the VM for every later request.

mod headers;
mod http;
mod log;
mod pull;
mod root;
mod upstream;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(proxy_wasm::types::LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn proxy_wasm::traits::RootContext> {
        Box::new(root::Root::default())
    });
}}
