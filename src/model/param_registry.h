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

struct ParamInfo {
  std::string name;                    // decoder.layers.3.self_attention.linear_qkv.weight
  std::vector<int64_t> shape;          // this rank's slice
  std::vector<int64_t> global_shape;   // the whole tensor (equal to shape at one rank)
  std::vector<int64_t> global_offset;  // where this slice starts in the whole tensor
  int64_t offset = 0;                  // element offset in the flat buffer
  int64_t numel = 0;
  Init init = Init::kNormal;
  float init_std = 0;
  bool weight_decay = true;            // false for biases and norm weights
};

class ParamRegistry {
 public:
  // Registers a parameter held whole by this rank; returns its index.
  int add(const std::string& name, std::vector<int64_t> shape, Init init, float init_std, bool weight_decay);
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
