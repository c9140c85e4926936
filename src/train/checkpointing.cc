#include "train/checkpointing.h"

#include <algorithm>

#include "ckpt/checkpoint.h"
#include "core/error.h"

namespace mpt::train {

namespace {
const char* kExpAvg = "optimizer.exp_avg.";
const char* kExpAvgSq = "optimizer.exp_avg_sq.";

std::string shape_str(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += str(i ? ", " : "", shape[i]);
  return s + "]";
}

bool is_vocab_tensor(const std::string& name) {
  return name == "embedding.word_embeddings.weight" || name == "output_layer.weight";
}

nlohmann::json checkpoint_meta(const config::Recipe& recipe, const CheckpointState& st) {
  return {{"iteration", st.iteration},
          {"world_size", recipe.derived.world_size},
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

std::vector<SliceBox> slice_boxes(const model::ParamInfo& p) {
  std::vector<SliceBox> boxes;
  const size_t n = p.shape.size();
  if (!p.tp.split()) {
    boxes.push_back(SliceBox{std::vector<int64_t>(n, 0), p.shape, 0});
    return boxes;
  }
  const size_t a = static_cast<size_t>(p.tp.axis);
  MPT_CHECK(a == 0 || p.tp.stride == 1, Status::kInternal, "parameter ", p.name,
            ": a strided split along axis ", a, " has no contiguous boxes");
  int64_t inner = 1;
  for (size_t d = a + 1; d < n; ++d) inner *= p.shape[d];
  const int64_t part = p.shape[a] / p.tp.stride, block = p.global_shape[a] / p.tp.stride;
  for (int64_t b = 0; b < p.tp.stride; ++b) {
    SliceBox box{std::vector<int64_t>(n, 0), p.shape, a == 0 ? b * part * inner : 0};
    box.offset[a] = b * block + p.tp.rank * part;
    box.shape[a] = part;
    boxes.push_back(std::move(box));
  }
  return boxes;
}

nlohmann::json write_rank_shard(const std::string& staging_dir, int64_t rank, const config::Recipe& recipe,
                                const std::vector<LocalBuffers>& parts) {
  std::vector<ckpt::TensorSlice> slices;
  for (const LocalBuffers& b : parts) {
    const std::vector<model::ParamInfo>& params = b.registry->params();
    MPT_ASSERT(b.writes.size() == params.size());
    for (size_t i = 0; i < params.size(); ++i) {
      if (!b.writes[i]) continue;
      const model::ParamInfo& p = params[i];
      auto add = [&](const std::string& name, const float* base) {
        for (const SliceBox& box : slice_boxes(p)) {
          ckpt::TensorSlice s;
          s.name = name;
          s.dtype = DType::kF32;
          s.global_shape = p.global_shape;
          s.offset = box.offset;
          s.shape = box.shape;
          s.data = base + p.offset + box.local_first;
          slices.push_back(std::move(s));
        }
      };
      add(p.name, b.params);
      if (recipe.checkpoint.save_optim) {
        add(kExpAvg + p.name, b.exp_avg);
        add(kExpAvgSq + p.name, b.exp_avg_sq);
      }
    }
  }
  return ckpt::write_shard(staging_dir, ckpt::shard_file_name(rank), slices);
}

std::string commit_model_checkpoint(const std::string& save_dir, const config::Recipe& recipe,
                                    const std::string& staging_dir, const std::vector<nlohmann::json>& shard_parts,
                                    const CheckpointState& state) {
  return ckpt::commit_checkpoint(save_dir, state.iteration, staging_dir, shard_parts, checkpoint_meta(recipe, state));
}

CheckpointState load_local_checkpoint(const std::string& dir, const config::Recipe& recipe,
                                      const std::vector<LocalBuffers>& parts) {
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
    return is_vocab_tensor(p.name) && saved.size() == 2 && p.global_shape.size() == 2 &&
           saved[1] == p.global_shape[1] && saved[0] >= vocab && p.global_shape[0] >= vocab;
  };
  // Check every tensor before touching the model, so a bad checkpoint leaves it as it was.
  auto check = [&](const model::ParamInfo& p, const std::string& name) {
    MPT_CHECK(reader.has(name), Status::kCorruptData, reader.directory(), ": tensor '", name, "' is missing");
    const std::vector<int64_t> saved = reader.global_shape(name);
    MPT_CHECK(saved == p.global_shape || real_rows(p, saved), Status::kCorruptData, reader.directory(), ": tensor '",
              name, "' has global shape ", shape_str(saved), " but this model's is ", shape_str(p.global_shape),
              " (the model config differs from the checkpoint's)");
  };
  for (const LocalBuffers& b : parts)
    for (const model::ParamInfo& p : b.registry->params()) {
      check(p, p.name);
      if (want_optim) check(p, kExpAvg + p.name), check(p, kExpAvgSq + p.name);
    }
  // Each box of this rank's slice, read from whichever saved slices cover it.
  auto read_into = [&](const model::ParamInfo& p, const std::string& name, float* base) {
    const bool cut = reader.global_shape(name) != p.global_shape;  // other vocabulary padding
    int64_t inner = 1;
    for (size_t d = 1; d < p.shape.size(); ++d) inner *= p.shape[d];
    for (SliceBox box : slice_boxes(p)) {
      if (cut) box.shape[0] = std::clamp<int64_t>(vocab - box.offset[0], 0, box.shape[0]);
      if (box.shape[0] == 0) continue;
      MPT_ASSERT(!cut || box.local_first % inner == 0);
      reader.read(name, DType::kF32, box.offset, box.shape, base + p.offset + box.local_first);
    }
  };
  for (const LocalBuffers& b : parts)
    for (const model::ParamInfo& p : b.registry->params()) {
      read_into(p, p.name, b.params);
      if (want_optim) {
        read_into(p, kExpAvg + p.name, b.exp_avg);
        read_into(p, kExpAvgSq + p.name, b.exp_avg_sq);
      }
    }
  return st;
}

}  // namespace mpt::train
