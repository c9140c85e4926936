/* The smallest useful embedding of mptrain in C: load a recipe, override a key, train a few
 * steps on batches this program supplies, save a checkpoint.
 *
 * Usage: train_c RECIPE.toml CHECKPOINT_DIR [section.key=value ...]
 *
 * The batches are byte-level tokens (vocabulary 257, as in recipes/tiny.toml) cut from a
 * text held here; a real host would read its own data the same way. */
#include <stdio.h>
#include <stdlib.h>

#include <mptrain.h>

static const char kText[] =
    "It was the best of times, it was the worst of times, it was the age of wisdom, it was "
    "the age of foolishness, it was the epoch of belief, it was the epoch of incredulity. ";

/* One step's batch: `rows` sequences of `cols` tokens, each starting further into the text. */
static void fill_batch(int32_t* tokens, int64_t rows, int64_t cols, int64_t step, int64_t vocab) {
  const int64_t len = (int64_t)(sizeof kText - 1);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c)
      tokens[r * cols + c] = (int32_t)((unsigned char)kText[(step * 7 + r * 13 + c) % len] % vocab);
}

/* Overrides, builds, trains to train.train_iters and saves; *model is the caller's to
 * destroy. On failure returns the status, with the message in mpt_last_error(ctx). */
static mpt_status train(mpt_context* ctx, mpt_model** model, const char* checkpoint_dir,
                        char** overrides, int num_overrides) {
  /* The host's choice (a short run) first, then the command line's, which may change it. */
  mpt_status s = mpt_set_override(ctx, "train.train_iters=5");
  for (int i = 0; i < num_overrides && s == MPT_OK; ++i) s = mpt_set_override(ctx, overrides[i]);
  if (s == MPT_OK) s = mpt_build_model(ctx, model);
  mpt_model_info info = MPT_MODEL_INFO_INIT;
  if (s == MPT_OK) s = mpt_model_get_info(*model, &info);
  if (s != MPT_OK) return s;

  /* One rank: the whole global batch, each row seq_length + 1 tokens (labels are the shift). */
  const int64_t rows = info.global_batch_size;
  const int64_t cols = info.seq_length + 1;
  int32_t* tokens = malloc((size_t)(rows * cols) * sizeof *tokens);
  if (tokens == NULL) return MPT_ERR_OUT_OF_MEMORY;
  mpt_batch batch = MPT_BATCH_INIT;
  batch.tokens = tokens;
  batch.rows = rows;
  batch.cols = cols;
  for (int64_t step = info.iteration; step < info.train_iters && s == MPT_OK; ++step) {
    fill_batch(tokens, rows, cols, step, info.vocab_size);
    mpt_step_result result = MPT_STEP_RESULT_INIT;
    s = mpt_train_step(*model, &batch, &result);
    if (s == MPT_OK) printf("step %lld: loss %.4f\n", (long long)result.iteration, result.lm_loss);
  }
  free(tokens);
  if (s == MPT_OK) s = mpt_checkpoint(*model, checkpoint_dir);
  if (s == MPT_OK) printf("checkpoint saved in %s\n", checkpoint_dir);
  return s;
}

int main(int argc, char** argv) {
  if (argc < 3) {
    fprintf(stderr, "usage: %s RECIPE.toml CHECKPOINT_DIR [section.key=value ...]\n", argv[0]);
    return 2;
  }
  mpt_init_options opts = MPT_INIT_OPTIONS_INIT;
  opts.recipe_path = argv[1];
  mpt_context* ctx = NULL;
  mpt_model* model = NULL;
  mpt_status s = mpt_init(&opts, &ctx);
  if (s == MPT_OK) s = train(ctx, &model, argv[2], argv + 3, argc - 3);
  if (s != MPT_OK) fprintf(stderr, "mptrain: %s: %s\n", mpt_status_string(s), mpt_last_error(ctx));
  mpt_model_destroy(model);
  mpt_finalize(ctx);
  return s == MPT_OK ? 0 : 1;
}
