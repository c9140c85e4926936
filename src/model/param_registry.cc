#include "model/param_registry.h"

#include <algorithm>

#include "core/rng.h"

namespace mpt::model {

int ParamRegistry::add(const std::string& name, std::vector<int64_t> shape, Init init, float init_std,
                       bool weight_decay) {
  return add_split(name, std::move(shape), TensorSplit{}, init, init_std, weight_decay);
}

int ParamRegistry::add_split(const std::string& name, std::vector<int64_t> shape, const TensorSplit& split, Init init,
                             float init_std, bool weight_decay) {
  MPT_ASSERT(find(name) < 0);
  MPT_ASSERT(split.size >= 1 && split.rank >= 0 && split.rank < split.size && split.stride >= 1);
  MPT_ASSERT(split.axis < static_cast<int>(shape.size()));
  ParamInfo p;
  p.name = name;
  p.numel = 1;
  for (int64_t d : shape) p.numel *= d;
  p.global_shape = shape;
  p.tp = split;
  if (split.axis >= 0) {
    MPT_ASSERT(shape[static_cast<size_t>(split.axis)] % split.stride == 0);
    p.global_shape[static_cast<size_t>(split.axis)] *= split.size;
  }
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
  return view(range, DType::kF32, range_begin, index);
}

Tensor ParamRegistry::view(void* range, DType dtype, int64_t range_begin, int index) const {
  if (index < 0) return Tensor();
  const ParamInfo& p = params_[index];
  MPT_ASSERT(p.offset >= range_begin);
  Tensor t;
  t.data = static_cast<char*>(range) + static_cast<size_t>(p.offset - range_begin) * dtype_size(dtype);
  t.dtype = dtype;
  t.ndim = static_cast<int>(p.shape.size());
  for (int i = 0; i < t.ndim; ++i) t.shape[i] = p.shape[i];
  return t;
}

void ParamRegistry::pad_to(int64_t multiple) {
  MPT_ASSERT(multiple > 0);
  total_ = (total_ + multiple - 1) / multiple * multiple;
}

void ParamRegistry::initialize(float* base, uint64_t seed) const { initialize_range(base, 0, total_, seed); }

void ParamRegistry::initialize_range(float* out, int64_t begin, int64_t end, uint64_t seed) const {
  MPT_ASSERT(0 <= begin && begin <= end && end <= total_);
  // Pieces of normal draws: (destination, count, key, first global index).
  struct Piece {
    float* dst;
    int64_t n;
    uint64_t key, first;
    float std;
  };
  std::vector<Piece> pieces;
  constexpr int64_t kChunk = 1 << 14;  // pieces are cut this small so threads share the work
  std::fill(out, out + (end - begin), 0.0f);
  for (const auto& p : params_) {
    const int64_t lo = std::max(begin, p.offset), hi = std::min(end, p.offset + p.numel);
    if (lo >= hi) continue;
    if (p.init == Init::kOnes) std::fill(out + (lo - begin), out + (hi - begin), 1.0f);
    if (p.init != Init::kNormal) continue;
    const uint64_t key = mix_key(seed, hash_name(p.name));
    // Element e of the local slice draws the value of its index in the whole tensor.
    for_each_split_run(p.shape, p.global_shape, p.tp, p.tp.rank, [&](int64_t local, int64_t global, int64_t n) {
      const int64_t a = std::max(lo, p.offset + local), b = std::min(hi, p.offset + local + n);
      for (int64_t x = a; x < b; x += kChunk)
        pieces.push_back(Piece{out + (x - begin), std::min(kChunk, b - x), key,
                               static_cast<uint64_t>(global + (x - p.offset - local)), p.init_std});
    });
  }
#pragma omp parallel for schedule(static)
  for (size_t i = 0; i < pieces.size(); ++i)
    fill_normal(pieces[i].dst, pieces[i].n, pieces[i].key, pieces[i].first, 0.0f, pieces[i].std);
}


}  // namespace mpt::model
