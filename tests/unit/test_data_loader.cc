// The batch loader: which samples each rank reads (data, context and pipeline parallel),
// resuming by consumed_samples, prefetching, and errors raised for the batch they belong to.
#include <gtest/gtest.h>

#include <memory>
#include <set>
#include <string>
#include <vector>

#include "core/error.h"
#include "data/loader.h"

namespace mpt::data {
namespace {

// Token j of sample i is i * 1000 + j: every token says where it came from.
class CountingSource final : public SampleSource {
 public:
  CountingSource(int64_t seq, int64_t size = -1) : seq_(seq), size_(size) {}
  int64_t seq_length() const override { return seq_; }
  std::string describe() const override { return "counting"; }
  int64_t size() const override { return size_; }
  void sample(int64_t index, int32_t* out) const override {
    MPT_CHECK(size_ < 0 || index < size_, Status::kInvalidArgument, "counting source exhausted at ", index);
    for (int64_t j = 0; j <= seq_; ++j) out[j] = static_cast<int32_t>(index * 1000 + j);
  }

 private:
  int64_t seq_, size_;
};

LoaderOptions options(int64_t prefetch) {
  LoaderOptions o;
  o.vocab_size = 1 << 30;
  o.prefetch = prefetch;
  return o;
}

int64_t sample_of(int32_t token) { return token / 1000; }
int64_t position_of(int32_t token) { return token % 1000; }

TEST(BatchLoader, DataParallelRanksShareEachGlobalBatchLikeMegatronsSampler) {
  auto src = std::make_shared<CountingSource>(8);
  const int64_t dp = 3, mbs = 2, nmb = 4;
  std::set<int64_t> seen;
  for (int64_t r = 0; r < dp; ++r) {
    LoaderLayout l;
    l.micro_batch = mbs, l.num_microbatches = nmb, l.dp_rank = r, l.dp_size = dp;
    BatchLoader loader(src, l, options(0));
    EXPECT_EQ(loader.global_batch(), mbs * nmb * dp);
    loader.seek(48);
    const RankBatch& b = loader.next();
    ASSERT_EQ(b.rows, mbs * nmb);
    ASSERT_EQ(b.cols, 8);
    for (int64_t m = 0; m < nmb; ++m)
      for (int64_t i = 0; i < mbs; ++i) {
        const int64_t row = m * mbs + i;
        const int64_t want = 48 + m * mbs * dp + r * mbs + i;
        EXPECT_EQ(sample_of(b.tokens[static_cast<size_t>(row * 8)]), want);
        seen.insert(want);
        for (int64_t s = 0; s < 8; ++s) {
          EXPECT_EQ(position_of(b.tokens[static_cast<size_t>(row * 8 + s)]), s);
          EXPECT_EQ(position_of(b.labels[static_cast<size_t>(row * 8 + s)]), s + 1);  // labels are shifted tokens
          EXPECT_EQ(b.loss_mask[static_cast<size_t>(row * 8 + s)], 1.0f);
        }
      }
    EXPECT_EQ(loader.position(), 48 + mbs * nmb * dp);
  }
  // Together the ranks read the global batch exactly once.
  EXPECT_EQ(seen.size(), static_cast<size_t>(mbs * nmb * dp));
  EXPECT_EQ(*seen.begin(), 48);
  EXPECT_EQ(*seen.rbegin(), 48 + mbs * nmb * dp - 1);
}

TEST(BatchLoader, ContextParallelRanksKeepBalancedChunkPairs) {
  auto src = std::make_shared<CountingSource>(16);
  const int64_t cp = 2;  // 4 chunks of 4: rank 0 keeps chunks 0 and 3, rank 1 chunks 1 and 2
  const std::vector<std::vector<int32_t>> want = {{0, 1, 2, 3, 12, 13, 14, 15}, {4, 5, 6, 7, 8, 9, 10, 11}};
  std::set<int32_t> covered;
  for (int64_t k = 0; k < cp; ++k) {
    LoaderLayout l;
    l.cp_rank = k, l.cp_size = cp;
    BatchLoader loader(src, l, options(1));
    const RankBatch& b = loader.next();
    ASSERT_EQ(b.cols, 8);
    EXPECT_EQ(b.positions, want[static_cast<size_t>(k)]);
    for (int64_t j = 0; j < 8; ++j) {
      EXPECT_EQ(position_of(b.tokens[static_cast<size_t>(j)]), want[static_cast<size_t>(k)][static_cast<size_t>(j)]);
      EXPECT_EQ(position_of(b.labels[static_cast<size_t>(j)]), want[static_cast<size_t>(k)][static_cast<size_t>(j)] + 1);
      covered.insert(b.positions[static_cast<size_t>(j)]);
    }
  }
  EXPECT_EQ(covered.size(), 16u);
  LoaderLayout bad;
  bad.cp_size = 3;  // 16 is not divisible by 6
  EXPECT_THROW(BatchLoader(src, bad, options(0)), Error);
}

TEST(BatchLoader, PipelineStagesReadOnlyWhatTheyUse) {
  auto src = std::make_shared<CountingSource>(4);
  LoaderLayout first, middle, last;
  first.needs_labels = false;
  middle.needs_tokens = middle.needs_labels = false;
  last.needs_tokens = false;
  BatchLoader a(src, first, options(0)), b(src, middle, options(0)), c(src, last, options(0));
  const RankBatch& ba = a.next();
  EXPECT_EQ(ba.tokens.size(), 4u);
  EXPECT_TRUE(ba.labels.empty() && ba.loss_mask.empty());
  const RankBatch& bb = b.next();
  EXPECT_TRUE(bb.tokens.empty() && bb.labels.empty());
  const RankBatch& bc = c.next();
  EXPECT_TRUE(bc.tokens.empty());
  EXPECT_EQ(bc.labels.size(), 4u);
  // Every stage advances alike.
  EXPECT_EQ(a.position(), 1);
  EXPECT_EQ(b.position(), 1);
  EXPECT_EQ(c.position(), 1);
}

TEST(BatchLoader, PrefetchedBatchesEqualSynchronousOnesAndSeekResumes) {
  auto src = std::make_shared<CountingSource>(32);
  LoaderLayout l;
  l.micro_batch = 2, l.num_microbatches = 3;
  BatchLoader sync(src, l, options(0)), ahead(src, l, options(3));
  std::vector<std::vector<int32_t>> uninterrupted;
  for (int i = 0; i < 10; ++i) {
    const RankBatch& x = sync.next();
    const RankBatch& y = ahead.next();
    EXPECT_EQ(x.first_sample, i * 6);
    EXPECT_EQ(y.first_sample, x.first_sample);
    EXPECT_EQ(x.tokens, y.tokens);
    EXPECT_EQ(x.labels, y.labels);
    uninterrupted.push_back(x.tokens);
  }
  // A fresh loader sought to consumed_samples = 4 batches continues identically.
  BatchLoader resumed(src, l, options(2));
  resumed.seek(24);
  for (int i = 4; i < 10; ++i) EXPECT_EQ(resumed.next().tokens, uninterrupted[static_cast<size_t>(i)]);
  // Seeking backwards drops what was prefetched.
  resumed.seek(6);
  EXPECT_EQ(resumed.next().tokens, uninterrupted[1]);
}

TEST(BatchLoader, ErrorsSurfaceForTheBatchTheyBelongTo) {
  auto src = std::make_shared<CountingSource>(4, 5);  // 5 samples, 2 per batch
  LoaderLayout l;
  l.micro_batch = 2;
  for (int64_t prefetch : {0, 2}) {
    BatchLoader loader(src, l, options(prefetch));
    EXPECT_NO_THROW(loader.next());
    EXPECT_NO_THROW(loader.next());
    try {
      loader.next();  // samples 4 and 5: 5 does not exist
      FAIL() << "expected an error";
    } catch (const Error& e) {
      EXPECT_EQ(e.status(), Status::kInvalidArgument);
      EXPECT_NE(std::string(e.what()).find("exhausted at 5"), std::string::npos) << e.what();
    }
    EXPECT_EQ(loader.position(), 4);  // the failed batch is not skipped
    EXPECT_THROW(loader.next(), Error);
    loader.seek(2);
    EXPECT_EQ(sample_of(loader.next().tokens[0]), 2);
  }
}

TEST(BatchLoader, TokensOutsideTheVocabularyAreCorruptData) {
  auto src = std::make_shared<CountingSource>(4);
  LoaderOptions o = options(1);
  o.vocab_size = 2004;  // sample 2 holds tokens 2000..2004
  BatchLoader loader(src, LoaderLayout{}, o);
  loader.next();
  loader.next();
  try {
    loader.next();
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_EQ(e.status(), Status::kCorruptData);
    const std::string msg = e.what();
    EXPECT_NE(msg.find("sample 2 token 4 is 2004"), std::string::npos) << msg;
    EXPECT_NE(msg.find("vocabulary [0, 2004)"), std::string::npos) << msg;
  }
}

TEST(BatchLoader, EndOfDocumentMasking) {
  auto src = std::make_shared<CountingSource>(8);
  LoaderOptions o = options(0);
  o.eod_mask_loss = true;
  o.eod_id = 3003;  // position 3 of sample 3
  BatchLoader loader(src, LoaderLayout{}, o);
  loader.seek(3);
  const RankBatch& b = loader.next();
  for (int64_t s = 0; s < 8; ++s) EXPECT_EQ(b.loss_mask[static_cast<size_t>(s)], s == 3 ? 0.0f : 1.0f) << s;
}

TEST(BatchLoader, RejectsImpossibleLayouts) {
  auto src = std::make_shared<CountingSource>(8);
  LoaderLayout l;
  l.dp_rank = 2, l.dp_size = 2;
  EXPECT_THROW(BatchLoader(src, l, options(0)), Error);
  l = LoaderLayout{};
  l.micro_batch = 0;
  EXPECT_THROW(BatchLoader(src, l, options(0)), Error);
  LoaderOptions o = options(0);
  o.vocab_size = 0;
  EXPECT_THROW(BatchLoader(src, LoaderLayout{}, o), Error);
  EXPECT_THROW(BatchLoader(nullptr, LoaderLayout{}, options(0)), Error);
}

}  // namespace
}  // namespace mpt::data
