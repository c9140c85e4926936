#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <string>
#include <vector>

#include "test_errors.h"
#include "test_ops_util.h"

namespace mpt::test {
namespace {

using backend::GroupedForm;
using backend::RouterScore;

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

// ---- router ------------------------------------------------------------------------------

struct RouterCase {
  RouterScore fn;
  bool pre_softmax;
  int64_t k;
};

std::string name_of(const RouterCase& c) {
  return std::string(c.fn == RouterScore::kSoftmax ? "softmax" : "sigmoid") + (c.pre_softmax ? " pre" : " post") +
         " k=" + std::to_string(c.k);
}

const RouterCase kRouterCases[] = {{RouterScore::kSoftmax, false, 3}, {RouterScore::kSoftmax, true, 3},
                                   {RouterScore::kSoftmax, true, 1},  {RouterScore::kSigmoid, false, 3},
                                   {RouterScore::kSigmoid, true, 3},  {RouterScore::kSigmoid, false, 1}};

double sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }

struct Routing {
  std::vector<int32_t> indices;
  std::vector<double> probs, scores;
};

// Megatron's topk_routing_with_score_function and compute_routing_scores_for_aux_loss by
// definition, in double: sort by score (stable, so ties go to the lower expert), take k.
Routing reference_routing(const std::vector<float>& logits, int64_t T, int64_t E, const RouterCase& c) {
  Routing r;
  for (int64_t t = 0; t < T; ++t) {
    const float* l = logits.data() + t * E;
    std::vector<double> softmax(E), sig(E);
    double mx = -1e300, sum = 0, sig_sum = 0;
    for (int64_t e = 0; e < E; ++e) mx = std::max(mx, static_cast<double>(l[e]));
    for (int64_t e = 0; e < E; ++e) sum += std::exp(l[e] - mx);
    for (int64_t e = 0; e < E; ++e) {
      softmax[e] = std::exp(l[e] - mx) / sum;
      sig[e] = sigmoid(l[e]);
      sig_sum += sig[e];
    }
    const std::vector<double> raw(l, l + E);
    const std::vector<double>& key = c.fn == RouterScore::kSigmoid ? sig : c.pre_softmax ? softmax : raw;
    std::vector<int32_t> order(E);
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return key[a] > key[b]; });
    order.resize(c.k);
    std::vector<double> p(c.k);
    if (c.fn == RouterScore::kSoftmax && !c.pre_softmax) {
      double s = 0;
      for (int64_t j = 0; j < c.k; ++j) s += std::exp(l[order[j]] - l[order[0]]);
      for (int64_t j = 0; j < c.k; ++j) p[j] = std::exp(l[order[j]] - l[order[0]]) / s;
    } else if (c.fn == RouterScore::kSoftmax) {
      for (int64_t j = 0; j < c.k; ++j) p[j] = softmax[order[j]];
    } else {
      double s = 0;
      for (int64_t j = 0; j < c.k; ++j) s += sig[order[j]];
      for (int64_t j = 0; j < c.k; ++j) p[j] = c.k > 1 ? sig[order[j]] / (s + 1e-20) : sig[order[j]];
    }
    r.indices.insert(r.indices.end(), order.begin(), order.end());
    r.probs.insert(r.probs.end(), p.begin(), p.end());
    for (int64_t e = 0; e < E; ++e)
      r.scores.push_back(c.fn == RouterScore::kSoftmax ? softmax[e] : sig[e] / (sig_sum + 1e-20));
  }
  return r;
}

struct RouterOut {
  std::vector<int32_t> indices;
  std::vector<float> probs, scores;
};

RouterOut run_router(backend::Ops& ops, std::vector<float>& logits, int64_t T, int64_t E, const RouterCase& c) {
  RouterOut o{std::vector<int32_t>(T * c.k, -7), std::vector<float>(T * c.k, kNaN), std::vector<float>(T * E, kNaN)};
  ops.router_topk(view(o.indices, {T, c.k}), view(o.probs, {T, c.k}), view(o.scores, {T, E}), view(logits, {T, E}),
                  c.k, c.fn, c.pre_softmax);
  return o;
}

void expect_routing(const RouterOut& got, const Routing& want, const std::string& what) {
  EXPECT_EQ(got.indices, want.indices) << what;
  for (size_t i = 0; i < want.probs.size(); ++i)
    EXPECT_NEAR(got.probs[i], want.probs[i], 1e-6) << what << " probs " << i;
  for (size_t i = 0; i < want.scores.size(); ++i)
    EXPECT_NEAR(got.scores[i], want.scores[i], 1e-6) << what << " scores " << i;
}

TEST(OpsMoe, RouterTopkMatchesReference) {
  auto ops = backend::make_cpu_ops(2);
  constexpr int64_t T = 9, E = 7;
  std::vector<float> logits = random_vector(T * E, 11, 2.0f);
  // Ties: row 7 has three equal maxima, row 8 is all equal; the lower expert wins.
  for (int64_t e = 0; e < E; ++e) logits[7 * E + e] = (e == 1 || e == 4 || e == 6) ? 1.5f : -0.25f * e;
  for (int64_t e = 0; e < E; ++e) logits[8 * E + e] = 0.3f;
  for (const RouterCase& c : kRouterCases) {
    const RouterOut got = run_router(*ops, logits, T, E, c);
    expect_routing(got, reference_routing(logits, T, E, c), name_of(c));
    EXPECT_EQ(got.indices[7 * c.k], 1) << name_of(c);
    if (c.k == 3) {
      EXPECT_EQ(std::vector<int32_t>(got.indices.begin() + 7 * c.k, got.indices.begin() + 8 * c.k),
                (std::vector<int32_t>{1, 4, 6})) << name_of(c);
      EXPECT_EQ(std::vector<int32_t>(got.indices.begin() + 8 * c.k, got.indices.end()), (std::vector<int32_t>{0, 1, 2}))
          << name_of(c);
    }
  }
}

// Selection compares the fp32 scores: sigmoid(20) and sigmoid(30) are both 1.0f, a tie that
// goes to the lower expert although its logit is smaller.
TEST(OpsMoe, RouterSigmoidSelectsOnFp32Scores) {
  auto ops = backend::make_cpu_ops(1);
  std::vector<float> logits = {20.0f, 30.0f, 0.0f, -1.0f};
  const RouterOut got = run_router(*ops, logits, 1, 4, {RouterScore::kSigmoid, false, 1});
  EXPECT_EQ(got.indices[0], 0);
  EXPECT_EQ(got.probs[0], 1.0f);
}

// Megatron divides by (sum + 1e-20): when every sigmoid underflows that epsilon dominates.
TEST(OpsMoe, RouterSigmoidNormalisationHasMegatronEpsilon) {
  auto ops = backend::make_cpu_ops(1);
  std::vector<float> logits(4, -100.0f);
  const RouterOut got = run_router(*ops, logits, 1, 4, {RouterScore::kSigmoid, false, 2});
  const double s = sigmoid(-100.0);
  EXPECT_NEAR(got.probs[0], s / (2 * s + 1e-20), 1e-3 * s / 1e-20);
  EXPECT_LT(got.probs[0], 1e-20f);
  EXPECT_NEAR(got.scores[0], s / (4 * s + 1e-20), 1e-3 * s / 1e-20);
}

// Distinct logits per row, 0.3 apart, so that +-1e-3 never changes the selection.
std::vector<float> separated_logits(int64_t T, int64_t E, uint64_t key) {
  std::vector<float> noise = random_vector(T * E, key, 0.03f), l(T * E);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t e = 0; e < E; ++e)
      l[t * E + e] = 0.3f * static_cast<float>((e * 5 + t * 3) % E) - 0.9f + noise[t * E + e];
  return l;
}

TEST(OpsMoe, RouterTopkBackwardMatchesFiniteDifferences) {
  auto ops = backend::make_cpu_ops(2);
  constexpr int64_t T = 5, E = 6;
  for (const RouterCase& c : kRouterCases)
    for (bool with_scores : {true, false}) {
      const std::string what = name_of(c) + (with_scores ? " probs+scores" : " probs");
      std::vector<float> logits = separated_logits(T, E, 21);
      std::vector<float> wp = random_vector(T * c.k, 22), ws = random_vector(T * E, 23);
      RouterOut base = run_router(*ops, logits, T, E, c);
      std::vector<float> dlogits(T * E, kNaN);
      ops->router_topk_bwd(view(dlogits, {T, E}), view(wp, {T, c.k}), with_scores ? view(ws, {T, E}) : Tensor(),
                           view(logits, {T, E}), view(base.indices, {T, c.k}), c.k,
                           c.fn, c.pre_softmax);
      expect_gradient(what, logits, dlogits, [&] {
        const RouterOut o = run_router(*ops, logits, T, E, c);
        EXPECT_EQ(o.indices, base.indices) << what << ": the selection moved";
        return inner(wp, o.probs) + (with_scores ? inner(ws, o.scores) : 0.0);
      });
    }
}

// Softmax top-1 without pre-softmax has probs == 1: no gradient through them.
TEST(OpsMoe, RouterSoftmaxTopOneHasNoProbGradient) {
  auto ops = backend::make_cpu_ops(1);
  std::vector<float> logits = separated_logits(3, 4, 5), dp = {0.5f, -2.0f, 3.0f}, dl(12, kNaN);
  std::vector<int32_t> idx(3);
  std::vector<float> probs(3);
  ops->router_topk(view(idx, {3, 1}), view(probs, {3, 1}), Tensor(), view(logits, {3, 4}), 1, RouterScore::kSoftmax,
                   false);
  for (float p : probs) EXPECT_EQ(p, 1.0f);
  ops->router_topk_bwd(view(dl, {3, 4}), view(dp, {3, 1}), Tensor(), view(logits, {3, 4}), view(idx, {3, 1}), 1,
                       RouterScore::kSoftmax, false);
  for (float g : dl) EXPECT_EQ(g, 0.0f);
}

TEST(OpsMoe, RouterLseAndZLossBackward) {
  auto ops = backend::make_cpu_ops(2);
  constexpr int64_t T = 6, E = 5;
  constexpr float kScale = 0.37f;
  std::vector<float> logits = random_vector(T * E, 31, 3.0f);
  logits[2] = 100.0f;  // exp(100) overflows fp32: the max must come out first
  std::vector<float> lse(T, kNaN);
  ops->router_lse(view(lse, {T}), view(logits, {T, E}));
  for (int64_t t = 0; t < T; ++t) {
    double sum = 0;
    for (int64_t e = 0; e < E; ++e) sum += std::exp(static_cast<double>(logits[t * E + e]));
    EXPECT_NEAR(lse[t], std::log(sum), 1e-5 * std::max(1.0, std::fabs(std::log(sum)))) << t;
  }
  // The backward adds: start from a known gradient and take it off again.
  logits[2] = 2.0f;  // moderate logits keep the finite differences well conditioned
  ops->router_lse(view(lse, {T}), view(logits, {T, E}));
  const std::vector<float> prior = random_vector(T * E, 32);
  std::vector<float> dl = prior;
  ops->router_z_loss_bwd(view(dl, {T, E}), view(logits, {T, E}), view(lse, {T}), kScale);
  for (int64_t i = 0; i < T * E; ++i) dl[i] -= prior[i];
  expect_gradient("z-loss", logits, dl, [&] {
    std::vector<float> l(T);
    ops->router_lse(view(l, {T}), view(logits, {T, E}));
    double z = 0;
    for (float v : l) z += static_cast<double>(v) * v;
    return kScale * z;
  });
}

// ---- permutation -------------------------------------------------------------------------

// Choice (t, j) is dropped when (t + 2j) % 5 == 3; the kept ones take the rows of a fixed
// shuffle of [0, R) in order, so R above the kept count leaves padding rows.
std::vector<int32_t> make_rows(int64_t T, int64_t k, int64_t R, uint64_t key) {
  std::vector<int32_t> shuffle(R);
  std::iota(shuffle.begin(), shuffle.end(), 0);
  std::sort(shuffle.begin(), shuffle.end(),
            [&](int32_t a, int32_t b) { return normal_at(key, a) < normal_at(key, b); });
  std::vector<int32_t> rows(T * k);
  int64_t next = 0;
  for (int64_t t = 0; t < T; ++t)
    for (int64_t j = 0; j < k; ++j) rows[t * k + j] = (t + 2 * j) % 5 == 3 ? -1 : shuffle.at(next++);
  return rows;
}

struct PermuteCase {
  static constexpr int64_t T = 7, k = 3, R = 20, H = 5;
  std::vector<int32_t> rows = make_rows(T, k, R, 41);
  std::vector<float> x = random_vector(T * H, 42), y = random_vector(R * H, 43), probs = random_vector(T * k, 44);
};

TEST(OpsMoe, PermuteAndUnpermuteMatchReference) {
  auto ops = backend::make_cpu_ops(2);
  PermuteCase p;
  constexpr int64_t T = PermuteCase::T, k = PermuteCase::k, R = PermuteCase::R, H = PermuteCase::H;
  int64_t dropped = 0;
  for (int32_t r : p.rows) dropped += r < 0;
  ASSERT_GT(dropped, 0);
  ASSERT_LT(T * k - dropped, R);  // some padding rows

  std::vector<float> x_perm(R * H, kNaN);
  ops->moe_permute(view(x_perm, {R, H}), view(p.x, {T, H}), view(p.rows, {T, k}));
  std::vector<float> want(R * H, 0.0f);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t j = 0; j < k; ++j)
      if (p.rows[t * k + j] >= 0)
        for (int64_t c = 0; c < H; ++c) want[p.rows[t * k + j] * H + c] = p.x[t * H + c];
  EXPECT_EQ(x_perm, want);

  for (bool with_probs : {true, false}) {
    std::vector<float> out(T * H, kNaN);
    ops->moe_unpermute(view(out, {T, H}), view(p.y, {R, H}), view(p.rows, {T, k}),
                       with_probs ? view(p.probs, {T, k}) : Tensor());
    for (int64_t t = 0; t < T; ++t)
      for (int64_t c = 0; c < H; ++c) {
        double s = 0;
        for (int64_t j = 0; j < k; ++j)
          if (p.rows[t * k + j] >= 0) s += (with_probs ? p.probs[t * k + j] : 1.0) * p.y[p.rows[t * k + j] * H + c];
        EXPECT_NEAR(out[t * H + c], s, 1e-5) << "with_probs " << with_probs << " t " << t << " c " << c;
      }
  }

  std::vector<float> dout = random_vector(T * H, 45), dy(R * H, kNaN), dprobs(T * k, kNaN);
  ops->moe_unpermute_bwd(view(dy, {R, H}), view(dprobs, {T, k}), view(dout, {T, H}), view(p.y, {R, H}),
                         view(p.rows, {T, k}), view(p.probs, {T, k}));
  std::vector<float> want_dy(R * H, 0.0f);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t j = 0; j < k; ++j) {
      const int32_t r = p.rows[t * k + j];
      double dot = 0;
      if (r >= 0)
        for (int64_t c = 0; c < H; ++c) {
          want_dy[r * H + c] = p.probs[t * k + j] * dout[t * H + c];
          dot += static_cast<double>(dout[t * H + c]) * p.y[r * H + c];
        }
      EXPECT_NEAR(dprobs[t * k + j], dot, 1e-5) << t << ", " << j;
    }
  EXPECT_EQ(dy, want_dy);
}

TEST(OpsMoe, PermuteBackwardIsTheAdjoint) {
  auto ops = backend::make_cpu_ops(2);
  PermuteCase p;
  constexpr int64_t T = PermuteCase::T, k = PermuteCase::k, R = PermuteCase::R, H = PermuteCase::H;
  std::vector<float> x_perm(R * H), g = random_vector(R * H, 51), dx(T * H, kNaN);
  ops->moe_permute(view(x_perm, {R, H}), view(p.x, {T, H}), view(p.rows, {T, k}));
  ops->moe_permute_bwd(view(dx, {T, H}), view(g, {R, H}), view(p.rows, {T, k}));
  EXPECT_NEAR(inner(x_perm, g), inner(p.x, dx), 1e-5);
  // And by definition: a token's gradient is the sum over its kept rows, zero when all dropped.
  for (int64_t t = 0; t < T; ++t)
    for (int64_t c = 0; c < H; ++c) {
      double s = 0;
      for (int64_t j = 0; j < k; ++j)
        if (p.rows[t * k + j] >= 0) s += g[p.rows[t * k + j] * H + c];
      EXPECT_NEAR(dx[t * H + c], s, 1e-6);
    }
}

TEST(OpsMoe, UnpermuteBackwardMatchesFiniteDifferences) {
  auto ops = backend::make_cpu_ops(2);
  PermuteCase p;
  constexpr int64_t T = PermuteCase::T, k = PermuteCase::k, R = PermuteCase::R, H = PermuteCase::H;
  std::vector<float> w = random_vector(T * H, 61), dy(R * H), dprobs(T * k);
  ops->moe_unpermute_bwd(view(dy, {R, H}), view(dprobs, {T, k}), view(w, {T, H}), view(p.y, {R, H}),
                         view(p.rows, {T, k}), view(p.probs, {T, k}));
  auto loss = [&] {
    std::vector<float> out(T * H);
    ops->moe_unpermute(view(out, {T, H}), view(p.y, {R, H}), view(p.rows, {T, k}), view(p.probs, {T, k}));
    return inner(w, out);
  };
  expect_gradient("unpermute dy", p.y, dy, loss);
  expect_gradient("unpermute dprobs", p.probs, dprobs, loss);
  // Without dprobs, y is not needed; dy is unchanged.
  std::vector<float> dy2(R * H, kNaN);
  ops->moe_unpermute_bwd(view(dy2, {R, H}), Tensor(), view(w, {T, H}), Tensor(), view(p.rows, {T, k}),
                         view(p.probs, {T, k}));
  EXPECT_EQ(dy2, dy);
}

TEST(OpsMoe, ZeroTokensAndEmptyExperts) {
  auto ops = backend::make_cpu_ops(2);
  constexpr int64_t E = 4, H = 3;
  // No tokens: the router and the permutations have nothing to do.
  std::vector<float> none;
  std::vector<int32_t> no_idx;
  ops->router_topk(view(no_idx, {0, 2}), view(none, {0, 2}), view(none, {0, E}), view(none, {0, E}), 2,
                   RouterScore::kSigmoid, false);
  ops->router_topk_bwd(view(none, {0, E}), view(none, {0, 2}), view(none, {0, E}), view(none, {0, E}),
                       view(no_idx, {0, 2}), 2, RouterScore::kSoftmax, true);
  ops->router_lse(view(none, {0}), view(none, {0, E}));
  ops->router_z_loss_bwd(view(none, {0, E}), view(none, {0, E}), view(none, {0}), 1.0f);
  std::vector<float> x_perm(4 * H, kNaN), dx_perm = random_vector(4 * H, 71);
  ops->moe_permute(view(x_perm, {4, H}), view(none, {0, H}), view(no_idx, {0, 2}));
  for (float v : x_perm) EXPECT_EQ(v, 0.0f);
  ops->moe_permute_bwd(view(none, {0, H}), view(dx_perm, {4, H}), view(no_idx, {0, 2}));
  // Every choice dropped: no permuted rows at all, tokens get zeros.
  std::vector<int32_t> dropped(3 * 2, -1);
  std::vector<float> out(3 * H, kNaN), dout = random_vector(3 * H, 72), dprobs(3 * 2, kNaN);
  ops->moe_unpermute(view(out, {3, H}), view(none, {0, H}), view(dropped, {3, 2}), Tensor());
  for (float v : out) EXPECT_EQ(v, 0.0f);
  ops->moe_unpermute_bwd(view(none, {0, H}), view(dprobs, {3, 2}), view(dout, {3, H}), view(none, {0, H}),
                         view(dropped, {3, 2}), Tensor());
  for (float v : dprobs) EXPECT_EQ(v, 0.0f);
  // Grouped GEMM over no rows: forward is a no-op, the weight gradient is zeroed (beta 0).
  const int64_t counts[2] = {0, 0};
  std::vector<float> w = random_vector(2 * 4 * H, 73), dw(2 * 4 * H, kNaN);
  ops->grouped_matmul(view(none, {0, 4}), view(none, {0, H}), view(w, {2, 4, H}), counts, 2, GroupedForm::kForward,
                      0.0f);
  ops->grouped_matmul(view(dw, {2, 4, H}), view(none, {0, 4}), view(none, {0, H}), counts, 2,
                      GroupedForm::kWeightGrad, 0.0f);
  for (float v : dw) EXPECT_EQ(v, 0.0f);
}

// ---- grouped GEMM ------------------------------------------------------------------------

struct GroupedCase {
  static constexpr int64_t G = 3, R = 8, in = 5, out = 4;
  const int64_t counts[G] = {3, 0, 5};  // the middle expert receives no tokens
  int64_t first(int64_t g) const { return g == 0 ? 0 : counts[0] + (g > 1 ? counts[1] : 0); }
  int64_t group_of(int64_t r) const { return r < counts[0] ? 0 : 2; }
};

TEST(OpsMoe, GroupedMatmulMatchesPerGroupGemms) {
  auto ops = backend::make_cpu_ops(2);
  GroupedCase g;
  constexpr int64_t G = GroupedCase::G, R = GroupedCase::R, in = GroupedCase::in, out = GroupedCase::out;
  std::vector<float> x = random_vector(R * in, 81), dy = random_vector(R * out, 82),
                     w = random_vector(G * out * in, 83);
  for (float beta : {0.0f, 1.0f}) {
    const std::string what = "beta " + std::to_string(beta);
    // kForward: y[r] = w[g] x[r]; beta 0 overwrites NaN, beta 1 adds to what is there.
    const std::vector<float> y0 = random_vector(R * out, 84);
    std::vector<float> y = beta == 0 ? std::vector<float>(R * out, kNaN) : y0;
    ops->grouped_matmul(view(y, {R, out}), view(x, {R, in}), view(w, {G, out, in}), g.counts, G,
                        GroupedForm::kForward, beta);
    for (int64_t r = 0; r < R; ++r)
      for (int64_t o = 0; o < out; ++o) {
        double s = beta * y0[r * out + o];
        for (int64_t i = 0; i < in; ++i)
          s += static_cast<double>(w[(g.group_of(r) * out + o) * in + i]) * x[r * in + i];
        EXPECT_NEAR(y[r * out + o], s, 1e-5) << what << " forward " << r << ", " << o;
      }
    // kInputGrad: dx[r] = w[g]^T dy[r].
    const std::vector<float> dx0 = random_vector(R * in, 85);
    std::vector<float> dx = beta == 0 ? std::vector<float>(R * in, kNaN) : dx0;
    ops->grouped_matmul(view(dx, {R, in}), view(dy, {R, out}), view(w, {G, out, in}), g.counts, G,
                        GroupedForm::kInputGrad, beta);
    for (int64_t r = 0; r < R; ++r)
      for (int64_t i = 0; i < in; ++i) {
        double s = beta * dx0[r * in + i];
        for (int64_t o = 0; o < out; ++o)
          s += static_cast<double>(w[(g.group_of(r) * out + o) * in + i]) * dy[r * out + o];
        EXPECT_NEAR(dx[r * in + i], s, 1e-5) << what << " input grad " << r << ", " << i;
      }
    // kWeightGrad: dw[g] = sum over the group's rows of dy[r] x[r]^T; the empty group gets
    // zeros (beta 0, over NaN) or keeps its value (beta 1).
    const std::vector<float> dw0 = random_vector(G * out * in, 86);
    std::vector<float> dw = beta == 0 ? std::vector<float>(G * out * in, kNaN) : dw0;
    ops->grouped_matmul(view(dw, {G, out, in}), view(dy, {R, out}), view(x, {R, in}), g.counts, G,
                        GroupedForm::kWeightGrad, beta);
    for (int64_t e = 0; e < G; ++e)
      for (int64_t o = 0; o < out; ++o)
        for (int64_t i = 0; i < in; ++i) {
          double s = beta * dw0[(e * out + o) * in + i];
          for (int64_t r = g.first(e); r < g.first(e) + g.counts[e]; ++r)
            s += static_cast<double>(dy[r * out + o]) * x[r * in + i];
          EXPECT_NEAR(dw[(e * out + o) * in + i], s, 1e-5) << what << " weight grad " << e << ", " << o << ", " << i;
        }
  }
  // A beta other than 0 and 1 scales the empty group's gradient too (c = 0 + beta * c).
  std::vector<float> dw(G * out * in, 2.0f);
  ops->grouped_matmul(view(dw, {G, out, in}), view(dy, {R, out}), view(x, {R, in}), g.counts, G,
                      GroupedForm::kWeightGrad, 0.5f);
  for (int64_t i = 0; i < out * in; ++i) EXPECT_EQ(dw[out * in + i], 1.0f);
}

// ---- results do not depend on the thread count ----------------------------------------------

template <typename T>
bool same_bits(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0;
}

TEST(OpsMoe, ResultsIndependentOfThreadCount) {
  constexpr int64_t T = 2048, E = 16, k = 2, H = 48, R = T * k + 64, G = 4;
  std::vector<float> logits = random_vector(T * E, 91), dprobs = random_vector(T * k, 92),
                     dscores = random_vector(T * E, 93), x = random_vector(T * H, 94), y = random_vector(R * H, 95),
                     w = random_vector(G * H * H, 96);
  std::vector<int32_t> rows = make_rows(T, k, R, 97);
  const int64_t counts[G] = {1000, 0, 1500, R - 2500};
  struct Result {
    std::vector<int32_t> indices;
    std::vector<float> probs, scores, dlogits, x_perm, dx, out, dy, dp, gy, gdw;
  };
  auto run = [&](int threads) {
    auto ops = backend::make_cpu_ops(threads);
    Result r{std::vector<int32_t>(T * k), std::vector<float>(T * k), std::vector<float>(T * E),
             std::vector<float>(T * E), std::vector<float>(R * H), std::vector<float>(T * H),
             std::vector<float>(T * H), std::vector<float>(R * H), std::vector<float>(T * k),
             std::vector<float>(R * H), std::vector<float>(G * H * H)};
    ops->router_topk(view(r.indices, {T, k}), view(r.probs, {T, k}), view(r.scores, {T, E}), view(logits, {T, E}), k,
                     RouterScore::kSigmoid, false);
    ops->router_topk_bwd(view(r.dlogits, {T, E}), view(dprobs, {T, k}), view(dscores, {T, E}), view(logits, {T, E}),
                         view(r.indices, {T, k}), k, RouterScore::kSigmoid, false);
    ops->moe_permute(view(r.x_perm, {R, H}), view(x, {T, H}), view(rows, {T, k}));
    ops->moe_permute_bwd(view(r.dx, {T, H}), view(y, {R, H}), view(rows, {T, k}));
    ops->moe_unpermute(view(r.out, {T, H}), view(y, {R, H}), view(rows, {T, k}), view(dprobs, {T, k}));
    ops->moe_unpermute_bwd(view(r.dy, {R, H}), view(r.dp, {T, k}), view(x, {T, H}), view(y, {R, H}),
                           view(rows, {T, k}), view(dprobs, {T, k}));
    ops->grouped_matmul(view(r.gy, {R, H}), view(y, {R, H}), view(w, {G, H, H}), counts, G, GroupedForm::kForward,
                        0.0f);
    ops->grouped_matmul(view(r.gdw, {G, H, H}), view(r.gy, {R, H}), view(y, {R, H}), counts, G,
                        GroupedForm::kWeightGrad, 0.0f);
    return r;
  };
  const Result one = run(1), four = run(4);
  EXPECT_EQ(one.indices, four.indices);
  EXPECT_TRUE(same_bits(one.probs, four.probs));
  EXPECT_TRUE(same_bits(one.scores, four.scores));
  EXPECT_TRUE(same_bits(one.dlogits, four.dlogits));
  EXPECT_TRUE(same_bits(one.x_perm, four.x_perm));
  EXPECT_TRUE(same_bits(one.dx, four.dx));
  EXPECT_TRUE(same_bits(one.out, four.out));
  EXPECT_TRUE(same_bits(one.dy, four.dy));
  EXPECT_TRUE(same_bits(one.dp, four.dp));
  EXPECT_TRUE(same_bits(one.gy, four.gy));
  EXPECT_TRUE(same_bits(one.gdw, four.gdw));
}

// ---- bad inputs ------------------------------------------------------------------------

TEST(OpsMoe, RouterRejectsBadInputs) {
  auto ops = backend::make_cpu_ops(1);
  constexpr int64_t T = 3, E = 4, k = 2;
  std::vector<float> logits = random_vector(T * E, 101), probs(T * k), scores(T * E), dl(T * E), lse(T);
  std::vector<int32_t> idx(T * k);
  auto topk = [&](Tensor i, Tensor p, Tensor s, Tensor l, int64_t kk, RouterScore fn) {
    ops->router_topk(i, p, s, l, kk, fn, false);
  };
  const Tensor I = view(idx, {T, k}), P = view(probs, {T, k}), S = view(scores, {T, E}), L = view(logits, {T, E});
  expect_invalid([&] { topk(I, P, S, L, 0, RouterScore::kSoftmax); });
  expect_invalid([&] { topk(I, P, S, L, E + 1, RouterScore::kSoftmax); });
  expect_invalid([&] { topk(I, P, S, L, k, static_cast<RouterScore>(7)); });
  expect_invalid([&] { topk(view(idx, {T, k - 1}), P, S, L, k, RouterScore::kSoftmax); });
  expect_invalid([&] { topk(P, P, S, L, k, RouterScore::kSoftmax); });  // indices must be I32
  expect_invalid([&] { topk(I, view(probs, {T - 1, k}), S, L, k, RouterScore::kSoftmax); });
  expect_invalid([&] { topk(I, P, view(scores, {T, E - 1}), L, k, RouterScore::kSoftmax); });
  expect_invalid([&] { topk(I, P, S, view(logits, {T * E}), k, RouterScore::kSoftmax); });
  const Error e = error_of([&] { topk(I, view(probs, {k, T}), S, L, k, RouterScore::kSigmoid); });
  EXPECT_TRUE(contains(e.what(), "router_topk") && contains(e.what(), "probs") && contains(e.what(), "[3, 2]"))
      << e.what();

  ops->router_topk(I, P, S, L, k, RouterScore::kSoftmax, false);
  auto bwd = [&](Tensor d, Tensor i) {
    ops->router_topk_bwd(d, P, Tensor(), L, i, k, RouterScore::kSoftmax, false);
  };
  bwd(view(dl, {T, E}), I);  // valid
  expect_invalid([&] { bwd(view(dl, {T, E - 1}), I); });
  std::vector<int32_t> bad = idx;
  bad[3] = static_cast<int32_t>(E);
  expect_invalid([&] { bwd(view(dl, {T, E}), view(bad, {T, k})); });
  bad = idx;
  bad[2] = -1;
  expect_invalid([&] { bwd(view(dl, {T, E}), view(bad, {T, k})); });
  bad = idx;
  bad[5] = bad[4];
  const Error dup = error_of([&] { bwd(view(dl, {T, E}), view(bad, {T, k})); });
  EXPECT_TRUE(contains(dup.what(), "indices[2, 1]") && contains(dup.what(), "repeats")) << dup.what();

  expect_invalid([&] { ops->router_lse(view(lse, {T - 1}), L); });
  expect_invalid([&] { ops->router_z_loss_bwd(view(dl, {T, E}), L, view(lse, {T - 1}), 1.0f); });
  expect_invalid([&] { ops->router_z_loss_bwd(view(dl, {T, E}), L, view(lse, {T}), kNaN); });
}

TEST(OpsMoe, PermutationsRejectBadRows) {
  auto ops = backend::make_cpu_ops(1);
  constexpr int64_t T = 3, k = 2, R = 7, H = 2;
  std::vector<float> x(T * H), x_perm(R * H), probs(T * k), dprobs(T * k);
  std::vector<int32_t> good = {0, 5, -1, 2, 6, 1};
  const Tensor X = view(x, {T, H}), XP = view(x_perm, {R, H});
  ops->moe_permute(XP, X, view(good, {T, k}));  // valid
  for (int32_t v : {-2, static_cast<int32_t>(R)}) {
    std::vector<int32_t> bad = good;
    bad[3] = v;
    expect_invalid([&] { ops->moe_permute(XP, X, view(bad, {T, k})); });
    expect_invalid([&] { ops->moe_permute_bwd(X, XP, view(bad, {T, k})); });
    expect_invalid([&] { ops->moe_unpermute(X, XP, view(bad, {T, k}), Tensor()); });
    expect_invalid([&] { ops->moe_unpermute_bwd(XP, Tensor(), X, Tensor(), view(bad, {T, k}), Tensor()); });
  }
  std::vector<int32_t> across = good;
  across[4] = across[1];  // tokens 0 and 2 name row 5
  const Error e = error_of([&] { ops->moe_permute(XP, X, view(across, {T, k})); });
  EXPECT_TRUE(contains(e.what(), "moe_permute") && contains(e.what(), "rows[2, 0] = 5") &&
              contains(e.what(), "rows[0, 1]"))
      << e.what();
  std::vector<int32_t> within = good;
  within[1] = within[0];  // both choices of token 0 name row 0
  expect_invalid([&] { ops->moe_unpermute(X, XP, view(within, {T, k}), Tensor()); });
  expect_invalid([&] { ops->moe_permute_bwd(X, XP, view(within, {T, k})); });

  const Tensor G = view(good, {T, k});
  expect_invalid([&] { ops->moe_permute(view(x_perm, {R / 2, 2 * H}), X, G); });     // hidden differs
  expect_invalid([&] { ops->moe_permute(XP, view(x, {T * H}), G); });               // x not [T, H]
  expect_invalid([&] { ops->moe_permute(XP, view(x, {H, T}), G); });               // T differs
  expect_invalid([&] { ops->moe_permute(XP, X, view(probs, {T, k})); });            // rows not I32
  expect_invalid([&] { ops->moe_unpermute(X, XP, G, view(probs, {k, T})); });       // probs shape
  expect_invalid([&] { ops->moe_unpermute_bwd(XP, view(dprobs, {T, k}), X, Tensor(), G, Tensor()); });  // no y
  expect_invalid([&] { ops->moe_unpermute_bwd(XP, view(dprobs, {T, k}), X, view(x_perm, {R - 1, H}), G, Tensor()); });
  expect_invalid([&] { ops->moe_unpermute_bwd(XP, view(dprobs, {T * k}), X, XP, G, Tensor()); });
}

TEST(OpsMoe, GroupedMatmulRejectsBadInputs) {
  auto ops = backend::make_cpu_ops(1);
  constexpr int64_t G = 2, R = 5, in = 3, out = 4;
  std::vector<float> x(R * in), y(R * out), w(G * out * in);
  const int64_t good[G] = {2, 3}, short_sum[G] = {2, 2}, negative[G] = {-1, 6}, long_sum[G] = {4, 3};
  auto fwd = [&](const int64_t* counts, Tensor c, Tensor a, Tensor b, int64_t groups) {
    ops->grouped_matmul(c, a, b, counts, groups, GroupedForm::kForward, 0.0f);
  };
  const Tensor X = view(x, {R, in}), Y = view(y, {R, out}), W = view(w, {G, out, in});
  fwd(good, Y, X, W, G);  // valid
  expect_invalid([&] { fwd(short_sum, Y, X, W, G); });
  expect_invalid([&] { fwd(negative, Y, X, W, G); });
  expect_invalid([&] { fwd(long_sum, Y, X, W, G); });
  expect_invalid([&] { fwd(nullptr, Y, X, W, G); });
  expect_invalid([&] { fwd(good, Y, X, W, 0); });
  expect_invalid([&] { fwd(good, Y, X, view(w, {G * out, in}), G); });      // b not stacked
  expect_invalid([&] { fwd(good, Y, X, view(w, {1, G * out, in}), G); });  // b holds one group
  expect_invalid([&] { fwd(good, view(y, {R, out / 2, 2}), X, W, G); });    // c not [R, out]
  expect_invalid([&] { fwd(good, X, X, W, G); });                           // c has in columns
  expect_invalid([&] { ops->grouped_matmul(X, X, W, good, G, GroupedForm::kInputGrad, 0.0f); });  // a not [R, out]
  expect_invalid([&] { ops->grouped_matmul(W, Y, view(x, {R - 1, in}), good, G, GroupedForm::kWeightGrad, 0.0f); });
  expect_invalid([&] { ops->grouped_matmul(view(w, {G, in, out}), Y, X, good, G, GroupedForm::kWeightGrad, 0.0f); });
  expect_invalid([&] { ops->grouped_matmul(Y, X, W, good, G, static_cast<GroupedForm>(3), 0.0f); });
  expect_invalid([&] { ops->grouped_matmul(Y, X, W, good, G, GroupedForm::kForward, kNaN); });
  const Error e = error_of([&] { fwd(short_sum, Y, X, W, G); });
  EXPECT_TRUE(contains(e.what(), "grouped_matmul") && contains(e.what(), "sum to 4")) << e.what();
}

}  // namespace
}  // namespace mpt::test
