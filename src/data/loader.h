// Batches for one rank, assembled ahead of the step by a background thread.
//
// A global batch starting at consumed_samples c holds samples [c, c + G), G =
// micro_batch * num_microbatches * dp_size. As Megatron's MegatronPretrainingSampler deals
// them out, row b of micro-batch m on data-parallel rank r is sample
//   c + m * (micro_batch * dp_size) + r * micro_batch + b.
// Tensor-parallel peers share a data-parallel rank and so read identical rows. A pipeline
// stage reads only what it uses: tokens on the first stage, labels and loss mask on the
// last, nothing in between (it still advances). With context parallelism the sequence is
// cut into 2 * cp_size chunks and rank k keeps chunks k and 2 * cp_size - 1 - k, tokens,
// labels, mask and positions alike, so causal work is balanced.
//
// The position in the data is consumed_samples alone: seek(c) then next() yields exactly
// the batch an uninterrupted run would have seen at c.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "data/sample_source.h"

namespace mpt::data {

struct LoaderLayout {
  int64_t micro_batch = 1;
  int64_t num_microbatches = 1;
  int64_t dp_rank = 0, dp_size = 1;
  int64_t cp_rank = 0, cp_size = 1;
  bool needs_tokens = true;  // first pipeline stage
  bool needs_labels = true;  // last pipeline stage
};

struct LoaderOptions {
  int64_t vocab_size = 0;      // every token and label must lie in [0, vocab_size)
  bool eod_mask_loss = false;  // zero the loss where the input token is eod_id
  int32_t eod_id = -1;
  int64_t prefetch = 1;        // batches prepared ahead by a background thread; 0: in the caller's thread
};

// This rank's share of one global batch; rows = micro_batch * num_microbatches, row-major,
// micro-batch m is rows [m * micro_batch, (m + 1) * micro_batch).
struct RankBatch {
  int64_t first_sample = 0;        // consumed_samples at the start of this global batch
  int64_t rows = 0, cols = 0;      // cols = seq_length / cp_size
  std::vector<int32_t> tokens;     // [rows, cols]; empty unless needs_tokens
  std::vector<int32_t> labels;     // [rows, cols]; empty unless needs_labels
  std::vector<float> loss_mask;    // [rows, cols]; empty unless needs_labels
  std::vector<int32_t> positions;  // [cols]: the sequence positions of the local columns
};

class BatchLoader {
 public:
  // Throws Error(kInvalidConfig) when the layout does not divide (seq_length by 2 * cp_size
  // when cp_size > 1) or a size is not positive.
  BatchLoader(std::shared_ptr<const SampleSource> source, const LoaderLayout& layout, const LoaderOptions& options);
  ~BatchLoader();  // stops and joins the background thread
  BatchLoader(const BatchLoader&) = delete;
  BatchLoader& operator=(const BatchLoader&) = delete;

  // Samples per global batch (all data-parallel ranks).
  int64_t global_batch() const;

  // Moves to consumed_samples; batches prepared for another position are dropped.
  void seek(int64_t consumed_samples);
  int64_t position() const;  // consumed_samples of the batch next() returns next

  // The batch at position(), then advances by global_batch(). The reference stays valid
  // until the following next() or seek(). An error while reading or checking the data (a
  // token outside the vocabulary, an exhausted source, an I/O error) is rethrown here, for
  // the batch it belongs to, as the Error the source raised.
  const RankBatch& next();

  // Seconds the last next() waited for its batch (0 when it was ready).
  double last_wait_s() const;

  // Fills `out` with the batch at consumed_samples c, in the calling thread (what the
  // background thread runs). Exposed for tests and benchmarks.
  void assemble(int64_t c, RankBatch& out) const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace mpt::data
