//! Raw declarations of mptrain's C ABI, transcribed from `include/mptrain.h` (version 0.1),
//! which remains the specification: ownership, thread safety and every status a function
//! returns are documented there. Use the `mptrain` crate for a safe interface.
#![allow(non_camel_case_types)]

use std::os::raw::{c_char, c_int, c_void};

pub const MPT_VERSION_MAJOR: c_int = 0;
pub const MPT_VERSION_MINOR: c_int = 1;
pub const MPT_VERSION_PATCH: c_int = 0;
pub const MPT_VERSION_NUMBER: c_int = MPT_VERSION_MAJOR * 10000 + MPT_VERSION_MINOR * 100 + MPT_VERSION_PATCH;

/// A C enum: an `int`. Kept as a plain integer because a later library may return codes
/// this list does not name.
pub type mpt_status = c_int;
pub const MPT_OK: mpt_status = 0;
pub const MPT_ERR_INVALID_ARGUMENT: mpt_status = 1;
pub const MPT_ERR_INVALID_CONFIG: mpt_status = 2;
pub const MPT_ERR_NOT_SUPPORTED: mpt_status = 3;
pub const MPT_ERR_IO: mpt_status = 4;
pub const MPT_ERR_CORRUPT_DATA: mpt_status = 5;
pub const MPT_ERR_OUT_OF_MEMORY: mpt_status = 6;
pub const MPT_ERR_DISTRIBUTED: mpt_status = 7;
pub const MPT_ERR_DEVICE: mpt_status = 8;
pub const MPT_ERR_NUMERICAL: mpt_status = 9;
pub const MPT_ERR_INTERNAL: mpt_status = 10;

pub const MPT_LOG_OFF: i32 = -1;
pub const MPT_LOG_ERROR: i32 = 0;
pub const MPT_LOG_WARN: i32 = 1;
pub const MPT_LOG_INFO: i32 = 2;
pub const MPT_LOG_DEBUG: i32 = 3;

/// Opaque: only ever behind a pointer.
#[repr(C)]
pub struct mpt_context {
    _private: [u8; 0],
}

/// Opaque: only ever behind a pointer.
#[repr(C)]
pub struct mpt_model {
    _private: [u8; 0],
}

pub type mpt_log_fn =
    Option<unsafe extern "C" fn(user_data: *mut c_void, level: i32, message: *const c_char) -> c_int>;

#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct mpt_init_options {
    pub struct_size: usize,
    pub recipe_path: *const c_char,
    pub recipe_toml: *const c_char,
    pub overrides: *const *const c_char,
    pub num_overrides: usize,
    pub log_fn: mpt_log_fn,
    pub log_user_data: *mut c_void,
    pub log_level: i32,
    pub rank: i32,
    pub world_size: i32,
    pub local_rank: i32,
    pub master_addr: *const c_char,
    pub master_port: i32,
}

impl Default for mpt_init_options {
    /// MPT_INIT_OPTIONS_INIT.
    fn default() -> Self {
        mpt_init_options {
            struct_size: std::mem::size_of::<mpt_init_options>(),
            recipe_path: std::ptr::null(),
            recipe_toml: std::ptr::null(),
            overrides: std::ptr::null(),
            num_overrides: 0,
            log_fn: None,
            log_user_data: std::ptr::null_mut(),
            log_level: MPT_LOG_INFO,
            rank: -1,
            world_size: -1,
            local_rank: -1,
            master_addr: std::ptr::null(),
            master_port: -1,
        }
    }
}

#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct mpt_batch {
    pub struct_size: usize,
    pub tokens: *const i32,
    pub labels: *const i32,
    pub loss_mask: *const f32,
    pub rows: i64,
    pub cols: i64,
}

impl Default for mpt_batch {
    /// MPT_BATCH_INIT.
    fn default() -> Self {
        mpt_batch {
            struct_size: std::mem::size_of::<mpt_batch>(),
            tokens: std::ptr::null(),
            labels: std::ptr::null(),
            loss_mask: std::ptr::null(),
            rows: 0,
            cols: 0,
        }
    }
}

#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct mpt_step_result {
    pub struct_size: usize,
    pub iteration: i64,
    pub lm_loss: f64,
    pub grad_norm: f64,
    pub learning_rate: f64,
    pub tokens: i64,
    pub step_time_s: f64,
    pub consumed_samples: i64,
}

impl Default for mpt_step_result {
    /// MPT_STEP_RESULT_INIT.
    fn default() -> Self {
        mpt_step_result {
            struct_size: std::mem::size_of::<mpt_step_result>(),
            iteration: 0,
            lm_loss: 0.0,
            grad_norm: 0.0,
            learning_rate: 0.0,
            tokens: 0,
            step_time_s: 0.0,
            consumed_samples: 0,
        }
    }
}

#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct mpt_model_info {
    pub struct_size: usize,
    pub num_parameters: i64,
    pub iteration: i64,
    pub train_iters: i64,
    pub seq_length: i64,
    pub micro_batch_size: i64,
    pub global_batch_size: i64,
    pub vocab_size: i64,
    pub params_bytes: i64,
    pub grads_bytes: i64,
    pub optimizer_bytes: i64,
    pub activations_peak_bytes: i64,
    pub expert_params_bytes: i64,
}

impl Default for mpt_model_info {
    /// MPT_MODEL_INFO_INIT.
    fn default() -> Self {
        mpt_model_info {
            struct_size: std::mem::size_of::<mpt_model_info>(),
            num_parameters: 0,
            iteration: 0,
            train_iters: 0,
            seq_length: 0,
            micro_batch_size: 0,
            global_batch_size: 0,
            vocab_size: 0,
            params_bytes: 0,
            grads_bytes: 0,
            optimizer_bytes: 0,
            activations_peak_bytes: 0,
            expert_params_bytes: 0,
        }
    }
}

extern "C" {
    pub fn mpt_version() -> *const c_char;
    pub fn mpt_version_number() -> c_int;
    pub fn mpt_status_string(status: mpt_status) -> *const c_char;

    pub fn mpt_init_options_init(opts: *mut mpt_init_options);
    pub fn mpt_init(opts: *const mpt_init_options, out_ctx: *mut *mut mpt_context) -> mpt_status;
    pub fn mpt_set_override(ctx: *mut mpt_context, assignment: *const c_char) -> mpt_status;
    pub fn mpt_config_toml(
        ctx: *mut mpt_context,
        buf: *mut c_char,
        buf_size: usize,
        out_len: *mut usize,
    ) -> mpt_status;
    pub fn mpt_last_error(ctx: *const mpt_context) -> *const c_char;
    pub fn mpt_finalize(ctx: *mut mpt_context);

    pub fn mpt_build_model(ctx: *mut mpt_context, out_model: *mut *mut mpt_model) -> mpt_status;
    pub fn mpt_model_destroy(model: *mut mpt_model);
    pub fn mpt_model_last_error(model: *const mpt_model) -> *const c_char;
    pub fn mpt_train_step(
        model: *mut mpt_model,
        batch: *const mpt_batch,
        out: *mut mpt_step_result,
    ) -> mpt_status;
    pub fn mpt_train(model: *mut mpt_model, last: *mut mpt_step_result) -> mpt_status;
    pub fn mpt_checkpoint(model: *mut mpt_model, dir: *const c_char) -> mpt_status;
    pub fn mpt_load_checkpoint(model: *mut mpt_model, dir: *const c_char) -> mpt_status;
    pub fn mpt_model_get_info(model: *const mpt_model, info: *mut mpt_model_info) -> mpt_status;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CStr;
    use std::mem::{size_of, MaybeUninit};

    /// Byte offset of a field, computed without creating a reference to uninitialised data.
    macro_rules! offset {
        ($type:ty, $field:ident) => {{
            let value = MaybeUninit::<$type>::uninit();
            let base = value.as_ptr();
            // SAFETY: addr_of! only computes the address; nothing is read.
            let field = unsafe { std::ptr::addr_of!((*base).$field) };
            field as usize - base as usize
        }};
    }

    // The C layout on every 64-bit Linux ABI mptrain builds for (LP64), worked out by hand
    // from the header: pointers and size_t 8 bytes, int32 4, natural alignment.
    #[test]
    #[cfg(target_pointer_width = "64")]
    fn layouts_match_the_header() {
        assert_eq!(offset!(mpt_init_options, recipe_path), 8);
        assert_eq!(offset!(mpt_init_options, num_overrides), 32);
        assert_eq!(offset!(mpt_init_options, log_fn), 40);
        assert_eq!(offset!(mpt_init_options, log_level), 56);
        assert_eq!(offset!(mpt_init_options, local_rank), 68);
        assert_eq!(offset!(mpt_init_options, master_addr), 72);
        assert_eq!(offset!(mpt_init_options, master_port), 80);
        assert_eq!(size_of::<mpt_init_options>(), 88);
        assert_eq!(offset!(mpt_batch, rows), 32);
        assert_eq!(size_of::<mpt_batch>(), 48);
        assert_eq!(offset!(mpt_step_result, consumed_samples), 56);
        assert_eq!(size_of::<mpt_step_result>(), 64);
        assert_eq!(offset!(mpt_model_info, expert_params_bytes), 96);
        assert_eq!(size_of::<mpt_model_info>(), 104);
    }

    #[test]
    fn defaults_match_the_library_initializer() {
        let mut from_library = MaybeUninit::<mpt_init_options>::zeroed();
        // SAFETY: the library writes a whole mpt_init_options.
        let from_library = unsafe {
            mpt_init_options_init(from_library.as_mut_ptr());
            from_library.assume_init()
        };
        let ours = mpt_init_options::default();
        assert_eq!(from_library.struct_size, ours.struct_size);
        assert_eq!(from_library.log_level, ours.log_level);
        assert_eq!(
            (from_library.rank, from_library.world_size, from_library.local_rank),
            (ours.rank, ours.world_size, ours.local_rank)
        );
        assert_eq!(from_library.master_port, ours.master_port);
        assert!(from_library.recipe_path.is_null() && from_library.log_fn.is_none());
    }

    #[test]
    fn versions_agree() {
        // SAFETY: static strings, never NULL.
        let text = unsafe { CStr::from_ptr(mpt_version()) }.to_str().unwrap();
        assert_eq!(text, format!("{}.{}.{}", MPT_VERSION_MAJOR, MPT_VERSION_MINOR, MPT_VERSION_PATCH));
        assert_eq!(unsafe { mpt_version_number() } / 100, MPT_VERSION_NUMBER / 100);
        let ok = unsafe { CStr::from_ptr(mpt_status_string(MPT_OK)) };
        assert_eq!(ok.to_str().unwrap(), "ok");
    }
}
