// What the C ABI's opaque handles hold, and the one guard every entry point runs its body
// in: mpt::Error becomes its status and a message stored in the context, std::bad_alloc
// becomes MPT_ERR_OUT_OF_MEMORY, anything else MPT_ERR_INTERNAL. Nothing unwinds past it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <exception>
#include <memory>
#include <new>
#include <string>

#include "dist/launch_env.h"
#include "config/recipe.h"
#include "core/error.h"
#include "core/log.h"
#include "mptrain.h"
#include "train/engine.h"

struct mpt_context {
  std::string last_error;  // message of the last failed call on this context or its model
  bool failed = false;     // mpt_init failed; only last_error and finalize work
  std::string init_error;  // "context failed to initialise: ..." when failed
  mpt::config::Recipe recipe;  // loaded and overridden, not finalized
  int64_t overrides_applied = 0;  // numbers the next override's origin
  mpt_log_fn log_fn = nullptr;
  void* log_user_data = nullptr;
  int32_t log_level = MPT_LOG_INFO;
  mpt::dist::LaunchPlace place;
  mpt_model* model = nullptr;  // owned; at most one at a time
};

struct mpt_model {
  mpt_context* ctx = nullptr;
  mpt::config::Recipe recipe;  // finalized; declared before the engine so it outlives it
  std::unique_ptr<mpt::train::Engine> engine;
};

namespace mpt::api {

// Stores a message without throwing; if even that cannot allocate, a short fixed text
// (short enough for the small-string buffer) takes its place.
inline void record_error(mpt_context* ctx, const char* message) noexcept {
  try {
    ctx->last_error = message;
  } catch (...) {
    ctx->last_error.clear();
    ctx->last_error.assign("out of memory");
  }
}

inline mpt_status to_c_status(Status s) noexcept {
  const int v = static_cast<int>(s);
  if (v <= 0 || v > static_cast<int>(Status::kInternal)) return MPT_ERR_INTERNAL;
  return static_cast<mpt_status>(v);
}

// Runs body() (returning nothing) and converts whatever it throws. ctx must be non-NULL.
template <typename Body>
mpt_status guarded(mpt_context* ctx, Body&& body) noexcept {
  try {
    body();
    return MPT_OK;
  } catch (const Error& e) {
    record_error(ctx, e.what());
    return to_c_status(e.status());
  } catch (const std::bad_alloc&) {
    record_error(ctx, "out of memory");
    return MPT_ERR_OUT_OF_MEMORY;
  } catch (const std::exception& e) {
    try {
      record_error(ctx, str("internal error: ", e.what()).c_str());
    } catch (...) {
      record_error(ctx, "internal error");
    }
    return MPT_ERR_INTERNAL;
  } catch (...) {
    record_error(ctx, "internal error: unknown exception");
    return MPT_ERR_INTERNAL;
  }
}

// Throws the failed-context error unless ctx initialised successfully.
inline void require_usable(const mpt_context* ctx) {
  if (ctx->failed) throw Error(Status::kInvalidArgument, ctx->init_error);
}

// True when a struct of `struct_size` bytes holds the whole field at [offset, offset+size).
constexpr bool field_fits(size_t struct_size, size_t offset, size_t size) {
  return offset + size <= struct_size;
}

}  // namespace mpt::api

// Reads opts->field when the caller's struct is large enough to hold it, else `fallback`.
#define MPT_FIELD_OR(ptr, type, field, fallback)                                        \
  (::mpt::api::field_fits((ptr)->struct_size, offsetof(type, field), sizeof((ptr)->field)) \
       ? (ptr)->field                                                                      \
       : (fallback))

// Writes ptr->field = value when the caller's struct is large enough to hold it.
#define MPT_FIELD_SET(ptr, type, field, value)                                             \
  do {                                                                                     \
    if (::mpt::api::field_fits((ptr)->struct_size, offsetof(type, field), sizeof((ptr)->field))) \
      (ptr)->field = (value);                                                              \
  } while (0)
