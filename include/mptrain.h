/*
 * mptrain.h: the C ABI of mptrain, the only public header.
 *
 * This header is the specification. It is plain C11 (and valid C++); only fixed-width
 * integers, size_t, floating point and UTF-8 `const char*` strings cross it. Handles are
 * opaque. Every fallible function returns an mpt_status; a failed call leaves its
 * out-parameters untouched (the one documented exception is mpt_init) and stores a message
 * that mpt_last_error() returns. No C++ exception ever crosses this boundary.
 *
 * Lifetime in one picture:
 *
 *   mpt_init_options opts = MPT_INIT_OPTIONS_INIT;
 *   opts.recipe_path = "recipes/tiny.toml";
 *   mpt_context* ctx = NULL;
 *   mpt_status s = mpt_init(&opts, &ctx);          // ctx is set even when s != MPT_OK
 *   if (s == MPT_OK) s = mpt_set_override(ctx, "train.train_iters=10");
 *   mpt_model* model = NULL;
 *   if (s == MPT_OK) s = mpt_build_model(ctx, &model);
 *   if (s == MPT_OK) s = mpt_train(model, NULL);
 *   if (s != MPT_OK) fprintf(stderr, "%s: %s\n", mpt_status_string(s), mpt_last_error(ctx));
 *   mpt_model_destroy(model);
 *   mpt_finalize(ctx);
 *
 * Struct evolution: every struct crossing the ABI starts with `size_t struct_size`, set by
 * its *_INIT macro (or init function) to the size the caller was compiled with. Fields are
 * only ever appended, so a library reads just the fields an older caller knows about and
 * gives the rest their defaults.
 *
 * Versions: MPT_VERSION_* describe the header a program was compiled with, mpt_version()
 * and mpt_version_number() the library it runs with. The shared library's SONAME
 * (libmptrain.so.N) changes only when the ABI breaks. A program that wants to be sure may
 * check at start-up:
 *
 *   assert(mpt_version_number() / 100 == MPT_VERSION_NUMBER / 100);  // same MAJOR.MINOR
 */
#ifndef MPTRAIN_H
#define MPTRAIN_H

#include <stddef.h>
#include <stdint.h>

/* ---- export and attribute macros ------------------------------------------------------ */

#if defined(_WIN32)
#if defined(MPT_BUILDING_LIBRARY)
#define MPT_API __declspec(dllexport)
#else
#define MPT_API __declspec(dllimport)
#endif
#elif defined(MPT_BUILDING_LIBRARY) && (defined(__GNUC__) || defined(__clang__))
#define MPT_API __attribute__((visibility("default")))
#else
#define MPT_API
#endif

/* Marks functions whose status must not be ignored. */
#if defined(__GNUC__) || defined(__clang__)
#define MPT_NODISCARD __attribute__((warn_unused_result))
#else
#define MPT_NODISCARD
#endif

/* C++ callers see that no function throws: nothing crosses the ABI as an exception. */
#if defined(__cplusplus)
#define MPT_NOEXCEPT noexcept
#else
#define MPT_NOEXCEPT
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* ---- versions ---------------------------------------------------------------------------
 * Thread safety: every function in this group may be called from any thread at any time. */

#define MPT_VERSION_MAJOR 0
#define MPT_VERSION_MINOR 1
#define MPT_VERSION_PATCH 0
#define MPT_VERSION_NUMBER (MPT_VERSION_MAJOR * 10000 + MPT_VERSION_MINOR * 100 + MPT_VERSION_PATCH)

/* The library's version as "MAJOR.MINOR.PATCH", e.g. "0.1.0". Static storage; never NULL. */
MPT_API const char* mpt_version(void) MPT_NOEXCEPT;

/* The library's version as MAJOR*10000 + MINOR*100 + PATCH, e.g. 100 for 0.1.0. */
MPT_API int mpt_version_number(void) MPT_NOEXCEPT;

/* ---- status codes -----------------------------------------------------------------------
 * Every fallible function returns one of these. Values are fixed and never reordered.
 * New codes may be added in later versions: treat an unknown value as a failure and
 * print it with mpt_status_string(). */

typedef enum mpt_status {
  MPT_OK = 0,
  MPT_ERR_INVALID_ARGUMENT = 1, /* misuse of the API: NULL handle, bad struct_size, wrong order */
  MPT_ERR_INVALID_CONFIG = 2,   /* recipe or override rejected (message names file:line and key) */
  MPT_ERR_NOT_SUPPORTED = 3,    /* a valid request for a capability not built yet */
  MPT_ERR_IO = 4,               /* a file is missing, unreadable or unwritable */
  MPT_ERR_CORRUPT_DATA = 5,     /* a dataset or checkpoint is malformed or truncated */
  MPT_ERR_OUT_OF_MEMORY = 6,
  MPT_ERR_DISTRIBUTED = 7,      /* rendezvous, communicator or peer failure */
  MPT_ERR_DEVICE = 8,           /* CUDA or driver failure */
  MPT_ERR_NUMERICAL = 9,        /* NaN or Inf in the loss or the gradients */
  MPT_ERR_INTERNAL = 10         /* a bug in mptrain; the message says where */
} mpt_status;

/* A short static description of a status ("ok", "invalid argument", ...); "unknown status"
 * for a value this library does not know. Never NULL; never freed by the caller.
 * Thread safety: any thread. */
MPT_API const char* mpt_status_string(mpt_status status) MPT_NOEXCEPT;

/* ---- handles ----------------------------------------------------------------------------
 * A context holds a recipe and its options; a model is the training engine built from
 * them (parameters, optimizer state, data stream) for this process's rank.
 *
 * Thread safety: a context and its model are not thread-safe. Serialise every call that
 * touches one context or its model (one thread at a time; any thread will do). Different
 * contexts are independent and may be used from different threads at once, but a process
 * normally runs one training job per rank: two contexts in one process share its CPU
 * threads (and GPU). */

typedef struct mpt_context mpt_context;
typedef struct mpt_model mpt_model;

/* ---- logging ----------------------------------------------------------------------------
 * The library reports progress (iteration lines, checkpoint saves) and warnings through a
 * callback. `message` is one UTF-8 line without a trailing newline, valid only during the
 * call. The callback runs on the thread that called into the library, inside that call;
 * it must not call back into mptrain with the same context. Return 0 (other values are
 * reserved for later use, such as asking the library to stop). Anything the callback
 * throws (when written in C++) is swallowed by the library. */

#define MPT_LOG_OFF (-1)
#define MPT_LOG_ERROR 0
#define MPT_LOG_WARN 1
#define MPT_LOG_INFO 2
#define MPT_LOG_DEBUG 3

typedef int (*mpt_log_fn)(void* user_data, int32_t level, const char* message);

/* ---- initialisation ---------------------------------------------------------------------
 *
 * mpt_init_options: what mpt_init needs. Start from MPT_INIT_OPTIONS_INIT (or call
 * mpt_init_options_init) and set the fields you need.
 *
 *   struct_size    sizeof(mpt_init_options) as the caller was compiled; set by the
 *                  initializer. Older, smaller structs are accepted (missing fields take
 *                  their defaults); larger ones too (the unknown tail is ignored).
 *   recipe_path    path of a TOML recipe file, or NULL
 *   recipe_toml    the recipe itself as a TOML string, or NULL; exactly one of recipe_path
 *                  and recipe_toml must be set. Errors name it "<string>".
 *   overrides      num_overrides strings "section.key=value" applied in order after the
 *                  recipe is loaded (errors name them "override #i 'section.key=value'",
 *                  counting from 1). May be NULL when num_overrides is 0.
 *   log_fn         log callback, or NULL to print log lines to the process's stderr
 *   log_user_data  passed unchanged to log_fn
 *   log_level      the most verbose level delivered: MPT_LOG_OFF .. MPT_LOG_DEBUG
 *                  (default MPT_LOG_INFO). Values above MPT_LOG_DEBUG mean MPT_LOG_DEBUG.
 *   rank, world_size, local_rank, master_port
 *                  this process's place in the job; -1 (the default) means "from the
 *                  environment": torchrun's RANK / WORLD_SIZE / LOCAL_RANK / MASTER_PORT,
 *                  else SLURM's SLURM_PROCID / SLURM_NTASKS / SLURM_LOCALID, else Open
 *                  MPI's OMPI_COMM_WORLD_RANK / _SIZE / _LOCAL_RANK; with none of them set,
 *                  rank 0 of a world of 1 (port 29500).
 *   master_addr    address of rank 0's rendezvous store; NULL means MASTER_ADDR from the
 *                  environment, else "127.0.0.1".
 *
 * With a world size above 1 every rank calls mpt_init and mpt_build_model with the same
 * recipe; the ranks meet at master_addr:master_port and split the model and the data as
 * the recipe's parallel sizes say (data and tensor parallel).
 *
 * Option structs are plain data: the library copies what it needs during mpt_init and
 * keeps no pointer into them. */
typedef struct mpt_init_options {
  size_t struct_size;
  const char* recipe_path;
  const char* recipe_toml;
  const char* const* overrides;
  size_t num_overrides;
  mpt_log_fn log_fn;
  void* log_user_data;
  int32_t log_level;
  int32_t rank;
  int32_t world_size;
  int32_t local_rank;
  const char* master_addr;
  int32_t master_port;
} mpt_init_options;

#define MPT_INIT_OPTIONS_INIT \
  { sizeof(mpt_init_options), NULL, NULL, NULL, 0, NULL, NULL, 2, -1, -1, -1, NULL, -1 }

/* Fills *opts with the defaults of MPT_INIT_OPTIONS_INIT. NULL is ignored.
 * Thread safety: any thread. */
MPT_API void mpt_init_options_init(mpt_init_options* opts) MPT_NOEXCEPT;

/* Creates a context: loads the recipe (file or string) and applies the overrides. The
 * recipe is validated as a whole (finalized) only when a model is built or the resolved
 * recipe is asked for, so mpt_set_override may still change any key.
 *
 * Ownership: on return *out_ctx belongs to the caller, who releases it with mpt_finalize.
 *
 * IMPORTANT, as sqlite3_open does: when opts and out_ctx are non-NULL and
 * opts->struct_size is valid, *out_ctx is set even if loading fails. It then points to a
 * context in a failed state: mpt_last_error() returns why it failed, every other call on
 * it returns MPT_ERR_INVALID_ARGUMENT ("context failed to initialise: ..."), and the
 * caller must still mpt_finalize it. *out_ctx is NULL only when the context itself could
 * not be allocated (MPT_ERR_OUT_OF_MEMORY).
 *
 * Returns:
 *   MPT_OK
 *   MPT_ERR_INVALID_ARGUMENT  opts or out_ctx NULL, or opts->struct_size 0 or too small to
 *                             hold recipe_path (*out_ctx untouched in these cases); both or
 *                             neither of recipe_path and recipe_toml set; overrides NULL
 *                             with num_overrides > 0; rank/world_size/local_rank/master_port
 *                             out of range, from the options or the environment
 *   MPT_ERR_INVALID_CONFIG    recipe syntax error, unknown key, wrong type, bad override
 *   MPT_ERR_IO                recipe file missing or unreadable
 *   MPT_ERR_OUT_OF_MEMORY
 *   MPT_ERR_INTERNAL
 * Thread safety: any thread; the new context then follows the handle rules above. */
MPT_API MPT_NODISCARD mpt_status mpt_init(const mpt_init_options* opts,
                                          mpt_context** out_ctx) MPT_NOEXCEPT;

/* Applies one override "section.key=value" (the value parsed as TOML; a bare word that is
 * not valid TOML is taken as a string) to the context's recipe. Allowed only while the
 * context has no model. A rejected override leaves the recipe unchanged.
 *
 * Returns:
 *   MPT_OK
 *   MPT_ERR_INVALID_ARGUMENT  ctx or assignment NULL; a model of ctx is alive; ctx failed
 *   MPT_ERR_INVALID_CONFIG    malformed assignment, unknown key or value of the wrong type
 *   MPT_ERR_OUT_OF_MEMORY, MPT_ERR_INTERNAL */
MPT_API MPT_NODISCARD mpt_status mpt_set_override(mpt_context* ctx,
                                                  const char* assignment) MPT_NOEXCEPT;

/* The resolved (finalized) recipe as TOML text that loads back to the same configuration.
 * Always sets *out_len (when out_len is non-NULL and the recipe is valid) to the length
 * needed, terminating NUL included; copies the text, NUL-terminated, into buf only when
 * buf is non-NULL and buf_size >= that length. So: call once with buf NULL to learn the
 * size (this returns MPT_ERR_INVALID_ARGUMENT with *out_len set), allocate, call again.
 * The context's recipe itself is not changed.
 *
 * Returns:
 *   MPT_OK                    buf holds the text
 *   MPT_ERR_INVALID_ARGUMENT  ctx NULL or failed; buf NULL or buf_size too small ("buffer
 *                             too small: need N bytes"; *out_len set)
 *   MPT_ERR_INVALID_CONFIG    the recipe fails validation (every problem listed)
 *   MPT_ERR_NOT_SUPPORTED     the recipe asks for something not built yet
 *   MPT_ERR_OUT_OF_MEMORY, MPT_ERR_INTERNAL */
MPT_API MPT_NODISCARD mpt_status mpt_config_toml(mpt_context* ctx, char* buf, size_t buf_size,
                                                 size_t* out_len) MPT_NOEXCEPT;

/* The message of the last failed call on ctx or on its model; "" if no call has failed.
 * A successful call does not clear it. For a NULL ctx, "invalid context (NULL)".
 * Ownership: the context's; valid until the next call on ctx or its model (copy it to
 * keep it). Never NULL. */
MPT_API const char* mpt_last_error(const mpt_context* ctx) MPT_NOEXCEPT;

/* Destroys a context, and its model if one is still alive (the caller must not use that
 * model afterwards). NULL is a no-op. Never fails. */
MPT_API void mpt_finalize(mpt_context* ctx) MPT_NOEXCEPT;

/* ---- the model --------------------------------------------------------------------------
 * Errors on a model are recorded in its context: read them with mpt_last_error(ctx) or
 * mpt_model_last_error(model). */

/* Validates the recipe (against this process's world size) and builds the engine: this
 * rank's model, optimizer and data stream; loads checkpoint.load if the recipe sets it.
 * Log lines go to the context's callback. One model per context at a time.
 *
 * Ownership: *out_model belongs to the caller (release with mpt_model_destroy) but lives
 * inside its context: mpt_finalize destroys it if the caller did not.
 *
 * Returns:
 *   MPT_OK
 *   MPT_ERR_INVALID_ARGUMENT  ctx or out_model NULL; ctx already has a model; ctx failed
 *   MPT_ERR_INVALID_CONFIG    the recipe fails validation (every problem listed, each as
 *                             "file:line: section.key: rule")
 *   MPT_ERR_NOT_SUPPORTED     the recipe or world size asks for something not built yet
 *   MPT_ERR_IO, MPT_ERR_CORRUPT_DATA   dataset or checkpoint.load unreadable or malformed
 *   MPT_ERR_OUT_OF_MEMORY, MPT_ERR_DEVICE, MPT_ERR_DISTRIBUTED, MPT_ERR_INTERNAL */
MPT_API MPT_NODISCARD mpt_status mpt_build_model(mpt_context* ctx,
                                                 mpt_model** out_model) MPT_NOEXCEPT;

/* Destroys a model and frees its memory; its context may then build another. NULL is a
 * no-op. Never fails. */
MPT_API void mpt_model_destroy(mpt_model* model) MPT_NOEXCEPT;

/* The message of the last failed call on the model's context (see mpt_last_error); for a
 * NULL model, "invalid model (NULL)". Never NULL. */
MPT_API const char* mpt_model_last_error(const mpt_model* model) MPT_NOEXCEPT;

/* A global batch (this rank's share) supplied by the caller instead of the recipe's
 * dataset. Arrays are row-major int32/float32 and are only read during the call.
 *
 *   tokens     [rows, cols] token ids in [0, model.vocab_size)
 *   labels     [rows, seq_length] target ids in [0, model.vocab_size), or NULL: then
 *              cols == seq_length + 1 and the labels are the tokens shifted by one;
 *              with labels, cols == seq_length. A label whose loss_mask is 0 may hold
 *              any value.
 *   loss_mask  [rows, seq_length] weight (finite, >= 0) of each target in the loss, or
 *              NULL for all 1
 *   rows       micro_batch_size * number of micro-batches
 *              (= global_batch_size / data-parallel size)
 *   cols       see labels
 *
 * Ranks of one tensor- or context-parallel group, and all pipeline stages, must pass
 * identical batches of whole sequences (their data-parallel rank's share; a
 * context-parallel rank keeps its own chunks of each sequence); the step fails with
 * MPT_ERR_INVALID_ARGUMENT on all of them otherwise. */
typedef struct mpt_batch {
  size_t struct_size;
  const int32_t* tokens;
  const int32_t* labels;
  const float* loss_mask;
  int64_t rows;
  int64_t cols;
} mpt_batch;

#define MPT_BATCH_INIT { sizeof(mpt_batch), NULL, NULL, NULL, 0, 0 }

/* The outcome of one training step. The caller sets struct_size (MPT_STEP_RESULT_INIT
 * does); the library fills only the fields that fit inside it. */
typedef struct mpt_step_result {
  size_t struct_size;
  int64_t iteration;        /* iterations completed, this one included */
  double lm_loss;           /* mean over micro-batches of the per-token mean loss */
  double grad_norm;         /* global L2 norm of the gradients before clipping */
  double learning_rate;     /* the learning rate this step used */
  int64_t tokens;           /* tokens in the global batch */
  double step_time_s;       /* wall time of the step */
  int64_t consumed_samples; /* samples consumed after this step */
} mpt_step_result;

#define MPT_STEP_RESULT_INIT { sizeof(mpt_step_result), 0, 0.0, 0.0, 0.0, 0, 0.0, 0 }

/* Runs one training step (all micro-batches, gradient accumulation, clipping, optimizer
 * step) on `batch`, or on the next batch of the recipe's dataset when batch is NULL.
 * out may be NULL; if not, its struct_size must be set.
 *
 * Returns:
 *   MPT_OK
 *   MPT_ERR_INVALID_ARGUMENT  model NULL; batch->struct_size too small; tokens NULL; rows
 *                             or cols not what the recipe says; a token or label id out of
 *                             range; a negative or non-finite loss_mask weight;
 *                             out->struct_size 0. Nothing is trained in these cases.
 *   MPT_ERR_NUMERICAL         the loss or the gradients are not finite
 *   MPT_ERR_IO, MPT_ERR_CORRUPT_DATA   reading the dataset failed
 *   MPT_ERR_OUT_OF_MEMORY, MPT_ERR_DEVICE, MPT_ERR_DISTRIBUTED, MPT_ERR_INTERNAL
 * After a failure other than MPT_ERR_INVALID_ARGUMENT the model's state is unspecified:
 * destroy it, or load a checkpoint. */
MPT_API MPT_NODISCARD mpt_status mpt_train_step(mpt_model* model, const mpt_batch* batch,
                                                mpt_step_result* out) MPT_NOEXCEPT;

/* Runs the recipe's training loop from the current iteration to train.train_iters, with
 * its logging, metrics and periodic checkpoints. last (may be NULL) receives the last
 * step's result. With checkpoint.exit_signal_handler (the default) it installs SIGTERM and
 * SIGINT handlers while it runs (the previous ones are restored on return): a signal ends
 * the loop after the current step, with a checkpoint when checkpoint.save is set, and
 * MPT_OK; set it to false when the host handles those signals itself.
 * Returns what mpt_train_step returns, plus MPT_ERR_IO for a failed periodic save. */
MPT_API MPT_NODISCARD mpt_status mpt_train(mpt_model* model,
                                           mpt_step_result* last) MPT_NOEXCEPT;

/* Saves a checkpoint of the model, optimizer and data position into
 * DIR/iter_XXXXXXX/ (XXXXXXX = the current iteration, 7 digits) and records it in
 * DIR/latest_checkpointed_iteration.txt. dir NULL means the recipe's checkpoint.save.
 * The directory is written under a temporary name and renamed when complete.
 *
 * Returns:
 *   MPT_OK
 *   MPT_ERR_INVALID_ARGUMENT  model NULL; dir NULL and the recipe sets no checkpoint.save
 *   MPT_ERR_IO                the directory cannot be created or written
 *   MPT_ERR_OUT_OF_MEMORY, MPT_ERR_DISTRIBUTED, MPT_ERR_INTERNAL */
MPT_API MPT_NODISCARD mpt_status mpt_checkpoint(mpt_model* model, const char* dir) MPT_NOEXCEPT;

/* Loads a checkpoint into the model: dir is an iter_XXXXXXX directory, or a save directory
 * (its latest checkpoint is loaded). The model's iteration becomes the checkpoint's.
 *
 * Returns:
 *   MPT_OK
 *   MPT_ERR_INVALID_ARGUMENT  model or dir NULL
 *   MPT_ERR_IO                the directory or a file in it is missing or unreadable
 *   MPT_ERR_CORRUPT_DATA      a file is malformed or truncated
 *   MPT_ERR_INVALID_CONFIG    the checkpoint's model does not match the recipe's
 *   MPT_ERR_OUT_OF_MEMORY, MPT_ERR_DISTRIBUTED, MPT_ERR_INTERNAL
 * After a failure the model's state is unspecified: destroy it or load another. */
MPT_API MPT_NODISCARD mpt_status mpt_load_checkpoint(mpt_model* model,
                                                     const char* dir) MPT_NOEXCEPT;

/* Sizes of a built model on this rank. The caller sets struct_size (MPT_MODEL_INFO_INIT
 * does); the library fills only the fields that fit inside it. Byte counts are this
 * rank's memory for each kind of state. */
typedef struct mpt_model_info {
  size_t struct_size;
  int64_t num_parameters;        /* parameters of the whole model */
  int64_t iteration;             /* iterations completed */
  int64_t train_iters;           /* the recipe's train.train_iters */
  int64_t seq_length;
  int64_t micro_batch_size;
  int64_t global_batch_size;
  int64_t vocab_size;            /* the recipe's model.vocab_size (before padding) */
  int64_t params_bytes;
  int64_t grads_bytes;
  int64_t optimizer_bytes;
  int64_t activations_peak_bytes;
  int64_t expert_params_bytes;   /* the MoE experts' share of params_bytes (0 without) */
} mpt_model_info;

#define MPT_MODEL_INFO_INIT { sizeof(mpt_model_info), 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0 }

/* Fills *info.
 * Returns:
 *   MPT_OK
 *   MPT_ERR_INVALID_ARGUMENT  model or info NULL; info->struct_size 0
 *   MPT_ERR_INTERNAL */
MPT_API MPT_NODISCARD mpt_status mpt_model_get_info(const mpt_model* model,
                                                    mpt_model_info* info) MPT_NOEXCEPT;

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* MPTRAIN_H */
