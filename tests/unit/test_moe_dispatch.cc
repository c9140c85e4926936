// The MoE token dispatchers at the layer level: moe_forward / moe_backward under expert
// parallelism (ranks as threads over gloo) against one-rank layers. Cases: a router that
// leaves one expert-parallel rank's experts without rows, allgather against alltoall at
// EP = 2 and EP = 2 x ETP = 2, and capacity dropping under EP.
//
// The oracle, member by member. Member m holds its own tokens x_m; with no tensor x context
// group its router statistics (the load-balancing counts, the losses) are those of x_m alone.
// So m's output, input gradient, router and shared-expert gradients, aux and z losses equal
// those of a one-rank layer run on x_m alone. An expert's weight gradient is a sum over the
// tokens routed to it, wherever they live, so the expert gradients a rank holds (its slice of
// them under ETP) equal the sum over members m of the one-rank layer's gradients on x_m.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <deque>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

#include "backend/ops.h"
#include "dist_threads.h"
#include "model/moe_layer.h"
#include "parallel/expert_parallel.h"
#include "parallel/tensor_parallel.h"
#include "test_ops_util.h"

namespace mpt::model {
namespace {

using parallel::TokenDispatcher;

constexpr int64_t kTokens = 6;  // per member
constexpr int64_t kHidden = 32;
constexpr int64_t kExperts = 4;
constexpr int64_t kTopK = 2;
constexpr uint64_t kSeed = 1234;
constexpr float kAuxScale = 0.5f;
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
const char* const kPrefix = "decoder.layers.0.mlp.";

struct Case {
  int64_t shared_ffn = 0;
  bool skewed = false;  // every token to experts 0 and 1
  float capacity_factor = 0;
  bool pad = false;
};

std::string describe(const Case& k) {
  std::ostringstream s;
  s << (k.skewed ? "skewed" : "random") << " router, shared ffn " << k.shared_ffn;
  if (k.capacity_factor > 0) s << ", capacity factor " << k.capacity_factor << (k.pad ? " padded" : "");
  return s.str();
}

// hidden 32, 4 experts of 16 gated SiLU units, top 2, both router losses.
GPTDims moe_dims(const Case& k) {
  GPTDims d;
  d.num_layers = 1;
  d.hidden = kHidden;
  d.seq = kTokens;
  d.micro_batch = 1;
  d.num_experts = kExperts;
  d.moe_topk = kTopK;
  d.moe_ffn = 16;
  d.shared_ffn = k.shared_ffn;
  d.gated = true;
  d.activation = backend::Activation::kSilu;
  d.aux_loss_coeff = 1e-2f;
  d.z_loss_coeff = 1e-3f;
  d.capacity_factor = k.capacity_factor;
  d.pad_to_capacity = k.pad;
  d.init_std = 0.1f;
  return d;
}

// Member m's tokens; feature 0 is at least 1 so that the skewed router's rows, a multiple of
// e_0, decide every token the same way.
std::vector<float> tokens_of(int64_t m) {
  std::vector<float> x = test::random_vector(kTokens * kHidden, 100 + static_cast<uint64_t>(m));
  for (int64_t t = 0; t < kTokens; ++t) x[t * kHidden] = 1.0f + std::fabs(x[t * kHidden]);
  return x;
}
std::vector<float> dout_of(int64_t m) {
  return test::random_vector(kTokens * kHidden, 200 + static_cast<uint64_t>(m));
}

// What one forward + backward of a layer produced on one rank.
struct Result {
  std::vector<float> out, dx;
  std::vector<float> grads, egrads;  // laid out by the layer's registries
  std::vector<int32_t> indices, rows;
  std::vector<float> probs;
  double aux_loss = 0, z_loss = 0;
  int64_t received_rows = 0;  // rows this rank's experts computed
};

// One MoE MLP with its parameters (initialised by name, so equal at every layout) and its
// planned activations, each in its own buffer filled with NaN so a read of a value never
// written shows.
class Layer {
 public:
  Layer(const GPTDims& dims, bool skewed) : d_(dims) {
    p_ = register_moe(reg_, ereg_, d_, kPrefix, 0.1f);
    params_.assign(static_cast<size_t>(reg_.total_numel()), 0.0f);
    eparams_.assign(static_cast<size_t>(ereg_.total_numel()), 0.0f);
    reg_.initialize(params_.data(), kSeed);
    ereg_.initialize(eparams_.data(), kSeed);
    if (skewed) {
      float* router = reg_.view(params_.data(), p_.router).f();
      for (int64_t e = 0; e < kExperts; ++e) router[e * kHidden] += e < 2 ? 4.0f : -4.0f;
    }
    auto f32 = [this](Tensor& t, std::initializer_list<int64_t> shape) {
      t = Tensor(nullptr, DType::kF32, shape);
      f32_store_.emplace_back(static_cast<size_t>(t.numel()), kNaN);
      t.data = f32_store_.back().data();
    };
    auto i32 = [this](Tensor& t, std::initializer_list<int64_t> shape) {
      t = Tensor(nullptr, DType::kI32, shape);
      i32_store_.emplace_back(static_cast<size_t>(t.numel()), -7);
      t.data = i32_store_.back().data();
    };
    plan_moe(d_, acts_, f32, f32, i32);
    plan_moe_scratch(d_, scratch_, f32, f32, i32);
  }
  Layer(const Layer&) = delete;
  Layer& operator=(const Layer&) = delete;

  const ParamRegistry& reg() const { return reg_; }
  const ParamRegistry& ereg() const { return ereg_; }

  // Forward (training) and backward of tokens x with output gradient dout, from zero
  // gradients.
  Result run(backend::Ops& ops, const parallel::ExpertParallel& ep, std::vector<float> x, std::vector<float> dout) {
    const int64_t R = d_.rows(), H = d_.hidden, k = d_.moe_topk;
    std::vector<float> grads(params_.size(), 0.0f), egrads(eparams_.size(), 0.0f);
    Result r;
    r.out.assign(static_cast<size_t>(R * H), kNaN);
    r.dx.assign(static_cast<size_t>(R * H), kNaN);
    const parallel::TensorParallel tp;
    const MoeContext c{ops,       d_, reg_, params_.data(), grads.data(), 0, ereg_, eparams_.data(),
                       egrads.data(), 0, tp, ep, Tensor(), Tensor()};
    const Tensor X = test::view(x, {R, H}), out = test::view(r.out, {R, H});
    moe_forward(c, p_, acts_, scratch_, X, out, true);
    moe_backward(c, p_, acts_, scratch_, X, test::view(dout, {R, H}), test::view(r.dx, {R, H}), kAuxScale);
    ops.synchronize();
    r.grads = std::move(grads);
    r.egrads = std::move(egrads);
    r.indices.assign(acts_.indices.i(), acts_.indices.i() + R * k);
    r.rows.assign(acts_.rows.i(), acts_.rows.i() + R * k);
    r.probs.assign(acts_.probs.f(), acts_.probs.f() + R * k);
    r.aux_loss = acts_.aux_loss;
    r.z_loss = acts_.z_loss;
    r.received_rows = ep.size() > 1 ? acts_.exchange.rows : acts_.routing.total_rows;
    return r;
  }

 private:
  GPTDims d_;
  ParamRegistry reg_, ereg_;
  MoeParams p_;
  std::vector<float> params_, eparams_;
  std::deque<std::vector<float>> f32_store_;
  std::deque<std::vector<int32_t>> i32_store_;
  MoeActs acts_;
  MoeScratch scratch_;
};

// max |got - want| <= rtol * max |want| over the whole tensor (so all-zero wants must be met
// exactly).
void expect_close(const std::string& what, const float* got, const float* want, int64_t n, double rtol) {
  double scale = 0, err = 0;
  int64_t worst = 0;
  for (int64_t i = 0; i < n; ++i) {
    scale = std::max(scale, static_cast<double>(std::fabs(want[i])));
    const double e = std::fabs(static_cast<double>(got[i]) - want[i]);
    if (!(e <= err)) {  // NaN counts as the worst
      err = std::isnan(e) ? std::numeric_limits<double>::infinity() : e;
      worst = i;
    }
  }
  EXPECT_LE(err, rtol * scale) << what << ": element " << worst << " is " << (n ? got[worst] : 0.0f) << ", expected "
                               << (n ? want[worst] : 0.0f) << " (max |expected| " << scale << ")";
}
void expect_close(const std::string& what, const std::vector<float>& got, const std::vector<float>& want, double rtol) {
  ASSERT_EQ(got.size(), want.size()) << what;
  expect_close(what, got.data(), want.data(), static_cast<int64_t>(got.size()), rtol);
}

// Every parameter of `got_reg` (a slice at this rank's layout) against the same slice of the
// whole parameter of that name in `want_reg`.
void expect_params_close(const std::string& what, const ParamRegistry& got_reg, const std::vector<float>& got,
                         const ParamRegistry& want_reg, const std::vector<float>& want, double rtol) {
  for (const ParamInfo& p : got_reg.params()) {
    const int j = want_reg.find(p.name);
    ASSERT_GE(j, 0) << what << ": " << p.name << " is not in the reference";
    const ParamInfo& w = want_reg.at(j);
    ASSERT_EQ(w.shape, p.global_shape) << what << ": " << p.name;
    std::vector<float> slice(static_cast<size_t>(p.numel), kNaN);
    for_each_split_run(p.shape, p.global_shape, p.tp, p.tp.rank, [&](int64_t local, int64_t global, int64_t n) {
      std::copy_n(want.begin() + w.offset + global, n, slice.begin() + local);
    });
    expect_close(what + " " + p.name, got.data() + p.offset, slice.data(), p.numel, rtol);
  }
}

struct Layout {
  int64_t ep = 2, etp = 1;
  int64_t members() const { return ep * etp; }
};

// The one-rank layer run on each member's tokens alone.
struct Oracle {
  explicit Oracle(const Case& k) : layer(moe_dims(k), k.skewed) {}
  Layer layer;
  std::vector<Result> member;     // [m]
  std::vector<float> expert_sum;  // sum over members of the expert gradients
};

void run_oracle(Oracle& o, int64_t members) {
  auto ops = backend::make_cpu_ops(1);
  const parallel::ExpertParallel one;
  for (int64_t m = 0; m < members; ++m) o.member.push_back(o.layer.run(*ops, one, tokens_of(m), dout_of(m)));
  o.expert_sum.assign(o.member[0].egrads.size(), 0.0f);
  for (const Result& r : o.member)
    for (size_t i = 0; i < r.egrads.size(); ++i) o.expert_sum[i] += r.egrads[i];
}

constexpr TokenDispatcher kDispatchers[] = {TokenDispatcher::kAllGather, TokenDispatcher::kAllToAll};
const char* name_of(TokenDispatcher t) { return t == TokenDispatcher::kAllGather ? "allgather" : "alltoall"; }

// Runs case k at `layout` with both dispatchers, each member on its own tokens; checks each
// member against the oracle (1e-5) and the two dispatchers against each other (1e-6).
// Returns the results [dispatcher][member].
std::vector<std::vector<Result>> run_and_check(const Case& k, const Layout& l, const Oracle& o) {
  const int64_t world = l.members();
  std::vector<std::vector<Result>> got(2, std::vector<Result>(static_cast<size_t>(world)));
  dist::testing::run_ranks(world, [&](dist::testing::RankEnv& env) {
    const int64_t m = env.rank;
    auto comm = dist::testing::world_comm(env);
    auto ops = backend::make_cpu_ops(1);
    const std::string where = describe(k) + ", EP " + std::to_string(l.ep) + " x ETP " + std::to_string(l.etp) +
                              ", member " + std::to_string(m);
    for (size_t i = 0; i < 2; ++i) {
      const TokenDispatcher dispatcher = kDispatchers[i];
      GPTDims d = moe_dims(k);
      d.ep = l.ep;
      d.ep_rank = m / l.etp;
      d.etp = l.etp;
      d.etp_rank = m % l.etp;
      d.alltoall = dispatcher == TokenDispatcher::kAllToAll;
      const parallel::ExpertParallel ep(comm.get(), d.ep, d.ep_rank, d.etp, d.etp_rank, nullptr, dispatcher);
      Layer layer(d, k.skewed);
      Result& r = got[i][static_cast<size_t>(m)];
      r = layer.run(*ops, ep, tokens_of(m), dout_of(m));

      const std::string w = where + " (" + name_of(dispatcher) + ")";
      const Result& want = o.member[static_cast<size_t>(m)];
      EXPECT_EQ(r.indices, want.indices) << w << ": the router chose differently";
      expect_close(w + " out", r.out, want.out, 1e-5);
      expect_close(w + " dx", r.dx, want.dx, 1e-5);
      EXPECT_NEAR(r.aux_loss, want.aux_loss, 1e-6 * std::fabs(want.aux_loss)) << w;
      EXPECT_NEAR(r.z_loss, want.z_loss, 1e-6 * std::fabs(want.z_loss)) << w;
      expect_params_close(w, layer.reg(), r.grads, o.layer.reg(), want.grads, 1e-5);
      expect_params_close(w, layer.ereg(), r.egrads, o.layer.ereg(), o.expert_sum, 1e-5);
    }
    // Same registries for both dispatchers: the dispatchers agree element by element.
    const Result &a = got[0][static_cast<size_t>(m)], &b = got[1][static_cast<size_t>(m)];
    const std::string w = where + " allgather vs alltoall";
    expect_close(w + " out", a.out, b.out, 1e-6);
    expect_close(w + " dx", a.dx, b.dx, 1e-6);
    expect_close(w + " grads", a.grads, b.grads, 1e-6);
    expect_close(w + " expert grads", a.egrads, b.egrads, 1e-6);
    EXPECT_EQ(a.received_rows, b.received_rows) << w;
  });
  return got;
}

// Choices of member m's tokens per expert (before any dropping).
std::vector<int64_t> routed_per_expert(const Result& r) {
  std::vector<int64_t> n(kExperts, 0);
  for (int32_t e : r.indices) {
    EXPECT_TRUE(e >= 0 && e < kExperts) << "expert " << e;
    if (e >= 0 && e < kExperts) ++n[static_cast<size_t>(e)];
  }
  return n;
}

// Every token to experts 0 and 1 at EP = 2: ep rank 1's experts receive no rows, and both
// dispatchers run forward and backward through them like one rank; rank 1's expert gradients
// stay exactly zero.
TEST(MoeDispatch, ExpertsWithNoRowsMatchOneRank) {
  const Layout l{2, 1};
  for (int64_t shared : {0, 16}) {
    Case k;
    k.shared_ffn = shared;
    k.skewed = true;
    Oracle o(k);
    run_oracle(o, l.members());
    const auto got = run_and_check(k, l, o);
    for (const auto& by_member : got)
      for (int64_t m = 0; m < l.members(); ++m) {
        const Result& r = by_member[static_cast<size_t>(m)];
        const std::vector<int64_t> routed = routed_per_expert(r);
        EXPECT_EQ(routed, (std::vector<int64_t>{kTokens, kTokens, 0, 0})) << "member " << m << ": router not skewed";
        // ep rank 0 computes both choices of every token of the group, ep rank 1 nothing.
        EXPECT_EQ(r.received_rows, m == 0 ? l.members() * kTokens * kTopK : 0) << describe(k) << " member " << m;
        if (m == 1) {
          for (float g : r.egrads) ASSERT_EQ(g, 0.0f) << describe(k) << ": an expert with no rows got a gradient";
        }
      }
  }
}

void expect_dispatchers_agree(const Layout& l) {
  for (bool skewed : {false, true})
    for (int64_t shared : {0, 16}) {
      Case k;
      k.shared_ffn = shared;
      k.skewed = skewed;
      Oracle o(k);
      run_oracle(o, l.members());
      const auto got = run_and_check(k, l, o);
      // A spread router keeps every expert busy (the comparison means something everywhere).
      if (!skewed) {
        for (size_t i = 0; i < 2; ++i)
          for (int64_t m = 0; m < l.members(); ++m)
            EXPECT_GT(got[i][static_cast<size_t>(m)].received_rows, 0) << describe(k) << " member " << m;
      }
    }
}

TEST(MoeDispatch, AllGatherAndAllToAllAgreeAtEP2) { expect_dispatchers_agree(Layout{2, 1}); }

// Four members ordered ETP-fastest: member p is ep rank p / 2, etp rank p % 2; each holds
// half of each of its two experts' hidden units.
TEST(MoeDispatch, AllGatherAndAllToAllAgreeAtEP2xETP2) { expect_dispatchers_agree(Layout{2, 2}); }

// Capacity factor 1.0 with the skewed router at EP = 2: capacity ceil(6 * 2 / 4) = 3 per
// expert and member, so each member keeps 3 of its 6 choices of experts 0 and 1, the same
// ones it keeps when routing alone (the highest probabilities), and ep rank 0's experts get
// 2 members x 2 experts x 3 rows; padded, ep rank 1's empty experts get 3 zero rows per
// member each too.
TEST(MoeDispatch, CapacityDropsWhatEachMemberDropsAlone) {
  const Layout l{2, 1};
  constexpr int64_t kCapacity = 3;
  for (bool pad : {false, true}) {
    Case k;
    k.skewed = true;
    k.capacity_factor = 1.0f;
    k.pad = pad;
    ASSERT_EQ(moe_dims(k).expert_capacity(kTokens), kCapacity);
    Oracle o(k);
    run_oracle(o, l.members());
    const auto got = run_and_check(k, l, o);
    for (size_t i = 0; i < 2; ++i) {
      std::vector<int64_t> expected_rows(static_cast<size_t>(l.ep), 0);
      for (int64_t m = 0; m < l.members(); ++m) {
        const Result& r = got[i][static_cast<size_t>(m)];
        const std::string w = describe(k) + " (" + name_of(kDispatchers[i]) + ") member " + std::to_string(m);
        EXPECT_EQ(r.rows, o.member[static_cast<size_t>(m)].rows) << w << ": kept other choices than alone";
        const std::vector<int64_t> routed = routed_per_expert(r);
        EXPECT_EQ(routed, (std::vector<int64_t>{kTokens, kTokens, 0, 0})) << w << ": router not skewed";
        for (int64_t e = 0; e < kExperts; ++e) {
          // Kept choices of e: min(routed, capacity), none with a lower probability than a
          // dropped one.
          int64_t kept = 0;
          float kept_min = std::numeric_limits<float>::infinity(), dropped_max = -1.0f;
          for (size_t c = 0; c < r.indices.size(); ++c) {
            if (r.indices[c] != e) continue;
            if (r.rows[c] >= 0) {
              ++kept;
              kept_min = std::min(kept_min, r.probs[c]);
            } else {
              dropped_max = std::max(dropped_max, r.probs[c]);
            }
          }
          const int64_t n = routed[static_cast<size_t>(e)];
          EXPECT_EQ(kept, std::min(n, kCapacity)) << w << " expert " << e;
          EXPECT_GE(kept_min, dropped_max) << w << " expert " << e << ": dropped a more probable choice";
          expected_rows[static_cast<size_t>(e / (kExperts / l.ep))] += pad ? kCapacity : std::min(n, kCapacity);
        }
      }
      for (int64_t m = 0; m < l.members(); ++m)
        EXPECT_EQ(got[i][static_cast<size_t>(m)].received_rows, expected_rows[static_cast<size_t>(m)])
            << describe(k) << " (" << name_of(kDispatchers[i]) << ") ep rank " << m;
    }
    EXPECT_EQ(got[0][0].received_rows, 12);
    EXPECT_EQ(got[0][1].received_rows, pad ? 12 : 0);
  }
}

}  // namespace
}  // namespace mpt::model
