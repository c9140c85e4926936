//! The model: this rank's training engine built from a context (mpt_model), the batches a
//! host may feed it, and what a step and the model report.

use std::path::Path;
use std::ptr::{self, NonNull};

use mptrain_sys as sys;

use crate::context::{path_string, Context};
use crate::error::{Error, Result, Status};

/// This rank's model, optimizer state and data stream. It borrows its [`Context`], which
/// receives its errors and log lines; dropping it frees the engine.
pub struct Model<'ctx> {
    raw: NonNull<sys::mpt_model>,
    ctx: &'ctx mut Context,
}

// SAFETY: as for Context: usable from any thread, one call at a time (`&mut self`).
unsafe impl Send for Model<'_> {}

/// A global batch (this rank's share) supplied by the host, row-major:
/// `tokens` holds `rows x cols` ids; without `labels`, `cols` is seq_length + 1 and the
/// labels are the tokens shifted by one; with them, `cols` is seq_length and `labels`
/// holds `rows x cols`. `loss_mask` (rows x seq_length) weights each target (default 1).
#[derive(Debug, Clone, Copy)]
pub struct Batch<'a> {
    pub tokens: &'a [i32],
    pub labels: Option<&'a [i32]>,
    pub loss_mask: Option<&'a [f32]>,
    pub rows: usize,
    pub cols: usize,
}

impl<'a> Batch<'a> {
    /// Tokens only: each row is seq_length + 1 tokens.
    pub fn new(tokens: &'a [i32], rows: usize, cols: usize) -> Batch<'a> {
        Batch { tokens, labels: None, loss_mask: None, rows, cols }
    }

    pub fn with_labels(mut self, labels: &'a [i32]) -> Batch<'a> {
        self.labels = Some(labels);
        self
    }

    pub fn with_loss_mask(mut self, loss_mask: &'a [f32]) -> Batch<'a> {
        self.loss_mask = Some(loss_mask);
        self
    }

    /// The C view, once every slice is known to hold what rows and cols promise (the
    /// library reads exactly that much).
    fn to_raw(self) -> Result<sys::mpt_batch> {
        let invalid = |what: String| Error::new(Status::InvalidArgument, what);
        let cells = self
            .rows
            .checked_mul(self.cols)
            .ok_or_else(|| invalid(format!("Batch: rows {} x cols {} overflows", self.rows, self.cols)))?;
        let check_len = |name: &str, len: usize, want: usize| {
            if len == want {
                Ok(())
            } else {
                Err(invalid(format!(
                    "Batch: {} holds {} values, rows {} x cols {} needs {}",
                    name, len, self.rows, self.cols, want
                )))
            }
        };
        check_len("tokens", self.tokens.len(), cells)?;
        let seq_length = if let Some(labels) = self.labels {
            check_len("labels", labels.len(), cells)?;
            self.cols
        } else {
            self.cols.checked_sub(1).ok_or_else(|| invalid("Batch: cols is 0".to_string()))?
        };
        if let Some(mask) = self.loss_mask {
            check_len("loss_mask", mask.len(), self.rows * seq_length)?;
        }
        let dim = |name: &str, v: usize| {
            i64::try_from(v).map_err(|_| invalid(format!("Batch: {} = {} is out of range", name, v)))
        };
        Ok(sys::mpt_batch {
            tokens: self.tokens.as_ptr(),
            labels: self.labels.map_or(ptr::null(), |l| l.as_ptr()),
            loss_mask: self.loss_mask.map_or(ptr::null(), |m| m.as_ptr()),
            rows: dim("rows", self.rows)?,
            cols: dim("cols", self.cols)?,
            ..Default::default()
        })
    }
}

/// The outcome of one training step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepResult {
    /// Iterations completed, this one included.
    pub iteration: i64,
    /// Mean over micro-batches of the per-token mean loss.
    pub lm_loss: f64,
    /// Global L2 norm of the gradients before clipping.
    pub grad_norm: f64,
    pub learning_rate: f64,
    /// Tokens in the global batch.
    pub tokens: i64,
    pub step_time_s: f64,
    /// Samples consumed after this step.
    pub consumed_samples: i64,
}

impl From<sys::mpt_step_result> for StepResult {
    fn from(r: sys::mpt_step_result) -> StepResult {
        StepResult {
            iteration: r.iteration,
            lm_loss: r.lm_loss,
            grad_norm: r.grad_norm,
            learning_rate: r.learning_rate,
            tokens: r.tokens,
            step_time_s: r.step_time_s,
            consumed_samples: r.consumed_samples,
        }
    }
}

/// Sizes of a built model on this rank (byte counts are this rank's memory).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelInfo {
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

impl<'ctx> Model<'ctx> {
    pub(crate) fn new(raw: NonNull<sys::mpt_model>, ctx: &'ctx mut Context) -> Model<'ctx> {
        Model { raw, ctx }
    }

    pub(crate) fn check(&mut self, status: sys::mpt_status) -> Result<()> {
        self.ctx.check(status)
    }

    /// One training step on `batch`, or on the recipe's next batch for None. After an
    /// error other than `Status::InvalidArgument` the model's state is unspecified.
    pub fn train_step(&mut self, batch: Option<&Batch<'_>>) -> Result<StepResult> {
        let raw_batch = batch.map(|b| b.to_raw()).transpose()?;
        let mut out = sys::mpt_step_result::default();
        // SAFETY: live model; the batch's slices were checked against rows x cols and outlive
        // the call.
        let status = unsafe {
            sys::mpt_train_step(
                self.raw.as_ptr(),
                raw_batch.as_ref().map_or(ptr::null(), |b| b as *const sys::mpt_batch),
                &mut out,
            )
        };
        self.check(status)?;
        Ok(out.into())
    }

    /// The recipe's training loop up to train.train_iters, with its logging, evaluation and
    /// checkpoints; the last step's result.
    pub fn train(&mut self) -> Result<StepResult> {
        let mut out = sys::mpt_step_result::default();
        // SAFETY: live model.
        let status = unsafe { sys::mpt_train(self.raw.as_ptr(), &mut out) };
        self.check(status)?;
        Ok(out.into())
    }

    /// Saves a checkpoint into `dir`/iter_XXXXXXX (None: the recipe's checkpoint.save).
    pub fn checkpoint(&mut self, dir: Option<&Path>) -> Result<()> {
        let dir = dir.map(|d| path_string("checkpoint directory", d.as_os_str())).transpose()?;
        // SAFETY: live model; dir NUL-terminated or NULL.
        let status = unsafe {
            sys::mpt_checkpoint(self.raw.as_ptr(), dir.as_ref().map_or(ptr::null(), |d| d.as_ptr()))
        };
        self.ctx.check(status)
    }

    /// Loads a checkpoint: an iter_XXXXXXX directory, or a save directory (its latest).
    pub fn load_checkpoint(&mut self, dir: &Path) -> Result<()> {
        let dir = path_string("checkpoint directory", dir.as_os_str())?;
        // SAFETY: live model, NUL-terminated path.
        let status = unsafe { sys::mpt_load_checkpoint(self.raw.as_ptr(), dir.as_ptr()) };
        self.ctx.check(status)
    }

    pub fn info(&mut self) -> Result<ModelInfo> {
        let mut i = sys::mpt_model_info::default();
        // SAFETY: live model; `i` is a whole current-size struct.
        let status = unsafe { sys::mpt_model_get_info(self.raw.as_ptr(), &mut i) };
        self.ctx.check(status)?;
        Ok(ModelInfo {
            num_parameters: i.num_parameters,
            iteration: i.iteration,
            train_iters: i.train_iters,
            seq_length: i.seq_length,
            micro_batch_size: i.micro_batch_size,
            global_batch_size: i.global_batch_size,
            vocab_size: i.vocab_size,
            params_bytes: i.params_bytes,
            grads_bytes: i.grads_bytes,
            optimizer_bytes: i.optimizer_bytes,
            activations_peak_bytes: i.activations_peak_bytes,
            expert_params_bytes: i.expert_params_bytes,
        })
    }

    /// The resolved recipe the model was built from, as TOML.
    pub fn config_toml(&mut self) -> Result<String> {
        self.ctx.config_toml()
    }
}

impl Drop for Model<'_> {
    fn drop(&mut self) {
        // SAFETY: live model, destroyed once; its context outlives it (borrowed).
        unsafe { sys::mpt_model_destroy(self.raw.as_ptr()) };
    }
}
