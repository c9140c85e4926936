//! Failures: the library's status codes and the message it leaves with each.

use std::ffi::CStr;
use std::fmt;
use std::os::raw::{c_char, c_int};

use mptrain_sys as sys;

/// Why a call failed: mpt_status without MPT_OK. A code this crate does not know (from a
/// newer library) is kept as `Unknown`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Status {
    InvalidArgument,
    InvalidConfig,
    NotSupported,
    Io,
    CorruptData,
    OutOfMemory,
    Distributed,
    Device,
    Numerical,
    Internal,
    Unknown(i32),
}

impl Status {
    /// None for MPT_OK.
    pub(crate) fn from_raw(code: sys::mpt_status) -> Option<Status> {
        Some(match code {
            sys::MPT_OK => return None,
            sys::MPT_ERR_INVALID_ARGUMENT => Status::InvalidArgument,
            sys::MPT_ERR_INVALID_CONFIG => Status::InvalidConfig,
            sys::MPT_ERR_NOT_SUPPORTED => Status::NotSupported,
            sys::MPT_ERR_IO => Status::Io,
            sys::MPT_ERR_CORRUPT_DATA => Status::CorruptData,
            sys::MPT_ERR_OUT_OF_MEMORY => Status::OutOfMemory,
            sys::MPT_ERR_DISTRIBUTED => Status::Distributed,
            sys::MPT_ERR_DEVICE => Status::Device,
            sys::MPT_ERR_NUMERICAL => Status::Numerical,
            sys::MPT_ERR_INTERNAL => Status::Internal,
            other => Status::Unknown(other),
        })
    }

    /// The C value of this status.
    pub fn code(self) -> i32 {
        match self {
            Status::InvalidArgument => sys::MPT_ERR_INVALID_ARGUMENT,
            Status::InvalidConfig => sys::MPT_ERR_INVALID_CONFIG,
            Status::NotSupported => sys::MPT_ERR_NOT_SUPPORTED,
            Status::Io => sys::MPT_ERR_IO,
            Status::CorruptData => sys::MPT_ERR_CORRUPT_DATA,
            Status::OutOfMemory => sys::MPT_ERR_OUT_OF_MEMORY,
            Status::Distributed => sys::MPT_ERR_DISTRIBUTED,
            Status::Device => sys::MPT_ERR_DEVICE,
            Status::Numerical => sys::MPT_ERR_NUMERICAL,
            Status::Internal => sys::MPT_ERR_INTERNAL,
            Status::Unknown(code) => code,
        }
    }
}

impl fmt::Display for Status {
    /// The library's own short text ("invalid configuration", ...).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // SAFETY: a static string for any value, never NULL.
        let text = unsafe { CStr::from_ptr(sys::mpt_status_string(self.code() as c_int)) };
        f.write_str(&text.to_string_lossy())
    }
}

/// A failed call: its status and the library's message (for a recipe, every problem as
/// "file:line: section.key: rule").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    status: Status,
    message: String,
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub(crate) fn new(status: Status, message: impl Into<String>) -> Error {
        Error { status, message: message.into() }
    }

    /// An error from a status and the message the library left (a pointer it owns).
    pub(crate) fn from_library(status: Status, message: *const c_char) -> Error {
        let message = if message.is_null() {
            String::new()
        } else {
            // SAFETY: the library returns a NUL-terminated string valid until its next call.
            unsafe { CStr::from_ptr(message) }.to_string_lossy().into_owned()
        };
        Error { status, message }
    }

    pub fn status(&self) -> Status {
        self.status
    }

    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.status, self.message)
    }
}

impl std::error::Error for Error {}
