// qkv_split / qkv_merge against Megatron's layout, and the fused qkv_split_rope /
// qkv_merge_rope against the ops they fuse (bit for bit), with their adjoint property.
#include "test_ops_util.h"

namespace mpt::test {
namespace {

constexpr int64_t kT = 3, kGroups = 2, kHpg = 3, kDim = 4;
constexpr int64_t kWidth = kGroups * (kHpg + 2) * kDim, kQ = kGroups * kHpg * kDim, kKV = kGroups * kDim;

TEST(OpsQkv, SplitFollowsMegatronLayout) {
  auto ops = backend::make_cpu_ops(2);
  std::vector<float> qkv(kT * kWidth);
  for (size_t i = 0; i < qkv.size(); ++i) qkv[i] = static_cast<float>(i);
  std::vector<float> q(kT * kQ), k(kT * kKV), v(kT * kKV);
  ops->qkv_split(view(q, {kT, kQ}), view(k, {kT, kKV}), view(v, {kT, kKV}), view(qkv, {kT, kWidth}), kGroups, kHpg,
                 kDim);
  for (int64_t t = 0; t < kT; ++t)
    for (int64_t g = 0; g < kGroups; ++g)
      for (int64_t c = 0; c < kDim; ++c) {
        const int64_t base = t * kWidth + g * (kHpg + 2) * kDim + c;
        for (int64_t j = 0; j < kHpg; ++j) EXPECT_EQ(q[t * kQ + (g * kHpg + j) * kDim + c], qkv[base + j * kDim]);
        EXPECT_EQ(k[t * kKV + g * kDim + c], qkv[base + kHpg * kDim]);
        EXPECT_EQ(v[t * kKV + g * kDim + c], qkv[base + (kHpg + 1) * kDim]);
      }
}

TEST(OpsQkv, MergeInvertsSplitAndIsItsAdjoint) {
  auto ops = backend::make_cpu_ops(2);
  std::vector<float> qkv = random_vector(kT * kWidth, 1), q(kT * kQ), k(kT * kKV), v(kT * kKV);
  ops->qkv_split(view(q, {kT, kQ}), view(k, {kT, kKV}), view(v, {kT, kKV}), view(qkv, {kT, kWidth}), kGroups, kHpg,
                 kDim);
  std::vector<float> back(kT * kWidth, -1.0f);
  ops->qkv_merge(view(back, {kT, kWidth}), view(q, {kT, kQ}), view(k, {kT, kKV}), view(v, {kT, kKV}), kGroups, kHpg,
                 kDim);
  EXPECT_EQ(back, qkv);
  // <split(x), (a, b, c)> == <x, merge(a, b, c)>
  std::vector<float> a = random_vector(kT * kQ, 2), b = random_vector(kT * kKV, 3), c = random_vector(kT * kKV, 4);
  std::vector<float> merged(kT * kWidth);
  ops->qkv_merge(view(merged, {kT, kWidth}), view(a, {kT, kQ}), view(b, {kT, kKV}), view(c, {kT, kKV}), kGroups, kHpg,
                 kDim);
  EXPECT_NEAR(inner(q, a) + inner(k, b) + inner(v, c), inner(qkv, merged), 1e-9);
}

TEST(OpsQkv, RejectsMismatchedShapes) {
  auto ops = backend::make_cpu_ops(1);
  std::vector<float> qkv(kT * kWidth), q(kT * kQ), k(kT * kKV), v(kT * kKV - 1);
  expect_invalid([&] {
    ops->qkv_split(view(q, {kT, kQ}), view(k, {kT, kKV}), view(v, {kT * kKV - 1}), view(qkv, {kT, kWidth}), kGroups,
                   kHpg, kDim);
  });
  expect_invalid([&] {
    ops->qkv_split(view(q, {kT, kQ}), view(k, {kT, kKV}), view(v, {kT * kKV - 1}), view(qkv, {kT, kWidth}), 0, kHpg,
                   kDim);
  });
}

// Positions of kT tokens, not in order (as under context parallelism).
std::vector<int32_t> positions() { return {5, 0, 17}; }

// qkv_split_rope equals qkv_split then rope on q and k, and qkv_merge_rope equals rope
// (inverse) on dq and dk then qkv_merge, bit for bit, for partial and full rotary widths.
TEST(OpsQkv, FusedRopeEqualsSplitThenRope) {
  auto ops = backend::make_cpu_ops(2);
  std::vector<int32_t> pos = positions();
  for (int64_t rotary : {kDim, int64_t{2}}) {
    std::vector<float> qkv = random_vector(kT * kWidth, 7);
    std::vector<float> q(kT * kQ), k(kT * kKV), v(kT * kKV), q2(kT * kQ), k2(kT * kKV), v2(kT * kKV);
    ops->qkv_split(view(q, {kT, kQ}), view(k, {kT, kKV}), view(v, {kT, kKV}), view(qkv, {kT, kWidth}), kGroups, kHpg,
                   kDim);
    ops->rope(view(q, {kT, kQ}), view(pos, {kT}), kGroups * kHpg, kDim, rotary, 10000.0f, false);
    ops->rope(view(k, {kT, kKV}), view(pos, {kT}), kGroups, kDim, rotary, 10000.0f, false);
    ops->qkv_split_rope(view(q2, {kT, kQ}), view(k2, {kT, kKV}), view(v2, {kT, kKV}), view(qkv, {kT, kWidth}),
                        kGroups, kHpg, kDim, view(pos, {kT}), rotary, 10000.0f);
    EXPECT_EQ(q2, q) << "rotary " << rotary;
    EXPECT_EQ(k2, k) << "rotary " << rotary;
    EXPECT_EQ(v2, v) << "rotary " << rotary;

    std::vector<float> dq = random_vector(kT * kQ, 8), dk = random_vector(kT * kKV, 9);
    std::vector<float> dv = random_vector(kT * kKV, 10);
    std::vector<float> dq2 = dq, dk2 = dk, want(kT * kWidth), got(kT * kWidth, -1.0f);
    ops->rope(view(dq, {kT, kQ}), view(pos, {kT}), kGroups * kHpg, kDim, rotary, 10000.0f, true);
    ops->rope(view(dk, {kT, kKV}), view(pos, {kT}), kGroups, kDim, rotary, 10000.0f, true);
    ops->qkv_merge(view(want, {kT, kWidth}), view(dq, {kT, kQ}), view(dk, {kT, kKV}), view(dv, {kT, kKV}), kGroups,
                   kHpg, kDim);
    ops->qkv_merge_rope(view(got, {kT, kWidth}), view(dq2, {kT, kQ}), view(dk2, {kT, kKV}), view(dv, {kT, kKV}),
                        kGroups, kHpg, kDim, view(pos, {kT}), rotary, 10000.0f);
    EXPECT_EQ(got, want) << "rotary " << rotary;
  }
}

// The fused backward is the transpose of the fused forward: <split_rope(x), (a, b, c)> ==
// <x, merge_rope(a, b, c)>; so the layer's gradient through it is the true one.
TEST(OpsQkv, FusedRopeBackwardIsTheAdjoint) {
  auto ops = backend::make_cpu_ops(2);
  std::vector<int32_t> pos = positions();
  std::vector<float> x = random_vector(kT * kWidth, 11), q(kT * kQ), k(kT * kKV), v(kT * kKV);
  ops->qkv_split_rope(view(q, {kT, kQ}), view(k, {kT, kKV}), view(v, {kT, kKV}), view(x, {kT, kWidth}), kGroups, kHpg,
                      kDim, view(pos, {kT}), kDim, 500.0f);
  std::vector<float> a = random_vector(kT * kQ, 12), b = random_vector(kT * kKV, 13), c = random_vector(kT * kKV, 14);
  const double lhs = inner(q, a) + inner(k, b) + inner(v, c);
  std::vector<float> merged(kT * kWidth);
  ops->qkv_merge_rope(view(merged, {kT, kWidth}), view(a, {kT, kQ}), view(b, {kT, kKV}), view(c, {kT, kKV}), kGroups,
                      kHpg, kDim, view(pos, {kT}), kDim, 500.0f);
  EXPECT_NEAR(lhs, inner(x, merged), 1e-5 * (1 + std::fabs(lhs)));
}

TEST(OpsQkv, FusedRopeRejectsBadArguments) {
  auto ops = backend::make_cpu_ops(1);
  std::vector<float> qkv(kT * kWidth), q(kT * kQ), k(kT * kKV), v(kT * kKV);
  std::vector<int32_t> pos = positions(), short_pos(kT - 1);
  expect_invalid([&] {  // odd rotary width
    ops->qkv_split_rope(view(q, {kT, kQ}), view(k, {kT, kKV}), view(v, {kT, kKV}), view(qkv, {kT, kWidth}), kGroups,
                        kHpg, kDim, view(pos, {kT}), 3, 10000.0f);
  });
  expect_invalid([&] {  // a position per token
    ops->qkv_merge_rope(view(qkv, {kT, kWidth}), view(q, {kT, kQ}), view(k, {kT, kKV}), view(v, {kT, kKV}), kGroups,
                        kHpg, kDim, view(short_pos, {kT - 1}), kDim, 10000.0f);
  });
}

}  // namespace
}  // namespace mpt::test
