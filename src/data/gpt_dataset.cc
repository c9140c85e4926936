#include "data/gpt_dataset.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <limits>
#include <nlohmann/json.hpp>
#include <utility>

#include "core/error.h"
#include "data/index_cache.h"
#include "data/numpy_random.h"

namespace mpt::data {

namespace {

// Megatron samples seq_length + 1 tokens so that inputs and labels both hold seq_length.
constexpr int64_t kExtraToken = 1;
// Below this share of an epoch, the final epoch is shuffled apart from the others.
constexpr double kSeparateFinalEpochThreshold = 0.80;

// How many epochs the requested samples need and how they split across them.
struct EpochPlan {
  int64_t tokens_per_epoch = 0;
  int64_t num_epochs = 1;
  int64_t num_samples = 0;             // rows of the sample index minus one
  int64_t num_samples_sans_final = 0;  // samples of the first num_epochs - 1 epochs
  bool separate_final_epoch = false;
};

EpochPlan plan_epochs(const int32_t* lengths, int64_t begin, int64_t end, int64_t seq_length,
                      std::optional<int64_t> num_samples) {
  MPT_CHECK(seq_length >= 1, Status::kInvalidConfig, "GPT dataset: seq_length must be at least 1, got ", seq_length);
  MPT_CHECK(0 <= begin && begin <= end, Status::kInvalidArgument, "GPT dataset: bad sequence range [", begin, ", ",
            end, ")");
  // Document ids are stored as int32, as Megatron stores them.
  MPT_CHECK(end - 1 <= std::numeric_limits<int32_t>::max(), Status::kInvalidArgument,
            "GPT dataset: sequence range [", begin, ", ", end, ") exceeds int32 sequence ids");
  MPT_CHECK(!num_samples || *num_samples >= 0, Status::kInvalidConfig, "GPT dataset: negative num_samples ",
            *num_samples);
  MPT_CHECK(!num_samples || *num_samples <= (std::numeric_limits<int64_t>::max() - kExtraToken) / seq_length,
            Status::kInvalidConfig, "GPT dataset: num_samples ", *num_samples, " of ", seq_length,
            " tokens overflows a token count");
  EpochPlan p;
  for (int64_t s = begin; s < end; ++s) {
    MPT_CHECK(lengths[s] >= 0, Status::kCorruptData, "GPT dataset: sequence ", s, " has negative length ", lengths[s]);
    p.tokens_per_epoch += lengths[s];
  }
  MPT_CHECK(p.tokens_per_epoch >= seq_length + kExtraToken, Status::kInvalidConfig, "GPT dataset: sequences [",
            begin, ", ", end, ") hold ", p.tokens_per_epoch, " tokens, fewer than one sample of seq_length + 1 = ",
            seq_length + kExtraToken);
  const int64_t t = p.tokens_per_epoch;
  if (num_samples) {
    const int64_t requested = *num_samples * seq_length + kExtraToken;
    p.num_epochs = std::max<int64_t>(1, (requested + t - 1) / t);
  }
  p.num_samples = (p.num_epochs * t - kExtraToken) / seq_length;
  p.num_samples_sans_final = p.num_samples;
  if (p.num_epochs > 1) {
    const int64_t sans_final = ((p.num_epochs - 1) * t - kExtraToken) / seq_length;
    const int64_t from_final = *num_samples - sans_final;
    const int64_t per_epoch = (t - kExtraToken) / seq_length;
    MPT_ASSERT(from_final >= 0 && from_final <= per_epoch + 1);
    p.separate_final_epoch =
        from_final < static_cast<int64_t>(kSeparateFinalEpochThreshold * static_cast<double>(per_epoch));
    if (p.separate_final_epoch) p.num_samples_sans_final = sans_final;
  }
  return p;
}

// `copies` copies of [begin, end) appended to `out` and shuffled together.
void append_shuffled_epochs(int64_t begin, int64_t end, int64_t copies, NumpyRandomState& rng,
                            std::vector<int32_t>& out) {
  const size_t first = out.size();
  for (int64_t e = 0; e < copies; ++e)
    for (int64_t s = begin; s < end; ++s) out.push_back(static_cast<int32_t>(s));
  rng.shuffle(out.data() + first, static_cast<int64_t>(out.size() - first));
}

// Walks the document index in order, cutting it into samples of seq_length + 1 tokens that
// overlap by one: the entry for sample j is where it starts (document position, offset).
std::vector<int64_t> build_sample_index(const int32_t* lengths, const std::vector<int32_t>& document_index,
                                        int64_t seq_length, int64_t num_samples) {
  std::vector<int64_t> index(static_cast<size_t>(2 * (num_samples + 1)));
  const int64_t num_docs = static_cast<int64_t>(document_index.size());
  // Lengths in document-index order, gathered a block at a time: the gather's independent
  // loads overlap, where the walk's dependent ones would each wait on memory.
  constexpr int64_t kBlock = 1 << 15;
  std::vector<int64_t> block(static_cast<size_t>(std::min(kBlock, num_docs)));
  int64_t block_start = -kBlock;
  auto length_at = [&](int64_t pos) {
    if (pos >= block_start + kBlock) {
      block_start = pos;
      const int64_t n = std::min(kBlock, num_docs - pos);
      for (int64_t k = 0; k < n; ++k) block[static_cast<size_t>(k)] = lengths[document_index[static_cast<size_t>(pos + k)]];
    }
    return block[static_cast<size_t>(pos - block_start)];
  };
  int64_t pos = 0, offset = 0;
  index[0] = 0;
  index[1] = 0;
  for (int64_t j = 1; j <= num_samples; ++j) {
    int64_t remaining = seq_length + kExtraToken;
    while (true) {
      const int64_t available = length_at(pos) - offset;
      remaining -= available;
      if (remaining <= 0) {
        // The sample ends inside this document; the next starts on its last token.
        offset += remaining + available - kExtraToken;
        break;
      }
      MPT_ASSERT(pos + 1 < num_docs);  // num_samples never asks for more tokens than the epochs hold
      ++pos;
      offset = 0;
    }
    index[static_cast<size_t>(2 * j)] = pos;
    index[static_cast<size_t>(2 * j + 1)] = offset;
  }
  return index;
}

std::vector<int64_t> shuffled_range(int64_t begin, int64_t end, NumpyRandomState& rng) {
  std::vector<int64_t> v(static_cast<size_t>(end - begin));
  for (int64_t i = begin; i < end; ++i) v[static_cast<size_t>(i - begin)] = i;
  rng.shuffle(v.data(), end - begin);
  return v;
}

}  // namespace

GPTIndices build_gpt_indices(const int32_t* sequence_lengths, int64_t begin, int64_t end, int64_t seq_length,
                             std::optional<int64_t> num_samples, uint32_t seed) {
  const EpochPlan plan = plan_epochs(sequence_lengths, begin, end, seq_length, num_samples);
  GPTIndices out;
  out.num_epochs = plan.num_epochs;
  out.tokens_per_epoch = plan.tokens_per_epoch;
  out.separate_final_epoch = plan.separate_final_epoch;
  // One generator for all three shuffles, drawn in Megatron's order.
  NumpyRandomState rng(seed);
  out.document_index.reserve(static_cast<size_t>(plan.num_epochs * (end - begin)));
  if (plan.separate_final_epoch) {
    append_shuffled_epochs(begin, end, plan.num_epochs - 1, rng, out.document_index);
    append_shuffled_epochs(begin, end, 1, rng, out.document_index);
  } else {
    append_shuffled_epochs(begin, end, plan.num_epochs, rng, out.document_index);
  }
  out.sample_index = build_sample_index(sequence_lengths, out.document_index, seq_length, plan.num_samples);
  out.shuffle_index = shuffled_range(0, plan.num_samples_sans_final, rng);
  if (plan.num_samples_sans_final < plan.num_samples) {
    std::vector<int64_t> last = shuffled_range(plan.num_samples_sans_final, plan.num_samples, rng);
    out.shuffle_index.insert(out.shuffle_index.end(), last.begin(), last.end());
  }
  return out;
}

namespace {

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

std::string absolute_prefix(const std::string& prefix) {
  return std::filesystem::absolute(prefix).lexically_normal().string();
}

// A 64-bit FNV-1a-style hash of the range's sequence lengths, a word at a time: the indices
// depend on nothing else in the files, so a dataset rewritten under the same name and
// sizes still gets a fresh entry when its lengths differ.
std::string lengths_hash(const int32_t* lengths, int64_t begin, int64_t end) {
  uint64_t h = 0xcbf29ce484222325ULL;
  for (int64_t s = begin; s < end; ++s) {
    h ^= static_cast<uint32_t>(lengths[s]);
    h *= 0x100000001b3ULL;
  }
  char buf[17];
  std::snprintf(buf, sizeof(buf), "%016llx", static_cast<unsigned long long>(h));
  return buf;
}

// Everything the indices depend on, as the text whose hash names the cache entry.
std::string describe_inputs(const IndexedDataset& ds, const GPTDatasetOptions& o) {
  nlohmann::ordered_json j;
  j["class"] = "GPTDataset";
  j["format"] = 1;
  j["dataset_path"] = absolute_prefix(ds.prefix());
  j["num_sequences"] = ds.num_sequences();
  j["num_documents"] = ds.num_documents();
  j["num_tokens"] = ds.num_tokens();
  j["idx_bytes"] = ds.idx_bytes();
  j["index_split"] = split_name(o.split);
  j["sequence_range"] = {o.begin, o.end};
  j["sequence_lengths_hash"] = lengths_hash(ds.sequence_lengths(), o.begin, o.end);
  j["num_samples"] = o.num_samples ? nlohmann::ordered_json(*o.num_samples) : nlohmann::ordered_json(nullptr);
  j["sequence_length"] = o.seq_length;
  j["random_seed"] = o.seed;
  j["add_extra_token_to_sequence"] = true;
  return j.dump(4);
}

struct CachePaths {
  std::string dir, base, document_index, sample_index, shuffle_index;
};

CachePaths cache_paths(const std::string& dir, const std::string& hash, Split split) {
  CachePaths p;
  p.dir = dir;
  p.base = (std::filesystem::path(dir) / str(hash, "-GPTDataset-", split_name(split))).string();
  p.document_index = p.base + "-document_index.npy";
  p.sample_index = p.base + "-sample_index.npy";
  p.shuffle_index = p.base + "-shuffle_index.npy";
  return p;
}

// Checks what a loaded entry holds against the dataset, so a damaged file is rebuilt rather
// than read out of bounds: document ids inside the range, sample starts that advance
// through the document index within each document, and a shuffle that is a permutation.
void check_loaded(const GPTIndices& idx, const int32_t* lengths, int64_t begin, int64_t end, const CachePaths& p) {
  for (size_t i = 0; i < idx.document_index.size(); ++i) {
    const int32_t d = idx.document_index[i];
    MPT_CHECK(d >= begin && d < end, Status::kCorruptData, p.document_index, ": element ", i, " = ", d,
              " is outside the sequence range [", begin, ", ", end, ")");
  }
  const int64_t docs = static_cast<int64_t>(idx.document_index.size());
  const int64_t rows = static_cast<int64_t>(idx.sample_index.size() / 2);
  MPT_CHECK(idx.sample_index[0] == 0 && idx.sample_index[1] == 0, Status::kCorruptData, p.sample_index,
            ": row 0 is not (0, 0)");
  for (int64_t j = 1; j < rows; ++j) {
    const int64_t pos = idx.sample_index[static_cast<size_t>(2 * j)];
    const int64_t off = idx.sample_index[static_cast<size_t>(2 * j + 1)];
    const int64_t prev_pos = idx.sample_index[static_cast<size_t>(2 * j - 2)];
    const int64_t prev_off = idx.sample_index[static_cast<size_t>(2 * j - 1)];
    const bool in_range = pos >= 0 && pos < docs && off >= 0 && off < lengths[idx.document_index[static_cast<size_t>(pos)]];
    const bool advances = pos > prev_pos || (pos == prev_pos && off > prev_off);
    MPT_CHECK(in_range && advances, Status::kCorruptData, p.sample_index, ": row ", j, " = (", pos, ", ", off,
              ") is not a position after row ", j - 1, " inside the document index");
  }
  std::vector<bool> seen(idx.shuffle_index.size(), false);
  for (size_t i = 0; i < idx.shuffle_index.size(); ++i) {
    const int64_t v = idx.shuffle_index[i];
    const bool fresh = v >= 0 && v < static_cast<int64_t>(seen.size()) && !seen[static_cast<size_t>(v)];
    MPT_CHECK(fresh, Status::kCorruptData, p.shuffle_index, ": element ", i, " = ", v,
              " is out of range or repeated; not a permutation");
    seen[static_cast<size_t>(v)] = true;
  }
}

GPTIndices load_entry(const CachePaths& p, const EpochPlan& plan, const int32_t* lengths, int64_t begin,
                      int64_t end) {
  GPTIndices idx;
  idx.num_epochs = plan.num_epochs;
  idx.tokens_per_epoch = plan.tokens_per_epoch;
  idx.separate_final_epoch = plan.separate_final_epoch;
  idx.document_index = read_npy<int32_t>(p.document_index, {NpyDType::kInt32}, plan.num_epochs * (end - begin), 0);
  idx.sample_index = read_npy<int64_t>(p.sample_index, {NpyDType::kInt32, NpyDType::kInt64}, plan.num_samples + 1, 2);
  idx.shuffle_index = read_npy<int64_t>(p.shuffle_index, {NpyDType::kUInt32, NpyDType::kInt64}, plan.num_samples, 0);
  check_loaded(idx, lengths, begin, end, p);
  return idx;
}

// The dtypes Megatron saves: int32 sample index when its values fit, uint32 shuffle index
// below 2^32 - 2 samples.
void save_entry(const CachePaths& p, const GPTIndices& idx) {
  write_npy(p.document_index, NpyDType::kInt32, static_cast<int64_t>(idx.document_index.size()), 0,
            idx.document_index.data());
  int64_t sample_max = static_cast<int64_t>(idx.document_index.size());
  for (int64_t v : idx.sample_index) sample_max = std::max(sample_max, v);
  const NpyDType sample_dtype =
      sample_max <= std::numeric_limits<int32_t>::max() ? NpyDType::kInt32 : NpyDType::kInt64;
  write_npy(p.sample_index, sample_dtype, static_cast<int64_t>(idx.sample_index.size() / 2), 2, idx.sample_index.data());
  const int64_t n = idx.num_samples();
  const NpyDType shuffle_dtype =
      n < static_cast<int64_t>(std::numeric_limits<uint32_t>::max()) - 1 ? NpyDType::kUInt32 : NpyDType::kInt64;
  write_npy(p.shuffle_index, shuffle_dtype, n, 0, idx.shuffle_index.data());
}

class GPTSource final : public SampleSource {
 public:
  GPTSource(std::shared_ptr<const IndexedDataset> dataset, const GPTDatasetOptions& o, GPTIndices indices,
            const std::string& hash)
      : dataset_(std::move(dataset)), idx_(std::move(indices)), seq_(o.seq_length) {
    describe_ = str("GPTDataset ", dataset_->prefix(), " ", split_name(o.split), " split: sequences [", o.begin, ", ",
                    o.end, "), ", idx_.num_samples(), " samples of ", seq_, "+1 tokens in ", idx_.num_epochs,
                    idx_.num_epochs == 1 ? " epoch" : " epochs", ", seed ", o.seed, ", index ", hash.substr(0, 16));
  }

  int64_t seq_length() const override { return seq_; }
  std::string describe() const override { return describe_; }
  int64_t size() const override { return idx_.num_samples(); }

  void sample(int64_t index, int32_t* out) const override {
    MPT_CHECK(index >= 0, Status::kInvalidArgument, dataset_->prefix(), ": negative sample index ", index);
    MPT_CHECK(index < size(), Status::kInvalidArgument, dataset_->prefix(), ": sample ", index,
              " requested, but the data built for this run is exhausted: it holds ", size(),
              " samples (build it for more samples)");
    const int64_t s = idx_.shuffle_index[static_cast<size_t>(index)];
    const int64_t* row = idx_.sample_index.data() + 2 * s;
    const int64_t first_pos = row[0], first_off = row[1], last_pos = row[2], last_off = row[3];
    const int32_t* lengths = dataset_->sequence_lengths();
    const int64_t total = seq_ + kExtraToken;
    int64_t written = 0;
    // Document positions first_pos .. last_pos contribute [first_off, end), whole
    // documents, and [0, last_off + 1); one document alone gives [first_off, last_off + 1).
    for (int64_t pos = first_pos; pos <= last_pos; ++pos) {
      const int32_t seq_id = idx_.document_index[static_cast<size_t>(pos)];
      const int64_t from = pos == first_pos ? first_off : 0;
      const int64_t to = pos == last_pos ? last_off + kExtraToken : lengths[seq_id];
      const int64_t count = to - from;
      MPT_CHECK(count >= 0 && written + count <= total, Status::kCorruptData, dataset_->prefix(),
                ": the sample index gives sample ", index, " more than ", total, " tokens");
      if (count > 0) dataset_->read(seq_id, from, count, out + written);
      written += count;
    }
    MPT_CHECK(written == total, Status::kCorruptData, dataset_->prefix(), ": the sample index gives sample ", index,
              " ", written, " tokens instead of ", total);
  }

 private:
  std::shared_ptr<const IndexedDataset> dataset_;
  GPTIndices idx_;
  int64_t seq_;
  std::string describe_;
};

}  // namespace

std::shared_ptr<SampleSource> make_gpt_source(std::shared_ptr<const IndexedDataset> dataset,
                                              const GPTDatasetOptions& options, IndexBuildInfo* info) {
  MPT_CHECK(dataset != nullptr, Status::kInvalidArgument, "make_gpt_source: no dataset");
  const GPTDatasetOptions& o = options;
  MPT_CHECK(0 <= o.begin && o.begin <= o.end && o.end <= dataset->num_sequences(), Status::kInvalidArgument,
            dataset->prefix(), ": ", split_name(o.split), " sequence range [", o.begin, ", ", o.end,
            ") is outside the dataset's ", dataset->num_sequences(), " sequences");
  const auto t0 = std::chrono::steady_clock::now();
  const int32_t* lengths = dataset->sequence_lengths();
  IndexBuildInfo result;
  result.description = describe_inputs(*dataset, o);
  const std::string hash = hash_hex(result.description);
  GPTIndices indices;
  if (!o.cache) {
    indices = build_gpt_indices(lengths, o.begin, o.end, o.seq_length, o.num_samples, o.seed);
  } else {
    const std::string dir =
        !o.cache_dir.empty()
            ? o.cache_dir
            : (std::filesystem::path(absolute_prefix(dataset->prefix())).parent_path() / "cache" / "GPTDataset_indices")
                  .string();
    const CachePaths p = cache_paths(dir, hash, o.split);
    result.cache_base = p.base;
    const EpochPlan plan = plan_epochs(lengths, o.begin, o.end, o.seq_length, o.num_samples);
    result.cache_hit = load_or_build(
        p.dir, p.base, result.description, [&] { indices = load_entry(p, plan, lengths, o.begin, o.end); },
        [&] { indices = build_gpt_indices(lengths, o.begin, o.end, o.seq_length, o.num_samples, o.seed); },
        [&] { save_entry(p, indices); }, &result.warning);
  }
  result.seconds = seconds_since(t0);
  result.num_epochs = indices.num_epochs;
  auto source = std::make_shared<GPTSource>(std::move(dataset), o, std::move(indices), hash);
  if (info) *info = std::move(result);
  return source;
}

}  // namespace mpt::data
