// The context half of the C ABI: options, loading the recipe, overrides, the resolved
// recipe as TOML, error messages and teardown.
#include <cstddef>
#include <cstring>
#include <memory>
#include <new>
#include <string>

#include "api/handles.h"

namespace {

using mpt::Error;
using mpt::Status;
using mpt::str;

const mpt_init_options kDefaultOptions = MPT_INIT_OPTIONS_INIT;

// The smallest struct_size accepted: struct_size itself and recipe_path.
constexpr size_t kMinOptionsSize = offsetof(mpt_init_options, recipe_path) + sizeof(const char*);

// An int32 option where -1 means "from the environment" and other negatives are misuse.
int64_t env_or_value(int32_t value, const char* field) {
  MPT_CHECK(value >= -1, Status::kInvalidArgument, "mpt_init_options.", field, " = ", value,
            ": use -1 for \"from the environment\" or a non-negative value");
  return value;
}

void apply_one_override(mpt_context* ctx, mpt::config::Recipe& recipe, const char* assignment) {
  const int64_t number = ++ctx->overrides_applied;
  mpt::config::apply_override(recipe, assignment, str("override #", number, " '", assignment, "'"));
}

// Loads the recipe and options into a fresh context; throws on any problem.
void load_context(mpt_context* ctx, const mpt_init_options* opts) {
  const char* path = MPT_FIELD_OR(opts, mpt_init_options, recipe_path, nullptr);
  const char* toml = MPT_FIELD_OR(opts, mpt_init_options, recipe_toml, nullptr);
  const char* const* overrides = MPT_FIELD_OR(opts, mpt_init_options, overrides, nullptr);
  const size_t num_overrides = MPT_FIELD_OR(opts, mpt_init_options, num_overrides, size_t{0});
  MPT_CHECK((path == nullptr) != (toml == nullptr), Status::kInvalidArgument,
            "mpt_init_options: set exactly one of recipe_path and recipe_toml (",
            path ? "both" : "neither", " set)");
  MPT_CHECK(num_overrides == 0 || overrides != nullptr, Status::kInvalidArgument,
            "mpt_init_options: overrides is NULL but num_overrides is ", num_overrides);
  ctx->log_fn = MPT_FIELD_OR(opts, mpt_init_options, log_fn, nullptr);
  ctx->log_user_data = MPT_FIELD_OR(opts, mpt_init_options, log_user_data, nullptr);
  ctx->log_level = MPT_FIELD_OR(opts, mpt_init_options, log_level, kDefaultOptions.log_level);

#define MPT_PLACE_FIELD(field) env_or_value(MPT_FIELD_OR(opts, mpt_init_options, field, -1), #field)
  const int64_t rank = MPT_PLACE_FIELD(rank);
  const int64_t world = MPT_PLACE_FIELD(world_size);
  const int64_t local = MPT_PLACE_FIELD(local_rank);
  const int64_t port = MPT_PLACE_FIELD(master_port);
#undef MPT_PLACE_FIELD
  const char* addr = MPT_FIELD_OR(opts, mpt_init_options, master_addr, nullptr);
  ctx->place = mpt::dist::resolve_launch_place(rank, world, local, addr, port);

  ctx->recipe = path ? mpt::config::load_recipe_file(path) : mpt::config::load_recipe_string(toml);
  for (size_t i = 0; i < num_overrides; ++i) {
    MPT_CHECK(overrides[i] != nullptr, Status::kInvalidArgument, "mpt_init_options: overrides[",
              i, "] is NULL");
    apply_one_override(ctx, ctx->recipe, overrides[i]);
  }
}

}  // namespace

extern "C" {

void mpt_init_options_init(mpt_init_options* opts) noexcept {
  if (opts != nullptr) *opts = kDefaultOptions;
}

mpt_status mpt_init(const mpt_init_options* opts, mpt_context** out_ctx) noexcept {
  if (opts == nullptr || out_ctx == nullptr || opts->struct_size < kMinOptionsSize)
    return MPT_ERR_INVALID_ARGUMENT;

  mpt_context* ctx = nullptr;
  try {
    ctx = new mpt_context();
  } catch (...) {
    *out_ctx = nullptr;
    return MPT_ERR_OUT_OF_MEMORY;
  }
  *out_ctx = ctx;

  const mpt_status status = mpt::api::guarded(ctx, [&] { load_context(ctx, opts); });
  if (status != MPT_OK) {
    // The caller keeps a failed context so that mpt_last_error can say why.
    ctx->failed = true;
    try {
      ctx->init_error = "context failed to initialise: " + ctx->last_error;
    } catch (...) {
      ctx->init_error.assign("context failed to initialise");
    }
  }
  return status;
}

mpt_status mpt_set_override(mpt_context* ctx, const char* assignment) noexcept {
  if (ctx == nullptr) return MPT_ERR_INVALID_ARGUMENT;
  return mpt::api::guarded(ctx, [&] {
    mpt::api::require_usable(ctx);
    MPT_CHECK(assignment != nullptr, Status::kInvalidArgument,
              "mpt_set_override: assignment is NULL");
    MPT_CHECK(ctx->model == nullptr, Status::kInvalidArgument, "mpt_set_override('", assignment,
              "'): the context has a model; overrides must come before mpt_build_model");
    // Applied to a copy so that a rejected override leaves the recipe as it was.
    mpt::config::Recipe changed = ctx->recipe;
    apply_one_override(ctx, changed, assignment);
    ctx->recipe = std::move(changed);
  });
}

mpt_status mpt_config_toml(mpt_context* ctx, char* buf, size_t buf_size,
                           size_t* out_len) noexcept {
  if (ctx == nullptr) return MPT_ERR_INVALID_ARGUMENT;
  return mpt::api::guarded(ctx, [&] {
    mpt::api::require_usable(ctx);
    std::string text;
    if (ctx->model != nullptr) {
      text = mpt::config::to_toml(ctx->model->recipe);
    } else {
      mpt::config::Recipe resolved = ctx->recipe;
      mpt::config::finalize(resolved, ctx->place.world_size);
      text = mpt::config::to_toml(resolved);
    }
    const size_t needed = text.size() + 1;
    if (out_len != nullptr) *out_len = needed;
    MPT_CHECK(buf != nullptr && buf_size >= needed, Status::kInvalidArgument,
              "buffer too small: need ", needed, " bytes");
    std::memcpy(buf, text.c_str(), needed);
  });
}

const char* mpt_last_error(const mpt_context* ctx) noexcept {
  if (ctx == nullptr) return "invalid context (NULL)";
  return ctx->last_error.c_str();
}

void mpt_finalize(mpt_context* ctx) noexcept {
  if (ctx == nullptr) return;
  mpt_model_destroy(ctx->model);
  delete ctx;
}

}  // extern "C"
