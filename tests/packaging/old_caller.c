/* A caller compiled against an older mptrain.h, whose option and result structs were shorter:
 * each struct here is a copy of the current one cut after a field, placed so that it ends
 * exactly where readable memory ends. The library must accept it (struct_size says how much
 * there is), read and write nothing past it (that would fault) and give the missing fields
 * their defaults: log level INFO, the place from the environment (one rank here).
 * Usage: old_caller RECIPE.toml [section.key=value ...] */
#define _DEFAULT_SOURCE

#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <mptrain.h>

/* mpt_init_options as it was before log_level and the place fields were appended. */
typedef struct old_init_options {
  size_t struct_size;
  const char* recipe_path;
  const char* recipe_toml;
  const char* const* overrides;
  size_t num_overrides;
  mpt_log_fn log_fn;
  void* log_user_data;
} old_init_options;

/* mpt_step_result with only its first two values. */
typedef struct old_step_result {
  size_t struct_size;
  int64_t iteration;
  double lm_loss;
} old_step_result;

/* mpt_model_info up to the batch sizes. */
typedef struct old_model_info {
  size_t struct_size;
  int64_t num_parameters;
  int64_t iteration;
  int64_t train_iters;
  int64_t seq_length;
  int64_t micro_batch_size;
  int64_t global_batch_size;
} old_model_info;

/* The old structs are prefixes of the current ones. */
_Static_assert(offsetof(old_init_options, log_user_data) == offsetof(mpt_init_options, log_user_data), "prefix");
_Static_assert(sizeof(old_init_options) < sizeof(mpt_init_options), "shorter");
_Static_assert(offsetof(old_step_result, lm_loss) == offsetof(mpt_step_result, lm_loss), "prefix");
_Static_assert(offsetof(old_model_info, global_batch_size) == offsetof(mpt_model_info, global_batch_size), "prefix");

#define CHECK(cond, ...)                                                        \
  do {                                                                          \
    if (!(cond)) {                                                              \
      fprintf(stderr, "old_caller.c:%d: check failed: %s\n  ", __LINE__, #cond); \
      fprintf(stderr, __VA_ARGS__);                                             \
      fprintf(stderr, "\n");                                                    \
      exit(1);                                                                  \
    }                                                                           \
  } while (0)

#define CHECK_OK(call, ctx)                                                              \
  do {                                                                                   \
    mpt_status s_ = (call);                                                              \
    CHECK(s_ == MPT_OK, "%s: %s: %s", #call, mpt_status_string(s_), mpt_last_error(ctx)); \
  } while (0)

/* `size` bytes that end where a page with no access begins, filled with 0x7f. */
static void* at_end_of_readable_memory(size_t size) {
  const size_t page = (size_t)sysconf(_SC_PAGESIZE);
  char* pages = mmap(NULL, 2 * page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  CHECK(pages != MAP_FAILED, "mmap");
  CHECK(mprotect(pages + page, page, PROT_NONE) == 0, "mprotect");
  memset(pages + page - size, 0x7f, size);
  return pages + page - size;
}

struct log_levels {
  int info, other;
};

static int count_levels(void* user_data, int32_t level, const char* message) {
  struct log_levels* seen = user_data;
  (void)message;
  if (level == MPT_LOG_INFO) seen->info++;
  else seen->other++;
  return 0;
}

int main(int argc, char** argv) {
  CHECK(argc >= 2, "usage: old_caller RECIPE.toml [section.key=value ...]");
  struct log_levels seen = {0, 0};
  old_init_options* opts = at_end_of_readable_memory(sizeof *opts);
  opts->struct_size = sizeof *opts;
  opts->recipe_path = argv[1];
  opts->recipe_toml = NULL;
  opts->overrides = (const char* const*)(argv + 2);
  opts->num_overrides = (size_t)(argc - 2);
  opts->log_fn = count_levels;
  opts->log_user_data = &seen;

  mpt_context* ctx = NULL;
  CHECK_OK(mpt_init((const mpt_init_options*)opts, &ctx), ctx);
  mpt_model* model = NULL;
  CHECK_OK(mpt_build_model(ctx, &model), ctx);
  /* INFO lines arrive: the missing log_level took its default. */
  CHECK(seen.info > 0 && seen.other == 0, "%d INFO lines and %d others while building", seen.info,
        seen.other);

  old_model_info* info = at_end_of_readable_memory(sizeof *info);
  info->struct_size = sizeof *info;
  CHECK_OK(mpt_model_get_info(model, (mpt_model_info*)info), ctx);
  CHECK(info->iteration == 0 && info->num_parameters > 0 && info->global_batch_size > 0,
        "old info: iteration %lld, %lld parameters, global batch %lld", (long long)info->iteration,
        (long long)info->num_parameters, (long long)info->global_batch_size);

  old_step_result* result = at_end_of_readable_memory(sizeof *result);
  for (int64_t step = 1; step <= 2; ++step) {
    result->struct_size = sizeof *result;
    CHECK_OK(mpt_train_step(model, NULL, (mpt_step_result*)result), ctx);
    CHECK(result->iteration == step && isfinite(result->lm_loss) && result->lm_loss > 0,
          "step %lld: iteration %lld, loss %g", (long long)step, (long long)result->iteration,
          result->lm_loss);
  }

  /* A struct too short to hold even recipe_path is refused, and *out_ctx left alone. */
  mpt_context* untouched = (mpt_context*)&seen;
  opts->struct_size = sizeof(size_t);
  CHECK(mpt_init((const mpt_init_options*)opts, &untouched) == MPT_ERR_INVALID_ARGUMENT &&
            untouched == (mpt_context*)&seen,
        "a struct_size of %zu was accepted", sizeof(size_t));

  mpt_model_destroy(model);
  mpt_finalize(ctx);
  printf("old_caller: ok (options %zu of %zu bytes, result %zu of %zu, info %zu of %zu)\n",
         sizeof(old_init_options), sizeof(mpt_init_options), sizeof(old_step_result),
         sizeof(mpt_step_result), sizeof(old_model_info), sizeof(mpt_model_info));
  return 0;
}
