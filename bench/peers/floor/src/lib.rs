//! The floor: a module the host enters once per request (`proxy_on_request_headers`) and that
//! does nothing there. No filter can cost less and still see every request.
#[no_mangle]
pub extern "C" fn proxy_abi_version_0_2_1() {}

#[no_mangle]
pub extern "C" fn proxy_on_memory_allocate(size: usize) -> *mut u8 {
    Box::into_raw(vec![0u8; size].into_boxed_slice()).cast::<u8>()
}

#[no_mangle]
pub extern "C" fn proxy_on_request_headers(_context_id: u32, _headers: usize, _end_of_stream: u32) -> u32 {
    0
}
