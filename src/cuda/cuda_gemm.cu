// GEMM family of the CUDA backend: matmul through cuBLASLt, the linear forward with its bias
// (and GELU) in cuBLASLt's epilogue, bias add and bias gradient (the experts' grouped GEMM is
// in cuda_grouped_gemm.cu). Semantics are those of backend/cpu/matmul.cc and
// backend/cpu/fused.cc, argument checks included.
//
// Row-major tensors meet cuBLASLt's column-major layouts by transposition: a row-major
// [r, c] array is a column-major [c, r] one, so c = op(a) @ op(b) is computed as
// c^T = op(b)^T @ op(a)^T with the operands swapped and the trans flags kept.
// With both operands f32 the arithmetic is fp32 with fp32 accumulation (CUBLAS_COMPUTE_32F;
// tensor-core algorithms, TF32 among them, are filtered out). When either operand is bf16
// both go to cuBLASLt as bf16 (an f32 one rounded into scratch first) on tensor cores with
// fp32 accumulation, c/d in f32 or bf16 as given; split-K partials of a bf16 c are reduced
// in fp32, so c is rounded once (should cuBLASLt have no bf16 algorithm for an alignment,
// the same exact products run as an fp32 GEMM on widened copies, logged once per shape
// through CudaOps::logger()). A bf16 c beside f32 operands is computed in fp32 into scratch
// and rounded at the end.
//
// Algorithm choice, per shape (m, n, k, leading dimensions, transposes, dtypes, alignments,
// beta zero or not, epilogue): the first call of a shape asks cuBLASLt's heuristic for up to
// kCandidates algorithms and times each with CUDA events on the backend's stream (a warm-up,
// then kTimedRuns runs); the fastest is cached and every later call of the shape uses it, so
// a shape keeps its bits call after call (cuBLASLt gives the same bits for the same algorithm,
// shape and GPU). The timing waits for the GPU once per shape and allocates nothing: at beta
// 0 the candidates write the call's own output (the real call then overwrites it); otherwise
// they write a copy of the output placed in the tail of the cuBLASLt workspace, and a shape
// whose output does not fit there takes the heuristic's first. Never timed: during graph
// capture (the heuristic's first is taken and cached, so eager calls later match the graph),
// the experts' grouped GEMMs (their row counts change every step), and with the environment
// variable MPT_GEMM_AUTOTUNE=0, which always takes the heuristic's first. Timings vary from
// run to run, so two runs (or processes) may choose different algorithms for a shape and then
// differ in the last bits; MPT_GEMM_AUTOTUNE=0 makes the choice a function of the shape and
// the cuBLASLt version alone.
#include <cublasLt.h>
#include <cuda_runtime.h>

#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "core/error.h"
#include "cuda/cuda_ops.h"
#include "cuda/device.h"
#include "cuda/elements.cuh"
#include "cuda/gemm_internal.cuh"
#include "cuda/op_checks.h"

namespace mpt::cuda {

// ---- argument checks (the CPU backend's rules and messages) -------------------------------

void invalid_argument(const char* op, const std::string& what) { fail(Status::kInvalidArgument, op, ": ", what); }

namespace {
std::string extent(int64_t n) { return n < 0 ? std::string("*") : std::to_string(n); }
}  // namespace

void check_matrix(const char* op, const char* arg, const Tensor& t, int64_t rows, int64_t cols) {
  check_float(op, arg, t);
  MPT_GEMM_CHECK(t.ndim == 2 && (rows < 0 || t.shape[0] == rows) && (cols < 0 || t.shape[1] == cols), op,
                 str(arg, " ", describe(t), " must be [", extent(rows), ", ", extent(cols), "]"));
}

namespace {

// ---- small kernels -------------------------------------------------------------------------

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = int64_t{1} << 20;  // grid-stride loops cover the rest

// Blocks for a grid-stride loop over n elements (n > 0).
unsigned blocks_for(int64_t n) {
  const int64_t b = (n + kThreads - 1) / kThreads;
  return static_cast<unsigned>(b < kMaxBlocks ? b : kMaxBlocks);
}

// c[rows, cols] (leading dimension ld) = beta * c; beta == 0 writes zeros, as BLAS does.
__global__ void scale_matrix_kernel(Out c, int64_t rows, int64_t cols, int64_t ld, float beta) {
  const int64_t total = rows * cols;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t at = (i / cols) * ld + i % cols;
    c.set(at, beta == 0.0f ? 0.0f : beta * c[at]);
  }
}

}  // namespace

void scale_matrix(cudaStream_t stream, Out c, int64_t rows, int64_t cols, int64_t ld, float beta) {
  if (rows <= 0 || cols <= 0) return;
  scale_matrix_kernel<<<blocks_for(rows * cols), kThreads, 0, stream>>>(c, rows, cols, ld, beta);
  MPT_CUDA_LAUNCH(scale_matrix_kernel);
}

namespace {

__global__ void add_bias_kernel(Out y, In bias, int64_t total, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    y.add(i, bias[i % n]);
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
__global__ void column_sums_kernel(In dy, int64_t rows, int64_t n, int64_t rows_per_chunk, double* partial,
                                   Out dbias) {
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
    dbias.add(j, static_cast<float>(sum));
  else
    partial[blockIdx.y * n + j] = sum;
}

__global__ void sum_chunks_kernel(const double* partial, int64_t chunks, int64_t n, Out dbias) {
  for (int64_t j = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; j < n;
       j += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    double sum = 0;
    for (int64_t c = 0; c < chunks; ++c) sum += partial[c * n + j];
    dbias.add(j, static_cast<float>(sum));
  }
}

// ---- cuBLASLt ------------------------------------------------------------------------------

void check_lt(cublasStatus_t status, const char* call, const char* file, int line) {
  if (status == CUBLAS_STATUS_SUCCESS) return;
  fail(Status::kDevice, call, " failed: ", cublasLtGetStatusName(status), " (", cublasLtGetStatusString(status),
       ") at ", file, ":", line);
}

#define MPT_LT_CHECK(call) check_lt((call), #call, __FILE__, __LINE__)

constexpr int kCandidates = 8;  // the heuristic's proposals timed for a new shape
constexpr int kTimedRuns = 3;   // timed runs of each, after its warm-up

// Everything that decides the descriptors and the algorithm of one GEMM (row-major terms).
struct GemmKey {
  int device;
  bool trans_a, trans_b;
  bool ab_bf16, c_bf16;  // storage: both operands bf16 (else f32), c bf16 (else f32)
  int64_t m, n, k, lda, ldb, ldc;
  uint32_t align_a, align_b, align_c;
  size_t workspace;
  bool beta_zero;  // c is not read (the timing may then write it)

  bool operator<(const GemmKey& o) const {
    return std::tie(device, trans_a, trans_b, ab_bf16, c_bf16, m, n, k, lda, ldb, ldc, align_a, align_b, align_c,
                    workspace, beta_zero) < std::tie(o.device, o.trans_a, o.trans_b, o.ab_bf16, o.c_bf16, o.m, o.n,
                                                     o.k, o.lda, o.ldb, o.ldc, o.align_a, o.align_b, o.align_c,
                                                     o.workspace, o.beta_zero);
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

cudaDataType_t lt_type(bool bf16) { return bf16 ? CUDA_R_16BF : CUDA_R_32F; }
const char* type_name(bool bf16) { return bf16 ? "bf16" : "fp32"; }

// The largest power of two up to 256 dividing both the address and the row pitch in bytes:
// the alignment every row of the operand has, which the algorithm must accept.
uint32_t alignment_of(const void* p, int64_t ld, bool bf16) {
  const uint64_t bits = static_cast<uint64_t>(reinterpret_cast<uintptr_t>(p)) |
                        static_cast<uint64_t>(ld) * static_cast<uint64_t>(element_bytes(bf16));
  uint32_t align = 256;
  while (align > 1 && bits % align != 0) align /= 2;
  return align;
}

// Creates desc with the compute type and the transposes of `key` (cuBLASLt's A is our b).
void create_desc(cublasLtMatmulDesc_t* desc, const GemmKey& key) {
  MPT_LT_CHECK(cublasLtMatmulDescCreate(desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  const cublasOperation_t op_a = key.trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
  const cublasOperation_t op_b = key.trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
  MPT_LT_CHECK(cublasLtMatmulDescSetAttribute(*desc, CUBLASLT_MATMUL_DESC_TRANSA, &op_a, sizeof(op_a)));
  MPT_LT_CHECK(cublasLtMatmulDescSetAttribute(*desc, CUBLASLT_MATMUL_DESC_TRANSB, &op_b, sizeof(op_b)));
}

// The layouts of the stored arrays, and the algorithms cuBLASLt's heuristic proposes for them
// with plan->desc, best first (up to kCandidates; none when it has none for this configuration).
std::vector<cublasLtMatmulHeuristicResult_t> search_algos(cublasLtHandle_t lt, GemmPlan* plan, const GemmKey& key) {
  // Column-major extents of the stored arrays: row-major b is [k, n] (or [n, k] when
  // trans_b) and so column-major [n, k] (or [k, n]); likewise a; c is column-major [n, m].
  const uint64_t m = static_cast<uint64_t>(key.m), n = static_cast<uint64_t>(key.n), k = static_cast<uint64_t>(key.k);
  const cudaDataType_t ab = lt_type(key.ab_bf16), ct = lt_type(key.c_bf16);
  MPT_LT_CHECK(cublasLtMatrixLayoutCreate(&plan->lt_a, ab, key.trans_b ? k : n, key.trans_b ? n : k, key.ldb));
  MPT_LT_CHECK(cublasLtMatrixLayoutCreate(&plan->lt_b, ab, key.trans_a ? m : k, key.trans_a ? k : m, key.lda));
  MPT_LT_CHECK(cublasLtMatrixLayoutCreate(&plan->lt_c, ct, n, m, key.ldc));

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
  if (!key.ab_bf16) {
    // fp32 operands: plain FMA algorithms only, no tensor-core paths (TF32 or BF16
    // emulation of fp32).
    const uint64_t impl = ~(CUBLASLT_NUMERICAL_IMPL_FLAGS_TENSOR_OP_MASK | CUBLASLT_NUMERICAL_IMPL_FLAGS_INPUT_TF32 |
                            CUBLASLT_NUMERICAL_IMPL_FLAGS_INPUT_16BF | CUBLASLT_NUMERICAL_IMPL_FLAGS_INPUT_16F);
    MPT_LT_CHECK(
        cublasLtMatmulPreferenceSetAttribute(pref.pref, CUBLASLT_MATMUL_PREF_IMPL_MASK, &impl, sizeof(impl)));
  }
  if (key.c_bf16) {
    // Split-K partials of a bf16 c are added in fp32 (workspace), never in c's own dtype, so
    // c is rounded once.
    const uint32_t schemes = CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE;
    MPT_LT_CHECK(cublasLtMatmulPreferenceSetAttribute(pref.pref, CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK, &schemes,
                                                      sizeof(schemes)));
  }

  std::vector<cublasLtMatmulHeuristicResult_t> results(kCandidates);
  int found = 0;
  const cublasStatus_t searched =
      cublasLtMatmulAlgoGetHeuristic(lt, plan->desc, plan->lt_a, plan->lt_b, plan->lt_c, plan->lt_c, pref.pref,
                                     static_cast<int>(results.size()), results.data(), &found);
  if (searched != CUBLAS_STATUS_NOT_SUPPORTED)  // "none for this configuration"
    check_lt(searched, "cublasLtMatmulAlgoGetHeuristic", __FILE__, __LINE__);
  if (searched != CUBLAS_STATUS_SUCCESS || found <= 0) return {};
  results.resize(static_cast<size_t>(found));
  std::vector<cublasLtMatmulHeuristicResult_t> usable;
  for (const auto& r : results)
    if (r.state == CUBLAS_STATUS_SUCCESS) usable.push_back(r);
  return usable;
}

// ---- choosing among the candidates ------------------------------------------------------------

std::atomic<int64_t> g_planned{0}, g_timed{0}, g_widened{0};

bool autotune_enabled() {
  const char* env = std::getenv("MPT_GEMM_AUTOTUNE");
  return env == nullptr || std::strcmp(env, "0") != 0;
}

// The operands of the call that first meets a shape, in cuBLASLt's order (lt_a is our b),
// which the timing runs on; desc carries an epilogue's pointers.
struct GemmCall {
  cublasLtMatmulDesc_t desc;
  const void* lt_a;
  const void* lt_b;
  void* c;
  float alpha, beta;
};

struct EventGuard {
  cudaEvent_t start = nullptr, stop = nullptr;
  EventGuard() = default;
  EventGuard(const EventGuard&) = delete;
  EventGuard& operator=(const EventGuard&) = delete;
  ~EventGuard() {
    if (start) cudaEventDestroy(start);
    if (stop) cudaEventDestroy(stop);
  }
};

// Whether the backend's stream is being recorded, by CudaOps or by anyone else: nothing may
// be timed (or waited for) then.
bool stream_capturing(CudaOps& ops) {
  if (ops.capturing()) return true;
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  MPT_CUDA_CHECK(cudaStreamIsCapturing(ops.stream(), &status));
  return status != cudaStreamCaptureStatusNone;
}

// The index of the fastest candidate for `call`, timed on the backend's stream; 0 (the
// heuristic's first) when there is nothing to choose or timing is not allowed (file comment).
size_t choose_candidate(CudaOps& ops, const GemmPlan& plan, const GemmKey& key,
                        const std::vector<cublasLtMatmulHeuristicResult_t>& candidates, const GemmCall& call) {
  if (candidates.size() < 2 || !autotune_enabled() || stream_capturing(ops)) return 0;
  // Where the candidates write: c itself at beta 0, else a copy of its span at the end of
  // the workspace, leaving the rest to the candidates (those needing more are not timed).
  char* workspace = static_cast<char*>(ops.lt_workspace());
  size_t workspace_left = ops.lt_workspace_bytes();
  void* d = call.c;
  if (!key.beta_zero) {
    const size_t span = (static_cast<size_t>(key.m - 1) * static_cast<size_t>(key.ldc) + static_cast<size_t>(key.n)) *
                        element_bytes(key.c_bf16);
    const size_t d_bytes = (span + 255) / 256 * 256;
    if (d_bytes > workspace_left / 2) return 0;
    workspace_left -= d_bytes;
    d = workspace + workspace_left;
  }
  std::vector<size_t> timed;
  for (size_t i = 0; i < candidates.size(); ++i) {
    if (candidates[i].workspaceSize > workspace_left) continue;
    if (!key.beta_zero) {
      int32_t out_of_place = 0;
      size_t written = 0;
      if (cublasLtMatmulAlgoCapGetAttribute(&candidates[i].algo, CUBLASLT_ALGO_CAP_OUT_OF_PLACE_RESULT_SUPPORT,
                                            &out_of_place, sizeof(out_of_place), &written) != CUBLAS_STATUS_SUCCESS ||
          out_of_place == 0)
        continue;
    }
    timed.push_back(i);
  }
  if (timed.size() < 2 || timed[0] != 0) return 0;  // the heuristic's first must be among them

  const auto run = [&](size_t i) {
    return cublasLtMatmul(ops.lt(), call.desc, &call.alpha, call.lt_a, plan.lt_a, call.lt_b, plan.lt_b, &call.beta,
                          call.c, plan.lt_c, d, plan.lt_c, &candidates[i].algo, workspace, workspace_left,
                          ops.stream());
  };
  // A warm-up each (the first launch of a kernel may load it): a candidate that fails is dropped.
  std::vector<size_t> working;
  for (size_t i : timed)
    if (run(i) == CUBLAS_STATUS_SUCCESS) working.push_back(i);
  if (working.empty() || working[0] != 0) return 0;
  EventGuard events;
  MPT_CUDA_CHECK(cudaEventCreate(&events.start));
  MPT_CUDA_CHECK(cudaEventCreate(&events.stop));
  size_t best = 0;
  float best_ms = std::numeric_limits<float>::infinity();
  for (size_t i : working) {
    MPT_CUDA_CHECK(cudaEventRecord(events.start, ops.stream()));
    bool failed = false;
    for (int r = 0; r < kTimedRuns && !failed; ++r) failed = run(i) != CUBLAS_STATUS_SUCCESS;
    MPT_CUDA_CHECK(cudaEventRecord(events.stop, ops.stream()));
    MPT_CUDA_CHECK(cudaEventSynchronize(events.stop));
    float ms = 0;
    MPT_CUDA_CHECK(cudaEventElapsedTime(&ms, events.start, events.stop));
    if (!failed && ms < best_ms) {  // ties keep the heuristic's order
      best = i;
      best_ms = ms;
    }
  }
  ++g_timed;
  return best;
}

// The plan of a shape: its candidates and the one chosen for `call` (timed when `tune`).
// Null when cuBLASLt has no algorithm.
std::shared_ptr<GemmPlan> plan_for(CudaOps& ops, const GemmKey& key, const GemmCall& call, bool tune,
                                   std::shared_ptr<GemmPlan> plan) {
  const std::vector<cublasLtMatmulHeuristicResult_t> candidates = search_algos(ops.lt(), plan.get(), key);
  if (candidates.empty()) return nullptr;
  GemmCall with_desc = call;
  with_desc.desc = plan->desc;
  plan->algo = candidates[tune ? choose_candidate(ops, *plan, key, candidates, with_desc) : 0].algo;
  return plan;
}

std::string shape_label(const GemmKey& key) {
  return str("c[", key.m, ", ", key.n, "] (", type_name(key.c_bf16), ") = a", key.trans_a ? "^T" : "", " @ b",
             key.trans_b ? "^T" : "", " with k ", key.k, ", alignments a/b/c ", key.align_a, "/", key.align_b, "/",
             key.align_c, " bytes");
}

// `first`: the plan is about to be cached, so this is the shape's first call (its notice is
// logged once).
std::shared_ptr<const GemmPlan> build_plan(CudaOps& ops, const GemmKey& key, const GemmCall& call, bool tune,
                                           bool first) {
  auto plan = std::make_shared<GemmPlan>();
  create_desc(&plan->desc, key);
  ++g_planned;
  std::shared_ptr<GemmPlan> chosen = plan_for(ops, key, call, tune, plan);
  if (!chosen && key.ab_bf16) {  // gemm() forms the same products in fp32
    ++g_widened;
    if (first)
      ops.logger().warn(str(ops.name(), ": matmul: cuBLASLt has no bf16 algorithm for ", shape_label(key),
                            " (a and b bf16); it runs as an fp32 GEMM on widened copies (second scratch area): "
                            "the same products, slower"));
    return nullptr;
  }
  MPT_CHECK(chosen != nullptr, Status::kNotSupported, "matmul: cuBLASLt has no ", type_name(key.ab_bf16),
            " algorithm for ", shape_label(key), ", workspace ", key.workspace, " bytes");
  return chosen;
}

// ---- GEMMs with an epilogue -----------------------------------------------------------------

// A linear layer's forward product d[m, n] = x[m, k] @ w[n, k]^T (trans_b) with cuBLASLt's
// epilogue: BIAS adds bias [n] to every row of d (in cuBLASLt's column-major view a vector
// along d's rows, broadcast over its columns); GELU_AUX(_BIAS) writes the GELU input to aux
// [m, n] (leading dimension n) and its tanh-form GELU to d. Pointers reach the plan only
// through their alignments, which the key holds; each call makes its own descriptor with
// its pointers, so plans shared between threads stay read-only.
struct EpilogueKey {
  GemmKey gemm;
  cublasLtEpilogue_t epilogue;
  uint32_t align_bias, align_aux;  // 0 when absent

  bool operator<(const EpilogueKey& o) const {
    return std::tie(gemm, epilogue, align_bias, align_aux) < std::tie(o.gemm, o.epilogue, o.align_bias, o.align_aux);
  }
};

void set_epilogue(cublasLtMatmulDesc_t desc, const EpilogueKey& key, const void* bias, void* aux) {
  MPT_LT_CHECK(
      cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &key.epilogue, sizeof(key.epilogue)));
  if (bias)  // its dtype is d's (the default); the caller checks that
    MPT_LT_CHECK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof(bias)));
  if (aux) {  // its dtype is d's too
    const int64_t ld = key.gemm.ldc;
    MPT_LT_CHECK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, &aux, sizeof(aux)));
    MPT_LT_CHECK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD, &ld, sizeof(ld)));
  }
}

// The plan of an epilogue GEMM, searched with the first call's pointers; null when cuBLASLt
// has no algorithm (the caller then runs the product and the epilogue's steps apart).
std::shared_ptr<const GemmPlan> build_epilogue_plan(CudaOps& ops, const EpilogueKey& key, const void* bias,
                                                    void* aux, const GemmCall& call, bool tune) {
  auto plan = std::make_shared<GemmPlan>();
  create_desc(&plan->desc, key.gemm);
  set_epilogue(plan->desc, key, bias, aux);
  ++g_planned;
  return plan_for(ops, key.gemm, call, tune, plan);
}

// Plans for the shapes seen so far, shared by every CudaOps of the process (an algorithm
// depends only on the device, not on the handle); null for a shape cuBLASLt has no
// algorithm for (bf16 GEMMs, epilogues). Bounded: once full, a new shape's plan is made for
// each call with the heuristic's first, never timed, so that a shape keeps one algorithm
// (a cached plan is never dropped: a new choice could change its bits).
template <typename Key>
class PlanCache {
 public:
  // build(cached) makes the plan of a key not seen yet; `cached` says whether it will be kept
  // (and may then be timed).
  template <typename Build>
  std::shared_ptr<const GemmPlan> get(const Key& key, Build build) {
    bool room = false;
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = plans_.find(key);
      if (it != plans_.end()) return it->second;
      room = plans_.size() < kMaxPlans;
    }
    std::shared_ptr<const GemmPlan> plan = build(room);  // outside the lock: the search is slow
    if (!room) return plan;
    std::lock_guard<std::mutex> lock(mu_);
    // Another thread may have planned the key meanwhile: every call then uses its plan.
    return plans_.emplace(key, std::move(plan)).first->second;
  }

 private:
  static constexpr size_t kMaxPlans = 4096;
  std::mutex mu_;
  std::map<Key, std::shared_ptr<const GemmPlan>> plans_;
};

template <typename Key>
PlanCache<Key>& plan_cache() {
  static PlanCache<Key> cache;
  return cache;
}

void gemm_widened(CudaOps& ops, bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha,
                  const void* a, int64_t lda, const void* b, int64_t ldb, float beta, Out c, int64_t ldc,
                  bool autotune);

}  // namespace

void gemm(CudaOps& ops, bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha, const void* a,
          int64_t lda, const void* b, int64_t ldb, bool ab_bf16, float beta, Out c, int64_t ldc, bool autotune) {
  if (m <= 0 || n <= 0) return;
  if (k <= 0) {
    scale_matrix(ops.stream(), c, m, n, ldc, beta);
    return;
  }
  const GemmKey key{ops.device(),
                    trans_a,
                    trans_b,
                    ab_bf16,
                    c.bf16,
                    m,
                    n,
                    k,
                    lda,
                    ldb,
                    ldc,
                    alignment_of(a, lda, ab_bf16),
                    alignment_of(b, ldb, ab_bf16),
                    alignment_of(c.data, ldc, c.bf16),
                    ops.lt_workspace_bytes(),
                    beta == 0.0f};
  const GemmCall call{nullptr, b, a, c.data, alpha, beta};
  const std::shared_ptr<const GemmPlan> plan = plan_cache<GemmKey>().get(
      key, [&](bool cached) { return build_plan(ops, key, call, cached && autotune, cached); });
  if (!plan) {
    gemm_widened(ops, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc, autotune);
    return;
  }
  // beta == 0: cuBLASLt does not read c, so stale NaN or Inf there do not leak in.
  MPT_LT_CHECK(cublasLtMatmul(ops.lt(), plan->desc, &alpha, b, plan->lt_a, a, plan->lt_b, &beta, c.data, plan->lt_c,
                              c.data, plan->lt_c, &plan->algo, ops.lt_workspace(), ops.lt_workspace_bytes(),
                              ops.stream()));
}

namespace {

// A bf16 GEMM cuBLASLt has no algorithm for (an unusual alignment), as an fp32 GEMM on the
// widened operands: bf16 values widen exactly and their products are exact in fp32, so only
// the order of the fp32 sums differs. A bf16 c is widened, computed on and rounded back (the
// whole span it covers, which round-trips unchanged between the rows). The widened copies
// live in the second scratch area (a or b may sit in the first), so nothing is allocated and
// the path records into a graph like any other.
void gemm_widened(CudaOps& ops, bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha,
                  const void* a, int64_t lda, const void* b, int64_t ldb, float beta, Out c, int64_t ldc,
                  bool autotune) {
  // Elements each stored (row-major) array spans: its rows times the pitch, the last row short.
  const int64_t a_span = ((trans_a ? k : m) - 1) * lda + (trans_a ? m : k);
  const int64_t b_span = ((trans_b ? n : k) - 1) * ldb + (trans_b ? k : n);
  const int64_t c_span = (m - 1) * ldc + n;
  auto padded = [](int64_t elements) { return (static_cast<size_t>(elements) * 4 + 255) / 256 * 256; };
  const size_t a_bytes = padded(a_span), b_bytes = padded(b_span), c_bytes = c.bf16 ? padded(c_span) : 0;
  char* base = static_cast<char*>(ops.second_scratch(a_bytes + b_bytes + c_bytes));
  void* wide_a = base;
  void* wide_b = base + a_bytes;
  void* wide_c = base + a_bytes + b_bytes;
  ops.convert(wide_a, DType::kF32, a, DType::kBF16, a_span);
  ops.convert(wide_b, DType::kF32, b, DType::kBF16, b_span);
  Out target = c;
  if (c.bf16) {
    ops.convert(wide_c, DType::kF32, c.data, DType::kBF16, c_span);
    target = Out{wide_c, false};
  }
  gemm(ops, trans_a, trans_b, m, n, k, alpha, wide_a, lda, wide_b, ldb, false, beta, target, ldc, autotune);
  if (c.bf16) ops.convert(c.data, DType::kBF16, wide_c, DType::kF32, c_span);
}

// ---- matmul_bias_act ------------------------------------------------------------------------

// Whether the bytes of two tensors share an address (empty ones share none).
bool overlaps(const Tensor& x, const Tensor& y) {
  if (x.data == nullptr || y.data == nullptr || x.bytes() == 0 || y.bytes() == 0) return false;
  const auto xb = reinterpret_cast<uintptr_t>(x.data), yb = reinterpret_cast<uintptr_t>(y.data);
  return xb < yb + y.bytes() && yb < xb + x.bytes();
}

void check_apart(const char* op, const char* an, const Tensor& a, const char* bn, const Tensor& b) {
  MPT_GEMM_CHECK(!overlaps(a, b), op, str(an, " ", describe(a), " must not overlap ", bn, " ", describe(b)));
}

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

struct DescGuard {
  cublasLtMatmulDesc_t desc = nullptr;
  DescGuard() = default;
  DescGuard(const DescGuard&) = delete;
  DescGuard& operator=(const DescGuard&) = delete;
  ~DescGuard() {
    if (desc) cublasLtMatmulDescDestroy(desc);
  }
};

// z = x @ w^T + bias in one cuBLASLt call, with y = gelu_tanh(z) too when `gelu` (z is then
// the auxiliary output). Returns false, having queued nothing, when the call does not meet
// the epilogue's conditions or cuBLASLt has no algorithm for it; the caller then runs the
// steps apart. Conditions: a non-empty product; a d (y for GELU, else z) that needs no fp32
// staging; a bias in d's dtype on a 16-byte boundary; for GELU, y and z both bf16 with rows
// of a multiple of 8 elements on a 16-byte boundary (cuBLASLt's rule for the aux output).
bool epilogue_linear(CudaOps& ops, const Tensor& y, const Tensor& z, const Tensor& x, const Tensor& w,
                     const Tensor& bias, bool gelu) {
  const int64_t m = rows_of(x), k = last_dim(x), n = w.shape[0];
  if (m == 0 || n == 0 || k == 0) return false;
  const bool has_bias = bias.data != nullptr;
  const Tensor& d = gelu ? y : z;
  if (gelu && !(y.dtype == DType::kBF16 && z.dtype == DType::kBF16 && n % 8 == 0 && aligned16(z.data))) return false;
  if (!has_bias && !gelu) return false;  // nothing for an epilogue to do
  if (has_bias && (bias.dtype != d.dtype || !aligned16(bias.data))) return false;
  const bool ab_bf16 = x.dtype == DType::kBF16 || w.dtype == DType::kBF16;
  if (!ab_bf16 && d.dtype == DType::kBF16) return false;  // d would be staged in fp32

  const GemmOperands g(ops, d, x, w, 0.0f);
  const Out dv = g.c(0);
  const cublasLtEpilogue_t epilogue = !gelu       ? CUBLASLT_EPILOGUE_BIAS
                                      : has_bias ? CUBLASLT_EPILOGUE_GELU_AUX_BIAS
                                                 : CUBLASLT_EPILOGUE_GELU_AUX;
  const GemmKey gemm{ops.device(),
                     false,
                     true,
                     ab_bf16,
                     dv.bf16,
                     m,
                     n,
                     k,
                     k,
                     k,
                     n,
                     alignment_of(g.a(0), k, ab_bf16),
                     alignment_of(g.b(0), k, ab_bf16),
                     alignment_of(dv.data, n, dv.bf16),
                     ops.lt_workspace_bytes(),
                     true};
  const void* bias_ptr = has_bias ? bias.data : nullptr;
  void* aux = gelu ? z.data : nullptr;
  const EpilogueKey key{gemm, epilogue, has_bias ? alignment_of(bias_ptr, 0, d.dtype == DType::kBF16) : 0u,
                        gelu ? alignment_of(aux, n, true) : 0u};
  // The timing writes d and aux, which this call then overwrites (beta 0).
  const GemmCall call{nullptr, g.b(0), g.a(0), dv.data, 1.0f, 0.0f};
  const std::shared_ptr<const GemmPlan> plan = plan_cache<EpilogueKey>().get(
      key, [&](bool cached) { return build_epilogue_plan(ops, key, bias_ptr, aux, call, cached); });
  if (!plan) return false;
  DescGuard desc;
  create_desc(&desc.desc, gemm);
  set_epilogue(desc.desc, key, bias_ptr, aux);
  const float alpha = 1.0f, beta = 0.0f;
  MPT_LT_CHECK(cublasLtMatmul(ops.lt(), desc.desc, &alpha, g.b(0), plan->lt_a, g.a(0), plan->lt_b, &beta, dv.data,
                              plan->lt_c, dv.data, plan->lt_c, &plan->algo, ops.lt_workspace(),
                              ops.lt_workspace_bytes(), ops.stream()));
  return true;
}

}  // namespace

GemmTuningCounts gemm_tuning_counts() {
  GemmTuningCounts counts;
  counts.planned = g_planned.load();
  counts.timed = g_timed.load();
  counts.widened = g_widened.load();
  return counts;
}

void CudaOps::matmul(Tensor c, Tensor a, Tensor b, bool trans_a, bool trans_b, float alpha, float beta) {
  check_float("matmul", "c", c);
  check_float("matmul", "a", a);
  check_float("matmul", "b", b);
  const int64_t m = rows_of(c), n = last_dim(c);
  const int64_t a_rows = rows_of(a), a_cols = last_dim(a);
  const int64_t b_rows = rows_of(b), b_cols = last_dim(b);
  const int64_t am = trans_a ? a_cols : a_rows, ak = trans_a ? a_rows : a_cols;
  const int64_t bk = trans_b ? b_cols : b_rows, bn = trans_b ? b_rows : b_cols;
  MPT_GEMM_CHECK(am == m && bn == n && ak == bk, "matmul",
                 "shapes do not match: c " + describe(c) + ", a " + describe(a) + (trans_a ? "^T" : "") + ", b " +
                     describe(b) + (trans_b ? "^T" : ""));
  if (m == 0 || n == 0) return;
  const GemmOperands g(*this, c, a, b, beta);
  gemm(*this, trans_a, trans_b, m, n, ak, alpha, g.a(0), a_cols > 1 ? a_cols : 1, g.b(0), b_cols > 1 ? b_cols : 1,
       g.ab_bf16(), beta, g.c(0), n > 1 ? n : 1);
  g.finish(*this, c);
}

void CudaOps::add_bias(Tensor y, Tensor bias) {
  check_float("add_bias", "y", y);
  check_float("add_bias", "bias", bias);
  const int64_t n = bias.numel();
  MPT_GEMM_CHECK(n > 0 && last_dim(y) == n, "add_bias",
                 "y " + describe(y) + " rows must match bias " + describe(bias));
  const int64_t total = y.numel();
  if (total == 0) return;
  add_bias_kernel<<<blocks_for(total), kThreads, 0, stream()>>>(out_view(y), in_view(bias), total, n);
  MPT_CUDA_LAUNCH(add_bias_kernel);
}

void CudaOps::bias_grad(Tensor dbias, Tensor dy) {
  check_float("bias_grad", "dbias", dbias);
  check_float("bias_grad", "dy", dy);
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
    column_sums_kernel<true><<<grid, block, 0, stream()>>>(in_view(dy), rows, n, rows_per_chunk, nullptr,
                                                           out_view(dbias));
    MPT_CUDA_LAUNCH(column_sums_kernel);
    return;
  }
  auto* partial = static_cast<double*>(scratch(static_cast<size_t>(chunks * n) * sizeof(double)));
  column_sums_kernel<false><<<grid, block, 0, stream()>>>(in_view(dy), rows, n, rows_per_chunk, partial, Out{});
  MPT_CUDA_LAUNCH(column_sums_kernel);
  sum_chunks_kernel<<<blocks_for(n), kThreads, 0, stream()>>>(partial, chunks, n, out_view(dbias));
  MPT_CUDA_LAUNCH(sum_chunks_kernel);
}

// The CPU's checks (backend/cpu/fused.cc), then the epilogue GEMM where it applies, else the
// three steps. The GELU epilogue serves only kGeluTanh (cuBLASLt's GELU is the tanh form; kGelu
// is the erf form, so it takes the bias epilogue and the activation kernel) with bf16 y and pre:
// cuBLASLt's GELU reads the unrounded z and its accuracy is documented nowhere, which the
// bf16 tolerance absorbs and the fp32 one might not.
void CudaOps::matmul_bias_act(Tensor y, Tensor pre, Tensor x, Tensor w, Tensor bias,
                              std::optional<backend::Activation> act) {
  const char* op = "matmul_bias_act";
  check_float(op, "y", y);
  check_float(op, "x", x);
  check_float(op, "w", w);
  MPT_GEMM_CHECK(w.ndim == 2, op, "w " + describe(w) + " must be [out, in]");
  const int64_t out = w.shape[0], in = w.shape[1], rows = rows_of(x);
  MPT_GEMM_CHECK(last_dim(x) == in && rows_of(y) == rows && last_dim(y) == out, op,
                 "shapes do not match: y " + describe(y) + " = x " + describe(x) + " @ w " + describe(w) + "^T");
  const bool has_bias = bias.data != nullptr;
  if (has_bias) {
    check_float(op, "bias", bias);
    MPT_GEMM_CHECK(out > 0 && bias.numel() == out, op,
                   "bias " + describe(bias) + " must hold the " + std::to_string(out) + " outputs of w " +
                       describe(w));
  }
  if (act) {
    MPT_GEMM_CHECK(
        static_cast<int>(*act) >= 0 && static_cast<int>(*act) <= static_cast<int>(backend::Activation::kSquaredRelu),
        op, str("unknown activation ", static_cast<int>(*act)));
    check_float(op, "pre", pre);
    MPT_GEMM_CHECK(rows_of(pre) == rows && last_dim(pre) == out, op,
                   "pre " + describe(pre) + " must be shaped like y " + describe(y));
    check_apart(op, "y", y, "pre", pre);
    check_apart(op, "pre", pre, "x", x);
    check_apart(op, "pre", pre, "w", w);
    check_apart(op, "pre", pre, "bias", bias);
  } else {
    MPT_GEMM_CHECK(pre.data == nullptr, op, "pre " + describe(pre) + " must be empty without an activation");
  }
  check_apart(op, "y", y, "x", x);
  check_apart(op, "y", y, "w", w);
  check_apart(op, "y", y, "bias", bias);

  const Tensor z = act ? pre : y;
  const bool gelu = act == backend::Activation::kGeluTanh;
  if (epilogue_linear(*this, y, z, x, w, bias, gelu)) {
    if (act && !gelu) activation_fwd(y, z, *act, false);
    return;
  }
  if (gelu && epilogue_linear(*this, y, z, x, w, bias, false)) {  // the bias epilogue at least
    activation_fwd(y, z, *act, false);
    return;
  }
  matmul(z, x, w, false, true, 1.0f, 0.0f);
  if (has_bias) add_bias(z, bias);
  if (act) activation_fwd(y, z, *act, false);
}

}  // namespace mpt::cuda
