// The CUDA attention ops (src/cuda/cuda_attention.cu) against the CPU oracle: forward,
// backward and merge over MHA, GQA and MQA, causal and full masks, fewer queries than keys,
// dropout keyed by non-trivial positions and head offsets, odd lengths and head dims that
// are not multiples of the tile sizes, and calls over parts of a sequence (context
// parallelism) that must reproduce one call over the whole of it.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <string>
#include <tuple>
#include <vector>

#include "device_util.h"

namespace mpt::device_testing {
namespace {

using backend::AttentionDims;

constexpr double kTol = 1e-5;
constexpr float kInf = std::numeric_limits<float>::infinity();

std::string label(const AttentionDims& d) {
  return "sq=" + std::to_string(d.seq_q) + " skv=" + std::to_string(d.seq_kv) + " B=" + std::to_string(d.batch) +
         " H=" + std::to_string(d.heads) + " G=" + std::to_string(d.groups) + " D=" + std::to_string(d.head_dim) +
         (d.causal ? " causal" : " full") + " p=" + std::to_string(d.dropout_p);
}

// The values of a host tensor, as a vector.
std::vector<float> host_f32(Pair& p) { return std::vector<float>(p.f(), p.f() + p.numel()); }

// One attention problem on both backends, run on both.
struct Problem : AttentionTensors {
  using AttentionTensors::AttentionTensors;

  void forward(Backends& b) {
    b.cpu->attention_fwd(out->cpu(), lse->cpu(), q->cpu(), k->cpu(), v->cpu(), d);
    b.gpu->attention_fwd(out->gpu_t(), lse->gpu_t(), q->gpu_t(), k->gpu_t(), v->gpu_t(), d);
  }
  // Both backends take the CPU's out and lse, so the backward is compared on equal inputs.
  void backward(Backends& b) {
    out->upload();
    lse->upload();
    b.cpu->attention_bwd(dq->cpu(), dk->cpu(), dv->cpu(), dout->cpu(), q->cpu(), k->cpu(), v->cpu(), out->cpu(),
                         lse->cpu(), d);
    b.gpu->attention_bwd(dq->gpu_t(), dk->gpu_t(), dv->gpu_t(), dout->gpu_t(), q->gpu_t(), k->gpu_t(), v->gpu_t(),
                         out->gpu_t(), lse->gpu_t(), d);
  }
};

void check_problem(const AttentionDims& d, uint64_t seed) {
  SCOPED_TRACE(label(d));
  Backends b;
  Problem p(b, d, seed);
  p.forward(b);
  expect_close(*p.out, kTol, "out");
  expect_close(*p.lse, kTol, "lse");
  p.backward(b);
  expect_close(*p.dq, kTol, "dq");
  expect_close(*p.dk, kTol, "dk");
  expect_close(*p.dv, kTol, "dv");
}

// Dropout masks keyed by positions that are neither 0-based nor contiguous, and a head
// offset: the GPU must draw exactly the CPU's mask elements.
AttentionDims with_positions(AttentionDims d) {
  d.q_pos = {100, d.seq_q / 3, 7};
  d.kv_pos = {9, d.seq_kv / 2, 300};
  d.mask_seq = 300 + d.seq_kv;
  d.head_offset = 6;
  return d;
}

// seq_q, seq_kv, batch, heads, groups, head_dim, causal, dropout
TEST(CudaAttention, MhaCausal) {
  MPT_SKIP_WITHOUT_GPU();
  check_problem(attention_dims(37, 37, 2, 4, 4, 64, true, 0), 1);
}
TEST(CudaAttention, MhaFull) {
  MPT_SKIP_WITHOUT_GPU();
  check_problem(attention_dims(45, 45, 2, 2, 2, 64, false, 0), 2);
}
TEST(CudaAttention, GqaFullMoreKeys) {
  MPT_SKIP_WITHOUT_GPU();
  check_problem(attention_dims(33, 70, 2, 8, 2, 128, false, 0), 3);
}
TEST(CudaAttention, GqaCausalLong) {
  MPT_SKIP_WITHOUT_GPU();
  check_problem(attention_dims(300, 300, 2, 8, 2, 128, true, 0), 4);
}
TEST(CudaAttention, MqaCausal) {
  MPT_SKIP_WITHOUT_GPU();
  check_problem(attention_dims(129, 129, 3, 6, 1, 64, true, 0), 5);
}
// Fewer queries than keys under a causal mask: the queries are the last seq_q positions.
TEST(CudaAttention, CausalBottomRight) {
  MPT_SKIP_WITHOUT_GPU();
  check_problem(attention_dims(19, 77, 2, 4, 2, 80, true, 0), 6);
  check_problem(attention_dims(70, 200, 1, 2, 2, 64, true, 0), 7);
  check_problem(attention_dims(1, 65, 2, 2, 1, 16, true, 0), 8);
}
// More queries than keys (no mask) and tiny problems.
TEST(CudaAttention, EdgeShapes) {
  MPT_SKIP_WITHOUT_GPU();
  check_problem(attention_dims(90, 20, 2, 2, 1, 48, false, 0), 9);
  check_problem(attention_dims(1, 1, 1, 1, 1, 1, true, 0), 10);
  check_problem(attention_dims(1, 3, 1, 3, 3, 5, false, 0), 11);
}
// Every head_dim class (16 -> 32, 64, 80 -> 128, 128, 200 -> 256, 256), with odd head dims
// taking the scalar tile loads.
TEST(CudaAttention, HeadDims) {
  MPT_SKIP_WITHOUT_GPU();
  for (int64_t dim : {16, 33, 64, 80, 128, 130, 200, 256})
    check_problem(attention_dims(67, 67, 2, 4, 2, dim, true, 0), 20 + dim);
}
TEST(CudaAttention, Dropout) {
  MPT_SKIP_WITHOUT_GPU();
  check_problem(attention_dims(65, 65, 2, 4, 2, 64, true, 0.1f), 30);
  check_problem(attention_dims(33, 50, 2, 4, 4, 128, false, 0.1f), 31);
  check_problem(attention_dims(35, 35, 1, 2, 1, 256, true, 0.1f), 32);
}
TEST(CudaAttention, DropoutWithPositions) {
  MPT_SKIP_WITHOUT_GPU();
  check_problem(with_positions(attention_dims(21, 45, 2, 4, 2, 16, true, 0.1f)), 40);
  check_problem(with_positions(attention_dims(70, 70, 3, 3, 1, 36, true, 0.1f)), 41);
  check_problem(with_positions(attention_dims(40, 90, 2, 4, 2, 80, false, 0.3f)), 42);
}

// Unaligned views (one float past a 16-byte boundary) take the scalar tile loads.
TEST(CudaAttention, UnalignedViews) {
  MPT_SKIP_WITHOUT_GPU();
  const auto d = attention_dims(50, 50, 2, 2, 1, 64, true, 0.1f);
  SCOPED_TRACE(label(d));
  Backends b;
  Problem p(b, d, 50);
  auto shifted = [&](Pair& x, uint64_t seed) {
    auto big = b.f32({x.numel() + 1}, seed);
    std::memcpy(big->f() + 1, x.f(), x.host.size());
    big->upload();
    return big;
  };
  auto q = shifted(*p.q, 51), k = shifted(*p.k, 52), v = shifted(*p.v, 53);
  auto view = [](Pair& big, const Pair& like) {
    Tensor t = like.make(static_cast<float*>(big.dev) + 1);
    return t;
  };
  p.forward(b);
  auto out = b.f32({p.out->numel() + 1}, 54), lse = b.f32({p.lse->numel() + 1}, 55);
  b.gpu->attention_fwd(view(*out, *p.out), view(*lse, *p.lse), view(*q, *p.q), view(*k, *p.k), view(*v, *p.v), d);
  const std::vector<float> got_out = out->download_f32(), got_lse = lse->download_f32();
  EXPECT_LE(scaled_error(std::vector<float>(got_out.begin() + 1, got_out.end()), p.out->f(), p.out->numel()), kTol);
  EXPECT_LE(scaled_error(std::vector<float>(got_lse.begin() + 1, got_lse.end()), p.lse->f(), p.lse->numel()), kTol);

  p.backward(b);
  auto dq = b.f32({p.dq->numel() + 1}, 56), dk = b.f32({p.dk->numel() + 1}, 57), dv = b.f32({p.dv->numel() + 1}, 58);
  auto dout = shifted(*p.dout, 59), o = shifted(*p.out, 60), l = shifted(*p.lse, 61);
  b.gpu->attention_bwd(view(*dq, *p.dq), view(*dk, *p.dk), view(*dv, *p.dv), view(*dout, *p.dout), view(*q, *p.q),
                       view(*k, *p.k), view(*v, *p.v), view(*o, *p.out), view(*l, *p.lse), d);
  for (auto [got, want, name] : {std::tuple{dq.get(), p.dq.get(), "dq"}, std::tuple{dk.get(), p.dk.get(), "dk"},
                                  std::tuple{dv.get(), p.dv.get(), "dv"}}) {
    const std::vector<float> g = got->download_f32();
    EXPECT_LE(scaled_error(std::vector<float>(g.begin() + 1, g.end()), want->f(), want->numel()), kTol) << name;
  }
}

// The same call twice gives the same bits (no atomics, fixed-order sums).
TEST(CudaAttention, Deterministic) {
  MPT_SKIP_WITHOUT_GPU();
  const auto d = with_positions(attention_dims(150, 150, 2, 8, 2, 64, true, 0.1f));
  Backends b;
  Problem p(b, d, 70);
  std::vector<std::vector<float>> first;
  for (int run = 0; run < 2; ++run) {
    b.gpu->attention_fwd(p.out->gpu_t(), p.lse->gpu_t(), p.q->gpu_t(), p.k->gpu_t(), p.v->gpu_t(), d);
    b.gpu->attention_bwd(p.dq->gpu_t(), p.dk->gpu_t(), p.dv->gpu_t(), p.dout->gpu_t(), p.q->gpu_t(), p.k->gpu_t(),
                         p.v->gpu_t(), p.out->gpu_t(), p.lse->gpu_t(), d);
    std::vector<std::vector<float>> now = {p.out->download_f32(), p.lse->download_f32(), p.dq->download_f32(),
                                           p.dk->download_f32(), p.dv->download_f32()};
    if (run == 0) {
      first = std::move(now);
      continue;
    }
    for (size_t t = 0; t < now.size(); ++t)
      EXPECT_EQ(std::memcmp(now[t].data(), first[t].data(), now[t].size() * sizeof(float)), 0) << "output " << t;
  }
}

// Rows [s0, s1) of sequence positions of a token-major host tensor, per_pos values each.
std::vector<float> positions(const std::vector<float>& x, int64_t s0, int64_t s1, int64_t per_pos) {
  return std::vector<float>(x.begin() + s0 * per_pos, x.begin() + s1 * per_pos);
}

// A device tensor holding the given host values.
std::unique_ptr<Pair> upload(Backends& b, std::vector<int64_t> shape, const std::vector<float>& values) {
  auto p = b.f32(std::move(shape));
  EXPECT_EQ(static_cast<size_t>(p->numel()), values.size());
  std::memcpy(p->f(), values.data(), values.size() * sizeof(float));
  p->upload();
  return p;
}

std::vector<float> concat(std::vector<float> a, const std::vector<float>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

void expect_close_to(const std::vector<float>& got, const std::vector<float>& want, const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  const double e = scaled_error(got, want.data(), want.size());
  EXPECT_LE(e, kTol) << what << ": differs by " << e << " (scaled)";
}

// The positions of rows [s0, ...) of a call whose rows sit at p.
backend::SeqPositions from_row(const backend::SeqPositions& p, int64_t s0) {
  if (s0 < p.split) return {p.first + s0, p.split - s0, p.second};
  return {p.second + (s0 - p.split), INT64_MAX, 0};
}

int64_t mask_seq_of(const AttentionDims& d) { return d.mask_seq > 0 ? d.mask_seq : d.seq_kv; }

// Keys split into two calls (context parallelism): on the GPU, merging the calls' (out,
// lse) with attention_merge gives one call's over all keys, and each call's backward given
// the whole call's out and lse gives its share of dq (summed) and its rows of dk/dv.
void check_key_split(const AttentionDims& whole, int64_t split, uint64_t seed) {
  SCOPED_TRACE(label(whole) + " split at " + std::to_string(split));
  Backends b;
  Problem p(b, whole, seed);
  p.forward(b);
  expect_close(*p.out, kTol, "whole out");
  expect_close(*p.lse, kTol, "whole lse");
  p.backward(b);  // the whole call's gradients on the CPU; the device now holds the CPU's out/lse

  const int64_t per_kv = whole.batch * whole.groups * whole.head_dim, tq = whole.seq_q * whole.batch;
  const int64_t hd = whole.heads * whole.head_dim, gd = whole.groups * whole.head_dim;
  auto first = whole, second = whole;
  first.seq_kv = split;
  first.mask_seq = mask_seq_of(whole);
  second.seq_kv = whole.seq_kv - split;
  second.kv_pos = from_row(whole.kv_pos, split);
  second.mask_seq = mask_seq_of(whole);
  const std::vector<float> k = host_f32(*p.k), v = host_f32(*p.v);
  auto k1 = upload(b, {split * whole.batch, gd}, positions(k, 0, split, per_kv));
  auto v1 = upload(b, {split * whole.batch, gd}, positions(v, 0, split, per_kv));
  auto k2 = upload(b, {(whole.seq_kv - split) * whole.batch, gd}, positions(k, split, whole.seq_kv, per_kv));
  auto v2 = upload(b, {(whole.seq_kv - split) * whole.batch, gd}, positions(v, split, whole.seq_kv, per_kv));

  // Running result: lse -inf and out NaN (no keys yet), then both parts.
  auto merged_out = upload(b, {tq, hd}, std::vector<float>(tq * hd, std::nanf("")));
  auto merged_lse = upload(b, {tq, whole.heads}, std::vector<float>(tq * whole.heads, -kInf));
  auto part_out = b.f32({tq, hd}), part_lse = b.f32({tq, whole.heads});
  for (int part = 0; part < 2; ++part) {
    const AttentionDims& d = part == 0 ? first : second;
    Pair& kp = part == 0 ? *k1 : *k2;
    Pair& vp = part == 0 ? *v1 : *v2;
    b.gpu->attention_fwd(part_out->gpu_t(), part_lse->gpu_t(), p.q->gpu_t(), kp.gpu_t(), vp.gpu_t(), d);
    b.gpu->attention_merge(merged_out->gpu_t(), merged_lse->gpu_t(), part_out->gpu_t(), part_lse->gpu_t(),
                           whole.heads, whole.head_dim);
  }
  expect_close_to(merged_out->download_f32(), host_f32(*p.out), "merged out");
  expect_close_to(merged_lse->download_f32(), host_f32(*p.lse), "merged lse");

  std::vector<float> dq(tq * hd, 0.0f), dk, dv;
  for (int part = 0; part < 2; ++part) {
    const AttentionDims& d = part == 0 ? first : second;
    Pair& kp = part == 0 ? *k1 : *k2;
    Pair& vp = part == 0 ? *v1 : *v2;
    auto gq = b.f32({tq, hd}, 90), gk = b.f32(kp.shape, 91), gv = b.f32(vp.shape, 92);
    b.gpu->attention_bwd(gq->gpu_t(), gk->gpu_t(), gv->gpu_t(), p.dout->gpu_t(), p.q->gpu_t(), kp.gpu_t(),
                         vp.gpu_t(), p.out->gpu_t(), p.lse->gpu_t(), d);
    const std::vector<float> part_dq = gq->download_f32();
    for (size_t i = 0; i < dq.size(); ++i) dq[i] += part_dq[i];
    dk = concat(dk, gk->download_f32());
    dv = concat(dv, gv->download_f32());
  }
  expect_close_to(dq, host_f32(*p.dq), "dq summed over the key blocks");
  expect_close_to(dk, host_f32(*p.dk), "dk of the key blocks");
  expect_close_to(dv, host_f32(*p.dv), "dv of the key blocks");
}

TEST(CudaAttention, KeySplitMergeAndBackward) {
  MPT_SKIP_WITHOUT_GPU();
  check_key_split(attention_dims(20, 90, 2, 4, 2, 32, false, 0), 37, 100);
  check_key_split(attention_dims(70, 150, 2, 4, 4, 128, false, 0), 64, 110);
}
TEST(CudaAttention, KeySplitMergeAndBackwardWithDropout) {
  MPT_SKIP_WITHOUT_GPU();
  check_key_split(attention_dims(20, 90, 1, 4, 2, 64, false, 0.1f), 64, 120);
  check_key_split(with_positions(attention_dims(33, 71, 2, 2, 1, 80, false, 0.1f)), 30, 130);
}

// A causal call cut into query halves (the first half over the first half of the keys, the
// second over all keys, keyed by their global positions) reproduces the whole call's rows,
// dropout included; dq rows match and dk/dv are the sum of the halves'.
TEST(CudaAttention, CausalQueryHalvesMatchWholeCall) {
  MPT_SKIP_WITHOUT_GPU();
  const int64_t S = 100, half = 50;
  const auto whole = with_positions(attention_dims(S, S, 2, 4, 2, 64, true, 0.1f));
  SCOPED_TRACE(label(whole));
  Backends b;
  Problem p(b, whole, 140);
  p.forward(b);
  p.backward(b);
  const int64_t per_q = whole.batch * whole.heads * whole.head_dim,
                per_kv = whole.batch * whole.groups * whole.head_dim;
  const int64_t hd = whole.heads * whole.head_dim, gd = whole.groups * whole.head_dim, B = whole.batch;
  auto first = whole, second = whole;
  first.seq_q = first.seq_kv = half;
  first.mask_seq = mask_seq_of(whole);
  second.seq_q = S - half;
  second.q_pos = from_row(whole.q_pos, half);

  const std::vector<float> q = host_f32(*p.q), dout = host_f32(*p.dout), k = host_f32(*p.k), v = host_f32(*p.v);
  auto q1 = upload(b, {half * B, hd}, positions(q, 0, half, per_q));
  auto q2 = upload(b, {(S - half) * B, hd}, positions(q, half, S, per_q));
  auto g1 = upload(b, {half * B, hd}, positions(dout, 0, half, per_q));
  auto g2 = upload(b, {(S - half) * B, hd}, positions(dout, half, S, per_q));
  auto k1 = upload(b, {half * B, gd}, positions(k, 0, half, per_kv));
  auto v1 = upload(b, {half * B, gd}, positions(v, 0, half, per_kv));

  auto o1 = b.f32({half * B, hd}), l1 = b.f32({half * B, whole.heads});
  auto o2 = b.f32({(S - half) * B, hd}), l2 = b.f32({(S - half) * B, whole.heads});
  b.gpu->attention_fwd(o1->gpu_t(), l1->gpu_t(), q1->gpu_t(), k1->gpu_t(), v1->gpu_t(), first);
  b.gpu->attention_fwd(o2->gpu_t(), l2->gpu_t(), q2->gpu_t(), p.k->gpu_t(), p.v->gpu_t(), second);
  expect_close_to(concat(o1->download_f32(), o2->download_f32()), host_f32(*p.out), "out");
  expect_close_to(concat(l1->download_f32(), l2->download_f32()), host_f32(*p.lse), "lse");

  auto dq1 = b.f32({half * B, hd}, 1), dk1 = b.f32({half * B, gd}, 2), dv1 = b.f32({half * B, gd}, 3);
  auto dq2 = b.f32({(S - half) * B, hd}, 4), dk2 = b.f32({S * B, gd}, 5), dv2 = b.f32({S * B, gd}, 6);
  b.gpu->attention_bwd(dq1->gpu_t(), dk1->gpu_t(), dv1->gpu_t(), g1->gpu_t(), q1->gpu_t(), k1->gpu_t(), v1->gpu_t(),
                       o1->gpu_t(), l1->gpu_t(), first);
  b.gpu->attention_bwd(dq2->gpu_t(), dk2->gpu_t(), dv2->gpu_t(), g2->gpu_t(), q2->gpu_t(), p.k->gpu_t(),
                       p.v->gpu_t(), o2->gpu_t(), l2->gpu_t(), second);
  expect_close_to(concat(dq1->download_f32(), dq2->download_f32()), host_f32(*p.dq), "dq");
  std::vector<float> dk = dk2->download_f32(), dv = dv2->download_f32();
  const std::vector<float> dk_first = dk1->download_f32(), dv_first = dv1->download_f32();
  for (size_t i = 0; i < dk_first.size(); ++i) {
    dk[i] += dk_first[i];
    dv[i] += dv_first[i];
  }
  expect_close_to(dk, host_f32(*p.dk), "dk summed over the halves");
  expect_close_to(dv, host_f32(*p.dv), "dv summed over the halves");
}

// Merge rows: empty running result, empty part, both empty, far-apart lse, equal lse and
// plain pairs, against the CPU; rows taken or kept as they are match bit for bit.
TEST(CudaAttention, MergeRows) {
  MPT_SKIP_WITHOUT_GPU();
  Backends b;
  const int64_t T = 37, H = 3, D = 70;  // 111 rows: not a multiple of the rows per block
  const float nan = std::nanf("");
  auto out = b.f32({T, H * D}, 200), lse = b.f32({T, H}, 201, 3.0f);
  auto part_out = b.f32({T, H * D}, 202), part_lse = b.f32({T, H}, 203, 3.0f);
  for (int64_t r = 0; r < T * H; ++r) {
    switch (r % 6) {
      case 0:  // no keys yet: out is garbage and must not be read
        lse->f()[r] = -kInf;
        for (int64_t c = 0; c < D; ++c) out->f()[r * D + c] = nan;
        break;
      case 1:  // the part saw no keys: part_out must not be read
        part_lse->f()[r] = -kInf;
        for (int64_t c = 0; c < D; ++c) part_out->f()[r * D + c] = nan;
        break;
      case 2:  // neither
        lse->f()[r] = part_lse->f()[r] = -kInf;
        break;
      case 3:  // far apart: exp would overflow in float
        lse->f()[r] = 1000.0f;
        part_lse->f()[r] = 990.0f;
        break;
      case 4:
        part_lse->f()[r] = lse->f()[r];
        break;
      default:
        break;
    }
  }
  for (Pair* x : {out.get(), lse.get(), part_out.get(), part_lse.get()}) x->upload();
  b.cpu->attention_merge(out->cpu(), lse->cpu(), part_out->cpu(), part_lse->cpu(), H, D);
  b.gpu->attention_merge(out->gpu_t(), lse->gpu_t(), part_out->gpu_t(), part_lse->gpu_t(), H, D);
  const std::vector<float> got_out = out->download_f32(), got_lse = lse->download_f32();
  for (int64_t r = 0; r < T * H; ++r) {
    if (r % 6 > 2) continue;
    EXPECT_EQ(std::memcmp(&got_lse[r], &lse->f()[r], sizeof(float)), 0) << "lse row " << r;
    EXPECT_EQ(std::memcmp(&got_out[r * D], &out->f()[r * D], D * sizeof(float)), 0) << "out row " << r;
  }
  expect_close(*out, kTol, "out");
  // lse with the -inf rows compared exactly above; the finite ones here.
  for (int64_t r = 0; r < T * H; ++r) {
    if (r % 6 <= 2) continue;
    EXPECT_NEAR(got_lse[r], lse->f()[r], kTol * std::max(1.0f, std::fabs(lse->f()[r]))) << r;
  }
}

TEST(CudaAttention, MergeOfNoRowsDoesNothing) {
  MPT_SKIP_WITHOUT_GPU();
  Backends b;
  auto out = b.f32({0, 8}), lse = b.f32({0, 2}), part_out = b.f32({0, 8}), part_lse = b.f32({0, 2});
  b.gpu->attention_merge(out->gpu_t(), lse->gpu_t(), part_out->gpu_t(), part_lse->gpu_t(), 2, 4);
  b.gpu->synchronize();
}

template <typename F>
void expect_status(F f, Status status, const std::string& needle, const std::string& what) {
  try {
    f();
    ADD_FAILURE() << what << ": expected an error";
  } catch (const Error& e) {
    EXPECT_EQ(e.status(), status) << what << ": " << e.what();
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << what << ": " << e.what();
  }
}

TEST(CudaAttention, RejectsBadArguments) {
  MPT_SKIP_WITHOUT_GPU();
  Backends b;
  const auto good = attention_dims(8, 8, 2, 4, 2, 16, true, 0);
  Problem p(b, good, 300);
  auto fwd = [&](const AttentionDims& d) {
    return [&b, &p, d] {
      b.gpu->attention_fwd(p.out->gpu_t(), p.lse->gpu_t(), p.q->gpu_t(), p.k->gpu_t(), p.v->gpu_t(), d);
    };
  };
  auto bwd = [&](const AttentionDims& d) {
    return [&b, &p, d] {
      b.gpu->attention_bwd(p.dq->gpu_t(), p.dk->gpu_t(), p.dv->gpu_t(), p.dout->gpu_t(), p.q->gpu_t(), p.k->gpu_t(),
                           p.v->gpu_t(), p.out->gpu_t(), p.lse->gpu_t(), d);
    };
  };
  auto d = good;
  d.groups = 3;
  expect_status(fwd(d), Status::kInvalidArgument, "multiple of groups", "heads % groups");
  d = good;
  d.seq_q = 16;
  d.seq_kv = 4;
  expect_status(fwd(d), Status::kInvalidArgument, "seq_q <= seq_kv", "causal with more queries");
  d = good;
  d.head_dim = 32;
  expect_status(fwd(d), Status::kInvalidArgument, "q F32[16,64] must hold", "q numel");
  d = good;
  d.dropout_p = 1.0f;
  expect_status(bwd(d), Status::kInvalidArgument, "dropout_p", "dropout 1");
  d = good;
  d.dropout_p = 0.1f;
  d.kv_pos.first = 5;  // reaches 12, not below mask_seq 8
  expect_status(fwd(d), Status::kInvalidArgument, "mask_seq", "kv positions past mask_seq");
  d = good;
  d.softmax_scale = 0;
  expect_status(bwd(d), Status::kInvalidArgument, "softmax_scale", "scale 0");
  d = good;
  d.seq_q = 0;
  expect_status(fwd(d), Status::kInvalidArgument, "dims must be positive", "empty");

  auto big = attention_dims(1, 1, 1, 1, 1, 260, false, 0);
  auto q = b.f32({1, 260}), k = b.f32({1, 260}), v = b.f32({1, 260}), out = b.f32({1, 260}), lse = b.f32({1, 1});
  expect_status([&] { b.gpu->attention_fwd(out->gpu_t(), lse->gpu_t(), q->gpu_t(), k->gpu_t(), v->gpu_t(), big); },
                Status::kNotSupported, "head_dim 260", "head_dim above 256");

  auto lse_i32 = b.i32({16, 4}, std::vector<int32_t>(64, 0));
  expect_status([&] { b.gpu->attention_fwd(p.out->gpu_t(), lse_i32->gpu_t(), p.q->gpu_t(), p.k->gpu_t(),
                                           p.v->gpu_t(), good); },
                Status::kInvalidArgument, "lse must be F32", "lse dtype");
  expect_status([&] { b.gpu->attention_merge(p.out->gpu_t(), p.lse->gpu_t(), p.out->gpu_t(), p.lse->gpu_t(), 4, 8); },
                Status::kInvalidArgument, "must hold", "merge head_dim");
  expect_status([&] { b.gpu->attention_merge(p.out->gpu_t(), p.lse->gpu_t(), p.out->gpu_t(), p.lse->gpu_t(), 0, 16); },
                Status::kInvalidArgument, "must be positive", "merge heads");
}

}  // namespace
}  // namespace mpt::device_testing
