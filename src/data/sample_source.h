// Where training samples come from. A SampleSource maps a sample index (0, 1, 2, ... for
// ever) to seq_length + 1 tokens: inputs are tokens [0, seq), labels tokens [1, seq + 1).
// The engine pulls global batch i as samples [i * global_batch, (i + 1) * global_batch), so
// the sample stream alone fixes what every rank sees, and a resumed run continues it.
// Mock data, the embedded corpus, Megatron GPT datasets and blends of them are each a source.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "data/byte_tokenizer.h"  // the corpus source emits byte tokens ending documents with kByteEod
#include "data/corpus.h"
#include "data/split.h"

namespace mpt::data {

class SampleSource {
 public:
  virtual ~SampleSource() = default;
  virtual int64_t seq_length() const = 0;
  // One line for the log: what the data is, its size and its epoch.
  virtual std::string describe() const = 0;
  // Number of samples, or -1 when the source is unbounded (mock data, the corpus).
  // A bounded source throws Error(kInvalidArgument) for an index >= size(), saying that
  // the data built for this run is exhausted.
  virtual int64_t size() const { return -1; }
  // Writes sample `index` (0 <= index, and < size() when bounded) into
  // out[0, seq_length + 1). Depends only on
  // the index and the source's settings, never on earlier calls; safe from several threads.
  // A negative index throws Error(kInvalidArgument).
  virtual void sample(int64_t index, int32_t* out) const = 0;
};

// Token j of sample i is uniform in [0, vocab_size), drawn from the counter-based
// generator keyed by (seed, split) at counter (i, j): independent of call order.
// Throws Error(kInvalidConfig) unless vocab_size > 0 and seq_length > 0.
std::unique_ptr<SampleSource> make_mock_source(int64_t vocab_size, int64_t seq_length, uint64_t seed,
                                               Split split);

// The embedded corpus (data/corpus.h), byte-tokenized, each document followed by kByteEod.
// The token stream is cut into train/valid/test by contiguous TOKEN ranges using
// split_weights (dataset.split; empty means kDefaultSplit) and split_boundaries(): a
// corpus of a dozen documents is too small to split by documents. Sample windows are
// consecutive and non-overlapping: window k is tokens [k * seq, k * seq + seq + 1) of the
// split, crossing document boundaries as Megatron's GPT dataset does. Each epoch visits every
// window once in the order shuffled_order(windows, key(seed, epoch)); epochs repeat for ever.
// Throws Error(kInvalidConfig) if the split has fewer than seq_length + 1 tokens or the
// weights do not parse.
std::unique_ptr<SampleSource> make_corpus_source(int64_t seq_length, uint64_t seed, Split split,
                                                 const std::string& split_weights);

// Fills out[rows][seq_length + 1] row-major with samples first_index .. first_index + rows - 1.
void fill_batch(const SampleSource& src, int64_t first_index, int64_t rows, int32_t* out);

}  // namespace mpt::data
