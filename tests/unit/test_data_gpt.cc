// Megatron's GPT dataset indices, blends, splits and the dataset builder. Exactness is
// checked against tests/data/gpt_reference/reference.json, written by make_reference.py
// beside it from numpy; the properties below hold whatever Megatron does.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <numeric>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "core/error.h"
#include "data/blended_dataset.h"
#include "data/dataset_builder.h"
#include "data/gpt_dataset.h"
#include "data/index_cache.h"
#include "data/indexed_dataset.h"
#include "data/numpy_random.h"
#include "test_errors.h"

namespace mpt::data {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using Tokens = std::vector<int32_t>;

const json& reference() {
  static const json ref = [] {
    std::ifstream in(std::string(MPT_SOURCE_DIR) + "/tests/data/gpt_reference/reference.json");
    EXPECT_TRUE(in.good()) << "tests/data/gpt_reference/reference.json is missing";
    return json::parse(in);
  }();
  return ref;
}

// A fresh directory under the system temp dir, removed with everything in it.
class TempDir {
 public:
  TempDir() {
    static std::atomic<int> counter{0};
    path_ = fs::temp_directory_path() /
            ("mpt_gpt_test_" + std::to_string(::getpid()) + "_" + std::to_string(counter.fetch_add(1)) + "_" +
             std::to_string(std::random_device{}()));
    fs::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  std::string operator/(const std::string& name) const { return (path_ / name).string(); }
  const fs::path& path() const { return path_; }

 private:
  fs::path path_;
};

// The token the reference uses for position k of sequence `seq` of dataset `dataset`.
int32_t ref_token(int64_t dataset, int64_t seq, int64_t k) {
  return static_cast<int32_t>((dataset * 100003 + seq * 1009 + k * 7) % 60000);
}

// Writes PREFIX.bin/.idx holding one sequence per length, two sequences per document.
std::string write_dataset(const TempDir& dir, const std::string& name, const std::vector<int32_t>& lengths,
                          int64_t dataset_id = 0) {
  const std::string prefix = dir / name;
  IndexedDatasetBuilder b(prefix, TokenDType::kUInt16);
  for (size_t s = 0; s < lengths.size(); ++s) {
    Tokens t(static_cast<size_t>(lengths[s]));
    for (int32_t k = 0; k < lengths[s]; ++k) t[static_cast<size_t>(k)] = ref_token(dataset_id, static_cast<int64_t>(s), k);
    b.add_item(t.data(), static_cast<int64_t>(t.size()));
    if (s % 2 == 1) b.end_document();
  }
  b.finalize();
  return prefix;
}

Tokens sample_of(const SampleSource& src, int64_t i) {
  Tokens out(static_cast<size_t>(src.seq_length() + 1), -7);
  src.sample(i, out.data());
  return out;
}

std::vector<int32_t> random_lengths(uint32_t seed, int64_t n, int32_t lo, int32_t hi) {
  std::mt19937 g(seed);
  std::uniform_int_distribution<int32_t> d(lo, hi);
  std::vector<int32_t> v(static_cast<size_t>(n));
  for (auto& x : v) x = d(g);
  return v;
}

template <typename T>
std::vector<T> as_vector(const json& j) {
  return j.get<std::vector<T>>();
}

// --- NumpyRandomState -----------------------------------------------------------------------

TEST(NumpyRandom, ShuffleMatchesNumpy) {
  int checked = 0;
  for (const json& c : reference()["rng"]) {
    if (c["kind"] != "shuffle") continue;
    const int64_t n = c["n"];
    std::vector<int64_t> a(static_cast<size_t>(n));
    std::iota(a.begin(), a.end(), 0);
    NumpyRandomState rng(c["seed"].get<uint32_t>());
    rng.shuffle(a.data(), n);
    EXPECT_EQ(a, as_vector<int64_t>(c["expected"])) << "seed " << c["seed"] << " n " << n;
    ++checked;
  }
  EXPECT_EQ(checked, 4);
}

TEST(NumpyRandom, IntervalMatchesNumpyRandintOnBothPaths) {
  int checked = 0;
  for (const json& c : reference()["rng"]) {
    if (c["kind"] != "interval") continue;
    NumpyRandomState rng(c["seed"].get<uint32_t>());
    const int per = c["draws_per_bound"];
    std::vector<std::string> got;
    for (const json& b : c["bounds"]) {
      const uint64_t max = std::stoull(b.get<std::string>());
      for (int k = 0; k < per; ++k) got.push_back(std::to_string(rng.interval(max)));
    }
    EXPECT_EQ(got, as_vector<std::string>(c["expected"])) << "seed " << c["seed"];
    ++checked;
  }
  EXPECT_EQ(checked, 2);
}

TEST(NumpyRandom, IntervalOfZeroDrawsNothing) {
  NumpyRandomState a(7), b(7);
  EXPECT_EQ(a.interval(0), 0u);
  EXPECT_EQ(a.next32(), b.next32());
}

// --- GPT indices ----------------------------------------------------------------------------

TEST(GPTIndices, MatchMegatronReference) {
  for (const json& c : reference()["gpt"]) {
    SCOPED_TRACE(c["name"].get<std::string>());
    const auto lengths = as_vector<int32_t>(c["lengths"]);
    std::optional<int64_t> ns;
    if (!c["num_samples"].is_null()) ns = c["num_samples"].get<int64_t>();
    const GPTIndices idx = build_gpt_indices(lengths.data(), c["begin"], c["end"], c["seq_length"], ns, c["seed"]);
    EXPECT_EQ(idx.num_epochs, c["num_epochs"].get<int64_t>());
    EXPECT_EQ(idx.tokens_per_epoch, c["tokens_per_epoch"].get<int64_t>());
    EXPECT_EQ(idx.separate_final_epoch, c["separate_final_epoch"].get<bool>());
    EXPECT_EQ(idx.document_index, as_vector<int32_t>(c["document_index"]));
    EXPECT_EQ(idx.sample_index, as_vector<int64_t>(c["sample_index"]));
    EXPECT_EQ(idx.shuffle_index, as_vector<int64_t>(c["shuffle_index"]));
  }
}

// Walking the sample index in order (no shuffle) cuts the document-index token stream into
// windows of seq_length + 1 tokens starting every seq_length tokens.
TEST(GPTIndices, SamplesTileTheDocumentStream) {
  struct Case {
    uint32_t seed;
    int64_t n, seq;
    std::optional<int64_t> samples;
    int32_t lo, hi;
  };
  for (const Case& c : {Case{1, 50, 7, std::nullopt, 0, 20}, Case{2, 30, 16, 200, 0, 40}, Case{3, 40, 3, 500, 0, 2},
                        Case{4, 9, 5, 77, 5, 6}, Case{5, 200, 64, 300, 0, 100}}) {
    SCOPED_TRACE(c.seed);
    const auto lengths = random_lengths(c.seed, c.n, c.lo, c.hi);
    const GPTIndices idx = build_gpt_indices(lengths.data(), 0, c.n, c.seq, c.samples, c.seed);
    auto token = [](int64_t s, int64_t k) { return static_cast<int32_t>(s * 1000 + k); };
    Tokens stream;
    for (int32_t s : idx.document_index)
      for (int32_t k = 0; k < lengths[static_cast<size_t>(s)]; ++k) stream.push_back(token(s, k));
    const int64_t n = idx.num_samples();
    ASSERT_EQ(static_cast<int64_t>(idx.sample_index.size()), 2 * (n + 1));
    EXPECT_GE(n, c.samples.value_or(0));
    EXPECT_LE(n * c.seq + 1, static_cast<int64_t>(stream.size()));
    EXPECT_GT((n + 1) * c.seq + 1, static_cast<int64_t>(stream.size()));  // no whole sample dropped
    Tokens previous;
    for (int64_t j = 0; j < n; ++j) {
      Tokens sample;
      const int64_t p0 = idx.sample_index[2 * j], o0 = idx.sample_index[2 * j + 1];
      const int64_t p1 = idx.sample_index[2 * j + 2], o1 = idx.sample_index[2 * j + 3];
      for (int64_t p = p0; p <= p1; ++p) {
        const int32_t s = idx.document_index[static_cast<size_t>(p)];
        const int64_t from = p == p0 ? o0 : 0, to = p == p1 ? o1 + 1 : lengths[static_cast<size_t>(s)];
        for (int64_t k = from; k < to; ++k) sample.push_back(token(s, k));
      }
      ASSERT_EQ(static_cast<int64_t>(sample.size()), c.seq + 1) << "sample " << j;
      EXPECT_TRUE(std::equal(sample.begin(), sample.end(), stream.begin() + j * c.seq)) << "sample " << j;
      if (j > 0) {
        EXPECT_EQ(sample.front(), previous.back()) << "sample " << j;
      }
      previous = sample;
    }
  }
}

TEST(GPTIndices, DocumentIndexHoldsEachSequenceOncePerEpoch) {
  const auto lengths = random_lengths(9, 40, 1, 30);
  for (int64_t samples : {10, 100, 200}) {
    const GPTIndices idx = build_gpt_indices(lengths.data(), 5, 35, 16, samples, 1234);
    std::map<int32_t, int64_t> count;
    for (int32_t d : idx.document_index) ++count[d];
    EXPECT_EQ(count.size(), 30u);
    for (const auto& [d, k] : count) {
      EXPECT_GE(d, 5);
      EXPECT_LT(d, 35);
      EXPECT_EQ(k, idx.num_epochs);
    }
    // The smallest number of epochs that holds the requested tokens.
    EXPECT_GE(idx.num_epochs * idx.tokens_per_epoch, samples * 16 + 1);
    EXPECT_LT((idx.num_epochs - 1) * idx.tokens_per_epoch, samples * 16 + 1);
    if (idx.separate_final_epoch) {
      std::set<int32_t> last(idx.document_index.end() - 30, idx.document_index.end());
      EXPECT_EQ(last.size(), 30u);
    }
  }
}

TEST(GPTIndices, ShuffleIsAPermutationFixedBySeed) {
  const auto lengths = random_lengths(3, 100, 0, 50);
  const GPTIndices a = build_gpt_indices(lengths.data(), 0, 100, 32, 400, 1234);
  const GPTIndices b = build_gpt_indices(lengths.data(), 0, 100, 32, 400, 1234);
  const GPTIndices c = build_gpt_indices(lengths.data(), 0, 100, 32, 400, 1235);
  std::vector<int64_t> sorted = a.shuffle_index;
  std::sort(sorted.begin(), sorted.end());
  std::vector<int64_t> range(sorted.size());
  std::iota(range.begin(), range.end(), 0);
  EXPECT_EQ(sorted, range);
  EXPECT_EQ(a.shuffle_index, b.shuffle_index);
  EXPECT_EQ(a.document_index, b.document_index);
  EXPECT_NE(a.shuffle_index, c.shuffle_index);
  EXPECT_NE(a.document_index, c.document_index);
}

TEST(GPTIndices, SeparateFinalEpochKeepsItsSamplesLast) {
  const auto lengths = random_lengths(5, 60, 1, 30);
  const int64_t tokens = std::accumulate(lengths.begin(), lengths.end(), int64_t{0});
  const int64_t two_epochs = (2 * tokens - 1) / 10;
  const GPTIndices idx = build_gpt_indices(lengths.data(), 0, 60, 10, two_epochs + 2, 42);
  ASSERT_TRUE(idx.separate_final_epoch);
  ASSERT_EQ(idx.num_epochs, 3);
  const auto split = idx.shuffle_index.begin() + two_epochs;
  EXPECT_EQ(*std::max_element(idx.shuffle_index.begin(), split), two_epochs - 1);
  EXPECT_EQ(*std::min_element(split, idx.shuffle_index.end()), two_epochs);
}

TEST(GPTIndices, RejectsBadSettings) {
  const std::vector<int32_t> lengths{3, 4, 0, 2};
  EXPECT_EQ(error_of([&] { build_gpt_indices(lengths.data(), 0, 4, 0, 5, 1); }).status(), Status::kInvalidConfig);
  Error few = error_of([&] { build_gpt_indices(lengths.data(), 0, 4, 9, 5, 1); });
  EXPECT_EQ(few.status(), Status::kInvalidConfig);
  EXPECT_TRUE(contains(few.what(), "9 tokens")) << few.what();
  EXPECT_EQ(error_of([&] { build_gpt_indices(lengths.data(), 0, 4, 2, -1, 1); }).status(), Status::kInvalidConfig);
  EXPECT_EQ(error_of([&] { build_gpt_indices(lengths.data(), 3, 2, 2, 1, 1); }).status(), Status::kInvalidArgument);
  // Exactly seq_length + 1 tokens make one sample.
  EXPECT_EQ(build_gpt_indices(lengths.data(), 0, 4, 8, std::nullopt, 1).num_samples(), 1);
}

// --- the GPT source over an indexed dataset -------------------------------------------------

struct GPTFixture {
  TempDir dir;
  std::vector<int32_t> lengths = random_lengths(17, 120, 0, 40);
  std::string prefix = write_dataset(dir, "corpus", lengths);
  std::shared_ptr<const IndexedDataset> ds = std::make_shared<const IndexedDataset>(prefix);

  GPTDatasetOptions options(int64_t samples = 150) const {
    GPTDatasetOptions o;
    o.split = Split::kTrain;
    o.begin = 10;
    o.end = 110;
    o.seq_length = 24;
    o.num_samples = samples;
    o.seed = 1234;
    o.cache_dir = dir / "cache";
    return o;
  }
  std::vector<Tokens> all(const SampleSource& s) const {
    std::vector<Tokens> out;
    for (int64_t i = 0; i < s.size(); ++i) out.push_back(sample_of(s, i));
    return out;
  }
};

TEST(GPTDataset, SamplesAreTheIndexedTokensInShuffledOrder) {
  GPTFixture f;
  GPTDatasetOptions o = f.options();
  o.cache = false;
  auto src = make_gpt_source(f.ds, o);
  const GPTIndices idx = build_gpt_indices(f.lengths.data(), o.begin, o.end, o.seq_length, o.num_samples, o.seed);
  ASSERT_EQ(src->size(), idx.num_samples());
  EXPECT_EQ(src->seq_length(), 24);
  Tokens stream;
  for (int32_t s : idx.document_index)
    for (int32_t k = 0; k < f.lengths[static_cast<size_t>(s)]; ++k) stream.push_back(ref_token(0, s, k));
  for (int64_t i = 0; i < src->size(); ++i) {
    const int64_t j = idx.shuffle_index[static_cast<size_t>(i)];
    const Tokens want(stream.begin() + j * 24, stream.begin() + j * 24 + 25);
    ASSERT_EQ(sample_of(*src, i), want) << "sample " << i;
  }
}

TEST(GPTDataset, ReadingPastTheBuiltSamplesSaysExhausted) {
  GPTFixture f;
  GPTDatasetOptions o = f.options();
  o.cache = false;
  auto src = make_gpt_source(f.ds, o);
  Tokens out(25);
  Error e = error_of([&] { src->sample(src->size(), out.data()); });
  EXPECT_EQ(e.status(), Status::kInvalidArgument);
  EXPECT_TRUE(contains(e.what(), "exhausted")) << e.what();
  EXPECT_TRUE(contains(e.what(), std::to_string(src->size()))) << e.what();
  EXPECT_EQ(error_of([&] { src->sample(-1, out.data()); }).status(), Status::kInvalidArgument);
  o.end = 1000;
  EXPECT_EQ(error_of([&] { make_gpt_source(f.ds, o); }).status(), Status::kInvalidArgument);
}

TEST(GPTDataset, ConcurrentReadsMatchSerialReads) {
  GPTFixture f;
  GPTDatasetOptions o = f.options(400);
  o.cache = false;
  auto src = make_gpt_source(f.ds, o);
  const std::vector<Tokens> serial = f.all(*src);
  std::atomic<int> mismatches{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([&, t] {
      for (int64_t i = src->size() - 1 - t; i >= 0; i -= 3)
        if (sample_of(*src, i) != serial[static_cast<size_t>(i)]) ++mismatches;
    });
  for (auto& th : threads) th.join();
  EXPECT_EQ(mismatches.load(), 0);
}

TEST(GPTDataset, CacheWritesMegatronFilesAndIsHitNextTime) {
  GPTFixture f;
  IndexBuildInfo first, second;
  auto a = make_gpt_source(f.ds, f.options(), &first);
  EXPECT_FALSE(first.cache_hit);
  EXPECT_TRUE(first.warning.empty());
  EXPECT_EQ(first.cache_base.rfind(f.dir / "cache/", 0), 0u) << first.cache_base;
  EXPECT_TRUE(contains(first.cache_base, "-GPTDataset-train"));
  EXPECT_EQ(read_text(first.cache_base + "-description.txt", 1 << 20), first.description);
  const GPTIndices idx = build_gpt_indices(f.lengths.data(), 10, 110, 24, 150, 1234);
  const NpyHeader doc = read_npy_header(first.cache_base + "-document_index.npy");
  const NpyHeader smp = read_npy_header(first.cache_base + "-sample_index.npy");
  const NpyHeader shf = read_npy_header(first.cache_base + "-shuffle_index.npy");
  EXPECT_EQ(doc.descr, "<i4");
  EXPECT_EQ(doc.shape, std::vector<int64_t>{static_cast<int64_t>(idx.document_index.size())});
  EXPECT_EQ(smp.descr, "<i4");
  EXPECT_EQ(smp.shape, (std::vector<int64_t>{idx.num_samples() + 1, 2}));
  EXPECT_EQ(shf.descr, "<u4");
  EXPECT_EQ(shf.shape, std::vector<int64_t>{idx.num_samples()});
  for (const NpyHeader* h : {&doc, &smp, &shf}) EXPECT_EQ(h->data_offset % 64, 0);
  EXPECT_EQ(read_npy<int64_t>(first.cache_base + "-shuffle_index.npy", {NpyDType::kUInt32}, idx.num_samples(), 0),
            idx.shuffle_index);

  auto b = make_gpt_source(f.ds, f.options(), &second);
  EXPECT_TRUE(second.cache_hit);
  EXPECT_EQ(second.cache_base, first.cache_base);
  EXPECT_EQ(f.all(*a), f.all(*b));
}

TEST(GPTDataset, CacheKeyFollowsEveryInput) {
  GPTFixture f;
  auto base_of = [&](const GPTDatasetOptions& o) {
    IndexBuildInfo info;
    make_gpt_source(f.ds, o, &info);
    return info.cache_base;
  };
  const std::string base = base_of(f.options());
  std::set<std::string> bases{base};
  GPTDatasetOptions o = f.options(151);
  bases.insert(base_of(o));
  o = f.options();
  o.seed = 42;
  bases.insert(base_of(o));
  o = f.options();
  o.seq_length = 23;
  bases.insert(base_of(o));
  o = f.options();
  o.begin = 11;
  bases.insert(base_of(o));
  o = f.options();
  o.num_samples.reset();
  bases.insert(base_of(o));
  EXPECT_EQ(bases.size(), 6u);
  o = f.options();
  o.split = Split::kValid;
  EXPECT_TRUE(contains(base_of(o), "-GPTDataset-valid"));
}

TEST(GPTDataset, DatasetRewrittenWithTheSameSizesGetsAFreshEntry) {
  GPTFixture f;
  IndexBuildInfo before, after;
  make_gpt_source(f.ds, f.options(), &before);
  std::vector<int32_t> swapped = f.lengths;
  std::reverse(swapped.begin(), swapped.end());  // same count, tokens and index size
  {
    IndexedDatasetBuilder b(f.prefix, TokenDType::kUInt16, /*overwrite=*/true);
    for (int32_t n : swapped) {
      const Tokens t(static_cast<size_t>(n), 5);
      b.add_item(t.data(), n);
      b.end_document();
    }
    b.finalize();
  }
  auto ds = std::make_shared<const IndexedDataset>(f.prefix);
  ASSERT_EQ(ds->num_tokens(), f.ds->num_tokens());
  auto src = make_gpt_source(ds, f.options(), &after);
  EXPECT_FALSE(after.cache_hit);
  EXPECT_NE(after.cache_base, before.cache_base);
  EXPECT_EQ(sample_of(*src, 0), Tokens(25, 5));
}

TEST(GPTDataset, DefaultCacheDirIsBesideTheDataset) {
  GPTFixture f;
  GPTDatasetOptions o = f.options();
  o.cache_dir.clear();
  IndexBuildInfo info;
  make_gpt_source(f.ds, o, &info);
  EXPECT_EQ(info.cache_base.rfind((f.dir.path() / "cache" / "GPTDataset_indices").string(), 0), 0u) << info.cache_base;
  EXPECT_TRUE(fs::exists(info.cache_base + "-shuffle_index.npy"));
}

TEST(GPTDataset, DamagedCacheIsRebuiltWithAWarning) {
  GPTFixture f;
  IndexBuildInfo info;
  const std::vector<Tokens> want = f.all(*make_gpt_source(f.ds, f.options(), &info));
  const std::string base = info.cache_base;
  auto damage_and_reload = [&](const std::string& what, const std::function<void()>& damage) {
    SCOPED_TRACE(what);
    damage();
    IndexBuildInfo again;
    auto src = make_gpt_source(f.ds, f.options(), &again);
    EXPECT_FALSE(again.cache_hit);
    EXPECT_FALSE(again.warning.empty());
    EXPECT_EQ(f.all(*src), want);
    IndexBuildInfo third;
    make_gpt_source(f.ds, f.options(), &third);
    EXPECT_TRUE(third.cache_hit);
    EXPECT_TRUE(third.warning.empty()) << third.warning;
    return again.warning;
  };
  auto patch = [](const std::string& path, int64_t offset, char byte) {
    std::fstream io(path, std::ios::in | std::ios::out | std::ios::binary);
    io.seekp(offset);
    io.put(byte);
  };
  std::string w = damage_and_reload("truncated", [&] { fs::resize_file(base + "-sample_index.npy", 100); });
  EXPECT_TRUE(contains(w, "sample_index.npy")) << w;
  w = damage_and_reload("descr byte", [&] { patch(base + "-document_index.npy", 22, '9'); });
  EXPECT_TRUE(contains(w, "document_index.npy")) << w;
  damage_and_reload("magic", [&] { patch(base + "-shuffle_index.npy", 1, 'X'); });
  damage_and_reload("shape digit", [&] {
    const std::string path = base + "-shuffle_index.npy";
    const std::string head = read_text(path, 1 << 20).substr(0, 128);
    patch(path, static_cast<int64_t>(head.find("'shape': (") + 10), '9');
  });
  w = damage_and_reload("data byte", [&] { patch(base + "-shuffle_index.npy", 64 + 4 * 7 + 2, '\x11'); });
  EXPECT_TRUE(contains(w, "shuffle_index.npy")) << w;
  damage_and_reload("missing array", [&] { fs::remove(base + "-document_index.npy"); });
  damage_and_reload("description", [&] { write_text_atomic(base + "-description.txt", "something else"); });
}

TEST(GPTDataset, ProcessesBuildingTogetherGetTheSameSamples) {
  GPTFixture f;
  const std::string result_path = f.dir / "child_samples.bin";
  const pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    int code = 1;
    try {
      auto src = make_gpt_source(f.ds, f.options(300));
      std::ofstream out(result_path, std::ios::binary);
      for (int64_t i = 0; i < src->size(); ++i) {
        const Tokens t = sample_of(*src, i);
        out.write(reinterpret_cast<const char*>(t.data()), static_cast<std::streamsize>(t.size() * sizeof(int32_t)));
      }
      code = out.good() ? 0 : 2;
    } catch (...) {
      code = 3;
    }
    ::_exit(code);
  }
  auto src = make_gpt_source(f.ds, f.options(300));
  int status = 0;
  ASSERT_EQ(::waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status));
  ASSERT_EQ(WEXITSTATUS(status), 0);
  Tokens mine;
  for (int64_t i = 0; i < src->size(); ++i) {
    const Tokens t = sample_of(*src, i);
    mine.insert(mine.end(), t.begin(), t.end());
  }
  std::ifstream in(result_path, std::ios::binary);
  Tokens theirs(mine.size() + 1);
  in.read(reinterpret_cast<char*>(theirs.data()), static_cast<std::streamsize>(theirs.size() * sizeof(int32_t)));
  theirs.resize(static_cast<size_t>(in.gcount()) / sizeof(int32_t));
  EXPECT_EQ(theirs, mine);
  IndexBuildInfo info;
  make_gpt_source(f.ds, f.options(300), &info);
  EXPECT_TRUE(info.cache_hit);
  EXPECT_TRUE(info.warning.empty()) << info.warning;
  for (const auto& entry : fs::directory_iterator(f.dir / "cache"))
    EXPECT_FALSE(contains(entry.path().filename().string(), ".tmp-")) << entry.path();
}

TEST(GPTDataset, UnwritableCacheDirIsIoErrorNamingIt) {
  GPTFixture f;
  std::ofstream(f.dir / "plain_file") << "x";
  GPTDatasetOptions o = f.options();
  o.cache_dir = f.dir / "plain_file/cache";
  Error e = error_of([&] { make_gpt_source(f.ds, o); });
  EXPECT_EQ(e.status(), Status::kIoError);
  EXPECT_TRUE(contains(e.what(), o.cache_dir)) << e.what();
}

// --- blends ---------------------------------------------------------------------------------

TEST(Blend, IndicesAndNormalisationMatchMegatronReference) {
  for (const json& c : reference()["blend"]) {
    SCOPED_TRACE(c["name"].get<std::string>());
    const std::vector<double> w = normalize_weights(as_vector<double>(c["raw_weights"]));
    EXPECT_EQ(w, as_vector<double>(c["normalized"]));  // to the bit
    const BlendIndices idx = build_blending_indices(w, c["size"]);
    EXPECT_EQ(idx.dataset_index, as_vector<int16_t>(c["dataset_index"]));
    EXPECT_EQ(idx.dataset_sample_index, as_vector<int64_t>(c["dataset_sample_index"]));
  }
}

TEST(Blend, SizesMatchMegatron) {
  for (const json& c : reference()["blend_sizes"])
    EXPECT_EQ(blend_sizes(as_vector<double>(c["normalized"]), c["size"], c["surplus"]), as_vector<int64_t>(c["expected"]))
        << c.dump();
  EXPECT_EQ(blend_sizes({0.3, 0.7}, 1000, kBlendSurplus), (std::vector<int64_t>{302, 704}));
  EXPECT_EQ(blend_sizes({0.3, 0.7}, 1000, 0), (std::vector<int64_t>{300, 700}));
  EXPECT_EQ(blend_sizes({0.25, 0.75}, 2, 0), (std::vector<int64_t>{1, 2}));
}

// Each pick goes to a source at or behind its share, so no source is ever a whole sample
// ahead; with two sources one's lead is the other's lag, so both stay within one sample.
// (With more sources Megatron's rule can leave one up to ~1.7 samples behind: {1, 3, 9, 27,
// 81} lags by 1.03 at 12 samples.)
TEST(Blend, SharesStayWithinOneSampleOfTheWeights) {
  const std::vector<std::vector<double>> cases{
      {1, 1}, {30, 70}, {0.001, 1}, {1, 2, 3.5}, {5, 1, 1, 1, 1, 1, 1, 1, 1, 1}, {1, 3, 9, 27, 81}};
  for (const auto& raw : cases) {
    const std::vector<double> w = normalize_weights(raw);
    const int64_t size = 3000;
    const BlendIndices idx = build_blending_indices(w, size);
    std::vector<int64_t> count(w.size(), 0);
    for (int64_t s = 1; s <= size; ++s) {
      const size_t d = static_cast<size_t>(idx.dataset_index[static_cast<size_t>(s - 1)]);
      EXPECT_EQ(idx.dataset_sample_index[static_cast<size_t>(s - 1)], count[d]);
      ++count[d];
      for (size_t i = 0; i < w.size(); ++i) {
        const double lead = static_cast<double>(count[i]) - w[i] * static_cast<double>(s);
        ASSERT_LT(lead, 1.0) << "weights " << raw.size() << " source " << i << " prefix " << s;
        if (w.size() == 2) {
          ASSERT_LE(std::abs(lead), 1.0) << "source " << i << " prefix " << s;
        }
      }
    }
    // Over the whole blend every source's realised count is within one sample of its share.
    for (size_t i = 0; i < w.size(); ++i)
      EXPECT_LE(std::abs(static_cast<double>(count[i]) - w[i] * static_cast<double>(size)), 1.0)
          << "weights " << raw.size() << " source " << i;
  }
}

// Sample i of source `id` is [id, i, id, i, ...]: where a blend sample came from is visible.
class TaggedSource final : public SampleSource {
 public:
  TaggedSource(int32_t id, int64_t size, int64_t seq = 4) : id_(id), size_(size), seq_(seq) {}
  int64_t seq_length() const override { return seq_; }
  std::string describe() const override { return str("tagged source ", id_, " of ", size_); }
  int64_t size() const override { return size_; }
  void sample(int64_t index, int32_t* out) const override {
    for (int64_t k = 0; k <= seq_; ++k) out[k] = k % 2 == 0 ? id_ : static_cast<int32_t>(index);
  }

 private:
  int32_t id_;
  int64_t size_, seq_;
};

TEST(Blend, SourceReadsWhatTheIndicesChoose) {
  std::vector<std::shared_ptr<SampleSource>> sources{std::make_shared<TaggedSource>(0, 100),
                                                     std::make_shared<TaggedSource>(1, 100)};
  auto blend = make_blended_source(sources, {1, 3}, 120, "train", "");
  ASSERT_EQ(blend->size(), 120);
  const BlendIndices idx = build_blending_indices(normalize_weights({1, 3}), 120);
  for (int64_t i = 0; i < 120; ++i) {
    const Tokens t = sample_of(*blend, i);
    EXPECT_EQ(t[0], idx.dataset_index[static_cast<size_t>(i)]);
    EXPECT_EQ(t[1], idx.dataset_sample_index[static_cast<size_t>(i)]);
  }
  Tokens out(5);
  Error e = error_of([&] { blend->sample(120, out.data()); });
  EXPECT_EQ(e.status(), Status::kInvalidArgument);
  EXPECT_TRUE(contains(e.what(), "exhausted") && contains(e.what(), "120")) << e.what();
}

TEST(Blend, OversamplingASourceIsInvalidConfig) {
  std::vector<std::shared_ptr<SampleSource>> sources{std::make_shared<TaggedSource>(0, 100),
                                                     std::make_shared<TaggedSource>(1, 10)};
  Error e = error_of([&] { make_blended_source(sources, {1, 1}, 100, "valid", ""); });
  EXPECT_EQ(e.status(), Status::kInvalidConfig);
  EXPECT_TRUE(contains(e.what(), "tagged source 1 of 10") && contains(e.what(), "50")) << e.what();
  std::vector<std::shared_ptr<SampleSource>> mixed{std::make_shared<TaggedSource>(0, 100, 4),
                                                   std::make_shared<TaggedSource>(1, 100, 5)};
  EXPECT_EQ(error_of([&] { make_blended_source(mixed, {1, 1}, 10, "train", ""); }).status(), Status::kInvalidConfig);
  EXPECT_EQ(error_of([&] { make_blended_source(sources, {1, 0}, 10, "train", ""); }).status(), Status::kInvalidConfig);
}

TEST(Blend, IndicesAreCachedAndDamageIsRebuilt) {
  TempDir dir;
  std::vector<std::shared_ptr<SampleSource>> sources{std::make_shared<TaggedSource>(0, 100),
                                                     std::make_shared<TaggedSource>(1, 100),
                                                     std::make_shared<TaggedSource>(2, 100)};
  IndexBuildInfo a, b, c;
  auto first = make_blended_source(sources, {1, 2, 3}, 150, "train", dir / "c", &a);
  EXPECT_FALSE(a.cache_hit);
  EXPECT_EQ(read_npy_header(a.cache_base + "-dataset_index.npy").descr, "<i2");
  EXPECT_EQ(read_npy_header(a.cache_base + "-dataset_sample_index.npy").descr, "<i8");
  auto second = make_blended_source(sources, {1, 2, 3}, 150, "train", dir / "c", &b);
  EXPECT_TRUE(b.cache_hit);
  for (int64_t i = 0; i < 150; ++i) EXPECT_EQ(sample_of(*first, i), sample_of(*second, i));
  std::fstream io(a.cache_base + "-dataset_sample_index.npy", std::ios::in | std::ios::out | std::ios::binary);
  io.seekp(64 + 8 * 20);
  io.put('\x05');
  io.close();
  auto third = make_blended_source(sources, {1, 2, 3}, 150, "train", dir / "c", &c);
  EXPECT_FALSE(c.cache_hit);
  EXPECT_TRUE(contains(c.warning, "dataset_sample_index")) << c.warning;
  for (int64_t i = 0; i < 150; ++i) EXPECT_EQ(sample_of(*first, i), sample_of(*third, i));
}

// --- the builder ----------------------------------------------------------------------------

TEST(DataSpec, ParseDataPathForms) {
  auto weighted = parse_data_path({"30", "data/a", " 70 ", " data/b "}, "dataset.data_path");
  ASSERT_EQ(weighted.size(), 2u);
  EXPECT_EQ(weighted[0].prefix, "data/a");
  EXPECT_EQ(weighted[0].weight, 30.0);
  EXPECT_EQ(weighted[1].prefix, "data/b");
  EXPECT_EQ(weighted[1].weight, 70.0);
  auto plain = parse_data_path({"data/a", "data/b"}, "dataset.data_path");
  ASSERT_EQ(plain.size(), 2u);
  EXPECT_FALSE(plain[0].weight.has_value());
  EXPECT_EQ(plain[1].prefix, "data/b");
  auto one = parse_data_path({"data/a"}, "k");
  ASSERT_EQ(one.size(), 1u);
  EXPECT_FALSE(one[0].weight.has_value());
  EXPECT_EQ(parse_data_path({"1e-3", "x"}, "k")[0].weight, 1e-3);
  EXPECT_TRUE(parse_data_path({}, "k").empty());
}

TEST(DataSpec, ParseDataPathErrorsNameTheKey) {
  const std::vector<std::vector<std::string>> bad{
      {"0", "a"}, {"-1", "a"}, {"nan", "a"}, {"inf", "a"}, {"30", "a", "b", "c"}, {"a", "30", "b", "70"},
      {"30", "a", "70"}, {"a", " "}};
  for (const auto& items : bad) {
    Error e = error_of([&] { parse_data_path(items, "dataset.data_path"); });
    EXPECT_EQ(e.status(), Status::kInvalidConfig);
    EXPECT_TRUE(contains(e.what(), "dataset.data_path")) << e.what();
  }
}

TEST(DataSpec, SplitRangesMatchMegatronBookends) {
  for (const json& c : reference()["split"]) {
    const auto got = split_ranges(c["split"], c["n"]);
    for (size_t i = 0; i < 3; ++i) {
      const json& want = c["expected"][i];
      if (want.is_null()) {
        EXPECT_FALSE(got[i].has_value()) << c.dump();
      } else {
        ASSERT_TRUE(got[i].has_value()) << c.dump();
        EXPECT_EQ(got[i]->first, want[0].get<int64_t>()) << c.dump();
        EXPECT_EQ(got[i]->second, want[1].get<int64_t>()) << c.dump();
      }
    }
  }
  // By hand: running sums, then Python's round (half to even).
  auto r = split_ranges("969,30,1", 1000);
  EXPECT_EQ(*r[0], std::make_pair(int64_t{0}, int64_t{969}));
  EXPECT_EQ(*r[1], std::make_pair(int64_t{969}, int64_t{999}));
  EXPECT_EQ(*r[2], std::make_pair(int64_t{999}, int64_t{1000}));
  r = split_ranges("1,1", 5);  // 2.5 rounds to 2
  EXPECT_EQ(*r[0], std::make_pair(int64_t{0}, int64_t{2}));
  r = split_ranges("1,1", 7);  // 3.5 rounds to 4
  EXPECT_EQ(*r[0], std::make_pair(int64_t{0}, int64_t{4}));
  r = split_ranges("100,0,0", 10);
  EXPECT_FALSE(r[1].has_value());
  EXPECT_FALSE(r[2].has_value());
  EXPECT_EQ(error_of([] { split_ranges("1,-1", 3); }).status(), Status::kInvalidConfig);
}

TEST(DataSpec, BuilderMatchesMegatronEndToEnd) {
  TempDir dir;
  const json& b = reference()["builder"];
  std::vector<std::string> prefixes;
  for (size_t d = 0; d < b["datasets"].size(); ++d)
    prefixes.push_back(write_dataset(dir, "ds" + std::to_string(d), as_vector<int32_t>(b["datasets"][d]),
                                     static_cast<int64_t>(d)));
  for (const json& c : b["cases"]) {
    SCOPED_TRACE(c["name"].get<std::string>());
    DataSpec spec;
    for (size_t i = 0; i < c["members"].size(); ++i) {
      BlendEntry e{prefixes[c["members"][i].get<size_t>()], std::nullopt};
      if (!c["weights"].is_null()) e.weight = c["weights"][i].get<double>();
      spec.blend.push_back(e);
    }
    spec.split = c["split"];
    spec.seq_length = c["seq_length"];
    spec.seed = c["seed"];
    spec.cache_dir = dir / "cache";
    for (size_t s = 0; s < 3; ++s) spec.num_samples[s] = c["num_samples"][s];
    for (int pass = 0; pass < 2; ++pass) {  // built, then loaded from the cache
      const SplitSources out = build_indexed_sources(spec);
      for (size_t s = 0; s < 3; ++s) {
        const json& want = c["samples"][s];
        if (want.is_null()) {
          EXPECT_EQ(out.by_split[s], nullptr);
          continue;
        }
        ASSERT_NE(out.by_split[s], nullptr);
        ASSERT_EQ(out.by_split[s]->size(), static_cast<int64_t>(want.size())) << "split " << s;
        for (size_t i = 0; i < want.size(); ++i)
          ASSERT_EQ(sample_of(*out.by_split[s], static_cast<int64_t>(i)), as_vector<int32_t>(want[i]))
              << "split " << s << " sample " << i << " pass " << pass;
      }
      bool built = false, loaded = false;
      for (const std::string& line : out.log_lines) {
        built = built || contains(line, "built in");
        loaded = loaded || contains(line, "loaded from cache");
      }
      EXPECT_EQ(built, pass == 0);
      EXPECT_EQ(loaded, pass == 1);
    }
  }
}

TEST(DataSpec, BuilderLogsEachDatasetOnceAndEachSplit) {
  TempDir dir;
  const std::string a = write_dataset(dir, "a", random_lengths(1, 100, 1, 30));
  DataSpec spec;
  spec.blend = {{a, 1.0}, {a, 3.0}};
  spec.split = "90,10,0";
  spec.seq_length = 16;
  spec.cache = false;
  spec.num_samples = {50, 5, 0};
  const SplitSources out = build_indexed_sources(spec);
  int opened = 0, train = 0;
  for (const std::string& line : out.log_lines) {
    if (contains(line, "100 sequences, 50 documents")) ++opened;
    if (contains(line, a + " train: sequences [0, 90)") && contains(line, "samples") && contains(line, "epoch")) ++train;
  }
  EXPECT_EQ(opened, 1);
  EXPECT_EQ(train, 2);
  EXPECT_EQ(out.by_split[0]->size(), 51);  // ceil(12.5) + ceil(37.5)
  EXPECT_EQ(out.by_split[1]->size(), 6);   // ceil(1.25) + ceil(3.75)
  EXPECT_EQ(out.by_split[2], nullptr);
  EXPECT_GE(out.index_seconds, 0.0);
}

TEST(DataSpec, BuilderErrorsNameTheProblem) {
  TempDir dir;
  const std::string a = write_dataset(dir, "a", random_lengths(2, 40, 1, 10));
  const std::string b = write_dataset(dir, "b", random_lengths(3, 40, 1, 10));
  DataSpec spec;
  spec.seq_length = 8;
  spec.cache = false;
  spec.num_samples = {20, 0, 0};
  EXPECT_EQ(error_of([&] { build_indexed_sources(spec); }).status(), Status::kInvalidConfig);  // empty blend

  spec.blend = {{dir / "missing", std::nullopt}};
  Error missing = error_of([&] { build_indexed_sources(spec); });
  EXPECT_EQ(missing.status(), Status::kIoError);
  EXPECT_TRUE(contains(missing.what(), dir / "missing")) << missing.what();

  spec.blend = {{a, std::nullopt}};
  spec.split = "100,0,0";
  spec.num_samples = {20, 4, 0};
  Error empty = error_of([&] { build_indexed_sources(spec); });
  EXPECT_EQ(empty.status(), Status::kInvalidConfig);
  EXPECT_TRUE(contains(empty.what(), a) && contains(empty.what(), "valid") && contains(empty.what(), "100,0,0"))
      << empty.what();

  spec.split = "969,30,1";
  spec.num_samples = {1000, 0, 0};
  spec.blend = {{a, std::nullopt}, {b, std::nullopt}};
  Error epochs = error_of([&] { build_indexed_sources(spec); });
  EXPECT_EQ(epochs.status(), Status::kInvalidConfig);
  EXPECT_TRUE(contains(epochs.what(), "weights")) << epochs.what();

  spec.blend = {{a, 1.0}, {b, std::nullopt}};
  EXPECT_EQ(error_of([&] { build_indexed_sources(spec); }).status(), Status::kInvalidConfig);

  spec.blend = {{a, std::nullopt}};
  spec.seq_length = 10000;
  spec.num_samples = {1, 0, 0};
  Error too_short = error_of([&] { build_indexed_sources(spec); });
  EXPECT_EQ(too_short.status(), Status::kInvalidConfig);
  EXPECT_TRUE(contains(too_short.what(), a) && contains(too_short.what(), "train")) << too_short.what();
}

// --- .npy files and the cache helpers -------------------------------------------------------

std::string hex_of(const std::string& bytes) {
  static const char kHex[] = "0123456789abcdef";
  std::string out;
  for (unsigned char c : bytes) {
    out += kHex[c >> 4];
    out += kHex[c & 15];
  }
  return out;
}

std::optional<NpyDType> dtype_of(const std::string& descr) {
  for (NpyDType d : {NpyDType::kInt16, NpyDType::kInt32, NpyDType::kInt64, NpyDType::kUInt32})
    if (descr == npy_descr(d)) return d;
  return std::nullopt;
}

TEST(DataSpec, NpyFilesAreWhatNumpySaveWrites) {
  TempDir dir;
  int n = 0;
  for (const json& c : reference()["npy"]) {
    SCOPED_TRACE(c.dump().substr(0, 80));
    const auto dtype = dtype_of(c["descr"]);
    ASSERT_TRUE(dtype.has_value());
    const auto shape = as_vector<int64_t>(c["shape"]);
    const int64_t rows = shape[0], cols = shape.size() > 1 ? shape[1] : 0;
    const std::string path = dir / str("array", n++, ".npy");
    std::vector<int64_t> values;
    if (c.contains("values")) values = as_vector<int64_t>(c["values"]);
    else values.assign(static_cast<size_t>(rows * cols), 1);
    write_npy(path, *dtype, rows, cols, values.data());
    const std::string text = read_text(path, 1 << 24);
    const std::string want_header = c["header_hex"];
    EXPECT_EQ(hex_of(text.substr(0, want_header.size() / 2)), want_header);
    if (c.contains("file_bytes")) {
      EXPECT_EQ(text.size(), c["file_bytes"].get<size_t>());
    }
    EXPECT_EQ(read_npy<int64_t>(path, {*dtype}, rows, cols), values);
    EXPECT_EQ(read_npy_header(path).data_offset, static_cast<int64_t>(want_header.size() / 2));
  }
}

TEST(DataSpec, NpyReadingChecksEveryField) {
  TempDir dir;
  const std::vector<int64_t> pairs{0, 0, 3, 7, 9, 1};
  write_npy(dir / "p.npy", NpyDType::kInt64, 3, 2, pairs.data());
  EXPECT_EQ(read_npy<int32_t>(dir / "p.npy", {NpyDType::kInt64}, 3, 2), (std::vector<int32_t>{0, 0, 3, 7, 9, 1}));
  EXPECT_EQ(error_of([&] { read_npy<int64_t>(dir / "p.npy", {NpyDType::kInt64}, 2, 3); }).status(), Status::kCorruptData);
  EXPECT_EQ(error_of([&] { read_npy<int64_t>(dir / "p.npy", {NpyDType::kInt64}, 6, 0); }).status(), Status::kCorruptData);
  EXPECT_EQ(error_of([&] { read_npy<int64_t>(dir / "p.npy", {NpyDType::kInt32}, 3, 2); }).status(), Status::kCorruptData);
  EXPECT_EQ(error_of([&] { read_npy<int64_t>(dir / "none.npy", {NpyDType::kInt64}, 3, 2); }).status(), Status::kIoError);
  const std::vector<int64_t> big{int64_t{1} << 40};
  write_npy(dir / "big.npy", NpyDType::kInt64, 1, 0, big.data());
  Error range = error_of([&] { read_npy<int32_t>(dir / "big.npy", {NpyDType::kInt64}, 1, 0); });
  EXPECT_EQ(range.status(), Status::kCorruptData);
  EXPECT_TRUE(contains(range.what(), "big.npy") && contains(range.what(), "1099511627776")) << range.what();
  fs::resize_file(dir / "p.npy", 130);
  Error cut = error_of([&] { read_npy<int64_t>(dir / "p.npy", {NpyDType::kInt64}, 3, 2); });
  EXPECT_EQ(cut.status(), Status::kCorruptData);
  EXPECT_TRUE(contains(cut.what(), "p.npy")) << cut.what();
  const std::vector<int64_t> negative{-1};
  EXPECT_EQ(error_of([&] { write_npy(dir / "u.npy", NpyDType::kUInt32, 1, 0, negative.data()); }).status(),
            Status::kInvalidArgument);
  EXPECT_FALSE(fs::exists(dir / "u.npy"));
  for (const auto& entry : fs::directory_iterator(dir.path()))
    EXPECT_FALSE(contains(entry.path().filename().string(), ".tmp-")) << entry.path();
}

TEST(DataSpec, HashIsFnv1a128) {
  // Published FNV-1a 128-bit values.
  EXPECT_EQ(hash_hex(""), "6c62272e07bb014262b821756295c58d");
  EXPECT_EQ(hash_hex("a"), "d228cb696f1a8caf78912b704e4a8964");
  EXPECT_EQ(hash_hex("foobar"), "343e1662793c64bf6f0d3597ba446f18");
  EXPECT_NE(hash_hex("ab"), hash_hex("ba"));
}

}  // namespace
}  // namespace mpt::data
