#include "train/checkpointing.h"

#include <nlohmann/json.hpp>

#include "ckpt/checkpoint.h"
#include "core/error.h"

namespace mpt::train {

namespace {
const char* kExpAvg = "optimizer.exp_avg.";
const char* kExpAvgSq = "optimizer.exp_avg_sq.";

ckpt::TensorSlice slice_of(const model::ParamInfo& p, const std::string& name, const float* base) {
  MPT_ASSERT(!p.tp.split());  // whole tensors only (see ModelBuffers)
  ckpt::TensorSlice s;
  s.name = name;
  s.dtype = DType::kF32;
  s.global_shape = p.global_shape;
  s.offset.assign(p.shape.size(), 0);
  s.shape = p.shape;
  s.data = base + p.offset;
  return s;
}
}  // namespace

bool checkpoint_exists(const std::string& dir) {
  try {
    ckpt::CheckpointReader reader(dir);
    return true;
  } catch (const Error& e) {
    if (e.status() == Status::kIoError) return false;
    throw;  // a corrupt checkpoint is an error, never "absent"
  }
}

std::string save_model_checkpoint(const std::string& save_dir, const config::Recipe& recipe, const ModelBuffers& b,
                                  const CheckpointState& st) {
  std::vector<ckpt::TensorSlice> tensors;
  for (const auto& p : b.registry->params()) {
    tensors.push_back(slice_of(p, p.name, b.params));
    if (recipe.checkpoint.save_optim) {
      tensors.push_back(slice_of(p, kExpAvg + p.name, b.exp_avg));
      tensors.push_back(slice_of(p, kExpAvgSq + p.name, b.exp_avg_sq));
    }
  }
  nlohmann::json meta = {{"iteration", st.iteration},
                         {"consumed_samples", st.consumed_samples},
                         {"consumed_valid_samples", st.consumed_valid_samples},
                         {"optimizer_steps", st.optimizer_steps},
                         {"has_optimizer_state", recipe.checkpoint.save_optim},
                         {"rng", {{"seed", recipe.rng.seed}, {"generator", "philox4x32-10, counter = iteration"}}},
                         {"scheduler", {{"lr", recipe.optimizer.lr.value_or(0.0)},
                                        {"min_lr", recipe.derived.min_lr},
                                        {"lr_warmup_iters", recipe.derived.lr_warmup_iters},
                                        {"lr_decay_iters", recipe.derived.lr_decay_iters},
                                        {"lr_decay_style", recipe.scheduler.lr_decay_style},
                                        {"num_steps", st.optimizer_steps}}},
                         {"recipe", config::to_toml(recipe)}};
  return ckpt::save_checkpoint(save_dir, st.iteration, tensors, meta);
}

CheckpointState load_model_checkpoint(const std::string& dir, const config::Recipe& recipe, const ModelBuffers& b) {
  ckpt::CheckpointReader reader(dir);
  const nlohmann::json& meta = reader.meta();
  CheckpointState st;
  try {
    st.iteration = meta.at("iteration").get<int64_t>();
    st.consumed_samples = meta.at("consumed_samples").get<int64_t>();
    st.optimizer_steps = meta.at("optimizer_steps").get<int64_t>();
    st.consumed_valid_samples = meta.value("consumed_valid_samples", int64_t{0});
  } catch (const nlohmann::json::exception& e) {
    fail(Status::kCorruptData, reader.directory(), "/index.json: meta is missing a field: ", e.what());
  }
  const bool want_optim = recipe.checkpoint.load_optim && !recipe.checkpoint.finetune;
  if (want_optim)
    MPT_CHECK(meta.value("has_optimizer_state", false), Status::kCorruptData, reader.directory(),
              ": checkpoint has no optimizer state (saved with checkpoint.save_optim = false); "
              "set checkpoint.load_optim = false or checkpoint.finetune = true to load weights only");

  // The vocabulary is padded to a multiple of make_vocab_size_divisible_by x TP, so a
  // checkpoint saved at another tensor-parallel size may hold more or fewer padding rows in
  // the vocabulary-sized tensors: those load their real rows [0, vocab_size) and keep this
  // model's padding rows (which no token ever reads).
  const int64_t vocab = recipe.model.vocab_size;
  auto real_rows = [&](const model::ParamInfo& p, const std::vector<int64_t>& saved) {
    const bool vocab_tensor = p.name == "embedding.word_embeddings.weight" || p.name == "output_layer.weight";
    return vocab_tensor && saved.size() == 2 && p.shape.size() == 2 && saved[1] == p.shape[1] && saved[0] >= vocab &&
           p.shape[0] >= vocab;
  };
  // Check every tensor before touching the model, so a bad checkpoint leaves it as it was.
  auto check = [&](const model::ParamInfo& p, const std::string& name) {
    MPT_CHECK(reader.has(name), Status::kCorruptData, reader.directory(), ": tensor '", name, "' is missing");
    const std::vector<int64_t> saved = reader.global_shape(name);
    MPT_CHECK(saved == p.global_shape || real_rows(p, saved), Status::kCorruptData, reader.directory(), ": tensor '",
              name, "' has a different global shape than this model's (model config differs from the checkpoint's)");
  };
  for (const auto& p : b.registry->params()) {
    check(p, p.name);
    if (want_optim) check(p, kExpAvg + p.name), check(p, kExpAvgSq + p.name);
  }
  auto read_into = [&](const model::ParamInfo& p, const std::string& name, float* base) {
    MPT_ASSERT(!p.tp.split());
    std::vector<int64_t> shape = p.shape;
    if (reader.global_shape(name) != p.global_shape) shape[0] = vocab;
    reader.read(name, DType::kF32, std::vector<int64_t>(shape.size(), 0), shape, base + p.offset);
  };
  for (const auto& p : b.registry->params()) {
    read_into(p, p.name, b.params);
    if (want_optim) {
      read_into(p, kExpAvg + p.name, b.exp_avg);
      read_into(p, kExpAvgSq + p.name, b.exp_avg_sq);
    }
  }
  return st;
}

}  // namespace mpt::train
