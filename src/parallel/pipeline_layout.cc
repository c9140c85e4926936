#include "parallel/pipeline_layout.h"

#include "core/error.h"

namespace mpt::parallel {

namespace {
// Layers on stage r.
int64_t stage_layers(const PipelineSplit& s, int64_t r) {
  if (!s.first && !s.last) return s.num_layers / s.stages;
  if (r == 0 && s.first) return *s.first;
  if (r == s.stages - 1 && s.last) return *s.last;
  const int64_t middle_stages = s.stages - (s.first ? 1 : 0) - (s.last ? 1 : 0);
  return (s.num_layers - s.first.value_or(0) - s.last.value_or(0)) / middle_stages;
}
}  // namespace

ChunkLayers chunk_layers(const PipelineSplit& s, int64_t stage, int64_t chunk) {
  MPT_CHECK(s.stages >= 1 && s.chunks >= 1 && s.num_layers >= 1 && stage >= 0 && stage < s.stages && chunk >= 0 &&
                chunk < s.chunks,
            Status::kInvalidConfig, "pipeline placement: stage ", stage, " chunk ", chunk, " is outside ", s.stages,
            " stages x ", s.chunks, " chunks of ", s.num_layers, " layers");
  int64_t total = 0;
  for (int64_t r = 0; r < s.stages; ++r) {
    const int64_t n = stage_layers(s, r);
    MPT_CHECK(n >= 0 && n % s.chunks == 0, Status::kInvalidConfig, "pipeline placement: stage ", r, " would hold ", n,
              " layers, which model.virtual_pipeline_model_parallel_size (", s.chunks, ") must divide");
    total += n;
  }
  MPT_CHECK(total == s.num_layers, Status::kInvalidConfig, "pipeline placement: the stages hold ", total,
            " layers but model.num_layers is ", s.num_layers, " (", s.stages,
            " stages must split the layers evenly, apart from the first and last stage's own counts)");
  ChunkLayers out;
  const int64_t mine = chunk * s.stages + stage;
  for (int64_t v = 0; v < mine; ++v) out.begin += stage_layers(s, v % s.stages) / s.chunks;
  out.end = out.begin + stage_layers(s, stage) / s.chunks;
  out.pre_process = mine == 0;
  out.post_process = mine == s.stages * s.chunks - 1;
  return out;
}

}  // namespace mpt::parallel
