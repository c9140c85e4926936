// Megatron's indexed dataset: the reader against fixtures written by an independent Python
// writer (tests/data/indexed/make_fixtures.py), the builder byte for byte against the same
// files, round trips, merging, and every kind of corruption the reader must reject.
#include <gtest/gtest.h>
#include <stdlib.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <string>
#include <tuple>
#include <vector>

#include "core/error.h"
#include "data/indexed_dataset.h"
#include "test_errors.h"

namespace mpt::data {
namespace {

namespace fs = std::filesystem;
using Documents = std::vector<std::vector<std::vector<int64_t>>>;

const std::string kFixtures = std::string(MPT_SOURCE_DIR) + "/tests/data/indexed/";

const nlohmann::json& manifest() {
  static const nlohmann::json m = [] {
    std::ifstream in(kFixtures + "manifest.json");
    if (!in) throw std::runtime_error("cannot open " + kFixtures + "manifest.json");
    return nlohmann::json::parse(in);
  }();
  return m;
}

std::string file_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot open " + path);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

void write_file(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  if (!out) throw std::runtime_error("cannot write " + path);
}

// A fresh directory, removed with everything in it.
class TempDir {
 public:
  TempDir() {
    const char* base = std::getenv("TMPDIR");
    std::string tmpl = std::string(base != nullptr && *base != '\0' ? base : "/tmp") + "/mpt_indexed_XXXXXX";
    if (::mkdtemp(tmpl.data()) == nullptr) throw std::runtime_error("mkdtemp failed for " + tmpl);
    path_ = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  std::string operator/(const std::string& name) const { return path_ + "/" + name; }
  std::vector<std::string> entries() const {
    std::vector<std::string> names;
    for (const auto& e : fs::directory_iterator(path_)) names.push_back(e.path().filename().string());
    std::sort(names.begin(), names.end());
    return names;
  }

 private:
  std::string path_;
};

Documents documents_of(const nlohmann::json& entry) { return entry.at("documents").get<Documents>(); }

TokenDType dtype_of(const nlohmann::json& entry) {
  TokenDType d{};
  const std::string name = entry.at("dtype").get<std::string>();
  if (!dtype_from_name(name, &d)) throw std::runtime_error("unknown dtype " + name + " in the manifest");
  return d;
}

std::vector<std::vector<int64_t>> sequences_of(const Documents& docs) {
  std::vector<std::vector<int64_t>> seqs;
  for (const auto& doc : docs) seqs.insert(seqs.end(), doc.begin(), doc.end());
  return seqs;
}

::testing::AssertionResult contains(const std::string& text, const std::string& part) {
  if (text.find(part) != std::string::npos) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "'" << text << "' does not contain '" << part << "'";
}

bool fits_int32(int64_t v) {
  return v >= std::numeric_limits<int32_t>::min() && v <= std::numeric_limits<int32_t>::max();
}

// Checks every observable of `ds` against the documents it should hold.
void expect_contents(const IndexedDataset& ds, TokenDType dtype, const Documents& docs) {
  const auto seqs = sequences_of(docs);
  const int64_t itemsize = static_cast<int64_t>(dtype_size(dtype));
  ASSERT_EQ(ds.dtype(), dtype);
  ASSERT_EQ(ds.num_sequences(), static_cast<int64_t>(seqs.size()));
  ASSERT_EQ(ds.num_documents(), static_cast<int64_t>(docs.size()));

  int64_t doc_start = 0;
  EXPECT_EQ(ds.document_indices()[0], 0);
  for (size_t d = 0; d < docs.size(); ++d) {
    doc_start += static_cast<int64_t>(docs[d].size());
    EXPECT_EQ(ds.document_indices()[d + 1], doc_start) << "document " << d;
  }

  int64_t pointer = 0, tokens = 0, max_token = -1;
  for (size_t s = 0; s < seqs.size(); ++s) {
    const auto& want = seqs[s];
    const int64_t n = static_cast<int64_t>(want.size());
    EXPECT_EQ(ds.sequence_lengths()[s], n) << "sequence " << s;
    EXPECT_EQ(ds.sequence_pointers()[s], pointer) << "sequence " << s;
    pointer += n * itemsize;
    tokens += n;
    for (int64_t v : want) max_token = std::max(max_token, v);

    std::vector<int64_t> got64(want.size() + 1, -7);
    ds.read(static_cast<int64_t>(s), 0, n, got64.data());
    EXPECT_EQ(std::vector<int64_t>(got64.begin(), got64.begin() + n), want) << "sequence " << s;
    EXPECT_EQ(got64[n], -7) << "read wrote past the requested count";

    // int32: exact where every token fits, else an error naming the first that does not.
    std::vector<int32_t> got32(want.size());
    const auto bad = std::find_if(want.begin(), want.end(), [](int64_t v) { return !fits_int32(v); });
    if (bad == want.end()) {
      ds.read(static_cast<int64_t>(s), 0, n, got32.data());
      EXPECT_EQ(std::vector<int64_t>(got32.begin(), got32.end()), want) << "sequence " << s;
    } else {
      const Error e = error_of([&] { ds.read(static_cast<int64_t>(s), 0, n, got32.data()); });
      EXPECT_EQ(e.status(), Status::kCorruptData);
      EXPECT_TRUE(contains(e.what(), ds.bin_path()));
      EXPECT_TRUE(contains(e.what(), "sequence " + std::to_string(s) + ", token " +
                                         std::to_string(bad - want.begin())));
    }

    // Every sub-range of the sequence.
    for (int64_t off = 0; off <= n; ++off) {
      for (int64_t cnt = 0; off + cnt <= n; ++cnt) {
        std::vector<int64_t> part(static_cast<size_t>(cnt));
        ds.read(static_cast<int64_t>(s), off, cnt, part.data());
        EXPECT_EQ(part, std::vector<int64_t>(want.begin() + off, want.begin() + off + cnt));
      }
    }
  }
  EXPECT_EQ(ds.num_tokens(), tokens);
  EXPECT_EQ(ds.bin_bytes(), tokens * itemsize);
  EXPECT_EQ(ds.max_token(), max_token);
}

void build(const std::string& prefix, TokenDType dtype, const Documents& docs, bool overwrite = false) {
  IndexedDatasetBuilder builder(prefix, dtype, overwrite);
  for (const auto& doc : docs) {
    for (const auto& seq : doc) builder.add_item(seq.data(), static_cast<int64_t>(seq.size()));
    builder.end_document();
  }
  builder.finalize();
}

TEST(IndexedDatasetDType, CodesSizesAndNames) {
  const std::map<std::string, std::pair<int, size_t>> expected = {
      {"uint8", {1, 1}}, {"int8", {2, 1}},    {"int16", {3, 2}},   {"int32", {4, 4}},
      {"int64", {5, 8}}, {"float64", {6, 8}}, {"float32", {7, 4}}, {"uint16", {8, 2}}};
  for (const auto& [name, code_size] : expected) {
    TokenDType by_name{}, by_code{};
    ASSERT_TRUE(dtype_from_name(name, &by_name)) << name;
    ASSERT_TRUE(dtype_from_code(static_cast<uint8_t>(code_size.first), &by_code)) << name;
    EXPECT_EQ(by_name, by_code) << name;
    EXPECT_EQ(dtype_size(by_name), code_size.second) << name;
    EXPECT_EQ(std::string(dtype_name(by_name)), name);
  }
  TokenDType d = TokenDType::kInt64;
  EXPECT_FALSE(dtype_from_code(0, &d));
  EXPECT_FALSE(dtype_from_code(9, &d));
  EXPECT_FALSE(dtype_from_name("bfloat16", &d));
  EXPECT_EQ(d, TokenDType::kInt64);
  EXPECT_EQ(optimal_dtype(257), TokenDType::kUInt16);
  EXPECT_EQ(optimal_dtype(65499), TokenDType::kUInt16);
  EXPECT_EQ(optimal_dtype(65500), TokenDType::kInt32);
  EXPECT_EQ(optimal_dtype(128256), TokenDType::kInt32);
}

TEST(IndexedDatasetRead, FixturesHoldTheManifestContents) {
  const auto& valid = manifest().at("valid");
  ASSERT_GE(valid.size(), 10u);
  std::set<std::string> dtypes;
  for (const auto& entry : valid) {
    const std::string name = entry.at("name");
    dtypes.insert(entry.at("dtype").get<std::string>());
    for (bool mmap_bin : {true, false}) {
      SCOPED_TRACE(name + (mmap_bin ? " (mmap)" : " (pread)"));
      const IndexedDataset ds(kFixtures + name, mmap_bin);
      expect_contents(ds, dtype_of(entry), documents_of(entry));
      EXPECT_EQ(ds.idx_bytes(), static_cast<int64_t>(fs::file_size(ds.idx_path())));
    }
  }
  EXPECT_EQ(dtypes.size(), 8u) << "every dtype has a fixture";
}

TEST(IndexedDatasetRead, EmptyDatasetAndSequenceModes) {
  const IndexedDataset empty(kFixtures + "valid_empty");
  EXPECT_EQ(empty.num_sequences(), 0);
  EXPECT_EQ(empty.num_documents(), 0);
  EXPECT_EQ(empty.num_tokens(), 0);
  EXPECT_EQ(empty.bin_bytes(), 0);
  EXPECT_EQ(empty.max_token(), -1);

  // One trailing int8 per sequence is accepted and ignored.
  const IndexedDataset modes(kFixtures + "valid_sequence_modes");
  EXPECT_EQ(modes.idx_bytes(), kIndexHeaderBytes + 3 * 12 + 3 * 8 + 3);
  int32_t tokens[2];
  modes.read(0, 0, 2, tokens);
  EXPECT_EQ(tokens[0], 10);
  EXPECT_EQ(tokens[1], 11);
}

TEST(IndexedDatasetRead, RangesOutsideASequenceAreInvalidArguments) {
  const IndexedDataset ds(kFixtures + "valid_uint16");  // sequence 0 has 3 tokens
  int32_t out[8];
  for (auto [seq, off, cnt] : std::vector<std::tuple<int64_t, int64_t, int64_t>>{
           {-1, 0, 1}, {ds.num_sequences(), 0, 0}, {0, 0, 4}, {0, 4, 0}, {0, -1, 1}, {0, 1, -1},
           {0, 2, std::numeric_limits<int64_t>::max()}}) {
    const Error e = error_of([&] { ds.read(seq, off, cnt, out); });
    EXPECT_EQ(e.status(), Status::kInvalidArgument) << seq << " " << off << " " << cnt << ": " << e.what();
  }
  ds.read(0, 3, 0, out);  // an empty range at the end is fine
}

TEST(IndexedDatasetRead, MissingFilesAreIoErrorsNamingThePath) {
  TempDir tmp;
  Error e = error_of([&] { IndexedDataset ds(tmp / "nothing"); });
  EXPECT_EQ(e.status(), Status::kIoError);
  EXPECT_TRUE(contains(e.what(), tmp / "nothing.idx"));
  EXPECT_TRUE(contains(e.what(), "No such file or directory"));

  // A good index without its .bin.
  write_file(tmp / "half.idx", file_bytes(kFixtures + "valid_uint16.idx"));
  for (bool mmap_bin : {true, false}) {
    e = error_of([&] { IndexedDataset ds(tmp / "half", mmap_bin); });
    EXPECT_EQ(e.status(), Status::kIoError);
    EXPECT_TRUE(contains(e.what(), tmp / "half.bin"));
  }
}

// Each corrupted fixture: which file the message names and what else it must say.
struct Expected {
  std::string file;  // ".idx" or ".bin"
  std::vector<std::string> parts;
};

const std::map<std::string, Expected>& expected_errors() {
  static const std::map<std::string, Expected> m = {
      {"bad_magic", {".idx", {"magic", "MMIDIDX"}}},
      {"bad_version", {".idx", {"version = 2, expected 1"}}},
      {"bad_dtype", {".idx", {"dtype code = 9"}}},
      {"idx_shorter_than_header", {".idx", {"20 bytes", "header"}}},
      {"seq_count_too_large", {".idx", {"sequence count = 1000000", "does not fit"}}},
      {"seq_count_overflow", {".idx", {"sequence count = 18446744073709551615", "does not fit"}}},
      {"doc_count_overflow", {".idx", {"document count = 9223372036854775808", "does not fit"}}},
      {"doc_count_zero", {".idx", {"document count = 0"}}},
      {"truncated_idx", {".idx", {"document count = 4", "truncated"}}},
      {"trailing_bytes", {".idx", {"3 trailing bytes"}}},
      {"negative_length", {".idx", {"sequence_lengths[1] = -1"}}},
      {"pointer_past_end", {".idx", {"sequence_pointers[3] = 4096", "past the end of", ".bin"}}},
      {"pointer_not_prefix_sum", {".idx", {"sequence_pointers[2] = 10, expected 8", "x 2 bytes"}}},
      {"doc_indices_not_starting_at_zero", {".idx", {"document_indices[0] = 1, expected 0"}}},
      {"doc_indices_decreasing", {".idx", {"document_indices[2] = 1", "document_indices[1] = 2"}}},
      {"doc_indices_not_ending_at_count", {".idx", {"document_indices[3] = 3, expected 4"}}},
      {"truncated_bin", {".bin", {"12 bytes, expected 14", "truncated", "sequence_lengths"}}},
      {"bin_too_long", {".bin", {"16 bytes, expected 14"}}},
      {"float_token_fraction", {".bin", {"1.5 is not an integer"}}},
      {"float_token_too_large", {".bin", {"is not an integer token id"}}},
      {"float_token_nan", {".bin", {"nan"}}},
  };
  return m;
}

TEST(IndexedDatasetCorrupt, EveryFixtureIsRejectedNamingTheFileAndField) {
  const auto& corrupt = manifest().at("corrupt");
  std::set<std::string> seen;
  for (const auto& entry : corrupt) {
    const std::string name = entry.at("name");
    seen.insert(name);
    const auto it = expected_errors().find(name);
    ASSERT_NE(it, expected_errors().end()) << "no expectation for corrupted fixture " << name;
    const Expected& want = it->second;
    const std::string prefix = kFixtures + name;
    for (bool mmap_bin : {true, false}) {
      SCOPED_TRACE(name + (mmap_bin ? " (mmap)" : " (pread)") + ": " + entry.at("what").get<std::string>());
      Error e(Status::kOk, "");
      if (entry.at("fails") == "open") {
        e = error_of([&] { IndexedDataset ds(prefix, mmap_bin); });
      } else {
        ASSERT_EQ(entry.at("fails"), "read");
        const IndexedDataset ds(prefix, mmap_bin);
        const int64_t seq = entry.at("sequence"), token = entry.at("token");
        std::vector<int64_t> out(static_cast<size_t>(ds.sequence_lengths()[seq]));
        e = error_of([&] { ds.read(seq, 0, static_cast<int64_t>(out.size()), out.data()); });
        EXPECT_TRUE(contains(e.what(), "sequence " + std::to_string(seq) + ", token " + std::to_string(token)));
        // The token alone fails the same way, to int32 too; the tokens before it read fine.
        int32_t one = 0;
        const Error e32 = error_of([&] { ds.read(seq, token, 1, &one); });
        EXPECT_EQ(e32.status(), Status::kCorruptData);
        if (token > 0) ds.read(seq, 0, token, out.data());
        const Error scan = error_of([&] { (void)ds.max_token(); });
        EXPECT_EQ(scan.status(), Status::kCorruptData);
      }
      EXPECT_EQ(e.status(), Status::kCorruptData) << e.what();
      EXPECT_TRUE(contains(e.what(), prefix + want.file + ":"));
      for (const auto& part : want.parts) EXPECT_TRUE(contains(e.what(), part));
    }
  }
  EXPECT_EQ(seen.size(), expected_errors().size()) << "an expectation has no fixture";
}

TEST(IndexedDatasetCorrupt, HugeLengthSumIsRejectedWithoutOverflow) {
  // 2^31 - 1 tokens of int64 per sequence: the lengths claim far more than the .bin holds.
  TempDir tmp;
  std::string idx = file_bytes(kFixtures + "valid_int64.idx");
  const int32_t huge = std::numeric_limits<int32_t>::max();
  for (int s = 0; s < 5; ++s) std::memcpy(&idx[kIndexHeaderBytes + 4 * s], &huge, 4);
  write_file(tmp / "huge.idx", idx);
  write_file(tmp / "huge.bin", file_bytes(kFixtures + "valid_int64.bin"));
  const Error e = error_of([&] { IndexedDataset ds(tmp / "huge"); });
  EXPECT_EQ(e.status(), Status::kCorruptData);
  EXPECT_TRUE(contains(e.what(), tmp / "huge.bin"));
  EXPECT_TRUE(contains(e.what(), "64 bytes, expected"));
}

TEST(IndexedDatasetWrite, WritesTheFixturesByteForByte) {
  TempDir tmp;
  int checked = 0;
  for (const auto& entry : manifest().at("valid")) {
    if (entry.at("sequence_modes").get<bool>()) continue;  // the builder writes no modes
    const std::string name = entry.at("name");
    SCOPED_TRACE(name);
    const Documents docs = documents_of(entry);
    build(tmp / name, dtype_of(entry), docs);
    EXPECT_EQ(file_bytes(tmp / (name + ".idx")), file_bytes(kFixtures + name + ".idx"));
    EXPECT_EQ(file_bytes(tmp / (name + ".bin")), file_bytes(kFixtures + name + ".bin"));

    // The int32 overload writes the same bytes when the values fit.
    bool all_fit = true;
    for (const auto& seq : sequences_of(docs))
      for (int64_t v : seq) all_fit = all_fit && fits_int32(v);
    if (!all_fit) continue;
    {
      IndexedDatasetBuilder builder(tmp / (name + "_32"), dtype_of(entry));
      for (const auto& doc : docs) {
        for (const auto& seq : doc) {
          const std::vector<int32_t> narrow(seq.begin(), seq.end());
          builder.add_item(narrow.data(), static_cast<int64_t>(narrow.size()));
        }
        builder.end_document();
      }
      builder.finalize();
    }
    EXPECT_EQ(file_bytes(tmp / (name + "_32.idx")), file_bytes(kFixtures + name + ".idx"));
    EXPECT_EQ(file_bytes(tmp / (name + "_32.bin")), file_bytes(kFixtures + name + ".bin"));
    ++checked;
  }
  EXPECT_GE(checked, 7);  // every dtype but int64 (whose values exceed int32), plus the empty one
}

// Deterministic values spanning a dtype's exactly representable range.
std::vector<int64_t> sample_values(TokenDType dtype, uint64_t& state, int64_t n) {
  int64_t lo = 0, hi = 0;
  switch (dtype) {
    case TokenDType::kUInt8: lo = 0, hi = 255; break;
    case TokenDType::kInt8: lo = -128, hi = 127; break;
    case TokenDType::kInt16: lo = -32768, hi = 32767; break;
    case TokenDType::kUInt16: lo = 0, hi = 65535; break;
    case TokenDType::kInt32: lo = std::numeric_limits<int32_t>::min(), hi = std::numeric_limits<int32_t>::max(); break;
    case TokenDType::kInt64: lo = std::numeric_limits<int64_t>::min(), hi = std::numeric_limits<int64_t>::max(); break;
    case TokenDType::kFloat32: lo = -(int64_t{1} << 24), hi = int64_t{1} << 24; break;
    case TokenDType::kFloat64: lo = -(int64_t{1} << 53), hi = int64_t{1} << 53; break;
  }
  std::vector<int64_t> v;
  for (int64_t i = 0; i < n; ++i) {
    state = state * 6364136223846793005ull + 1442695040888963407ull;
    const uint64_t span = static_cast<uint64_t>(hi) - static_cast<uint64_t>(lo);
    const uint64_t r = span == std::numeric_limits<uint64_t>::max() ? state : state % (span + 1);
    v.push_back(static_cast<int64_t>(static_cast<uint64_t>(lo) + r));
  }
  if (n >= 2) v[0] = lo, v[1] = hi;
  return v;
}

TEST(IndexedDatasetWrite, RoundTripsEveryDType) {
  TempDir tmp;
  for (uint8_t code = 1; code <= 8; ++code) {
    TokenDType dtype{};
    ASSERT_TRUE(dtype_from_code(code, &dtype));
    SCOPED_TRACE(dtype_name(dtype));
    uint64_t state = code;
    Documents docs;
    for (int d = 0; d < 5; ++d) {
      docs.emplace_back();
      for (int s = 0; s <= d % 3; ++s) docs.back().push_back(sample_values(dtype, state, (d * 7 + s * 3) % 11));
    }
    docs[2].emplace_back();  // an empty sequence
    docs.emplace_back();     // and an empty document
    const std::string prefix = tmp / dtype_name(dtype);
    build(prefix, dtype, docs);
    for (bool mmap_bin : {true, false}) expect_contents(IndexedDataset(prefix, mmap_bin), dtype, docs);
  }
}

TEST(IndexedDatasetWrite, ClosesTheLastDocumentAtFinalize) {
  TempDir tmp;
  {
    IndexedDatasetBuilder builder(tmp / "open", TokenDType::kUInt16);
    const int32_t a[] = {1, 2}, b[] = {3};
    builder.add_item(a, 2);
    builder.end_document();
    builder.add_item(b, 1);
    builder.add_item(a, 2);
    EXPECT_EQ(builder.num_sequences(), 3);
    EXPECT_EQ(builder.num_tokens(), 5);
    builder.finalize();
  }
  expect_contents(IndexedDataset(tmp / "open"), TokenDType::kUInt16, {{{1, 2}}, {{3}, {1, 2}}});
}

TEST(IndexedDatasetWrite, RejectsValuesTheDTypeCannotHold) {
  TempDir tmp;
  const std::vector<std::pair<TokenDType, int64_t>> bad = {
      {TokenDType::kUInt8, 256},
      {TokenDType::kUInt8, -1},
      {TokenDType::kInt8, 128},
      {TokenDType::kInt8, -129},
      {TokenDType::kInt16, 32768},
      {TokenDType::kUInt16, 65536},
      {TokenDType::kUInt16, -1},
      {TokenDType::kInt32, int64_t{1} << 31},
      {TokenDType::kInt32, -(int64_t{1} << 31) - 1},
      {TokenDType::kFloat32, (int64_t{1} << 24) + 1},
      {TokenDType::kFloat32, std::numeric_limits<int64_t>::max()},
      {TokenDType::kFloat64, (int64_t{1} << 53) + 1},
      {TokenDType::kFloat64, std::numeric_limits<int64_t>::max()},
  };
  for (const auto& [dtype, value] : bad) {
    SCOPED_TRACE(std::string(dtype_name(dtype)) + " " + std::to_string(value));
    IndexedDatasetBuilder builder(tmp / "bad", dtype, /*overwrite=*/true);
    const int64_t tokens[] = {1, 2, value};
    const Error e = error_of([&] { builder.add_item(tokens, 3); });
    EXPECT_EQ(e.status(), Status::kInvalidArgument);
    EXPECT_TRUE(contains(e.what(), std::to_string(value)));
    EXPECT_TRUE(contains(e.what(), dtype_name(dtype)));
    EXPECT_TRUE(contains(e.what(), "token 2 of sequence 0"));
  }
  // The extremes that do fit.
  IndexedDatasetBuilder builder(tmp / "good", TokenDType::kFloat32);
  const int64_t ok[] = {int64_t{1} << 40, -(int64_t{1} << 24), std::numeric_limits<int64_t>::min()};
  builder.add_item(ok, 3);
  builder.finalize();
  std::vector<int64_t> back(3);
  IndexedDataset(tmp / "good").read(0, 0, 3, back.data());
  EXPECT_EQ(back, std::vector<int64_t>(std::begin(ok), std::end(ok)));
}

TEST(IndexedDatasetWrite, AddIndexAppendsSequencesAndDocuments) {
  TempDir tmp;
  const Documents a = {{{1, 2, 3}, {4}}, {{5}}};
  const Documents b = {{{6, 7}}, {}, {{8}, {}, {9, 10}}};
  build(tmp / "a", TokenDType::kUInt16, a);
  build(tmp / "b", TokenDType::kUInt16, b);
  {
    IndexedDatasetBuilder merged(tmp / "merged", TokenDType::kUInt16);
    const int64_t first[] = {100, 101};
    merged.add_item(first, 2);  // not closed: it becomes its own document
    merged.add_index(IndexedDataset(tmp / "a"));
    merged.add_index(IndexedDataset(tmp / "b", /*mmap_bin=*/false));
    merged.add_index(IndexedDataset(kFixtures + "valid_empty"));
    merged.add_index(IndexedDataset(kFixtures + "valid_uint16"));
    merged.finalize();
  }
  Documents want = {{{100, 101}}};
  want.insert(want.end(), a.begin(), a.end());
  want.insert(want.end(), b.begin(), b.end());
  for (const auto& entry : manifest().at("valid"))
    if (entry.at("name") == "valid_uint16") for (const auto& doc : documents_of(entry)) want.push_back(doc);
  expect_contents(IndexedDataset(tmp / "merged"), TokenDType::kUInt16, want);

  IndexedDatasetBuilder other(tmp / "other", TokenDType::kInt32);
  const Error e = error_of([&] { other.add_index(IndexedDataset(tmp / "a")); });
  EXPECT_EQ(e.status(), Status::kInvalidArgument);
  EXPECT_TRUE(contains(e.what(), "uint16"));
  EXPECT_TRUE(contains(e.what(), "int32"));
}

TEST(IndexedDatasetWrite, RefusesToOverwriteUnlessAsked) {
  TempDir tmp;
  build(tmp / "ds", TokenDType::kUInt8, {{{1, 2, 3}}});
  const std::string idx = file_bytes(tmp / "ds.idx"), bin = file_bytes(tmp / "ds.bin");

  const Error e = error_of([&] { IndexedDatasetBuilder b(tmp / "ds", TokenDType::kUInt8); });
  EXPECT_EQ(e.status(), Status::kIoError);
  EXPECT_TRUE(contains(e.what(), tmp / "ds.bin"));
  EXPECT_TRUE(contains(e.what(), "already exists"));
  EXPECT_EQ(file_bytes(tmp / "ds.idx"), idx);
  EXPECT_EQ(file_bytes(tmp / "ds.bin"), bin);

  // Either file alone is enough to refuse.
  fs::remove(tmp / "ds.bin");
  const Error e2 = error_of([&] { IndexedDatasetBuilder b(tmp / "ds", TokenDType::kUInt8); });
  EXPECT_TRUE(contains(e2.what(), tmp / "ds.idx"));
  write_file(tmp / "ds.bin", bin);

  build(tmp / "ds", TokenDType::kUInt8, {{{9}}, {{8, 7}}}, /*overwrite=*/true);
  expect_contents(IndexedDataset(tmp / "ds"), TokenDType::kUInt8, {{{9}}, {{8, 7}}});
  EXPECT_EQ(tmp.entries(), (std::vector<std::string>{"ds.bin", "ds.idx"}));
}

TEST(IndexedDatasetWrite, LeavesNoFilesWithoutFinalize) {
  TempDir tmp;
  {
    IndexedDatasetBuilder builder(tmp / "ds", TokenDType::kInt32);
    const int32_t t[] = {1, 2, 3};
    builder.add_item(t, 3);
    builder.end_document();
    EXPECT_EQ(tmp.entries(), std::vector<std::string>{"ds.bin.tmp"});  // nothing under the final names yet
  }
  EXPECT_TRUE(tmp.entries().empty());

  // A failed add leaves nothing behind either, and an existing dataset survives an aborted overwrite.
  build(tmp / "kept", TokenDType::kUInt8, {{{5}}});
  const std::string bin = file_bytes(tmp / "kept.bin"), idx = file_bytes(tmp / "kept.idx");
  {
    IndexedDatasetBuilder builder(tmp / "kept", TokenDType::kUInt8, /*overwrite=*/true);
    const int64_t t[] = {1, 1000};
    EXPECT_EQ(error_of([&] { builder.add_item(t, 2); }).status(), Status::kInvalidArgument);
  }
  EXPECT_EQ(tmp.entries(), (std::vector<std::string>{"kept.bin", "kept.idx"}));
  EXPECT_EQ(file_bytes(tmp / "kept.bin"), bin);
  EXPECT_EQ(file_bytes(tmp / "kept.idx"), idx);
}

}  // namespace
}  // namespace mpt::data
