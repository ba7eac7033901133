//! proxy-wasm glue: Envoy's callbacks drive `crate::filter::Filter` on `wasm::WasmHost`. Every
//! host call goes through `abi`, which turns every host status into a `Result`: the SDK's trait
//! helpers and `hostcalls` wrappers panic on statuses they do not expect, and a panic traps the
//! VM for every later request.

mod abi;
mod root;
mod wasm;

use crate::filter::{Action as FilterAction, Filter};
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;
use wasm::WasmHost;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(proxy_wasm::types::LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn proxy_wasm::traits::RootContext> {
        Box::new(root::Root::default())
    });
}}

/// One request's filter, as the SDK sees it.
struct Stream(Filter);

fn action(a: FilterAction) -> Action {
    match a {
        FilterAction::Continue => Action::Continue,
        FilterAction::Pause => Action::Pause,
    }
}

impl Context for Stream {
    fn on_http_call_response(&mut self, token: u32, _headers: usize, body: usize, _trailers: usize) {
        self.0.on_call_response(&WasmHost, token, body);
    }

    fn on_done(&mut self) -> bool {
        self.0.on_done(&WasmHost);
        true
    }
}

impl HttpContext for Stream {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        action(self.0.on_request_headers(&WasmHost, end_of_stream))
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        action(self.0.on_request_body(&WasmHost, body_size, end_of_stream))
    }

    fn on_http_request_trailers(&mut self, _num_trailers: usize) -> Action {
        action(self.0.on_request_trailers(&WasmHost))
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        action(self.0.on_response_headers(&WasmHost))
    }

    fn on_http_response_body(&mut self, _body_size: usize, _end_of_stream: bool) -> Action {
        action(self.0.on_response_body())
    }
}
