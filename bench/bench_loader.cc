// Data loading: how fast indices are built and batches served, and whether a training step
// ever waits for its data.
//
//   build/bench_loader [tokens_millions] [dir]
//
// 1. Writes a synthetic indexed dataset (uint16, document lengths drawn from 1..4000) of the
//    given size (default 100 M tokens) into DIR (default a fresh directory under /tmp) and
//    times the writer.
// 2. GPT sample indices for 3 epochs at seq 4096: built without a cache, then built and
//    cached, then loaded from the cache; and indices for 10 M documents (in memory).
// 3. Batches served by the loader in the calling thread (global batch 256 x 4096 tokens),
//    from one dataset and from a 3-way blend of thirds of it: tokens per second.
// 4. recipes/tiny.toml trained for 30 steps on the embedded corpus written as an indexed
//    dataset, with the background loader: the time each step waited for its batch.
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "config/recipe.h"
#include "core/log.h"
#include "data/byte_tokenizer.h"
#include "data/corpus.h"
#include "data/dataset_builder.h"
#include "data/gpt_dataset.h"
#include "data/indexed_dataset.h"
#include "data/loader.h"
#include "train/engine.h"

namespace {

using Clock = std::chrono::steady_clock;
namespace fs = std::filesystem;

double since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

void write_synthetic(const std::string& prefix, int64_t tokens, uint32_t seed) {
  std::mt19937 gen(seed);
  std::uniform_int_distribution<int32_t> len(1, 4000), tok(0, 50000);
  mpt::data::IndexedDatasetBuilder b(prefix, mpt::data::TokenDType::kUInt16, true);
  std::vector<int32_t> doc;
  int64_t written = 0;
  while (written < tokens) {
    doc.resize(static_cast<size_t>(std::min<int64_t>(len(gen), tokens - written)));
    for (int32_t& t : doc) t = tok(gen);
    b.add_item(doc.data(), static_cast<int64_t>(doc.size()));
    b.end_document();
    written += static_cast<int64_t>(doc.size());
  }
  b.finalize();
}

void write_corpus(const std::string& prefix) {
  mpt::data::IndexedDatasetBuilder b(prefix, mpt::data::TokenDType::kUInt16, true);
  for (std::string_view text : mpt::data::corpus_documents()) {
    std::vector<int32_t> ids;
    for (unsigned char c : text) ids.push_back(c);
    ids.push_back(mpt::data::kByteEod);
    b.add_item(ids.data(), static_cast<int64_t>(ids.size()));
    b.end_document();
  }
  b.finalize();
}

double serve(std::shared_ptr<mpt::data::SampleSource> src, int64_t batches, int64_t gbs) {
  mpt::data::LoaderLayout l;
  l.micro_batch = 1;
  l.num_microbatches = gbs;
  mpt::data::LoaderOptions o;
  o.vocab_size = 1 << 20;
  o.prefetch = 0;
  mpt::data::BatchLoader loader(std::move(src), l, o);
  mpt::data::RankBatch b;
  loader.assemble(0, b);  // warm the page cache
  const auto t0 = Clock::now();
  for (int64_t i = 0; i < batches; ++i) loader.assemble(i * gbs, b);
  const double s = since(t0);
  return static_cast<double>(batches * gbs * b.cols) / s;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const int64_t millions = argc > 1 ? std::atoll(argv[1]) : 100;
    const std::string dir = argc > 2 ? std::string(argv[2]) : "/tmp/mpt_bench_loader_" + std::to_string(getpid());
    fs::create_directories(dir);
    const std::string prefix = dir + "/synthetic";
    const int64_t seq = 4096, gbs = 256;

    auto t0 = Clock::now();
    write_synthetic(prefix, millions * 1000000, 7);
    const double write_s = since(t0);
    auto ds = std::make_shared<const mpt::data::IndexedDataset>(prefix);
    std::printf("dataset: %lld sequences, %lld tokens (%.0f MB), written in %.2f s (%.0f M tokens/s)\n",
                static_cast<long long>(ds->num_sequences()), static_cast<long long>(ds->num_tokens()),
                static_cast<double>(ds->bin_bytes()) / 1e6, write_s, static_cast<double>(ds->num_tokens()) / write_s / 1e6);

    mpt::data::GPTDatasetOptions go;
    go.begin = 0;
    go.end = ds->num_sequences();
    go.seq_length = seq;
    go.num_samples = 3 * ds->num_tokens() / seq - 1;
    go.cache = false;
    mpt::data::IndexBuildInfo info;
    auto src = mpt::data::make_gpt_source(ds, go, &info);
    std::printf("GPT indices, 3 epochs, %lld samples of %lld: built in %.3f s (no cache)\n",
                static_cast<long long>(src->size()), static_cast<long long>(seq), info.seconds);
    go.cache = true;
    go.cache_dir = dir + "/cache";
    mpt::data::make_gpt_source(ds, go, &info);
    std::printf("  built and cached in %.3f s (hit: %d)\n", info.seconds, info.cache_hit ? 1 : 0);
    src = mpt::data::make_gpt_source(ds, go, &info);
    std::printf("  loaded from the cache in %.3f s (hit: %d)\n", info.seconds, info.cache_hit ? 1 : 0);

    // Index building at the scale of a large corpus: 10 M documents (mean 250 tokens,
    // 2.5 B tokens), 1 M samples of 2048, lengths in memory (no file reads).
    {
      std::mt19937 gen(11);
      std::uniform_int_distribution<int32_t> len(1, 499);
      std::vector<int32_t> lengths(10000000);
      for (int32_t& l : lengths) l = len(gen);
      t0 = Clock::now();
      mpt::data::GPTIndices big = mpt::data::build_gpt_indices(lengths.data(), 0, static_cast<int64_t>(lengths.size()),
                                                               2048, 1000000, 1234);
      std::printf("GPT indices, 10 M documents, %lld samples of 2048: built in %.3f s\n",
                  static_cast<long long>(big.num_samples()), since(t0));
    }

    const int64_t batches = 20;
    std::printf("loader, one dataset: %.1f M tokens/s (global batch %lld x %lld, %lld batches, one thread)\n",
                serve(src, batches, gbs) / 1e6, static_cast<long long>(gbs), static_cast<long long>(seq),
                static_cast<long long>(batches));

    mpt::data::DataSpec spec;
    spec.blend = {{prefix, 0.5}, {prefix, 0.3}, {prefix, 0.2}};
    spec.split = "34,33,33";
    spec.seq_length = seq;
    spec.cache_dir = dir + "/cache";
    spec.num_samples = {batches * gbs * 2, 0, 0};
    t0 = Clock::now();
    mpt::data::SplitSources blend = mpt::data::build_indexed_sources(spec);
    std::printf("blend of 3 (weights 0.5/0.3/0.2) built in %.3f s; loader: %.1f M tokens/s\n", since(t0),
                serve(blend.by_split[0], batches, gbs) / 1e6);

    // The tiny recipe on the corpus as an indexed dataset.
    const std::string corpus = dir + "/corpus";
    write_corpus(corpus);
    mpt::config::Recipe r = mpt::config::load_recipe_file(std::string(MPT_BENCH_SOURCE_DIR) + "/recipes/tiny.toml");
    mpt::config::apply_overrides(r, {"dataset.source=indexed", "dataset.data_path=" + corpus, "dataset.split=90,10,0",
                                     "dataset.path_to_cache=" + dir + "/cache", "train.train_iters=30",
                                     "validation.eval_interval=null", "checkpoint.save=null"});
    mpt::config::finalize(r, 1);
    mpt::Logger quiet([](mpt::LogLevel, const std::string&) {}, mpt::LogLevel::kError);
    mpt::train::Engine engine(r, quiet);
    double wait_sum = 0, wait_max = 0, step_sum = 0;
    int64_t waited = 0;
    const int64_t steps = *r.train.train_iters;
    for (int64_t i = 0; i < steps; ++i) {
      mpt::train::StepResult s = engine.train_step();
      if (i == 0) continue;  // the first batch cannot be prefetched before the run starts
      wait_sum += s.data_wait_s;
      wait_max = std::max(wait_max, s.data_wait_s);
      step_sum += s.step_time_s;
      waited += s.data_wait_s > 0 ? 1 : 0;
    }
    std::printf("tiny recipe, indexed corpus, %lld steps after the first: mean step %.1f ms, data wait mean %.4f ms, "
                "max %.4f ms, steps that waited at all: %lld\n",
                static_cast<long long>(steps - 1), 1e3 * step_sum / static_cast<double>(steps - 1),
                1e3 * wait_sum / static_cast<double>(steps - 1), 1e3 * wait_max, static_cast<long long>(waited));
    if (argc <= 2) fs::remove_all(dir);
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_loader: %s\n", e.what());
    return 1;
  }
}
