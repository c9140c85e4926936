// Mock data: uniform random tokens, for throughput runs and tests that need no files.
#include "core/error.h"
#include "core/rng.h"
#include "data/sample_source.h"

namespace mpt::data {

namespace {

class MockSource final : public SampleSource {
 public:
  MockSource(int64_t vocab_size, int64_t seq_length, uint64_t seed, Split split)
      : vocab_(vocab_size), seq_(seq_length), seed_(seed), split_(split),
        key_(mix_key(mix_key(seed, hash_name("mock")), static_cast<uint64_t>(split))) {}

  int64_t seq_length() const override { return seq_; }

  std::string describe() const override {
    return str("mock: uniform tokens in [0, ", vocab_, "), ", split_name(split_), " split, seed ", seed_,
               ", samples of ", seq_, "+1 tokens, unbounded");
  }

  void sample(int64_t index, int32_t* out) const override {
    MPT_CHECK(index >= 0, Status::kInvalidArgument, "mock source: negative sample index ", index);
    const int64_t n = seq_ + 1;
    // One Philox block gives four tokens: counter (sample, j / 4), word j % 4.
    for (int64_t block = 0; block * 4 < n; ++block) {
      Philox r(key_, static_cast<uint64_t>(index), static_cast<uint64_t>(block));
      for (int64_t w = 0; w < 4 && block * 4 + w < n; ++w) {
        // Multiply-shift maps 32 random bits onto [0, vocab); bias < vocab / 2^32.
        uint64_t scaled = static_cast<uint64_t>(r.out[w]) * static_cast<uint64_t>(vocab_);
        out[block * 4 + w] = static_cast<int32_t>(scaled >> 32);
      }
    }
  }

 private:
  int64_t vocab_, seq_;
  uint64_t seed_;
  Split split_;
  uint64_t key_;
};

}  // namespace

std::unique_ptr<SampleSource> make_mock_source(int64_t vocab_size, int64_t seq_length, uint64_t seed,
                                               Split split) {
  MPT_CHECK(vocab_size > 0 && vocab_size <= (int64_t{1} << 31), Status::kInvalidConfig,
            "mock dataset: vocab size ", vocab_size, " must be in [1, 2^31]");
  MPT_CHECK(seq_length > 0, Status::kInvalidConfig, "mock dataset: seq_length ", seq_length, " must be > 0");
  return std::make_unique<MockSource>(vocab_size, seq_length, seed, split);
}

}  // namespace mpt::data
