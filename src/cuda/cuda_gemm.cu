// GEMM family of the CUDA backend: matmul through cuBLASLt, bias add, bias gradient and the
// grouped GEMM of the expert layers. Semantics are those of backend/cpu/matmul.cc and the
// CPU grouped_matmul (backend/cpu/moe.cc), argument checks included.
//
// Row-major tensors meet cuBLASLt's column-major layouts by transposition: a row-major
// [r, c] array is a column-major [c, r] one, so c = op(a) @ op(b) is computed as
// c^T = op(b)^T @ op(a)^T with the operands swapped and the trans flags kept.
// Arithmetic is fp32 with fp32 accumulation (CUBLAS_COMPUTE_32F; tensor-core algorithms,
// TF32 among them, are filtered out), and one cached algorithm per shape keeps every call
// of a shape on the same bits.
#include <cublasLt.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>

#include "core/error.h"
#include "cuda/cuda_ops.h"
#include "cuda/op_checks.h"
#include "cuda/device.h"

namespace mpt::cuda {

using backend::GroupedForm;

namespace {

// ---- argument checks (the CPU backend's rules and messages) -------------------------------



[[noreturn]] void invalid_argument(const char* op, const std::string& what) {
  fail(Status::kInvalidArgument, op, ": ", what);
}

#define MPT_GEMM_CHECK(cond, op, what)            \
  do {                                            \
    if (!(cond)) invalid_argument((op), (what));  \
  } while (0)



std::string extent(int64_t n) { return n < 0 ? std::string("*") : std::to_string(n); }

// t is a 2-D F32 matrix [rows, cols]; a negative extent matches any.
void check_matrix(const char* op, const char* arg, const Tensor& t, int64_t rows, int64_t cols) {
  check_f32(op, arg, t);
  MPT_GEMM_CHECK(t.ndim == 2 && (rows < 0 || t.shape[0] == rows) && (cols < 0 || t.shape[1] == cols), op,
                 str(arg, " ", describe(t), " must be [", extent(rows), ", ", extent(cols), "]"));
}

// ---- small kernels -------------------------------------------------------------------------

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = int64_t{1} << 20;  // grid-stride loops cover the rest

// Blocks for a grid-stride loop over n elements (n > 0).
unsigned blocks_for(int64_t n) {
  const int64_t b = (n + kThreads - 1) / kThreads;
  return static_cast<unsigned>(b < kMaxBlocks ? b : kMaxBlocks);
}

// c[rows, cols] (leading dimension ld) = beta * c; beta == 0 writes zeros, as BLAS does.
__global__ void scale_matrix_kernel(float* c, int64_t rows, int64_t cols, int64_t ld, float beta) {
  const int64_t total = rows * cols;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    float& v = c[(i / cols) * ld + i % cols];
    v = beta == 0.0f ? 0.0f : beta * v;
  }
}

void scale_matrix(cudaStream_t stream, float* c, int64_t rows, int64_t cols, int64_t ld, float beta) {
  if (rows <= 0 || cols <= 0) return;
  scale_matrix_kernel<<<blocks_for(rows * cols), kThreads, 0, stream>>>(c, rows, cols, ld, beta);
  MPT_CUDA_LAUNCH(scale_matrix_kernel);
}

__global__ void add_bias_kernel(float* y, const float* bias, int64_t total, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    y[i] += bias[i % n];
}

// Column sums of dy [rows, n] in two fixed-order passes. A block owns kColTile columns and
// one chunk of rows; its kRowLanes warps stride the chunk's rows, each column summed in
// double. The lanes are then added in lane order, and the chunks in chunk order by
// sum_chunks_kernel (or directly into dbias when there is one chunk), so every call gives
// the same bits.
constexpr int kColTile = 32;
constexpr int kRowLanes = 8;
constexpr int64_t kMinChunkRows = 64;
constexpr int64_t kTargetBlocks = 2048;
constexpr int64_t kMaxChunks = 65535;  // grid.y limit

template <bool kDirect>
__global__ void column_sums_kernel(const float* dy, int64_t rows, int64_t n, int64_t rows_per_chunk,
                                   double* partial, float* dbias) {
  __shared__ double lanes[kRowLanes][kColTile + 1];
  const int64_t j = blockIdx.x * static_cast<int64_t>(kColTile) + threadIdx.x;
  const int64_t lo = blockIdx.y * rows_per_chunk;
  const int64_t hi = lo + rows_per_chunk < rows ? lo + rows_per_chunk : rows;
  double acc = 0;
  if (j < n)
    for (int64_t r = lo + threadIdx.y; r < hi; r += kRowLanes) acc += dy[r * n + j];
  lanes[threadIdx.y][threadIdx.x] = acc;
  __syncthreads();
  if (threadIdx.y != 0 || j >= n) return;
  double sum = 0;
  for (int l = 0; l < kRowLanes; ++l) sum += lanes[l][threadIdx.x];
  if (kDirect)
    dbias[j] += static_cast<float>(sum);
  else
    partial[blockIdx.y * n + j] = sum;
}

__global__ void sum_chunks_kernel(const double* partial, int64_t chunks, int64_t n, float* dbias) {
  for (int64_t j = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; j < n;
       j += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    double sum = 0;
    for (int64_t c = 0; c < chunks; ++c) sum += partial[c * n + j];
    dbias[j] += static_cast<float>(sum);
  }
}

// ---- cuBLASLt ------------------------------------------------------------------------------

void check_lt(cublasStatus_t status, const char* call, const char* file, int line) {
  if (status == CUBLAS_STATUS_SUCCESS) return;
  fail(Status::kDevice, call, " failed: ", cublasLtGetStatusName(status), " (", cublasLtGetStatusString(status),
       ") at ", file, ":", line);
}

#define MPT_LT_CHECK(call) check_lt((call), #call, __FILE__, __LINE__)

// Everything that decides the descriptors and the algorithm of one GEMM (row-major terms).
struct GemmKey {
  int device;
  bool trans_a, trans_b;
  int64_t m, n, k, lda, ldb, ldc;
  uint32_t align_a, align_b, align_c;
  size_t workspace;

  bool operator<(const GemmKey& o) const {
    return std::tie(device, trans_a, trans_b, m, n, k, lda, ldb, ldc, align_a, align_b, align_c, workspace) <
           std::tie(o.device, o.trans_a, o.trans_b, o.m, o.n, o.k, o.lda, o.ldb, o.ldc, o.align_a, o.align_b,
                    o.align_c, o.workspace);
  }
};

// Descriptors and the chosen algorithm of one GEMM shape. Operands are in cuBLASLt's order:
// lt_a is our b, lt_b is our a, lt_c is c (and d).
struct GemmPlan {
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t lt_a = nullptr, lt_b = nullptr, lt_c = nullptr;
  cublasLtMatmulAlgo_t algo{};

  GemmPlan() = default;
  GemmPlan(const GemmPlan&) = delete;
  GemmPlan& operator=(const GemmPlan&) = delete;
  ~GemmPlan() {  // destroy calls only free host memory; their status carries nothing to act on
    if (lt_c) cublasLtMatrixLayoutDestroy(lt_c);
    if (lt_b) cublasLtMatrixLayoutDestroy(lt_b);
    if (lt_a) cublasLtMatrixLayoutDestroy(lt_a);
    if (desc) cublasLtMatmulDescDestroy(desc);
  }
};

struct PreferenceGuard {
  cublasLtMatmulPreference_t pref = nullptr;
  ~PreferenceGuard() {
    if (pref) cublasLtMatmulPreferenceDestroy(pref);
  }
};

// The largest power of two up to 256 dividing both the address and the row pitch in bytes:
// the alignment every row of the operand has, which the algorithm must accept.
uint32_t alignment_of(const void* p, int64_t ld) {
  const uint64_t bits = static_cast<uint64_t>(reinterpret_cast<uintptr_t>(p)) | static_cast<uint64_t>(ld) * 4;
  uint32_t align = 256;
  while (align > 1 && bits % align != 0) align /= 2;
  return align;
}

std::shared_ptr<const GemmPlan> build_plan(cublasLtHandle_t lt, const GemmKey& key) {
  auto plan = std::make_shared<GemmPlan>();
  MPT_LT_CHECK(cublasLtMatmulDescCreate(&plan->desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  const cublasOperation_t op_a = key.trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;  // cuBLASLt's A is our b
  const cublasOperation_t op_b = key.trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
  MPT_LT_CHECK(cublasLtMatmulDescSetAttribute(plan->desc, CUBLASLT_MATMUL_DESC_TRANSA, &op_a, sizeof(op_a)));
  MPT_LT_CHECK(cublasLtMatmulDescSetAttribute(plan->desc, CUBLASLT_MATMUL_DESC_TRANSB, &op_b, sizeof(op_b)));
  // Column-major extents of the stored arrays: row-major b is [k, n] (or [n, k] when
  // trans_b) and so column-major [n, k] (or [k, n]); likewise a; c is column-major [n, m].
  const uint64_t m = static_cast<uint64_t>(key.m), n = static_cast<uint64_t>(key.n), k = static_cast<uint64_t>(key.k);
  MPT_LT_CHECK(cublasLtMatrixLayoutCreate(&plan->lt_a, CUDA_R_32F, key.trans_b ? k : n, key.trans_b ? n : k, key.ldb));
  MPT_LT_CHECK(cublasLtMatrixLayoutCreate(&plan->lt_b, CUDA_R_32F, key.trans_a ? m : k, key.trans_a ? k : m, key.lda));
  MPT_LT_CHECK(cublasLtMatrixLayoutCreate(&plan->lt_c, CUDA_R_32F, n, m, key.ldc));

  PreferenceGuard pref;
  MPT_LT_CHECK(cublasLtMatmulPreferenceCreate(&pref.pref));
  const uint64_t workspace = key.workspace;
  MPT_LT_CHECK(cublasLtMatmulPreferenceSetAttribute(pref.pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &workspace,
                                                    sizeof(workspace)));
  const uint32_t align_lt_a = key.align_b, align_lt_b = key.align_a, align_c = key.align_c;
  MPT_LT_CHECK(cublasLtMatmulPreferenceSetAttribute(pref.pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES,
                                                    &align_lt_a, sizeof(align_lt_a)));
  MPT_LT_CHECK(cublasLtMatmulPreferenceSetAttribute(pref.pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
                                                    &align_lt_b, sizeof(align_lt_b)));
  MPT_LT_CHECK(cublasLtMatmulPreferenceSetAttribute(pref.pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &align_c,
                                                    sizeof(align_c)));
  MPT_LT_CHECK(cublasLtMatmulPreferenceSetAttribute(pref.pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &align_c,
                                                    sizeof(align_c)));
  // Plain FMA algorithms only: no tensor-core paths (TF32 or BF16 emulation of fp32).
  const uint64_t impl = ~(CUBLASLT_NUMERICAL_IMPL_FLAGS_TENSOR_OP_MASK | CUBLASLT_NUMERICAL_IMPL_FLAGS_INPUT_TF32 |
                          CUBLASLT_NUMERICAL_IMPL_FLAGS_INPUT_16BF | CUBLASLT_NUMERICAL_IMPL_FLAGS_INPUT_16F);
  MPT_LT_CHECK(cublasLtMatmulPreferenceSetAttribute(pref.pref, CUBLASLT_MATMUL_PREF_IMPL_MASK, &impl, sizeof(impl)));

  cublasLtMatmulHeuristicResult_t result{};
  int found = 0;
  MPT_LT_CHECK(cublasLtMatmulAlgoGetHeuristic(lt, plan->desc, plan->lt_a, plan->lt_b, plan->lt_c, plan->lt_c,
                                              pref.pref, 1, &result, &found));
  MPT_CHECK(found > 0 && result.state == CUBLAS_STATUS_SUCCESS, Status::kNotSupported,
            "matmul: cuBLASLt has no fp32 algorithm for c[", key.m, ", ", key.n, "] = a", key.trans_a ? "^T" : "",
            " @ b", key.trans_b ? "^T" : "", " with k ", key.k, ", alignments a/b/c ", key.align_a, "/", key.align_b,
            "/", key.align_c, " bytes, workspace ", key.workspace, " bytes");
  plan->algo = result.algo;
  return plan;
}

// Plans for the shapes seen so far, shared by every CudaOps of the process (an algorithm
// depends only on the device, not on the handle). Bounded: a workload with ever new shapes
// starts over rather than growing without end.
class PlanCache {
 public:
  std::shared_ptr<const GemmPlan> get(cublasLtHandle_t lt, const GemmKey& key) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = plans_.find(key);
      if (it != plans_.end()) return it->second;
    }
    std::shared_ptr<const GemmPlan> plan = build_plan(lt, key);  // outside the lock: the search is slow
    std::lock_guard<std::mutex> lock(mu_);
    if (plans_.size() >= kMaxPlans) plans_.clear();
    plans_.emplace(key, plan);
    return plan;
  }

 private:
  static constexpr size_t kMaxPlans = 4096;
  std::mutex mu_;
  std::map<GemmKey, std::shared_ptr<const GemmPlan>> plans_;
};

PlanCache& plan_cache() {
  static PlanCache cache;
  return cache;
}

// Row-major c[m,n] = alpha * op(a) @ op(b) + beta * c with leading dimensions in elements
// (a is [k,m] when trans_a, b is [n,k] when trans_b), the CPU sgemm's contract: nothing
// for an empty c, c = beta * c for k == 0 (zeros at beta 0).
void gemm(const CudaOps& ops, bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha,
          const float* a, int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  if (m <= 0 || n <= 0) return;
  if (k <= 0) {
    scale_matrix(ops.stream(), c, m, n, ldc, beta);
    return;
  }
  const GemmKey key{ops.device(), trans_a, trans_b, m, n, k, lda, ldb, ldc, alignment_of(a, lda),
                    alignment_of(b, ldb), alignment_of(c, ldc), ops.lt_workspace_bytes()};
  const std::shared_ptr<const GemmPlan> plan = plan_cache().get(ops.lt(), key);
  // beta == 0: cuBLASLt does not read c, so stale NaN or Inf there do not leak in.
  MPT_LT_CHECK(cublasLtMatmul(ops.lt(), plan->desc, &alpha, b, plan->lt_a, a, plan->lt_b, &beta, c, plan->lt_c, c,
                              plan->lt_c, &plan->algo, ops.lt_workspace(), ops.lt_workspace_bytes(), ops.stream()));
}

}  // namespace

void CudaOps::matmul(Tensor c, Tensor a, Tensor b, bool trans_a, bool trans_b, float alpha, float beta) {
  check_f32("matmul", "c", c);
  check_f32("matmul", "a", a);
  check_f32("matmul", "b", b);
  const int64_t m = rows_of(c), n = last_dim(c);
  const int64_t a_rows = rows_of(a), a_cols = last_dim(a);
  const int64_t b_rows = rows_of(b), b_cols = last_dim(b);
  const int64_t am = trans_a ? a_cols : a_rows, ak = trans_a ? a_rows : a_cols;
  const int64_t bk = trans_b ? b_cols : b_rows, bn = trans_b ? b_rows : b_cols;
  MPT_GEMM_CHECK(am == m && bn == n && ak == bk, "matmul",
                 "shapes do not match: c " + describe(c) + ", a " + describe(a) + (trans_a ? "^T" : "") + ", b " +
                     describe(b) + (trans_b ? "^T" : ""));
  gemm(*this, trans_a, trans_b, m, n, ak, alpha, a.f(), a_cols > 1 ? a_cols : 1, b.f(), b_cols > 1 ? b_cols : 1,
       beta, c.f(), n > 1 ? n : 1);
}

void CudaOps::add_bias(Tensor y, Tensor bias) {
  check_f32("add_bias", "y", y);
  check_f32("add_bias", "bias", bias);
  const int64_t n = bias.numel();
  MPT_GEMM_CHECK(n > 0 && last_dim(y) == n, "add_bias",
                 "y " + describe(y) + " rows must match bias " + describe(bias));
  const int64_t total = y.numel();
  if (total == 0) return;
  add_bias_kernel<<<blocks_for(total), kThreads, 0, stream()>>>(y.f(), bias.f(), total, n);
  MPT_CUDA_LAUNCH(add_bias_kernel);
}

void CudaOps::bias_grad(Tensor dbias, Tensor dy) {
  check_f32("bias_grad", "dbias", dbias);
  check_f32("bias_grad", "dy", dy);
  const int64_t n = dbias.numel();
  MPT_GEMM_CHECK(n > 0 && last_dim(dy) == n, "bias_grad",
                 "dy " + describe(dy) + " rows must match dbias " + describe(dbias));
  const int64_t rows = dy.numel() / n;
  if (rows == 0) return;
  // Chunks of rows so that the grid fills the GPU; a pure function of (rows, n), so a
  // shape always sums in the same order.
  const int64_t col_tiles = (n + kColTile - 1) / kColTile;
  int64_t chunks = kTargetBlocks / col_tiles;
  const int64_t max_chunks = (rows + kMinChunkRows - 1) / kMinChunkRows;
  if (chunks > max_chunks) chunks = max_chunks;
  if (chunks > kMaxChunks) chunks = kMaxChunks;
  if (chunks < 1) chunks = 1;
  const int64_t rows_per_chunk = (rows + chunks - 1) / chunks;
  chunks = (rows + rows_per_chunk - 1) / rows_per_chunk;
  MPT_CHECK(col_tiles <= INT32_MAX, Status::kNotSupported, "bias_grad: dbias ", describe(dbias),
            " has more columns than one grid can hold");
  const dim3 grid(static_cast<unsigned>(col_tiles), static_cast<unsigned>(chunks));
  const dim3 block(kColTile, kRowLanes);
  if (chunks == 1) {
    column_sums_kernel<true><<<grid, block, 0, stream()>>>(dy.f(), rows, n, rows_per_chunk, nullptr, dbias.f());
    MPT_CUDA_LAUNCH(column_sums_kernel);
    return;
  }
  auto* partial = static_cast<double*>(scratch(static_cast<size_t>(chunks * n) * sizeof(double)));
  column_sums_kernel<false><<<grid, block, 0, stream()>>>(dy.f(), rows, n, rows_per_chunk, partial, nullptr);
  MPT_CUDA_LAUNCH(column_sums_kernel);
  sum_chunks_kernel<<<blocks_for(n), kThreads, 0, stream()>>>(partial, chunks, n, dbias.f());
  MPT_CUDA_LAUNCH(sum_chunks_kernel);
}

void CudaOps::grouped_matmul(Tensor c, Tensor a, Tensor b, const int64_t* counts, int64_t groups, GroupedForm form,
                             float beta) {
  const char* op = "grouped_matmul";
  MPT_GEMM_CHECK(form == GroupedForm::kForward || form == GroupedForm::kInputGrad || form == GroupedForm::kWeightGrad,
                 op, str("unknown form ", static_cast<int>(form)));
  MPT_GEMM_CHECK(groups > 0 && counts != nullptr, op,
                 str("needs groups > 0 and their counts, got groups ", groups, counts ? "" : " and no counts"));
  MPT_GEMM_CHECK(std::isfinite(beta), op, str("beta ", beta, " must be finite"));
  check_matrix(op, "a", a, -1, -1);
  const int64_t R = a.shape[0];
  int64_t total = 0;
  for (int64_t g = 0; g < groups; ++g) {
    MPT_GEMM_CHECK(counts[g] >= 0 && counts[g] <= R - total, op,
                   str("counts[", g, "] = ", counts[g], (counts[g] < 0 ? " is negative" : " runs past the rows of a"),
                       " (a ", describe(a), ", ", total, " rows in groups before it)"));
    total += counts[g];
  }
  MPT_GEMM_CHECK(total == R, op, str("counts sum to ", total, ", not to the ", R, " rows of a ", describe(a)));

  if (form == GroupedForm::kWeightGrad) {
    // c[g] [out, in] = dy_g^T @ x_g + beta * c[g]
    const int64_t out = a.shape[1];
    check_matrix(op, "b", b, R, -1);
    const int64_t in = b.shape[1];
    check_f32(op, "c", c);
    MPT_GEMM_CHECK(c.ndim == 3 && c.shape[0] == groups && c.shape[1] == out && c.shape[2] == in, op,
                   str("c ", describe(c), " must be [groups, out, in] = [", groups, ", ", out, ", ", in, "]"));
    const float *pa = a.f(), *pb = b.f();
    float* pc = c.f();
    int64_t first = 0;
    for (int64_t g = 0; g < groups; ++g) {
      float* cg = pc + g * out * in;
      if (counts[g] > 0)
        gemm(*this, true, false, out, in, counts[g], 1.0f, pa + first * out, out, pb + first * in, in, beta, cg, in);
      else if (beta != 1.0f)  // no rows: the product is zero
        scale_matrix(stream(), cg, out, in, in, beta);
      first += counts[g];
    }
    return;
  }

  // Weights b [groups, out, in]; kForward: c [R, out] = a [R, in] @ b[g]^T,
  // kInputGrad: c [R, in] = a [R, out] @ b[g].
  check_f32(op, "b", b);
  MPT_GEMM_CHECK(b.ndim == 3 && b.shape[0] == groups, op,
                 str("b ", describe(b), " must be [groups = ", groups, ", out, in]"));
  const int64_t out = b.shape[1], in = b.shape[2];
  const bool fwd = form == GroupedForm::kForward;
  const int64_t a_cols = fwd ? in : out, c_cols = fwd ? out : in;
  check_matrix(op, "a", a, R, a_cols);
  check_matrix(op, "c", c, R, c_cols);
  const float *pa = a.f(), *pb = b.f();
  float* pc = c.f();
  int64_t first = 0;
  for (int64_t g = 0; g < groups; ++g) {
    if (counts[g] > 0)
      gemm(*this, false, fwd, counts[g], c_cols, a_cols, 1.0f, pa + first * a_cols, a_cols > 1 ? a_cols : 1,
           pb + g * out * in, in > 1 ? in : 1, beta, pc + first * c_cols, c_cols > 1 ? c_cols : 1);
    first += counts[g];
  }
}

}  // namespace mpt::cuda
