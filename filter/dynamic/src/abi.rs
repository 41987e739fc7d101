//! The Envoy dynamic-module ABI (`v0.2.0`, Envoy 1.40): the event hooks Envoy
//! resolves when it loads the module, and the few callbacks into Envoy this
//! filter uses, declared by hand from Envoy's `abi.h`. Every `unsafe` block of
//! the crate is here. Each hook catches panics so none unwinds into Envoy.

use crate::filter::{Envoy, Stream};
use crate::front::{now_ms, Front};
use ingero_fleet_core::Answer;
use ingero_fleet_core::{Flow, Host};
use std::ffi::{c_char, c_void};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

/// The ABI version this module was written against (`ENVOY_DYNAMIC_MODULES_ABI_VERSION`).
const ABI_VERSION: &[u8] = b"v0.2.0\0";
/// Response code details Envoy records for the module's local replies.
const DETAILS: &str = "ingero_fleet";

// === types (abi.h "Common Types" and "HTTP Filter Types") ===

/// Envoy's `DynamicModuleHttpFilter` of one stream; valid during a hook.
type FilterEnvoyPtr = *mut c_void;

/// `envoy_dynamic_module_type_envoy_buffer`: bytes owned by Envoy.
#[repr(C)]
#[derive(Clone, Copy)]
struct EnvoyBuffer {
    ptr: *const u8,
    length: usize,
}

/// `envoy_dynamic_module_type_module_buffer`: bytes owned by the module.
#[repr(C)]
struct ModuleBuffer {
    ptr: *const u8,
    length: usize,
}

/// `envoy_dynamic_module_type_envoy_http_header`.
#[repr(C)]
#[derive(Clone, Copy)]
struct EnvoyHeader {
    key_ptr: *const u8,
    key_length: usize,
    value_ptr: *const u8,
    value_length: usize,
}

/// `envoy_dynamic_module_type_module_http_header`.
#[repr(C)]
struct ModuleHeader {
    key_ptr: *const u8,
    key_length: usize,
    value_ptr: *const u8,
    value_length: usize,
}

/// `envoy_dynamic_module_type_http_header_type_RequestHeader`.
const REQUEST_HEADER: u32 = 0;
const RESPONSE_HEADER: u32 = 2;
/// `envoy_dynamic_module_type_http_body_type_ReceivedRequestBody`.
const RECEIVED_REQUEST_BODY: u32 = 0;
/// `envoy_dynamic_module_type_http_body_type_BufferedRequestBody`.
const BUFFERED_REQUEST_BODY: u32 = 1;
/// `envoy_dynamic_module_type_log_level_Warn`, `_Error` and `_Critical`.
const LOG_INFO: u32 = 2;
const LOG_WARN: u32 = 3;
const LOG_ERROR: u32 = 4;
const LOG_CRITICAL: u32 = 5;

/// The `Continue` value of every status enum.
const CONTINUE: u32 = 0;
/// `..._request_headers_status_StopIteration` and `..._request_trailers_status_StopIteration`.
const STOP_ITERATION: u32 = 1;
/// `..._request_body_status_StopIterationAndBuffer`.
const STOP_ITERATION_AND_BUFFER: u32 = 1;
/// `..._request_body_status_StopIterationNoBuffer`.
const STOP_ITERATION_NO_BUFFER: u32 = 3;

// === callbacks (implemented by Envoy, resolved on first call) ===

extern "C" {
    fn envoy_dynamic_module_callback_log(level: u32, message: ModuleBuffer);
    fn envoy_dynamic_module_callback_http_get_headers_size(filter: FilterEnvoyPtr, header_type: u32) -> usize;
    fn envoy_dynamic_module_callback_http_get_headers(
        filter: FilterEnvoyPtr,
        header_type: u32,
        result_headers: *mut EnvoyHeader,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_add_header(
        filter: FilterEnvoyPtr,
        header_type: u32,
        key: ModuleBuffer,
        value: ModuleBuffer,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_get_body_size(filter: FilterEnvoyPtr, body_type: u32) -> usize;
    fn envoy_dynamic_module_callback_http_get_body_chunks_size(filter: FilterEnvoyPtr, body_type: u32) -> usize;
    fn envoy_dynamic_module_callback_http_get_body_chunks(
        filter: FilterEnvoyPtr,
        body_type: u32,
        result_buffer_vector: *mut EnvoyBuffer,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_received_buffered_request_body(filter: FilterEnvoyPtr) -> bool;
    fn envoy_dynamic_module_callback_http_send_response(
        filter: FilterEnvoyPtr,
        status_code: u32,
        headers_vector: *const ModuleHeader,
        headers_vector_size: usize,
        body: ModuleBuffer,
        details: ModuleBuffer,
    );
}

/// Logs through Envoy's `dynamic_modules` logger.
fn log(level: u32, message: &str) {
    // SAFETY: the buffer points at `message`, alive for the call; Envoy copies what it logs.
    unsafe { envoy_dynamic_module_callback_log(level, module_buffer(message.as_bytes())) }
}

fn module_buffer(bytes: &[u8]) -> ModuleBuffer {
    ModuleBuffer { ptr: bytes.as_ptr(), length: bytes.len() }
}

/// Runs a hook body; a panic is logged and answered with `fallback` instead of unwinding into Envoy.
fn guarded<T>(hook: &str, fallback: T, body: impl FnOnce() -> T) -> T {
    catch_unwind(AssertUnwindSafe(body)).unwrap_or_else(|_| {
        log(LOG_CRITICAL, &format!("ingero-fleet: panic in {hook}; the request is left to Envoy"));
        fallback
    })
}

// === one stream's Envoy, as the filter sees it ===

/// The Envoy side of the stream whose hook is running. Only hooks create it and
/// it never leaves the hook, so `filter` is valid for its whole life.
struct EnvoyStream {
    filter: FilterEnvoyPtr,
}

impl EnvoyStream {
    fn body_size(&self, body_type: u32) -> usize {
        // SAFETY: `filter` is the live stream of the running hook (see the type).
        unsafe { envoy_dynamic_module_callback_http_get_body_size(self.filter, body_type) }
    }

    /// Whether the received chunk is the buffered body itself (an earlier filter buffered and resumed).
    fn received_is_buffered(&self) -> bool {
        // SAFETY: as in `body_size`.
        unsafe { envoy_dynamic_module_callback_http_received_buffered_request_body(self.filter) }
    }

    fn append_body(&self, body_type: u32, out: &mut Vec<u8>) {
        // SAFETY: as in `body_size`.
        let count = unsafe { envoy_dynamic_module_callback_http_get_body_chunks_size(self.filter, body_type) };
        if count == 0 {
            return;
        }
        let mut chunks = vec![EnvoyBuffer { ptr: std::ptr::null(), length: 0 }; count];
        // SAFETY: `chunks` has room for the `count` entries Envoy was just asked about.
        if !unsafe { envoy_dynamic_module_callback_http_get_body_chunks(self.filter, body_type, chunks.as_mut_ptr()) } {
            return;
        }
        for chunk in chunks.iter().filter(|c| !c.ptr.is_null()) {
            // SAFETY: Envoy filled the entry with a slice of its body buffer, valid until the hook returns.
            out.extend_from_slice(unsafe { std::slice::from_raw_parts(chunk.ptr, chunk.length) });
        }
    }
}

/// Bytes Envoy lent for the duration of the hook.
fn envoy_bytes<'a>(ptr: *const u8, length: usize) -> &'a [u8] {
    if ptr.is_null() {
        return &[];
    }
    // SAFETY: a non-null pointer from Envoy with its length, valid until the hook returns;
    // callers bind the lifetime to the `EnvoyStream` of that hook.
    unsafe { std::slice::from_raw_parts(ptr, length) }
}

impl EnvoyStream {
    fn headers(&self, header_type: u32) -> Vec<(&[u8], &[u8])> {
        // SAFETY: as in `body_size`.
        let count = unsafe { envoy_dynamic_module_callback_http_get_headers_size(self.filter, header_type) };
        let empty =
            EnvoyHeader { key_ptr: std::ptr::null(), key_length: 0, value_ptr: std::ptr::null(), value_length: 0 };
        let mut headers = vec![empty; count];
        // SAFETY: `headers` has room for the `count` entries Envoy was just asked about.
        if count == 0
            || !unsafe {
                envoy_dynamic_module_callback_http_get_headers(self.filter, header_type, headers.as_mut_ptr())
            }
        {
            return Vec::new();
        }
        headers
            .iter()
            .map(|h| (envoy_bytes(h.key_ptr, h.key_length), envoy_bytes(h.value_ptr, h.value_length)))
            .collect()
    }
}

impl Envoy for EnvoyStream {
    fn request_headers(&self) -> Vec<(&[u8], &[u8])> {
        self.headers(REQUEST_HEADER)
    }

    fn warn(&self, message: &str) {
        log(LOG_WARN, message);
    }
}

impl Host for EnvoyStream {
    fn response_status(&self) -> Option<u16> {
        let headers = self.headers(RESPONSE_HEADER);
        let status = headers.iter().find(|(name, _)| *name == b":status")?.1;
        std::str::from_utf8(status).ok()?.parse().ok()
    }

    fn body_len(&self) -> usize {
        let buffered = self.body_size(BUFFERED_REQUEST_BODY);
        if self.received_is_buffered() {
            buffered
        } else {
            buffered + self.body_size(RECEIVED_REQUEST_BODY)
        }
    }

    fn body(&self) -> Result<Vec<u8>, String> {
        // At the end of the stream Envoy moves the last chunk into the buffer, so
        // buffered + received is the whole body with nothing counted twice.
        let mut body = Vec::with_capacity(self.body_len());
        self.append_body(BUFFERED_REQUEST_BODY, &mut body);
        if !self.received_is_buffered() {
            self.append_body(RECEIVED_REQUEST_BODY, &mut body);
        }
        Ok(body)
    }

    fn send_reply(&mut self, answer: &Answer) {
        let reply = &answer.reply;
        let headers: Vec<ModuleHeader> = reply
            .headers
            .iter()
            .map(|(name, value)| ModuleHeader {
                key_ptr: name.as_ptr(),
                key_length: name.len(),
                value_ptr: value.as_ptr(),
                value_length: value.len(),
            })
            .collect();
        // SAFETY: `filter` is live (see the type); every pointer refers to `reply`, `headers` or a
        // constant, all alive for the call, and Envoy copies them before returning.
        unsafe {
            envoy_dynamic_module_callback_http_send_response(
                self.filter,
                u32::from(reply.status),
                headers.as_ptr(),
                headers.len(),
                module_buffer(&reply.body),
                module_buffer(DETAILS.as_bytes()),
            );
        }
    }

    fn add_response_header(&mut self, name: &'static str, value: &str) {
        // SAFETY: as in `body_size`; both buffers point at live strings Envoy copies.
        let added = unsafe {
            envoy_dynamic_module_callback_http_add_header(
                self.filter,
                RESPONSE_HEADER,
                module_buffer(name.as_bytes()),
                module_buffer(value.as_bytes()),
            )
        };
        if !added {
            log(LOG_WARN, &format!("ingero-fleet: cannot add response header {name}"));
        }
    }

    fn now_ms(&self) -> u64 {
        now_ms()
    }
}

// === event hooks (resolved by Envoy at load time) ===

/// The stream object Envoy holds for us.
///
/// SAFETY (for every caller): `ptr` came from `Box::into_raw` in
/// `envoy_dynamic_module_on_http_filter_new`; Envoy passes it back only on the
/// stream's own worker thread, one hook at a time, until `..._filter_destroy`.
fn stream<'a>(ptr: *mut c_void) -> Option<&'a mut Stream> {
    // SAFETY: see above; a null pointer (no stream was created) yields None.
    unsafe { ptr.cast::<Stream>().as_mut() }
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_on_program_init() -> *const c_char {
    // Whatever panics later, say so in Envoy's log before the hook answers.
    std::panic::set_hook(Box::new(|info| log(LOG_CRITICAL, &format!("ingero-fleet panic: {info}"))));
    log(LOG_INFO, concat!("ingero-fleet ", env!("CARGO_PKG_VERSION"), " (Envoy dynamic module) loaded"));
    ABI_VERSION.as_ptr().cast()
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_on_http_filter_config_new(
    _config_envoy: *mut c_void,
    name: EnvoyBuffer,
    config: EnvoyBuffer,
) -> *const c_void {
    guarded("filter config", std::ptr::null(), || {
        let name = String::from_utf8_lossy(envoy_bytes(name.ptr, name.length));
        match Front::configure(&name, envoy_bytes(config.ptr, config.length)) {
            Ok((front, warnings)) => {
                for warning in warnings {
                    log(LOG_WARN, &format!("ingero-fleet: {warning}"));
                }
                Arc::into_raw(front).cast()
            }
            Err(e) => {
                // A null configuration makes Envoy refuse the filter configuration.
                log(LOG_ERROR, &format!("ingero-fleet: {e}"));
                std::ptr::null()
            }
        }
    })
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_on_http_filter_config_destroy(config: *const c_void) {
    guarded("filter config destroy", (), || {
        if !config.is_null() {
            // SAFETY: `config` came from `Arc::into_raw` in `..._config_new`; Envoy destroys it once.
            drop(unsafe { Arc::from_raw(config.cast::<Front>()) });
        }
    });
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_on_http_filter_new(config: *const c_void, _filter: FilterEnvoyPtr) -> *mut c_void {
    guarded("filter new", std::ptr::null_mut(), || {
        if config.is_null() {
            return std::ptr::null_mut();
        }
        // SAFETY: `config` is a live `Arc<Front>` from `..._config_new` (Envoy destroys it after
        // its last stream); the count is raised before the clone is taken, so ours is owned.
        let front = unsafe {
            Arc::increment_strong_count(config.cast::<Front>());
            Arc::from_raw(config.cast::<Front>())
        };
        Box::into_raw(Box::new(Stream::new(front))).cast()
    })
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_on_http_filter_destroy(filter: *mut c_void) {
    guarded("filter destroy", (), || {
        if !filter.is_null() {
            // SAFETY: `filter` came from `Box::into_raw` in `..._filter_new`; Envoy destroys it once.
            drop(unsafe { Box::from_raw(filter.cast::<Stream>()) });
        }
    });
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_on_http_filter_request_headers(
    envoy: FilterEnvoyPtr,
    filter: *mut c_void,
    end_of_stream: bool,
) -> u32 {
    guarded("request headers", CONTINUE, || match stream(filter) {
        Some(s) => headers_status(s.on_request_headers(&mut EnvoyStream { filter: envoy }, end_of_stream)),
        None => CONTINUE,
    })
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_on_http_filter_request_body(
    envoy: FilterEnvoyPtr,
    filter: *mut c_void,
    end_of_stream: bool,
) -> u32 {
    guarded("request body", CONTINUE, || match stream(filter) {
        Some(s) => match s.on_request_body(&mut EnvoyStream { filter: envoy }, end_of_stream) {
            Flow::Continue => CONTINUE,
            Flow::Hold | Flow::HoldBody => STOP_ITERATION_AND_BUFFER,
            Flow::Stop => STOP_ITERATION_NO_BUFFER,
        },
        None => CONTINUE,
    })
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_on_http_filter_request_trailers(envoy: FilterEnvoyPtr, filter: *mut c_void) -> u32 {
    guarded("request trailers", CONTINUE, || match stream(filter) {
        Some(s) => headers_status(s.on_request_trailers(&mut EnvoyStream { filter: envoy })),
        None => CONTINUE,
    })
}

/// A held request and a local reply both stop at the headers; a held body lets them go.
fn headers_status(flow: Flow) -> u32 {
    match flow {
        Flow::Continue | Flow::HoldBody => CONTINUE,
        Flow::Hold | Flow::Stop => STOP_ITERATION,
    }
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_on_http_filter_response_headers(
    envoy: FilterEnvoyPtr,
    filter: *mut c_void,
    _end_of_stream: bool,
) -> u32 {
    guarded("response headers", CONTINUE, || match stream(filter) {
        Some(s) => headers_status(s.on_response_headers(&mut EnvoyStream { filter: envoy })),
        None => CONTINUE,
    })
}

// Beyond that, Fleet never looks at responses, starts callouts or schedules
// events. Envoy still requires every hook, so these do nothing.

#[no_mangle]
extern "C" fn envoy_dynamic_module_on_http_filter_response_body(_: FilterEnvoyPtr, _: *mut c_void, _: bool) -> u32 {
    CONTINUE
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_on_http_filter_response_trailers(_: FilterEnvoyPtr, _: *mut c_void) -> u32 {
    CONTINUE
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_on_http_filter_stream_complete(_: FilterEnvoyPtr, _: *mut c_void) {}

#[no_mangle]
extern "C" fn envoy_dynamic_module_on_http_filter_http_callout_done(
    _: FilterEnvoyPtr,
    _: *mut c_void,
    _callout_id: u64,
    _result: u32,
    _headers: *const EnvoyHeader,
    _headers_size: usize,
    _body_chunks: *const EnvoyBuffer,
    _body_chunks_size: usize,
) {
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_headers(
    _: FilterEnvoyPtr,
    _: *mut c_void,
    _stream_id: u64,
    _headers: *const EnvoyHeader,
    _headers_size: usize,
    _end_stream: bool,
) {
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_data(
    _: FilterEnvoyPtr,
    _: *mut c_void,
    _stream_id: u64,
    _data: *const EnvoyBuffer,
    _data_count: usize,
    _end_stream: bool,
) {
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_trailers(
    _: FilterEnvoyPtr,
    _: *mut c_void,
    _stream_id: u64,
    _trailers: *const EnvoyHeader,
    _trailers_size: usize,
) {
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_complete(_: FilterEnvoyPtr, _: *mut c_void, _: u64) {}

#[no_mangle]
extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_reset(_: FilterEnvoyPtr, _: *mut c_void, _: u64, _: u32) {
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_on_http_filter_scheduled(_: FilterEnvoyPtr, _: *mut c_void, _event_id: u64) {}

#[no_mangle]
extern "C" fn envoy_dynamic_module_on_http_filter_downstream_above_write_buffer_high_watermark(
    _: FilterEnvoyPtr,
    _: *mut c_void,
) {
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_on_http_filter_downstream_below_write_buffer_low_watermark(
    _: FilterEnvoyPtr,
    _: *mut c_void,
) {
}
