// The CUDA backend's core: construction, memory, the dropout seed, casts and elementwise
// ops and the double-precision reductions (gradient norm, loss sums). The other op families
// live beside it (see cuda_ops.h; AdamW in cuda_adamw.cu).
#include "cuda/cuda_ops.h"
#include "cuda/elements.cuh"
#include "cuda/op_checks.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>

#include "core/error.h"
#include "cuda/device.h"

namespace mpt::cuda {

namespace {

constexpr size_t kLtWorkspaceBytes = size_t{32} << 20;
constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = int64_t{1} << 16;  // elementwise grids stride beyond this
// The reductions always use this many partial sums (fewer for small inputs), so their
// order, and hence the result's bits, depends on the input size alone, not on the GPU.
constexpr int64_t kReduceBlocks = 1024;

int elementwise_blocks(int64_t n) { return static_cast<int>(std::min((n + kThreads - 1) / kThreads, kMaxBlocks)); }

bool aligned(const void* p, size_t bytes) { return reinterpret_cast<uintptr_t>(p) % bytes == 0; }

// --- kernels ------------------------------------------------------------------------------

__device__ __forceinline__ int64_t first_index() { return int64_t{blockIdx.x} * blockDim.x + threadIdx.x; }
__device__ __forceinline__ int64_t index_stride() { return int64_t{gridDim.x} * blockDim.x; }

// f32 -> bf16, four elements per access where both arrays allow it (vec).
__global__ void f32_to_bf16_kernel(uint16_t* dst, const float* src, int64_t n, bool vec) {
  int64_t done = 0;
  if (vec) {
    const int64_t quads = n / 4;
    for (int64_t q = first_index(); q < quads; q += index_stride()) {
      const float4 v = reinterpret_cast<const float4*>(src)[q];
      uint2 packed;  // little-endian: the lower element in the lower half
      packed.x = f32_to_bf16(v.x) | static_cast<uint32_t>(f32_to_bf16(v.y)) << 16;
      packed.y = f32_to_bf16(v.z) | static_cast<uint32_t>(f32_to_bf16(v.w)) << 16;
      reinterpret_cast<uint2*>(dst)[q] = packed;
    }
    done = quads * 4;
  }
  for (int64_t i = done + first_index(); i < n; i += index_stride()) dst[i] = f32_to_bf16(src[i]);
}

// bf16 -> f32 (exact), four elements per access where both arrays allow it (vec).
__global__ void bf16_to_f32_kernel(float* dst, const uint16_t* src, int64_t n, bool vec) {
  int64_t done = 0;
  if (vec) {
    const int64_t quads = n / 4;
    for (int64_t q = first_index(); q < quads; q += index_stride()) {
      const uint2 packed = reinterpret_cast<const uint2*>(src)[q];
      float4 v;
      v.x = bf16_to_f32(static_cast<uint16_t>(packed.x & 0xffffu));
      v.y = bf16_to_f32(static_cast<uint16_t>(packed.x >> 16));
      v.z = bf16_to_f32(static_cast<uint16_t>(packed.y & 0xffffu));
      v.w = bf16_to_f32(static_cast<uint16_t>(packed.y >> 16));
      reinterpret_cast<float4*>(dst)[q] = v;
    }
    done = quads * 4;
  }
  for (int64_t i = done + first_index(); i < n; i += index_stride()) dst[i] = bf16_to_f32(src[i]);
}

// One thread: *dst = value, in stream order (set_dropout_seed).
__global__ void write_u64_kernel(uint64_t* dst, uint64_t value) { *dst = value; }

__global__ void fill_kernel(Out x, int64_t n, float value) {
  for (int64_t i = first_index(); i < n; i += index_stride()) x.set(i, value);
}

__global__ void add_kernel(Out out, In a, In b, int64_t n) {
  for (int64_t i = first_index(); i < n; i += index_stride()) out.set(i, a[i] + b[i]);
}

__global__ void add_inplace_kernel(Out y, In x, int64_t n) {
  for (int64_t i = first_index(); i < n; i += index_stride()) y.set(i, y[i] + x[i]);
}

__global__ void scale_kernel(Out x, int64_t n, float s) {
  for (int64_t i = first_index(); i < n; i += index_stride()) x.set(i, x[i] * s);
}

// The elementwise ops on tensors of one dtype T: out[i] = op(a[i], b[i]) (a, b widened; an
// absent one reads 0), 16-byte packs when every pointer is aligned (Vec), then the tail one
// element at a time; Index is uint32_t when n fits, so the loop does 32-bit arithmetic.
// The same fp32 expression per element as the kernels above, rounded once.
struct FillOp {
  float value;
  __device__ float operator()(float, float) const { return value; }
};
struct AddOp {
  __device__ float operator()(float a, float b) const { return a + b; }
};
struct ScaleOp {
  float s;
  __device__ float operator()(float x, float) const { return x * s; }
};

template <typename T, bool Vec, typename Index, typename Op>
__global__ void elementwise_kernel(T* out, const T* a, const T* b, Index n, Op op) {
  const Index first = static_cast<Index>(blockIdx.x) * blockDim.x + threadIdx.x;
  const Index stride = static_cast<Index>(gridDim.x) * blockDim.x;
  constexpr int W = Pack<T>::kSize;
  Index done = 0;
  if constexpr (Vec) {
    const Index packs = n / W;
    for (Index p = first; p < packs; p += stride) {
      Pack<T> pa{}, pb{}, r;
      if (a) pa = *reinterpret_cast<const Pack<T>*>(a + p * W);
      if (b) pb = *reinterpret_cast<const Pack<T>*>(b + p * W);
#pragma unroll
      for (int k = 0; k < W; ++k) r.v[k] = narrow<T>(op(a ? widen(pa.v[k]) : 0.0f, b ? widen(pb.v[k]) : 0.0f));
      *reinterpret_cast<Pack<T>*>(out + p * W) = r;
    }
    done = packs * W;
  }
  for (Index i = done + first; i < n; i += stride)
    out[i] = narrow<T>(op(a ? widen(a[i]) : 0.0f, b ? widen(b[i]) : 0.0f));
}

template <typename T, typename Op>
void launch_typed(cudaStream_t stream, void* out, const void* a, const void* b, int64_t n, Op op) {
  auto* o = static_cast<T*>(out);
  const T *x = static_cast<const T*>(a), *y = static_cast<const T*>(b);
  const int blocks = elementwise_blocks(n);
  const bool vec = aligned16({out, a, b});
  if (n <= INT32_MAX) {
    const auto m = static_cast<uint32_t>(n);
    if (vec)
      elementwise_kernel<T, true><<<blocks, kThreads, 0, stream>>>(o, x, y, m, op);
    else
      elementwise_kernel<T, false><<<blocks, kThreads, 0, stream>>>(o, x, y, m, op);
  } else if (vec) {
    elementwise_kernel<T, true><<<blocks, kThreads, 0, stream>>>(o, x, y, n, op);
  } else {
    elementwise_kernel<T, false><<<blocks, kThreads, 0, stream>>>(o, x, y, n, op);
  }
  MPT_CUDA_LAUNCH(elementwise_kernel);
}

// Runs op through elementwise_kernel when out, a and b (those given) share a dtype; returns
// false when they mix dtypes (the caller then runs its In/Out kernel).
template <typename Op>
bool elementwise_same_dtype(cudaStream_t stream, const Tensor& out, const Tensor* a, const Tensor* b, Op op) {
  if ((a && a->dtype != out.dtype) || (b && b->dtype != out.dtype)) return false;
  const void* pa = a ? a->data : nullptr;
  const void* pb = b ? b->data : nullptr;
  if (out.dtype == DType::kBF16)
    launch_typed<uint16_t>(stream, out.data, pa, pb, out.numel(), op);
  else
    launch_typed<float>(stream, out.data, pa, pb, out.numel(), op);
  return true;
}

struct SquareTerm {
  In x;
  __device__ double operator()(int64_t i) const {
    const double v = x[i];
    return v * v;
  }
};

struct DotTerm {
  In a, b;
  __device__ double operator()(int64_t i) const { return static_cast<double>(a[i]) * static_cast<double>(b[i]); }
};

// Sums the kThreads values of `shared` into shared[0] by a fixed tree.
__device__ void tree_sum(double* shared) {
  for (int width = kThreads / 2; width > 0; width /= 2) {
    if (static_cast<int>(threadIdx.x) < width) shared[threadIdx.x] += shared[threadIdx.x + width];
    __syncthreads();
  }
}

// Pass 1: block b writes the sum of its grid-strided terms to partial[b].
template <typename Term>
__global__ void partial_sums_kernel(Term term, int64_t n, double* partial) {
  __shared__ double shared[kThreads];
  const int64_t stride = int64_t{gridDim.x} * blockDim.x;
  double s = 0;
  for (int64_t i = int64_t{blockIdx.x} * blockDim.x + threadIdx.x; i < n; i += stride) s += term(i);
  shared[threadIdx.x] = s;
  __syncthreads();
  tree_sum(shared);
  if (threadIdx.x == 0) partial[blockIdx.x] = shared[0];
}

// Pass 2 (one block): *total = the sum of partial[0, count).
__global__ void final_sum_kernel(const double* partial, int64_t count, double* total) {
  __shared__ double shared[kThreads];
  double s = 0;
  for (int64_t i = threadIdx.x; i < count; i += kThreads) s += partial[i];
  shared[threadIdx.x] = s;
  __syncthreads();
  tree_sum(shared);
  if (threadIdx.x == 0) *total = shared[0];
}

// Sets *flag when an element's exponent is all ones (Inf or NaN): `exponent` is the mask of
// the format's exponent bits (f32 as uint32_t, bf16 as uint16_t). Every writer stores the
// same value, so the result does not depend on which thread wins.
template <typename Bits>
__global__ void find_non_finite_kernel(const Bits* bits, int64_t n, Bits exponent, int* flag) {
  for (int64_t i = first_index(); i < n; i += index_stride())
    if ((bits[i] & exponent) == exponent) {
      *flag = 1;
      return;
    }
}

// The sum of term(i) over [0, n) in double, in a fixed order, read back to the host.
template <typename Term>
double device_sum(CudaOps& ops, Term term, int64_t n) {
  if (n == 0) return 0.0;
  const int64_t blocks = std::min((n + kThreads - 1) / kThreads, kReduceBlocks);
  auto* host = static_cast<double*>(ops.pinned(sizeof(double)));
  auto* partial = static_cast<double*>(ops.scratch(static_cast<size_t>(blocks + 1) * sizeof(double)));
  double* total = partial + blocks;
  partial_sums_kernel<<<static_cast<unsigned>(blocks), kThreads, 0, ops.stream()>>>(term, n, partial);
  MPT_CUDA_LAUNCH(partial_sums_kernel);
  final_sum_kernel<<<1, kThreads, 0, ops.stream()>>>(partial, blocks, total);
  MPT_CUDA_LAUNCH(final_sum_kernel);
  MPT_CUDA_CHECK(cudaMemcpyAsync(host, total, sizeof(double), cudaMemcpyDeviceToHost, ops.stream()));
  MPT_CUDA_CHECK(cudaStreamSynchronize(ops.stream()));
  return *host;
}

// Frees what a CudaOps holds (any of it may be missing after a failed construction).
// Never throws: it runs from the destructor.
void release_resources(int device, cudaStream_t& stream, std::unique_ptr<CachingAllocator>& alloc,
                       cublasLtHandle_t& lt, void*& pinned) noexcept {
  if (cudaSetDevice(device) == cudaSuccess && stream) cudaStreamSynchronize(stream);
  if (lt) cublasLtDestroy(lt);
  lt = nullptr;
  alloc.reset();  // every block: the cuBLASLt workspace, the scratch, tensors still out
  if (pinned) cudaFreeHost(pinned);
  pinned = nullptr;
  if (stream) cudaStreamDestroy(stream);
  stream = nullptr;
  cudaGetLastError();
}

}  // namespace

// --- construction -----------------------------------------------------------------------

CudaOps::CudaOps(int device) : device_(device) {
  std::snprintf(name_, sizeof(name_), "cuda:%d", device);
  try {
    MPT_CUDA_CHECK(cudaSetDevice(device));
    // Fails early, naming the GPU, when this build holds no kernel image it can run.
    cudaFuncAttributes attributes;
    const cudaError_t loadable = cudaFuncGetAttributes(&attributes, fill_kernel);
    if (loadable != cudaSuccess) {
      cudaGetLastError();
      cudaDeviceProp prop;
      MPT_CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
      fail(Status::kDevice, prop.name, " (sm_", prop.major, prop.minor, ") cannot run this build's kernels: ",
           cudaGetErrorString(loadable));
    }
    MPT_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
    alloc_ = std::make_unique<CachingAllocator>(device);
    check_cublas(cublasLtCreate(&lt_), "cublasLtCreate");
    lt_workspace_bytes_ = kLtWorkspaceBytes;
    lt_workspace_ = alloc_->allocate(lt_workspace_bytes_);
    CachingAllocator* blocks = alloc_.get();
    // Called from graph destructors too, so it never throws (every block it gets came from
    // this allocator, which could only refuse a pointer it never gave out).
    scratch_ledger_ = std::make_shared<ScratchLedger>([blocks](void* p) {
      try {
        blocks->release(p);
      } catch (...) {
      }
    });
    dropout_seed_on_device_ = static_cast<uint64_t*>(alloc_->allocate(sizeof(uint64_t)));
    MPT_CUDA_CHECK(cudaMemsetAsync(dropout_seed_on_device_, 0, sizeof(uint64_t), stream_));
    init_attention();
  } catch (const Error& e) {
    fused_attention_.reset();
    if (scratch_ledger_) scratch_ledger_->detach();
    release_resources(device_, stream_, alloc_, lt_, pinned_);
    fail(e.status(), name_, ": ", e.what());
  } catch (...) {
    fused_attention_.reset();
    if (scratch_ledger_) scratch_ledger_->detach();
    release_resources(device_, stream_, alloc_, lt_, pinned_);
    throw;
  }
}

CudaOps::~CudaOps() {
  if (capturing_) {  // a capture left open (an exception on its way out): end it, drop its graph
    cudaGraph_t graph = nullptr;
    if (cudaStreamEndCapture(stream_, &graph) == cudaSuccess && graph) cudaGraphDestroy(graph);
  }
  fused_attention_.reset();  // its cuDNN handle works on the stream
  // The allocator frees the retired scratch blocks with every other block it gave out.
  if (scratch_ledger_) scratch_ledger_->detach();
  release_resources(device_, stream_, alloc_, lt_, pinned_);
}

void CudaOps::synchronize() {
  if (capturing_) refuse_in_capture("synchronize()", "the host cannot wait for work that is only being recorded");
  MPT_CUDA_CHECK(cudaStreamSynchronize(stream_));
}

int64_t CudaOps::peak_bytes() const { return static_cast<int64_t>(alloc_->peak_bytes_in_use()); }

int64_t CudaOps::workspace_bytes() const {
  return static_cast<int64_t>(lt_workspace_bytes_ + scratch_bytes_ + second_scratch_bytes_ + pinned_bytes_ +
                              scratch_ledger_->retired_bytes());
}

namespace {
constexpr const char* kGrowthInCapture =
    "a recorded op may use the memory it would give back (run each op once before the capture)";
}  // namespace

// Grows one of the scratch areas to `bytes`: the new area is taken before the old one is
// given back, so a failure leaves the old one valid. The old one goes to the ledger, which
// keeps it while a live graph recorded in its lifetime may replay its address. Released at
// once, it may still be used by queued kernels: that is safe, as the allocator reuses a
// block only for work queued after it on this one stream (allocator.h).
void* CudaOps::grow_scratch(void*& area, size_t& size, uint64_t& since, size_t bytes, const char* what) {
  if (bytes > size) {
    if (capturing_)
      refuse_in_capture(str("growth of the ", what, " to ", bytes, " bytes (from ", size, ")"), kGrowthInCapture);
    void* grown = alloc_->allocate(bytes);
    scratch_ledger_->retire(area, size, since);
    area = grown;
    size = bytes;
    since = scratch_ledger_->generation();
  }
  return area;
}

void* CudaOps::scratch(size_t bytes) {
  return grow_scratch(scratch_, scratch_bytes_, scratch_since_, bytes, "scratch area");
}

void* CudaOps::second_scratch(size_t bytes) {
  return grow_scratch(second_scratch_, second_scratch_bytes_, second_scratch_since_, bytes, "second scratch area");
}

void* CudaOps::pinned(size_t bytes) {
  if (bytes > pinned_bytes_) {
    if (capturing_)
      refuse_in_capture(str("growth of the pinned buffer to ", bytes, " bytes (from ", pinned_bytes_, ")"),
                        kGrowthInCapture);
    const size_t size = std::max(bytes, size_t{4096});
    void* grown = nullptr;
    MPT_CUDA_CHECK(cudaMallocHost(&grown, size));
    void* old = pinned_;
    pinned_ = grown;
    pinned_bytes_ = size;
    if (old) {
      // A queued copy may still target the old buffer.
      MPT_CUDA_CHECK(cudaStreamSynchronize(stream_));
      MPT_CUDA_CHECK(cudaFreeHost(old));
    }
  }
  return pinned_;
}

// --- memory -------------------------------------------------------------------------------

void* CudaOps::allocate(size_t bytes) {
  if (capturing_) refuse_in_capture(str("allocate(", bytes, " bytes)"));
  void* p = alloc_->allocate(bytes);
  if (p) {
    const cudaError_t err = cudaMemsetAsync(p, 0, bytes, stream_);
    if (err != cudaSuccess) {
      alloc_->release(p);
      MPT_CUDA_CHECK(err);
    }
  }
  return p;
}

void CudaOps::release(void* p) {
  if (p && capturing_) {
    // Refused without a throw (release() runs from destructors, during unwinding too): the
    // capture fails instead, and the block is given back once it has ended.
    if (capture_error_.empty())
      capture_error_ = "release() during graph capture: a recorded op may still use the memory";
    released_in_capture_.push_back(p);
    return;
  }
  alloc_->release(p);
}

void CudaOps::to_device(void* dst, const void* src, size_t bytes) {
  if (capturing_) refuse_in_capture(str("to_device(", bytes, " bytes)"));
  if (bytes == 0) return;
  MPT_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, stream_));
  // From pageable memory the call returns once `src` is staged; from pinned memory the copy
  // is truly asynchronous, so wait: a caller may reuse `src` at once, as on the CPU.
  cudaPointerAttributes attributes;
  MPT_CUDA_CHECK(cudaPointerGetAttributes(&attributes, src));
  if (attributes.type == cudaMemoryTypeHost) MPT_CUDA_CHECK(cudaStreamSynchronize(stream_));
}

void CudaOps::to_host(void* dst, const void* src, size_t bytes) {
  if (capturing_) refuse_in_capture(str("to_host(", bytes, " bytes)"));
  if (bytes == 0) return;
  MPT_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, stream_));
  MPT_CUDA_CHECK(cudaStreamSynchronize(stream_));
}

// --- the dropout seed --------------------------------------------------------------------

void CudaOps::set_dropout_seed(uint64_t seed) {
  if (capturing_)
    refuse_in_capture("set_dropout_seed()",
                      "a replay would write the recorded value again (set the seed before each replay)");
  write_u64_kernel<<<1, 1, 0, stream_>>>(dropout_seed_on_device_, seed);
  MPT_CUDA_LAUNCH(write_u64_kernel);
}

// --- casts and elementwise ------------------------------------------------------------------

void CudaOps::convert(void* dst, DType dst_type, const void* src, DType src_type, int64_t n) {
  MPT_CHECK(is_float(dst_type) && is_float(src_type), Status::kInvalidArgument, "convert: ", dtype_label(src_type),
            " to ", dtype_label(dst_type), " is not a floating conversion");
  if (n == 0) return;
  if (dst_type == src_type) {
    if (dst != src)
      MPT_CUDA_CHECK(cudaMemcpyAsync(dst, src, static_cast<size_t>(n) * dtype_size(dst_type), cudaMemcpyDeviceToDevice,
                                     stream_));
    return;
  }
  const bool vec = aligned(dst, 16) && aligned(src, 16);
  if (dst_type == DType::kBF16) {
    f32_to_bf16_kernel<<<elementwise_blocks(n), kThreads, 0, stream_>>>(static_cast<uint16_t*>(dst),
                                                                        static_cast<const float*>(src), n, vec);
    MPT_CUDA_LAUNCH(f32_to_bf16_kernel);
  } else {
    bf16_to_f32_kernel<<<elementwise_blocks(n), kThreads, 0, stream_>>>(static_cast<float*>(dst),
                                                                        static_cast<const uint16_t*>(src), n, vec);
    MPT_CUDA_LAUNCH(bf16_to_f32_kernel);
  }
}

void CudaOps::cast(Tensor dst, Tensor src) {
  check_float("cast", "dst", dst);
  check_float("cast", "src", src);
  check_numel("cast", "src", src, dst.numel());
  convert(dst.data, dst.dtype, src.data, src.dtype, dst.numel());
}

void CudaOps::fill(Tensor x, float value) {
  check_float("fill", "x", x);
  const int64_t n = x.numel();
  if (n == 0) return;
  if (elementwise_same_dtype(stream_, x, nullptr, nullptr, FillOp{value})) return;
  fill_kernel<<<elementwise_blocks(n), kThreads, 0, stream_>>>(out_view(x), n, value);
  MPT_CUDA_LAUNCH(fill_kernel);
}

// Same dtype: the bytes (any dtype). f32 <-> bf16: converted as cast() does.
void CudaOps::copy(Tensor dst, Tensor src) {
  MPT_CHECK((dst.dtype == src.dtype || (is_float(dst.dtype) && is_float(src.dtype))) && dst.numel() == src.numel(),
            Status::kInvalidArgument, "copy: dst ", describe(dst), " and src ", describe(src),
            " must share dtype (or both be F32/BF16) and numel");
  MPT_CHECK((dst.data && src.data) || dst.numel() == 0, Status::kInvalidArgument, "copy: dst or src has no data");
  if (dst.numel() == 0) return;
  if (dst.dtype != src.dtype) {
    convert(dst.data, dst.dtype, src.data, src.dtype, dst.numel());
    return;
  }
  if (dst.data == src.data) return;
  MPT_CUDA_CHECK(cudaMemcpyAsync(dst.data, src.data, dst.bytes(), cudaMemcpyDeviceToDevice, stream_));
}

void CudaOps::add(Tensor out, Tensor a, Tensor b) {
  check_float("add", "out", out);
  check_float("add", "a", a);
  check_float("add", "b", b);
  check_numel("add", "a", a, out.numel());
  check_numel("add", "b", b, out.numel());
  const int64_t n = out.numel();
  if (n == 0) return;
  if (elementwise_same_dtype(stream_, out, &a, &b, AddOp{})) return;
  add_kernel<<<elementwise_blocks(n), kThreads, 0, stream_>>>(out_view(out), in_view(a), in_view(b), n);
  MPT_CUDA_LAUNCH(add_kernel);
}

void CudaOps::add_inplace(Tensor y, Tensor x) {
  check_float("add_inplace", "y", y);
  check_float("add_inplace", "x", x);
  check_numel("add_inplace", "x", x, y.numel());
  const int64_t n = y.numel();
  if (n == 0) return;
  if (elementwise_same_dtype(stream_, y, &y, &x, AddOp{})) return;
  add_inplace_kernel<<<elementwise_blocks(n), kThreads, 0, stream_>>>(out_view(y), in_view(x), n);
  MPT_CUDA_LAUNCH(add_inplace_kernel);
}

void CudaOps::scale(Tensor x, float s) {
  check_float("scale", "x", x);
  const int64_t n = x.numel();
  if (n == 0) return;
  if (elementwise_same_dtype(stream_, x, &x, nullptr, ScaleOp{s})) return;
  scale_kernel<<<elementwise_blocks(n), kThreads, 0, stream_>>>(out_view(x), n, s);
  MPT_CUDA_LAUNCH(scale_kernel);
}

// --- reductions -----------------------------------------------------------------------------

double CudaOps::sum_squares(Tensor x) {
  if (capturing_) refuse_in_capture("sum_squares()");
  check_float("sum_squares", "x", x);
  return device_sum(*this, SquareTerm{in_view(x)}, x.numel());
}

double CudaOps::dot(Tensor a, Tensor b) {
  if (capturing_) refuse_in_capture("dot()");
  check_float("dot", "a", a);
  check_float("dot", "b", b);
  check_numel("dot", "b", b, a.numel());
  return device_sum(*this, DotTerm{in_view(a), in_view(b)}, a.numel());
}

bool CudaOps::all_finite(Tensor x) {
  if (capturing_) refuse_in_capture("all_finite()");
  check_float("all_finite", "x", x);
  const int64_t n = x.numel();
  if (n == 0) return true;
  auto* host = static_cast<int*>(pinned(sizeof(int)));
  auto* flag = static_cast<int*>(scratch(sizeof(int)));
  MPT_CUDA_CHECK(cudaMemsetAsync(flag, 0, sizeof(int), stream_));
  if (x.dtype == DType::kBF16)
    find_non_finite_kernel<uint16_t><<<elementwise_blocks(n), kThreads, 0, stream_>>>(
        static_cast<const uint16_t*>(x.data), n, uint16_t{0x7f80u}, flag);
  else
    find_non_finite_kernel<uint32_t><<<elementwise_blocks(n), kThreads, 0, stream_>>>(
        static_cast<const uint32_t*>(x.data), n, 0x7f800000u, flag);
  MPT_CUDA_LAUNCH(find_non_finite_kernel);
  MPT_CUDA_CHECK(cudaMemcpyAsync(host, flag, sizeof(int), cudaMemcpyDeviceToHost, stream_));
  MPT_CUDA_CHECK(cudaStreamSynchronize(stream_));
  return *host == 0;
}

}  // namespace mpt::cuda

namespace mpt::backend {

std::unique_ptr<Ops> make_cuda_ops(int device) {
  const auto devices = cuda::visible_devices();
  MPT_CHECK(!devices.empty(), Status::kDevice, "cuda:", device, ": no CUDA GPU is visible to this process");
  const int count = static_cast<int>(devices.size());
  MPT_CHECK(device >= 0 && device < count, Status::kDevice, "cuda:", device, ": no such GPU (", count,
            count == 1 ? " is" : " are", " visible: cuda:0", count > 1 ? str("..cuda:", count - 1) : std::string(),
            ")");
  return std::make_unique<cuda::CudaOps>(device);
}

}  // namespace mpt::backend
