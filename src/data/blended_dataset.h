// Blending several sample sources by weight (megatron/core/datasets/blended_dataset.py and
// helpers.cpp::build_blending_indices). No randomness: output sample s goes to the source
// furthest behind its target share, argmax_i (w_i * max(s, 1) - count_i), ties to the
// lowest i; dataset_sample_index[s] is that source's count before the increment.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "data/gpt_dataset.h"  // IndexBuildInfo
#include "data/sample_source.h"

namespace mpt::data {

struct BlendIndices {
  std::vector<int16_t> dataset_index;
  std::vector<int64_t> dataset_sample_index;
};

// Megatron's normalize(): each weight divided by numpy.sum of them (numpy's pairwise
// summation, so the quotients match to the last bit).
std::vector<double> normalize_weights(const std::vector<double>& weights);

// weights must be normalised (sum 1) and fewer than 32767.
BlendIndices build_blending_indices(const std::vector<double>& weights, int64_t size);

// Megatron's per-dataset sample counts for a blend: ceil(ceil(size * w_i) * (1 + surplus)),
// with surplus 0.005 for the counts each source is built with, 0 for the targets.
constexpr double kBlendSurplus = 0.005;
std::vector<int64_t> blend_sizes(const std::vector<double>& weights, int64_t size, double surplus);

// A source of `size` samples drawn from `sources` by the blending indices. weights are
// positive and are normalised here (normalize_weights), as Megatron's BlendedDataset does. All
// sources must share seq_length. Throws Error(kInvalidConfig) if the indices ask a bounded
// source for more samples than it has (naming the source's describe() line and both counts).
// When cache_dir is non-empty the indices are cached there like the GPT indices
// (HASH-BlendedDataset-SPLIT-{description.txt,dataset_index.npy,dataset_sample_index.npy},
// keyed by the sources' descriptions, the weights and the size); `info`, when given, says
// whether they were loaded and how long that took. Thread-safe for reads.
std::shared_ptr<SampleSource> make_blended_source(std::vector<std::shared_ptr<SampleSource>> sources,
                                                  std::vector<double> weights, int64_t size,
                                                  const std::string& split_name, const std::string& cache_dir,
                                                  IndexBuildInfo* info = nullptr);

}  // namespace mpt::data
