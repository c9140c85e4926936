// The engine end to end on the CPU: training lowers the loss, gradient accumulation equals
// one large micro-batch, a resumed run continues bit for bit, host batches are checked and
// equal the dataset's, and the metrics file has the fields other tools read.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <vector>

#include "config/recipe.h"
#include "core/error.h"
#include "data/sample_source.h"
#include "optim/lr_schedule.h"
#include "train/engine.h"

namespace mpt::train {
namespace {

const char* kSmall = R"(
[model]
num_layers = 2
hidden_size = 32
ffn_hidden_size = 48
num_attention_heads = 4
num_query_groups = 2
seq_length = 16
vocab_size = 257
normalization = "RMSNorm"
activation_func = "silu"
gated_linear_unit = true
add_bias_linear = false
position_embedding_type = "rope"
share_embeddings_and_output_weights = false
hidden_dropout = 0.0
attention_dropout = 0.0
[train]
micro_batch_size = 2
global_batch_size = 8
train_iters = 6
[optimizer]
lr = 3e-3
weight_decay = 0.1
[scheduler]
lr_decay_style = "cosine"
lr_warmup_iters = 2
[dataset]
source = "corpus"
)";

Logger quiet() {
  return Logger([](LogLevel, const std::string&) {});
}

config::Recipe small(const std::vector<std::string>& overrides = {}) {
  config::Recipe r = config::load_recipe_string(kSmall, "small.toml");
  config::apply_overrides(r, overrides);
  config::finalize(r, 1);
  return r;
}

std::string temp_dir() {
  char tmpl[] = "/tmp/mpt_engine_XXXXXX";
  const char* d = mkdtemp(tmpl);
  EXPECT_NE(d, nullptr);
  return d;
}

TEST(Engine, TinyRecipeLossFalls) {
  config::Recipe r = config::load_recipe_file(MPT_SOURCE_DIR "/recipes/tiny.toml");
  config::apply_overrides(r, {"train.train_iters=40"});
  config::finalize(r, 1);
  Engine e(r, quiet());
  const double first = e.train_step().lm_loss;
  EXPECT_NEAR(first, std::log(257.0), 0.2);  // uniform over the vocabulary at init
  double last = 0;
  for (int i = 1; i < 40; ++i) last = e.train_step().lm_loss;
  EXPECT_LT(last, 0.55 * first) << "first " << first << " last " << last;
}

TEST(Engine, GradientAccumulationEqualsOneMicroBatch) {
  Engine two(small({"train.micro_batch_size=4"}), quiet());  // 2 micro-batches of 4
  Engine one(small({"train.micro_batch_size=8"}), quiet());  // 1 micro-batch of 8
  for (int i = 0; i < 3; ++i) {
    StepResult a = two.train_step(), b = one.train_step();
    EXPECT_NEAR(a.lm_loss, b.lm_loss, 1e-5 * std::fabs(b.lm_loss)) << "step " << i;
    EXPECT_NEAR(a.grad_norm, b.grad_norm, 1e-4 * std::fabs(b.grad_norm)) << "step " << i;
    EXPECT_EQ(a.consumed_samples, b.consumed_samples);
  }
}

TEST(Engine, ResumeContinuesBitForBit) {
  const std::string dir = temp_dir();
  std::vector<double> straight;
  {
    Engine e(small(), quiet());
    for (int i = 0; i < 5; ++i) straight.push_back(e.train_step().lm_loss);
  }
  {
    Engine e(small(), quiet());
    for (int i = 0; i < 2; ++i) ASSERT_EQ(e.train_step().lm_loss, straight[i]);
    e.save_checkpoint(dir);
  }
  {
    // A different seed: only a real load can reproduce the straight run.
    Engine e(small({"rng.seed=999", "checkpoint.load=" + dir}), quiet());
    EXPECT_EQ(e.iteration(), 2);
    for (int i = 2; i < 5; ++i) {
      StepResult s = e.train_step();
      EXPECT_EQ(s.lm_loss, straight[i]) << "step " << i;
      EXPECT_EQ(s.iteration, i + 1);
    }
  }
  std::filesystem::remove_all(dir);
}

TEST(Engine, MissingCheckpointIsAnErrorOnlyWhenAsked) {
  const std::string dir = temp_dir();
  EXPECT_NO_THROW(Engine(small({"checkpoint.load=" + dir}), quiet()));
  try {
    Engine e(small({"checkpoint.load=" + dir, "checkpoint.exit_on_missing_checkpoint=true"}), quiet());
    FAIL() << "expected an error";
  } catch (const Error& err) {
    EXPECT_EQ(err.status(), Status::kIoError);
    EXPECT_NE(std::string(err.what()).find(dir), std::string::npos) << err.what();
  }
  std::filesystem::remove_all(dir);
}

TEST(Engine, UnwritableSaveDirFailsBeforeTraining) {
  try {
    Engine e(small({"checkpoint.save=/proc/mptrain-cannot-exist/ckpt"}), quiet());
    FAIL() << "expected an error";
  } catch (const Error& err) {
    EXPECT_EQ(err.status(), Status::kIoError);
    EXPECT_NE(std::string(err.what()).find("checkpoint.save"), std::string::npos) << err.what();
  }
}

TEST(Engine, HostBatchEqualsDatasetBatch) {
  config::Recipe r = small();
  const int64_t rows = 8, S = 16;
  auto src = data::make_corpus_source(S, 1234, data::Split::kTrain, "");
  std::vector<int32_t> tokens(rows * (S + 1));
  data::fill_batch(*src, 0, rows, tokens.data());

  Engine from_data(r, quiet()), from_host(r, quiet()), with_labels(r, quiet());
  const double ref = from_data.train_step().lm_loss;
  HostBatch b;
  b.tokens = tokens.data();
  b.rows = rows;
  b.cols = S + 1;
  EXPECT_EQ(from_host.train_step(&b).lm_loss, ref);

  // Explicit labels and an all-ones mask give the same step.
  std::vector<int32_t> ids(rows * S), labels(rows * S);
  std::vector<float> mask(rows * S, 1.0f);
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t s = 0; s < S; ++s) ids[i * S + s] = tokens[i * (S + 1) + s], labels[i * S + s] = tokens[i * (S + 1) + s + 1];
  HostBatch l{ids.data(), labels.data(), mask.data(), rows, S};
  EXPECT_EQ(with_labels.train_step(&l).lm_loss, ref);
}

TEST(Engine, BadHostBatchIsRejectedAndNothingChanges) {
  Engine e(small(), quiet());
  std::vector<int32_t> tokens(8 * 17, 1);
  auto expect_invalid = [&](HostBatch b, const std::string& needle) {
    try {
      e.train_step(&b);
      FAIL() << "expected an error mentioning " << needle;
    } catch (const Error& err) {
      EXPECT_EQ(err.status(), Status::kInvalidArgument);
      EXPECT_NE(std::string(err.what()).find(needle), std::string::npos) << err.what();
    }
  };
  expect_invalid(HostBatch{tokens.data(), nullptr, nullptr, 4, 17}, "batch.rows is 4");
  expect_invalid(HostBatch{tokens.data(), nullptr, nullptr, 8, 16}, "batch.cols is 16");
  tokens[3 * 17 + 5] = 300;
  expect_invalid(HostBatch{tokens.data(), nullptr, nullptr, 8, 17}, "batch.tokens[3][5] = 300");
  tokens[3 * 17 + 5] = 1;
  std::vector<float> mask(8 * 16, 1.0f);
  mask[7] = NAN;
  expect_invalid(HostBatch{tokens.data(), nullptr, mask.data(), 8, 17}, "batch.loss_mask[0][7]");
  expect_invalid(HostBatch{nullptr, nullptr, nullptr, 8, 17}, "batch.tokens is NULL");
  EXPECT_EQ(e.iteration(), 0);
  // The engine is still usable and still at its first step.
  Engine fresh(small(), quiet());
  EXPECT_EQ(e.train_step().lm_loss, fresh.train_step().lm_loss);
}

TEST(Engine, MetricsFileHasTheDocumentedFields) {
  const std::string dir = temp_dir();
  const std::string path = dir + "/metrics.jsonl";
  Engine e(small({"logger.metrics_file=" + path, "logger.log_interval=2", "validation.eval_interval=3",
                  "validation.eval_iters=1", "checkpoint.save=" + dir + "/ckpt", "checkpoint.save_interval=4"}),
           quiet());
  e.train();
  std::ifstream in(path);
  std::string line;
  int steps = 0, memory = 0, validation = 0;
  while (std::getline(in, line)) {
    nlohmann::json j = nlohmann::json::parse(line);
    if (j.value("event", "") == "memory") {
      ++memory;
      for (const char* k : {"rank", "params_bytes", "grads_bytes", "optimizer_bytes", "activations_peak_bytes"})
        EXPECT_TRUE(j.contains(k)) << k;
      EXPECT_GT(j["params_bytes"].get<int64_t>(), 0);
      EXPECT_GT(j["activations_peak_bytes"].get<int64_t>(), 0);
    } else if (j.value("event", "") == "validation") {
      ++validation;
      EXPECT_TRUE(std::isfinite(j["lm_loss"].get<double>()));
    } else {
      ++steps;
      for (const char* k : {"iteration", "lm_loss", "grad_norm", "lr", "step_time_s", "tokens_per_sec",
                            "consumed_samples"})
        EXPECT_TRUE(j.contains(k)) << k;
      EXPECT_EQ(j["iteration"].get<int64_t>(), steps);
      EXPECT_EQ(j["consumed_samples"].get<int64_t>(), 8 * steps);
    }
  }
  EXPECT_EQ(steps, 6);
  EXPECT_EQ(memory, 1);
  EXPECT_EQ(validation, 2);
  // save_interval 4 and the final save at 6
  EXPECT_TRUE(std::filesystem::exists(dir + "/ckpt/iter_0000004/index.json"));
  EXPECT_TRUE(std::filesystem::exists(dir + "/ckpt/iter_0000006/index.json"));
  std::ifstream latest(dir + "/ckpt/latest_checkpointed_iteration.txt");
  int64_t it = 0;
  latest >> it;
  EXPECT_EQ(it, 6);
  std::filesystem::remove_all(dir);
}

TEST(Engine, DivergenceStopsWithAnErrorAndNoUpdate) {
  // An absurd learning rate blows the weights up after one step; the next step must report
  // the non-finite loss instead of applying it.
  Engine e(small({"optimizer.lr=1e30", "scheduler.lr_warmup_iters=0", "scheduler.lr_decay_style=constant",
                  "optimizer.clip_grad=0"}),
           quiet());
  e.train_step();
  int64_t failed_at = -1;
  for (int i = 0; i < 4 && failed_at < 0; ++i) {
    const int64_t before = e.iteration();
    try {
      e.train_step();
    } catch (const Error& err) {
      EXPECT_EQ(err.status(), Status::kNumerical);
      EXPECT_NE(std::string(err.what()).find("parameters were not updated"), std::string::npos) << err.what();
      failed_at = before;
      EXPECT_EQ(e.iteration(), before);  // the failed step did not count
    }
  }
  EXPECT_GE(failed_at, 1) << "the diverged run was never stopped";
}

TEST(LRSchedule, WarmupThenDecayAsMegatron) {
  optim::LRSchedule s;
  s.max_lr = 1.0;
  s.min_lr = 0.1;
  s.warmup_iters = 4;
  s.decay_iters = 14;
  s.decay_style = "linear";
  EXPECT_DOUBLE_EQ(s.lr_at(0), 0.0);  // Megatron's first warmup step runs at lr_warmup_init
  EXPECT_DOUBLE_EQ(s.lr_at(2), 0.5);
  EXPECT_DOUBLE_EQ(s.lr_at(4), 1.0);
  EXPECT_DOUBLE_EQ(s.lr_at(9), 0.55);
  EXPECT_DOUBLE_EQ(s.lr_at(14), 0.1);
  EXPECT_DOUBLE_EQ(s.lr_at(20), 0.1);
  s.decay_style = "cosine";
  EXPECT_NEAR(s.lr_at(9), 0.1 + 0.9 * 0.5, 1e-12);
  EXPECT_NEAR(s.lr_at(6), 0.1 + 0.9 * 0.5 * (std::cos(M_PI * 0.2) + 1), 1e-12);
  s.decay_style = "constant";
  EXPECT_DOUBLE_EQ(s.lr_at(9), 1.0);
  s.start_wd = 0.0;
  s.end_wd = 0.1;
  s.wd_style = "linear";
  EXPECT_NEAR(s.weight_decay_at(7), 0.05, 1e-12);
}

}  // namespace
}  // namespace mpt::train
