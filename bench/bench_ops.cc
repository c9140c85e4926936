// Micro-benchmark of the CPU reference backend: sgemm throughput with the OpenBLAS kernels
// chosen at load time against the AVX2 (Haswell) kernels, and attention forward/backward.
// Usage: bench_ops [--sgemm-only]. The Haswell figure comes from a child process, since
// OpenBLAS fixes its kernels when it loads.
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "backend/cpu/blas.h"
#include "backend/ops.h"
#include "core/error.h"
#include "core/rng.h"

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

// Best of `reps` timed runs after one warm-up, in seconds.
template <typename F>
double best_time(int reps, F f) {
  f();
  double best = 1e30;
  for (int r = 0; r < reps; ++r) {
    const auto t0 = Clock::now();
    f();
    best = std::min(best, seconds_since(t0));
  }
  return best;
}

double sgemm_gflops(mpt::backend::Ops& ops, int64_t n) {
  std::vector<float> a(n * n), b(n * n), c(n * n);
  mpt::fill_normal(a.data(), n * n, 1, 0, 0, 1);
  mpt::fill_normal(b.data(), n * n, 2, 0, 0, 1);
  auto ta = mpt::Tensor::f32(a.data(), {n, n}), tb = mpt::Tensor::f32(b.data(), {n, n}),
       tc = mpt::Tensor::f32(c.data(), {n, n});
  const double t = best_time(5, [&] { ops.matmul(tc, ta, tb, false, false, 1.0f, 0.0f); });
  return 2.0 * n * n * n / t * 1e-9;
}

// GFLOP/s of the same measurement in a child process with Haswell kernels forced.
double haswell_gflops() {
  char self[4096] = {};
  const ssize_t len = readlink("/proc/self/exe", self, sizeof(self) - 1);
  if (len <= 0) return 0;
  const std::string cmd = std::string("OPENBLAS_CORETYPE=Haswell '") + self + "' --sgemm-only";
  FILE* pipe = popen(cmd.c_str(), "r");
  if (!pipe) return 0;
  char line[256];
  double value = 0;
  while (std::fgets(line, sizeof(line), pipe))
    if (const char* p = std::strstr(line, "GFLOP/s=")) value = std::atof(p + 8);
  pclose(pipe);
  return value;
}

void bench_attention(mpt::backend::Ops& ops, int64_t seq, int64_t batch, int64_t heads, int64_t groups, int64_t dim) {
  mpt::backend::AttentionDims d;
  d.seq_q = d.seq_kv = seq;
  d.batch = batch;
  d.heads = heads;
  d.groups = groups;
  d.head_dim = dim;
  d.softmax_scale = 1.0f / std::sqrt(static_cast<float>(dim));
  const int64_t nq = seq * batch * heads * dim, nk = seq * batch * groups * dim;
  std::vector<float> q(nq), k(nk), v(nk), out(nq), dout(nq), dq(nq), dk(nk), dv(nk), lse(batch * heads * seq);
  mpt::fill_normal(q.data(), nq, 3, 0, 0, 1);
  mpt::fill_normal(k.data(), nk, 4, 0, 0, 1);
  mpt::fill_normal(v.data(), nk, 5, 0, 0, 1);
  mpt::fill_normal(dout.data(), nq, 6, 0, 0, 1);
  const int64_t tokens = seq * batch;
  auto rows = [&](std::vector<float>& x, int64_t heads_or_groups) {
    return mpt::Tensor::f32(x.data(), {tokens, heads_or_groups * dim});
  };
  auto tl = mpt::Tensor::f32(lse.data(), {batch, heads, seq});
  const double fwd = best_time(3, [&] { ops.attention_fwd(rows(out, heads), tl, rows(q, heads), rows(k, groups),
                                                          rows(v, groups), d); });
  const double bwd = best_time(3, [&] {
    ops.attention_bwd(rows(dq, heads), rows(dk, groups), rows(dv, groups), rows(dout, heads), rows(q, heads),
                      rows(k, groups), rows(v, groups), rows(out, heads), tl, d);
  });
  // Matmul work as computed (full score blocks): 2 GEMMs forward, 5 backward.
  const double flop = 2.0 * batch * heads * seq * seq * dim;
  std::printf("attention S=%lld B=%lld H=%lld G=%lld D=%lld causal: fwd %.2f ms (%.1f GFLOP/s), ",
              static_cast<long long>(seq), static_cast<long long>(batch), static_cast<long long>(heads),
              static_cast<long long>(groups), static_cast<long long>(dim), fwd * 1e3, 2 * flop / fwd * 1e-9);
  std::printf("bwd %.2f ms (%.1f GFLOP/s)\n", bwd * 1e3, 5 * flop / bwd * 1e-9);
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const bool sgemm_only = argc > 1 && std::strcmp(argv[1], "--sgemm-only") == 0;
    const char* env = std::getenv("OPENBLAS_CORETYPE");  // read before the backend may set it
    const std::string user_core = env ? env : "unset";
    auto ops = mpt::backend::make_cpu_ops(0);
    const int64_t n = 2048;
    const double gflops = sgemm_gflops(*ops, n);
    if (sgemm_only) {
      std::printf("core=%s GFLOP/s=%.1f\n", mpt::backend::cpu::blas_core_name(), gflops);
      return 0;
    }
    std::printf("openblas core: %s (OPENBLAS_CORETYPE given: %s)\n", mpt::backend::cpu::blas_core_name(),
                user_core.c_str());
    std::printf("sgemm %lld^3: %.1f GFLOP/s\n", static_cast<long long>(n), gflops);
    const double haswell = haswell_gflops();
    if (haswell > 0)
      std::printf("sgemm %lld^3 with Haswell kernels: %.1f GFLOP/s (ratio %.2fx)\n", static_cast<long long>(n), haswell,
                  gflops / haswell);
    bench_attention(*ops, 1024, 1, 8, 2, 64);
    return 0;
  } catch (const mpt::Error& e) {
    std::fprintf(stderr, "bench_ops: %s\n", e.what());
    return 1;
  }
}
