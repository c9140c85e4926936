// The CUDA mixture-of-experts ops against the CPU oracle: router top-k with both score
// functions and pre_softmax, its backward with and without the load-balancing scores, the
// z-loss pieces, and the four token permutations over maps with dropped choices (-1) and
// padding rows, for 1 to 128 experts (and a few past the shared-memory sizes), k from 1 to
// 8, ties, zero tokens and odd widths. Also: repeats give the same bits, and an invalid map
// or invalid indices turn the outputs NaN instead of reading out of bounds.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "core/error.h"
#include "device_util.h"

namespace mpt {
namespace {

using backend::RouterScore;
using device_testing::Backends;
using device_testing::Pair;

constexpr double kTol = 1e-5;

// The device values equal the CPU's in p.host: NaN exactly where the CPU has NaN, and within
// `tol` of the tensor's scale elsewhere.
void expect_matches_cpu(const Pair& p, double tol, const std::string& what) {
  const std::vector<float> got = p.download_f32();
  const auto* want = reinterpret_cast<const float*>(p.host.data());
  for (size_t i = 0; i < got.size(); ++i) {
    if (std::isnan(got[i]) != std::isnan(want[i])) {
      ADD_FAILURE() << what << ": element " << i << " is " << got[i] << " on the GPU, " << want[i] << " on the CPU";
      return;
    }
  }
  const double e = device_testing::scaled_error(got, want, got.size());
  EXPECT_LE(e, tol) << what << ": the GPU result differs from the CPU's by " << e << " (scaled)";
}

void expect_same_indices(Pair& p, const std::string& what) {
  const std::vector<int32_t> got = p.download_i32();
  for (size_t i = 0; i < got.size(); ++i)
    if (got[i] != p.i()[i]) {
      ADD_FAILURE() << what << ": index " << i << " (token " << i / static_cast<size_t>(p.shape[1]) << ") is "
                    << got[i] << " on the GPU, " << p.i()[i] << " on the CPU";
      return;
    }
}

void expect_all_nan(const std::vector<float>& v, const std::string& what) {
  for (size_t i = 0; i < v.size(); ++i)
    if (!std::isnan(v[i])) {
      ADD_FAILURE() << what << ": element " << i << " is " << v[i] << ", expected NaN";
      return;
    }
}

void expect_invalid(const std::function<void()>& call, const std::string& op, const std::string& part) {
  try {
    call();
    ADD_FAILURE() << op << ": expected an invalid-argument error";
  } catch (const Error& e) {
    EXPECT_EQ(e.status(), Status::kInvalidArgument) << e.what();
    EXPECT_NE(std::string(e.what()).find(op + ": "), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find(part), std::string::npos) << e.what();
  }
}

std::string fn_name(RouterScore fn, bool pre) {
  return fn == RouterScore::kSigmoid ? "sigmoid" : pre ? "softmax(pre)" : "softmax";
}

std::string dims(int64_t T, int64_t E, int64_t k) {
  return "T " + std::to_string(T) + " E " + std::to_string(E) + " k " + std::to_string(k);
}

// Logits on a grid of 0.5: many exact ties, so the tie rule decides most choices.
void quantize(Pair& p) {
  for (int64_t i = 0; i < p.numel(); ++i) p.f()[i] = std::round(p.f()[i] * 2.0f) / 2.0f;
  p.upload();
}

// ---- router top-k -------------------------------------------------------------------------

void check_topk(Backends& be, int64_t T, int64_t E, int64_t k, RouterScore fn, bool pre, bool with_scores,
                bool ties, uint64_t seed) {
  const std::string what = "router_topk " + fn_name(fn, pre) + " " + dims(T, E, k) + (ties ? " ties" : "");
  auto logits = be.f32({T, E}, seed, 2.0f);
  if (ties) quantize(*logits);
  auto indices = be.i32({T, k}, std::vector<int32_t>(static_cast<size_t>(T * k), -7));
  auto probs = be.f32({T, k}, seed + 1);
  auto scores = be.f32({T, E}, seed + 2);
  const Tensor sg = with_scores ? scores->gpu_t() : Tensor(), sc = with_scores ? scores->cpu() : Tensor();
  be.gpu->router_topk(indices->gpu_t(), probs->gpu_t(), sg, logits->gpu_t(), k, fn, pre);
  be.cpu->router_topk(indices->cpu(), probs->cpu(), sc, logits->cpu(), k, fn, pre);
  expect_same_indices(*indices, what + " indices");
  expect_matches_cpu(*probs, kTol, what + " probs");
  if (with_scores) expect_matches_cpu(*scores, kTol, what + " scores");
}

struct RouterShape {
  int64_t tokens, experts, k;
};

// Realistic (8..128 experts, k up to 8), odd extents, one expert, k = E, and widths past
// what four or one warp's shared memory holds by default.
const std::vector<RouterShape> kRouterShapes = {{37, 8, 2},  {64, 128, 8}, {5, 128, 1},  {33, 64, 6},
                                                {3, 1, 1},   {17, 33, 3},  {9, 7, 7},    {130, 16, 4},
                                                {4, 1000, 8}, {3, 5000, 5}, {2, 20000, 4}};

TEST(CudaMoe, RouterTopkMatchesTheCpu) {
  MPT_SKIP_WITHOUT_GPU();
  Backends be;
  uint64_t seed = 100;
  for (const auto& s : kRouterShapes)
    for (RouterScore fn : {RouterScore::kSoftmax, RouterScore::kSigmoid})
      for (bool pre : {false, true})
        for (bool with_scores : {false, true}) check_topk(be, s.tokens, s.experts, s.k, fn, pre, with_scores, false, seed += 7);
}

TEST(CudaMoe, RouterTopkTiesGoToTheLowerExpertAsOnTheCpu) {
  MPT_SKIP_WITHOUT_GPU();
  Backends be;
  uint64_t seed = 300;
  for (const auto& s : kRouterShapes)
    for (RouterScore fn : {RouterScore::kSoftmax, RouterScore::kSigmoid})
      for (bool pre : {false, true}) check_topk(be, s.tokens, s.experts, s.k, fn, pre, true, true, seed += 7);
}

TEST(CudaMoe, RouterTopkOrderOnHandMadeRows) {
  MPT_SKIP_WITHOUT_GPU();
  Backends be;
  // Row 0: all equal -> experts 0, 1, 2. Row 1: 5 and 2 tie highest, then 7 -> 2, 5, 7.
  // Row 2: a NaN ranks first (as torch.topk ranks it), then the largest.
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const std::vector<float> rows = {0, 0, 0, 0, 0, 0, 0, 0,  //
                                   0, 0, 3, 0, 0, 3, 0, 1,  //
                                   1, 2, 0, nan, 0, 0, 0, 0};
  for (RouterScore fn : {RouterScore::kSoftmax, RouterScore::kSigmoid}) {
    auto logits = be.f32({3, 8});
    std::copy(rows.begin(), rows.end(), logits->f());
    logits->upload();
    auto indices = be.i32({3, 3}, std::vector<int32_t>(9, 0));
    auto probs = be.f32({3, 3});
    be.gpu->router_topk(indices->gpu_t(), probs->gpu_t(), Tensor(), logits->gpu_t(), 3, fn, false);
    const std::vector<int32_t> got = indices->download_i32();
    const std::vector<int32_t> want = {0, 1, 2, 2, 5, 7, 3, 1, 0};
    EXPECT_EQ(got, want) << fn_name(fn, false);
    const std::vector<float> p = probs->download_f32();
    // Row 0: three equal scores share the probability evenly.
    for (int j = 0; j < 3; ++j) EXPECT_NEAR(p[static_cast<size_t>(j)], 1.0f / 3.0f, 1e-6f) << fn_name(fn, false);
  }
}

TEST(CudaMoe, RouterTopkWithoutTokensDoesNothing) {
  MPT_SKIP_WITHOUT_GPU();
  Backends be;
  auto logits = be.f32({0, 16});
  auto indices = be.i32({0, 2}, {});
  auto probs = be.f32({0, 2});
  be.gpu->router_topk(indices->gpu_t(), probs->gpu_t(), Tensor(), logits->gpu_t(), 2, RouterScore::kSoftmax, false);
  auto dlogits = be.f32({0, 16});
  be.gpu->router_topk_bwd(dlogits->gpu_t(), probs->gpu_t(), Tensor(), logits->gpu_t(), indices->gpu_t(), 2,
                          RouterScore::kSigmoid, false);
  auto lse = be.f32({0});
  be.gpu->router_lse(lse->gpu_t(), logits->gpu_t());
  be.gpu->router_z_loss_bwd(dlogits->gpu_t(), logits->gpu_t(), lse->gpu_t(), 0.5f);
  be.gpu->synchronize();
}

// ---- router backward and z-loss -------------------------------------------------------------

void check_topk_bwd(Backends& be, int64_t T, int64_t E, int64_t k, RouterScore fn, bool pre, bool with_dscores,
                    uint64_t seed) {
  const std::string what = "router_topk_bwd " + fn_name(fn, pre) + " " + dims(T, E, k) +
                           (with_dscores ? " with dscores" : "");
  auto logits = be.f32({T, E}, seed, 2.0f);
  // The CPU's own selection, so the indices are valid and equal on both sides.
  auto indices = be.i32({T, k}, std::vector<int32_t>(static_cast<size_t>(T * k), 0));
  auto probs = be.f32({T, k});
  be.cpu->router_topk(indices->cpu(), probs->cpu(), Tensor(), logits->cpu(), k, fn, pre);
  indices->upload();
  auto dprobs = be.f32({T, k}, seed + 1);
  auto dscores = be.f32({T, E}, seed + 2);
  auto dlogits = be.f32({T, E}, seed + 3);  // overwritten
  const Tensor dsg = with_dscores ? dscores->gpu_t() : Tensor(), dsc = with_dscores ? dscores->cpu() : Tensor();
  be.gpu->router_topk_bwd(dlogits->gpu_t(), dprobs->gpu_t(), dsg, logits->gpu_t(), indices->gpu_t(), k, fn, pre);
  be.cpu->router_topk_bwd(dlogits->cpu(), dprobs->cpu(), dsc, logits->cpu(), indices->cpu(), k, fn, pre);
  expect_matches_cpu(*dlogits, kTol, what);
}

TEST(CudaMoe, RouterTopkBackwardMatchesTheCpu) {
  MPT_SKIP_WITHOUT_GPU();
  Backends be;
  uint64_t seed = 500;
  for (const auto& s : kRouterShapes)
    for (RouterScore fn : {RouterScore::kSoftmax, RouterScore::kSigmoid})
      for (bool pre : {false, true})
        for (bool with_dscores : {false, true})
          check_topk_bwd(be, s.tokens, s.experts, s.k, fn, pre, with_dscores, seed += 11);
}

TEST(CudaMoe, RouterTopkBackwardMakesATokenWithInvalidIndicesNaN) {
  MPT_SKIP_WITHOUT_GPU();
  Backends be;
  const int64_t T = 4, E = 16, k = 3;
  auto logits = be.f32({T, E}, 7);
  // Token 1 repeats an expert, token 2 names expert 16 (out of range); 0 and 3 are valid.
  auto indices = be.i32({T, k}, {0, 1, 2, 4, 4, 5, 1, 16, 3, 15, 14, 13});
  auto dprobs = be.f32({T, k}, 8);
  auto dlogits = be.f32({T, E});
  be.gpu->router_topk_bwd(dlogits->gpu_t(), dprobs->gpu_t(), Tensor(), logits->gpu_t(), indices->gpu_t(), k,
                          RouterScore::kSoftmax, false);
  const std::vector<float> got = dlogits->download_f32();
  for (int64_t t = 0; t < T; ++t) {
    const bool invalid = t == 1 || t == 2;
    for (int64_t e = 0; e < E; ++e)
      EXPECT_EQ(std::isnan(got[static_cast<size_t>(t * E + e)]), invalid) << "token " << t << " expert " << e;
  }
}

TEST(CudaMoe, RouterLseAndZLossBackwardMatchTheCpu) {
  MPT_SKIP_WITHOUT_GPU();
  Backends be;
  uint64_t seed = 700;
  for (const auto& s : kRouterShapes) {
    const std::string what = dims(s.tokens, s.experts, 0);
    auto logits = be.f32({s.tokens, s.experts}, seed += 3, 3.0f);
    auto lse = be.f32({s.tokens}, seed + 1);
    be.gpu->router_lse(lse->gpu_t(), logits->gpu_t());
    be.cpu->router_lse(lse->cpu(), logits->cpu());
    expect_matches_cpu(*lse, kTol, "router_lse " + what);
    auto dlogits = be.f32({s.tokens, s.experts}, seed + 2);  // accumulated into
    be.gpu->router_z_loss_bwd(dlogits->gpu_t(), logits->gpu_t(), lse->gpu_t(), 1e-3f);
    be.cpu->router_z_loss_bwd(dlogits->cpu(), logits->cpu(), lse->cpu(), 1e-3f);
    expect_matches_cpu(*dlogits, kTol, "router_z_loss_bwd " + what);
  }
}

TEST(CudaMoe, RouterRepeatsGiveTheSameBits) {
  MPT_SKIP_WITHOUT_GPU();
  Backends be;
  const int64_t T = 257, E = 128, k = 8;
  auto logits = be.f32({T, E}, 11);
  auto indices = be.i32({T, k}, std::vector<int32_t>(static_cast<size_t>(T * k), 0));
  auto probs = be.f32({T, k});
  auto scores = be.f32({T, E});
  auto dprobs = be.f32({T, k}, 12);
  auto dscores = be.f32({T, E}, 13);
  auto dlogits = be.f32({T, E});
  std::vector<float> first_probs, first_scores, first_dlogits;
  for (int rep = 0; rep < 2; ++rep) {
    be.gpu->router_topk(indices->gpu_t(), probs->gpu_t(), scores->gpu_t(), logits->gpu_t(), k, RouterScore::kSigmoid,
                        false);
    be.gpu->router_topk_bwd(dlogits->gpu_t(), dprobs->gpu_t(), dscores->gpu_t(), logits->gpu_t(), indices->gpu_t(), k,
                            RouterScore::kSigmoid, false);
    if (rep == 0) {
      first_probs = probs->download_f32();
      first_scores = scores->download_f32();
      first_dlogits = dlogits->download_f32();
      continue;
    }
    EXPECT_EQ(std::memcmp(first_probs.data(), probs->download_f32().data(), first_probs.size() * 4), 0);
    EXPECT_EQ(std::memcmp(first_scores.data(), scores->download_f32().data(), first_scores.size() * 4), 0);
    EXPECT_EQ(std::memcmp(first_dlogits.data(), dlogits->download_f32().data(), first_dlogits.size() * 4), 0);
  }
}

// ---- permutations -------------------------------------------------------------------------------

// rows [T, k]: each choice dropped with probability `drop`, the kept ones on distinct rows
// of [0, R) in random order; the rows left over are padding.
std::vector<int32_t> random_rows(int64_t T, int64_t k, int64_t R, double drop, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<int32_t> free_rows(static_cast<size_t>(R));
  std::iota(free_rows.begin(), free_rows.end(), 0);
  std::shuffle(free_rows.begin(), free_rows.end(), rng);
  std::uniform_real_distribution<double> u(0.0, 1.0);
  std::vector<int32_t> rows(static_cast<size_t>(T * k));
  size_t next = 0;
  for (auto& r : rows) r = (u(rng) < drop || next == free_rows.size()) ? -1 : free_rows[next++];
  return rows;
}

struct PermuteShape {
  int64_t tokens, choices, hidden, rows;
  double drop;
};

// Zero tokens (all padding), one element, odd widths, every choice dropped, rows exactly
// filled, k = 8 and widths past one block.
const std::vector<PermuteShape> kPermuteShapes = {{0, 2, 16, 4, 0.0},     {1, 1, 1, 1, 0.0},    {37, 2, 33, 80, 0.2},
                                                  {64, 8, 130, 600, 0.1}, {100, 4, 1, 450, 0.3}, {16, 2, 48, 40, 1.0},
                                                  {50, 2, 7, 100, 0.0},   {9, 3, 1000, 30, 0.25}, {5, 3, 0, 16, 0.1}};

std::string permute_name(const char* op, const PermuteShape& s) {
  return std::string(op) + " T " + std::to_string(s.tokens) + " k " + std::to_string(s.choices) + " H " +
         std::to_string(s.hidden) + " R " + std::to_string(s.rows) + " drop " + std::to_string(s.drop);
}

TEST(CudaMoe, PermuteAndItsBackwardMatchTheCpu) {
  MPT_SKIP_WITHOUT_GPU();
  Backends be;
  uint64_t seed = 900;
  for (const auto& s : kPermuteShapes) {
    auto rows = be.i32({s.tokens, s.choices}, random_rows(s.tokens, s.choices, s.rows, s.drop, seed += 5));
    auto x = be.f32({s.tokens, s.hidden}, seed + 1);
    auto x_perm = be.f32({s.rows, s.hidden}, seed + 2);  // padding rows must be zeroed
    be.gpu->moe_permute(x_perm->gpu_t(), x->gpu_t(), rows->gpu_t());
    be.cpu->moe_permute(x_perm->cpu(), x->cpu(), rows->cpu());
    expect_matches_cpu(*x_perm, 0.0, permute_name("moe_permute", s));

    auto dx_perm = be.f32({s.rows, s.hidden}, seed + 3);
    auto dx = be.f32({s.tokens, s.hidden}, seed + 4);  // overwritten
    be.gpu->moe_permute_bwd(dx->gpu_t(), dx_perm->gpu_t(), rows->gpu_t());
    be.cpu->moe_permute_bwd(dx->cpu(), dx_perm->cpu(), rows->cpu());
    expect_matches_cpu(*dx, 0.0, permute_name("moe_permute_bwd", s));
  }
}

TEST(CudaMoe, UnpermuteAndItsBackwardMatchTheCpu) {
  MPT_SKIP_WITHOUT_GPU();
  Backends be;
  uint64_t seed = 1100;
  for (const auto& s : kPermuteShapes)
    for (bool with_probs : {false, true})
      for (bool with_dprobs : {false, true}) {
        const std::string tag = std::string(with_probs ? " probs" : " no probs") + (with_dprobs ? " dprobs" : "");
        auto rows = be.i32({s.tokens, s.choices}, random_rows(s.tokens, s.choices, s.rows, s.drop, seed += 5));
        auto probs = be.f32({s.tokens, s.choices}, seed + 1);
        auto y = be.f32({s.rows, s.hidden}, seed + 2);
        auto out = be.f32({s.tokens, s.hidden}, seed + 3);  // overwritten
        const Tensor pg = with_probs ? probs->gpu_t() : Tensor(), pc = with_probs ? probs->cpu() : Tensor();
        be.gpu->moe_unpermute(out->gpu_t(), y->gpu_t(), rows->gpu_t(), pg);
        be.cpu->moe_unpermute(out->cpu(), y->cpu(), rows->cpu(), pc);
        // Sums of products: exact unless a compiler fuses the CPU's multiply-adds.
        expect_matches_cpu(*out, 1e-6, permute_name("moe_unpermute", s) + tag);

        auto dout = be.f32({s.tokens, s.hidden}, seed + 4);
        auto dy = be.f32({s.rows, s.hidden}, seed + 5);          // padding rows must be zeroed
        auto dprobs = be.f32({s.tokens, s.choices}, seed + 6);  // dropped choices get 0
        // Without dprobs, y is not needed and may be left out.
        const Tensor dpg = with_dprobs ? dprobs->gpu_t() : Tensor(), dpc = with_dprobs ? dprobs->cpu() : Tensor();
        const Tensor yg = with_dprobs ? y->gpu_t() : Tensor(), yc = with_dprobs ? y->cpu() : Tensor();
        be.gpu->moe_unpermute_bwd(dy->gpu_t(), dpg, dout->gpu_t(), yg, rows->gpu_t(), pg);
        be.cpu->moe_unpermute_bwd(dy->cpu(), dpc, dout->cpu(), yc, rows->cpu(), pc);
        expect_matches_cpu(*dy, 0.0, permute_name("moe_unpermute_bwd dy", s) + tag);
        if (with_dprobs) expect_matches_cpu(*dprobs, kTol, permute_name("moe_unpermute_bwd dprobs", s) + tag);
      }
}

TEST(CudaMoe, PaddingRowsAreZeroedAndDroppedChoicesContributeNothing) {
  MPT_SKIP_WITHOUT_GPU();
  Backends be;
  // Token 0 -> rows 2 and (dropped); token 1 -> rows 0 and 3; row 1 is padding.
  auto rows = be.i32({2, 2}, {2, -1, 0, 3});
  auto x = be.f32({2, 3});
  const float xv[] = {1, 2, 3, 4, 5, 6};
  std::copy(xv, xv + 6, x->f());
  x->upload();
  auto x_perm = be.f32({4, 3}, 5);
  be.gpu->moe_permute(x_perm->gpu_t(), x->gpu_t(), rows->gpu_t());
  const std::vector<float> want_perm = {4, 5, 6, 0, 0, 0, 1, 2, 3, 4, 5, 6};
  EXPECT_EQ(x_perm->download_f32(), want_perm);

  auto probs = be.f32({2, 2});
  const float pv[] = {0.5f, 100.0f, 0.25f, 2.0f};
  std::copy(pv, pv + 4, probs->f());
  probs->upload();
  auto out = be.f32({2, 3}, 6);
  be.gpu->moe_unpermute(out->gpu_t(), x_perm->gpu_t(), rows->gpu_t(), probs->gpu_t());
  // token 0: 0.5 * [1,2,3]; token 1: 0.25 * [4,5,6] + 2 * [4,5,6].
  const std::vector<float> want_out = {0.5f, 1.0f, 1.5f, 9.0f, 11.25f, 13.5f};
  EXPECT_EQ(out->download_f32(), want_out);
}

TEST(CudaMoe, PermutationRepeatsGiveTheSameBits) {
  MPT_SKIP_WITHOUT_GPU();
  Backends be;
  const int64_t T = 300, k = 8, H = 257, R = 2600;
  auto rows = be.i32({T, k}, random_rows(T, k, R, 0.1, 42));
  auto probs = be.f32({T, k}, 43);
  auto y = be.f32({R, H}, 44);
  auto dout = be.f32({T, H}, 45);
  auto out = be.f32({T, H});
  auto dy = be.f32({R, H});
  auto dprobs = be.f32({T, k});
  std::vector<float> first_out, first_dy, first_dprobs;
  for (int rep = 0; rep < 2; ++rep) {
    be.gpu->moe_unpermute(out->gpu_t(), y->gpu_t(), rows->gpu_t(), probs->gpu_t());
    be.gpu->moe_unpermute_bwd(dy->gpu_t(), dprobs->gpu_t(), dout->gpu_t(), y->gpu_t(), rows->gpu_t(), probs->gpu_t());
    if (rep == 0) {
      first_out = out->download_f32();
      first_dy = dy->download_f32();
      first_dprobs = dprobs->download_f32();
      continue;
    }
    EXPECT_EQ(std::memcmp(first_out.data(), out->download_f32().data(), first_out.size() * 4), 0);
    EXPECT_EQ(std::memcmp(first_dy.data(), dy->download_f32().data(), first_dy.size() * 4), 0);
    EXPECT_EQ(std::memcmp(first_dprobs.data(), dprobs->download_f32().data(), first_dprobs.size() * 4), 0);
  }
}

// The CPU throws for these maps; the GPU, which cannot read them without waiting, makes every
// output NaN (and reads nothing out of bounds).
TEST(CudaMoe, AnInvalidRowsMapMakesEveryOutputNaN) {
  MPT_SKIP_WITHOUT_GPU();
  Backends be;
  const int64_t T = 3, k = 2, H = 5, R = 6;
  const std::vector<std::vector<int32_t>> bad_maps = {
      {0, 1, 2, 1, 4, -1},   // row 1 named twice
      {0, 1, 2, 6, 4, -1},   // row 6 past R
      {0, 1, 2, -2, 4, -1},  // -2 is neither a row nor "dropped"
  };
  for (const auto& map : bad_maps) {
    auto rows = be.i32({T, k}, map);
    auto cpu_permute = [&] {
      auto xc = be.f32({T, H}, 1);
      auto pc = be.f32({R, H});
      be.cpu->moe_permute(pc->cpu(), xc->cpu(), rows->cpu());
    };
    EXPECT_THROW(cpu_permute(), Error);
    auto x = be.f32({T, H}, 1);
    auto x_perm = be.f32({R, H});
    be.gpu->moe_permute(x_perm->gpu_t(), x->gpu_t(), rows->gpu_t());
    expect_all_nan(x_perm->download_f32(), "moe_permute");
    auto dx = be.f32({T, H});
    be.gpu->moe_permute_bwd(dx->gpu_t(), x_perm->gpu_t(), rows->gpu_t());
    expect_all_nan(dx->download_f32(), "moe_permute_bwd");
    auto y = be.f32({R, H}, 2);
    auto out = be.f32({T, H});
    be.gpu->moe_unpermute(out->gpu_t(), y->gpu_t(), rows->gpu_t(), Tensor());
    expect_all_nan(out->download_f32(), "moe_unpermute");
    auto dy = be.f32({R, H});
    auto dprobs = be.f32({T, k});
    be.gpu->moe_unpermute_bwd(dy->gpu_t(), dprobs->gpu_t(), out->gpu_t(), y->gpu_t(), rows->gpu_t(), Tensor());
    expect_all_nan(dy->download_f32(), "moe_unpermute_bwd dy");
    expect_all_nan(dprobs->download_f32(), "moe_unpermute_bwd dprobs");
  }
  // A valid map afterwards gives finite results again (the flag is per call).
  auto rows = be.i32({T, k}, {0, 1, 2, 3, 4, -1});
  auto x = be.f32({T, H}, 1);
  auto x_perm = be.f32({R, H});
  be.gpu->moe_permute(x_perm->gpu_t(), x->gpu_t(), rows->gpu_t());
  for (float v : x_perm->download_f32()) EXPECT_FALSE(std::isnan(v));
}

TEST(CudaMoe, ArgumentErrorsNameTheOpAndTheArgument) {
  MPT_SKIP_WITHOUT_GPU();
  Backends be;
  auto logits = be.f32({4, 8}, 1);
  auto indices = be.i32({4, 2}, std::vector<int32_t>(8, 0));
  auto probs = be.f32({4, 2});
  auto probs_wrong = be.f32({4, 3});
  auto scores_wrong = be.f32({4, 7});
  expect_invalid([&] { be.gpu->router_topk(indices->gpu_t(), probs->gpu_t(), Tensor(), logits->gpu_t(), 9, RouterScore::kSoftmax, false); },
                 "router_topk", "k 9");
  expect_invalid([&] { be.gpu->router_topk(indices->gpu_t(), probs_wrong->gpu_t(), Tensor(), logits->gpu_t(), 2, RouterScore::kSoftmax, false); },
                 "router_topk", "probs");
  expect_invalid([&] { be.gpu->router_topk(indices->gpu_t(), probs->gpu_t(), scores_wrong->gpu_t(), logits->gpu_t(), 2, RouterScore::kSigmoid, false); },
                 "router_topk", "scores");
  expect_invalid([&] { be.gpu->router_topk(probs->gpu_t(), probs->gpu_t(), Tensor(), logits->gpu_t(), 2, RouterScore::kSoftmax, false); },
                 "router_topk", "indices must be I32");
  expect_invalid([&] { be.gpu->router_topk(indices->gpu_t(), probs->gpu_t(), Tensor(), logits->gpu_t(), 2, static_cast<RouterScore>(5), false); },
                 "router_topk", "unknown score function 5");
  auto dlogits_wrong = be.f32({4, 9});
  expect_invalid([&] { be.gpu->router_topk_bwd(dlogits_wrong->gpu_t(), probs->gpu_t(), Tensor(), logits->gpu_t(), indices->gpu_t(), 2, RouterScore::kSoftmax, false); },
                 "router_topk_bwd", "dlogits");
  auto lse_wrong = be.f32({5});
  expect_invalid([&] { be.gpu->router_lse(lse_wrong->gpu_t(), logits->gpu_t()); }, "router_lse", "lse");
  auto lse = be.f32({4});
  auto dlogits = be.f32({4, 8});
  expect_invalid([&] { be.gpu->router_z_loss_bwd(dlogits->gpu_t(), logits->gpu_t(), lse->gpu_t(), std::nanf("")); },
                 "router_z_loss_bwd", "scale");

  auto rows = be.i32({4, 2}, {0, 1, 2, 3, 4, 5, 6, 7});
  auto x = be.f32({4, 16});
  auto x_perm = be.f32({8, 16});
  auto x_perm_wrong = be.f32({8, 15});
  auto x_wrong = be.f32({3, 16});
  expect_invalid([&] { be.gpu->moe_permute(x_perm_wrong->gpu_t(), x->gpu_t(), rows->gpu_t()); }, "moe_permute", "x_perm");
  expect_invalid([&] { be.gpu->moe_permute(x_perm->gpu_t(), x_wrong->gpu_t(), rows->gpu_t()); }, "moe_permute", "x F32[3,16]");
  expect_invalid([&] { be.gpu->moe_permute_bwd(x->gpu_t(), x_perm->gpu_t(), probs->gpu_t()); }, "moe_permute_bwd", "rows must be I32");
  expect_invalid([&] { be.gpu->moe_unpermute(x->gpu_t(), x_perm->gpu_t(), rows->gpu_t(), probs_wrong->gpu_t()); },
                 "moe_unpermute", "probs");
  expect_invalid([&] { be.gpu->moe_unpermute_bwd(x_perm->gpu_t(), probs_wrong->gpu_t(), x->gpu_t(), x_perm->gpu_t(), rows->gpu_t(), Tensor()); },
                 "moe_unpermute_bwd", "dprobs");
  expect_invalid([&] { be.gpu->moe_unpermute_bwd(x_perm->gpu_t(), probs->gpu_t(), x->gpu_t(), Tensor(), rows->gpu_t(), Tensor()); },
                 "moe_unpermute_bwd", "y");
}

}  // namespace
}  // namespace mpt
