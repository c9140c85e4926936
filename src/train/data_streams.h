// The train and validation sample streams a recipe asks for: mock or embedded-corpus
// sources, or Megatron indexed datasets sized for the run (Megatron's sample counts).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "config/recipe.h"
#include "data/sample_source.h"

namespace mpt::train {

struct DataStreams {
  std::shared_ptr<data::SampleSource> train, valid;  // valid is null without validation
  std::vector<std::string> log_lines;                // what was built, for the log
};

// global_batch: samples per step over all data-parallel ranks. Throws mpt::Error naming the
// key when the data cannot be built.
DataStreams make_streams(const config::Recipe& r, int64_t global_batch);

}  // namespace mpt::train
