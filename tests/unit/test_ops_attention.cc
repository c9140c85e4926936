#include <cstring>

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

// Explicit softmax attention in double, rows [i0, i1) of every (b, h).
void naive_attention(const backend::AttentionDims& d, const Inputs& in, std::vector<double>& out,
                     std::vector<double>& lse, int64_t i0 = 0, int64_t i1 = -1) {
  if (i1 < 0) i1 = d.seq_q;
  const int64_t H = d.heads, G = d.groups, B = d.batch, D = d.head_dim;
  out.assign(d.seq_q * B * H * D, 0.0);
  lse.assign(B * H * d.seq_q, 0.0);
  std::vector<double> s(d.seq_kv);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h) {
      const int64_t g = h / (H / G);
      const uint64_t key = mix_key(mix_key(d.dropout_key, d.head_offset + h), b);
      for (int64_t i = i0; i < i1; ++i) {
        const int64_t n = d.causal ? i + 1 : d.seq_kv;
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
        lse[(b * H + h) * d.seq_q + i] = mx + std::log(sum);
        for (int64_t j = 0; j < n; ++j) {
          double p = std::exp(s[j] - mx) / sum;
          if (d.dropout_p > 0) p = dropout_keep(key, i * d.seq_kv + j, d.dropout_p) ? p / (1.0 - d.dropout_p) : 0.0;
          for (int64_t c = 0; c < D; ++c)
            out[(i * B + b) * H * D + h * D + c] += p * in.v[(j * B + b) * G * D + g * D + c];
        }
      }
    }
}

struct Outputs {
  std::vector<float> out, lse;
};

Outputs run_forward(backend::Ops& ops, const backend::AttentionDims& d, Inputs& in) {
  Outputs o{std::vector<float>(in.q.size()), std::vector<float>(d.batch * d.heads * d.seq_q)};
  const int64_t hd = d.heads * d.head_dim, gd = d.groups * d.head_dim;
  ops.attention_fwd(view(o.out, {d.seq_q * d.batch, hd}), view(o.lse, {d.batch, d.heads, d.seq_q}),
                    view(in.q, {d.seq_q * d.batch, hd}), view(in.k, {d.seq_kv * d.batch, gd}),
                    view(in.v, {d.seq_kv * d.batch, gd}), d);
  return o;
}

struct Grads {
  std::vector<float> dq, dk, dv;
};

Grads run_backward(backend::Ops& ops, const backend::AttentionDims& d, Inputs& in, Outputs& o,
                   std::vector<float>& dout) {
  Grads g{std::vector<float>(in.q.size(), 7.0f), std::vector<float>(in.k.size(), 7.0f),
          std::vector<float>(in.v.size(), 7.0f)};  // garbage: the op must overwrite
  const int64_t hd = d.heads * d.head_dim, gd = d.groups * d.head_dim;
  ops.attention_bwd(view(g.dq, {d.seq_q * d.batch, hd}), view(g.dk, {d.seq_kv * d.batch, gd}),
                    view(g.dv, {d.seq_kv * d.batch, gd}), view(dout, {d.seq_q * d.batch, hd}),
                    view(in.q, {d.seq_q * d.batch, hd}), view(in.k, {d.seq_kv * d.batch, gd}),
                    view(in.v, {d.seq_kv * d.batch, gd}), view(o.out, {d.seq_q * d.batch, hd}),
                    view(o.lse, {d.batch, d.heads, d.seq_q}), d);
  return g;
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
  }
  std::vector<float> r = random_vector(in.q.size(), 700);
  Grads g = run_backward(*ops, d, in, o, r);
  EXPECT_TRUE(ops->all_finite(view(g.dq, {static_cast<int64_t>(g.dq.size())})));
  EXPECT_TRUE(ops->all_finite(view(g.dk, {static_cast<int64_t>(g.dk.size())})));
}

TEST(OpsAttention, RejectsBadDims) {
  auto ops = backend::make_cpu_ops(1);
  auto check = [&](const backend::AttentionDims& d) {
    Inputs in(d, 1);
    expect_invalid([&] { run_forward(*ops, d, in); });
  };
  check(dims(4, 6, 1, 2, 1, 4, true, 0));    // causal needs seq_q == seq_kv
  check(dims(4, 4, 1, 3, 2, 4, true, 0));    // heads % groups
  check(dims(4, 4, 1, 2, 1, 4, true, 1.0f));  // dropout_p
  auto d = dims(4, 4, 1, 2, 1, 4, true, 0);
  d.softmax_scale = 0;
  check(d);
  Inputs in(d, 1);
  d.softmax_scale = 0.5f;
  std::vector<float> out(in.q.size()), lse(7);
  expect_invalid([&] {
    ops->attention_fwd(view(out, {4, 8}), view(lse, {7}), view(in.q, {4, 8}), view(in.k, {4, 4}),
                       view(in.v, {4, 4}), d);
  });
}

}  // namespace
}  // namespace mpt::test
