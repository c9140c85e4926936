//! Train GPT- and LLaMA-style transformer language models with mptrain from Rust.
//!
//! A safe layer over the C ABI (`include/mptrain.h`, declared raw in `mptrain-sys`):
//! handles free themselves when dropped, every failure is an [`Error`] carrying the status
//! and the library's message, and the log callback is a closure.
//!
//! ```no_run
//! use mptrain::{Batch, Context, Options};
//!
//! let mut ctx = Context::new(Options::from_file("recipes/tiny.toml").set("train.train_iters=3"))?;
//! let mut model = ctx.build_model()?;
//! let info = model.info()?;
//! let (rows, cols) = (info.global_batch_size as usize, info.seq_length as usize + 1);
//! let tokens: Vec<i32> = (0..rows * cols).map(|i| (i % 256) as i32).collect();
//! for _ in 0..info.train_iters {
//!     let step = model.train_step(Some(&Batch::new(&tokens, rows, cols)))?;
//!     println!("step {}: loss {:.4}", step.iteration, step.lm_loss);
//! }
//! model.checkpoint(Some("runs/ckpt".as_ref()))?;
//! # Ok::<(), mptrain::Error>(())
//! ```
//!
//! Threads: a [`Context`] and its [`Model`] may move to another thread (`Send`) but are not
//! `Sync`, as the header requires every call on one context to be serialised.

mod context;
mod error;
mod log;
mod model;
mod options;

pub use context::Context;
pub use error::{Error, Result, Status};
pub use log::LogLevel;
pub use model::{Batch, Model, ModelInfo, StepResult};
pub use options::Options;

use std::ffi::CStr;

/// The library's version, "MAJOR.MINOR.PATCH".
pub fn version() -> &'static str {
    // SAFETY: a static NUL-terminated ASCII string, never NULL.
    unsafe { CStr::from_ptr(mptrain_sys::mpt_version()) }.to_str().unwrap_or("unknown")
}

/// The library's version as MAJOR*10000 + MINOR*100 + PATCH.
pub fn version_number() -> i32 {
    // SAFETY: no arguments, no state.
    unsafe { mptrain_sys::mpt_version_number() }
}
