#include "data/dataset_builder.h"

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <numeric>

#include "core/error.h"
#include "data/blended_dataset.h"
#include "data/indexed_dataset.h"

namespace mpt::data {

namespace {

std::string trim(const std::string& s) {
  const size_t b = s.find_first_not_of(" \t\r\n");
  if (b == std::string::npos) return "";
  return s.substr(b, s.find_last_not_of(" \t\r\n") - b + 1);
}

// Python's float() on the whole text, as get_blend_from_list applies it.
bool parse_number(const std::string& text, double* out) {
  const std::string t = trim(text);
  if (t.empty()) return false;
  char* stop = nullptr;
  const double v = std::strtod(t.c_str(), &stop);
  if (stop != t.c_str() + t.size()) return false;
  *out = v;
  return true;
}

std::string seconds_text(double s) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.3f s", s);
  return buf;
}

}  // namespace

std::array<std::optional<std::pair<int64_t, int64_t>>, 3> split_ranges(const std::string& split,
                                                                       int64_t num_sequences) {
  MPT_CHECK(num_sequences >= 0, Status::kInvalidArgument, "split_ranges: negative sequence count ", num_sequences);
  const std::array<double, 3> w = parse_split_weights(split);
  // Running sums in Python's order; nearbyint under the default rounding mode rounds half
  // to even, as Python's round() does.
  const double bookends[4] = {0.0, w[0], w[0] + w[1], (w[0] + w[1]) + w[2]};
  const double n = static_cast<double>(num_sequences);
  std::array<std::optional<std::pair<int64_t, int64_t>>, 3> out;
  for (int i = 0; i < 3; ++i) {
    if (!(bookends[i + 1] > bookends[i])) continue;
    out[static_cast<size_t>(i)] = std::make_pair(static_cast<int64_t>(std::nearbyint(bookends[i] * n)),
                                                 static_cast<int64_t>(std::nearbyint(bookends[i + 1] * n)));
  }
  return out;
}

std::vector<BlendEntry> parse_data_path(const std::vector<std::string>& items, const std::string& key) {
  std::vector<BlendEntry> out;
  if (items.empty()) return out;
  for (size_t i = 0; i < items.size(); ++i)
    MPT_CHECK(!trim(items[i]).empty(), Status::kInvalidConfig, key, ": item ", i + 1, " is empty");
  // Megatron reads (weight, prefix) pairs when the list has even length and every other
  // item, from the first, is a number; otherwise every item is a prefix.
  bool weighted = items.size() % 2 == 0;
  for (size_t i = 0; weighted && i < items.size(); i += 2) {
    double v;
    weighted = parse_number(items[i], &v);
  }
  if (weighted) {
    for (size_t i = 0; i < items.size(); i += 2) {
      double w = 0;
      parse_number(items[i], &w);
      MPT_CHECK(std::isfinite(w) && w > 0, Status::kInvalidConfig, key, ": weight '", trim(items[i]), "' of '",
                trim(items[i + 1]), "' is not a positive number");
      out.push_back(BlendEntry{trim(items[i + 1]), w});
    }
    return out;
  }
  for (size_t i = 0; i < items.size(); ++i) {
    double v;
    MPT_CHECK(!parse_number(items[i], &v), Status::kInvalidConfig, key, ": item ", i + 1, " ('", trim(items[i]),
              "') is a number in a list that is not (weight, prefix) pairs; give either prefixes only, or a "
              "weight before every prefix, as in [\"30\", \"data/a\", \"70\", \"data/b\"]");
    out.push_back(BlendEntry{trim(items[i]), std::nullopt});
  }
  return out;
}

namespace {

struct OpenDataset {
  std::string prefix;
  std::shared_ptr<const IndexedDataset> dataset;
  std::array<std::optional<std::pair<int64_t, int64_t>>, 3> ranges;
};

class Builder {
 public:
  explicit Builder(const DataSpec& spec) : spec_(spec) {}

  SplitSources build() {
    check_spec();
    open_datasets();
    for (int s = 0; s < 3; ++s) {
      const int64_t n = spec_.num_samples[static_cast<size_t>(s)];
      if (n <= 0) continue;
      check_split_nonempty(static_cast<Split>(s), n);
      out_.by_split[static_cast<size_t>(s)] = build_split(static_cast<Split>(s), n);
    }
    return std::move(out_);
  }

 private:
  void check_spec() {
    MPT_CHECK(!spec_.blend.empty(), Status::kInvalidConfig,
              "dataset: no indexed data given; set dataset.data_path or dataset.blend");
    MPT_CHECK(spec_.seq_length >= 1, Status::kInvalidConfig, "dataset: seq_length must be at least 1, got ",
              spec_.seq_length);
    weighted_ = spec_.blend[0].weight.has_value();
    for (const BlendEntry& e : spec_.blend) {
      MPT_CHECK(!e.prefix.empty(), Status::kInvalidConfig, "dataset.blend: a prefix is empty");
      MPT_CHECK(e.weight.has_value() == weighted_, Status::kInvalidConfig, "dataset.blend: '", e.prefix,
                weighted_ ? "' has no weight, but others do" : "' has a weight, but others do not",
                "; weight every dataset or none");
      MPT_CHECK(!e.weight || (std::isfinite(*e.weight) && *e.weight > 0), Status::kInvalidConfig,
                "dataset.blend: weight ", e.weight.value_or(0), " of '", e.prefix, "' is not a positive number");
    }
    for (int s = 0; s < 3; ++s)
      MPT_CHECK(spec_.num_samples[static_cast<size_t>(s)] >= 0, Status::kInvalidConfig, "dataset: negative ",
                split_name(static_cast<Split>(s)), " sample count ", spec_.num_samples[static_cast<size_t>(s)]);
    parse_split_weights(spec_.split);  // fails early, naming dataset.split
  }

  // Each prefix once, however often the blend names it.
  void open_datasets() {
    std::map<std::string, size_t> seen;
    for (const BlendEntry& e : spec_.blend) {
      auto it = seen.find(e.prefix);
      if (it != seen.end()) {
        entries_.push_back(it->second);
        continue;
      }
      OpenDataset d;
      d.prefix = e.prefix;
      try {
        d.dataset = std::make_shared<const IndexedDataset>(e.prefix, spec_.mmap_bin);
      } catch (const Error& err) {
        fail(err.status(), "dataset '", e.prefix, "' cannot be opened: ", err.what());
      }
      d.ranges = split_ranges(spec_.split, d.dataset->num_sequences());
      out_.log_lines.push_back(str(e.prefix, ": ", d.dataset->num_sequences(), " sequences, ",
                                   d.dataset->num_documents(), " documents, ", d.dataset->num_tokens(), " tokens (",
                                   dtype_name(d.dataset->dtype()), ")"));
      seen.emplace(e.prefix, datasets_.size());
      entries_.push_back(datasets_.size());
      datasets_.push_back(std::move(d));
    }
  }

  void check_split_nonempty(Split split, int64_t n) {
    for (const OpenDataset& d : datasets_) {
      const auto& r = d.ranges[static_cast<size_t>(split)];
      MPT_CHECK(r && r->second > r->first, Status::kInvalidConfig, "dataset '", d.prefix, "': the ",
                split_name(split), " split is empty under dataset.split \"", spec_.split, "\" (",
                d.dataset->num_sequences(), " sequences), but ", n, " ", split_name(split),
                " samples are needed; give that split a larger weight");
    }
  }

  std::shared_ptr<SampleSource> gpt(size_t entry, Split split, std::optional<int64_t> num_samples) {
    const OpenDataset& d = datasets_[entries_[entry]];
    GPTDatasetOptions o;
    o.split = split;
    o.begin = d.ranges[static_cast<size_t>(split)]->first;
    o.end = d.ranges[static_cast<size_t>(split)]->second;
    o.seq_length = spec_.seq_length;
    o.num_samples = num_samples;
    o.seed = spec_.seed;
    o.cache_dir = spec_.cache_dir;
    o.cache = spec_.cache;
    IndexBuildInfo info;
    std::shared_ptr<SampleSource> src;
    try {
      src = make_gpt_source(d.dataset, o, &info);
    } catch (const Error& err) {
      fail(err.status(), "dataset '", d.prefix, "', ", split_name(split), " split: ", err.what(),
           err.status() == Status::kIoError ? " (dataset.path_to_cache names another cache directory)" : "");
    }
    if (!info.warning.empty()) out_.log_lines.push_back("warning: " + info.warning);
    out_.log_lines.push_back(str(d.prefix, " ", split_name(split), ": sequences [", o.begin, ", ", o.end, "), ",
                                 src->size(), " samples, ", info.num_epochs,
                                 info.num_epochs == 1 ? " epoch, " : " epochs, ",
                                 info.cache_hit ? "loaded from cache" : "built", " in ", seconds_text(info.seconds)));
    out_.index_seconds += info.seconds;
    return src;
  }

  std::shared_ptr<SampleSource> blend(std::vector<std::shared_ptr<SampleSource>> sources,
                                      const std::vector<double>& weights, int64_t size, Split split) {
    IndexBuildInfo info;
    auto src = make_blended_source(std::move(sources), weights, size, split_name(split),
                                   spec_.cache ? spec_.cache_dir : "", &info);
    if (!info.warning.empty()) out_.log_lines.push_back("warning: " + info.warning);
    out_.log_lines.push_back(str(src->describe(), ", ", info.cache_hit ? "loaded from cache" : "built", " in ",
                                 seconds_text(info.seconds)));
    out_.index_seconds += info.seconds;
    return src;
  }

  std::shared_ptr<SampleSource> build_split(Split split, int64_t n) {
    const size_t k = spec_.blend.size();
    if (k == 1 && !weighted_) return gpt(0, split, n);
    std::vector<std::shared_ptr<SampleSource>> sources;
    if (weighted_) {
      // Megatron normalises the weights here and its BlendedDataset does it once more
      // (make_blended_source); both steps are kept so the blend matches to the bit.
      std::vector<double> raw;
      for (const BlendEntry& e : spec_.blend) raw.push_back(*e.weight);
      const std::vector<double> w = normalize_weights(raw);
      const std::vector<int64_t> build_for = blend_sizes(w, n, kBlendSurplus);
      const std::vector<int64_t> target = blend_sizes(w, n, 0.0);
      for (size_t i = 0; i < k; ++i) sources.push_back(gpt(i, split, build_for[i]));
      return blend(std::move(sources), w, std::accumulate(target.begin(), target.end(), int64_t{0}), split);
    }
    // Unweighted: one epoch of each, blended by their sample counts.
    std::vector<double> counts;
    int64_t total = 0;
    for (size_t i = 0; i < k; ++i) {
      sources.push_back(gpt(i, split, std::nullopt));
      counts.push_back(static_cast<double>(sources.back()->size()));
      total += sources.back()->size();
    }
    MPT_CHECK(n <= total, Status::kInvalidConfig, "the ", split_name(split), " split needs ", n,
              " samples, but one epoch of its ", k, " unweighted datasets holds ", total,
              "; give the datasets weights to draw several epochs");
    return blend(std::move(sources), counts, n, split);
  }

  const DataSpec& spec_;
  bool weighted_ = false;
  std::vector<OpenDataset> datasets_;
  std::vector<size_t> entries_;  // blend entry -> its dataset in datasets_
  SplitSources out_;
};

}  // namespace

SplitSources build_indexed_sources(const DataSpec& spec) { return Builder(spec).build(); }

}  // namespace mpt::data
