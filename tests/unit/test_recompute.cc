// Activation recompute (model.recompute_granularity / method / num_layers / modules): a
// recomputed forward draws the same dropout masks (they are keyed by position), so losses,
// gradient norms, gradients and parameters are the same bits as without recompute, at every
// layout and in bf16; the activation memory drops by exactly what the scheme stops keeping.
#include <gtest/gtest.h>

#include <cstdlib>
#include <string>
#include <utility>
#include <vector>

#include "config/recipe.h"
#include "core/error.h"
#include "engine_threads.h"
#include "model/gpt_dims.h"

namespace mpt::train {
namespace {

using testing::RankRun;

std::vector<std::string> plus(std::vector<std::string> a, const std::vector<std::string>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

const std::vector<std::string> kDropout = {"model.hidden_dropout=0.1", "model.attention_dropout=0.1"};
// tiny_moe.toml's MoE settings on tiny.toml.
const std::vector<std::string> kMoe = {"model.num_moe_experts=8", "model.moe_ffn_hidden_size=176",
                                       "model.moe_aux_loss_coeff=1e-2", "model.moe_z_loss_coeff=1e-3",
                                       "model.moe_shared_expert_intermediate_size=176"};

std::vector<std::string> selective(const std::string& modules) {
  return {"model.recompute_granularity=selective", "model.recompute_modules=" + modules};
}
std::vector<std::string> full(const std::string& method, int layers) {
  return {"model.recompute_granularity=full", "model.recompute_method=" + method,
          "model.recompute_num_layers=" + std::to_string(layers)};
}

// Gradients compared after step 1: every kind of parameter, in every layer.
std::vector<std::string> grad_names(bool moe) {
  std::vector<std::string> names = {"embedding.word_embeddings.weight", "decoder.final_layernorm.weight",
                                    "output_layer.weight"};
  for (int l = 0; l < 4; ++l) {
    const std::string pre = "decoder.layers." + std::to_string(l) + ".";
    for (const char* n : {"input_layernorm.weight", "self_attention.linear_qkv.weight",
                          "self_attention.linear_proj.weight", "pre_mlp_layernorm.weight"})
      names.push_back(pre + n);
    if (!moe) {
      names.push_back(pre + "mlp.linear_fc1.weight");
      names.push_back(pre + "mlp.linear_fc2.weight");
      continue;
    }
    for (const char* n : {"mlp.router.weight", "mlp.experts.linear_fc1.weight0", "mlp.experts.linear_fc2.weight7",
                          "mlp.shared_experts.linear_fc1.weight", "mlp.shared_experts.linear_fc2.weight"})
      names.push_back(pre + n);
  }
  return names;
}

std::vector<RankRun> run(int64_t world, const std::vector<std::string>& overrides, bool moe) {
  return testing::run(world, overrides, 3, grad_names(moe));
}

// Every rank of `got` and `want`: the same bits.
void expect_identical(const std::vector<RankRun>& got, const std::vector<RankRun>& want, const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  for (size_t k = 0; k < got.size(); ++k) {
    EXPECT_EQ(got[k].losses, want[k].losses) << what << " rank " << k;
    EXPECT_EQ(got[k].norms, want[k].norms) << what << " rank " << k;
    EXPECT_EQ(got[k].params, want[k].params) << what << " rank " << k;
    ASSERT_EQ(got[k].grads_step1.size(), want[k].grads_step1.size()) << what;
    for (const auto& [name, g] : want[k].grads_step1)
      EXPECT_EQ(got[k].grads_step1.at(name), g) << what << " rank " << k << ": gradient of " << name;
  }
}

// `schemes` at one layout (`world` ranks, `layout` overrides) against the same layout
// without recompute.
void expect_recompute_identical(int64_t world, const std::vector<std::string>& layout,
                                const std::vector<std::vector<std::string>>& schemes, bool moe,
                                const std::string& what) {
  const std::vector<RankRun> want = run(world, layout, moe);
  for (const auto& scheme : schemes) {
    std::string name = what;
    for (const std::string& s : scheme) name += " " + s;
    expect_identical(run(world, plus(layout, scheme), moe), want, name);
  }
}

// The runs below draw dropout masks: a recomputed forward must draw the same ones.
TEST(Recompute, DropoutIsOnInTheseRuns) {
  const RankRun with = run(1, kDropout, false).front();
  const RankRun without = run(1, {}, false).front();
  EXPECT_NE(with.losses, without.losses);
}

TEST(Recompute, EverySchemeIsBitIdenticalOnOneRank) {
  expect_recompute_identical(1, kDropout,
                             {selective("[\"layernorm\"]"), selective("[\"mlp\"]"),
                              selective("[\"core_attn\",\"layernorm\",\"mlp\"]"), full("uniform", 1),
                              full("uniform", 2), full("block", 1)},
                             false, "one rank");
}

TEST(Recompute, MixtureOfExpertsModulesAreBitIdentical) {
  expect_recompute_identical(1, plus(kDropout, kMoe),
                             {selective("[\"moe_act\"]"), selective("[\"shared_experts\"]"), selective("[\"moe\"]")},
                             true, "MoE one rank");
}

TEST(Recompute, ParallelLayoutsAreBitIdentical) {
  expect_recompute_identical(2, plus(kDropout, {"model.tensor_model_parallel_size=2", "model.sequence_parallel=true"}),
                             {selective("[\"layernorm\",\"mlp\"]"), full("uniform", 2)}, false, "TP2+SP");
  // Two layers per virtual stage: the block covers each chunk's first.
  expect_recompute_identical(2,
                             plus(kDropout, {"model.pipeline_model_parallel_size=2",
                                             "model.virtual_pipeline_model_parallel_size=2", "model.num_layers=8"}),
                             {full("block", 1)}, false, "PP2 x VPP2");
  expect_recompute_identical(2, plus(kDropout, {"model.context_parallel_size=2"}), {full("uniform", 2)}, false,
                             "CP2 ring");
  // Parameters gathered layer by layer: the recomputed forward gathers them again.
  expect_recompute_identical(2, plus(kDropout, {"ddp.data_parallel_sharding_strategy=optim_grads_params"}),
                             {full("uniform", 2)}, false, "FSDP DP2");
}

TEST(Recompute, ExpertParallelIsBitIdentical) {
  expect_recompute_identical(2, plus(kDropout, plus(kMoe, {"model.expert_model_parallel_size=2",
                                                           "model.moe_token_dispatcher_type=alltoall"})),
                             {selective("[\"moe\"]"), full("uniform", 1)}, true, "EP2 alltoall");
  expect_recompute_identical(2, plus(kDropout, plus(kMoe, {"model.expert_model_parallel_size=2"})),
                             {selective("[\"moe_act\",\"shared_experts\"]")}, true, "EP2 allgather");
}

TEST(Recompute, Bf16IsBitIdentical) {
  expect_recompute_identical(1, plus(kDropout, {"mixed_precision=bf16_mixed"}),
                             {selective("[\"layernorm\",\"mlp\"]"), full("uniform", 2)}, false, "bf16");
}

// The device code path (MPT_BACKEND=cpu-device faults on any host access to backend memory).
TEST(Recompute, DeviceMemoryDisciplineHolds) {
  const std::vector<RankRun> want = run(1, kDropout, false);
  ::setenv("MPT_BACKEND", "cpu-device", 1);
  std::vector<RankRun> got;
  try {
    got = run(1, plus(kDropout, full("uniform", 2)), false);
  } catch (...) {
    ::unsetenv("MPT_BACKEND");
    throw;
  }
  ::unsetenv("MPT_BACKEND");
  expect_identical(got, want, "cpu-device, full uniform 2");
}

// tiny.toml at one rank in fp32, by hand: T = R = seq 128 x micro-batch 4 = 512 rows, hidden
// 128, 8 heads and 4 groups of 16 channels, gated ffn 352 (fc1 704), padded vocabulary 384,
// RMSNorm (rstd only), 4 layers. Every tensor is a multiple of the arena's 64 bytes.
constexpr int64_t kT = 512, kH = 128, kQ = 8 * 16, kKV = 4 * 16, kFfn = 352, kFc1 = 704, kVocab = 384;
constexpr int64_t kResidual = kT * kH * 4;
constexpr int64_t kNorms = 2 * (kT * kH + kT) * 4;                // norm1/norm2 outputs and rstd
constexpr int64_t kAttention = (2 * kT * kQ + 2 * kT * kKV + kT * 8 + kT * kH) * 4;  // q, k, v, out, lse, resid_mid
constexpr int64_t kMlp = (kT * kFc1 + kT * kFfn) * 4;             // fc1 and activation outputs
constexpr int64_t kLayer = kNorms + kAttention + kMlp;            // one layer's saved tensors, input apart
constexpr int64_t kSlot = 3 * kT * 4 + 5 * kResidual + 4 * kLayer  // inputs, residual stream, layers
                          + kT * kH * 4;                           // d(last layer's output)
// The loss's working set: the final norm's output and rstd, one row block of logits (the
// whole micro-batch: 512 x 384 fp32 is far below the block budget), its row max and loss,
// sums of exponentials and target logits, the micro-batch's per-token loss and gradient
// weights, and the loss accumulator (one float, rounded up to the arena's 64 bytes).
constexpr int64_t kHead = (kT * kH + kT + kT * kVocab + 2 * kT + 2 * kT + 2 * kT) * 4 + 64;
constexpr int64_t kWorking = kT * 4 + kHead +
                             (kT * (kQ + 2 * kKV) + 2 * kT * kH + kT * kFfn + kT * kFc1 + 2 * kT * kQ + 2 * kT * kKV +
                              kT * kH) * 4;  // positions, the loss's, qkv .. dv, d(residual)
constexpr int64_t kNone = kSlot + kWorking;

int64_t activations(const std::vector<std::string>& overrides) {
  return testing::run(1, overrides, 1).front().memory.activations_peak_bytes;
}

TEST(Recompute, ActivationMemoryDropsByWhatIsNotKept) {
  const int64_t none = activations({});
  ASSERT_EQ(none, kNone) << "the hand count of tiny's activations";
  auto expect_bytes = [&](const std::vector<std::string>& scheme, int64_t want, const std::string& what) {
    const int64_t got = activations(scheme);
    EXPECT_EQ(got, want) << what;
    EXPECT_DOUBLE_EQ(static_cast<double>(got) / static_cast<double>(none),
                     static_cast<double>(want) / static_cast<double>(kNone))
        << what;
    EXPECT_LT(got, none) << what;
  };
  // Selective: each layer drops the module's tensors; one layer's worth is shared.
  expect_bytes(selective("[\"layernorm\"]"), kNone - 4 * kNorms + kNorms, "layernorm");
  expect_bytes(selective("[\"mlp\"]"), kNone - 4 * kMlp + kMlp, "mlp");
  expect_bytes(selective("[\"layernorm\",\"mlp\"]"), kNone - 4 * (kNorms + kMlp) + kNorms + kMlp, "layernorm+mlp");
  EXPECT_EQ(activations(selective("[\"core_attn\"]")), none) << "core_attn: nothing more to drop";
  // Full uniform: only each group's input is kept; one group is regenerated at a time.
  expect_bytes(full("uniform", 1), kNone - 4 * kLayer + kLayer, "uniform 1");
  expect_bytes(full("uniform", 2), kNone - 4 * kLayer - 2 * kResidual + (kResidual + 2 * kLayer), "uniform 2");
  // Full block: the first layers keep only their input; one layer is regenerated at a time.
  expect_bytes(full("block", 2), kNone - 2 * kLayer + kLayer, "block 2");
  // With one slot in flight, one group of all the layers, or a block of one layer, drops
  // what the shared region then holds: nothing is saved (SlotsShareOneRegion has two).
  EXPECT_EQ(activations(full("uniform", 4)), none);
  EXPECT_EQ(activations(full("block", 1)), none);
}

TEST(Recompute, SlotsShareOneRegion) {
  // Stage 0 of PP2 holds layers 0-1 and keeps 2 micro-batches: block 1 drops layer 0's
  // tensors from both and adds one layer's region.
  const std::vector<std::string> pp = {"model.pipeline_model_parallel_size=2"};
  const int64_t none = testing::run(2, pp, 1).front().memory.activations_peak_bytes;
  const int64_t block = testing::run(2, plus(pp, full("block", 1)), 1).front().memory.activations_peak_bytes;
  EXPECT_EQ(block, none - 2 * kLayer + kLayer);
}

model::Recompute resolved(const std::vector<std::string>& overrides) {
  config::Recipe r = testing::tiny(overrides);
  config::finalize(r, 1);
  return model::make_dims(r).recompute;
}

TEST(Recompute, SettingsResolveAsMegatronReadsThem) {
  EXPECT_EQ(resolved({}).describe(), "none");
  // Selective without modules is Megatron's default, ["core_attn"], which drops nothing.
  const model::Recompute attn = resolved({"model.recompute_granularity=selective"});
  EXPECT_EQ(attn.describe(), "selective (core_attn)");
  EXPECT_FALSE(attn.layernorm || attn.mlp || attn.moe || attn.moe_act || attn.shared_experts);
  EXPECT_EQ(resolved(selective("[\"mlp\",\"layernorm\"]")).describe(), "selective (layernorm, mlp)");
  // Uniform groups of 2 over a chunk of 5 layers: [0, 2), [2, 4), [4, 5).
  const model::Recompute uniform = resolved(full("uniform", 2));
  EXPECT_EQ(uniform.describe(), "full (uniform, groups of 2 layers)");
  const std::vector<std::pair<int64_t, int64_t>> groups = {{0, 2}, {0, 2}, {2, 4}, {2, 4}, {4, 5}};
  for (int64_t i = 0; i < 5; ++i) {
    const model::Recompute::Group g = uniform.group(i, 5);
    EXPECT_EQ(std::make_pair(g.begin, g.end), groups[static_cast<size_t>(i)]) << "layer " << i;
  }
  // Block: the first layers, one at a time; the rest keep their activations.
  const model::Recompute block = resolved(full("block", 2));
  EXPECT_EQ(block.describe(), "full (block, the first 2 layers of each chunk)");
  EXPECT_EQ(block.group(1, 4).begin, 1);
  EXPECT_EQ(block.group(1, 4).end, 2);
  EXPECT_FALSE(block.group(2, 4).recomputed());
}

std::string problems(const std::vector<std::string>& overrides) {
  config::Recipe r = testing::tiny(overrides);
  try {
    config::finalize(r, 1);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

bool has(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

TEST(Recompute, BadSettingsAreRefusedNamingTheKey) {
  std::string msg = problems({"model.recompute_granularity=selective", "model.recompute_modules=[\"attn\"]"});
  EXPECT_TRUE(has(msg, "model.recompute_modules: must be one of \"core_attn\"")) << msg;
  EXPECT_TRUE(has(msg, "\"mlp\"")) << msg;
  msg = problems({"model.recompute_granularity=full", "model.recompute_num_layers=1"});
  EXPECT_TRUE(has(msg, "model.recompute_granularity: \"full\" needs model.recompute_method")) << msg;
  msg = problems(plus({"model.pipeline_model_parallel_size=2"}, full("block", 3)));
  EXPECT_TRUE(has(msg, "model.recompute_num_layers: must be <= the layers of a model chunk (2")) << msg;
  msg = problems(full("uniform", 5));
  EXPECT_TRUE(has(msg, "model.recompute_num_layers: must be <= model.num_layers (4), got 5")) << msg;
  msg = problems(selective("[\"moe_act\"]"));
  EXPECT_TRUE(has(msg, "model.recompute_modules: \"moe_act\" needs model.num_moe_experts")) << msg;
  msg = problems(selective("[\"mla_up_proj\"]"));
  EXPECT_TRUE(has(msg, "model.recompute_modules: recomputing \"mla_up_proj\" (multi-latent attention) is not "
                       "supported yet")) << msg;
  msg = problems({"model.recompute_modules=[\"mlp\"]"});
  EXPECT_TRUE(has(msg, "model.recompute_modules: needs model.recompute_granularity = \"selective\"")) << msg;
  EXPECT_EQ(problems(full("block", 2)), "");
  EXPECT_EQ(problems(selective("[\"layernorm\",\"mlp\"]")), "");
}

}  // namespace
}  // namespace mpt::train
