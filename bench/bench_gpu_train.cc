// GPU training throughput: one recipe trained on one device, timed step by step, reported as
// JSON lines that bench/gpu/run.sh compares with the same model written in PyTorch
// (bench/gpu/torch_gpt.py prints the same fields).
//
//   build/bench_gpu_train RECIPE.toml [section.key=value ...] [--name NAME] [--impl IMPL]
//                         [--micro-batch N[,N...]] [--warmup W] [--steps S]
//                         [--time-budget SECONDS] [--peak-tflops TFLOPS] [--describe]
//
// --micro-batch tries each size in turn (largest first) and times the first that fits; a size
// that runs out of memory prints an "out_of_memory" line and the next is tried. Each step is
// one micro-batch (global_batch_size = micro_batch_size), like one forward, backward and
// optimizer step of the PyTorch loop. Steps are timed on the host around train_step with the
// device synchronised after each; W untimed steps come first (lazy kernel loading, GEMM
// heuristics, first touch of every buffer). --time-budget (seconds from the program's start)
// shortens the warm-up (to 1 step at least) and lowers S (to 1 at least) so the run ends in
// time; the line says how many steps of each ran. --describe prints the model's figures
// without training (no device needed). Exit status: 0, 1 on an error, 2 on a usage error, 3
// when no size fits.
//
// --impl names the implementation in the JSON lines (default "mptrain"; run.sh names the run
// with model.cuda_graph_impl=local "mptrain+graphs"). When the recipe asks for CUDA graphs, the
// "ok" line adds graph_nodes: the nodes of the micro-batch's forward and backward graphs, read
// from the engine's log lines, or null when none was recorded (a backend without graphs, or a
// run that ended before the capture); graph_recorded_at is the step that recorded them
// (counted from 1 over warm-up and timed steps), so a capture inside the timed steps shows.
//
// Model FLOPs per step, the count `mptrain plan` uses (recomputation, padding masks and the
// optimizer not counted):
//   6 * N * T  +  6 * L * S * A * T
//   N  weights used in matrix multiplies: per layer linear_qkv, linear_proj, linear_fc1 and
//      linear_fc2, plus the output layer (padded vocabulary x hidden, counted also when tied
//      to the embedding, whose lookup is not a matrix multiply); biases and norms excluded.
//   T  tokens per step (micro_batch x seq_length); L layers; S seq_length;
//   A  attention width, heads x head_dim.
//   6 = 2 FLOPs per multiply-add forward + 4 backward. Attention: QK^T and PV take 2 x 2 x A
//   FLOPs per (query, key) pair forward, x3 with the backward, over S/2 keys per query on
//   average under the causal mask: 6 x S x A per token and layer.
// mfu uses that count; mfu_palm uses PaLM's (Chowdhery et al. 2022, appendix B)
// 6 * N * T + 12 * L * S * A * T, which does not halve the causal attention, to compare with
// figures published that way. Both divide by the step time and --peak-tflops (default 989: the
// dense bf16 tensor-core peak of an H100 SXM; the H200 has the same).
//
// Memory on a GPU: peak_device_bytes is the growth of the device's used memory
// (cudaMemGetInfo: total - free) from before the engine was built, sampled after every
// synchronised step; the caching allocator keeps what it takes, so this is the high-water
// mark of everything the run holds (allocator blocks with their size-class rounding, the
// cuBLASLt workspace, loaded kernels), the counterpart of torch.cuda.max_memory_reserved.
// allocator_peak_bytes is the caching allocator's high-water mark of memory handed out
// (MemoryReport.backend_peak_bytes), the counterpart of torch.cuda.max_memory_allocated.
// accounted_bytes is the engine's own MemoryReport (parameters, gradients, optimizer state,
// the planned activations, the backend's work buffers).
#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <new>
#include <numeric>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "backend/devices.h"
#include "config/recipe.h"
#include "core/error.h"
#include "core/log.h"
#include "model/gpt_dims.h"
#include "model/gpt_model.h"
#include "train/engine.h"

#ifdef MPT_HAVE_CUDA
#include <cuda_runtime.h>
#endif

namespace {

using Clock = std::chrono::steady_clock;
using json = nlohmann::ordered_json;

const Clock::time_point kStart = Clock::now();

double since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

struct Options {
  std::string recipe_path;
  std::vector<std::string> overrides;
  std::string name;
  std::string impl = "mptrain";
  std::vector<int64_t> micro_batches;  // empty: the recipe's
  int warmup = 3;
  int steps = 10;
  double time_budget_s = 0;  // 0: none
  double peak_tflops = 989;
  bool describe = false;
};

[[noreturn]] void usage(const std::string& why) {
  std::fprintf(stderr,
               "bench_gpu_train: %s\n"
               "usage: bench_gpu_train RECIPE.toml [section.key=value ...] [--name NAME] [--impl IMPL]\n"
               "         [--micro-batch N[,N...]] [--warmup W] [--steps S] [--time-budget SECONDS]\n"
               "         [--peak-tflops TFLOPS] [--describe]\n",
               why.c_str());
  std::exit(2);
}

int64_t parse_int(const std::string& flag, const std::string& text, int64_t min, int64_t max) {
  char* end = nullptr;
  errno = 0;
  const long long v = std::strtoll(text.c_str(), &end, 10);
  if (text.empty() || *end != '\0' || errno != 0 || v < min || v > max)
    usage(flag + ": expected an integer in [" + std::to_string(min) + ", " + std::to_string(max) + "], got '" +
          text + "'");
  return v;
}

double parse_positive(const std::string& flag, const std::string& text) {
  char* end = nullptr;
  const double v = std::strtod(text.c_str(), &end);
  if (text.empty() || *end != '\0' || !(v > 0)) usage(flag + ": expected a number > 0, got '" + text + "'");
  return v;
}

Options parse_args(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    const auto value = [&]() -> std::string {
      if (i + 1 >= argc) usage(a + " needs a value");
      return argv[++i];
    };
    if (a == "--name") {
      o.name = value();
    } else if (a == "--impl") {
      o.impl = value();
      if (o.impl.empty()) usage("--impl: expected a name, got ''");
    } else if (a == "--micro-batch") {
      const std::string list = value();
      size_t pos = 0;
      while (pos <= list.size()) {
        const size_t comma = std::min(list.find(',', pos), list.size());
        o.micro_batches.push_back(parse_int(a, list.substr(pos, comma - pos), 1, int64_t{1} << 40));
        pos = comma + 1;
      }
    } else if (a == "--warmup") {
      o.warmup = static_cast<int>(parse_int(a, value(), 1, 1000000));
    } else if (a == "--steps") {
      o.steps = static_cast<int>(parse_int(a, value(), 1, 1000000));
    } else if (a == "--time-budget") {
      o.time_budget_s = parse_positive(a, value());
    } else if (a == "--peak-tflops") {
      o.peak_tflops = parse_positive(a, value());
    } else if (a == "--describe") {
      o.describe = true;
    } else if (a.rfind("--", 0) == 0) {
      usage("unknown option " + a);
    } else if (o.recipe_path.empty()) {
      o.recipe_path = a;
    } else if (a.find('=') != std::string::npos) {
      o.overrides.push_back(a);
    } else {
      usage("expected section.key=value, got '" + a + "'");
    }
  }
  if (o.recipe_path.empty()) usage("no recipe given");
  if (o.name.empty()) {
    // The recipe's file name without directory and extension.
    std::string n = o.recipe_path.substr(o.recipe_path.find_last_of('/') + 1);
    o.name = n.substr(0, n.rfind(".toml"));
  }
  return o;
}

// --- the model's figures --------------------------------------------------------------------

// Weights used in matrix multiplies (N above), from the finalized recipe.
double matmul_weights(const mpt::config::Recipe& r) {
  const auto& m = r.model;
  const auto& d = r.derived;
  const double h = static_cast<double>(m.hidden_size), f = static_cast<double>(d.ffn_hidden_size);
  const double width = static_cast<double>(m.num_attention_heads * d.kv_channels);
  const double qkv = h * (width + 2.0 * static_cast<double>(d.num_query_groups * d.kv_channels));
  const double proj = width * h;
  const double mlp = (m.gated_linear_unit ? 2.0 : 1.0) * h * f + f * h;
  return static_cast<double>(m.num_layers) * (qkv + proj + mlp) + static_cast<double>(d.padded_vocab_size) * h;
}

struct ModelFlops {
  double causal = 0;  // 6NT + 6LSAT
  double palm = 0;    // 6NT + 12LSAT
};

ModelFlops model_flops(const mpt::config::Recipe& r, double tokens) {
  const auto& m = r.model;
  const double attention = static_cast<double>(m.num_layers) * static_cast<double>(m.seq_length) *
                           static_cast<double>(m.num_attention_heads * r.derived.kv_channels) * tokens;
  const double dense = 6.0 * matmul_weights(r) * tokens;
  return {dense + 6.0 * attention, dense + 12.0 * attention};
}

// --- the device -------------------------------------------------------------------------------

// Whether the engine will train on a GPU: the rule of train::make_backend (MPT_BACKEND, else a
// visible GPU in a CUDA build).
bool engine_on_gpu() {
  const char* env = std::getenv("MPT_BACKEND");
  const std::string want = env ? env : "";
  if (want == "cuda") return true;
  return want.empty() && mpt::backend::built_with_cuda() && mpt::backend::cuda_device_count() > 0;
}

void synchronize_device(bool gpu) {
#ifdef MPT_HAVE_CUDA
  if (!gpu) return;
  const cudaError_t err = cudaDeviceSynchronize();
  MPT_CHECK(err == cudaSuccess, mpt::Status::kDevice, "bench_gpu_train: cudaDeviceSynchronize: ",
            cudaGetErrorString(err));
#else
  (void)gpu;
#endif
}

// Bytes in use on the current device (total - free), 0 off the GPU.
int64_t device_used_bytes(bool gpu) {
#ifdef MPT_HAVE_CUDA
  if (gpu) {
    size_t free_bytes = 0, total_bytes = 0;
    const cudaError_t err = cudaMemGetInfo(&free_bytes, &total_bytes);
    MPT_CHECK(err == cudaSuccess, mpt::Status::kDevice, "bench_gpu_train: cudaMemGetInfo: ", cudaGetErrorString(err));
    return static_cast<int64_t>(total_bytes - free_bytes);
  }
#else
  (void)gpu;
#endif
  return 0;
}

// The device a run trains on, in words for its JSON line.
std::string device_summary(bool gpu) {
  if (gpu) return mpt::backend::cuda_device_summary();
  const char* env = std::getenv("MPT_BACKEND");
  return env && std::string(env) == "cpu-device" ? "cpu (emulated device)" : "cpu";
}

// --- CUDA graphs, as the engine's log reports them ----------------------------------------------

// What the engine's lines "... CUDA graph of a micro-batch's forward recorded at iteration N:
// K nodes" (and the backward's) said.
struct GraphsSeen {
  int graphs = 0;
  int64_t nodes = 0;
  int64_t first_iteration = 0;
};

void note_graph(const std::string& msg, GraphsSeen& seen) {
  static const std::string kWhat = "CUDA graph of a micro-batch's ", kAt = " recorded at iteration ";
  const size_t what = msg.find(kWhat);
  if (what == std::string::npos) return;
  const size_t at = msg.find(kAt, what);
  if (at == std::string::npos) return;
  long long iteration = 0, nodes = 0;
  char tail[8] = {};
  if (std::sscanf(msg.c_str() + at + kAt.size(), "%lld: %lld %7s", &iteration, &nodes, tail) != 3 ||
      std::string(tail) != "nodes")
    return;
  ++seen.graphs;
  seen.nodes += nodes;
  if (seen.first_iteration == 0) seen.first_iteration = iteration;
}

// --- one run ------------------------------------------------------------------------------------

mpt::config::Recipe recipe_for(const Options& o, int64_t micro_batch) {
  mpt::config::Recipe r = mpt::config::load_recipe_file(o.recipe_path);
  mpt::config::apply_overrides(r, o.overrides);
  if (micro_batch > 0)
    mpt::config::apply_overrides(r, {"train.micro_batch_size=" + std::to_string(micro_batch),
                                     "train.global_batch_size=" + std::to_string(micro_batch)});
  mpt::config::finalize(r, 1);
  return r;
}

json model_fields(const Options& o, const mpt::config::Recipe& r, int64_t params) {
  const int64_t tokens = *r.train.global_batch_size * r.model.seq_length;
  const ModelFlops flops = model_flops(r, static_cast<double>(tokens));
  return {{"bench", "gpu_train"},
          {"impl", o.impl},
          {"model", o.name},
          {"micro_batch", *r.train.micro_batch_size},
          {"seq_length", r.model.seq_length},
          {"vocab_size", r.model.vocab_size},
          {"params", params},
          {"matmul_params", static_cast<int64_t>(matmul_weights(r))},
          {"tokens_per_step", tokens},
          {"flops_per_step", flops.causal},
          {"flops_per_step_palm", flops.palm},
          {"precision", mpt::config::uses_bf16(r) ? "bf16_mixed" : "fp32"}};
}

void print_line(const json& j) {
  std::printf("%s\n", j.dump().c_str());
  std::fflush(stdout);
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

// Trains `r` and prints its figures.
void time_run(const Options& o, const mpt::config::Recipe& r) {
  const bool gpu = engine_on_gpu();
  const std::string device = device_summary(gpu);
  const int64_t used_before = device_used_bytes(gpu);
  GraphsSeen graphs;
  mpt::Logger log(
      [&graphs](mpt::LogLevel, const std::string& m) {
        std::fprintf(stderr, "%s\n", m.c_str());
        note_graph(m, graphs);
      },
      mpt::LogLevel::kInfo);
  mpt::train::Engine engine(r, log);
  int64_t used_peak = device_used_bytes(gpu);

  double first_loss = 0;
  double step_s = 0;  // the last warm-up step's time
  int warmup = 0;
  const auto budget_left = [&] { return o.time_budget_s - since(kStart); };
  while (warmup < o.warmup) {
    const auto t0 = Clock::now();
    const mpt::train::StepResult s = engine.train_step();
    synchronize_device(gpu);
    step_s = std::max(since(t0), 1e-6);
    if (warmup++ == 0) first_loss = s.lm_loss;
    used_peak = std::max(used_peak, device_used_bytes(gpu));
    // Under a budget, the warm-up gives way to at least 3 timed steps.
    if (o.time_budget_s > 0 && budget_left() < (o.warmup - warmup + 3) * step_s) break;
  }
  int steps = o.steps;
  if (o.time_budget_s > 0) steps = std::clamp(static_cast<int>(budget_left() / step_s), 1, o.steps);
  std::vector<double> times;
  double last_loss = 0;
  for (int i = 0; i < steps; ++i) {
    const auto t0 = Clock::now();
    const mpt::train::StepResult s = engine.train_step();
    synchronize_device(gpu);
    times.push_back(since(t0));
    last_loss = s.lm_loss;
    used_peak = std::max(used_peak, device_used_bytes(gpu));
  }

  const mpt::train::MemoryReport m = engine.memory();
  const int64_t accounted =
      m.params_bytes + m.grads_bytes + m.optimizer_bytes + m.activations_peak_bytes + m.backend_workspace_bytes;
  json j = model_fields(o, r, engine.num_parameters());
  const double tokens = j["tokens_per_step"].get<double>();
  const double step_median = median(times);
  const double step_mean = std::accumulate(times.begin(), times.end(), 0.0) / static_cast<double>(times.size());
  const double peak = o.peak_tflops * 1e12;
  j["status"] = "ok";
  j["device"] = device;
  j["warmup_steps"] = warmup;
  j["timed_steps"] = steps;
  j["step_ms_median"] = step_median * 1e3;
  j["step_ms_mean"] = step_mean * 1e3;
  j["step_ms_min"] = *std::min_element(times.begin(), times.end()) * 1e3;
  j["tokens_per_s"] = tokens / step_median;
  j["peak_tflops"] = o.peak_tflops;
  j["mfu"] = j["flops_per_step"].get<double>() / step_median / peak;
  j["mfu_palm"] = j["flops_per_step_palm"].get<double>() / step_median / peak;
  j["peak_device_bytes"] = gpu ? json(used_peak - used_before) : json(nullptr);
  j["accounted_bytes"] = accounted;
  j["allocator_peak_bytes"] = gpu ? json(m.backend_peak_bytes) : json(nullptr);
  j["memory"] = {{"params", m.params_bytes},
                 {"grads", m.grads_bytes},
                 {"optimizer", m.optimizer_bytes},
                 {"activations", m.activations_peak_bytes},
                 {"backend_workspace", m.backend_workspace_bytes}};
  j["loss_first"] = first_loss;
  j["loss_last"] = last_loss;
  if (r.model.cuda_graph_impl == "local") {
    j["graph_nodes"] = graphs.graphs ? json(graphs.nodes) : json(nullptr);
    j["graph_recorded_at"] = graphs.graphs ? json(graphs.first_iteration) : json(nullptr);
  }
  print_line(j);
}

// The allocator's kOutOfMemory, or a CUDA library call that failed for memory (kDevice, naming
// the CUDA error "out of memory").
bool is_out_of_memory(const std::exception_ptr& e) {
  try {
    std::rethrow_exception(e);
  } catch (const mpt::Error& err) {
    return err.status() == mpt::Status::kOutOfMemory ||
           (err.status() == mpt::Status::kDevice && std::string(err.what()).find("out of memory") != std::string::npos);
  } catch (const std::bad_alloc&) {
    return true;
  } catch (...) {
    return false;
  }
}

int run(const Options& o) {
  if (o.describe) {
    const mpt::config::Recipe r = recipe_for(o, o.micro_batches.empty() ? 0 : o.micro_batches.front());
    const int64_t params = mpt::model::whole_model_registry(mpt::model::make_dims(r)).num_parameters();
    json j = model_fields(o, r, params);
    j["status"] = "describe";
    print_line(j);
    return 0;
  }
  const std::vector<int64_t> sizes = o.micro_batches.empty() ? std::vector<int64_t>{0} : o.micro_batches;
  for (const int64_t b : sizes) {
    const mpt::config::Recipe r = recipe_for(o, b);
    std::exception_ptr failure;
    try {
      time_run(o, r);
      return 0;
    } catch (...) {
      failure = std::current_exception();
    }
    // Outside the handler, so the failed engine and its device memory are gone.
    if (!is_out_of_memory(failure)) std::rethrow_exception(failure);
    std::string what;
    try {
      std::rethrow_exception(failure);
    } catch (const std::exception& e) {
      what = e.what();
    }
    json j = model_fields(o, r, 0);
    j.erase("params");
    j["status"] = "out_of_memory";
    j["error"] = what;
    print_line(j);
  }
  return 3;
}

}  // namespace

int main(int argc, char** argv) {
  const Options o = parse_args(argc, argv);
  try {
    return run(o);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_gpu_train: %s\n", e.what());
    return 1;
  }
}
