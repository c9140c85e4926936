#include "backend/cpu/blas.h"

#include <dlfcn.h>
#include <omp.h>

#include <algorithm>
#include <climits>
#include <cstdlib>
#include <mutex>
#include <string>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif

#include "core/error.h"

namespace mpt::backend::cpu {

namespace {

// CBLAS enum values, fixed by the CBLAS standard; declared here so that nothing includes
// cblas.h or links OpenBLAS at build time.
constexpr int kCblasRowMajor = 101, kCblasNoTrans = 111, kCblasTrans = 112;
using SgemmFn = void (*)(int order, int trans_a, int trans_b, int m, int n, int k, float alpha, const float* a,
                         int lda, const float* b, int ldb, float beta, float* c, int ldc);
using SetThreadsFn = void (*)(int);
using CoreNameFn = char* (*)();

// Products below this many multiply-adds run on one thread: splitting costs more.
constexpr double kSplitWork = 1 << 21;

struct Library {
  SgemmFn sgemm = nullptr;
  std::string core = "unavailable";
  std::string error;
};

// True when the CPU has the AVX-512 subsets OpenBLAS's SkylakeX kernels use and the OS
// saves ZMM state. Debian's OpenBLAS 0.3.21 takes AMD Zen 4/5 for Haswell and runs AVX2
// kernels at roughly half the speed, so the decision is made here from features alone.
bool cpu_runs_avx512() {
#if defined(__x86_64__) || defined(__i386__)
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (!__get_cpuid(1, &a, &b, &c, &d) || !(c & (1u << 27))) return false;  // OSXSAVE: xgetbv usable
  unsigned xcr0_lo = 0, xcr0_hi = 0;
  __asm__ volatile("xgetbv" : "=a"(xcr0_lo), "=d"(xcr0_hi) : "c"(0));
  (void)xcr0_hi;
  // XCR0: SSE (1), AVX (2), opmask (5), ZMM_Hi256 (6) and Hi16_ZMM (7) state enabled.
  constexpr unsigned kZmmState = (1u << 1) | (1u << 2) | (1u << 5) | (1u << 6) | (1u << 7);
  if ((xcr0_lo & kZmmState) != kZmmState) return false;
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return false;
  // Leaf 7 EBX: AVX512F (16), DQ (17), CD (28), BW (30), VL (31).
  constexpr unsigned kAvx512 = (1u << 16) | (1u << 17) | (1u << 28) | (1u << 30) | (1u << 31);
  return (b & kAvx512) == kAvx512;
#else
  return false;
#endif
}

void open_library(Library& lib) {
  // OpenBLAS reads OPENBLAS_CORETYPE when it loads; a user's own setting always wins.
  if (std::getenv("OPENBLAS_CORETYPE") == nullptr && cpu_runs_avx512()) setenv("OPENBLAS_CORETYPE", "SkylakeX", 0);
  void* handle = dlopen("libopenblas.so.0", RTLD_NOW | RTLD_LOCAL);
  if (handle == nullptr) handle = dlopen("libopenblas.so", RTLD_NOW | RTLD_LOCAL);
  if (handle == nullptr) {
    const char* why = dlerror();
    lib.error = str("OpenBLAS not found: install libopenblas0 (apt-get install libopenblas0); dlopen: ",
                    why ? why : "libopenblas.so.0 not found");
    return;
  }
  auto sgemm = reinterpret_cast<SgemmFn>(dlsym(handle, "cblas_sgemm"));
  if (sgemm == nullptr) {
    lib.error = "OpenBLAS was opened but has no cblas_sgemm: install libopenblas0 (apt-get install libopenblas0)";
    return;
  }
  // Threads come from OpenMP around the calls (see sgemm), so OpenBLAS itself stays on
  // the calling thread: calls from parallel regions and from concurrent ranks never queue.
  if (auto set_threads = reinterpret_cast<SetThreadsFn>(dlsym(handle, "openblas_set_num_threads")))
    set_threads(1);
  if (auto core_name = reinterpret_cast<CoreNameFn>(dlsym(handle, "openblas_get_corename"))) {
    const char* name = core_name();
    lib.core = name ? name : "unknown";
  } else {
    lib.core = "unknown";
  }
  lib.sgemm = sgemm;
}

const Library& library() {
  static Library lib;
  static std::once_flag once;
  std::call_once(once, [] { open_library(lib); });
  return lib;
}

SgemmFn sgemm_fn() {
  const Library& lib = library();
  MPT_CHECK(lib.sgemm != nullptr, Status::kNotSupported, lib.error);
  return lib.sgemm;
}

void scale_block(int64_t m, int64_t n, float beta, float* c, int64_t ldc) {
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < n; ++j) c[i * ldc + j] = beta == 0.0f ? 0.0f : beta * c[i * ldc + j];
}

}  // namespace

void blas_load() { (void)sgemm_fn(); }

const char* blas_core_name() { return library().core.c_str(); }

void sgemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha, const float* a, int64_t lda,
           const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  if (m <= 0 || n <= 0) return;
  if (k <= 0) {  // BLAS rejects k == 0 with lda == 0; the product is empty, c = beta * c
    scale_block(m, n, beta, c, ldc);
    return;
  }
  for (int64_t dim : {m, n, k, lda, ldb, ldc})
    MPT_CHECK(dim <= INT_MAX, Status::kNotSupported, "sgemm: dimension ", dim, " exceeds the 32-bit BLAS interface");
  const SgemmFn fn = sgemm_fn();
  const int ta = trans_a ? kCblasTrans : kCblasNoTrans, tb = trans_b ? kCblasTrans : kCblasNoTrans;
  auto call = [&](int64_t mm, int64_t nn, const float* aa, const float* bb, float* cc) {
    fn(kCblasRowMajor, ta, tb, static_cast<int>(mm), static_cast<int>(nn), static_cast<int>(k), alpha, aa,
       static_cast<int>(lda), bb, static_cast<int>(ldb), beta, cc, static_cast<int>(ldc));
  };
  if (static_cast<double>(m) * n * k < kSplitWork) {
    call(m, n, a, b, c);
    return;
  }
  // Split the longer side of c into contiguous blocks whose partition depends on the shape
  // alone, never on the thread count: OpenBLAS may round a row differently in blocks of other
  // sizes (seen on AVX-512 machines), and the CPU oracle's bits must not depend on its threads.
  constexpr int64_t kMinBlock = 64, kMaxParts = 64;
  const int threads = omp_get_level() == 0 ? omp_get_max_threads() : 1;
  const bool split_rows = m >= n;
  const int64_t extent = split_rows ? m : n;
  const int64_t parts = std::max<int64_t>(1, std::min<int64_t>(kMaxParts, extent / kMinBlock));
#pragma omp parallel for schedule(static) num_threads(static_cast<int>(std::min<int64_t>(threads, parts)))
  for (int64_t p = 0; p < parts; ++p) {
    const int64_t lo = extent * p / parts, hi = extent * (p + 1) / parts;
    if (split_rows)
      call(hi - lo, n, a + (trans_a ? lo : lo * lda), b, c + lo * ldc);
    else
      call(m, hi - lo, a, b + (trans_b ? lo * ldb : lo), c + lo);
  }
}

}  // namespace mpt::backend::cpu
