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

}  // namespace
}  // namespace mpt::test
