// Sample sources: the mock stream, the embedded corpus stream and fill_batch.
#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "core/error.h"
#include "data/byte_tokenizer.h"
#include "data/corpus.h"
#include "data/sample_source.h"
#include "test_errors.h"

namespace mpt::data {
namespace {

using Tokens = std::vector<int32_t>;

Tokens sample_of(const SampleSource& src, int64_t index) {
  Tokens out(static_cast<size_t>(src.seq_length() + 1), -7);
  src.sample(index, out.data());
  return out;
}

// --- mock -------------------------------------------------------------------------------

TEST(MockSource, SameIndexSameTokensWhateverTheCallOrder) {
  auto a = make_mock_source(1000, 31, 42, Split::kTrain);
  auto b = make_mock_source(1000, 31, 42, Split::kTrain);
  Tokens a5 = sample_of(*a, 5), a2 = sample_of(*a, 2), a5_again = sample_of(*a, 5);
  Tokens b2 = sample_of(*b, 2), b5 = sample_of(*b, 5);
  EXPECT_EQ(a5, b5);
  EXPECT_EQ(a2, b2);
  EXPECT_EQ(a5, a5_again);
  EXPECT_NE(a2, a5);
}

TEST(MockSource, SeedsAndSplitsGiveDifferentStreams) {
  auto base = make_mock_source(1000, 31, 42, Split::kTrain);
  auto other_seed = make_mock_source(1000, 31, 43, Split::kTrain);
  auto valid = make_mock_source(1000, 31, 42, Split::kValid);
  auto test = make_mock_source(1000, 31, 42, Split::kTest);
  EXPECT_NE(sample_of(*base, 0), sample_of(*other_seed, 0));
  EXPECT_NE(sample_of(*base, 0), sample_of(*valid, 0));
  EXPECT_NE(sample_of(*valid, 0), sample_of(*test, 0));
}

TEST(MockSource, TokensCoverTheVocabularyUniformly) {
  auto small = make_mock_source(7, 63, 1, Split::kTrain);
  std::vector<int64_t> counts(7, 0);
  for (int64_t i = 0; i < 100; ++i)
    for (int32_t t : sample_of(*small, i)) {
      ASSERT_GE(t, 0);
      ASSERT_LT(t, 7);
      ++counts[static_cast<size_t>(t)];
    }
  // 6400 draws: each count is 914 +- 28 (one sigma).
  for (int64_t c : counts) EXPECT_NEAR(static_cast<double>(c), 6400.0 / 7, 150.0);

  auto large = make_mock_source(50257, 127, 1, Split::kTrain);
  double sum = 0;
  int32_t top = 0;
  for (int64_t i = 0; i < 64; ++i)
    for (int32_t t : sample_of(*large, i)) {
      ASSERT_GE(t, 0);
      ASSERT_LT(t, 50257);
      sum += t, top = std::max(top, t);
    }
  EXPECT_NEAR(sum / (64 * 128), 25128.0, 1000.0);  // sigma of the mean ~ 160
  EXPECT_GT(top, 50000);
}

TEST(MockSource, RejectsBadSizesAndIndices) {
  EXPECT_EQ(error_of([] { make_mock_source(0, 8, 1, Split::kTrain); }).status(), Status::kInvalidConfig);
  EXPECT_EQ(error_of([] { make_mock_source(10, 0, 1, Split::kTrain); }).status(), Status::kInvalidConfig);
  auto src = make_mock_source(10, 8, 1, Split::kTrain);
  EXPECT_EQ(error_of([&] { sample_of(*src, -1); }).status(), Status::kInvalidArgument);
  EXPECT_TRUE(contains(src->describe(), "mock")) << src->describe();
}

// --- corpus -------------------------------------------------------------------------------

constexpr int64_t kSeq = 64;

// The split's tokens, derived here from the text rather than from the source under test.
Tokens split_tokens(Split split, const std::string& weights) {
  Tokens all;
  for (char c : embedded_corpus()) all.push_back(c == kDocumentSeparator ? kByteEod : static_cast<unsigned char>(c));
  all.push_back(kByteEod);
  auto b = split_boundaries(parse_split_weights(weights), static_cast<int64_t>(all.size()));
  int s = static_cast<int>(split);
  return Tokens(all.begin() + b[s], all.begin() + b[s + 1]);
}

// For each sample of epoch `epoch`, the window position p whose tokens
// [p * seq, p * seq + seq + 1) of `stream` it equals; -1 where it matches none.
std::vector<int64_t> window_positions(const SampleSource& src, const Tokens& stream, int64_t epoch) {
  const int64_t seq = src.seq_length(), windows = (static_cast<int64_t>(stream.size()) - 1) / seq;
  std::map<Tokens, std::vector<int64_t>> by_content;  // identical windows are interchangeable
  for (int64_t p = windows - 1; p >= 0; --p) by_content[Tokens(stream.begin() + p * seq, stream.begin() + p * seq + seq + 1)].push_back(p);
  std::vector<int64_t> positions;
  for (int64_t k = 0; k < windows; ++k) {
    auto it = by_content.find(sample_of(src, epoch * windows + k));
    if (it == by_content.end() || it->second.empty()) {
      positions.push_back(-1);
      continue;
    }
    positions.push_back(it->second.back());
    it->second.pop_back();
  }
  return positions;
}

TEST(CorpusSource, EachEpochVisitsEveryWindowOnceInAFreshOrder) {
  Tokens train = split_tokens(Split::kTrain, "90,10,0");
  const int64_t windows = (static_cast<int64_t>(train.size()) - 1) / kSeq;
  ASSERT_GT(windows, 100);
  auto src = make_corpus_source(kSeq, 1234, Split::kTrain, "");  // empty: the default 90,10,0
  EXPECT_TRUE(contains(src->describe(), str("epoch of ", windows, " samples"))) << src->describe();
  EXPECT_TRUE(contains(src->describe(), str(corpus_documents().size(), " documents"))) << src->describe();

  std::vector<int64_t> epoch0 = window_positions(*src, train, 0);
  std::vector<int64_t> epoch1 = window_positions(*src, train, 1);
  std::set<int64_t> seen0(epoch0.begin(), epoch0.end()), seen1(epoch1.begin(), epoch1.end());
  EXPECT_EQ(seen0.size(), static_cast<size_t>(windows));
  EXPECT_EQ(seen0.count(-1), 0u);
  EXPECT_EQ(seen0, seen1);
  EXPECT_NE(epoch0, epoch1);

  // Shuffled, not in stream order; and windows cross document boundaries.
  int64_t in_place = 0;
  for (int64_t k = 0; k < windows; ++k) in_place += epoch0[static_cast<size_t>(k)] == k;
  EXPECT_LT(in_place, 10);
  int64_t with_eod = 0;
  for (int64_t k = 0; k < windows; ++k) {
    Tokens t = sample_of(*src, k);
    with_eod += std::find(t.begin(), t.end() - 1, kByteEod) != t.end() - 1;
  }
  EXPECT_GT(with_eod, 0);
}

TEST(CorpusSource, SeedChangesTheOrderAndNothingElse) {
  auto a = make_corpus_source(kSeq, 1, Split::kTrain, "90,10,0");
  auto a2 = make_corpus_source(kSeq, 1, Split::kTrain, "90,10,0");
  auto b = make_corpus_source(kSeq, 2, Split::kTrain, "90,10,0");
  Tokens train = split_tokens(Split::kTrain, "90,10,0");
  std::vector<int64_t> pa = window_positions(*a, train, 0), pb = window_positions(*b, train, 0);
  EXPECT_EQ(pa, window_positions(*a2, train, 0));
  EXPECT_NE(pa, pb);
  EXPECT_EQ(std::set<int64_t>(pa.begin(), pa.end()), std::set<int64_t>(pb.begin(), pb.end()));
}

TEST(CorpusSource, SampleDependsOnlyOnItsIndex) {
  auto fresh = make_corpus_source(kSeq, 7, Split::kTrain, "");
  auto used = make_corpus_source(kSeq, 7, Split::kTrain, "");
  sample_of(*used, 5000);  // a later epoch first
  for (int64_t k : {3, 0, 1000, 3}) EXPECT_EQ(sample_of(*used, k), sample_of(*fresh, k)) << k;

  // Two threads reading different epochs at once see what a serial reader sees.
  std::vector<Tokens> expected;
  for (int64_t k = 0; k < 200; ++k) expected.push_back(sample_of(*fresh, k * 37));
  std::vector<Tokens> got(200);
  auto read = [&](int64_t first) {
    for (int64_t k = first; k < 200; k += 2) got[static_cast<size_t>(k)] = sample_of(*used, k * 37);
  };
  std::thread t0(read, 0), t1(read, 1);
  t0.join(), t1.join();
  EXPECT_EQ(got, expected);
}

TEST(CorpusSource, TrainAndValidSplitsAreDisjoint) {
  Tokens train = split_tokens(Split::kTrain, "80,20,0"), valid = split_tokens(Split::kValid, "80,20,0");
  auto train_src = make_corpus_source(kSeq, 1, Split::kTrain, "80,20,0");
  auto valid_src = make_corpus_source(kSeq, 1, Split::kValid, "80,20,0");
  std::vector<int64_t> pv = window_positions(*valid_src, valid, 0);
  ASSERT_GT(pv.size(), 10u);
  EXPECT_EQ(std::count(pv.begin(), pv.end(), -1), 0);
  std::set<Tokens> train_samples;
  const int64_t train_windows = (static_cast<int64_t>(train.size()) - 1) / kSeq;
  for (int64_t k = 0; k < train_windows; ++k) train_samples.insert(sample_of(*train_src, k));
  for (int64_t k = 0; k < static_cast<int64_t>(pv.size()); ++k) EXPECT_EQ(train_samples.count(sample_of(*valid_src, k)), 0u);
  // The split sizes add up to the corpus.
  EXPECT_EQ(train.size() + valid.size(), corpus_tokens().size());
}

TEST(CorpusSource, TooShortSplitErrorsNamingTheSplitAndSizes) {
  Error e = error_of([] { make_corpus_source(kSeq, 1, Split::kTest, ""); });  // 90,10,0: no test tokens
  EXPECT_EQ(e.status(), Status::kInvalidConfig);
  EXPECT_TRUE(contains(e.what(), "test split has 0 tokens")) << e.what();
  EXPECT_TRUE(contains(e.what(), "seq_length + 1 = 65")) << e.what();

  e = error_of([] { make_corpus_source(1 << 20, 1, Split::kTrain, "969,30,1"); });
  EXPECT_EQ(e.status(), Status::kInvalidConfig);
  EXPECT_TRUE(contains(e.what(), "train split has")) << e.what();
  EXPECT_TRUE(contains(e.what(), "969,30,1")) << e.what();

  EXPECT_EQ(error_of([] { make_corpus_source(kSeq, 1, Split::kTrain, "x"); }).status(), Status::kInvalidConfig);
  EXPECT_EQ(error_of([] { make_corpus_source(0, 1, Split::kTrain, ""); }).status(), Status::kInvalidConfig);
}

// --- fill_batch ---------------------------------------------------------------------------

TEST(FillBatch, RowsAreConsecutiveSamples) {
  auto src = make_mock_source(100, 7, 3, Split::kTrain);
  const int64_t rows = 5, cols = 8;
  Tokens block(static_cast<size_t>(rows * cols), -1);
  fill_batch(*src, 11, rows, block.data());
  for (int64_t r = 0; r < rows; ++r)
    EXPECT_EQ(Tokens(block.begin() + r * cols, block.begin() + (r + 1) * cols), sample_of(*src, 11 + r)) << r;
  EXPECT_EQ(error_of([&] { fill_batch(*src, -1, 1, block.data()); }).status(), Status::kInvalidArgument);
  fill_batch(*src, 0, 0, nullptr);  // an empty batch is allowed
}

}  // namespace
}  // namespace mpt::data
