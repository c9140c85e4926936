// A batch supplied by the host (Engine::train_step with a HostBatch, the C API's
// mpt_train_step) checked and put into the loader's layout for this rank.
#pragma once

#include <cstdint>
#include <functional>

#include "data/loader.h"
#include "train/engine.h"

namespace mpt::train {

// What a host batch must look like, and how this rank takes its part of it.
struct HostBatchShape {
  int64_t seq = 0;           // whole sequence length
  int64_t local_seq = 0;     // positions this rank keeps (seq / context-parallel size)
  int64_t rows = 0;          // micro_batch * micro-batches
  int64_t micro_batch = 0, microbatches = 0;  // for the error message
  int64_t vocab = 0;
  bool eod_mask_loss = false;
  int32_t eod_id = -1;
};

// Checks hb (tokens, shape, ids inside the vocabulary, finite non-negative loss mask) and
// copies this rank's columns into `out`: local column j is whole-sequence position
// position(j), with end-of-document masking as the loader does. Throws
// Error(kInvalidArgument) naming the first bad element; `out` is then left unspecified.
void stage_host_batch(const HostBatch& hb, const HostBatchShape& shape,
                      const std::function<int64_t(int64_t)>& position, data::RankBatch& out);

}  // namespace mpt::train
