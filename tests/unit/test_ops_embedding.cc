#include <cstring>

#include "test_ops_util.h"

namespace mpt::test {
namespace {

constexpr int64_t kVocab = 6, kH = 70, kStart = 4;  // this table holds ids [4, 10)

std::vector<int32_t> ids() { return {4, 9, 3, 10, 5, 4, -1, 7, 4, 100}; }

TEST(OpsEmbedding, ForwardLooksUpRowsInRangeAndZerosOthers) {
  auto ops = backend::make_cpu_ops(2);
  std::vector<float> table = random_vector(kVocab * kH, 1);
  std::vector<int32_t> id = ids();
  const int64_t t = static_cast<int64_t>(id.size());
  std::vector<float> out(t * kH, 5.0f);
  ops->embedding_fwd(view(out, {t, kH}), view(id, {t}), view(table, {kVocab, kH}), kStart, false);
  for (int64_t i = 0; i < t; ++i) {
    const int64_t row = id[i] - kStart;
    for (int64_t j = 0; j < kH; ++j)
      EXPECT_EQ(out[i * kH + j], row >= 0 && row < kVocab ? table[row * kH + j] : 0.0f) << "token " << i;
  }
  std::vector<float> acc = random_vector(t * kH, 2), base = acc;
  ops->embedding_fwd(view(acc, {t, kH}), view(id, {t}), view(table, {kVocab, kH}), kStart, true);
  for (int64_t i = 0; i < t * kH; ++i) EXPECT_EQ(acc[i], base[i] + out[i]);
}

TEST(OpsEmbedding, BackwardGradient) {
  auto ops = backend::make_cpu_ops(2);
  std::vector<float> table = random_vector(kVocab * kH, 3);
  std::vector<int32_t> id = ids();
  const int64_t t = static_cast<int64_t>(id.size());
  std::vector<float> r = random_vector(t * kH, 4), out(t * kH);
  std::vector<float> d0 = random_vector(kVocab * kH, 5), dtable = d0;
  ops->embedding_bwd(view(dtable, {kVocab, kH}), view(id, {t}), view(r, {t, kH}), kStart);
  for (size_t i = 0; i < dtable.size(); ++i) dtable[i] -= d0[i];  // it accumulates
  auto loss = [&] {
    ops->embedding_fwd(view(out, {t, kH}), view(id, {t}), view(table, {kVocab, kH}), kStart, false);
    return inner(r, out);
  };
  expect_gradient("embedding dtable", table, dtable, loss);
}

TEST(OpsEmbedding, BackwardIsDeterministic) {
  const int64_t t = 3000, h = 200, vocab = 37;
  std::vector<int32_t> id(t);
  for (int64_t i = 0; i < t; ++i) id[i] = static_cast<int32_t>((i * 7919) % vocab);  // many repeats
  std::vector<float> dout = random_vector(t * h, 6);
  auto run = [&](int threads) {
    auto ops = backend::make_cpu_ops(threads);
    std::vector<float> d(vocab * h, 0.0f);
    ops->embedding_bwd(view(d, {vocab, h}), view(id, {t}), view(dout, {t, h}), 0);
    return d;
  };
  const std::vector<float> a = run(2), b = run(2), c = run(1);
  EXPECT_EQ(std::memcmp(a.data(), b.data(), a.size() * 4), 0);
  EXPECT_EQ(std::memcmp(a.data(), c.data(), a.size() * 4), 0);
}

TEST(OpsEmbedding, RejectsMismatchedShapes) {
  auto ops = backend::make_cpu_ops(1);
  std::vector<float> table(kVocab * kH), out(3 * kH);
  std::vector<int32_t> id = {1, 2};
  expect_invalid([&] { ops->embedding_fwd(view(out, {3, kH}), view(id, {2}), view(table, {kVocab, kH}), 0, false); });
  std::vector<float> fid(2);
  expect_invalid([&] { ops->embedding_fwd(view(out, {2, kH}), view(fid, {2}), view(table, {kVocab, kH}), 0, false); });
}

}  // namespace
}  // namespace mpt::test
