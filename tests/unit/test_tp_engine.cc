// Tensor and sequence parallelism, ranks as threads of this process: recipes/tiny.toml at
// TP = 2 and 4, each with and without SP, and TP = 2 x DP = 2 reproduce the one-rank run
// (every step's loss, gradients of named parameters gathered to their whole shapes), the
// weights and gradients really shrink to 1/TP per rank, SP lowers the activation peak
// further, and the bytes each rank sends per step match the analytic figure.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>
#include <thread>
#include <vector>

#include "engine_threads.h"

namespace mpt::train {
namespace {

using testing::expect_same_grads;
using testing::rel;
using testing::RankRun;
using testing::run;

// One of each kind: vocab-parallel embedding and output layer, column-parallel (qkv, gated
// fc1), row-parallel (proj, fc2) and replicated norm weights (sequence-parallel under SP).
const std::vector<std::string> kGradNames = {
    "embedding.word_embeddings.weight",
    "decoder.layers.0.input_layernorm.weight",
    "decoder.layers.0.self_attention.linear_qkv.weight",
    "decoder.layers.1.self_attention.linear_proj.weight",
    "decoder.layers.2.mlp.linear_fc1.weight",
    "decoder.layers.3.mlp.linear_fc2.weight",
    "decoder.layers.3.pre_mlp_layernorm.weight",
    "decoder.final_layernorm.weight",
    "output_layer.weight",
};

const RankRun& oracle() {
  static const RankRun r = run(1, {}, 10, kGradNames)[0];
  return r;
}

void expect_matches_oracle(const std::vector<RankRun>& got, const std::string& what) {
  const RankRun& want = oracle();
  for (size_t k = 0; k < got.size(); ++k) {
    const RankRun& rr = got[k];
    ASSERT_EQ(rr.losses.size(), want.losses.size());
    for (size_t i = 0; i < rr.losses.size(); ++i) {
      std::printf("%s rank %zu step %zu: loss %.9g vs %.9g (%.2e), norm %.9g vs %.9g (%.2e)\n", what.c_str(), k, i + 1,
                  rr.losses[i], want.losses[i], rel(rr.losses[i], want.losses[i]), rr.norms[i], want.norms[i],
                  rel(rr.norms[i], want.norms[i]));
      EXPECT_LT(rel(rr.losses[i], want.losses[i]), 1e-5)
          << what << " rank " << k << " step " << i + 1 << ": " << rr.losses[i] << " vs " << want.losses[i];
    }
    expect_same_grads(rr, want, kGradNames, str(what, " rank ", k));
  }
}

struct Case {
  int64_t tp, dp;
  bool sp;
  const char* sharding = "no_shard";
};

// Bytes one rank sends to its tensor-parallel peers in a step of recipes/tiny.toml (L = 4
// layers, T = 512 tokens of H = 128 per micro-batch), counted from the algorithm: a ring
// all-reduce sends 2(n-1)/n of its buffer, a reduce-scatter or all-gather (n-1)/n.
//   per micro-batch without SP: all-reduce [T,H] after the embedding and after each of the
//     2L row-parallel layers, and of d(input) before each of the 2L column-parallel layers
//     and the output layer: 4L + 2 all-reduces;
//   with SP: per layer 2 all-gathers + 2 reduce-scatters forward, and backward 2 all-gathers
//     of d(output) for the row-parallel layers, 2 re-gathers of the column-parallel inputs
//     and 2 reduce-scatters of their d(input): 10 per layer; plus the embedding (reduce-
//     scatter, all-gather back) and the output layer (gather, re-gather, reduce-scatter);
//   both: the vocab-parallel cross-entropy all-reduces [T] (max) and [2T] (sums);
//   per step: the gradient-norm all-reduce (one double) and, with SP, one all-reduce of the
//     2L + 1 norm weights' gradients.
double expected_tp_bytes(int64_t tp, bool sp, int64_t microbatches) {
  const double n = static_cast<double>(tp), L = 4, T = 512, H = 128, f = 4;
  const double ring = (n - 1) / n, act = T * H * f;
  double per_mb = sp ? (10 * L + 5) * ring * act : (4 * L + 2) * 2 * ring * act;
  per_mb += 2 * ring * 3 * T * f;
  double per_step = 2 * ring * 8;
  if (sp) per_step += 2 * ring * (2 * L + 1) * H * f;
  return per_mb * static_cast<double>(microbatches) + per_step;
}

class TensorParallelEquivalence : public ::testing::TestWithParam<Case> {};

TEST_P(TensorParallelEquivalence, MatchesOneRank) {
  const Case c = GetParam();
  std::vector<std::string> o = {str("model.tensor_model_parallel_size=", c.tp),
                                str("model.sequence_parallel=", c.sp ? "true" : "false"),
                                str("ddp.data_parallel_sharding_strategy=", c.sharding)};
  const std::string what = str("TP=", c.tp, c.sp ? "+SP" : "", " DP=", c.dp, " ", c.sharding);
  const std::vector<RankRun> got = run(c.tp * c.dp, o, 10, kGradNames);
  expect_matches_oracle(got, what);

  const double expected = expected_tp_bytes(c.tp, c.sp, 4 / c.dp);
  for (size_t k = 0; k < got.size(); ++k) {
    const double ratio = static_cast<double>(got[k].tp_bytes_last_step) / expected;
    if (k == 0)
      std::printf("%s: %lld bytes sent to TP peers per step per rank, %.4f of the analytic figure\n", what.c_str(),
                  static_cast<long long>(got[k].tp_bytes_last_step), ratio);
    EXPECT_NEAR(ratio, 1.0, 0.1) << what << " rank " << k;
  }
}

INSTANTIATE_TEST_SUITE_P(Layouts, TensorParallelEquivalence,
                         ::testing::Values(Case{2, 1, false}, Case{2, 1, true}, Case{4, 1, false}, Case{4, 1, true},
                                           Case{2, 2, false}, Case{2, 2, true, "optim_grads_params"}),
                         [](const auto& info) {
                           return str("tp", info.param.tp, info.param.sp ? "_sp" : "", "_dp", info.param.dp, "_",
                                      info.param.sharding);
                         });

// The GPT family at TP = 2 + SP x DP = 2: LayerNorm with biases, learned positions (their
// gradients summed over TP under SP), biases on every linear (row-parallel ones added after
// the reduction), the output layer tied to the vocab-parallel embedding, and dropout (masks
// keyed by global rows and heads, so the same at every layout).
TEST(TensorParallelGptFamily, MatchesOneRank) {
  const std::vector<std::string> gpt = {"model.normalization=LayerNorm", "model.position_embedding_type=learned_absolute",
                                        "model.add_bias_linear=true", "model.gated_linear_unit=false",
                                        "model.activation_func=gelu", "model.share_embeddings_and_output_weights=true",
                                        "model.hidden_dropout=0.1", "model.attention_dropout=0.1"};
  const std::vector<std::string> names = {"embedding.word_embeddings.weight",
                                          "embedding.position_embeddings.weight",
                                          "decoder.layers.0.input_layernorm.bias",
                                          "decoder.layers.1.self_attention.linear_proj.bias",
                                          "decoder.layers.2.mlp.linear_fc1.bias",
                                          "decoder.layers.3.mlp.linear_fc2.bias",
                                          "decoder.final_layernorm.bias"};
  const RankRun want = run(1, gpt, 4, names)[0];
  std::vector<std::string> o = gpt;
  o.insert(o.end(), {"model.tensor_model_parallel_size=2", "model.sequence_parallel=true"});
  for (const RankRun& rr : run(4, o, 4, names)) {
    for (size_t i = 0; i < rr.losses.size(); ++i)
      EXPECT_LT(rel(rr.losses[i], want.losses[i]), 1e-5) << "step " << i + 1 << ": " << rr.losses[i] << " vs "
                                                          << want.losses[i];
    expect_same_grads(rr, want, names, "GPT family TP=2+SP x DP=2");
  }
}

// Parameters and gradients per rank about 1/TP of one rank's (a deep model, so the split
// layers dominate); sequence parallelism lowers the activation peak below TP's alone.
TEST(TensorParallelMemory, ShrinksWithTpAndFurtherWithSp) {
  const std::vector<std::string> deep = {"model.num_layers=32", "model.hidden_size=64", "model.ffn_hidden_size=176",
                                         "dataset.source=mock"};
  const MemoryReport one = run(1, deep, 0)[0].memory;
  for (int64_t tp : {2, 4}) {
    double act[2] = {0, 0};
    for (bool sp : {false, true}) {
      std::vector<std::string> o = deep;
      o.push_back(str("model.tensor_model_parallel_size=", tp));
      o.push_back(str("model.sequence_parallel=", sp ? "true" : "false"));
      const MemoryReport m = run(tp, o, 0)[0].memory;
      const double params = static_cast<double>(m.params_bytes) / static_cast<double>(one.params_bytes);
      const double grads = static_cast<double>(m.grads_bytes) / static_cast<double>(one.grads_bytes);
      act[sp] = static_cast<double>(m.activations_peak_bytes) / static_cast<double>(one.activations_peak_bytes);
      std::printf("TP=%lld%s: parameters %.3f, gradients %.3f, activations %.3f of one rank's\n",
                  static_cast<long long>(tp), sp ? "+SP" : "   ", params, grads, act[sp]);
      const double share = 1.0 / static_cast<double>(tp);
      EXPECT_NEAR(params, share, 0.03 * share) << "TP=" << tp;
      EXPECT_NEAR(grads, share, 0.03 * share) << "TP=" << tp;
      EXPECT_LT(act[sp], 1.0);
    }
    EXPECT_LT(act[1], act[0] * 0.9) << "SP must cut the activation peak below TP alone at TP=" << tp;
  }
}

// Batches supplied by the host (the C API's mpt_train_step with a batch): tensor-parallel
// ranks that pass the same batch train like one rank; ranks that pass different ones all
// fail with kInvalidArgument naming the rule, and nobody hangs.
TEST(TensorParallelHostBatch, SameBatchTrainsDifferentBatchFails) {
  testing::expect_same_batch_rule({"model.tensor_model_parallel_size=2"}, 2,
                                  [](int64_t) { return "differs between tensor-parallel ranks"; });
}

}  // namespace
}  // namespace mpt::train
