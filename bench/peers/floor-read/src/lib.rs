//! The floor plus the least a filter that classifies requests must do: read `:path` once. The
//! host hands a header value over by calling back into the module for memory
//! (`proxy_on_memory_allocate`), so the read is a second VM entry; with the `response` feature
//! the module also exports `proxy_on_response_headers` (a third). The bench measures each, so
//! the cost of this filter decomposes into entries it cannot avoid and work of its own.
#[no_mangle]
pub extern "C" fn proxy_abi_version_0_2_1() {}

#[no_mangle]
pub extern "C" fn proxy_on_memory_allocate(size: usize) -> *mut u8 {
    Box::into_raw(vec![0u8; size].into_boxed_slice()).cast::<u8>()
}

extern "C" {
    fn proxy_get_header_map_value(map: u32, key: *const u8, key_size: usize, value: *mut *mut u8, value_size: *mut usize) -> u32;
}

#[no_mangle]
pub extern "C" fn proxy_on_request_headers(_context_id: u32, _headers: usize, _end_of_stream: u32) -> u32 {
    let key = ":path";
    let (mut data, mut size) = (core::ptr::null_mut(), 0usize);
    // SAFETY: valid key; the out-pointers live for the call; on Ok the host allocated `size`
    // bytes for us through proxy_on_memory_allocate, freed here as the boxed slice it was.
    unsafe {
        if proxy_get_header_map_value(0, key.as_ptr(), key.len(), &mut data, &mut size) == 0 && !data.is_null() {
            drop(Box::from_raw(core::ptr::slice_from_raw_parts_mut(data, size)));
        }
    }
    0
}

#[cfg(feature = "response")]
#[no_mangle]
pub extern "C" fn proxy_on_response_headers(_context_id: u32, _headers: usize, _end_of_stream: u32) -> u32 {
    0
}
