// Shared by the GPU op tests: a CUDA backend and the CPU oracle side by side, tensors that
// live in both (random host values uploaded to the device), and comparisons of a device
// result with the CPU op's. Every test skips itself when no GPU is visible.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "backend/ops.h"
#include "core/bf16.h"
#include "core/error.h"
#include "core/rng.h"
#include "cuda/device.h"

namespace mpt::device_testing {

// Skips the test on a machine without a GPU. When the GPUs cannot be counted for another
// reason (a driver older than the runtime, a driver mismatch) the test fails, naming the CUDA
// error: a broken driver must not pass as a run where every test skipped.
#define MPT_SKIP_WITHOUT_GPU()                                                     \
  do {                                                                             \
    std::string gpu_problem_;                                                      \
    if (!::mpt::device_testing::gpu_visible(&gpu_problem_)) {                      \
      if (gpu_problem_.empty()) GTEST_SKIP() << "no CUDA GPU visible";             \
      FAIL() << "the CUDA GPUs cannot be counted: " << gpu_problem_;               \
    }                                                                              \
  } while (0)

// Whether a GPU is visible; false with *problem set when counting them failed.
inline bool gpu_visible(std::string* problem) {
  try {
    return !cuda::visible_devices().empty();
  } catch (const Error& e) {
    *problem = e.what();
    return false;
  }
}

// A tensor held twice: host values (the CPU op's input/output) and a device copy.
struct Pair {
  std::vector<uint8_t> host;  // the CPU tensor's storage
  void* dev = nullptr;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  backend::Ops* gpu = nullptr;

  Pair() = default;
  Pair(const Pair&) = delete;
  Pair& operator=(const Pair&) = delete;
  ~Pair() {
    if (gpu) gpu->release(dev);
  }
  int64_t numel() const {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    return n;
  }
  Tensor make(void* p) const {
    Tensor t;
    t.data = p;
    t.dtype = dtype;
    t.ndim = static_cast<int>(shape.size());
    for (size_t i = 0; i < shape.size(); ++i) t.shape[i] = shape[i];
    return t;
  }
  Tensor cpu() { return make(host.data()); }
  Tensor gpu_t() const { return make(dev); }
  float* f() { return reinterpret_cast<float*>(host.data()); }
  int32_t* i() { return reinterpret_cast<int32_t*>(host.data()); }
  void upload() { gpu->to_device(dev, host.data(), host.size()); }
  // The device values, read back.
  std::vector<float> download_f32() const {
    std::vector<float> out(static_cast<size_t>(numel()));
    gpu->to_host(out.data(), dev, out.size() * sizeof(float));
    return out;
  }
  std::vector<int32_t> download_i32() const {
    std::vector<int32_t> out(static_cast<size_t>(numel()));
    gpu->to_host(out.data(), dev, out.size() * sizeof(int32_t));
    return out;
  }
};

// The backends under test: the CUDA one on GPU 0 and the CPU oracle.
struct Backends {
  std::unique_ptr<backend::Ops> gpu = backend::make_cuda_ops(0);
  std::unique_ptr<backend::Ops> cpu = backend::make_cpu_ops(0);

  // A tensor of `shape` filled with normal(0, std) values from `seed` (f32), or zeros.
  std::unique_ptr<Pair> f32(std::vector<int64_t> shape, uint64_t seed = 0, float std = 1.0f) {
    auto p = std::make_unique<Pair>();
    p->gpu = gpu.get();
    p->dtype = DType::kF32;
    p->shape = std::move(shape);
    p->host.assign(static_cast<size_t>(p->numel()) * 4, 0);
    if (seed) fill_normal(p->f(), p->numel(), seed, 0, 0.0f, std);
    p->dev = gpu->allocate(p->host.size());
    p->upload();
    return p;
  }
  // An int32 tensor with the given values.
  std::unique_ptr<Pair> i32(std::vector<int64_t> shape, const std::vector<int32_t>& values) {
    auto p = std::make_unique<Pair>();
    p->gpu = gpu.get();
    p->dtype = DType::kI32;
    p->shape = std::move(shape);
    EXPECT_EQ(static_cast<int64_t>(values.size()), p->numel());
    p->host.assign(values.size() * 4, 0);
    std::copy(values.begin(), values.end(), p->i());
    p->dev = gpu->allocate(p->host.size());
    p->upload();
    return p;
  }
};

// max |got - want| / max(max |want|, floor): the error relative to the tensor's scale.
inline double scaled_error(const std::vector<float>& got, const float* want, size_t n, double floor = 1e-6) {
  double err = 0, scale = floor;
  for (size_t i = 0; i < n; ++i) {
    scale = std::max(scale, std::fabs(static_cast<double>(want[i])));
    err = std::max(err, std::fabs(static_cast<double>(got[i]) - static_cast<double>(want[i])));
  }
  return err / scale;
}

// The device tensor equals the CPU result in `p.host` within `tol` (scaled error).
inline void expect_close(const Pair& p, double tol, const std::string& what) {
  const std::vector<float> got = p.download_f32();
  const double e = scaled_error(got, reinterpret_cast<const float*>(p.host.data()), got.size());
  EXPECT_LE(e, tol) << what << ": the GPU result differs from the CPU's by " << e << " (scaled)";
}

// Runs f, which must throw Error with `status` and a message holding every one of `parts`.
inline void expect_error(const std::function<void()>& f, Status status, const std::vector<std::string>& parts,
                         const std::string& what = "") {
  try {
    f();
    ADD_FAILURE() << what << ": no error";
  } catch (const Error& e) {
    EXPECT_EQ(e.status(), status) << what << ": " << e.what();
    for (const std::string& part : parts)
      EXPECT_NE(std::string(e.what()).find(part), std::string::npos)
          << what << ": '" << e.what() << "' lacks '" << part << "'";
  }
}

// --- tensors in either dtype ------------------------------------------------------------------

// Host storage of p from fp32 values (rounded to nearest even for bf16); not uploaded.
inline void set_host(Pair& p, const std::vector<float>& v) {
  if (p.dtype == DType::kBF16) {
    auto* h = reinterpret_cast<uint16_t*>(p.host.data());
    for (size_t i = 0; i < v.size(); ++i) h[i] = f32_to_bf16(v[i]);
  } else {
    std::memcpy(p.host.data(), v.data(), v.size() * sizeof(float));
  }
}

// n values of dtype dt (f32 or bf16, widened exactly) at bytes.
inline std::vector<float> widen(const uint8_t* bytes, DType dt, int64_t n) {
  std::vector<float> v(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    if (dt == DType::kBF16) {
      uint16_t h;
      std::memcpy(&h, bytes + 2 * i, 2);
      v[static_cast<size_t>(i)] = bf16_to_f32(h);
    } else {
      std::memcpy(&v[static_cast<size_t>(i)], bytes + 4 * i, 4);
    }
  }
  return v;
}

inline std::vector<float> host_values(const Pair& p) { return widen(p.host.data(), p.dtype, p.numel()); }

inline std::vector<uint8_t> device_bytes(const Pair& p) {
  std::vector<uint8_t> out(p.host.size());
  if (!out.empty()) p.gpu->to_host(out.data(), p.dev, out.size());
  return out;
}

inline std::vector<float> device_values(const Pair& p) { return widen(device_bytes(p).data(), p.dtype, p.numel()); }

// A tensor of `shape` in dtype dt on both backends: normal(0, std) values from `seed`
// (rounded for bf16), or zeros.
inline std::unique_ptr<Pair> make_tensor(Backends& b, DType dt, std::vector<int64_t> shape, uint64_t seed = 0,
                                         float std = 1.0f) {
  auto p = std::make_unique<Pair>();
  p->gpu = b.gpu.get();
  p->dtype = dt;
  p->shape = std::move(shape);
  p->host.assign(static_cast<size_t>(p->numel()) * dtype_size(dt), 0);
  std::vector<float> v(static_cast<size_t>(p->numel()), 0.0f);
  if (seed && !v.empty()) fill_normal(v.data(), p->numel(), seed, 0, 0.0f, std);
  set_host(*p, v);
  p->dev = b.gpu->allocate(p->host.size());
  if (!v.empty()) p->upload();
  return p;
}

// An attention call's dims with the usual 1/sqrt(head_dim) scale, and a dropout key and head
// offset for the calls that draw masks.
inline backend::AttentionDims attention_dims(int64_t sq, int64_t skv, int64_t batch, int64_t heads, int64_t groups,
                                             int64_t dim, bool causal, float dropout_p = 0) {
  backend::AttentionDims d;
  d.seq_q = sq;
  d.seq_kv = skv;
  d.batch = batch;
  d.heads = heads;
  d.groups = groups;
  d.head_dim = dim;
  d.softmax_scale = 1.0f / std::sqrt(static_cast<float>(dim));
  d.causal = causal;
  d.dropout_p = dropout_p;
  d.dropout_key = 0x5eed1234;
  d.head_offset = 3;
  return d;
}

// One attention problem held on both backends: inputs, forward outputs, gradients. The
// outputs start as random values on both sides: the ops must overwrite every element.
struct AttentionTensors {
  backend::AttentionDims d;
  std::unique_ptr<Pair> q, k, v, out, lse, dout, dq, dk, dv;

  AttentionTensors(Backends& b, const backend::AttentionDims& dims, uint64_t seed) : d(dims) {
    const int64_t tq = d.seq_q * d.batch, tk = d.seq_kv * d.batch;
    const int64_t hd = d.heads * d.head_dim, gd = d.groups * d.head_dim;
    q = b.f32({tq, hd}, seed);
    k = b.f32({tk, gd}, seed + 1);
    v = b.f32({tk, gd}, seed + 2);
    dout = b.f32({tq, hd}, seed + 3);
    out = b.f32({tq, hd}, seed + 4);
    lse = b.f32({tq, d.heads}, seed + 5);
    dq = b.f32({tq, hd}, seed + 6);
    dk = b.f32({tk, gd}, seed + 7);
    dv = b.f32({tk, gd}, seed + 8);
  }
};

}  // namespace mpt::device_testing
