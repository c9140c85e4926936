// The optimizer over a registry's pieces: one adamw_multi per step gives the bits of the
// per-piece updates it replaced (owned ranges cutting parameters, mixed weight decay, the
// norm's exclusions), the norm summed in backend memory equals the host sum, clipping by a
// sum in backend memory equals clipping by the host norm, and the bf16 compute copies it
// writes with the update are what a cast would give and survive the next invalidate once.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <vector>

#include "backend/ops.h"
#include "core/bf16.h"
#include "core/rng.h"
#include "model/compute_params.h"
#include "model/param_registry.h"
#include "optim/adamw.h"

namespace mpt::optim {
namespace {

std::vector<float> randoms(int64_t n, uint64_t key, float scale) {
  std::vector<float> v(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) v[static_cast<size_t>(i)] = scale * normal_at(key, static_cast<uint64_t>(i));
  return v;
}

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

// Four parameters of mixed weight decay; "copy" is a pipeline copy (not in the norm).
model::ParamRegistry registry() {
  model::ParamRegistry reg;
  reg.add("w1", {3, 5}, model::Init::kNormal, 0.02f, true);
  reg.add("b1", {7}, model::Init::kZeros, 0, false);
  const int copy = reg.add("copy", {40}, model::Init::kNormal, 0.02f, true);
  reg.set_pipeline_copy(copy);
  reg.add("w2", {9, 11}, model::Init::kNormal, 0.02f, true);
  return reg;
}

// The update before adamw_multi: one adamw per piece, the norm summed on the host.
struct Reference {
  const model::ParamRegistry& reg;
  std::vector<FlatRange> owned;
  std::vector<std::vector<float>> m, v;

  Reference(const model::ParamRegistry& r, std::vector<FlatRange> o) : reg(r), owned(std::move(o)) {
    for (const FlatRange& x : owned) {
      m.emplace_back(static_cast<size_t>(x.numel()), 0.0f);
      v.emplace_back(static_cast<size_t>(x.numel()), 0.0f);
    }
  }
  template <typename Fn>
  void pieces(Fn&& fn) const {
    for (size_t k = 0; k < owned.size(); ++k)
      for (const model::ParamInfo& p : reg.params()) {
        const int64_t lo = std::max(owned[k].begin, p.offset), hi = std::min(owned[k].end, p.offset + p.numel);
        if (lo < hi) fn(k, p, lo - owned[k].begin, hi - lo);
      }
  }
  double sum_squares(backend::Ops& ops, std::vector<std::vector<float>>& g) const {
    double sq = 0;
    pieces([&](size_t k, const model::ParamInfo& p, int64_t at, int64_t n) {
      if (p.counted_in_norm()) sq += ops.sum_squares(Tensor::f32(g[k].data() + at, {n}));
    });
    return sq;
  }
  void step(backend::Ops& ops, std::vector<std::vector<float>>& params, std::vector<std::vector<float>>& g,
            int64_t step, double norm, double clip, double lr, double wd) {
    backend::AdamWArgs a;
    a.lr = static_cast<float>(lr);
    a.beta1 = 0.9f;
    a.beta2 = 0.95f;
    a.eps = 1e-8f;
    a.step = step;
    const double coeff = clip / (norm + 1e-6);
    if (clip > 0 && coeff < 1.0) a.grad_scale = static_cast<float>(coeff);
    pieces([&](size_t k, const model::ParamInfo& p, int64_t at, int64_t n) {
      a.weight_decay = p.weight_decay ? static_cast<float>(wd) : 0.0f;
      ops.adamw(Tensor::f32(params[k].data() + at, {n}), Tensor::f32(g[k].data() + at, {n}),
                Tensor::f32(m[k].data() + at, {n}), Tensor::f32(v[k].data() + at, {n}), a);
    });
  }
};

AdamWConfig config(double clip) {
  AdamWConfig c;
  c.beta1 = 0.9;
  c.beta2 = 0.95;
  c.eps = 1e-8;
  c.clip_grad = clip;
  return c;
}

std::vector<float*> pointers(std::vector<std::vector<float>>& bufs) {
  std::vector<float*> p;
  for (auto& b : bufs) p.push_back(b.data());
  return p;
}

TEST(OptimAdamW, OwnedRangesEqualThePerPieceUpdatesBitForBit) {
  auto ops = backend::make_cpu_ops(2);
  const model::ParamRegistry reg = registry();
  // Two ranges that cut w1, skip b1 and part of copy, and cut w2 (a distributed optimizer's).
  const std::vector<FlatRange> owned = {{4, 20}, {50, reg.total_numel() - 3}};
  for (double clip : {1e-3, 0.0, 100.0}) {
    SCOPED_TRACE("clip_grad " + std::to_string(clip));
    AdamW opt(reg, *ops, config(clip), owned);
    Reference ref(reg, owned);
    std::vector<std::vector<float>> p, p_ref;
    for (size_t k = 0; k < owned.size(); ++k) p.push_back(randoms(owned[k].numel(), 1 + k, 0.05f));
    p_ref = p;
    for (int64_t step = 1; step <= 3; ++step) {
      std::vector<std::vector<float>> g;
      for (size_t k = 0; k < owned.size(); ++k) g.push_back(randoms(owned[k].numel(), 10 * step + k, 1.0f));
      const double sq = opt.grad_sum_squares(pointers(g)), sq_ref = ref.sum_squares(*ops, g);
      ASSERT_EQ(std::memcmp(&sq, &sq_ref, sizeof sq), 0) << sq << " vs " << sq_ref;
      const double norm = std::sqrt(sq);
      opt.step(pointers(p), pointers(g), norm, 1e-2, 0.1);
      ref.step(*ops, p_ref, g, step, norm, clip, 1e-2, 0.1);
      for (size_t k = 0; k < owned.size(); ++k) {
        ASSERT_TRUE(same_bits(p[k], p_ref[k])) << "params of range " << k << " at step " << step;
        const std::vector<float> m(opt.exp_avg() + (k ? owned[0].numel() : 0),
                                   opt.exp_avg() + (k ? owned[0].numel() : 0) + owned[k].numel());
        ASSERT_TRUE(same_bits(m, ref.m[k])) << "exp_avg of range " << k << " at step " << step;
      }
    }
  }
}

TEST(OptimAdamW, ClippingBySumInBackendMemoryEqualsTheHostNorm) {
  auto ops = backend::make_cpu_ops(2);
  const model::ParamRegistry reg = registry();
  const int64_t n = reg.total_numel();
  for (double clip : {1e-2, 0.0, 1e3}) {
    AdamW host(reg, *ops, config(clip)), device(reg, *ops, config(clip));
    std::vector<float> p1 = randoms(n, 3, 0.05f), p2 = p1;
    for (int64_t step = 1; step <= 3; ++step) {
      std::vector<float> g = randoms(n, 20 + step, 1.0f);
      const double norm = host.grad_norm(g.data());
      host.step(p1.data(), g.data(), norm, 1e-2, 0.1);
      std::vector<float*> pv{p2.data()}, gv{g.data()};
      device.step(pv, gv, device.grad_sum_squares_on_device(gv), 1e-2, 0.1);
      ASSERT_TRUE(same_bits(p1, p2)) << "clip_grad " << clip << ", step " << step;
    }
  }
}

// Two units over the registry, as a model cuts its layout.
std::vector<model::ParamUnit> units_of(const model::ParamRegistry& reg) {
  const int64_t cut = reg.at(2).offset;  // "copy" starts the second unit
  return {{"first", 0, cut}, {"second", cut, reg.total_numel()}};
}

TEST(OptimAdamW, WritesTheBf16CopiesWithTheUpdate) {
  auto ops = backend::make_cpu_ops(2);
  const model::ParamRegistry reg = registry();
  const std::vector<model::ParamUnit> units = units_of(reg);
  model::ComputeParams copies(*ops, DType::kBF16, units, true);
  EXPECT_TRUE(copies.resident());
  const int64_t n = reg.total_numel();
  std::vector<float> p = randoms(n, 5, 0.05f), g = randoms(n, 6, 1.0f);
  for (int u = 0; u < 2; ++u) copies.unit(u, p.data() + units[static_cast<size_t>(u)].begin);  // cast at first use

  AdamW sharded(reg, *ops, config(1.0), {{0, 16}, {16, n}});
  EXPECT_FALSE(sharded.write_compute_copies(copies)) << "an optimizer owning ranges leaves the copies to a cast";
  AdamW opt(reg, *ops, config(1.0));
  ASSERT_TRUE(opt.write_compute_copies(copies));
  opt.step(p.data(), g.data(), opt.grad_norm(g.data()), 1e-2, 0.1);
  // Every parameter's copy holds the updated value rounded to nearest even.
  auto expect_copies = [&](const std::vector<float>& master, const std::string& what) {
    for (const model::ParamInfo& info : reg.params())
      for (int u = 0; u < 2; ++u) {
        const model::ParamUnit& unit = units[static_cast<size_t>(u)];
        if (info.offset < unit.begin || info.offset >= unit.end) continue;
        const auto* c = static_cast<const uint16_t*>(copies.resident_copy(u)) + (info.offset - unit.begin);
        for (int64_t i = 0; i < info.numel; ++i)
          ASSERT_EQ(c[i], f32_to_bf16(master[static_cast<size_t>(info.offset + i)]))
              << what << ": " << info.name << " element " << i;
      }
  };
  expect_copies(p, "after the step");

  // The next invalidate keeps them: changed masters are not cast again (not told of the change).
  copies.invalidate();
  std::vector<float> changed = p;
  for (float& x : changed) x += 1.0f;
  for (int u = 0; u < 2; ++u) copies.unit(u, changed.data() + units[static_cast<size_t>(u)].begin);
  expect_copies(p, "kept through one invalidate");
  // Once only: the invalidate after casts again.
  copies.invalidate();
  for (int u = 0; u < 2; ++u) copies.unit(u, changed.data() + units[static_cast<size_t>(u)].begin);
  expect_copies(changed, "cast after a second invalidate");

  // forget_written (a load replaced the masters) drops it.
  opt.step(changed.data(), g.data(), opt.grad_norm(g.data()), 1e-2, 0.1);
  opt.params_replaced();
  copies.invalidate();
  std::vector<float> loaded = randoms(n, 9, 0.05f);
  for (int u = 0; u < 2; ++u) copies.unit(u, loaded.data() + units[static_cast<size_t>(u)].begin);
  expect_copies(loaded, "cast after params_replaced");
}

TEST(OptimAdamW, NoCopiesWhereNoneAreResident) {
  auto ops = backend::make_cpu_ops(1);
  const model::ParamRegistry reg = registry();
  const std::vector<model::ParamUnit> units = units_of(reg);
  model::ComputeParams fp32(*ops, DType::kF32, units, true);
  model::ComputeParams gathered(*ops, DType::kBF16, units, false);  // a sharding storage's two reused copies
  EXPECT_FALSE(gathered.resident());
  EXPECT_EQ(fp32.resident_copy(0), nullptr);
  AdamW opt(reg, *ops, config(1.0));
  EXPECT_FALSE(opt.write_compute_copies(fp32));
  EXPECT_FALSE(opt.write_compute_copies(gathered));
}

}  // namespace
}  // namespace mpt::optim
