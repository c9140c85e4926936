// The model half of the C ABI: building the engine, training steps, checkpoints and sizes.
// A call the caller got wrong is rejected before anything is trained.
#include <cstddef>
#include <memory>
#include <string>

#include "api/handles.h"

namespace {

using mpt::Status;

// Log lines go to the context's callback, or to stderr without one; the level filter is
// the context's. A callback that throws is ignored rather than unwinding into the engine.
mpt::Logger make_logger(const mpt_context* ctx) {
  if (ctx->log_level < MPT_LOG_ERROR) return mpt::Logger(mpt::Logger::Sink());  // MPT_LOG_OFF
  const auto level = static_cast<mpt::LogLevel>(ctx->log_level > MPT_LOG_DEBUG ? MPT_LOG_DEBUG
                                                                               : ctx->log_level);
  if (ctx->log_fn == nullptr) {
    mpt::Logger to_stderr;
    to_stderr.set_level(level);
    return to_stderr;
  }
  const mpt_log_fn fn = ctx->log_fn;
  void* const user_data = ctx->log_user_data;
  return mpt::Logger(
      [fn, user_data](mpt::LogLevel l, const std::string& message) {
        try {
          fn(user_data, static_cast<int32_t>(l), message.c_str());
        } catch (...) {
        }
      },
      level);
}

// Converts a caller's batch. Its shape and ids are checked by the engine against the
// recipe, before anything is trained.
mpt::train::HostBatch host_batch(const mpt_batch* b) {
  constexpr size_t kV1Size = offsetof(mpt_batch, cols) + sizeof(int64_t);
  MPT_CHECK(b->struct_size >= kV1Size, Status::kInvalidArgument, "mpt_batch.struct_size = ",
            b->struct_size, " is smaller than the ", kV1Size, " bytes every batch needs");
  MPT_CHECK(b->tokens != nullptr, Status::kInvalidArgument, "mpt_batch.tokens is NULL");
  mpt::train::HostBatch hb;
  hb.tokens = b->tokens;
  hb.labels = b->labels;
  hb.loss_mask = b->loss_mask;
  hb.rows = b->rows;
  hb.cols = b->cols;
  return hb;
}

void check_out_struct(const mpt_step_result* out) {
  MPT_CHECK(out == nullptr || out->struct_size > 0, Status::kInvalidArgument,
            "mpt_step_result.struct_size is 0; start from MPT_STEP_RESULT_INIT");
}

void fill(mpt_step_result* out, const mpt::train::StepResult& s) {
  if (out == nullptr) return;
  MPT_FIELD_SET(out, mpt_step_result, iteration, s.iteration);
  MPT_FIELD_SET(out, mpt_step_result, lm_loss, s.lm_loss);
  MPT_FIELD_SET(out, mpt_step_result, grad_norm, s.grad_norm);
  MPT_FIELD_SET(out, mpt_step_result, learning_rate, s.lr);
  MPT_FIELD_SET(out, mpt_step_result, tokens, s.tokens);
  MPT_FIELD_SET(out, mpt_step_result, step_time_s, s.step_time_s);
  MPT_FIELD_SET(out, mpt_step_result, consumed_samples, s.consumed_samples);
}

}  // namespace

extern "C" {

mpt_status mpt_build_model(mpt_context* ctx, mpt_model** out_model) noexcept {
  if (ctx == nullptr) return MPT_ERR_INVALID_ARGUMENT;
  return mpt::api::guarded(ctx, [&] {
    mpt::api::require_usable(ctx);
    MPT_CHECK(out_model != nullptr, Status::kInvalidArgument, "mpt_build_model: out_model is NULL");
    MPT_CHECK(ctx->model == nullptr, Status::kInvalidArgument,
              "mpt_build_model: the context already has a model; destroy it first");
    auto model = std::make_unique<mpt_model>();
    model->ctx = ctx;
    model->recipe = ctx->recipe;
    mpt::config::finalize(model->recipe, ctx->place.world_size);
    model->engine = std::make_unique<mpt::train::Engine>(model->recipe, make_logger(ctx), ctx->place);
    ctx->model = model.release();
    *out_model = ctx->model;
  });
}

void mpt_model_destroy(mpt_model* model) noexcept {
  if (model == nullptr) return;
  if (model->ctx != nullptr && model->ctx->model == model) model->ctx->model = nullptr;
  delete model;
}

const char* mpt_model_last_error(const mpt_model* model) noexcept {
  if (model == nullptr) return "invalid model (NULL)";
  return mpt_last_error(model->ctx);
}

mpt_status mpt_train_step(mpt_model* model, const mpt_batch* batch, mpt_step_result* out) noexcept {
  if (model == nullptr) return MPT_ERR_INVALID_ARGUMENT;
  return mpt::api::guarded(model->ctx, [&] {
    check_out_struct(out);
    mpt::train::StepResult result;
    if (batch != nullptr) {
      const mpt::train::HostBatch hb = host_batch(batch);
      result = model->engine->train_step(&hb);
    } else {
      result = model->engine->train_step(nullptr);
    }
    fill(out, result);
  });
}

mpt_status mpt_train(mpt_model* model, mpt_step_result* last) noexcept {
  if (model == nullptr) return MPT_ERR_INVALID_ARGUMENT;
  return mpt::api::guarded(model->ctx, [&] {
    check_out_struct(last);
    fill(last, model->engine->train());
  });
}

mpt_status mpt_checkpoint(mpt_model* model, const char* dir) noexcept {
  if (model == nullptr) return MPT_ERR_INVALID_ARGUMENT;
  return mpt::api::guarded(model->ctx, [&] {
    std::string save_dir;
    if (dir != nullptr) {
      save_dir = dir;
    } else {
      MPT_CHECK(model->recipe.checkpoint.save.has_value(), Status::kInvalidArgument,
                "mpt_checkpoint: dir is NULL and the recipe sets no checkpoint.save");
      save_dir = *model->recipe.checkpoint.save;
    }
    MPT_CHECK(!save_dir.empty(), Status::kInvalidArgument, "mpt_checkpoint: empty directory name");
    model->engine->save_checkpoint(save_dir);
  });
}

mpt_status mpt_load_checkpoint(mpt_model* model, const char* dir) noexcept {
  if (model == nullptr) return MPT_ERR_INVALID_ARGUMENT;
  return mpt::api::guarded(model->ctx, [&] {
    MPT_CHECK(dir != nullptr && *dir != '\0', Status::kInvalidArgument,
              "mpt_load_checkpoint: dir is ", dir == nullptr ? "NULL" : "empty");
    model->engine->load_checkpoint(dir);
  });
}

mpt_status mpt_model_get_info(const mpt_model* model, mpt_model_info* info) noexcept {
  if (model == nullptr) return MPT_ERR_INVALID_ARGUMENT;
  return mpt::api::guarded(model->ctx, [&] {
    MPT_CHECK(info != nullptr, Status::kInvalidArgument, "mpt_model_get_info: info is NULL");
    MPT_CHECK(info->struct_size > 0, Status::kInvalidArgument,
              "mpt_model_info.struct_size is 0; start from MPT_MODEL_INFO_INIT");
    const mpt::train::Engine& engine = *model->engine;
    const mpt::config::Recipe& r = model->recipe;
    const mpt::train::MemoryReport memory = engine.memory();
    const int64_t num_parameters = engine.num_parameters();
    const int64_t iteration = engine.iteration();
    MPT_FIELD_SET(info, mpt_model_info, num_parameters, num_parameters);
    MPT_FIELD_SET(info, mpt_model_info, iteration, iteration);
    MPT_FIELD_SET(info, mpt_model_info, train_iters, r.train.train_iters.value_or(0));
    MPT_FIELD_SET(info, mpt_model_info, seq_length, r.model.seq_length);
    MPT_FIELD_SET(info, mpt_model_info, micro_batch_size, r.train.micro_batch_size.value_or(0));
    MPT_FIELD_SET(info, mpt_model_info, global_batch_size, r.train.global_batch_size.value_or(0));
    MPT_FIELD_SET(info, mpt_model_info, vocab_size, r.model.vocab_size);
    MPT_FIELD_SET(info, mpt_model_info, params_bytes, memory.params_bytes);
    MPT_FIELD_SET(info, mpt_model_info, grads_bytes, memory.grads_bytes);
    MPT_FIELD_SET(info, mpt_model_info, optimizer_bytes, memory.optimizer_bytes);
    MPT_FIELD_SET(info, mpt_model_info, activations_peak_bytes, memory.activations_peak_bytes);
    MPT_FIELD_SET(info, mpt_model_info, expert_params_bytes, memory.expert_params_bytes);
  });
}

}  // extern "C"
