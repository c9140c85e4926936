//! The log callback: a closure behind the C function pointer. The library calls it on the
//! thread that called into it, during that call; a panic in the closure is held and
//! resumed once the library call has returned, never unwound through C.

use std::any::Any;
use std::ffi::CStr;
use std::os::raw::{c_char, c_int, c_void};
use std::panic::{self, AssertUnwindSafe};

use mptrain_sys as sys;

/// How much the library reports; each level includes those above it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LogLevel {
    Off = -1,
    Error = 0,
    Warn = 1,
    Info = 2,
    Debug = 3,
}

impl LogLevel {
    fn from_raw(level: i32) -> LogLevel {
        match level {
            sys::MPT_LOG_ERROR => LogLevel::Error,
            sys::MPT_LOG_WARN => LogLevel::Warn,
            sys::MPT_LOG_INFO => LogLevel::Info,
            // Levels a newer library may add are finer than these.
            _ => LogLevel::Debug,
        }
    }
}

pub(crate) type LogFn = dyn FnMut(LogLevel, &str) + Send;

/// Lives on the heap at a fixed address, passed to the library as user_data.
pub(crate) struct LogSlot {
    callback: Box<LogFn>,
    panic: Option<Box<dyn Any + Send>>,
}

impl LogSlot {
    /// A slot the caller owns through the raw pointer (free it with `free`).
    pub(crate) fn leak(callback: Box<LogFn>) -> *mut LogSlot {
        Box::into_raw(Box::new(LogSlot { callback, panic: None }))
    }

    /// # Safety
    /// `slot` comes from `leak`, is not freed yet, and the library no longer calls it.
    pub(crate) unsafe fn free(slot: *mut LogSlot) {
        drop(Box::from_raw(slot));
    }

    /// Re-raises, on the caller's thread, a panic the closure raised during the last call.
    ///
    /// # Safety
    /// `slot` is live and no library call is running on it.
    pub(crate) unsafe fn resume_panic(slot: *mut LogSlot) {
        if let Some(payload) = (*slot).panic.take() {
            panic::resume_unwind(payload);
        }
    }
}

/// The C function the library calls; `user_data` is a live `*mut LogSlot`.
pub(crate) unsafe extern "C" fn trampoline(
    user_data: *mut c_void,
    level: i32,
    message: *const c_char,
) -> c_int {
    let slot = &mut *(user_data as *mut LogSlot);
    if slot.panic.is_some() {
        return 0; // the closure already panicked during this call: leave it alone
    }
    let text = if message.is_null() { Default::default() } else { CStr::from_ptr(message).to_string_lossy() };
    let callback = &mut slot.callback;
    if let Err(payload) = panic::catch_unwind(AssertUnwindSafe(|| callback(LogLevel::from_raw(level), &text)))
    {
        slot.panic = Some(payload);
    }
    0
}
