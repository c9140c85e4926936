// Context parallelism, ranks as threads of this process: recipes/tiny.toml at CP = 2 and 4,
// with both exchanges (ring and all-gather), and composed with TP (+SP), DP and PP,
// reproduces the one-rank run (every step's loss, gradients of named parameters); so does
// the GPT family with dropout; each rank sends the bytes the exchange's analytic volume
// says; the activation peak per rank falls as 1/CP on a long sequence; host batches of
// whole sequences are split by the engine and must agree between CP ranks.
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

// Attention mixes positions; everything else must see the right tokens at the right
// positions (RoPE), and the loss and its gradients must add up over the sequence.
const std::vector<std::string> kGradNames = {
    "embedding.word_embeddings.weight",
    "decoder.layers.0.self_attention.linear_qkv.weight",
    "decoder.layers.1.self_attention.linear_proj.weight",
    "decoder.layers.2.mlp.linear_fc1.weight",
    "decoder.layers.3.input_layernorm.weight",
    "decoder.final_layernorm.weight",
    "output_layer.weight",
};

const RankRun& oracle() {
  static const RankRun r = run(1, {}, 10, kGradNames)[0];
  return r;
}

struct Case {
  int64_t cp, tp = 1, dp = 1, pp = 1;
  bool sp = false;
  const char* comm = "p2p";
  const char* sharding = "no_shard";
};

// Bytes one rank sends to its context-parallel peers in a step of recipes/tiny.toml: L = 4
// layers, micro-batches of B = 4 sequences of S = 128, 4 query groups of 16 channels split
// over TP. Per layer and micro-batch, with KV = 2 * (S/CP * B) * kv_width * 4 bytes (one
// rank's keys and values): the ring sends (CP-1) KV forward and (CP-1) KV + CP dKV backward;
// the all-gather variant (CP-1) KV forward, (CP-1) KV again and (CP-1) dKV (reduce-scatter)
// backward. Plus each micro-batch's two loss sums, all-reduced over CP.
double expected_cp_bytes(const Case& c, int64_t microbatches, int64_t layers) {
  const double n = static_cast<double>(c.cp), tokens = 128.0 / n * 4, kv_width = 4.0 * 16 / static_cast<double>(c.tp);
  const double kv = 2 * tokens * kv_width * 4;
  const double per_layer = std::string(c.comm) == "p2p" ? (3 * n - 2) * kv : 3 * (n - 1) * kv;
  const double loss = 2 * (n - 1) / n * 16;
  return (per_layer * static_cast<double>(layers) + loss) * static_cast<double>(microbatches);
}

class ContextParallelEquivalence : public ::testing::TestWithParam<Case> {};

TEST_P(ContextParallelEquivalence, MatchesOneRank) {
  const Case c = GetParam();
  const std::vector<std::string> o = {str("model.context_parallel_size=", c.cp),
                                      str("model.cp_comm_type=", c.comm),
                                      str("model.tensor_model_parallel_size=", c.tp),
                                      str("model.sequence_parallel=", c.sp ? "true" : "false"),
                                      str("model.pipeline_model_parallel_size=", c.pp),
                                      str("ddp.data_parallel_sharding_strategy=", c.sharding)};
  const std::string what = str("CP=", c.cp, " ", c.comm, " TP=", c.tp, c.sp ? "+SP" : "", " DP=", c.dp, " PP=", c.pp);
  const std::vector<RankRun> got = run(c.cp * c.tp * c.dp * c.pp, o, 10, kGradNames);
  const RankRun& want = oracle();
  testing::expect_same_run(got, want, what, false);
  for (size_t k = 0; k < got.size(); ++k) {
    if (k == 0)
      for (size_t i = 0; i < got[k].losses.size(); ++i)
        std::printf("%s step %zu: loss %.9g vs %.9g (%.2e)\n", what.c_str(), i + 1, got[k].losses[i], want.losses[i],
                    rel(got[k].losses[i], want.losses[i]));
    expect_same_grads(got[k], want, kGradNames, str(what, " rank ", k));
  }

  // Every rank of a stage holds its stage's layers: 4 / PP of them.
  const double expected = expected_cp_bytes(c, 4 / c.dp, 4 / c.pp);
  for (size_t k = 0; k < got.size(); ++k) {
    const double ratio = static_cast<double>(got[k].cp_bytes_last_step) / expected;
    if (k == 0)
      std::printf("%s: %lld bytes sent to CP peers per step per rank, %.4f of the analytic %.0f\n", what.c_str(),
                  static_cast<long long>(got[k].cp_bytes_last_step), ratio, expected);
    EXPECT_NEAR(ratio, 1.0, 0.1) << what << " rank " << k;
  }
}

INSTANTIATE_TEST_SUITE_P(
    Layouts, ContextParallelEquivalence,
    ::testing::Values(Case{2}, Case{4}, Case{2, 2}, Case{2, 1, 1, 1, false, "all_gather"},
                      Case{4, 1, 1, 1, false, "all_gather"}, Case{2, 2, 1, 1, true},
                      Case{2, 1, 2, 1, false, "p2p", "optim_grads_params"}, Case{2, 1, 1, 2}),
    [](const auto& info) {
      const Case& c = info.param;
      return str("cp", c.cp, "_", c.comm, "_tp", c.tp, c.sp ? "_sp" : "", "_dp", c.dp, "_pp", c.pp);
    });

// The GPT family at CP = 2 x TP = 2 + SP: learned positions (each rank adds the rows of its
// own positions; their gradients add over CP), LayerNorm and biases, the output layer tied
// to the embedding, and hidden and attention dropout, whose masks are keyed by global
// positions and so are the same at every layout.
TEST(ContextParallelGptFamily, MatchesOneRankWithDropout) {
  const std::vector<std::string> gpt = {"model.normalization=LayerNorm", "model.position_embedding_type=learned_absolute",
                                        "model.add_bias_linear=true", "model.gated_linear_unit=false",
                                        "model.activation_func=gelu", "model.share_embeddings_and_output_weights=true",
                                        "model.hidden_dropout=0.1", "model.attention_dropout=0.1"};
  const std::vector<std::string> names = {"embedding.word_embeddings.weight",
                                          "embedding.position_embeddings.weight",
                                          "decoder.layers.0.self_attention.linear_qkv.weight",
                                          "decoder.layers.1.self_attention.linear_proj.bias",
                                          "decoder.layers.2.mlp.linear_fc1.bias",
                                          "decoder.final_layernorm.bias"};
  const RankRun want = run(1, gpt, 4, names)[0];
  for (const char* comm : {"p2p", "all_gather"}) {
    std::vector<std::string> o = gpt;
    o.insert(o.end(), {"model.context_parallel_size=2", str("model.cp_comm_type=", comm),
                       "model.tensor_model_parallel_size=2", "model.sequence_parallel=true"});
    const std::vector<RankRun> got = run(4, o, 4, names);
    testing::expect_same_run(got, want, str("GPT family CP=2 ", comm, " TP=2+SP"), false);
    for (size_t k = 0; k < got.size(); ++k) expect_same_grads(got[k], want, names, str(comm, " rank ", k));
  }
}

// A long sequence, where activations are per token: the activation peak per rank (what the
// engine allocates once, the exchange's buffers included) falls as 1/CP with the ring. The
// all-gather exchange holds the whole sequence's keys and values while it runs, so it
// falls a little less.
TEST(ContextParallelMemory, ActivationsFallAsOneOverCp) {
  const std::vector<std::string> longseq = {"model.seq_length=2048", "train.micro_batch_size=1",
                                            "train.global_batch_size=1", "dataset.source=mock"};
  const MemoryReport one = run(1, longseq, 0)[0].memory;
  for (int64_t cp : {2, 4})
    for (const char* comm : {"p2p", "all_gather"}) {
      std::vector<std::string> o = longseq;
      o.push_back(str("model.context_parallel_size=", cp));
      o.push_back(str("model.cp_comm_type=", comm));
      const MemoryReport m = run(cp, o, 0)[0].memory;
      const double act = static_cast<double>(m.activations_peak_bytes) / static_cast<double>(one.activations_peak_bytes);
      std::printf("CP=%lld %s: activations %.1f MiB per rank, %.3f of one rank's %.1f MiB (1/CP = %.3f)\n",
                  static_cast<long long>(cp), comm, static_cast<double>(m.activations_peak_bytes) / (1 << 20), act,
                  static_cast<double>(one.activations_peak_bytes) / (1 << 20), 1.0 / static_cast<double>(cp));
      const double slack = std::string(comm) == "p2p" ? 1.12 : 1.4;
      EXPECT_LT(act, slack / static_cast<double>(cp)) << "CP=" << cp << " " << comm;
      EXPECT_GT(act, 0.9 / static_cast<double>(cp)) << "CP=" << cp << " " << comm;
      EXPECT_EQ(m.params_bytes, one.params_bytes) << "parameters are replicated over CP";
    }
}

// Batches supplied by the host: context-parallel ranks pass the same whole sequences and
// each keeps its own chunks, training like one rank; ranks that pass different batches all
// fail with kInvalidArgument naming the rule.
TEST(ContextParallelHostBatch, WholeSequencesSplitByTheEngine) {
  std::vector<float> mask(16 * 128, 1.0f);
  for (size_t i = 0; i < mask.size(); i += 3) mask[i] = 0.0f;  // uneven: token counts differ per chunk
  testing::expect_same_batch_rule({"model.context_parallel_size=2"}, 2,
                                  [](int64_t) { return "differs between context-parallel ranks"; }, mask.data());
}

// CP x TP (ranks 0, 1 and 2, 3 are tensor-parallel pairs; 0, 2 and 1, 3 context-parallel):
// when rank 1's batch differs, or is rejected on rank 1 alone, every rank fails at once,
// the ranks whose own groups agree included, rather than waiting for the others.
TEST(ContextParallelHostBatch, EveryRankFailsWhenOneBatchDiffersOrIsRejected) {
  const std::vector<std::string> o = {"model.context_parallel_size=2", "model.tensor_model_parallel_size=2"};
  testing::expect_same_batch_rule(o, 4, [](int64_t rank) {
    return rank < 2     ? "differs between tensor-parallel ranks"
           : rank == 3 ? "differs between context-parallel ranks"
                       : "differs between the ranks of another group";  // rank 2: both its groups agree
  });
  testing::expect_same_batch_rule(
      o, 4,
      [](int64_t rank) {
        return rank == 1 ? "outside the vocabulary" : rank == 2 ? "rejected on another rank" : "or was rejected there";
      },
      nullptr, [](std::vector<int32_t>& tokens) { tokens[5] = 999; });
}

}  // namespace
}  // namespace mpt::train
