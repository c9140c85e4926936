#include "model/param_registry.h"

#include <algorithm>

#include "core/rng.h"

namespace mpt::model {

int ParamRegistry::add(const std::string& name, std::vector<int64_t> shape, Init init, float init_std,
                       bool weight_decay) {
  MPT_ASSERT(find(name) < 0);
  ParamInfo p;
  p.name = name;
  p.numel = 1;
  for (int64_t d : shape) p.numel *= d;
  p.global_shape = shape;
  p.global_offset.assign(shape.size(), 0);
  p.shape = std::move(shape);
  p.offset = total_;
  p.init = init;
  p.init_std = init_std;
  p.weight_decay = weight_decay;
  total_ += (p.numel + kAlign - 1) / kAlign * kAlign;
  params_.push_back(std::move(p));
  return static_cast<int>(params_.size()) - 1;
}

int64_t ParamRegistry::num_parameters() const {
  int64_t n = 0;
  for (const auto& p : params_) n += p.numel;
  return n;
}

int ParamRegistry::find(const std::string& name) const {
  for (size_t i = 0; i < params_.size(); ++i)
    if (params_[i].name == name) return static_cast<int>(i);
  return -1;
}

Tensor ParamRegistry::view(float* base, int index) const { return view(base, 0, index); }

Tensor ParamRegistry::view(float* range, int64_t range_begin, int index) const {
  if (index < 0) return Tensor();
  const ParamInfo& p = params_[index];
  MPT_ASSERT(p.offset >= range_begin);
  Tensor t;
  t.data = range + (p.offset - range_begin);
  t.dtype = DType::kF32;
  t.ndim = static_cast<int>(p.shape.size());
  for (int i = 0; i < t.ndim; ++i) t.shape[i] = p.shape[i];
  return t;
}

void ParamRegistry::pad_to(int64_t multiple) {
  MPT_ASSERT(multiple > 0);
  total_ = (total_ + multiple - 1) / multiple * multiple;
}

void ParamRegistry::initialize(float* base, uint64_t seed) const {
  for (const auto& p : params_) {
    float* dst = base + p.offset;
    switch (p.init) {
      case Init::kZeros: std::fill(dst, dst + p.numel, 0.0f); break;
      case Init::kOnes: std::fill(dst, dst + p.numel, 1.0f); break;
      case Init::kNormal: {
        uint64_t key = mix_key(seed, hash_name(p.name));
        // Row-major walk of the local slice, indexing the global tensor.
        const int nd = static_cast<int>(p.shape.size());
        int64_t inner = p.shape[nd - 1];
        int64_t rows = p.numel / inner;
#pragma omp parallel for schedule(static)
        for (int64_t r = 0; r < rows; ++r) {
          int64_t rem = r, global = 0, stride = p.global_shape[nd - 1];
          global = p.global_offset[nd - 1];
          for (int d = nd - 2; d >= 0; --d) {
            int64_t idx = rem % p.shape[d];
            rem /= p.shape[d];
            global += (idx + p.global_offset[d]) * stride;
            stride *= p.global_shape[d];
          }
          fill_normal(dst + r * inner, inner, key, static_cast<uint64_t>(global), 0.0f, p.init_std);
        }
        break;
      }
    }
  }
}

void ParamRegistry::initialize_range(float* out, int64_t begin, int64_t end, uint64_t seed) const {
  MPT_ASSERT(0 <= begin && begin <= end && end <= total_);
  std::fill(out, out + (end - begin), 0.0f);
  for (const auto& p : params_) {
    const int64_t lo = std::max(begin, p.offset), hi = std::min(end, p.offset + p.numel);
    if (lo >= hi) continue;
    float* dst = out + (lo - begin);
    if (p.init == Init::kOnes) std::fill(dst, dst + (hi - lo), 1.0f);
    if (p.init != Init::kNormal) continue;
    const uint64_t key = mix_key(seed, hash_name(p.name));
    const int nd = static_cast<int>(p.shape.size());
    const int64_t inner = p.shape[nd - 1];
    // Element e of the local slice is (row e / inner, column e % inner); rows map to the
    // global tensor as in initialize().
    for (int64_t e = lo - p.offset; e < hi - p.offset;) {
      const int64_t r = e / inner, c = e % inner;
      const int64_t n = std::min(inner - c, hi - p.offset - e);
      int64_t rem = r, global = p.global_offset[nd - 1], stride = p.global_shape[nd - 1];
      for (int d = nd - 2; d >= 0; --d) {
        const int64_t idx = rem % p.shape[d];
        rem /= p.shape[d];
        global += (idx + p.global_offset[d]) * stride;
        stride *= p.global_shape[d];
      }
      fill_normal(out + (p.offset + e - begin), n, key, static_cast<uint64_t>(global + c), 0.0f, p.init_std);
      e += n;
    }
  }
}

}  // namespace mpt::model
