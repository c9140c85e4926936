// From a blend of indexed datasets to one sample source per split, as Megatron's
// BlendedMegatronDatasetBuilder does it.
//
// - The split string ("969,30,1") is normalised; split i covers sequences
//   [round(c_i * n), round(c_{i+1} * n)) of each dataset, where c are the running sums of the
//   normalised weights and round() is Python's (half to even). A zero weight means no split.
// - One prefix without a weight: the split's GPT dataset itself.
// - Weighted prefixes: each dataset's split is built for blend_sizes(weights, n_split,
//   kBlendSurplus) samples, and the split's source is a blend of the sum of
//   blend_sizes(weights, n_split, 0) samples (n_split, or a few more where rounding up
//   adds them, as in Megatron).
// - Several prefixes without weights: each split is built for one epoch and blended by
//   the datasets' sample counts; a split that needs more samples than one epoch of all of
//   them gives Error(kInvalidConfig) (give weights to draw several epochs).
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "data/gpt_dataset.h"
#include "data/sample_source.h"
#include "data/split.h"

namespace mpt::data {

// Megatron's split bookends over n sequences: split i covers [round(c_i * n),
// round(c_{i+1} * n)), c being the running sums 0, w0, w0 + w1, w0 + w1 + w2 of the weights
// normalised by parse_split_weights, and round() Python's (half to even). A split of zero
// weight is nullopt. Example: "969,30,1" over 1000 sequences gives [0, 969), [969, 999),
// [999, 1000). Throws Error(kInvalidConfig) as parse_split_weights does.
std::array<std::optional<std::pair<int64_t, int64_t>>, 3> split_ranges(const std::string& split,
                                                                       int64_t num_sequences);

struct BlendEntry {
  std::string prefix;             // PATH of PATH.bin / PATH.idx
  std::optional<double> weight;   // all entries weighted or none
};

// Megatron's get_blend_from_list: ["30", "a", "70", "b"] (weight, prefix pairs) or
// ["a", "b"] (prefixes only). Throws Error(kInvalidConfig) naming `key` when a weight is not
// a positive number or the list mixes the two forms.
std::vector<BlendEntry> parse_data_path(const std::vector<std::string>& items, const std::string& key);

struct DataSpec {
  std::vector<BlendEntry> blend;
  std::string split = "969,30,1";
  int64_t seq_length = 0;
  uint32_t seed = 1234;
  std::string cache_dir;                    // empty: GPT indices beside each dataset, blends not cached (as Megatron)
  bool cache = true;
  bool mmap_bin = true;
  std::array<int64_t, 3> num_samples{};     // per split; 0: that split is not built
};

struct SplitSources {
  std::array<std::shared_ptr<SampleSource>, 3> by_split;  // null where not built
  std::vector<std::string> log_lines;                     // what was opened, built or loaded, and how long it took
  double index_seconds = 0;                               // total spent building or loading indices
};

// Opens every dataset (once each, shared between splits), checks the blend (an empty
// blend, a missing dataset, a split with num_samples > 0 that is empty in some dataset —
// each an error naming the prefix, the split and the split string) and builds the sources.
SplitSources build_indexed_sources(const DataSpec& spec);

}  // namespace mpt::data
