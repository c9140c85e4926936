// The CUDA layer ops (src/cuda/cuda_layers.cu) against the CPU oracle: norms, qkv
// split/merge, RoPE, activations, dropout, embedding and cross-entropy, on realistic and
// edge shapes (empty, odd sizes, sizes that are not multiples of the block sizes).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "device_util.h"

namespace mpt::device_testing {
namespace {

using backend::Activation;

constexpr double kTol = 1e-5;

std::vector<float> host_f32(Pair& p) { return std::vector<float>(p.f(), p.f() + p.numel()); }

// Bit-exact comparison, for ops that only move values or add them in the CPU's order.
void expect_same_bits(const Pair& p, const std::string& what) {
  const std::vector<float> got = p.download_f32();
  const float* want = reinterpret_cast<const float*>(p.host.data());
  int64_t mismatches = 0;
  for (size_t i = 0; i < got.size(); ++i)
    if (std::memcmp(&got[i], &want[i], sizeof(float)) != 0 && ++mismatches <= 5)
      ADD_FAILURE() << what << "[" << i << "]: GPU " << got[i] << " vs CPU " << want[i];
  EXPECT_EQ(mismatches, 0) << what;
}

template <typename F>
void expect_invalid(F f, const std::string& what) {
  try {
    f();
    ADD_FAILURE() << what << ": expected mpt::Error(kInvalidArgument)";
  } catch (const Error& e) {
    EXPECT_EQ(e.status(), Status::kInvalidArgument) << what << ": " << e.what();
  }
}

// --- norms -----------------------------------------------------------------------------------

void check_layernorm(int64_t rows, int64_t h, bool with_bias, uint64_t seed) {
  SCOPED_TRACE("layernorm T=" + std::to_string(rows) + " H=" + std::to_string(h) + (with_bias ? " bias" : ""));
  Backends b;
  auto x = b.f32({rows, h}, seed, 2.0f);
  // A mean far from zero tests the two-pass variance.
  for (int64_t i = 0; i < x->numel(); ++i) x->f()[i] += 3.0f;
  x->upload();
  auto w = b.f32({h}, seed + 1), bias = b.f32({h}, seed + 2);
  auto out = b.f32({rows, h}), mean = b.f32({rows}), rstd = b.f32({rows});
  Tensor no_bias;
  b.cpu->layernorm_fwd(out->cpu(), mean->cpu(), rstd->cpu(), x->cpu(), w->cpu(), with_bias ? bias->cpu() : no_bias,
                       1e-5f);
  b.gpu->layernorm_fwd(out->gpu_t(), mean->gpu_t(), rstd->gpu_t(), x->gpu_t(), w->gpu_t(),
                       with_bias ? bias->gpu_t() : no_bias, 1e-5f);
  expect_close(*out, kTol, "layernorm out");
  expect_close(*mean, kTol, "layernorm mean");
  expect_close(*rstd, kTol, "layernorm rstd");

  // Backward accumulates into non-zero gradients.
  auto dout = b.f32({rows, h}, seed + 3), dx = b.f32({rows, h}, seed + 4);
  auto dw = b.f32({h}, seed + 5), db = b.f32({h}, seed + 6);
  b.cpu->layernorm_bwd(dx->cpu(), dw->cpu(), with_bias ? db->cpu() : no_bias, dout->cpu(), x->cpu(), w->cpu(),
                       mean->cpu(), rstd->cpu());
  b.gpu->layernorm_bwd(dx->gpu_t(), dw->gpu_t(), with_bias ? db->gpu_t() : no_bias, dout->gpu_t(), x->gpu_t(),
                       w->gpu_t(), mean->gpu_t(), rstd->gpu_t());
  expect_close(*dx, kTol, "layernorm dx");
  expect_close(*dw, kTol, "layernorm dweight");
  if (with_bias) expect_close(*db, kTol, "layernorm dbias");
}

TEST(CudaLayers, LayerNormMatchesCpu) {
  MPT_SKIP_WITHOUT_GPU();
  check_layernorm(37, 100, true, 11);
  check_layernorm(37, 100, false, 12);
  check_layernorm(5, 1, true, 13);
  check_layernorm(1, 33, true, 14);
  check_layernorm(1000, 768, true, 15);  // several row chunks in the parameter gradients
  check_layernorm(9000, 40, false, 16);  // more rows than the chunk limit covers one by one
  check_layernorm(0, 64, true, 17);
}

void check_rmsnorm(int64_t rows, int64_t h, uint64_t seed) {
  SCOPED_TRACE("rmsnorm T=" + std::to_string(rows) + " H=" + std::to_string(h));
  Backends b;
  auto x = b.f32({rows, h}, seed, 1.5f);
  auto w = b.f32({h}, seed + 1);
  auto out = b.f32({rows, h}), rstd = b.f32({rows});
  b.cpu->rmsnorm_fwd(out->cpu(), rstd->cpu(), x->cpu(), w->cpu(), 1e-6f);
  b.gpu->rmsnorm_fwd(out->gpu_t(), rstd->gpu_t(), x->gpu_t(), w->gpu_t(), 1e-6f);
  expect_close(*out, kTol, "rmsnorm out");
  expect_close(*rstd, kTol, "rmsnorm rstd");
  auto dout = b.f32({rows, h}, seed + 2), dx = b.f32({rows, h}, seed + 3), dw = b.f32({h}, seed + 4);
  b.cpu->rmsnorm_bwd(dx->cpu(), dw->cpu(), dout->cpu(), x->cpu(), w->cpu(), rstd->cpu());
  b.gpu->rmsnorm_bwd(dx->gpu_t(), dw->gpu_t(), dout->gpu_t(), x->gpu_t(), w->gpu_t(), rstd->gpu_t());
  expect_close(*dx, kTol, "rmsnorm dx");
  expect_close(*dw, kTol, "rmsnorm dweight");
}

TEST(CudaLayers, RmsNormMatchesCpu) {
  MPT_SKIP_WITHOUT_GPU();
  check_rmsnorm(37, 100, 21);
  check_rmsnorm(3, 1, 22);
  check_rmsnorm(513, 1024, 23);
  check_rmsnorm(0, 16, 24);
}

TEST(CudaLayers, NormParameterGradientsAreDeterministic) {
  MPT_SKIP_WITHOUT_GPU();
  Backends b;
  const int64_t rows = 4099, h = 257;
  auto x = b.f32({rows, h}, 31), w = b.f32({h}, 32), dout = b.f32({rows, h}, 33);
  auto out = b.f32({rows, h}), mean = b.f32({rows}), rstd = b.f32({rows});
  b.gpu->layernorm_fwd(out->gpu_t(), mean->gpu_t(), rstd->gpu_t(), x->gpu_t(), w->gpu_t(), Tensor(), 1e-5f);
  std::vector<float> first;
  for (int run = 0; run < 3; ++run) {
    auto dx = b.f32({rows, h}), dw = b.f32({h}), db = b.f32({h});
    b.gpu->layernorm_bwd(dx->gpu_t(), dw->gpu_t(), db->gpu_t(), dout->gpu_t(), x->gpu_t(), w->gpu_t(), mean->gpu_t(),
                         rstd->gpu_t());
    std::vector<float> got = dw->download_f32(), got_b = db->download_f32();
    got.insert(got.end(), got_b.begin(), got_b.end());
    if (run == 0)
      first = got;
    else
      EXPECT_EQ(std::memcmp(first.data(), got.data(), first.size() * sizeof(float)), 0) << "run " << run;
  }
}

TEST(CudaLayers, NormsRejectMismatchedShapes) {
  MPT_SKIP_WITHOUT_GPU();
  Backends b;
  auto x = b.f32({4, 8}, 1), w = b.f32({7}, 2), out = b.f32({4, 8}), rstd = b.f32({4});
  expect_invalid([&] { b.gpu->rmsnorm_fwd(out->gpu_t(), rstd->gpu_t(), x->gpu_t(), w->gpu_t(), 1e-6f); },
                 "rmsnorm weight of the wrong size");
}

// --- qkv ---------------------------------------------------------------------------------

void check_qkv(int64_t tokens, int64_t groups, int64_t hpg, int64_t d) {
  SCOPED_TRACE("qkv T=" + std::to_string(tokens) + " groups=" + std::to_string(groups) +
               " hpg=" + std::to_string(hpg) + " D=" + std::to_string(d));
  Backends b;
  auto qkv = b.f32({tokens, groups * (hpg + 2) * d}, 41);
  auto q = b.f32({tokens, groups * hpg * d}), k = b.f32({tokens, groups * d}), v = b.f32({tokens, groups * d});
  b.cpu->qkv_split(q->cpu(), k->cpu(), v->cpu(), qkv->cpu(), groups, hpg, d);
  b.gpu->qkv_split(q->gpu_t(), k->gpu_t(), v->gpu_t(), qkv->gpu_t(), groups, hpg, d);
  expect_same_bits(*q, "q");
  expect_same_bits(*k, "k");
  expect_same_bits(*v, "v");
  auto dq = b.f32({tokens, groups * hpg * d}, 42), dk = b.f32({tokens, groups * d}, 43);
  auto dv = b.f32({tokens, groups * d}, 44), dqkv = b.f32({tokens, groups * (hpg + 2) * d}, 45);
  b.cpu->qkv_merge(dqkv->cpu(), dq->cpu(), dk->cpu(), dv->cpu(), groups, hpg, d);
  b.gpu->qkv_merge(dqkv->gpu_t(), dq->gpu_t(), dk->gpu_t(), dv->gpu_t(), groups, hpg, d);
  expect_same_bits(*dqkv, "dqkv");
}

TEST(CudaLayers, QkvSplitAndMergeMatchCpu) {
  MPT_SKIP_WITHOUT_GPU();
  check_qkv(7, 2, 3, 5);     // GQA, odd sizes
  check_qkv(33, 1, 4, 16);   // MQA
  check_qkv(129, 8, 1, 64);  // MHA
  check_qkv(0, 2, 2, 8);
}

// --- RoPE --------------------------------------------------------------------------------

void check_rope(int64_t tokens, int64_t heads, int64_t head_dim, int64_t rotary_dim, bool inverse) {
  SCOPED_TRACE("rope T=" + std::to_string(tokens) + " heads=" + std::to_string(heads) + " D=" +
               std::to_string(head_dim) + " rotary=" + std::to_string(rotary_dim) + (inverse ? " inverse" : ""));
  Backends b;
  std::vector<int32_t> pos(static_cast<size_t>(tokens));
  for (int64_t t = 0; t < tokens; ++t) pos[t] = static_cast<int32_t>((t * 7919) % 4096 + (t % 3 == 0 ? 100000 : 0));
  auto positions = b.i32({tokens}, pos);
  auto x = b.f32({tokens, heads * head_dim}, 51);
  const std::vector<float> before = host_f32(*x);
  b.cpu->rope(x->cpu(), positions->cpu(), heads, head_dim, rotary_dim, 10000.0f, inverse);
  b.gpu->rope(x->gpu_t(), positions->gpu_t(), heads, head_dim, rotary_dim, 10000.0f, inverse);
  expect_close(*x, kTol, "rope");
  // Channels past rotary_dim are untouched.
  const std::vector<float> got = x->download_f32();
  for (int64_t t = 0; t < tokens; ++t)
    for (int64_t h = 0; h < heads; ++h)
      for (int64_t c = rotary_dim; c < head_dim; ++c) {
        const int64_t i = (t * heads + h) * head_dim + c;
        ASSERT_EQ(got[i], before[i]) << "t " << t << " head " << h << " channel " << c;
      }
}

TEST(CudaLayers, RopeMatchesCpu) {
  MPT_SKIP_WITHOUT_GPU();
  for (bool inverse : {false, true}) {
    check_rope(9, 3, 16, 16, inverse);
    check_rope(9, 3, 16, 8, inverse);  // partial rotary
    check_rope(301, 4, 64, 32, inverse);
    check_rope(0, 2, 8, 8, inverse);
  }
}

TEST(CudaLayers, RopeInverseUndoesForward) {
  MPT_SKIP_WITHOUT_GPU();
  Backends b;
  const int64_t tokens = 65, heads = 2, d = 12;
  std::vector<int32_t> pos(tokens);
  for (int64_t t = 0; t < tokens; ++t) pos[t] = static_cast<int32_t>(t * 3);
  auto positions = b.i32({tokens}, pos);
  auto x = b.f32({tokens, heads * d}, 52);
  b.gpu->rope(x->gpu_t(), positions->gpu_t(), heads, d, 10, 500.0f, false);
  b.gpu->rope(x->gpu_t(), positions->gpu_t(), heads, d, 10, 500.0f, true);
  expect_close(*x, 1e-5, "rope then inverse");
}

TEST(CudaLayers, RopeRejectsOddRotaryDim) {
  MPT_SKIP_WITHOUT_GPU();
  Backends b;
  auto positions = b.i32({2}, {0, 1});
  auto x = b.f32({2, 8}, 53);
  expect_invalid([&] { b.gpu->rope(x->gpu_t(), positions->gpu_t(), 1, 8, 5, 10000.0f, false); }, "odd rotary_dim");
}

// --- activations ---------------------------------------------------------------------------

TEST(CudaLayers, ActivationsMatchCpu) {
  MPT_SKIP_WITHOUT_GPU();
  const Activation acts[] = {Activation::kGelu, Activation::kGeluTanh, Activation::kSilu, Activation::kRelu,
                             Activation::kSquaredRelu};
  for (Activation act : acts)
    for (bool gated : {false, true})
      for (int64_t rows : {int64_t{13}, int64_t{0}, int64_t{300}}) {
        SCOPED_TRACE("activation " + std::to_string(static_cast<int>(act)) + (gated ? " gated" : "") + " rows " +
                     std::to_string(rows));
        Backends b;
        const int64_t f = 77, width = gated ? 2 * f : f;
        auto x = b.f32({rows, width}, 61, 2.0f);
        auto out = b.f32({rows, f}), dout = b.f32({rows, f}, 62), dx = b.f32({rows, width}, 63);
        b.cpu->activation_fwd(out->cpu(), x->cpu(), act, gated);
        b.gpu->activation_fwd(out->gpu_t(), x->gpu_t(), act, gated);
        expect_close(*out, kTol, "activation out");
        b.cpu->activation_bwd(dx->cpu(), dout->cpu(), x->cpu(), act, gated);
        b.gpu->activation_bwd(dx->gpu_t(), dout->gpu_t(), x->gpu_t(), act, gated);
        expect_close(*dx, kTol, "activation dx");
      }
}

// --- dropout -----------------------------------------------------------------------------

TEST(CudaLayers, DropoutDrawsTheCpuMasks) {
  MPT_SKIP_WITHOUT_GPU();
  for (float p : {0.0f, 0.3f})
    for (int64_t row_offset : {int64_t{0}, int64_t{5}, int64_t{1} << 33}) {
      SCOPED_TRACE("p " + std::to_string(p) + " row_offset " + std::to_string(row_offset));
      Backends b;
      const int64_t rows = 33, cols = 1001;
      auto x = b.f32({rows, cols}, 71), out = b.f32({rows, cols}, 72);
      b.cpu->dropout_fwd(out->cpu(), x->cpu(), p, 1234, row_offset);
      b.gpu->dropout_fwd(out->gpu_t(), x->gpu_t(), p, 1234, row_offset);
      expect_same_bits(*out, "dropout out");
      if (p > 0) {
        int64_t zeros = 0;
        for (int64_t i = 0; i < out->numel(); ++i) zeros += out->f()[i] == 0.0f;
        EXPECT_NEAR(static_cast<double>(zeros) / static_cast<double>(out->numel()), p, 0.02);
      }
      // Backward in place (dx aliases dout).
      auto d = b.f32({rows, cols}, 73);
      b.cpu->dropout_bwd(d->cpu(), d->cpu(), p, 1234, row_offset);
      b.gpu->dropout_bwd(d->gpu_t(), d->gpu_t(), p, 1234, row_offset);
      expect_same_bits(*d, "dropout dx in place");
    }
}

TEST(CudaLayers, DropoutHandlesEmptyAndRejectsBadProbability) {
  MPT_SKIP_WITHOUT_GPU();
  Backends b;
  auto x = b.f32({0, 16}), out = b.f32({0, 16});
  b.gpu->dropout_fwd(out->gpu_t(), x->gpu_t(), 0.5f, 1, 0);
  auto y = b.f32({2, 3}, 74), z = b.f32({2, 3});
  expect_invalid([&] { b.gpu->dropout_fwd(z->gpu_t(), y->gpu_t(), 1.0f, 1, 0); }, "p = 1");
  expect_invalid([&] { b.gpu->dropout_fwd(z->gpu_t(), y->gpu_t(), 0.1f, 1, -1); }, "negative row_offset");
}

// --- embedding -----------------------------------------------------------------------------

std::vector<int32_t> token_ids(int64_t tokens, int32_t lo, int32_t span, uint64_t seed) {
  std::vector<int32_t> ids(static_cast<size_t>(tokens));
  for (int64_t t = 0; t < tokens; ++t) {
    Philox r(seed, 0, static_cast<uint64_t>(t));
    ids[t] = lo + static_cast<int32_t>(r.out[0] % static_cast<uint32_t>(span));
  }
  return ids;
}

void check_embedding(int64_t tokens, int64_t vocab, int64_t h, int64_t vocab_start, uint64_t seed) {
  SCOPED_TRACE("embedding T=" + std::to_string(tokens) + " V=" + std::to_string(vocab) + " H=" + std::to_string(h) +
               " start=" + std::to_string(vocab_start));
  Backends b;
  // Ids from below the range to above it: some tokens fall outside this table's rows.
  const std::vector<int32_t> id_values =
      token_ids(tokens, static_cast<int32_t>(std::max<int64_t>(0, vocab_start - 3)), static_cast<int32_t>(vocab + 6),
                seed);
  auto ids = b.i32({tokens}, id_values);
  auto table = b.f32({vocab, h}, seed + 1);
  for (bool accumulate : {false, true}) {
    auto out = b.f32({tokens, h}, seed + 2);  // non-zero: overwrite and accumulate both show
    b.cpu->embedding_fwd(out->cpu(), ids->cpu(), table->cpu(), vocab_start, accumulate);
    b.gpu->embedding_fwd(out->gpu_t(), ids->gpu_t(), table->gpu_t(), vocab_start, accumulate);
    expect_same_bits(*out, accumulate ? "embedding out (accumulate)" : "embedding out");
  }
  auto dout = b.f32({tokens, h}, seed + 3), dtable = b.f32({vocab, h}, seed + 4);
  b.cpu->embedding_bwd(dtable->cpu(), ids->cpu(), dout->cpu(), vocab_start);
  b.gpu->embedding_bwd(dtable->gpu_t(), ids->gpu_t(), dout->gpu_t(), vocab_start);
  // The GPU adds each row's tokens in token order onto the old value, as the CPU does.
  expect_same_bits(*dtable, "embedding dtable");
}

TEST(CudaLayers, EmbeddingMatchesCpu) {
  MPT_SKIP_WITHOUT_GPU();
  check_embedding(37, 11, 20, 20, 81);       // few rows, many repeats, ids outside on both sides
  check_embedding(1000, 50, 300, 0, 82);     // H not a multiple of the column tile
  check_embedding(4097, 3000, 64, 100, 83);  // many tokens, sparse rows
  check_embedding(5, 1, 7, 0, 84);           // a one-row table
  check_embedding(0, 10, 8, 0, 85);          // no tokens
}

TEST(CudaLayers, EmbeddingBackwardIsDeterministicWithHeavyRepeats) {
  MPT_SKIP_WITHOUT_GPU();
  Backends b;
  const int64_t tokens = 20000, vocab = 4, h = 129;
  auto ids = b.i32({tokens}, token_ids(tokens, 0, 4, 91));
  auto dout = b.f32({tokens, h}, 92);
  std::vector<float> first;
  for (int run = 0; run < 3; ++run) {
    auto dtable = b.f32({vocab, h});
    b.gpu->embedding_bwd(dtable->gpu_t(), ids->gpu_t(), dout->gpu_t(), 0);
    const std::vector<float> got = dtable->download_f32();
    if (run == 0)
      first = got;
    else
      EXPECT_EQ(std::memcmp(first.data(), got.data(), first.size() * sizeof(float)), 0) << "run " << run;
  }
}

// --- cross-entropy -------------------------------------------------------------------------

void check_cross_entropy(int64_t tokens, int64_t cols, int64_t vocab_start, int64_t vocab_valid, uint64_t seed) {
  SCOPED_TRACE("ce T=" + std::to_string(tokens) + " V_local=" + std::to_string(cols) + " start=" +
               std::to_string(vocab_start) + " valid=" + std::to_string(vocab_valid));
  Backends b;
  auto logits = b.f32({tokens, cols}, seed, 3.0f);
  // Targets inside this rank's columns (padding included) and outside them.
  auto targets = b.i32({tokens}, token_ids(tokens, static_cast<int32_t>(std::max<int64_t>(0, vocab_start - 5)),
                                           static_cast<int32_t>(cols + 10), seed + 1));
  auto row_max = b.f32({tokens}), sumexp = b.f32({tokens}), target_logit = b.f32({tokens}), loss = b.f32({tokens});
  b.cpu->ce_row_max(row_max->cpu(), logits->cpu(), vocab_start, vocab_valid);
  b.gpu->ce_row_max(row_max->gpu_t(), logits->gpu_t(), vocab_start, vocab_valid);
  expect_same_bits(*row_max, "row_max");  // a max is exact
  b.cpu->ce_sumexp_target(sumexp->cpu(), target_logit->cpu(), logits->cpu(), row_max->cpu(), targets->cpu(),
                          vocab_start, vocab_valid);
  b.gpu->ce_sumexp_target(sumexp->gpu_t(), target_logit->gpu_t(), logits->gpu_t(), row_max->gpu_t(),
                          targets->gpu_t(), vocab_start, vocab_valid);
  expect_close(*sumexp, kTol, "sumexp");
  expect_same_bits(*target_logit, "target_logit");
  b.cpu->ce_loss(loss->cpu(), row_max->cpu(), sumexp->cpu(), target_logit->cpu());
  b.gpu->ce_loss(loss->gpu_t(), row_max->gpu_t(), sumexp->gpu_t(), target_logit->gpu_t());
  expect_close(*loss, kTol, "loss");

  auto grad_scale = b.f32({tokens}, seed + 2);
  auto dlogits = b.f32({tokens, cols}, seed + 3);
  b.cpu->ce_bwd(dlogits->cpu(), logits->cpu(), row_max->cpu(), sumexp->cpu(), targets->cpu(), grad_scale->cpu(),
                vocab_start, vocab_valid);
  b.gpu->ce_bwd(dlogits->gpu_t(), logits->gpu_t(), row_max->gpu_t(), sumexp->gpu_t(), targets->gpu_t(),
                grad_scale->gpu_t(), vocab_start, vocab_valid);
  expect_close(*dlogits, kTol, "dlogits");
  // In place: dlogits aliases logits.
  b.cpu->ce_bwd(logits->cpu(), logits->cpu(), row_max->cpu(), sumexp->cpu(), targets->cpu(), grad_scale->cpu(),
                vocab_start, vocab_valid);
  b.gpu->ce_bwd(logits->gpu_t(), logits->gpu_t(), row_max->gpu_t(), sumexp->gpu_t(), targets->gpu_t(),
                grad_scale->gpu_t(), vocab_start, vocab_valid);
  expect_close(*logits, kTol, "dlogits in place");
}

TEST(CudaLayers, CrossEntropyMatchesCpu) {
  MPT_SKIP_WITHOUT_GPU();
  check_cross_entropy(19, 50, 100, 140, 101);      // padding columns: 40 of 50 valid
  check_cross_entropy(19, 50, 0, 50, 102);         // no padding
  check_cross_entropy(4, 32000, 32000, 64000, 103);  // a wide row: the whole block reduces
  check_cross_entropy(300, 257, 257, 500, 104);    // 243 valid, not a multiple of the block
  check_cross_entropy(0, 16, 0, 16, 105);
}

// A rank whose columns are all padding: max -inf, sum 0, gradients 0, as on the CPU.
TEST(CudaLayers, CrossEntropyAllPaddingRank) {
  MPT_SKIP_WITHOUT_GPU();
  Backends b;
  const int64_t tokens = 3, cols = 8;
  auto logits = b.f32({tokens, cols}, 111);
  auto targets = b.i32({tokens}, {0, 9, 17});
  auto row_max = b.f32({tokens}), sumexp = b.f32({tokens}), target_logit = b.f32({tokens});
  b.gpu->ce_row_max(row_max->gpu_t(), logits->gpu_t(), 16, 12);
  b.gpu->ce_sumexp_target(sumexp->gpu_t(), target_logit->gpu_t(), logits->gpu_t(), row_max->gpu_t(),
                          targets->gpu_t(), 16, 12);
  for (float m : row_max->download_f32()) EXPECT_EQ(m, -std::numeric_limits<float>::infinity());
  for (float s : sumexp->download_f32()) EXPECT_EQ(s, 0.0f);
  const std::vector<float> tl = target_logit->download_f32();
  EXPECT_EQ(tl[0], 0.0f);
  EXPECT_EQ(tl[1], 0.0f);
  EXPECT_EQ(tl[2], logits->f()[2 * cols + 1]);  // target 17 is column 1 of this rank's (padding) columns
}

TEST(CudaLayers, CrossEntropyRejectsBadTargets) {
  MPT_SKIP_WITHOUT_GPU();
  Backends b;
  auto logits = b.f32({2, 4}, 121), row_max = b.f32({2}), sumexp = b.f32({2}), tl = b.f32({2});
  auto wrong = b.f32({2});  // F32 where I32 targets are required
  expect_invalid([&] {
    b.gpu->ce_sumexp_target(sumexp->gpu_t(), tl->gpu_t(), logits->gpu_t(), row_max->gpu_t(), wrong->gpu_t(), 0, 4);
  }, "F32 targets");
}

}  // namespace
}  // namespace mpt::device_testing
