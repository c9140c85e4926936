// CPU benchmark of whole training steps, and of a GEMM of the model's typical shape in the
// same run as the reference: the ratio says how close a full step (every op, forward and
// backward, optimizer) gets to the machine's matrix-multiply throughput.
//
//   build/bench_train_step [gpt2|tiny|all] [steps]
//
// Model FLOPs per step = 6 * (weights used in matmuls, output layer included) * tokens
//                      + 6 * num_layers * seq_length * hidden * tokens   (causal attention:
//                        QK^T and PV, forward 2x and backward 4x, halved by the mask)
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "backend/cpu/blas.h"
#include "backend/ops.h"
#include "config/recipe.h"
#include "core/log.h"
#include "train/engine.h"

namespace {

using Clock = std::chrono::steady_clock;

const char* kGpt2Small = R"(
[model]
num_layers = 12
hidden_size = 768
num_attention_heads = 12
seq_length = 64
vocab_size = 50257
normalization = "LayerNorm"
activation_func = "gelu"
position_embedding_type = "learned_absolute"
share_embeddings_and_output_weights = true
hidden_dropout = 0.0
attention_dropout = 0.0
[train]
micro_batch_size = 4
global_batch_size = 4
train_iters = 1000
[optimizer]
lr = 1e-4
[dataset]
source = "mock"
)";

double matmul_weights(const mpt::config::Recipe& r) {
  const auto& m = r.model;
  const auto& d = r.derived;
  double h = static_cast<double>(m.hidden_size), f = static_cast<double>(d.ffn_hidden_size);
  double qkv = (m.num_attention_heads + 2.0 * d.num_query_groups) * d.kv_channels * h;
  double proj = h * m.num_attention_heads * d.kv_channels;
  double mlp = (m.gated_linear_unit ? 3.0 : 2.0) * h * f;
  return m.num_layers * (qkv + proj + mlp) + static_cast<double>(d.padded_vocab_size) * h;
}

double gemm_gflops(int64_t M, int64_t N, int64_t K) {
  auto ops = mpt::backend::make_cpu_ops(0);
  std::vector<float> a(M * K, 0.5f), b(N * K, 0.25f), c(M * N);
  auto A = mpt::Tensor::f32(a.data(), {M, K}), B = mpt::Tensor::f32(b.data(), {N, K}), C = mpt::Tensor::f32(c.data(), {M, N});
  ops->matmul(C, A, B, false, true, 1, 0);
  int reps = 0;
  auto t0 = Clock::now();
  double dt = 0;
  while (dt < 1.0) {
    ops->matmul(C, A, B, false, true, 1, 0);
    ++reps;
    dt = std::chrono::duration<double>(Clock::now() - t0).count();
  }
  return 2.0 * M * N * K * reps / dt / 1e9;
}

void run(const std::string& name, mpt::config::Recipe recipe, int steps) {
  mpt::config::finalize(recipe, 1);
  mpt::Logger quiet([](mpt::LogLevel, const std::string&) {});
  mpt::train::Engine engine(recipe, quiet);
  engine.train_step();  // warm-up: first touch of every buffer
  double total = 0;
  for (int i = 0; i < steps; ++i) total += engine.train_step().step_time_s;
  const double step_s = total / steps;
  const auto& r = recipe;
  const double tokens = static_cast<double>(*r.train.global_batch_size * r.model.seq_length);
  const double flops = 6.0 * matmul_weights(r) * tokens +
                       6.0 * r.model.num_layers * r.model.seq_length * r.model.hidden_size * tokens;
  const double model_gflops = flops / step_s / 1e9;
  const int64_t T = *r.train.micro_batch_size * r.model.seq_length;
  const double ref = gemm_gflops(T, r.derived.ffn_hidden_size, r.model.hidden_size);
  std::printf("%-10s params %.1fM | step %.1f ms | %.0f tokens/s | model %.1f GFLOP/s | "
              "sgemm [%lld x %lld x %lld] %.1f GFLOP/s | ratio %.2f | blas core %s\n",
              name.c_str(), engine.num_parameters() / 1e6, step_s * 1e3, tokens / step_s, model_gflops,
              static_cast<long long>(T), static_cast<long long>(r.derived.ffn_hidden_size),
              static_cast<long long>(r.model.hidden_size), ref, model_gflops / ref, mpt::backend::cpu::blas_core_name());
}

}  // namespace

int main(int argc, char** argv) {
  std::string which = argc > 1 ? argv[1] : "all";
  int steps = argc > 2 ? std::atoi(argv[2]) : 5;
  try {
    if (which == "gpt2" || which == "all") run("gpt2-small", mpt::config::load_recipe_string(kGpt2Small, "gpt2-small"), steps);
    if (which == "tiny" || which == "all") {
      mpt::config::Recipe r = mpt::config::load_recipe_file(MPT_BENCH_SOURCE_DIR "/recipes/tiny.toml");
      run("tiny", r, steps);
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_train_step: %s\n", e.what());
    return 1;
  }
  return 0;
}
