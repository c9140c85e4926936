// The byte tokenizer, the embedded corpus text and the split rule.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "core/error.h"
#include "core/rng.h"
#include "data/byte_tokenizer.h"
#include "data/corpus.h"
#include "data/split.h"

namespace mpt::data {
namespace {

// Recorded so an accidental edit of src/data/corpus/corpus_text.inc is noticed; update
// both numbers (and say why) when the corpus changes on purpose.
constexpr size_t kCorpusBytes = 35277;
constexpr uint64_t kCorpusFnv1a = 0xac84b81058441370ull;
constexpr size_t kCorpusDocuments = 12;

template <typename Fn>
Status status_of(Fn&& fn) {
  try {
    fn();
  } catch (const Error& e) {
    return e.status();
  }
  return Status::kOk;
}

TEST(ByteTokenizer, RoundTripsEveryByte) {
  std::string text;
  for (int b = 0; b < 256; ++b) text.push_back(static_cast<char>(b));
  std::vector<int32_t> ids = byte_encode(text);
  ASSERT_EQ(ids.size(), 256u);
  for (int b = 0; b < 256; ++b) EXPECT_EQ(ids[b], b);
  EXPECT_EQ(byte_decode(ids.data(), static_cast<int64_t>(ids.size())), text);
  EXPECT_EQ(byte_decode(nullptr, 0), "");
}

TEST(ByteTokenizer, EndOfDocumentDecodesToABlankLine) {
  std::vector<int32_t> ids = {'a', kByteEod, 'b', kByteEod};
  EXPECT_EQ(byte_decode(ids.data(), 4), "a\n\nb\n\n");
  EXPECT_EQ(kByteVocabSize, kByteEod + 1);
}

TEST(ByteTokenizer, RejectsIdsOutsideTheVocabulary) {
  for (int32_t bad : {-1, 257, 1 << 20}) {
    std::vector<int32_t> ids = {'x', 'y', bad};
    try {
      byte_decode(ids.data(), 3);
      FAIL() << "id " << bad << " accepted";
    } catch (const Error& e) {
      EXPECT_EQ(e.status(), Status::kInvalidArgument);
      EXPECT_NE(std::string(e.what()).find("offset 2"), std::string::npos) << e.what();
    }
  }
}

TEST(EmbeddedCorpus, SizeAndChecksumAreRecorded) {
  std::string_view text = embedded_corpus();
  EXPECT_EQ(text.size(), kCorpusBytes);
  EXPECT_EQ(hash_name(text), kCorpusFnv1a) << std::hex << "0x" << hash_name(text);
  EXPECT_EQ(corpus_documents().size(), kCorpusDocuments);
}

TEST(EmbeddedCorpus, IsPlainAsciiProseInSeveralDocuments) {
  std::string_view text = embedded_corpus();
  EXPECT_GE(text.size(), 24u * 1024);
  EXPECT_LE(text.size(), 40u * 1024);
  for (size_t i = 0; i < text.size(); ++i) {
    char c = text[i];
    ASSERT_TRUE((c >= 32 && c < 127) || c == '\n' || c == kDocumentSeparator) << "byte " << int(c) << " at " << i;
  }
  std::vector<std::string_view> docs = corpus_documents();
  ASSERT_GE(docs.size(), 8u);
  for (std::string_view doc : docs) {
    EXPECT_GE(doc.size(), 1500u);
    EXPECT_EQ(doc.find(kDocumentSeparator), std::string_view::npos);
    EXPECT_NE(doc.find(". "), std::string_view::npos);  // sentences, not word lists
    EXPECT_NE(doc.find("\n\n"), std::string_view::npos);  // paragraphs
  }
}

TEST(EmbeddedCorpus, TokensAreDocumentsEachFollowedByEod) {
  std::string_view text = embedded_corpus();
  std::vector<int32_t> expected;
  for (char c : text) expected.push_back(c == kDocumentSeparator ? kByteEod : static_cast<unsigned char>(c));
  expected.push_back(kByteEod);
  EXPECT_EQ(corpus_tokens(), expected);
}

TEST(Split, ParsesMegatronWeights) {
  auto w = parse_split_weights("969,30,1");
  EXPECT_DOUBLE_EQ(w[0], 0.969);
  EXPECT_DOUBLE_EQ(w[1], 0.030);
  EXPECT_DOUBLE_EQ(w[2], 0.001);
  w = parse_split_weights("90/10");
  EXPECT_DOUBLE_EQ(w[0], 0.9);
  EXPECT_DOUBLE_EQ(w[1], 0.1);
  EXPECT_DOUBLE_EQ(w[2], 0.0);
  w = parse_split_weights(" 2 , 1 , 1 ");
  EXPECT_DOUBLE_EQ(w[0], 0.5);
  EXPECT_DOUBLE_EQ(w[2], 0.25);
}

TEST(Split, RejectsMalformedWeightsNamingTheKey) {
  for (const char* bad : {"", "a,b", "90,,10", "-1,2", "0,0,0", "1,2,3,4", "1e999"}) {
    try {
      parse_split_weights(bad);
      FAIL() << "'" << bad << "' accepted";
    } catch (const Error& e) {
      EXPECT_EQ(e.status(), Status::kInvalidConfig) << bad;
      EXPECT_NE(std::string(e.what()).find("dataset.split"), std::string::npos) << e.what();
    }
  }
}

TEST(Split, BoundariesFollowMegatronRounding) {
  using B = std::array<int64_t, 4>;
  EXPECT_EQ(split_boundaries(parse_split_weights("969,30,1"), 1000), (B{0, 969, 999, 1000}));
  // Thirds of 10 round to 3 each; the shortfall of 1 moves every boundary up, as Megatron does.
  EXPECT_EQ(split_boundaries(parse_split_weights("1,1,1"), 10), (B{0, 4, 7, 10}));
  EXPECT_EQ(split_boundaries(parse_split_weights("90,10,0"), 0), (B{0, 0, 0, 0}));
  EXPECT_EQ(split_boundaries(parse_split_weights("0,1,0"), 5), (B{0, 0, 5, 5}));
  EXPECT_EQ(status_of([] { split_boundaries(parse_split_weights("1"), -1); }), Status::kInvalidArgument);
  EXPECT_STREQ(split_name(Split::kValid), "valid");
}

}  // namespace
}  // namespace mpt::data
