// The public header from C++: it compiles cleanly (warnings are errors), its initializer
// macros work as C++ aggregates, and the functions are noexcept with C linkage.
#include <mptrain.h>

#include <cstdio>
#include <cstring>
#include <type_traits>

static_assert(noexcept(mpt_version()), "the C ABI never throws");
static_assert(noexcept(mpt_init(nullptr, nullptr)), "the C ABI never throws");
static_assert(std::is_standard_layout<mpt_init_options>::value, "plain data");
static_assert(std::is_trivially_copyable<mpt_step_result>::value, "plain data");

int main() {
  mpt_init_options opts = MPT_INIT_OPTIONS_INIT;
  mpt_init_options filled;
  std::memset(&filled, 0, sizeof filled);
  mpt_init_options_init(&filled);
  mpt_batch batch = MPT_BATCH_INIT;
  mpt_step_result result = MPT_STEP_RESULT_INIT;
  mpt_model_info info = MPT_MODEL_INFO_INIT;
  if (opts.struct_size != sizeof opts || filled.log_level != opts.log_level || filled.rank != opts.rank ||
      batch.struct_size != sizeof batch || result.struct_size != sizeof result || info.struct_size != sizeof info) {
    std::fprintf(stderr, "header_cxx: the initializers disagree\n");
    return 1;
  }
  if (mpt_version_number() / 100 != MPT_VERSION_NUMBER / 100) {
    std::fprintf(stderr, "header_cxx: library %s, header %d\n", mpt_version(), MPT_VERSION_NUMBER);
    return 1;
  }
  mpt_context* ctx = nullptr;
  if (mpt_init(&opts, &ctx) != MPT_ERR_INVALID_ARGUMENT) {  // neither recipe_path nor recipe_toml
    std::fprintf(stderr, "header_cxx: options without a recipe accepted\n");
    return 1;
  }
  std::printf("header_cxx: ok (%s: %s)\n", mpt_status_string(MPT_ERR_INVALID_ARGUMENT), mpt_last_error(ctx));
  mpt_finalize(ctx);
  return 0;
}
