// Every shipped recipe loads and validates at the world size its header states, its plan
// fits the GPUs it names, it keeps Bridge's pretraining optimizer settings, and on fewer
// ranks than it needs it is refused naming how many it needs and which keys to change.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "config/recipe.h"
#include "core/error.h"
#include "train/plan.h"

namespace mpt::config {
namespace {

struct Shipped {
  std::string name;
  int64_t gpus;         // the world its header states
  double gpu_memory_gib;
  bool bf16;
};

// Every recipe in recipes/, with the cluster it is for.
const std::vector<Shipped> kRecipes = {
    {"tiny", 1, 80, false},          {"tiny_moe", 1, 80, false},       {"gpt2_124m", 8, 80, false},
    {"llama8b", 8, 80, true},        {"llama70b", 64, 80, true},       {"llama405b", 1024, 140, true},
    {"gpt3_175b", 1024, 80, true},   {"mixtral8x7b", 64, 80, true},    {"mixtral8x22b", 256, 80, true},
};

std::string path(const std::string& name) { return std::string(MPT_SOURCE_DIR) + "/recipes/" + name + ".toml"; }

std::string header(const std::string& name) {
  std::ifstream in(path(name));
  std::string line, text;
  while (std::getline(in, line) && line.starts_with("#")) text += line + "\n";
  return text;
}

std::string error_of(Recipe r, int64_t world) {
  try {
    finalize(r, world);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(Recipes, EveryFileIsListed) {
  std::set<std::string> listed, found;
  for (const Shipped& s : kRecipes) listed.insert(s.name);
  for (const auto& e : std::filesystem::directory_iterator(std::string(MPT_SOURCE_DIR) + "/recipes"))
    if (e.path().extension() == ".toml") found.insert(e.path().stem().string());
  EXPECT_EQ(listed, found);
}

TEST(Recipes, ValidateAndFitAtTheirWorldSize) {
  for (const Shipped& s : kRecipes) {
    SCOPED_TRACE(s.name);
    Recipe r = load_recipe_file(path(s.name));
    ASSERT_EQ(error_of(r, s.gpus), "");
    finalize(r, s.gpus);
    EXPECT_EQ(uses_bf16(r), s.bf16);
    if (s.gpus > 1) {
      EXPECT_NE(header(s.name).find(str(s.gpus, " GPUs")), std::string::npos) << header(s.name);
    }
    train::Hardware hw;
    hw.gpu_memory_bytes = s.gpu_memory_gib * (1 << 30);
    hw.peak_flops = train::default_peak_flops(s.bf16);
    const train::Plan plan = train::make_plan(r, hw);
    EXPECT_TRUE(plan.fits()) << "stage " << plan.peak_stage() << " needs "
                             << plan.stages[static_cast<size_t>(plan.peak_stage())].memory.total() << " bytes";
    EXPECT_GT(plan.time.mfu, 0);
  }
}

TEST(Recipes, ProductionRecipesUseBridgesPretrainingOptimizer) {
  for (const Shipped& s : kRecipes) {
    SCOPED_TRACE(s.name);
    const Recipe r = load_recipe_file(path(s.name));
    EXPECT_EQ(r.optimizer.optimizer, "adam");
    EXPECT_EQ(r.optimizer.adam_beta2, 0.95);
    EXPECT_EQ(r.optimizer.weight_decay, 0.1);
    EXPECT_EQ(r.scheduler.lr_decay_style, "cosine");
    EXPECT_GT(r.scheduler.lr_warmup_iters, 0);
    if (s.bf16) {
      EXPECT_TRUE(r.ddp.use_distributed_optimizer);
      EXPECT_EQ(r.dataset.source, "mock");
    }
  }
}

TEST(Recipes, ModelDimensionsAreTheReleasedOnes) {
  struct Dims {
    std::string name;
    int64_t layers, hidden, ffn, heads, groups, vocab, seq;
  };
  for (const Dims& d : std::vector<Dims>{{"llama8b", 32, 4096, 14336, 32, 8, 128256, 8192},
                                         {"llama70b", 80, 8192, 28672, 64, 8, 128256, 8192},
                                         {"llama405b", 126, 16384, 53248, 128, 8, 128256, 8192},
                                         {"gpt3_175b", 96, 12288, 49152, 96, 96, 50257, 2048},
                                         {"mixtral8x7b", 32, 4096, 14336, 32, 8, 32000, 4096},
                                         {"mixtral8x22b", 56, 6144, 16384, 48, 8, 32768, 4096},
                                         {"gpt2_124m", 12, 768, 3072, 12, 12, 50257, 1024}}) {
    SCOPED_TRACE(d.name);
    Recipe r = load_recipe_file(path(d.name));
    const int64_t world = train::smallest_world(r);
    finalize(r, world);
    EXPECT_EQ(r.model.num_layers, d.layers);
    EXPECT_EQ(r.model.hidden_size, d.hidden);
    EXPECT_EQ(r.model.num_moe_experts ? *r.model.moe_ffn_hidden_size : r.derived.ffn_hidden_size, d.ffn);
    EXPECT_EQ(r.model.num_attention_heads, d.heads);
    EXPECT_EQ(r.derived.num_query_groups, d.groups);
    EXPECT_EQ(r.model.vocab_size, d.vocab);
    EXPECT_EQ(r.model.seq_length, d.seq);
  }
  Recipe llama = load_recipe_file(path("llama8b"));
  EXPECT_EQ(llama.model.rotary_base, 500000);
  Recipe gpt3 = load_recipe_file(path("gpt3_175b"));
  EXPECT_EQ(gpt3.model.position_embedding_type, "learned_absolute");
  EXPECT_EQ(gpt3.model.activation_func, "gelu");
  Recipe mixtral = load_recipe_file(path("mixtral8x7b"));
  EXPECT_EQ(*mixtral.model.num_moe_experts, 8);
  EXPECT_EQ(mixtral.model.moe_router_topk, 2);
}

TEST(Recipes, FewerRanksThanNeededSayHowManyAndWhichKeys) {
  const std::string llama = error_of(load_recipe_file(path("llama70b")), 8);
  EXPECT_NE(llama.find("needs at least 32 ranks"), std::string::npos) << llama;
  EXPECT_NE(llama.find("launch 32"), std::string::npos) << llama;
  for (const char* key : {"model.tensor_model_parallel_size (4)", "model.pipeline_model_parallel_size (4)",
                          "model.context_parallel_size (2)"})
    EXPECT_NE(llama.find(key), std::string::npos) << key << " in " << llama;
  // Not a multiple: the multiples are named.
  const std::string odd = error_of(load_recipe_file(path("llama70b")), 48);
  EXPECT_NE(odd.find("needs a multiple of 32 ranks (32, 64, ...), not 48"), std::string::npos) << odd;
  // The expert layout's product counts too: Mixtral 8x7B needs EP 8 x PP 4 = 32.
  const std::string moe = error_of(load_recipe_file(path("mixtral8x7b")), 16);
  EXPECT_NE(moe.find("model.expert_model_parallel_size: world size 16 is not divisible"), std::string::npos) << moe;
  EXPECT_NE(moe.find("needs at least 32 ranks"), std::string::npos) << moe;
  EXPECT_NE(moe.find("model.expert_model_parallel_size (8)"), std::string::npos) << moe;
}

}  // namespace
}  // namespace mpt::config
