#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "test_ops_util.h"

namespace mpt::test {
namespace {

backend::AttentionDims dims(int64_t sq, int64_t skv, int64_t batch, int64_t heads, int64_t groups, int64_t dim,
                            bool causal, float dropout_p) {
  backend::AttentionDims d;
  d.seq_q = sq;
  d.seq_kv = skv;
  d.batch = batch;
  d.heads = heads;
  d.groups = groups;
  d.head_dim = dim;
  d.softmax_scale = 1.0f / std::sqrt(static_cast<float>(dim));
  d.causal = causal;
  d.dropout_p = dropout_p;
  d.dropout_key = 0xabcdef;
  d.head_offset = 5;
  return d;
}

struct Inputs {
  std::vector<float> q, k, v;
  explicit Inputs(const backend::AttentionDims& d, uint64_t seed)
      : q(random_vector(d.seq_q * d.batch * d.heads * d.head_dim, seed)),
        k(random_vector(d.seq_kv * d.batch * d.groups * d.head_dim, seed + 1)),
        v(random_vector(d.seq_kv * d.batch * d.groups * d.head_dim, seed + 2)) {}
};

// Dropout mask index of element (i, j), as AttentionDims specifies it.
uint64_t mask_index(const backend::AttentionDims& d, int64_t i, int64_t j) {
  const int64_t mask_seq = d.mask_seq > 0 ? d.mask_seq : d.seq_kv;
  return static_cast<uint64_t>(d.q_pos.at(i) * mask_seq + d.kv_pos.at(j));
}

// Explicit softmax attention in double, rows [i0, i1) of every (b, h). Causal masks are
// aligned to the bottom right; lse is token-major [seq_q*B, heads].
void naive_attention(const backend::AttentionDims& d, const Inputs& in, std::vector<double>& out,
                     std::vector<double>& lse, int64_t i0 = 0, int64_t i1 = -1) {
  if (i1 < 0) i1 = d.seq_q;
  const int64_t H = d.heads, G = d.groups, B = d.batch, D = d.head_dim;
  out.assign(d.seq_q * B * H * D, 0.0);
  lse.assign(d.seq_q * B * H, 0.0);
  std::vector<double> s(d.seq_kv);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h) {
      const int64_t g = h / (H / G);
      const uint64_t key = mix_key(mix_key(d.dropout_key, d.head_offset + h), b);
      for (int64_t i = i0; i < i1; ++i) {
        const int64_t n = d.causal ? i + 1 + (d.seq_kv - d.seq_q) : d.seq_kv;
        double mx = -1e300;
        for (int64_t j = 0; j < n; ++j) {
          double dot = 0;
          for (int64_t c = 0; c < D; ++c)
            dot += static_cast<double>(in.q[(i * B + b) * H * D + h * D + c]) * in.k[(j * B + b) * G * D + g * D + c];
          s[j] = dot * d.softmax_scale;
          mx = std::max(mx, s[j]);
        }
        double sum = 0;
        for (int64_t j = 0; j < n; ++j) sum += std::exp(s[j] - mx);
        lse[(i * B + b) * H + h] = mx + std::log(sum);
        for (int64_t j = 0; j < n; ++j) {
          double p = std::exp(s[j] - mx) / sum;
          if (d.dropout_p > 0) p = dropout_keep(key, mask_index(d, i, j), d.dropout_p) ? p / (1.0 - d.dropout_p) : 0.0;
          for (int64_t c = 0; c < D; ++c)
            out[(i * B + b) * H * D + h * D + c] += p * in.v[(j * B + b) * G * D + g * D + c];
        }
      }
    }
}

struct Outputs {
  std::vector<float> out, lse;
};

Outputs forward(backend::Ops& ops, const backend::AttentionDims& d, std::vector<float>& q, std::vector<float>& k,
                std::vector<float>& v) {
  Outputs o{std::vector<float>(q.size()), std::vector<float>(d.seq_q * d.batch * d.heads)};
  const int64_t hd = d.heads * d.head_dim, gd = d.groups * d.head_dim;
  ops.attention_fwd(view(o.out, {d.seq_q * d.batch, hd}), view(o.lse, {d.seq_q * d.batch, d.heads}),
                    view(q, {d.seq_q * d.batch, hd}), view(k, {d.seq_kv * d.batch, gd}),
                    view(v, {d.seq_kv * d.batch, gd}), d);
  return o;
}

Outputs run_forward(backend::Ops& ops, const backend::AttentionDims& d, Inputs& in) {
  return forward(ops, d, in.q, in.k, in.v);
}

struct Grads {
  std::vector<float> dq, dk, dv;
};

Grads backward(backend::Ops& ops, const backend::AttentionDims& d, std::vector<float>& q, std::vector<float>& k,
               std::vector<float>& v, Outputs& o, std::vector<float>& dout) {
  Grads g{std::vector<float>(q.size(), 7.0f), std::vector<float>(k.size(), 7.0f),
          std::vector<float>(v.size(), 7.0f)};  // garbage: the op must overwrite
  const int64_t hd = d.heads * d.head_dim, gd = d.groups * d.head_dim;
  ops.attention_bwd(view(g.dq, {d.seq_q * d.batch, hd}), view(g.dk, {d.seq_kv * d.batch, gd}),
                    view(g.dv, {d.seq_kv * d.batch, gd}), view(dout, {d.seq_q * d.batch, hd}),
                    view(q, {d.seq_q * d.batch, hd}), view(k, {d.seq_kv * d.batch, gd}),
                    view(v, {d.seq_kv * d.batch, gd}), view(o.out, {d.seq_q * d.batch, hd}),
                    view(o.lse, {d.seq_q * d.batch, d.heads}), d);
  return g;
}

Grads run_backward(backend::Ops& ops, const backend::AttentionDims& d, Inputs& in, Outputs& o,
                   std::vector<float>& dout) {
  return backward(ops, d, in.q, in.k, in.v, o, dout);
}

// The rows of sequence positions [s0, s1) of a token-major tensor with per_pos elements
// per position (batch * width).
std::vector<float> positions(const std::vector<float>& x, int64_t s0, int64_t s1, int64_t per_pos) {
  return std::vector<float>(x.begin() + s0 * per_pos, x.begin() + s1 * per_pos);
}

std::vector<float> concat(std::vector<float> a, const std::vector<float>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

void expect_near(const std::string& what, const std::vector<float>& got, const std::vector<float>& want,
                 double tol) {
  ASSERT_EQ(got.size(), want.size()) << what;
  for (size_t i = 0; i < got.size(); ++i) {
    if (std::isinf(want[i]))
      ASSERT_EQ(got[i], want[i]) << what << "[" << i << "]";
    else
      ASSERT_NEAR(got[i], want[i], tol) << what << "[" << i << "]";
  }
}

void check_forward(const backend::AttentionDims& d) {
  auto ops = backend::make_cpu_ops(2);
  Inputs in(d, 100);
  Outputs o = run_forward(*ops, d, in);
  std::vector<double> want, want_lse;
  naive_attention(d, in, want, want_lse);
  for (size_t i = 0; i < want.size(); ++i) ASSERT_NEAR(o.out[i], want[i], 1e-5) << "out[" << i << "]";
  for (size_t i = 0; i < want_lse.size(); ++i) ASSERT_NEAR(o.lse[i], want_lse[i], 1e-5) << "lse[" << i << "]";
}

void check_gradients(const backend::AttentionDims& d) {
  auto ops = backend::make_cpu_ops(2);
  Inputs in(d, 200);
  std::vector<float> r = random_vector(in.q.size(), 300);
  Outputs o = run_forward(*ops, d, in);
  Grads g = run_backward(*ops, d, in, o, r);
  auto loss = [&] { return inner(r, run_forward(*ops, d, in).out); };
  expect_gradient("attention dq", in.q, g.dq, loss);
  expect_gradient("attention dk", in.k, g.dk, loss);
  expect_gradient("attention dv", in.v, g.dv, loss);
}

// seq_q, seq_kv, batch, heads, groups, head_dim, causal, dropout
TEST(OpsAttention, ForwardGqaCausal) { check_forward(dims(6, 6, 2, 4, 2, 8, true, 0)); }
TEST(OpsAttention, ForwardMqaCausal) { check_forward(dims(5, 5, 2, 3, 1, 4, true, 0)); }
TEST(OpsAttention, ForwardNonCausalDifferentLengths) { check_forward(dims(4, 7, 2, 4, 2, 8, false, 0)); }
TEST(OpsAttention, ForwardWithDropout) { check_forward(dims(6, 6, 2, 4, 2, 8, true, 0.3f)); }

TEST(OpsAttention, GradientsGqaCausal) { check_gradients(dims(5, 5, 2, 4, 2, 4, true, 0)); }
TEST(OpsAttention, GradientsMqaCausal) { check_gradients(dims(4, 4, 2, 3, 1, 4, true, 0)); }
TEST(OpsAttention, GradientsMultiHeadNonCausal) { check_gradients(dims(3, 5, 2, 2, 2, 4, false, 0)); }
TEST(OpsAttention, GradientsGqaNonCausalDifferentLengths) { check_gradients(dims(4, 6, 1, 4, 2, 4, false, 0)); }
TEST(OpsAttention, GradientsWithDropout) { check_gradients(dims(5, 5, 2, 4, 2, 4, true, 0.25f)); }
TEST(OpsAttention, GradientsNonCausalWithDropout) { check_gradients(dims(3, 6, 2, 2, 1, 4, false, 0.4f)); }

// Fewer queries than keys under a causal mask: the queries are the last seq_q positions.
TEST(OpsAttention, ForwardCausalFewerQueries) { check_forward(dims(3, 7, 2, 4, 2, 8, true, 0)); }
TEST(OpsAttention, ForwardCausalFewerQueriesWithDropout) { check_forward(dims(3, 7, 2, 4, 2, 8, true, 0.3f)); }
TEST(OpsAttention, ForwardCausalOneQuery) { check_forward(dims(1, 5, 2, 2, 1, 4, true, 0)); }
TEST(OpsAttention, GradientsCausalFewerQueries) { check_gradients(dims(3, 6, 2, 4, 2, 4, true, 0)); }
TEST(OpsAttention, GradientsCausalFewerQueriesWithDropout) { check_gradients(dims(2, 5, 2, 2, 1, 4, true, 0.3f)); }

// Dropout masks keyed by non-default positions: both halves of q_pos and kv_pos in use.
backend::AttentionDims with_positions(backend::AttentionDims d) {
  d.q_pos = {10, 2, 30};
  d.kv_pos = {3, 4, 40};
  d.mask_seq = 64;
  return d;
}
TEST(OpsAttention, ForwardDropoutWithPositions) { check_forward(with_positions(dims(4, 6, 2, 4, 2, 8, false, 0.3f))); }
TEST(OpsAttention, ForwardCausalDropoutWithPositions) {
  check_forward(with_positions(dims(4, 6, 2, 4, 2, 8, true, 0.3f)));
}
TEST(OpsAttention, GradientsDropoutWithPositions) {
  check_gradients(with_positions(dims(3, 6, 2, 4, 2, 4, true, 0.3f)));
}

// Without dropout the positions change nothing.
TEST(OpsAttention, PositionsOnlyKeyDropout) {
  auto d = dims(4, 6, 2, 4, 2, 8, true, 0);
  auto ops = backend::make_cpu_ops(2);
  Inputs in(d, 800);
  Outputs plain = run_forward(*ops, d, in), moved = run_forward(*ops, with_positions(d), in);
  EXPECT_EQ(std::memcmp(plain.out.data(), moved.out.data(), plain.out.size() * 4), 0);
  EXPECT_EQ(std::memcmp(plain.lse.data(), moved.lse.data(), plain.lse.size() * 4), 0);
}

// A causal call cut into query halves (the first half over the first half of the keys, the
// second over all of them, each keyed by its global positions) reproduces the whole call's
// rows, dropout included; its backward gives the whole call's dq rows, and dk/dv summed.
TEST(OpsAttention, CausalQueryHalvesMatchWholeCall) {
  const int64_t S = 8, half = S / 2;
  const auto whole = dims(S, S, 2, 4, 2, 8, true, 0.3f);
  const int64_t q_per_pos = whole.batch * whole.heads * whole.head_dim;
  const int64_t kv_per_pos = whole.batch * whole.groups * whole.head_dim;
  auto ops = backend::make_cpu_ops(2);
  Inputs in(whole, 900);
  std::vector<float> r = random_vector(in.q.size(), 901);
  Outputs o = run_forward(*ops, whole, in);
  Grads g = run_backward(*ops, whole, in, o, r);

  auto first = whole;  // queries and keys 0 .. half-1
  first.seq_q = first.seq_kv = half;
  first.mask_seq = S;
  auto second = whole;  // queries half .. S-1 over all keys
  second.seq_q = half;
  second.q_pos.first = half;

  std::vector<float> q1 = positions(in.q, 0, half, q_per_pos), q2 = positions(in.q, half, S, q_per_pos);
  std::vector<float> k1 = positions(in.k, 0, half, kv_per_pos), v1 = positions(in.v, 0, half, kv_per_pos);
  std::vector<float> r1 = positions(r, 0, half, q_per_pos), r2 = positions(r, half, S, q_per_pos);
  Outputs o1 = forward(*ops, first, q1, k1, v1), o2 = forward(*ops, second, q2, in.k, in.v);
  expect_near("out", concat(o1.out, o2.out), o.out, 1e-6);  // 1e-6: a BLAS may block other shapes differently
  expect_near("lse", concat(o1.lse, o2.lse), o.lse, 1e-6);

  Grads g1 = backward(*ops, first, q1, k1, v1, o1, r1), g2 = backward(*ops, second, q2, in.k, in.v, o2, r2);
  expect_near("dq", concat(g1.dq, g2.dq), g.dq, 1e-5);
  std::vector<float> dk = g2.dk, dv = g2.dv;
  for (size_t i = 0; i < g1.dk.size(); ++i) {
    dk[i] += g1.dk[i];
    dv[i] += g1.dv[i];
  }
  expect_near("dk", dk, g.dk, 1e-5);
  expect_near("dv", dv, g.dv, 1e-5);
}

// Keys split into blocks: merging the blocks' (out, lse) gives the whole call's; each
// block's backward given the whole call's out and lse gives its share of dq and its rows
// of dk/dv.
void check_key_blocks(float dropout_p) {
  const int64_t SQ = 5, SKV = 8, split = 3;
  const auto whole = dims(SQ, SKV, 2, 4, 2, 4, false, dropout_p);
  const int64_t kv_per_pos = whole.batch * whole.groups * whole.head_dim;
  auto ops = backend::make_cpu_ops(2);
  Inputs in(whole, 1000);
  std::vector<float> r = random_vector(in.q.size(), 1001);
  Outputs o = run_forward(*ops, whole, in);
  Grads g = run_backward(*ops, whole, in, o, r);

  auto block1 = whole, block2 = whole;
  block1.seq_kv = split;
  block1.mask_seq = SKV;
  block2.seq_kv = SKV - split;
  block2.kv_pos.first = split;
  block2.mask_seq = SKV;
  std::vector<float> k1 = positions(in.k, 0, split, kv_per_pos), v1 = positions(in.v, 0, split, kv_per_pos);
  std::vector<float> k2 = positions(in.k, split, SKV, kv_per_pos), v2 = positions(in.v, split, SKV, kv_per_pos);

  // Running result starts empty (lse -inf, out garbage) and takes both blocks.
  const int64_t T = SQ * whole.batch, H = whole.heads, D = whole.head_dim;
  Outputs merged{std::vector<float>(o.out.size(), std::nanf("")),
                 std::vector<float>(o.lse.size(), -std::numeric_limits<float>::infinity())};
  for (int blk = 0; blk < 2; ++blk) {
    Outputs part = blk == 0 ? forward(*ops, block1, in.q, k1, v1) : forward(*ops, block2, in.q, k2, v2);
    ops->attention_merge(view(merged.out, {T, H * D}), view(merged.lse, {T, H}), view(part.out, {T, H * D}),
                         view(part.lse, {T, H}), H, D);
  }
  expect_near("merged out", merged.out, o.out, 1e-5);
  expect_near("merged lse", merged.lse, o.lse, 1e-5);

  Grads g1 = backward(*ops, block1, in.q, k1, v1, o, r), g2 = backward(*ops, block2, in.q, k2, v2, o, r);
  std::vector<float> dq = g1.dq;
  for (size_t i = 0; i < dq.size(); ++i) dq[i] += g2.dq[i];
  expect_near("dq", dq, g.dq, 1e-5);
  expect_near("dk", concat(g1.dk, g2.dk), g.dk, 1e-5);
  expect_near("dv", concat(g1.dv, g2.dv), g.dv, 1e-5);
}
TEST(OpsAttention, KeyBlocksMergeAndBackward) { check_key_blocks(0); }
TEST(OpsAttention, KeyBlocksMergeAndBackwardWithDropout) { check_key_blocks(0.3f); }

// The load-balanced context-parallel layout of 2 ranks over S = 8 positions in chunks of 2:
// rank 0 holds positions {0, 1, 6, 7}, rank 1 {2, 3, 4, 5}. Rank 0's queries over its own
// keys and over rank 1's, merged, give the whole call's rows 0, 1, 6, 7 with dropout on.
TEST(OpsAttention, SplitPositionsMatchWholeCall) {
  const int64_t S = 8;
  const auto whole = dims(S, S, 2, 2, 1, 4, false, 0.3f);
  const int64_t q_per_pos = whole.batch * whole.heads * whole.head_dim;
  const int64_t kv_per_pos = whole.batch * whole.groups * whole.head_dim;
  const int64_t lse_per_pos = whole.batch * whole.heads;
  auto ops = backend::make_cpu_ops(2);
  Inputs in(whole, 1100);
  // dout is zero on rank 1's queries, so the whole call's dk/dv are rank 0's queries' share.
  std::vector<float> r = random_vector(in.q.size(), 1101);
  std::fill(r.begin() + 2 * q_per_pos, r.begin() + 6 * q_per_pos, 0.0f);
  Outputs o = run_forward(*ops, whole, in);
  Grads g = run_backward(*ops, whole, in, o, r);

  auto outer = [](const std::vector<float>& x, int64_t per_pos) {
    return concat(positions(x, 0, 2, per_pos), positions(x, 6, 8, per_pos));
  };
  const backend::SeqPositions mine{0, 2, 6}, theirs{2, INT64_MAX, 0};
  auto local = whole;
  local.seq_q = local.seq_kv = 4;
  local.q_pos = mine;
  local.mask_seq = S;
  auto own = local, other = local;
  own.kv_pos = mine;
  other.kv_pos = theirs;

  std::vector<float> q = outer(in.q, q_per_pos), k_own = outer(in.k, kv_per_pos), v_own = outer(in.v, kv_per_pos);
  std::vector<float> k_other = positions(in.k, 2, 6, kv_per_pos), v_other = positions(in.v, 2, 6, kv_per_pos);
  Outputs acc = forward(*ops, own, q, k_own, v_own), part = forward(*ops, other, q, k_other, v_other);
  const int64_t T = 4 * whole.batch, H = whole.heads, D = whole.head_dim;
  ops->attention_merge(view(acc.out, {T, H * D}), view(acc.lse, {T, H}), view(part.out, {T, H * D}),
                       view(part.lse, {T, H}), H, D);
  expect_near("out", acc.out, outer(o.out, q_per_pos), 1e-5);
  expect_near("lse", acc.lse, outer(o.lse, lse_per_pos), 1e-5);

  // Backward of both blocks from the merged result: dq summed, dk/dv are the whole's rows.
  std::vector<float> r_local = outer(r, q_per_pos);
  Grads g_own = backward(*ops, own, q, k_own, v_own, acc, r_local);
  Grads g_other = backward(*ops, other, q, k_other, v_other, acc, r_local);
  std::vector<float> dq = g_own.dq;
  for (size_t i = 0; i < dq.size(); ++i) dq[i] += g_other.dq[i];
  expect_near("dq", dq, outer(g.dq, q_per_pos), 1e-5);
  expect_near("dk own", g_own.dk, outer(g.dk, kv_per_pos), 1e-5);
  expect_near("dv own", g_own.dv, outer(g.dv, kv_per_pos), 1e-5);
  expect_near("dk other", g_other.dk, positions(g.dk, 2, 6, kv_per_pos), 1e-5);
  expect_near("dv other", g_other.dv, positions(g.dv, 2, 6, kv_per_pos), 1e-5);
}

// Per (token, head) row: empty running result, empty part, both empty, far-apart lse
// (exp would overflow in float), equal lse, and a plain pair.
TEST(OpsAttention, MergeRows) {
  constexpr float kInf = std::numeric_limits<float>::infinity();
  const int64_t T = 3, H = 2, D = 3;
  const float nan = std::nanf("");
  std::vector<float> lse = {-kInf, 2.0f, -kInf, 1000.0f, 0.5f, -5.0f};
  std::vector<float> part_lse = {1.5f, -kInf, -kInf, 990.0f, 0.5f, 3.0f};
  std::vector<float> out = {nan, nan, nan, 1, 2, 3, 4, 5, 6, 1, -1, 2, 0.25f, 0.5f, 1, -2, 0, 2};
  std::vector<float> part_out = {7, 8, 9, nan, nan, nan, nan, 0, nan, 3, 1, -2, 0.75f, 0.5f, -1, 4, 1, -1};
  std::vector<float> want_out = out, want_lse = lse;
  for (int64_t row = 0; row < T * H; ++row) {
    const double a = lse[row], b = part_lse[row];
    if (b == -kInf) continue;
    if (a == -kInf) {
      want_lse[row] = part_lse[row];
      for (int64_t c = 0; c < D; ++c) want_out[row * D + c] = part_out[row * D + c];
      continue;
    }
    const double m = std::max(a, b), l = m + std::log(std::exp(a - m) + std::exp(b - m));
    want_lse[row] = static_cast<float>(l);
    for (int64_t c = 0; c < D; ++c)
      want_out[row * D + c] =
          static_cast<float>(out[row * D + c] * std::exp(a - l) + part_out[row * D + c] * std::exp(b - l));
  }
  auto ops = backend::make_cpu_ops(2);
  ops->attention_merge(view(out, {T, H * D}), view(lse, {T, H}), view(part_out, {T, H * D}), view(part_lse, {T, H}), H,
                       D);
  for (int64_t row : {0, 1}) {  // taken or kept as they are, bit for bit
    for (int64_t c = 0; c < D; ++c) EXPECT_EQ(out[row * D + c], want_out[row * D + c]) << row;
    EXPECT_EQ(lse[row], want_lse[row]) << row;
  }
  EXPECT_EQ(lse[2], -kInf);
  EXPECT_FLOAT_EQ(lse[4], 0.5f + std::log(2.0f));
  expect_near("out", out, want_out, 1e-6);
  expect_near("lse", lse, want_lse, 1e-5);
  // Row 3: lse 1000 + log1p(e^-10); mostly the running result.
  EXPECT_NEAR(out[9], 1 * (1 - 4.54e-5) + 3 * 4.54e-5, 1e-5);
}

TEST(OpsAttention, MergeRejectsBadShapes) {
  auto ops = backend::make_cpu_ops(1);
  std::vector<float> out(24), lse(6), part_out(24), part_lse(6), short_out(20), odd_lse(5);
  std::vector<int32_t> int_lse(6);
  auto merge = [&](Tensor o, Tensor l, Tensor po, Tensor pl, int64_t heads, int64_t dim) {
    expect_invalid([&] { ops->attention_merge(o, l, po, pl, heads, dim); });
  };
  const Tensor o = view(out, {3, 8}), l = view(lse, {3, 2}), po = view(part_out, {3, 8}), pl = view(part_lse, {3, 2});
  merge(o, l, po, pl, 0, 4);                               // heads
  merge(o, l, po, pl, 2, 0);                               // head_dim
  merge(o, l, po, pl, 2, 3);                               // out numel != tokens * heads * head_dim
  merge(o, view(odd_lse, {5}), po, pl, 2, 4);              // lse not [tokens, heads]
  merge(view(short_out, {20}), l, po, pl, 2, 4);           // out
  merge(o, l, view(short_out, {20}), pl, 2, 4);            // part_out
  merge(o, l, po, view(odd_lse, {5}), 2, 4);               // part_lse
  merge(o, view(int_lse, {3, 2}), po, pl, 2, 4);           // dtype
  ops->attention_merge(o, l, po, pl, 2, 4);                // the same, well formed
}

TEST(OpsAttention, RejectsBadDims) {
  auto ops = backend::make_cpu_ops(1);
  auto check = [&](const backend::AttentionDims& d) {
    Inputs in(d, 1);
    expect_invalid([&] { run_forward(*ops, d, in); });
  };
  auto accept = [&](const backend::AttentionDims& d) {
    Inputs in(d, 1);
    run_forward(*ops, d, in);
  };
  check(dims(6, 4, 1, 2, 1, 4, true, 0));    // causal needs seq_q <= seq_kv
  accept(dims(4, 6, 1, 2, 1, 4, true, 0));   // fewer queries: the last positions
  accept(dims(6, 4, 1, 2, 1, 4, false, 0));  // any lengths without the mask
  check(dims(4, 4, 1, 3, 2, 4, true, 0));    // heads % groups
  check(dims(4, 4, 1, 2, 1, 4, true, 1.0f));  // dropout_p
  auto d = dims(4, 4, 1, 2, 1, 4, true, 0);
  d.softmax_scale = 0;
  check(d);
  for (int field = 0; field < 6; ++field) {  // negative positions
    auto e = dims(4, 4, 1, 2, 1, 4, true, 0.1f);
    backend::SeqPositions& pos = field < 3 ? e.q_pos : e.kv_pos;
    (field % 3 == 0 ? pos.first : field % 3 == 1 ? pos.split : pos.second) = -1;
    check(e);
  }
  auto e = dims(4, 4, 1, 2, 1, 4, true, 0.1f);
  e.mask_seq = -1;
  check(e);
  e.kv_pos.first = 3;
  e.mask_seq = 6;  // key positions 3..6 reach past the mask rows
  check(e);
  e.dropout_p = 0;  // positions unused without dropout
  accept(e);
  e = dims(4, 4, 1, 2, 1, 4, true, 0.1f);
  e.q_pos.first = INT64_MAX / 2;  // q_pos * mask_seq overflows
  check(e);
  Inputs in(d, 1);
  d.softmax_scale = 0.5f;
  std::vector<float> out(in.q.size()), lse(7);
  expect_invalid([&] {
    ops->attention_fwd(view(out, {4, 8}), view(lse, {7}), view(in.q, {4, 8}), view(in.k, {4, 4}),
                       view(in.v, {4, 4}), d);
  });
}

// Same inputs, twice and at another thread count: identical bits.
TEST(OpsAttention, BackwardIsDeterministic) {
  const auto d = dims(33, 33, 2, 4, 2, 16, true, 0.1f);
  auto two = backend::make_cpu_ops(2), one = backend::make_cpu_ops(1);
  Inputs in(d, 400);
  std::vector<float> r = random_vector(in.q.size(), 500);
  Outputs o = run_forward(*two, d, in);
  Grads a = run_backward(*two, d, in, o, r), b = run_backward(*two, d, in, o, r), c = run_backward(*one, d, in, o, r);
  for (const Grads* x : {&b, &c}) {
    EXPECT_EQ(std::memcmp(a.dq.data(), x->dq.data(), a.dq.size() * 4), 0);
    EXPECT_EQ(std::memcmp(a.dk.data(), x->dk.data(), a.dk.size() * 4), 0);
    EXPECT_EQ(std::memcmp(a.dv.data(), x->dv.data(), a.dv.size() * 4), 0);
  }
}

// Long sequences: score blocks of 2048 x 2048 per thread; spot rows against the reference.
TEST(OpsAttention, LongSequence) {
  const auto d = dims(2048, 2048, 1, 2, 1, 16, true, 0);
  auto ops = backend::make_cpu_ops(2);
  Inputs in(d, 600);
  Outputs o = run_forward(*ops, d, in);
  for (int64_t i0 : {0, 1023, 2040}) {
    std::vector<double> want, want_lse;
    naive_attention(d, in, want, want_lse, i0, i0 + 8);
    for (int64_t i = i0; i < i0 + 8; ++i)
      for (int64_t c = 0; c < d.heads * d.head_dim; ++c)
        ASSERT_NEAR(o.out[i * d.heads * d.head_dim + c], want[i * d.heads * d.head_dim + c], 1e-5) << "row " << i;
    for (int64_t i = i0 * d.heads; i < (i0 + 8) * d.heads; ++i) ASSERT_NEAR(o.lse[i], want_lse[i], 1e-5) << "lse " << i;
  }
  std::vector<float> r = random_vector(in.q.size(), 700);
  Grads g = run_backward(*ops, d, in, o, r);
  EXPECT_TRUE(ops->all_finite(view(g.dq, {static_cast<int64_t>(g.dq.size())})));
  EXPECT_TRUE(ops->all_finite(view(g.dk, {static_cast<int64_t>(g.dk.size())})));
}

}  // namespace
}  // namespace mpt::test
