// `mptrain ckpt-info DIR`: what a checkpoint holds, checked as a load would check it.
//
// The checkpoint is opened with the loader's reader and every file verified first (present,
// size and CRC-32C as index.json records them, safetensors header, every slice index.json
// names) before anything is printed; a damaged checkpoint is the reader's error.
// The training position comes from index.json's meta, the layout from the recipe saved in
// it, resolved for the world that saved it (one shard file per rank).
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "ckpt/checkpoint_index.h"
#include "ckpt/checkpoint_reader.h"
#include "ckpt/file_io.h"
#include "ckpt/json_fields.h"
#include "ckpt/safetensors.h"
#include "cli/commands.h"
#include "config/recipe.h"
#include "core/error.h"

namespace mpt::cli {
namespace {

// index.json is read whole; the reader refuses larger ones the same way.
constexpr uint64_t kMaxIndexBytes = 1ull << 30;
constexpr char kOptimizerPrefix[] = "optimizer.";

using ckpt::CheckpointIndex;

std::string mib(uint64_t bytes) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.2f MiB", static_cast<double>(bytes) / (1024.0 * 1024.0));
  return buf;
}

// A meta field printed as found, or "not recorded" (meta is free-form for checkpoints not
// written by the training engine).
std::string meta_value(const nlohmann::json& meta, const char* key) {
  const auto it = meta.find(key);
  if (it == meta.end() || it->is_null()) return "not recorded";
  if (it->is_boolean()) return it->get<bool>() ? "yes" : "no";
  if (it->is_string()) return it->get<std::string>();
  return it->dump();
}

// The world that saved the checkpoint: meta's "world_size" when recorded, else the number
// of shard files (every rank of a training run writes one, empty or not).
int64_t saving_world(const CheckpointIndex& index) {
  const auto it = index.meta.find("world_size");
  if (it != index.meta.end() && it->is_number_integer() && it->get<int64_t>() > 0) return it->get<int64_t>();
  return static_cast<int64_t>(index.files.size());
}

// Megatron's switch: a distributed optimizer over no_shard means ZeRO-1 ("optim").
std::string sharding_strategy(const config::Recipe& r) {
  const bool dist_opt = r.ddp.use_distributed_optimizer || r.optimizer.use_distributed_optimizer;
  if (dist_opt && r.ddp.data_parallel_sharding_strategy == "no_shard") return "optim";
  return r.ddp.data_parallel_sharding_strategy;
}

// "layout: TP 2, CP 1, PP 1, VPP none, DP 2 (sharding optim), EP 1, ETP 2, world size 4".
void print_layout(const CheckpointIndex& index, const std::string& index_path) {
  const auto recipe_it = index.meta.find("recipe");
  if (recipe_it == index.meta.end() || !recipe_it->is_string()) {
    std::printf("layout: not recorded (meta has no recipe)\n");
    return;
  }
  const int64_t world = saving_world(index);
  config::Recipe r = config::load_recipe_string(recipe_it->get<std::string>(), index_path + " meta.recipe");
  std::string resolve_error;
  try {
    config::finalize(r, world);
  } catch (const Error& e) {
    resolve_error = e.what();
  }
  const auto& m = r.model;
  const std::string vpp = m.virtual_pipeline_model_parallel_size
                              ? std::to_string(*m.virtual_pipeline_model_parallel_size)
                              : std::string("none");
  const int64_t etp = resolve_error.empty() ? r.derived.expert_tensor_parallel_size
                                            : m.expert_tensor_parallel_size.value_or(m.tensor_model_parallel_size);
  const std::string dp = resolve_error.empty() ? std::to_string(r.derived.data_parallel_size) : std::string("unknown");
  std::printf("layout: TP %lld, CP %lld, PP %lld, VPP %s, DP %s (sharding %s), EP %lld, ETP %lld, world size %lld\n",
              static_cast<long long>(m.tensor_model_parallel_size), static_cast<long long>(m.context_parallel_size),
              static_cast<long long>(m.pipeline_model_parallel_size), vpp.c_str(), dp.c_str(),
              sharding_strategy(r).c_str(), static_cast<long long>(m.expert_model_parallel_size),
              static_cast<long long>(etp), static_cast<long long>(world));
  std::printf("sequence parallel: %s\n", m.sequence_parallel ? "yes" : "no");
  if (!resolve_error.empty())
    std::printf("  (the saved recipe does not resolve for world size %lld, so DP is unknown: %s)\n",
                static_cast<long long>(world), resolve_error.c_str());
  std::printf("model: %lld layers, hidden %lld, %lld heads, vocab %lld\n", static_cast<long long>(m.num_layers),
              static_cast<long long>(m.hidden_size), static_cast<long long>(m.num_attention_heads),
              static_cast<long long>(m.vocab_size));
}

void print_tensors(const CheckpointIndex& index) {
  size_t width = 0;
  for (const auto& [name, t] : index.tensors) width = std::max(width, name.size());
  for (const auto& [name, t] : index.tensors) {
    const size_t slices = t.shards.size();
    std::printf("  %-*s  %-4s  %-20s  %zu slice%s\n", static_cast<int>(width), name.c_str(), dtype_name(t.dtype),
                ckpt::format_dims(t.global_shape).c_str(), slices, slices == 1 ? "" : "s");
  }
}

}  // namespace

int run_ckpt_info(const Invocation& inv) {
  // Throws the reader's error (naming the file) for any damage.
  const ckpt::CheckpointReader reader(inv.checkpoint_dir);
  reader.verify();  // the CRC-32C of every file, which a load checks only for the files it reads
  const std::string index_path = ckpt::join_path(reader.directory(), ckpt::kIndexFile);
  const CheckpointIndex index = CheckpointIndex::from_json(
      ckpt::parse_json_strict(ckpt::read_file(index_path, kMaxIndexBytes), index_path), index_path);
  const nlohmann::json& meta = index.meta;

  std::printf("checkpoint: %s\n", reader.directory().c_str());
  std::printf("iteration: %lld\n", static_cast<long long>(index.iteration));
  std::printf("consumed samples: %s\n", meta_value(meta, "consumed_samples").c_str());
  std::printf("optimizer steps: %s\n", meta_value(meta, "optimizer_steps").c_str());
  std::printf("optimizer state: %s\n", meta_value(meta, "has_optimizer_state").c_str());
  print_layout(index, index_path);

  int64_t model_tensors = 0, parameters = 0;
  for (const auto& [name, t] : index.tensors) {
    if (name.starts_with(kOptimizerPrefix)) continue;
    ++model_tensors;
    parameters += ckpt::checked_volume(t.global_shape).value_or(0);
  }
  const int64_t optimizer_tensors = static_cast<int64_t>(index.tensors.size()) - model_tensors;
  std::printf("tensors: %zu (%lld model, %lld optimizer state), %lld parameters\n", index.tensors.size(),
              static_cast<long long>(model_tensors), static_cast<long long>(optimizer_tensors),
              static_cast<long long>(parameters));

  uint64_t total = 0;
  for (const auto& [file, rec] : index.files) total += rec.bytes;
  std::printf("bytes: %llu (%s) in %zu file%s\n", static_cast<unsigned long long>(total), mib(total).c_str(),
              index.files.size(), index.files.size() == 1 ? "" : "s");
  for (const auto& [file, rec] : index.files)
    std::printf("  %s  %llu bytes  crc32c %s\n", file.c_str(), static_cast<unsigned long long>(rec.bytes),
                ckpt::format_crc32c(rec.crc32c).c_str());
  std::printf("verified: every file is present with the size and CRC-32C index.json records\n");
  if (inv.list_tensors) {
    std::printf("tensor list: name, dtype, global shape, slices\n");
    print_tensors(index);
  }
  std::fflush(stdout);
  return 0;
}

}  // namespace mpt::cli
