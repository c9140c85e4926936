// Which layers each pipeline stage and model chunk holds (Megatron-Core's placement).
// Virtual stage v = chunk * P + stage runs the v-th block of layers, in order: with V chunks
// per stage the chunks are round-robin (16 layers, P = 4, V = 2: stage 0 holds layers 0-1
// and 8-9). Every stage holds num_layers / P layers, or, with Megatron's uneven knobs, the
// first stage `first` and the last `last` and the middle stages split the rest evenly; each
// stage's layers are split evenly over its chunks. The embedding lives on the first virtual
// stage, the final norm, output layer and loss on the last.
#pragma once

#include <cstdint>
#include <optional>

namespace mpt::parallel {

struct PipelineSplit {
  int64_t num_layers = 1;
  int64_t stages = 1;                 // P
  int64_t chunks = 1;                 // V
  std::optional<int64_t> first, last; // num_layers_in_first/last_pipeline_stage
};

struct ChunkLayers {
  int64_t begin = 0, end = 0;  // global layer indices [begin, end)
  bool pre_process = false;    // holds the embedding (first virtual stage)
  bool post_process = false;   // holds the final norm, output layer and loss (last virtual stage)
  int64_t count() const { return end - begin; }
};

// Throws Error(kInvalidConfig) naming the rule when the split is impossible (finalize()
// checks the same rules at recipe load).
ChunkLayers chunk_layers(const PipelineSplit& split, int64_t stage, int64_t chunk);

}  // namespace mpt::parallel
