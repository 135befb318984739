//! Calling through a plugin's `PJRT_Api` table, with errors turned into
//! [`Error::Pjrt`] and freed exactly once.

use super::ffi;
use super::objects::{created, destroyed, ObjectKind};
use crate::error::{Error, ErrorCode, Result};

/// A plugin's function table. Plugins are never unloaded, so it lives for the process.
#[derive(Clone, Copy)]
pub(crate) struct Api {
    pub raw: &'static ffi::PJRT_Api,
}

// SAFETY: the table is immutable after `GetPjrtApi` returns and the plugin is
// never unloaded; PJRT functions may be called from any thread.
unsafe impl Send for Api {}
// SAFETY: as above; the table itself is only read.
unsafe impl Sync for Api {}

/// Calls table entry `$f` with `$args` (a `&mut` args struct) and converts a
/// returned `PJRT_Error` into `Err`.
macro_rules! pjrt_call {
    ($api:expr, $f:ident, $args:expr) => {{
        let api: $crate::pjrt::api::Api = $api;
        match api.raw.$f {
            None => Err($crate::error::Error::Pjrt {
                call: stringify!($f),
                code: $crate::error::ErrorCode(12),
                message: "the plugin does not implement this function".into(),
            }),
            Some(f) => {
                let args: *mut _ = $args;
                // SAFETY: `f` comes from the plugin's table and takes this args
                // struct, declared at the plugin API's layout with `struct_size`
                // set; every pointer in it is valid for the duration of the call.
                let err = unsafe { f(args) };
                api.check(stringify!($f), err)
            }
        }
    }};
}
pub(crate) use pjrt_call;

impl Api {
    /// Turns a returned error pointer into a result, reading and destroying the error.
    pub fn check(self, call: &'static str, err: *mut ffi::PJRT_Error) -> Result<()> {
        if err.is_null() {
            return Ok(());
        }
        created(ObjectKind::Error);
        let mut msg = ffi::PJRT_Error_Message_Args::new();
        msg.error = err;
        let message = match self.raw.PJRT_Error_Message {
            Some(f) => {
                // SAFETY: `err` is a live error returned by this plugin; the args struct is valid.
                unsafe { f(&mut msg) };
                // SAFETY: the plugin returns a pointer and length valid while `err` lives.
                unsafe { string_from(msg.message, msg.message_size) }
            }
            None => String::from("(no message)"),
        };
        let mut code_args = ffi::PJRT_Error_GetCode_Args::new();
        code_args.error = err;
        let code = match self.raw.PJRT_Error_GetCode {
            // SAFETY: as above. A failure to read the code leaves it UNKNOWN (2).
            Some(f) => {
                let e2 = unsafe { f(&mut code_args) };
                if e2.is_null() {
                    code_args.code
                } else {
                    2
                }
            }
            None => 2,
        };
        let mut destroy = ffi::PJRT_Error_Destroy_Args::new();
        destroy.error = err;
        if let Some(f) = self.raw.PJRT_Error_Destroy {
            // SAFETY: `err` is live and destroyed exactly once, here.
            unsafe { f(&mut destroy) };
            destroyed(ObjectKind::Error);
        }
        let mut message = message;
        if message.contains("size") && message.contains("expected") {
            let v = &self.raw.pjrt_api_version;
            message.push_str(&format!(
                " (xlac declares PJRT API {}.{} structs; this plugin reports API {}.{})",
                ffi::API_MAJOR,
                ffi::API_MINOR,
                v.major_version,
                v.minor_version
            ));
        }
        Err(Error::Pjrt { call, code: ErrorCode(code), message })
    }

    /// Waits for `event` and destroys it, returning the event's error if any.
    pub fn await_event(self, event: *mut ffi::PJRT_Event) -> Result<()> {
        if event.is_null() {
            return Ok(());
        }
        created(ObjectKind::Event);
        let mut args = ffi::PJRT_Event_Await_Args::new();
        args.event = event;
        let awaited = pjrt_call!(self, PJRT_Event_Await, &mut args);
        let mut d = ffi::PJRT_Event_Destroy_Args::new();
        d.event = event;
        let destroyed_ok = pjrt_call!(self, PJRT_Event_Destroy, &mut d);
        destroyed(ObjectKind::Event);
        awaited.and(destroyed_ok)
    }
}

/// Copies a (pointer, length) string from the plugin.
///
/// # Safety
/// `ptr` must be null or valid for `len` bytes.
pub(crate) unsafe fn string_from(ptr: *const std::ffi::c_char, len: usize) -> String {
    if ptr.is_null() {
        return String::new();
    }
    // SAFETY: guaranteed by the caller.
    let bytes = unsafe { std::slice::from_raw_parts(ptr.cast::<u8>(), len) };
    String::from_utf8_lossy(bytes).into_owned()
}
