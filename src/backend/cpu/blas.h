// GEMM through OpenBLAS, opened at run time (dlopen) rather than linked, so that the
// kernel family can be chosen from the features of the CPU the process runs on.
#pragma once

#include <cstdint>

namespace mpt::backend::cpu {

// Opens OpenBLAS once (thread-safe). Throws mpt::Error(kNotSupported) naming the package
// to install when the library is missing.
void blas_load();

// The OpenBLAS kernel family in use ("SkylakeX", "Haswell", ...), for the log. Opens the
// library if needed; "unavailable" when it cannot be opened.
const char* blas_core_name();

// Row-major c[m,n] = alpha * op(a) @ op(b) + beta * c, leading dimensions in elements
// (a is [k,m] when trans_a, b is [n,k] when trans_b). beta == 0 overwrites c. Called
// outside any OpenMP region, a large product is split into row or column blocks, one
// per thread; inside a region it runs on the calling thread alone.
void sgemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha, const float* a, int64_t lda,
           const float* b, int64_t ldb, float beta, float* c, int64_t ldc);

}  // namespace mpt::backend::cpu
