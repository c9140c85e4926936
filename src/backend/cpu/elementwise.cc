#include "backend/cpu/elementwise.h"

#include <algorithm>
#include <cstring>

#include "backend/cpu/check.h"
#include "backend/cpu/threading.h"
#include "core/bf16.h"

namespace mpt::backend::cpu {

namespace {

constexpr int64_t kChunk = 1 << 16;

// Sums fixed 64K-element chunks (in parallel) and adds the chunk sums in index order, so
// the result does not depend on the thread count. Partials live on the stack, a block of
// chunks at a time: this runs every step and must not allocate.
template <typename Term>
double chunked_sum(int64_t n, Term term) {
  constexpr int64_t kBlockChunks = 256;
  const int64_t chunks = (n + kChunk - 1) / kChunk;
  double total = 0;
  for (int64_t c0 = 0; c0 < chunks; c0 += kBlockChunks) {
    const int64_t nc = std::min(kBlockChunks, chunks - c0);
    double partial[kBlockChunks];
#pragma omp parallel for schedule(static) if(n >= kMinParallelWork)
    for (int64_t c = 0; c < nc; ++c) {
      const int64_t begin = (c0 + c) * kChunk, end = std::min(n, begin + kChunk);
      double s = 0;
      for (int64_t i = begin; i < end; ++i) s += term(i);
      partial[c] = s;
    }
    for (int64_t c = 0; c < nc; ++c) total += partial[c];
  }
  return total;
}

// Element i as an fp32 value: F32 as it is, BF16 widened (exactly).
inline float load(const float* p, int64_t i) { return p[i]; }
inline float load(const uint16_t* p, int64_t i) { return bf16_to_f32(p[i]); }

// Calls f with x's elements as a typed pointer (x is F32 or BF16).
template <typename F>
decltype(auto) with_elements(const Tensor& x, F f) {
  if (x.dtype == DType::kBF16) return f(static_cast<const uint16_t*>(x.data));
  return f(static_cast<const float*>(x.data));
}

template <typename T>
double sum_squares_of(const T* p, int64_t n) {
  return chunked_sum(n, [p](int64_t i) {
    const double v = load(p, i);
    return v * v;
  });
}

template <typename A, typename B>
double dot_of(const A* pa, const B* pb, int64_t n) {
  return chunked_sum(n, [pa, pb](int64_t i) { return static_cast<double>(load(pa, i)) * load(pb, i); });
}

}  // namespace

void fill(Tensor x, float value) {
  check_f32("fill", "x", x);
  float* p = x.f();
  const int64_t n = x.numel();
#pragma omp parallel for schedule(static) if(n >= kMinParallelWork)
  for (int64_t i = 0; i < n; ++i) p[i] = value;
}

void copy(Tensor dst, Tensor src) {
  MPT_CPU_CHECK(dst.dtype == src.dtype && dst.numel() == src.numel(), "copy",
            "dst " + describe(dst) + " and src " + describe(src) + " must share dtype and numel");
  MPT_CPU_CHECK((dst.data && src.data) || dst.numel() == 0, "copy", "dst or src has no data");
  if (dst.data == src.data || dst.numel() == 0) return;
  const int64_t bytes = static_cast<int64_t>(dst.bytes());
  const int64_t chunks = (bytes + (1 << 20) - 1) >> 20;
  auto* d = static_cast<char*>(dst.data);
  const auto* s = static_cast<const char*>(src.data);
#pragma omp parallel for schedule(static) if(chunks > 1)
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t lo = c << 20, len = std::min<int64_t>(bytes - lo, 1 << 20);
    std::memcpy(d + lo, s + lo, static_cast<size_t>(len));
  }
}

void add(Tensor out, Tensor a, Tensor b) {
  check_f32("add", "out", out);
  check_f32("add", "a", a);
  check_f32("add", "b", b);
  check_numel("add", "a", a, out.numel());
  check_numel("add", "b", b, out.numel());
  float* o = out.f();
  const float *pa = a.f(), *pb = b.f();
  const int64_t n = out.numel();
#pragma omp parallel for schedule(static) if(n >= kMinParallelWork)
  for (int64_t i = 0; i < n; ++i) o[i] = pa[i] + pb[i];
}

void add_inplace(Tensor y, Tensor x) {
  check_f32("add_inplace", "y", y);
  check_f32("add_inplace", "x", x);
  check_numel("add_inplace", "x", x, y.numel());
  float* py = y.f();
  const float* px = x.f();
  const int64_t n = y.numel();
#pragma omp parallel for schedule(static) if(n >= kMinParallelWork)
  for (int64_t i = 0; i < n; ++i) py[i] += px[i];
}

void scale(Tensor x, float s) {
  check_f32("scale", "x", x);
  float* p = x.f();
  const int64_t n = x.numel();
#pragma omp parallel for schedule(static) if(n >= kMinParallelWork)
  for (int64_t i = 0; i < n; ++i) p[i] *= s;
}

double sum_squares(Tensor x) {
  check_float("sum_squares", "x", x);
  return with_elements(x, [&](auto p) { return sum_squares_of(p, x.numel()); });
}

double dot(Tensor a, Tensor b) {
  check_float("dot", "a", a);
  check_float("dot", "b", b);
  check_numel("dot", "b", b, a.numel());
  return with_elements(a, [&](auto pa) {
    return with_elements(b, [&](auto pb) { return dot_of(pa, pb, a.numel()); });
  });
}

bool all_finite(Tensor x) {
  check_float("all_finite", "x", x);
  const int64_t n = x.numel();
  uint32_t bad = 0;
  // An exponent of all ones is Inf or NaN; testing bits keeps the loop vectorisable.
  if (x.dtype == DType::kBF16) {
    const auto* bits = static_cast<const uint16_t*>(x.data);
#pragma omp parallel for schedule(static) if(n >= kMinParallelWork) reduction(| : bad)
    for (int64_t i = 0; i < n; ++i) bad |= static_cast<uint32_t>((bits[i] & 0x7f80u) == 0x7f80u);
  } else {
    const auto* bits = static_cast<const uint32_t*>(x.data);
#pragma omp parallel for schedule(static) if(n >= kMinParallelWork) reduction(| : bad)
    for (int64_t i = 0; i < n; ++i) bad |= static_cast<uint32_t>((bits[i] & 0x7f800000u) == 0x7f800000u);
  }
  return bad == 0;
}

}  // namespace mpt::backend::cpu
