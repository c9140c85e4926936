#include "data/blended_dataset.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <limits>
#include <nlohmann/json.hpp>
#include <utility>

#include "core/error.h"
#include "data/index_cache.h"

namespace mpt::data {

namespace {

constexpr size_t kMaxSources = 32767;  // dataset ids are int16

// numpy's pairwise summation of a contiguous float64 array (what numpy.sum does), so that
// normalised weights equal Megatron's bit for bit.
double numpy_sum(const double* a, size_t n) {
  if (n < 8) {
    double res = 0.0;
    for (size_t i = 0; i < n; ++i) res += a[i];
    return res;
  }
  if (n <= 128) {
    double r[8];
    for (size_t k = 0; k < 8; ++k) r[k] = a[k];
    size_t i = 8;
    for (; i < n - n % 8; i += 8)
      for (size_t k = 0; k < 8; ++k) r[k] += a[i + k];
    double res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
    for (; i < n; ++i) res += a[i];
    return res;
  }
  size_t half = n / 2;
  half -= half % 8;
  return numpy_sum(a, half) + numpy_sum(a + half, n - half);
}

}  // namespace

std::vector<double> normalize_weights(const std::vector<double>& weights) {
  const double sum = numpy_sum(weights.data(), weights.size());
  std::vector<double> out(weights.size());
  for (size_t i = 0; i < weights.size(); ++i) out[i] = weights[i] / sum;
  return out;
}

BlendIndices build_blending_indices(const std::vector<double>& weights, int64_t size) {
  MPT_CHECK(!weights.empty() && weights.size() < kMaxSources, Status::kInvalidArgument, "blend: ", weights.size(),
            " weights; between 1 and ", kMaxSources - 1, " are supported");
  MPT_CHECK(size >= 0, Status::kInvalidArgument, "blend: negative size ", size);
  const size_t n = weights.size();
  BlendIndices out;
  out.dataset_index.resize(static_cast<size_t>(size));
  out.dataset_sample_index.resize(static_cast<size_t>(size));
  std::vector<int64_t> counts(n, 0);
  for (int64_t s = 0; s < size; ++s) {
    // The source furthest below its share so far; the first on ties.
    const double target = std::max(static_cast<double>(s), 1.0);
    size_t best = 0;
    double best_error = weights[0] * target - static_cast<double>(counts[0]);
    for (size_t i = 1; i < n; ++i) {
      const double error = weights[i] * target - static_cast<double>(counts[i]);
      if (error > best_error) {
        best_error = error;
        best = i;
      }
    }
    out.dataset_index[static_cast<size_t>(s)] = static_cast<int16_t>(best);
    out.dataset_sample_index[static_cast<size_t>(s)] = counts[best]++;
  }
  return out;
}

std::vector<int64_t> blend_sizes(const std::vector<double>& weights, int64_t size, double surplus) {
  std::vector<int64_t> out;
  out.reserve(weights.size());
  for (double w : weights) {
    const double target = std::ceil(static_cast<double>(size) * w);
    out.push_back(static_cast<int64_t>(std::ceil(target * (1.0 + surplus))));
  }
  return out;
}

namespace {

class BlendedSource final : public SampleSource {
 public:
  BlendedSource(std::vector<std::shared_ptr<SampleSource>> sources, BlendIndices indices, std::string describe)
      : sources_(std::move(sources)), idx_(std::move(indices)), describe_(std::move(describe)) {}

  int64_t seq_length() const override { return sources_[0]->seq_length(); }
  std::string describe() const override { return describe_; }
  int64_t size() const override { return static_cast<int64_t>(idx_.dataset_index.size()); }

  void sample(int64_t index, int32_t* out) const override {
    MPT_CHECK(index >= 0, Status::kInvalidArgument, "blend: negative sample index ", index);
    MPT_CHECK(index < size(), Status::kInvalidArgument, "blend: sample ", index,
              " requested, but the data built for this run is exhausted: it holds ", size(),
              " samples (build it for more samples)");
    const size_t i = static_cast<size_t>(index);
    sources_[static_cast<size_t>(idx_.dataset_index[i])]->sample(idx_.dataset_sample_index[i], out);
  }

 private:
  std::vector<std::shared_ptr<SampleSource>> sources_;
  BlendIndices idx_;
  std::string describe_;
};

// A loaded entry must be what build_blending_indices could have produced: source ids in
// range, and each source's sample numbers counting 0, 1, 2, ... in order.
void check_loaded(const BlendIndices& idx, size_t num_sources, const std::string& base) {
  std::vector<int64_t> counts(num_sources, 0);
  for (size_t s = 0; s < idx.dataset_index.size(); ++s) {
    const int16_t d = idx.dataset_index[s];
    MPT_CHECK(d >= 0 && static_cast<size_t>(d) < num_sources, Status::kCorruptData, base,
              "-dataset_index.npy: element ", s, " = ", d, " is not one of the ", num_sources, " sources");
    MPT_CHECK(idx.dataset_sample_index[s] == counts[static_cast<size_t>(d)], Status::kCorruptData, base,
              "-dataset_sample_index.npy: element ", s, " = ", idx.dataset_sample_index[s], ", expected ",
              counts[static_cast<size_t>(d)]);
    ++counts[static_cast<size_t>(d)];
  }
}

}  // namespace

std::shared_ptr<SampleSource> make_blended_source(std::vector<std::shared_ptr<SampleSource>> sources,
                                                  std::vector<double> weights, int64_t size,
                                                  const std::string& split_name, const std::string& cache_dir,
                                                  IndexBuildInfo* info) {
  const auto t0 = std::chrono::steady_clock::now();
  MPT_CHECK(!sources.empty() && sources.size() < kMaxSources, Status::kInvalidConfig, split_name, " blend: ",
            sources.size(), " sources; between 1 and ", kMaxSources - 1, " are supported");
  MPT_CHECK(weights.size() == sources.size(), Status::kInvalidConfig, split_name, " blend: ", weights.size(),
            " weights for ", sources.size(), " sources");
  MPT_CHECK(size >= 0, Status::kInvalidConfig, split_name, " blend: negative size ", size);
  for (size_t i = 0; i < sources.size(); ++i) {
    MPT_CHECK(sources[i] != nullptr, Status::kInvalidArgument, split_name, " blend: source ", i, " is null");
    MPT_CHECK(std::isfinite(weights[i]) && weights[i] > 0, Status::kInvalidConfig, split_name, " blend: weight ",
              weights[i], " of ", sources[i]->describe(), " is not a positive number");
    MPT_CHECK(sources[i]->seq_length() == sources[0]->seq_length(), Status::kInvalidConfig, split_name,
              " blend: ", sources[i]->describe(), " has seq_length ", sources[i]->seq_length(), ", but ",
              sources[0]->describe(), " has ", sources[0]->seq_length());
  }
  const std::vector<double> w = normalize_weights(weights);

  nlohmann::ordered_json j;
  j["class"] = "BlendedDataset";
  j["format"] = 1;
  j["datasets"] = nlohmann::ordered_json::array();
  for (const auto& s : sources) j["datasets"].push_back(s->describe());
  j["split"] = split_name;
  j["weights"] = w;
  j["size"] = size;
  IndexBuildInfo result;
  result.description = j.dump(4);
  const std::string hash = hash_hex(result.description);

  BlendIndices idx;
  auto build = [&] { idx = build_blending_indices(w, size); };
  if (cache_dir.empty()) {
    build();
  } else {
    result.cache_base = (std::filesystem::path(cache_dir) / str(hash, "-BlendedDataset-", split_name)).string();
    const std::string index_path = result.cache_base + "-dataset_index.npy";
    const std::string sample_path = result.cache_base + "-dataset_sample_index.npy";
    auto load = [&] {
      idx.dataset_index = read_npy<int16_t>(index_path, {NpyDType::kInt16}, size, 0);
      idx.dataset_sample_index = read_npy<int64_t>(sample_path, {NpyDType::kInt64}, size, 0);
      check_loaded(idx, sources.size(), result.cache_base);
    };
    auto save = [&] {
      write_npy(index_path, NpyDType::kInt16, size, 0, idx.dataset_index.data());
      write_npy(sample_path, NpyDType::kInt64, size, 0, idx.dataset_sample_index.data());
    };
    result.cache_hit = load_or_build(cache_dir, result.cache_base, result.description, load, build, save,
                                     &result.warning);
  }

  // Megatron's oversampling check: no source may be asked for more than it holds.
  std::vector<int64_t> counts(sources.size(), 0);
  for (int16_t d : idx.dataset_index) ++counts[static_cast<size_t>(d)];
  for (size_t i = 0; i < sources.size(); ++i) {
    const int64_t have = sources[i]->size();
    MPT_CHECK(have < 0 || counts[i] <= have, Status::kInvalidConfig, "the ", split_name, " blend asks ",
              sources[i]->describe(), " for ", counts[i], " samples, but it holds ", have);
  }

  std::string weights_text;
  for (size_t i = 0; i < w.size(); ++i) weights_text += str(i ? ", " : "", w[i]);
  std::string describe = str("blend of ", sources.size(), sources.size() == 1 ? " source" : " sources", ", ",
                             split_name, " split: ", size, " samples, weights ", weights_text, ", index ",
                             hash.substr(0, 16));
  result.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (info) *info = std::move(result);
  return std::make_shared<BlendedSource>(std::move(sources), std::move(idx), std::move(describe));
}

}  // namespace mpt::data
