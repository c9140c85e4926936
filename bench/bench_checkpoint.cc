// Checkpoint save and load throughput on the CPU backend: recipes/tiny.toml and a ~108M
// parameter GPT (fp32, with its Adam moments: ~1.3 GB of checkpoint), each at 1 rank and
// at 4 ranks (TP=2 x DP=2 with the distributed optimizer, every rank writing its own shard
// file in parallel), plus a resharding load (saved at 4 ranks, loaded at 1). Ranks are
// threads of this process over loopback gloo. Throughput is checkpoint bytes (the sum of
// the shard files) over the wall time of Engine::save_checkpoint / load_checkpoint, all
// ranks included; loads are timed from the page cache ("warm") and after the shard files
// were evicted from it with posix_fadvise ("cold"). The references, in the same run and
// the same directory: one plain file of the large checkpoint's size written and fsync'ed,
// and read back cold and warm; and the format layer alone (ckpt::save_checkpoint and
// CheckpointReader on the same number of bytes straight from memory).
//
// With checkpoint.async_save accepted by the recipe, it also measures how long a save
// blocks training at 1 rank: train() runs 4 iterations saving every 2, and the gap between
// the log lines of iterations 2 and 3, less iteration 3's own step time, is what the save
// at iteration 2 held training up (the same measured with synchronous saving as the check).
//
//   build/bench_checkpoint [tiny|all]      (default all; the files go under $TMPDIR or /tmp)
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <barrier>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <functional>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "bench_ranks.h"
#include "ckpt/checkpoint.h"
#include "ckpt/file_io.h"
#include "config/recipe.h"
#include "core/error.h"
#include "core/log.h"
#include "dist/launch_env.h"
#include "train/engine.h"

namespace {

using Clock = std::chrono::steady_clock;
namespace fs = std::filesystem;

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

// 6 layers at hidden 1024 (GPT-2 medium's width), vocabulary 32000 tied: 108M parameters.
// Global batch 2 so that DP = 2 has one micro-batch per rank.
const char* kLarge = R"(
[model]
num_layers = 6
hidden_size = 1024
ffn_hidden_size = 4096
num_attention_heads = 16
seq_length = 128
vocab_size = 32000
normalization = "LayerNorm"
activation_func = "gelu"
position_embedding_type = "learned_absolute"
share_embeddings_and_output_weights = true
hidden_dropout = 0.0
attention_dropout = 0.0
[train]
micro_batch_size = 1
global_batch_size = 2
train_iters = 1000
[optimizer]
lr = 1e-4
[dataset]
source = "mock"
num_workers = 0
[dist]
distributed_backend = "gloo"
distributed_timeout_minutes = 10
)";

struct Model {
  std::string name;
  std::string toml;  // empty: recipes/tiny.toml
};

mpt::config::Recipe recipe_for(const Model& m, int64_t tp, int64_t world, const std::vector<std::string>& more = {}) {
  mpt::config::Recipe r = m.toml.empty()
                              ? mpt::config::load_recipe_file(MPT_BENCH_SOURCE_DIR "/recipes/tiny.toml")
                              : mpt::config::load_recipe_string(m.toml, "bench_checkpoint");
  std::vector<std::string> o = {"model.tensor_model_parallel_size=" + std::to_string(tp), "dataset.num_workers=0",
                                "dist.distributed_backend=gloo"};
  if (world / tp > 1) o.push_back("ddp.use_distributed_optimizer=true");
  o.insert(o.end(), more.begin(), more.end());
  mpt::config::apply_overrides(r, o);
  mpt::config::finalize(r, world);
  return r;
}

// The bytes of the shard files of an iteration directory.
uint64_t shard_bytes(const std::string& dir) {
  uint64_t total = 0;
  for (const fs::directory_entry& e : fs::directory_iterator(dir))
    if (e.is_regular_file() && e.path().extension() == ".safetensors") total += e.file_size();
  return total;
}

// Evicts every file of `dir` (recursively) from the page cache; the files are fsync'ed, so
// their pages are clean and go.
void drop_cache(const std::string& dir) {
  for (const fs::directory_entry& e : fs::recursive_directory_iterator(dir)) {
    if (!e.is_regular_file()) continue;
    const int fd = ::open(e.path().c_str(), O_RDONLY);
    MPT_CHECK(fd >= 0, mpt::Status::kIoError, e.path().string(), ": cannot open: ", std::strerror(errno));
    ::posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
    ::close(fd);
  }
}

// --- the reference: one plain file -----------------------------------------------------
double raw_write(const std::string& path, uint64_t bytes) {
  std::vector<char> block(64u << 20);
  for (size_t i = 0; i < block.size(); ++i) block[i] = static_cast<char>(i * 2654435761u >> 24);
  const auto t0 = Clock::now();
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  MPT_CHECK(fd >= 0, mpt::Status::kIoError, path, ": cannot create: ", std::strerror(errno));
  for (uint64_t done = 0; done < bytes;) {
    const size_t n = static_cast<size_t>(std::min<uint64_t>(block.size(), bytes - done));
    const ssize_t w = ::write(fd, block.data(), n);
    MPT_CHECK(w > 0, mpt::Status::kIoError, path, ": write failed: ", std::strerror(errno));
    done += static_cast<uint64_t>(w);
  }
  MPT_CHECK(::fsync(fd) == 0, mpt::Status::kIoError, path, ": fsync failed: ", std::strerror(errno));
  ::close(fd);
  return seconds_since(t0);
}

double raw_read(const std::string& path) {
  std::vector<char> block(8u << 20);
  const auto t0 = Clock::now();
  const int fd = ::open(path.c_str(), O_RDONLY);
  MPT_CHECK(fd >= 0, mpt::Status::kIoError, path, ": cannot open: ", std::strerror(errno));
  while (true) {
    const ssize_t r = ::read(fd, block.data(), block.size());
    MPT_CHECK(r >= 0, mpt::Status::kIoError, path, ": read failed: ", std::strerror(errno));
    if (r == 0) break;
  }
  ::close(fd);
  return seconds_since(t0);
}

struct Reference {
  double write_mbs = 0, cold_read_mbs = 0, warm_read_mbs = 0;
};

Reference measure_reference(const std::string& dir, uint64_t bytes) {
  const std::string path = mpt::ckpt::join_path(dir, "reference.bin");
  Reference ref;
  ref.write_mbs = static_cast<double>(bytes) / 1e6 / raw_write(path, bytes);
  drop_cache(dir);
  ref.cold_read_mbs = static_cast<double>(bytes) / 1e6 / raw_read(path);
  ref.warm_read_mbs = static_cast<double>(bytes) / 1e6 / raw_read(path);
  ::unlink(path.c_str());
  return ref;
}

// --- the format layer alone ------------------------------------------------------------
// ckpt::save_checkpoint of `bytes` of fp32 tensors (64 MiB each) straight from memory into
// one shard file, then a CheckpointReader (which verifies every file) reading them all back,
// cold and warm: what the engine adds on top is the difference.
struct FormatFigures {
  uint64_t bytes = 0;
  double save_s = 0, cold_load_s = 0, warm_load_s = 0;
};

FormatFigures measure_format(const std::string& save_dir, uint64_t bytes) {
  const int64_t per_tensor = 16 << 20;  // floats
  const int64_t total = static_cast<int64_t>(bytes / 4);
  std::vector<float> data(static_cast<size_t>(total));
  for (int64_t i = 0; i < total; ++i) data[static_cast<size_t>(i)] = static_cast<float>(i % 1021) * 1e-3f;
  std::vector<mpt::ckpt::TensorSlice> slices;
  for (int64_t first = 0, k = 0; first < total; first += per_tensor, ++k) {
    const int64_t n = std::min(per_tensor, total - first);
    mpt::ckpt::TensorSlice t;
    t.name = "tensor." + std::to_string(k);
    t.global_shape = t.shape = {n};
    t.offset = {0};
    t.data = data.data() + first;
    slices.push_back(std::move(t));
  }
  FormatFigures f;
  auto t0 = Clock::now();
  const std::string dir = mpt::ckpt::save_checkpoint(save_dir, 1, slices, nlohmann::json::object());
  f.save_s = seconds_since(t0);
  f.bytes = shard_bytes(dir);
  auto load_all = [&] {
    const auto start = Clock::now();
    const mpt::ckpt::CheckpointReader reader(dir);
    for (const mpt::ckpt::TensorSlice& t : slices) {
      float* into = data.data() + (static_cast<const float*>(t.data) - data.data());
      reader.read(t.name, mpt::DType::kF32, t.offset, t.shape, into);
    }
    return seconds_since(start);
  };
  drop_cache(dir);
  f.cold_load_s = load_all();
  f.warm_load_s = load_all();
  return f;
}

// --- timed checkpoint operations -------------------------------------------------------
enum class Kind { kSave, kWarmLoad, kColdLoad };

struct Row {
  std::string model, what;
  int64_t ranks = 1;
  Kind kind = Kind::kSave;
  uint64_t bytes = 0;
  double seconds = 0;
  double mbs() const { return static_cast<double>(bytes) / 1e6 / seconds; }
};

// Wall time of `op` run by every rank at once: from the moment all ranks are ready to the
// moment the last one is done.
class TimedCollective {
 public:
  explicit TimedCollective(int64_t world) : barrier_(world) {}
  // `before` runs on rank 0 alone, untimed, while the others wait.
  double run(int64_t rank, const std::function<void()>& op, const std::function<void()>& before = {}) {
    if (rank == 0 && before) before();
    barrier_.arrive_and_wait();
    if (rank == 0) t0_ = Clock::now();
    op();
    barrier_.arrive_and_wait();
    return rank == 0 ? seconds_since(t0_) : 0.0;
  }

 private:
  std::barrier<> barrier_;
  Clock::time_point t0_;
};

// Saves at `world` ranks (TP = 2 when world > 1) into save_dir and loads it back warm and
// cold at the same layout. Returns the iteration directory.
std::string save_and_load(const Model& model, int64_t world, const std::string& save_dir, std::vector<Row>& rows) {
  const int64_t tp = world > 1 ? 2 : 1;
  const mpt::config::Recipe r = recipe_for(model, tp, world);
  std::string iter_dir;
  double save_s = 0, warm_s = 0, cold_s = 0;
  TimedCollective timed(world);
  mpt::bench::run_engines(r, world, [&](int64_t rank, mpt::train::Engine& engine) {
    std::string written;
    const double s = timed.run(rank, [&] { written = engine.save_checkpoint(save_dir); });
    if (rank == 0) save_s = s, iter_dir = written;
    const double w = timed.run(rank, [&] { engine.load_checkpoint(save_dir); });
    const double c = timed.run(rank, [&] { engine.load_checkpoint(save_dir); }, [&] { drop_cache(save_dir); });
    if (rank == 0) warm_s = w, cold_s = c;
  });
  const uint64_t bytes = shard_bytes(iter_dir);
  const std::string layout = world > 1 ? "TP=2 x DP=2" : "1 rank";
  const std::string optimizer = world > 1 ? ", distributed optimizer" : "";
  rows.push_back({model.name, "save, " + layout + optimizer, world, Kind::kSave, bytes, save_s});
  rows.push_back({model.name, "load (page cache), " + layout, world, Kind::kWarmLoad, bytes, warm_s});
  rows.push_back({model.name, "load (cold), " + layout, world, Kind::kColdLoad, bytes, cold_s});
  return iter_dir;
}

// Loads a checkpoint saved at 4 ranks on 1 rank, cold then warm.
void reshard_load(const Model& model, const std::string& dir, std::vector<Row>& rows) {
  const mpt::config::Recipe one = recipe_for(model, 1, 1);
  const mpt::Logger quiet([](mpt::LogLevel, const std::string&) {}, mpt::LogLevel::kError);
  mpt::train::Engine engine(one, quiet);
  drop_cache(dir);
  auto t0 = Clock::now();
  engine.load_checkpoint(dir);
  const double cold = seconds_since(t0);
  t0 = Clock::now();
  engine.load_checkpoint(dir);
  const double warm = seconds_since(t0);
  const uint64_t bytes = shard_bytes(dir);
  rows.push_back({model.name, "load saved at 4 ranks on 1 (page cache)", 1, Kind::kWarmLoad, bytes, warm});
  rows.push_back({model.name, "load saved at 4 ranks on 1 (cold)", 1, Kind::kColdLoad, bytes, cold});
}

// --- how long a save holds training up -------------------------------------------------
struct Blocking {
  double blocked_s = 0;  // gap between the log lines of iterations 2 and 3, less step 3
  double step3_s = 0;    // iteration 3's step time (a save may be writing meanwhile)
  double step2_s = 0;    // iteration 2's (no save in flight)
};

std::optional<std::string> async_rejection(const Model& model) {
  try {
    recipe_for(model, 1, 1, {"checkpoint.async_save=true", "checkpoint.save=/nonexistent"});
  } catch (const mpt::Error& e) {
    return std::string(e.what());
  }
  return std::nullopt;
}

Blocking measure_blocking(const Model& model, const std::string& save_dir, bool async) {
  // One micro-batch per step, no warm-up longer than the 4 iterations.
  const int64_t micro = *recipe_for(model, 1, 1).train.micro_batch_size;
  const mpt::config::Recipe r =
      recipe_for(model, 1, 1,
                 {"train.global_batch_size=" + std::to_string(micro), "train.train_iters=4", "logger.log_interval=1",
                  "scheduler.lr_warmup_iters=0",
                  "checkpoint.save=" + save_dir, "checkpoint.save_interval=2",
                  std::string("checkpoint.async_save=") + (async ? "true" : "false")});
  // Each iteration's log line, stamped as it arrives: {iteration, time, step seconds}.
  struct Line {
    long long iteration;
    Clock::time_point at;
    double step_s;
  };
  std::vector<Line> lines;
  std::mutex mu;
  const mpt::Logger stamping(
      [&](mpt::LogLevel, const std::string& msg) {
        long long it = 0, total = 0;
        if (std::sscanf(msg.c_str(), " iteration %lld/%lld", &it, &total) != 2) return;
        const size_t at = msg.find("elapsed time per iteration (ms): ");
        const double ms = at == std::string::npos ? 0.0 : std::strtod(msg.c_str() + at + 33, nullptr);
        std::lock_guard<std::mutex> lock(mu);
        lines.push_back({it, Clock::now(), ms / 1e3});
      },
      mpt::LogLevel::kInfo);
  {
    mpt::train::Engine engine(r, stamping);
    engine.train();
  }
  auto find = [&](long long it) -> const Line& {
    for (const Line& l : lines)
      if (l.iteration == it) return l;
    mpt::fail(mpt::Status::kInternal, "bench_checkpoint: no log line for iteration ", it);
  };
  Blocking b;
  b.step2_s = find(2).step_s;
  b.step3_s = find(3).step_s;
  b.blocked_s = std::chrono::duration<double>(find(3).at - find(2).at).count() - b.step3_s;
  return b;
}

const char* kind_reference(Kind k) {
  switch (k) {
    case Kind::kSave: return "write+fsync";
    case Kind::kWarmLoad: return "read (page cache)";
    case Kind::kColdLoad: return "read (cold)";
  }
  return "?";
}

double reference_mbs(const Reference& ref, Kind k) {
  switch (k) {
    case Kind::kSave: return ref.write_mbs;
    case Kind::kWarmLoad: return ref.warm_read_mbs;
    case Kind::kColdLoad: return ref.cold_read_mbs;
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  const std::string which = argc > 1 ? argv[1] : "all";
  if (which != "tiny" && which != "all") {
    std::fprintf(stderr, "bench_checkpoint: expected tiny or all, got '%s'\n", which.c_str());
    return 2;
  }
  std::vector<Model> models = {{"tiny", ""}};
  if (which == "all") models.push_back({"gpt-108M", kLarge});

  const char* tmpdir = std::getenv("TMPDIR");
  std::string pattern = std::string(tmpdir && *tmpdir ? tmpdir : "/tmp") + "/mpt_bench_checkpoint_XXXXXX";
  if (::mkdtemp(pattern.data()) == nullptr) {
    std::fprintf(stderr, "bench_checkpoint: cannot create %s: %s\n", pattern.c_str(), std::strerror(errno));
    return 1;
  }
  const std::string root = pattern;
  int status = 0;
  try {
    std::vector<Row> rows;
    std::vector<std::string> notes;
    for (const Model& model : models) {
      const mpt::config::Recipe r = recipe_for(model, 1, 1);
      std::printf("%s: %lld layers, hidden %lld, vocab %lld (padded %lld)\n", model.name.c_str(),
                  static_cast<long long>(r.model.num_layers), static_cast<long long>(r.model.hidden_size),
                  static_cast<long long>(r.model.vocab_size), static_cast<long long>(r.derived.padded_vocab_size));
      std::fflush(stdout);
      const std::string base = mpt::ckpt::join_path(root, model.name);
      const std::string four = save_and_load(model, 4, base + "_4ranks", rows);
      save_and_load(model, 1, base + "_1rank", rows);
      reshard_load(model, four, rows);
      mpt::ckpt::remove_tree(base + "_4ranks");
      mpt::ckpt::remove_tree(base + "_1rank");
      for (size_t i = rows.size() - 8; i < rows.size(); ++i)
        std::printf("  %-55s %8.3f s  %8.1f MB/s  (%.1f MB)\n", rows[i].what.c_str(), rows[i].seconds, rows[i].mbs(),
                    static_cast<double>(rows[i].bytes) / 1e6);
      std::fflush(stdout);
    }

    const Row& biggest = *std::max_element(rows.begin(), rows.end(),
                                           [](const Row& a, const Row& b) { return a.bytes < b.bytes; });
    const Reference ref = measure_reference(root, biggest.bytes);
    {
      const std::string dir = mpt::ckpt::join_path(root, "format_only");
      const FormatFigures f = measure_format(dir, biggest.bytes);
      mpt::ckpt::remove_tree(dir);
      const std::string model = "format layer only";
      rows.push_back({model, "`ckpt::save_checkpoint`, 1 file", 1, Kind::kSave, f.bytes, f.save_s});
      rows.push_back({model, "`CheckpointReader` + read all (page cache)", 1, Kind::kWarmLoad, f.bytes, f.warm_load_s});
      rows.push_back({model, "`CheckpointReader` + read all (cold)", 1, Kind::kColdLoad, f.bytes, f.cold_load_s});
      std::printf("format layer only, %.1f MB: save %.3f s, load cold %.3f s, load from the page cache %.3f s\n",
                  static_cast<double>(f.bytes) / 1e6, f.save_s, f.cold_load_s, f.warm_load_s);
    }
    std::printf("reference, one %.1f MB file in the same directory: write+fsync %.1f MB/s, read cold %.1f MB/s, "
                "read from the page cache %.1f MB/s\n",
                static_cast<double>(biggest.bytes) / 1e6, ref.write_mbs, ref.cold_read_mbs, ref.warm_read_mbs);

    const Model& blocking_model = models.back();
    std::optional<std::string> rejected = async_rejection(blocking_model);
    std::vector<std::string> blocking_rows;
    if (rejected) {
      std::printf("checkpoint.async_save: not measured, the recipe rejects it: %s\n", rejected->c_str());
    } else {
      for (bool async : {false, true}) {
        const std::string dir = mpt::ckpt::join_path(root, async ? "blocking_async" : "blocking_sync");
        const Blocking b = measure_blocking(blocking_model, dir, async);
        mpt::ckpt::remove_tree(dir);
        char row[256];
        std::snprintf(row, sizeof(row), "| %s | %s | %.3f | %.3f | %.3f |", blocking_model.name.c_str(),
                      async ? "async_save = true" : "async_save = false", b.blocked_s, b.step2_s, b.step3_s);
        blocking_rows.emplace_back(row);
        std::printf("save at iteration 2, %s: held training up %.3f s (step 2 %.3f s, step 3 %.3f s)\n",
                    async ? "async" : "sync", b.blocked_s, b.step2_s, b.step3_s);
        std::fflush(stdout);
      }
    }

    std::printf("\n| model | operation | ranks | checkpoint MB | wall s | MB/s | reference | ratio to reference |\n");
    std::printf("|---|---|---|---|---|---|---|---|\n");
    for (const Row& row : rows)
      std::printf("| %s | %s | %lld | %.1f | %.3f | %.1f | %s %.1f MB/s | %.3fx |\n", row.model.c_str(),
                  row.what.c_str(), static_cast<long long>(row.ranks), static_cast<double>(row.bytes) / 1e6,
                  row.seconds, row.mbs(), kind_reference(row.kind), reference_mbs(ref, row.kind),
                  row.mbs() / reference_mbs(ref, row.kind));
    if (!blocking_rows.empty()) {
      std::printf("\n| model | saving | training held up s | step 2 s (no save in flight) | step 3 s |\n");
      std::printf("|---|---|---|---|---|\n");
      for (const std::string& row : blocking_rows) std::printf("%s\n", row.c_str());
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_checkpoint: %s\n", e.what());
    status = 1;
  }
  if (!mpt::ckpt::remove_tree(root)) {
    std::fprintf(stderr, "bench_checkpoint: could not remove %s\n", root.c_str());
    status = 1;
  }
  return status;
}
