// The embedded corpus as a sample source: byte tokens, a token-range split, fixed windows
// shuffled afresh each epoch.
#include <cstring>
#include <mutex>
#include <utility>
#include <vector>

#include "core/error.h"
#include "core/rng.h"
#include "data/byte_tokenizer.h"
#include "data/corpus.h"
#include "data/sample_source.h"
#include "data/shuffle.h"

namespace mpt::data {

namespace {

class CorpusSource final : public SampleSource {
 public:
  CorpusSource(std::vector<int32_t> tokens, int64_t seq_length, uint64_t seed, std::string description)
      : tokens_(std::move(tokens)), seq_(seq_length), windows_((static_cast<int64_t>(tokens_.size()) - 1) / seq_length),
        seed_key_(mix_key(seed, hash_name("corpus-shuffle"))), description_(std::move(description)) {}

  int64_t seq_length() const override { return seq_; }
  std::string describe() const override { return description_; }

  void sample(int64_t index, int32_t* out) const override {
    MPT_CHECK(index >= 0, Status::kInvalidArgument, "corpus source: negative sample index ", index);
    const int64_t epoch = index / windows_;
    const int64_t window = window_of(epoch, index % windows_);
    std::memcpy(out, tokens_.data() + window * seq_, static_cast<size_t>(seq_ + 1) * sizeof(int32_t));
  }

 private:
  // The permutation of the epoch last asked for is kept: batches read one epoch at a time.
  int64_t window_of(int64_t epoch, int64_t position) const {
    std::lock_guard<std::mutex> lock(mutex_);
    if (epoch != cached_epoch_) {
      order_ = shuffled_order(windows_, mix_key(seed_key_, static_cast<uint64_t>(epoch)));
      cached_epoch_ = epoch;
    }
    return order_[static_cast<size_t>(position)];
  }

  std::vector<int32_t> tokens_;  // this split's tokens only
  int64_t seq_, windows_;
  uint64_t seed_key_;
  std::string description_;
  mutable std::mutex mutex_;
  mutable int64_t cached_epoch_ = -1;
  mutable std::vector<int64_t> order_;
};

}  // namespace

std::unique_ptr<SampleSource> make_corpus_source(int64_t seq_length, uint64_t seed, Split split,
                                                 const std::string& split_weights) {
  MPT_CHECK(seq_length > 0, Status::kInvalidConfig, "corpus dataset: seq_length ", seq_length, " must be > 0");
  const std::string weights_text = split_weights.empty() ? std::string(kDefaultSplit) : split_weights;
  const std::vector<int32_t> all = corpus_tokens();
  const int64_t total = static_cast<int64_t>(all.size());
  const std::array<int64_t, 4> b = split_boundaries(parse_split_weights(weights_text), total);
  const int s = static_cast<int>(split);
  const int64_t begin = b[s], end = b[s + 1], size = end - begin;
  MPT_CHECK(size >= seq_length + 1, Status::kInvalidConfig, "corpus dataset: the ", split_name(split),
            " split has ", size, " tokens (dataset.split '", weights_text, "' of ", total,
            " corpus tokens), fewer than seq_length + 1 = ", seq_length + 1, "; give the ", split_name(split),
            " split more weight or shorten seq_length");
  const int64_t windows = (size - 1) / seq_length;
  std::string description =
      str("corpus: ", corpus_documents().size(), " documents, ", total, " byte tokens; ", split_name(split),
          " split (", weights_text, ") is tokens [", begin, ", ", end, "), ", size, " tokens; epoch of ", windows,
          " samples of ", seq_length, "+1 tokens, shuffled with seed ", seed);
  std::vector<int32_t> tokens(all.begin() + begin, all.begin() + end);
  return std::make_unique<CorpusSource>(std::move(tokens), seq_length, seed, std::move(description));
}

}  // namespace mpt::data
