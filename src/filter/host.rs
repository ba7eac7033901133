//! The small host interface the filter's state machine runs on. Envoy's proxy-wasm ABI
//! implements it in [`crate::proxy_wasm`] (wasm only); `filter::tests::fake` implements it for native tests, so every
//! flow is tested without Envoy. Every method reports failure as a value: a host status the
//! filter did not expect must never become a panic (it would trap the VM for every request).

/// Log levels the filter uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Info,
    Warn,
    Error,
}

/// Why a shared-data write failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SharedError {
    /// Another writer came first (compare-and-swap).
    CasMismatch,
    Other(String),
}

/// The rule for everything read from the host: **every host read that fails on a request that
/// may be a write refuses it.** A value the filter cannot read is never "absent" nor "empty".
///
/// - Header values are read as bytes and turned into text by `header_map::text`: every byte at
///   or above 0x80 and every ASCII control becomes `%XX`. So no value is ever unreadable for
///   being non-UTF-8 (HTTP/2 allows such bytes in `:path`), and it keeps its meaning to the
///   registry, which routes on the decoded path.
/// - A read the host refuses (a status error) is an error value ([`Host::read_request_header`]),
///   never `None`: `:path` or `:method` unreadable refuses the request (503); a method-override
///   header unreadable counts as present.
pub trait Host {
    /// A request header as text (see the rule above); `Ok(None)` when absent; `Err` (the host's
    /// status) when the host refused the read.
    fn read_request_header(&self, name: &str) -> Result<Option<String>, String>;
    /// A request header where a failed read may count as absent: only for headers that cannot
    /// make a write pass (log fields, credentials for the filter's own calls).
    fn request_header(&self, name: &str) -> Option<String> {
        self.read_request_header(name).ok().flatten()
    }
    /// Every request header, pseudo-headers included (headers phase only), read as
    /// [`Host::read_request_header`] reads one; empty if the host refused the read.
    fn request_headers(&self) -> Vec<(String, String)>;
    fn set_request_header(&self, name: &str, value: &str) -> Result<(), String>;
    /// Removes a request header (Ok when it was absent).
    fn remove_request_header(&self, name: &str) -> Result<(), String>;
    /// The request body buffered so far (body phase only); `None` if the host will not give it.
    fn request_body(&self, size: usize) -> Option<Vec<u8>>;
    fn response_header(&self, name: &str) -> Option<String>;
    /// A host property as text (e.g. `["source", "address"]`).
    fn property(&self, path: &[&str]) -> Option<String>;

    /// Sends an HTTP call to `cluster`; its answer arrives as `Filter::on_call_response(token)`.
    fn dispatch(
        &self,
        cluster: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
        timeout_ms: u64,
    ) -> Result<u32, String>;
    /// Within `on_call_response`: the answer's headers and body.
    fn call_response_header(&self, name: &str) -> Option<String>;
    fn call_response_headers(&self) -> Vec<(String, String)>;
    fn call_response_body(&self, size: usize) -> Option<Vec<u8>>;

    /// Process-wide shared data: the value (if any) and its CAS token.
    fn shared_get(&self, key: &str) -> Result<(Option<Vec<u8>>, u32), String>;
    /// Writes if the CAS token is still `cas` (0: unconditionally).
    fn shared_set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), SharedError>;

    fn now_ms(&self) -> u64;
    /// Fills `buf` with cryptographically random bytes (WASI `random_get`).
    fn random(&self, buf: &mut [u8]) -> Result<(), String>;
    /// Answers the client locally (the request, if any part of it went upstream, is reset).
    /// `details` (no spaces) becomes Envoy's response code details, shown in access logs.
    fn send_response(
        &self,
        status: u16,
        details: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<(), String>;
    /// Lets a request the filter held at its headers go on.
    fn resume_request(&self) -> Result<(), String>;
    /// Lets a response the filter held at its headers go on.
    fn resume_response(&self) -> Result<(), String>;

    fn log(&self, level: Level, message: &str);
    fn define_counter(&self, name: &str) -> Option<u32>;
    fn increment(&self, id: u32, by: u64);
}
