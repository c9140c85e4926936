// Megatron's GPTDataset (megatron/core/datasets/gpt_dataset.py and helpers.cpp): samples
// of seq_length + 1 tokens packed across document boundaries from one split of an indexed
// dataset, over as many epochs as the requested samples need, in an order fixed by the seed.
//
// Three indices, built exactly as Megatron builds them (add_extra_token_to_sequence and
// drop_last_partial_sequence both true):
//   document index  the split's sequence ids [begin, end) tiled num_epochs times (int32)
//                   and shuffled with NumpyRandomState(seed); when the final epoch is
//                   separate, the first num_epochs - 1 copies and the last copy are shuffled
//                   separately (first, then last) and concatenated.
//   sample index    [(N + 1), 2] pairs (position in the document index, token offset):
//                   sample j is the tokens from pair j through pair j + 1 inclusive of one
//                   extra token, so consecutive samples overlap by one token.
//                   N = (num_epochs * tokens_per_epoch - 1) / seq_length.
//   shuffle index   a permutation of [0, N) drawn from the same generator after the
//                   document shuffles; with a separate final epoch, [0, n_sans_final) and
//                   [n_sans_final, N) are shuffled separately (first, then second).
// num_epochs is the smallest E with E * tokens_per_epoch >= num_samples * seq_length + 1;
// the final epoch is separate when E > 1 and the samples it must contribute are fewer than
// int(0.80 * samples_per_epoch).
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "data/indexed_dataset.h"
#include "data/sample_source.h"
#include "data/split.h"

namespace mpt::data {

struct GPTIndices {
  std::vector<int32_t> document_index;
  std::vector<int64_t> sample_index;   // 2 * (num_samples() + 1) values, pairs row-major
  std::vector<int64_t> shuffle_index;  // num_samples() values
  int64_t num_epochs = 0;
  int64_t tokens_per_epoch = 0;
  bool separate_final_epoch = false;
  int64_t num_samples() const { return static_cast<int64_t>(shuffle_index.size()); }
};

// Builds the three indices over sequences [begin, end) with the given lengths. num_samples
// unset means one epoch (Megatron's num_samples=None). Throws Error(kInvalidConfig) when the
// range holds fewer than seq_length + 1 tokens, seq_length < 1 or num_samples < 0, and
// Error(kInvalidArgument) when begin > end or end exceeds int32 sequence ids.
GPTIndices build_gpt_indices(const int32_t* sequence_lengths, int64_t begin, int64_t end, int64_t seq_length,
                             std::optional<int64_t> num_samples, uint32_t seed);

struct GPTDatasetOptions {
  Split split = Split::kTrain;
  int64_t begin = 0, end = 0;          // the split's sequence range
  int64_t seq_length = 0;
  std::optional<int64_t> num_samples;  // unset: one epoch
  uint32_t seed = 1234;
  // Where the indices are cached: empty means <directory of the prefix>/cache/GPTDataset_indices
  // (Megatron's default is PREFIX/cache/GPTDataset_indices; its entries are named by a
  // different hash and are not shared); cache = false builds in memory and writes nothing.
  std::string cache_dir;
  bool cache = true;
};

// What building a source did, for the log and for benchmarks.
struct IndexBuildInfo {
  bool cache_hit = false;   // loaded from the cache rather than built
  double seconds = 0;       // building or loading
  std::string cache_base;   // CACHE_DIR/HASH-GPTDataset-SPLIT, empty without a cache
  std::string description;  // the text the hash is taken of
  std::string warning;      // a damaged cache entry that was rebuilt, and why; empty if none
  int64_t num_epochs = 0;   // epochs the GPT indices span (0 for a blend)
};

// A GPT dataset over one split of `dataset`. Indices are loaded from the cache when a
// complete, consistent entry exists (the description file matches, the .npy shapes and
// dtypes match, and the values are in range: document ids inside the split, sample starts
// advancing inside their documents, a shuffle that is a permutation); otherwise built — by one process at a time, under an exclusive lock on
// CACHE_BASE.lock, the others waiting and then loading — and saved atomically (written to
// temporary names and renamed) as CACHE_BASE-{description.txt, document_index.npy,
// sample_index.npy, shuffle_index.npy}, the layout Megatron uses. A damaged cache entry is
// reported to `info` and rebuilt. The cache key hashes everything the indices depend on:
// the dataset's absolute prefix, its sequence and token counts and index size, a hash of
// the range's sequence lengths, the split and its range, num_samples, seq_length and seed.
// The .npy dtypes are Megatron's: document index int32, sample index int32 when its values
// fit (else int64), shuffle index uint32 below 2^32 - 2 samples (else int64).
// size() is the number of samples in the built epochs (>= num_samples); sample(i) is the
// tokens of shuffle_index[i] read from the dataset; reads share no mutable state and are
// thread-safe. Throws Error(kInvalidArgument) when [begin, end) is not inside the dataset,
// the errors of build_gpt_indices, and Error(kIoError) naming the cache directory when it
// cannot be created or written.
std::shared_ptr<SampleSource> make_gpt_source(std::shared_ptr<const IndexedDataset> dataset,
                                              const GPTDatasetOptions& options, IndexBuildInfo* info = nullptr);

}  // namespace mpt::data
