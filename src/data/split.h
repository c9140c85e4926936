// Train/valid/test splits from a Megatron-style weight string ("969,30,1"). The same
// boundary rule serves token ranges (embedded corpus) and document ranges (indexed data).
#pragma once

#include <array>
#include <cstdint>
#include <string>

namespace mpt::data {

enum class Split { kTrain = 0, kValid = 1, kTest = 2 };

// "train", "valid", "test".
const char* split_name(Split split);

// Used when dataset.split is unset: for the embedded corpus, and for indexed datasets
// (Megatron-LM's default).
constexpr const char* kDefaultSplit = "90,10,0";
constexpr const char* kDefaultIndexedSplit = "969,30,1";

// Parses up to three non-negative weights separated by ',' or '/' (missing ones are 0) and
// normalises them to sum 1. Throws Error(kInvalidConfig) naming dataset.split and the value.
std::array<double, 3> parse_split_weights(const std::string& weights);

// Boundaries b[0]=0 <= b[1] <= b[2] <= b[3]=size: split s covers [b[s], b[s+1]). Each
// boundary is the running sum of round(weight * size), shifted so the last equals size,
// as Megatron's get_split_indices does.
std::array<int64_t, 4> split_boundaries(const std::array<double, 3>& weights, int64_t size);

}  // namespace mpt::data
