/* The C ABI driven from C11, linked against libmptrain.so only: versions, status strings,
 * option structs old and new, recipe errors, training steps with the recipe's data and
 * with a host batch, and a checkpoint that resumes bit for bit.
 * argv[1] is the source directory (unused: the recipe is built in memory). */
#define _POSIX_C_SOURCE 200809L

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mptrain.h"

static int g_checks = 0;

#define CHECK(cond, ...)                                                    \
  do {                                                                      \
    ++g_checks;                                                             \
    if (!(cond)) {                                                          \
      fprintf(stderr, "%s:%d: check failed: %s\n  ", __FILE__, __LINE__, #cond); \
      fprintf(stderr, __VA_ARGS__);                                         \
      fprintf(stderr, "\n");                                                \
      exit(1);                                                              \
    }                                                                       \
  } while (0)

/* A call that must succeed; on failure prints the status and the context's message. */
#define CHECK_OK(call, ctx)                                                               \
  do {                                                                                    \
    mpt_status s_ = (call);                                                               \
    CHECK(s_ == MPT_OK, "%s returned %d (%s): %s", #call, (int)s_, mpt_status_string(s_), \
          mpt_last_error(ctx));                                                           \
  } while (0)

/* LLaMA-style: RMSNorm, RoPE, SwiGLU, grouped-query attention, no bias, untied output. */
static const char* const kTinyRecipe =
    "[model]\n"
    "num_layers = 2\n"
    "hidden_size = 64\n"
    "num_attention_heads = 4\n"
    "num_query_groups = 2\n"
    "seq_length = 32\n"
    "vocab_size = 257\n"
    "normalization = \"RMSNorm\"\n"
    "position_embedding_type = \"rope\"\n"
    "activation_func = \"silu\"\n"
    "gated_linear_unit = true\n"
    "add_bias_linear = false\n"
    "share_embeddings_and_output_weights = false\n"
    "hidden_dropout = 0.0\n"
    "attention_dropout = 0.0\n"
    "\n"
    "[train]\n"
    "micro_batch_size = 2\n"
    "global_batch_size = 4\n"
    "train_iters = 3\n"
    "\n"
    "[optimizer]\n"
    "lr = 1e-3\n"
    "\n"
    "[dataset]\n"
    "source = \"corpus\"\n"
    "\n"
    "[logger]\n"
    "log_interval = 1\n";

enum { kRows = 4, kSeq = 32, kVocab = 257 }; /* rows = micro 2 x 2 micro-batches */

struct log_counter {
  int lines;
  int bad;
};

static int count_log_line(void* user_data, int32_t level, const char* message) {
  struct log_counter* c = (struct log_counter*)user_data;
  c->lines++;
  if (level < MPT_LOG_ERROR || level > MPT_LOG_DEBUG || message == NULL) c->bad++;
  return 0;
}

static int contains(const char* text, const char* part) { return strstr(text, part) != NULL; }

static mpt_context* init_tiny(const char* const* overrides, size_t n, struct log_counter* logs,
                              int32_t log_level) {
  mpt_init_options opts = MPT_INIT_OPTIONS_INIT;
  mpt_context* ctx = NULL;
  opts.recipe_toml = kTinyRecipe;
  opts.overrides = overrides;
  opts.num_overrides = n;
  opts.log_fn = count_log_line;
  opts.log_user_data = logs;
  opts.log_level = log_level;
  CHECK_OK(mpt_init(&opts, &ctx), ctx);
  CHECK(ctx != NULL, "mpt_init returned MPT_OK and no context");
  return ctx;
}

/* The resolved recipe text, malloc'ed. */
static char* config_text(mpt_context* ctx) {
  size_t len = 0;
  char* buf;
  mpt_status s = mpt_config_toml(ctx, NULL, 0, &len);
  CHECK(s == MPT_ERR_INVALID_ARGUMENT, "size query returned %d: %s", (int)s, mpt_last_error(ctx));
  CHECK(len > 1, "size query gave length %zu", len);
  CHECK(contains(mpt_last_error(ctx), "buffer too small"), "message: %s", mpt_last_error(ctx));
  buf = (char*)malloc(len);
  CHECK(buf != NULL, "malloc");
  s = mpt_config_toml(ctx, buf, len - 1, &len);
  CHECK(s == MPT_ERR_INVALID_ARGUMENT, "one byte short returned %d", (int)s);
  CHECK_OK(mpt_config_toml(ctx, buf, len, &len), ctx);
  CHECK(strlen(buf) + 1 == len, "length %zu but text of %zu bytes", len, strlen(buf));
  return buf;
}

/* Deterministic tokens for a host batch without labels: [kRows, kSeq + 1]. */
static void fill_tokens(int32_t* tokens, int64_t count, int32_t seed) {
  int64_t i;
  for (i = 0; i < count; ++i) tokens[i] = (int32_t)((i * 37 + seed * 11 + 5) % kVocab);
}

static void test_versions_and_status(void) {
  char expected[32];
  int i, j;
  snprintf(expected, sizeof expected, "%d.%d.%d", MPT_VERSION_MAJOR, MPT_VERSION_MINOR,
           MPT_VERSION_PATCH);
  CHECK(strcmp(mpt_version(), expected) == 0, "mpt_version() '%s' vs header '%s'", mpt_version(),
        expected);
  CHECK(strcmp(mpt_version(), "0.1.0") == 0, "mpt_version() is '%s'", mpt_version());
  CHECK(mpt_version_number() == MPT_VERSION_NUMBER, "runtime %d vs header %d",
        mpt_version_number(), MPT_VERSION_NUMBER);
  CHECK(MPT_VERSION_NUMBER == 100, "MPT_VERSION_NUMBER is %d", MPT_VERSION_NUMBER);

  CHECK(strcmp(mpt_status_string(MPT_OK), "ok") == 0, "MPT_OK is '%s'", mpt_status_string(MPT_OK));
  for (i = MPT_OK; i <= MPT_ERR_INTERNAL; ++i) {
    const char* a = mpt_status_string((mpt_status)i);
    CHECK(a != NULL && a[0] != '\0' && strcmp(a, "unknown status") != 0, "code %d has no text", i);
    for (j = MPT_OK; j < i; ++j)
      CHECK(strcmp(a, mpt_status_string((mpt_status)j)) != 0, "codes %d and %d share '%s'", i, j,
            a);
  }
  CHECK(strcmp(mpt_status_string((mpt_status)99), "unknown status") == 0, "99 gave '%s'",
        mpt_status_string((mpt_status)99));
  CHECK(strcmp(mpt_status_string((mpt_status)-1), "unknown status") == 0, "-1 has a text");
}

static void test_null_and_misuse(void) {
  mpt_init_options opts;
  mpt_context* const sentinel = (mpt_context*)&opts;
  mpt_context* ctx = sentinel;
  mpt_model* model = NULL;
  mpt_step_result result = MPT_STEP_RESULT_INIT;
  mpt_model_info info = MPT_MODEL_INFO_INIT;
  size_t len = 0;
  const mpt_init_options defaults = MPT_INIT_OPTIONS_INIT;

  memset(&opts, 0x5a, sizeof opts);
  mpt_init_options_init(&opts);
  CHECK(memcmp(&opts, &defaults, offsetof(mpt_init_options, master_port) + sizeof(int32_t)) == 0,
        "mpt_init_options_init differs from MPT_INIT_OPTIONS_INIT");
  CHECK(opts.struct_size == sizeof(mpt_init_options) && opts.log_level == MPT_LOG_INFO &&
            opts.rank == -1 && opts.world_size == -1 && opts.master_port == -1,
        "defaults wrong");
  mpt_init_options_init(NULL);

  opts.recipe_toml = kTinyRecipe;
  CHECK(mpt_init(NULL, &ctx) == MPT_ERR_INVALID_ARGUMENT && ctx == sentinel, "NULL options");
  CHECK(mpt_init(&opts, NULL) == MPT_ERR_INVALID_ARGUMENT, "NULL out_ctx");
  opts.struct_size = 0;
  CHECK(mpt_init(&opts, &ctx) == MPT_ERR_INVALID_ARGUMENT && ctx == sentinel, "struct_size 0");
  opts.struct_size = sizeof(size_t);
  CHECK(mpt_init(&opts, &ctx) == MPT_ERR_INVALID_ARGUMENT && ctx == sentinel, "struct_size 8");
  opts.struct_size = sizeof opts;

  CHECK(strcmp(mpt_last_error(NULL), "invalid context (NULL)") == 0, "last_error(NULL)");
  CHECK(strcmp(mpt_model_last_error(NULL), "invalid model (NULL)") == 0, "model_last_error(NULL)");
  CHECK(mpt_set_override(NULL, "a.b=1") == MPT_ERR_INVALID_ARGUMENT, "set_override(NULL)");
  CHECK(mpt_config_toml(NULL, NULL, 0, &len) == MPT_ERR_INVALID_ARGUMENT, "config_toml(NULL)");
  CHECK(mpt_build_model(NULL, &model) == MPT_ERR_INVALID_ARGUMENT && model == NULL, "build(NULL)");
  CHECK(mpt_train_step(NULL, NULL, &result) == MPT_ERR_INVALID_ARGUMENT, "train_step(NULL)");
  CHECK(mpt_train(NULL, &result) == MPT_ERR_INVALID_ARGUMENT, "train(NULL)");
  CHECK(mpt_checkpoint(NULL, "/tmp") == MPT_ERR_INVALID_ARGUMENT, "checkpoint(NULL)");
  CHECK(mpt_load_checkpoint(NULL, "/tmp") == MPT_ERR_INVALID_ARGUMENT, "load_checkpoint(NULL)");
  CHECK(mpt_model_get_info(NULL, &info) == MPT_ERR_INVALID_ARGUMENT, "get_info(NULL)");
  CHECK(result.iteration == 0 && info.num_parameters == 0, "out-params written on error");
  mpt_model_destroy(NULL);
  mpt_finalize(NULL);

  /* Both recipe sources: a failed context that says why and refuses everything else. */
  opts.recipe_path = "recipe.toml";
  ctx = NULL;
  CHECK(mpt_init(&opts, &ctx) == MPT_ERR_INVALID_ARGUMENT, "both recipe sources accepted");
  CHECK(ctx != NULL, "no failed context to read the message from");
  CHECK(contains(mpt_last_error(ctx), "exactly one of recipe_path and recipe_toml"), "message: %s",
        mpt_last_error(ctx));
  mpt_finalize(ctx);

  /* A rank outside the world named explicitly. */
  opts.recipe_path = NULL;
  opts.rank = 3;
  opts.world_size = 2;
  ctx = NULL;
  CHECK(mpt_init(&opts, &ctx) == MPT_ERR_INVALID_ARGUMENT && ctx != NULL, "rank 3 of 2 accepted");
  CHECK(contains(mpt_last_error(ctx), "rank 3"), "message: %s", mpt_last_error(ctx));
  mpt_finalize(ctx);

  /* A missing recipe file is an I/O error. */
  opts.rank = -1;
  opts.world_size = -1;
  opts.recipe_toml = NULL;
  opts.recipe_path = "/nonexistent/dir/recipe.toml";
  ctx = NULL;
  CHECK(mpt_init(&opts, &ctx) == MPT_ERR_IO && ctx != NULL, "missing file: %s",
        ctx ? mpt_last_error(ctx) : "(no context)");
  CHECK(contains(mpt_last_error(ctx), "/nonexistent/dir/recipe.toml"), "message: %s",
        mpt_last_error(ctx));
  mpt_finalize(ctx);
}

/* The job layout from the options or from the launcher's environment: the world size
 * reaches finalize(), which checks the recipe's batch sizes against it. */
static void test_launch_place(void) {
  mpt_init_options opts = MPT_INIT_OPTIONS_INIT;
  mpt_context* ctx = NULL;
  mpt_model* model = NULL;
  mpt_status s;
  opts.recipe_toml = kTinyRecipe;
  opts.log_level = MPT_LOG_OFF;
  opts.rank = 0;
  opts.world_size = 3; /* 3 data-parallel ranks cannot split a global batch of 4 into micro-batches of 2 */
  CHECK_OK(mpt_init(&opts, &ctx), ctx);
  s = mpt_build_model(ctx, &model);
  CHECK(s != MPT_OK && model == NULL, "a world of 3 built a model");
  CHECK(contains(mpt_last_error(ctx), "global_batch_size"), "message: %s", mpt_last_error(ctx));
  mpt_finalize(ctx);

  opts.rank = -2;
  ctx = NULL;
  CHECK(mpt_init(&opts, &ctx) == MPT_ERR_INVALID_ARGUMENT && ctx != NULL, "rank -2 accepted");
  mpt_finalize(ctx);

  opts.rank = -1;
  opts.world_size = -1;
  CHECK(setenv("RANK", "1", 1) == 0 && setenv("WORLD_SIZE", "3", 1) == 0, "setenv");
  ctx = NULL;
  CHECK_OK(mpt_init(&opts, &ctx), ctx);
  s = mpt_config_toml(ctx, NULL, 0, NULL);
  CHECK(s != MPT_OK && contains(mpt_last_error(ctx), "global_batch_size"),
        "WORLD_SIZE=3 from the environment not seen (%d): %s", (int)s, mpt_last_error(ctx));
  mpt_finalize(ctx);

  CHECK(setenv("RANK", "one", 1) == 0, "setenv");
  ctx = NULL;
  CHECK(mpt_init(&opts, &ctx) == MPT_ERR_INVALID_ARGUMENT && ctx != NULL, "RANK=one accepted");
  CHECK(contains(mpt_last_error(ctx), "RANK='one'"), "message: %s", mpt_last_error(ctx));
  mpt_finalize(ctx);
  CHECK(unsetenv("RANK") == 0 && unsetenv("WORLD_SIZE") == 0, "unsetenv");
}

static void test_bad_recipe(void) {
  mpt_init_options opts = MPT_INIT_OPTIONS_INIT;
  mpt_context* ctx = NULL;
  mpt_model* model = NULL;
  mpt_status s;
  opts.recipe_toml = "[model]\nnum_layer = 2\nhidden_size = 64\n";
  s = mpt_init(&opts, &ctx);
  CHECK(s == MPT_ERR_INVALID_CONFIG, "unknown key gave %d", (int)s);
  CHECK(ctx != NULL, "no failed context");
  CHECK(contains(mpt_last_error(ctx), "num_layer"), "message does not name the key: %s",
        mpt_last_error(ctx));
  CHECK(contains(mpt_last_error(ctx), ":2"), "message does not name the line: %s",
        mpt_last_error(ctx));
  s = mpt_build_model(ctx, &model);
  CHECK(s == MPT_ERR_INVALID_ARGUMENT && model == NULL, "failed context built a model (%d)",
        (int)s);
  CHECK(contains(mpt_last_error(ctx), "context failed to initialise") &&
            contains(mpt_last_error(ctx), "num_layer"),
        "message: %s", mpt_last_error(ctx));
  CHECK(mpt_set_override(ctx, "model.num_layers=2") == MPT_ERR_INVALID_ARGUMENT, "override");
  mpt_finalize(ctx);
}

static void test_overrides_and_config(void) {
  const char* const overrides[] = {"train.train_iters=7", "rng.seed=99"};
  struct log_counter logs = {0, 0};
  mpt_context* ctx = init_tiny(overrides, 2, &logs, MPT_LOG_INFO);
  mpt_context* again = NULL;
  mpt_init_options opts = MPT_INIT_OPTIONS_INIT;
  mpt_status s;
  char* text;
  char* text_again;

  s = mpt_set_override(ctx, "model.num_layer=3");
  CHECK(s == MPT_ERR_INVALID_CONFIG, "unknown override key gave %d", (int)s);
  CHECK(contains(mpt_last_error(ctx), "num_layer"), "message: %s", mpt_last_error(ctx));
  CHECK(contains(mpt_last_error(ctx), "override #3"), "origin not named: %s", mpt_last_error(ctx));
  s = mpt_set_override(ctx, "optimizer.lr=oops");
  CHECK(s == MPT_ERR_INVALID_CONFIG, "wrong-type override gave %d", (int)s);
  CHECK(mpt_set_override(ctx, NULL) == MPT_ERR_INVALID_ARGUMENT, "NULL assignment");
  CHECK_OK(mpt_set_override(ctx, "optimizer.lr=0.002"), ctx);

  text = config_text(ctx);
  CHECK(contains(text, "train_iters = 7"), "override missing from:\n%s", text);
  CHECK(contains(text, "seed = 99"), "override missing from:\n%s", text);
  CHECK(contains(text, "0.002"), "override missing from:\n%s", text);

  /* The printed recipe loads back to the same configuration. */
  opts.recipe_toml = text;
  opts.log_level = MPT_LOG_OFF;
  CHECK_OK(mpt_init(&opts, &again), again);
  text_again = config_text(again);
  CHECK(strcmp(text, text_again) == 0, "round trip differs:\n%s\n---\n%s", text, text_again);
  free(text_again);
  mpt_finalize(again);
  free(text);

  /* A recipe that loads but fails validation: reported when it is resolved. */
  CHECK_OK(mpt_set_override(ctx, "model.num_query_groups=3"), ctx);
  s = mpt_config_toml(ctx, NULL, 0, NULL);
  CHECK(s == MPT_ERR_INVALID_CONFIG, "4 heads in 3 query groups gave %d: %s", (int)s,
        mpt_last_error(ctx));
  CHECK(contains(mpt_last_error(ctx), "num_query_groups"), "message: %s", mpt_last_error(ctx));
  mpt_finalize(ctx);
}

static void test_old_and_new_callers(void) {
  /* A caller compiled when the options ended before log_level. */
  struct log_counter logs = {0, 0};
  mpt_init_options opts = MPT_INIT_OPTIONS_INIT;
  struct {
    mpt_init_options known;
    char future_fields[40];
  } newer;
  mpt_context* ctx = NULL;
  char* text;
  memset(&opts, 0x7f, sizeof opts); /* garbage past struct_size must not be read */
  opts.struct_size = offsetof(mpt_init_options, log_level);
  opts.recipe_path = NULL;
  opts.recipe_toml = kTinyRecipe;
  opts.overrides = NULL;
  opts.num_overrides = 0;
  opts.log_fn = count_log_line;
  opts.log_user_data = &logs;
  CHECK_OK(mpt_init(&opts, &ctx), ctx);
  text = config_text(ctx);
  CHECK(contains(text, "num_layers = 2"), "recipe lost:\n%s", text);
  free(text);
  mpt_finalize(ctx);

  /* A caller compiled against a later header with fields this library does not know. */
  memset(&newer, 0x7f, sizeof newer);
  mpt_init_options_init(&newer.known);
  newer.known.struct_size = sizeof newer;
  newer.known.recipe_toml = kTinyRecipe;
  newer.known.log_level = MPT_LOG_OFF;
  ctx = NULL;
  CHECK_OK(mpt_init(&newer.known, &ctx), ctx);
  mpt_finalize(ctx);
}

static double step(mpt_model* model, mpt_context* ctx, const mpt_batch* batch, int64_t iteration) {
  mpt_step_result r = MPT_STEP_RESULT_INIT;
  CHECK_OK(mpt_train_step(model, batch, &r), ctx);
  CHECK(r.iteration == iteration, "iteration %lld after the step, expected %lld",
        (long long)r.iteration, (long long)iteration);
  CHECK(isfinite(r.lm_loss) && r.lm_loss > 0.0, "loss %g", r.lm_loss);
  CHECK(isfinite(r.grad_norm) && r.grad_norm > 0.0, "grad norm %g", r.grad_norm);
  CHECK(r.tokens == kRows * kSeq, "tokens %lld", (long long)r.tokens);
  CHECK(r.consumed_samples == iteration * kRows, "consumed %lld", (long long)r.consumed_samples);
  return r.lm_loss;
}

static int64_t iteration_of(const mpt_model* model, mpt_context* ctx) {
  mpt_model_info info = MPT_MODEL_INFO_INIT;
  CHECK_OK(mpt_model_get_info(model, &info), ctx);
  return info.iteration;
}

static int same_loss(double a, double b) { return a == b || fabs(a - b) <= 1e-6 * fabs(a); }

static void test_training_and_checkpoint(void) {
  const char* const overrides[] = {"train.train_iters=4"};
  struct log_counter logs = {0, 0};
  mpt_context* ctx = init_tiny(overrides, 1, &logs, MPT_LOG_INFO);
  mpt_model* model = NULL;
  mpt_model* second = NULL;
  mpt_model_info info = MPT_MODEL_INFO_INIT;
  mpt_step_result old_result;
  mpt_batch batch = MPT_BATCH_INIT;
  static int32_t tokens[kRows * (kSeq + 1)];
  char dir_template[] = "/tmp/mpt_c_api_XXXXXX";
  char* dir;
  char command[128];
  double loss3, loss4, resumed3, resumed4;
  mpt_status s;

  CHECK_OK(mpt_build_model(ctx, &model), ctx);
  CHECK(model != NULL, "no model");
  s = mpt_build_model(ctx, &second);
  CHECK(s == MPT_ERR_INVALID_ARGUMENT && second == NULL, "a second model was built (%d)", (int)s);
  CHECK(mpt_set_override(ctx, "train.train_iters=9") == MPT_ERR_INVALID_ARGUMENT,
        "override accepted with a model alive");
  CHECK(strcmp(mpt_model_last_error(model), mpt_last_error(ctx)) == 0, "model message differs");

  CHECK_OK(mpt_model_get_info(model, &info), ctx);
  CHECK(info.num_parameters > 0 && info.iteration == 0 && info.train_iters == 4 &&
            info.seq_length == kSeq && info.micro_batch_size == 2 && info.global_batch_size == 4 &&
            info.vocab_size == kVocab && info.params_bytes >= 4 * info.num_parameters &&
            info.grads_bytes > 0 && info.optimizer_bytes > 0 && info.expert_params_bytes == 0,
        "info: %lld params, iteration %lld, train_iters %lld, seq %lld, params %lld bytes",
        (long long)info.num_parameters, (long long)info.iteration, (long long)info.train_iters,
        (long long)info.seq_length, (long long)info.params_bytes);
  info.struct_size = 0;
  CHECK(mpt_model_get_info(model, &info) == MPT_ERR_INVALID_ARGUMENT, "struct_size 0 accepted");

  /* A batch of the wrong shape is rejected and trains nothing. */
  fill_tokens(tokens, kRows * (kSeq + 1), 1);
  batch.tokens = tokens;
  batch.rows = kRows;
  batch.cols = kSeq; /* labels are not given, so seq_length + 1 is needed */
  s = mpt_train_step(model, &batch, NULL);
  CHECK(s == MPT_ERR_INVALID_ARGUMENT, "wrong shape gave %d", (int)s);
  CHECK(contains(mpt_last_error(ctx), "cols"), "message: %s", mpt_last_error(ctx));
  batch.cols = kSeq + 1;
  batch.rows = kRows + 1;
  CHECK(mpt_train_step(model, &batch, NULL) == MPT_ERR_INVALID_ARGUMENT, "wrong rows accepted");
  batch.rows = kRows;
  tokens[5] = kVocab;
  CHECK(mpt_train_step(model, &batch, NULL) == MPT_ERR_INVALID_ARGUMENT, "token 257 accepted");
  fill_tokens(tokens, kRows * (kSeq + 1), 1);
  batch.struct_size = 8;
  CHECK(mpt_train_step(model, &batch, NULL) == MPT_ERR_INVALID_ARGUMENT, "struct_size 8 batch");
  batch.struct_size = sizeof batch;
  old_result.struct_size = 0;
  CHECK(mpt_train_step(model, NULL, &old_result) == MPT_ERR_INVALID_ARGUMENT, "result size 0");
  CHECK(iteration_of(model, ctx) == 0, "a rejected step trained");

  /* Steps from the recipe's corpus, then a checkpoint, then one of each kind. */
  step(model, ctx, NULL, 1);
  step(model, ctx, NULL, 2);
  dir = mkdtemp(dir_template);
  CHECK(dir != NULL, "mkdtemp failed");
  CHECK_OK(mpt_checkpoint(model, dir), ctx);
  loss3 = step(model, ctx, NULL, 3);
  loss4 = step(model, ctx, &batch, 4);
  CHECK(logs.bad == 0, "malformed log calls");

  /* An old caller's result struct gets only the fields it knows. */
  memset(&old_result, 0x7f, sizeof old_result);
  old_result.struct_size = offsetof(mpt_step_result, learning_rate);
  CHECK_OK(mpt_train_step(model, &batch, &old_result), ctx);
  CHECK(old_result.iteration == 5 && isfinite(old_result.lm_loss), "old result not filled");
  CHECK(old_result.tokens == 0x7f7f7f7f7f7f7f7fLL, "field past struct_size written");

  /* Destroying the model lets the context take overrides and build another. A different
   * seed gives it different initial weights, so only the checkpoint can make it agree. */
  mpt_model_destroy(model);
  model = NULL;
  CHECK_OK(mpt_set_override(ctx, "rng.seed=4321"), ctx);
  CHECK_OK(mpt_build_model(ctx, &model), ctx);
  CHECK(iteration_of(model, ctx) == 0, "fresh model not at iteration 0");
  s = mpt_load_checkpoint(model, "/nonexistent/checkpoint");
  CHECK(s != MPT_OK && mpt_last_error(ctx)[0] != '\0', "missing checkpoint loaded (%d)", (int)s);
  CHECK(mpt_load_checkpoint(model, NULL) == MPT_ERR_INVALID_ARGUMENT, "NULL dir");
  mpt_model_destroy(model);
  model = NULL;
  CHECK_OK(mpt_build_model(ctx, &model), ctx);
  CHECK_OK(mpt_load_checkpoint(model, dir), ctx);
  CHECK(iteration_of(model, ctx) == 2, "resumed at iteration %lld",
        (long long)iteration_of(model, ctx));
  resumed3 = step(model, ctx, NULL, 3);
  resumed4 = step(model, ctx, &batch, 4);
  CHECK(same_loss(loss3, resumed3), "step 3 loss %.17g, resumed %.17g", loss3, resumed3);
  CHECK(same_loss(loss4, resumed4), "step 4 loss %.17g, resumed %.17g", loss4, resumed4);

  /* The context destroys a model the caller left alive. */
  mpt_finalize(ctx);
  snprintf(command, sizeof command, "rm -rf '%s'", dir);
  CHECK(system(command) == 0, "%s failed", command);
}

static void test_training_loop_and_log_levels(void) {
  struct log_counter quiet = {0, 0};
  struct log_counter chatty = {0, 0};
  mpt_context* ctx = init_tiny(NULL, 0, &quiet, MPT_LOG_OFF);
  mpt_model* model = NULL;
  mpt_step_result last = MPT_STEP_RESULT_INIT;

  CHECK_OK(mpt_build_model(ctx, &model), ctx);
  CHECK_OK(mpt_train(model, &last), ctx);
  CHECK(last.iteration == 3 && isfinite(last.lm_loss), "train() ended at %lld, loss %g",
        (long long)last.iteration, last.lm_loss);
  CHECK(quiet.lines == 0, "MPT_LOG_OFF delivered %d lines", quiet.lines);
  mpt_model_destroy(model);
  mpt_finalize(ctx);

  ctx = init_tiny(NULL, 0, &chatty, MPT_LOG_INFO);
  model = NULL;
  CHECK_OK(mpt_build_model(ctx, &model), ctx);
  CHECK_OK(mpt_train(model, NULL), ctx);
  CHECK(chatty.lines >= 3 && chatty.bad == 0, "log_interval 1 over 3 steps gave %d lines",
        chatty.lines);
  mpt_model_destroy(model);
  mpt_finalize(ctx);
}

int main(int argc, char** argv) {
  /* The tests assume one rank: forget any launcher this process was started under. */
  static const char* const kLauncherVars[] = {
      "RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "SLURM_PROCID",
      "SLURM_NTASKS", "SLURM_LOCALID", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE",
      "OMPI_COMM_WORLD_LOCAL_RANK"};
  size_t i;
  (void)argc;
  (void)argv;
  for (i = 0; i < sizeof kLauncherVars / sizeof kLauncherVars[0]; ++i) unsetenv(kLauncherVars[i]);
  test_versions_and_status();
  test_null_and_misuse();
  test_bad_recipe();
  test_launch_place();
  test_overrides_and_config();
  test_old_and_new_callers();
  test_training_and_checkpoint();
  test_training_loop_and_log_levels();
  printf("test_c_api: %d checks passed\n", g_checks);
  return 0;
}
