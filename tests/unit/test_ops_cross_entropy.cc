#include <cstring>
#include <limits>

#include "core/bf16.h"

#include "test_ops_util.h"

namespace mpt::test {
namespace {

constexpr int64_t kT = 5;

struct Pieces {
  std::vector<float> row_max, sumexp, target_logit, loss;
};

// One rank's pieces for logits [kT, cols] holding ids [start, start + cols).
Pieces run_pieces(backend::Ops& ops, std::vector<float>& logits, int64_t cols, std::vector<int32_t>& targets,
                  int64_t start, int64_t valid, const std::vector<float>* global_max = nullptr) {
  Pieces p{std::vector<float>(kT), std::vector<float>(kT), std::vector<float>(kT), std::vector<float>(kT)};
  ops.ce_row_max(view(p.row_max, {kT}), view(logits, {kT, cols}), start, valid);
  if (global_max) p.row_max = *global_max;
  ops.ce_sumexp_target(view(p.sumexp, {kT}), view(p.target_logit, {kT}), view(logits, {kT, cols}),
                       view(p.row_max, {kT}), view(targets, {kT}), start, valid);
  ops.ce_loss(view(p.loss, {kT}), view(p.row_max, {kT}), view(p.sumexp, {kT}), view(p.target_logit, {kT}));
  return p;
}

// A 10-column table of ids [0, 10) where ids 8 and 9 are padding.
constexpr int64_t kCols = 10, kValid = 8;

TEST(OpsCrossEntropy, LossMatchesLogSoftmaxExcludingPadding) {
  auto ops = backend::make_cpu_ops(2);
  std::vector<float> logits = random_vector(kT * kCols, 1, 3.0f);
  for (int64_t t = 0; t < kT; ++t) logits[t * kCols + 9] = 50.0f;  // a padding column must not count
  std::vector<int32_t> targets = {0, 7, 3, 3, 5};
  Pieces p = run_pieces(*ops, logits, kCols, targets, 0, kValid);
  for (int64_t t = 0; t < kT; ++t) {
    double mx = -1e300, sum = 0;
    for (int64_t c = 0; c < kValid; ++c) mx = std::max(mx, static_cast<double>(logits[t * kCols + c]));
    for (int64_t c = 0; c < kValid; ++c) sum += std::exp(logits[t * kCols + c] - mx);
    EXPECT_NEAR(p.loss[t], std::log(sum) + mx - logits[t * kCols + targets[t]], 1e-5);
  }
}

// Two vocab-parallel shards, combined as the all-reduces would, equal the whole table.
TEST(OpsCrossEntropy, ShardsCombineToTheWholeVocabulary) {
  auto ops = backend::make_cpu_ops(2);
  std::vector<float> logits = random_vector(kT * kCols, 2, 3.0f);
  std::vector<int32_t> targets = {0, 7, 5, 4, 6};
  Pieces whole = run_pieces(*ops, logits, kCols, targets, 0, kValid);
  std::vector<float> a(kT * 5), b(kT * 5);
  for (int64_t t = 0; t < kT; ++t)
    for (int64_t c = 0; c < 5; ++c) {
      a[t * 5 + c] = logits[t * kCols + c];
      b[t * 5 + c] = logits[t * kCols + 5 + c];
    }
  Pieces pa = run_pieces(*ops, a, 5, targets, 0, kValid), pb = run_pieces(*ops, b, 5, targets, 5, kValid);
  std::vector<float> gmax(kT);
  for (int64_t t = 0; t < kT; ++t) gmax[t] = std::max(pa.row_max[t], pb.row_max[t]);
  pa = run_pieces(*ops, a, 5, targets, 0, kValid, &gmax);
  pb = run_pieces(*ops, b, 5, targets, 5, kValid, &gmax);
  for (int64_t t = 0; t < kT; ++t) {
    const double loss = std::log(static_cast<double>(pa.sumexp[t]) + pb.sumexp[t]) + gmax[t] -
                        (pa.target_logit[t] + pb.target_logit[t]);
    EXPECT_NEAR(loss, whole.loss[t], 1e-5);
  }
  // a shard whose columns are all padding has no maximum and no mass
  std::vector<float> pad(kT * 2, 1.0f);
  Pieces pp = run_pieces(*ops, pad, 2, targets, 8, kValid, &gmax);
  std::vector<float> own_max(kT);
  ops->ce_row_max(view(own_max, {kT}), view(pad, {kT, 2}), 8, kValid);
  for (int64_t t = 0; t < kT; ++t) {
    EXPECT_EQ(own_max[t], -std::numeric_limits<float>::infinity());
    EXPECT_EQ(pp.sumexp[t], 0.0f);
    EXPECT_EQ(pp.target_logit[t], 0.0f);
  }
}

// d/dlogits of sum_t loss_t * scale_t through the whole chain, on a shard with an offset.
TEST(OpsCrossEntropy, GradientOfScaledLoss) {
  auto ops = backend::make_cpu_ops(2);
  const int64_t cols = 7, start = 3, valid = 8;  // ids [3, 10); 8 and 9 are padding
  std::vector<float> logits = random_vector(kT * cols, 3, 2.0f);
  std::vector<int32_t> targets = {3, 7, 1, 5, 4};  // id 1 lives on another shard
  std::vector<float> scale = {0.5f, 1.0f, 2.0f, 0.0f, 1.5f};
  auto loss = [&] {
    Pieces p = run_pieces(*ops, logits, cols, targets, start, valid);
    double s = 0;
    for (int64_t t = 0; t < kT; ++t) s += static_cast<double>(p.loss[t]) * scale[t];
    return s;
  };
  Pieces p = run_pieces(*ops, logits, cols, targets, start, valid);
  std::vector<float> dlogits(kT * cols, 3.0f);
  ops->ce_bwd(view(dlogits, {kT, cols}), view(logits, {kT, cols}), view(p.row_max, {kT}), view(p.sumexp, {kT}),
              view(targets, {kT}), view(scale, {kT}), start, valid);
  for (int64_t t = 0; t < kT; ++t)
    for (int64_t c = valid - start; c < cols; ++c) EXPECT_EQ(dlogits[t * cols + c], 0.0f) << "padding column";
  expect_gradient("cross-entropy dlogits", logits, dlogits, loss);
  // in place: dlogits aliasing logits gives the same values
  std::vector<float> in_place = logits;
  ops->ce_bwd(view(in_place, {kT, cols}), view(in_place, {kT, cols}), view(p.row_max, {kT}), view(p.sumexp, {kT}),
              view(targets, {kT}), view(scale, {kT}), start, valid);
  EXPECT_EQ(in_place, dlogits);
}

// ce_stats equals ce_row_max then ce_sumexp_target bit for bit: on a whole vocabulary with
// padding, on a shard with an offset, and on a shard holding padding only.
TEST(OpsCrossEntropy, StatsEqualRowMaxThenSumexp) {
  auto ops = backend::make_cpu_ops(2);
  struct Case {
    int64_t cols, start;
  };
  std::vector<int32_t> targets = {0, 7, 3, 9, 5};
  for (const Case& c : {Case{kCols, 0}, Case{5, 3}, Case{2, 8}}) {
    std::vector<float> logits = random_vector(kT * c.cols, 4, 3.0f);
    Pieces want = run_pieces(*ops, logits, c.cols, targets, c.start, kValid);
    std::vector<float> row_max(kT, 7.0f), sumexp(kT, 7.0f), target(kT, 7.0f);
    ops->ce_stats(view(row_max, {kT}), view(sumexp, {kT}), view(target, {kT}), view(logits, {kT, c.cols}),
                  view(targets, {kT}), c.start, kValid);
    EXPECT_EQ(row_max, want.row_max) << "columns from " << c.start;
    EXPECT_EQ(sumexp, want.sumexp) << "columns from " << c.start;
    EXPECT_EQ(target, want.target_logit) << "columns from " << c.start;
  }
}

// bf16 d(logits) are the f32 ones rounded once (what a bf16 GEMM would make of the f32
// operand); a bf16 dlogits over the f32 logits' memory is refused.
TEST(OpsCrossEntropy, Bf16GradientIsTheF32OneRounded) {
  auto ops = backend::make_cpu_ops(2);
  const int64_t cols = 7, start = 3, valid = 8;
  std::vector<float> logits = random_vector(kT * cols, 5, 2.0f);
  std::vector<int32_t> targets = {3, 7, 1, 5, 4};
  std::vector<float> scale = {0.5f, 1.0f, 2.0f, 0.0f, 1.5f};
  Pieces p = run_pieces(*ops, logits, cols, targets, start, valid);
  std::vector<float> f32(kT * cols);
  ops->ce_bwd(view(f32, {kT, cols}), view(logits, {kT, cols}), view(p.row_max, {kT}), view(p.sumexp, {kT}),
              view(targets, {kT}), view(scale, {kT}), start, valid);
  std::vector<uint16_t> bf16(kT * cols, 0xffffu);
  const Tensor dlogits(bf16.data(), DType::kBF16, {kT, cols});
  ops->ce_bwd(dlogits, view(logits, {kT, cols}), view(p.row_max, {kT}), view(p.sumexp, {kT}), view(targets, {kT}),
              view(scale, {kT}), start, valid);
  for (size_t i = 0; i < f32.size(); ++i) EXPECT_EQ(bf16[i], f32_to_bf16(f32[i])) << "element " << i;
  const Tensor over_logits(logits.data(), DType::kBF16, {kT, cols});
  expect_invalid([&] {
    ops->ce_bwd(over_logits, view(logits, {kT, cols}), view(p.row_max, {kT}), view(p.sumexp, {kT}),
                view(targets, {kT}), view(scale, {kT}), start, valid);
  });
}

TEST(OpsCrossEntropy, RejectsMismatchedShapes) {
  auto ops = backend::make_cpu_ops(1);
  std::vector<float> logits(kT * 4), row_max(kT - 1);
  expect_invalid([&] { ops->ce_row_max(view(row_max, {kT - 1}), view(logits, {kT, 4}), 0, 4); });
}

}  // namespace
}  // namespace mpt::test
