//! The context: a loaded recipe and its options (mpt_context).

use std::ffi::{CString, OsStr};
use std::os::raw::{c_char, c_void};
use std::os::unix::ffi::OsStrExt;
use std::ptr::{self, NonNull};

use mptrain_sys as sys;

use crate::error::{Error, Result, Status};
use crate::log::{self, LogSlot};
use crate::model::Model;
use crate::options::{Options, RecipeSource};

/// A recipe loaded with its overrides, from which a [`Model`] is built. Dropping it
/// releases the library's context.
pub struct Context {
    raw: NonNull<sys::mpt_context>,
    log: *mut LogSlot, // null without a callback; freed after the context
}

// SAFETY: the header allows a context to be used from any thread as long as calls on it are
// serialised, which `&mut self` (and the absence of `Sync`) ensures; the log closure is
// `Send`. Not `Sync`: two threads may not call into one context at once.
unsafe impl Send for Context {}

/// A string for the C side; a NUL inside it cannot cross.
pub(crate) fn c_string(what: &str, text: &[u8]) -> Result<CString> {
    CString::new(text)
        .map_err(|_| Error::new(Status::InvalidArgument, format!("{} contains a NUL byte", what)))
}

pub(crate) fn path_string(what: &str, path: &OsStr) -> Result<CString> {
    c_string(what, path.as_bytes())
}

/// -1 ("from the environment") for None.
fn place_field(what: &str, value: Option<u32>) -> Result<i32> {
    match value {
        None => Ok(-1),
        Some(v) => i32::try_from(v).map_err(|_| {
            Error::new(Status::InvalidArgument, format!("Options: {} = {} is out of range", what, v))
        }),
    }
}

impl Context {
    /// Loads the recipe and applies the overrides. The recipe is validated as a whole when a
    /// model is built (or [`config_toml`](Context::config_toml) is called).
    pub fn new(options: Options) -> Result<Context> {
        let (path, toml) = match &options.recipe {
            RecipeSource::File(p) => (Some(path_string("recipe path", p.as_os_str())?), None),
            RecipeSource::Toml(t) => (None, Some(c_string("recipe text", t.as_bytes())?)),
        };
        let overrides = options
            .overrides
            .iter()
            .map(|o| c_string(&format!("override '{}'", o.escape_default()), o.as_bytes()))
            .collect::<Result<Vec<CString>>>()?;
        let override_ptrs: Vec<*const c_char> = overrides.iter().map(|o| o.as_ptr()).collect();
        let master_addr = match &options.master_addr {
            Some(a) => Some(c_string("master address", a.as_bytes())?),
            None => None,
        };

        let (rank, world_size, local_rank) = (
            place_field("rank", options.rank)?,
            place_field("world_size", options.world_size)?,
            place_field("local_rank", options.local_rank)?,
        );
        // Leaked last: nothing fails between here and mpt_init.
        let log = options.log.map_or(ptr::null_mut(), LogSlot::leak);
        let raw_options = sys::mpt_init_options {
            recipe_path: path.as_ref().map_or(ptr::null(), |p| p.as_ptr()),
            recipe_toml: toml.as_ref().map_or(ptr::null(), |t| t.as_ptr()),
            overrides: if override_ptrs.is_empty() { ptr::null() } else { override_ptrs.as_ptr() },
            num_overrides: override_ptrs.len(),
            log_fn: if log.is_null() { None } else { Some(log::trampoline) },
            log_user_data: log as *mut c_void,
            log_level: options.log_level as i32,
            rank,
            world_size,
            local_rank,
            master_addr: master_addr.as_ref().map_or(ptr::null(), |a| a.as_ptr()),
            master_port: options.master_port.map_or(-1, i32::from),
            ..Default::default()
        };

        let mut raw: *mut sys::mpt_context = ptr::null_mut();
        // SAFETY: every pointer in raw_options lives until the call returns; the library
        // copies what it keeps.
        let status = unsafe { sys::mpt_init(&raw_options, &mut raw) };
        match (Status::from_raw(status), NonNull::new(raw)) {
            (None, Some(raw)) => Ok(Context { raw, log }),
            (failure, raw) => {
                let failure = failure.unwrap_or(Status::Internal);
                let error = match raw {
                    // SAFETY: a failed context still answers mpt_last_error; then freed.
                    Some(raw) => unsafe {
                        let error = Error::from_library(failure, sys::mpt_last_error(raw.as_ptr()));
                        sys::mpt_finalize(raw.as_ptr());
                        error
                    },
                    None => Error::new(failure, "mpt_init returned no context"),
                };
                if !log.is_null() {
                    // SAFETY: the context that could call it is gone.
                    unsafe { LogSlot::free(log) };
                }
                Err(error)
            }
        }
    }

    /// Applies one override "section.key=value" to the recipe; a rejected one changes nothing.
    pub fn set_override(&mut self, assignment: &str) -> Result<()> {
        let text = c_string("override", assignment.as_bytes())?;
        // SAFETY: live context, NUL-terminated text.
        let status = unsafe { sys::mpt_set_override(self.raw.as_ptr(), text.as_ptr()) };
        self.check(status)
    }

    /// The resolved recipe, every default filled in, as TOML that loads back to the same.
    pub fn config_toml(&mut self) -> Result<String> {
        let mut len = 0usize;
        // SAFETY: a size query: no buffer, the length written to `len`.
        let status = unsafe { sys::mpt_config_toml(self.raw.as_ptr(), ptr::null_mut(), 0, &mut len) };
        if status != sys::MPT_ERR_INVALID_ARGUMENT || len == 0 {
            self.check(status)?;
            return Err(Error::new(Status::Internal, "mpt_config_toml: the size query gave no length"));
        }
        let mut buf = vec![0u8; len];
        // SAFETY: buf holds len bytes.
        let status = unsafe {
            sys::mpt_config_toml(self.raw.as_ptr(), buf.as_mut_ptr() as *mut c_char, len, &mut len)
        };
        self.check(status)?;
        buf.truncate(len.saturating_sub(1)); // the terminating NUL
        String::from_utf8(buf).map_err(|_| Error::new(Status::Internal, "the recipe text is not UTF-8"))
    }

    /// Validates the recipe and builds this rank's model (loading `checkpoint.load` when set).
    /// The model borrows the context: one model at a time, and no override while it lives.
    pub fn build_model(&mut self) -> Result<Model<'_>> {
        let mut raw: *mut sys::mpt_model = ptr::null_mut();
        // SAFETY: live context; `raw` is written only on success.
        let status = unsafe { sys::mpt_build_model(self.raw.as_ptr(), &mut raw) };
        match NonNull::new(raw) {
            Some(raw) if status == sys::MPT_OK => {
                // Owned before a log panic is resumed, so that unwinding destroys it.
                let mut model = Model::new(raw, self);
                model.check(status)?;
                Ok(model)
            }
            _ => {
                self.check(status)?;
                Err(Error::new(Status::Internal, "mpt_build_model returned no model"))
            }
        }
    }

    /// Turns a status of a call on this context (or its model) into a Result, first
    /// resuming a panic the log closure raised during that call.
    pub(crate) fn check(&mut self, status: sys::mpt_status) -> Result<()> {
        if !self.log.is_null() {
            // SAFETY: the slot lives as long as self, and the call has returned.
            unsafe { LogSlot::resume_panic(self.log) };
        }
        match Status::from_raw(status) {
            None => Ok(()),
            // SAFETY: live context; the message is copied at once.
            Some(failure) => {
                Err(Error::from_library(failure, unsafe { sys::mpt_last_error(self.raw.as_ptr()) }))
            }
        }
    }
}

impl Drop for Context {
    fn drop(&mut self) {
        // SAFETY: the context is live and no model borrows it any more (the borrow checker
        // saw to that); the log slot outlives the last call that could use it.
        unsafe {
            sys::mpt_finalize(self.raw.as_ptr());
            if !self.log.is_null() {
                LogSlot::free(self.log);
            }
        }
    }
}
