"""The module exports only the proxy-wasm callbacks the filter needs. The host skips a callback
the module does not export, and every exported per-stream callback costs a VM entry on every
request (docs/performance.md): a dependency or SDK upgrade must not add any back."""
import stack
from wasm_exports import exports

EXPECTED = {
    "memory": "memory",
    "_initialize": "func",
    "proxy_abi_version_0_2_1": "func",
    "proxy_on_memory_allocate": "func",
    "proxy_on_configure": "func",
    "proxy_on_context_create": "func",
    "proxy_on_tick": "func",
    "proxy_on_request_headers": "func",
    "proxy_on_request_body": "func",
    "proxy_on_request_trailers": "func",
    "proxy_on_response_headers": "func",
    "proxy_on_http_call_response": "func",
}


def test_the_module_exports_exactly_the_callbacks_the_filter_needs():
    assert exports(stack.MODULE) == EXPECTED


def test_per_stream_callbacks_an_ordinary_request_pays_for():
    # An ordinary GET enters the VM at its creation (the host names the plugin instance the
    # stream is bound to: the only way it does, issue 28), for its request headers and its
    # response headers; nothing per body chunk of a download, nothing at the end of a stream.
    per_stream = {n for n in exports(stack.MODULE) if n.startswith("proxy_on_")} - {
        "proxy_on_memory_allocate", "proxy_on_configure", "proxy_on_tick", "proxy_on_http_call_response",
        "proxy_on_request_body", "proxy_on_request_trailers"}
    assert per_stream == {"proxy_on_context_create", "proxy_on_request_headers", "proxy_on_response_headers"}
