// Every parameter of a model chunk lives in one flat buffer; its gradient lives at the same
// offset of a second flat buffer. The registry is the single record of what each slice is:
// Megatron name, local and global shape, where TP/EP cut it, how it is initialised and
// whether weight decay applies. DDP buckets, optimizer shards, the gradient norm,
// checkpoints and HF conversion all read this one table.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace mpt::model {

enum class Init : int32_t { kNormal = 0, kZeros = 1, kOnes = 2 };

// How tensor parallelism cuts a parameter (Megatron's partition_dim and partition_stride).
// The axis is cut into `stride` equal blocks and each block into `size` equal parts; rank r
// holds part r of every block, the blocks kept in order. Stride 1 is one contiguous slice;
// stride 2 is a gated linear_fc1, whose [gate; up] rows each rank holds as [gate_r; up_r].
struct TensorSplit {
  int axis = -1;     // -1: replicated on every tensor-parallel rank
  int64_t stride = 1;
  int64_t rank = 0, size = 1;
  bool split() const { return axis >= 0 && size > 1; }
};

struct ParamInfo {
  std::string name;                    // decoder.layers.3.self_attention.linear_qkv.weight
  std::vector<int64_t> shape;          // this rank's slice
  std::vector<int64_t> global_shape;   // the whole tensor (equal to shape at one rank)
  TensorSplit tp;                      // where this slice lies in the whole tensor
  // Replicated over tensor-parallel ranks but computed from each rank's part of the sequence
  // (sequence parallelism): its gradient is a partial sum, all-reduced over TP.
  bool sequence_parallel = false;
  // A copy of a parameter another pipeline stage holds (the tied output layer's embedding
  // on the last stage): its gradient is all-reduced with the original's over the embedding
  // group, and the norm and checkpoints count the original only.
  bool pipeline_copy = false;
  int64_t offset = 0;                  // element offset in the flat buffer
  int64_t numel = 0;
  Init init = Init::kNormal;
  float init_std = 0;
  bool weight_decay = true;            // false for biases and norm weights

  // Counted in the gradient norm on this rank: split parameters everywhere, replicated ones
  // on tensor-parallel rank 0 only, so every element counts once.
  bool counted_in_norm() const { return !pipeline_copy && (tp.split() || tp.rank == 0); }
};

// Calls fn(local_first, global_first, count) for each contiguous run of elements that
// `split` maps from a slice of `shape` (at tensor-parallel rank `rank`) into the row-major
// whole tensor of `global_shape`, in local order.
template <typename Fn>
void for_each_split_run(const std::vector<int64_t>& shape, const std::vector<int64_t>& global_shape,
                        const TensorSplit& split, int64_t rank, Fn&& fn) {
  int64_t numel = 1;
  for (int64_t d : shape) numel *= d;
  if (!split.split()) {
    if (numel > 0) fn(int64_t{0}, int64_t{0}, numel);
    return;
  }
  const size_t a = static_cast<size_t>(split.axis);
  int64_t outer = 1, inner = 1;
  for (size_t d = 0; d < a; ++d) outer *= shape[d];
  for (size_t d = a + 1; d < shape.size(); ++d) inner *= shape[d];
  const int64_t local = shape[a], whole = global_shape[a];
  const int64_t part = local / split.stride, block = whole / split.stride;
  for (int64_t o = 0; o < outer; ++o)
    for (int64_t b = 0; b < split.stride; ++b)
      if (part * inner > 0)
        fn((o * local + b * part) * inner, (o * whole + b * block + rank * part) * inner, part * inner);
}

class ParamRegistry {
 public:
  // Registers a parameter held whole by this rank, outside any tensor-parallel group (a
  // parameter replicated over tensor-parallel ranks says so with add_split, axis -1, so the
  // gradient norm counts it once); returns its index.
  int add(const std::string& name, std::vector<int64_t> shape, Init init, float init_std, bool weight_decay);
  // Registers this rank's slice `shape` of a parameter cut by `split` (the whole tensor is
  // `shape` with the split axis multiplied by split.size).
  int add_split(const std::string& name, std::vector<int64_t> shape, const TensorSplit& split, Init init,
                float init_std, bool weight_decay);
  // Marks parameter i as sequence-parallel (see ParamInfo).
  void set_sequence_parallel(int index, bool on) { params_[static_cast<size_t>(index)].sequence_parallel = on; }
  void set_pipeline_copy(int index) { params_[static_cast<size_t>(index)].pipeline_copy = true; }
  // Offsets are assigned as parameters are added, each aligned to kAlign elements.
  static constexpr int64_t kAlign = 16;

  const std::vector<ParamInfo>& params() const { return params_; }
  const ParamInfo& at(int index) const { return params_[index]; }
  int64_t total_numel() const { return total_; }       // including alignment padding
  int64_t num_parameters() const;                      // sum of numel
  int find(const std::string& name) const;             // -1 when absent

  // A view of parameter `index` inside a flat buffer laid out by this registry; a negative
  // index (an absent optional parameter) gives an empty view.
  Tensor view(float* base, int index) const;
  // The same inside a buffer holding only the flat range that starts at `range_begin`
  // (one unit of the model; see param_storage.h).
  Tensor view(float* range, int64_t range_begin, int index) const;
  // The same in a buffer of `dtype` elements laid out alike (a bf16 compute copy).
  Tensor view(void* range, DType dtype, int64_t range_begin, int index) const;
  // Pads the layout so the next parameter starts at a multiple of `multiple` elements.
  void pad_to(int64_t multiple);

  // Draws every parameter from the layout-invariant generator: element i of a parameter is
  // normal_at(key(seed, name), global flat index of i) so any slicing gives the same values.
  void initialize(float* base, uint64_t seed) const;
  // The same values for flat elements [begin, end) only, written to out[0, end - begin)
  // (alignment padding gets zeros): a rank holding a shard initialises just its shard.
  void initialize_range(float* out, int64_t begin, int64_t end, uint64_t seed) const;

 private:
  std::vector<ParamInfo> params_;
  int64_t total_ = 0;
};

}  // namespace mpt::model
