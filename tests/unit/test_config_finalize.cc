// finalize(): derived sizes, Megatron's rules, and what is not supported yet, all reported
// together with where each key was set.
#include <gtest/gtest.h>

#include <string>

#include "config/finalize_internal.h"
#include "config/recipe.h"
#include "test_config_fixtures.h"

namespace mpt::config {
namespace {

using testing::count_lines;
using testing::error_message;
using testing::kValidRecipe;

Recipe valid() { return load_recipe_string(kValidRecipe, "test.toml"); }

// The finalize() message for the valid recipe changed by `overrides`.
std::string problems_with(const std::vector<std::string>& overrides, int64_t world_size = 1) {
  Recipe r = valid();
  apply_overrides(r, overrides);
  return error_message([&] { finalize(r, world_size); });
}

bool has(const std::string& msg, const std::string& piece) { return msg.find(piece) != std::string::npos; }

TEST(ConfigFinalize, ValidRecipeDerivesSizes) {
  Recipe r = valid();
  finalize(r, 1);
  EXPECT_TRUE(r.finalized);
  const Derived& d = r.derived;
  EXPECT_EQ(d.world_size, 1);
  EXPECT_EQ(d.data_parallel_size, 1);
  EXPECT_EQ(d.expert_tensor_parallel_size, 1);
  EXPECT_EQ(d.expert_data_parallel_size, 1);
  EXPECT_EQ(d.ffn_hidden_size, 256);
  EXPECT_EQ(d.num_query_groups, 4);
  EXPECT_EQ(d.kv_channels, 16);
  EXPECT_EQ(d.padded_vocab_size, 384);
  EXPECT_EQ(d.num_microbatches, 4);
  EXPECT_EQ(d.lr_decay_iters, 20);
  EXPECT_EQ(d.lr_warmup_iters, 2);
  EXPECT_DOUBLE_EQ(d.min_lr, 3e-5);
  EXPECT_EQ(d.dataset_source, "corpus");
}

TEST(ConfigFinalize, ExplicitSizesAndDefaults) {
  Recipe r = valid();
  apply_overrides(r, {"model.ffn_hidden_size=100", "model.num_query_groups=2", "model.kv_channels=8",
                      "train.global_batch_size=null", "scheduler.lr_warmup_iters=0",
                      "scheduler.lr_warmup_fraction=0.25", "scheduler.lr_decay_iters=10", "optimizer.min_lr=null",
                      "dataset.source=\"\""});
  finalize(r, 1);
  EXPECT_EQ(r.derived.ffn_hidden_size, 100);
  EXPECT_EQ(r.derived.num_query_groups, 2);
  EXPECT_EQ(r.derived.kv_channels, 8);
  EXPECT_EQ(r.derived.num_microbatches, 1);  // global batch defaults to micro * DP
  EXPECT_EQ(r.derived.lr_decay_iters, 10);
  EXPECT_EQ(r.derived.lr_warmup_iters, 3);  // round(0.25 * 10)
  EXPECT_DOUBLE_EQ(r.derived.min_lr, 0.0);
  EXPECT_EQ(r.derived.dataset_source, "mock");
}

TEST(ConfigFinalize, PaddedVocabFollowsMegatron) {
  EXPECT_EQ(padded_vocab_size(257, 128, 1), 384);
  EXPECT_EQ(padded_vocab_size(257, 128, 4), 512);
  EXPECT_EQ(padded_vocab_size(256, 128, 1), 256);
  EXPECT_EQ(padded_vocab_size(50257, 128, 8), 51200);
  EXPECT_EQ(padded_vocab_size(1000, 1, 1), 1000);

  // Through finalize: the vocabulary is padded to a multiple of divisible_by x TP.
  Recipe r = valid();
  apply_overrides(r, {"model.tensor_model_parallel_size=4"});
  finalize(r, 4);
  EXPECT_EQ(r.derived.padded_vocab_size, 512);
  EXPECT_TRUE(r.finalized);
}

TEST(ConfigFinalize, TensorParallelSplitsMustDivide) {
  // Each rule names the key and the numbers; fewer query groups than TP ranks is refused.
  const std::string groups = problems_with({"model.tensor_model_parallel_size=4", "model.num_attention_heads=8",
                                  "model.num_query_groups=2"}, 4);
  EXPECT_TRUE(has(groups, "model.num_query_groups: must be divisible by model.tensor_model_parallel_size (2 % 4 = 2)"))
      << groups;
  EXPECT_TRUE(has(groups, "fewer query groups than tensor-parallel ranks")) << groups;
  const std::string ffn = problems_with({"model.tensor_model_parallel_size=4", "model.ffn_hidden_size=350"}, 4);
  EXPECT_TRUE(has(ffn, "model.ffn_hidden_size: must be divisible by model.tensor_model_parallel_size (350 % 4 = 2)"))
      << ffn;
  const std::string heads = problems_with({"model.tensor_model_parallel_size=3"}, 3);
  EXPECT_TRUE(has(heads, "model.num_attention_heads: must be divisible by model.tensor_model_parallel_size")) << heads;
  const std::string sp = problems_with({"model.sequence_parallel=true"}, 1);
  EXPECT_TRUE(has(sp, "model.sequence_parallel: needs model.tensor_model_parallel_size > 1")) << sp;
}

TEST(ConfigFinalize, RequiredKeysAreNamedAtTheRecipePath) {
  Recipe r = load_recipe_string("[model]\nnum_layers = 2\n", "min.toml");
  const std::string msg = error_message([&] { finalize(r, 1); });
  EXPECT_TRUE(has(msg, "min.toml: model.hidden_size: is required but not set")) << msg;
  EXPECT_TRUE(has(msg, "min.toml: model.num_attention_heads: is required but not set")) << msg;
  EXPECT_TRUE(has(msg, "min.toml: model.vocab_size: is required but not set")) << msg;
  EXPECT_TRUE(has(msg, "min.toml: train.micro_batch_size: is required but not set")) << msg;
  EXPECT_TRUE(has(msg, "min.toml: train.train_iters: is required but not set")) << msg;
  EXPECT_TRUE(has(msg, "min.toml: optimizer.lr: is required but not set")) << msg;
  EXPECT_FALSE(has(msg, "model.num_layers")) << msg;
}

TEST(ConfigFinalize, ImpossibleLayoutNamesLineAndKey) {
  const char* text = R"([model]
num_layers = 2
hidden_size = 64
num_attention_heads = 8
vocab_size = 300
tensor_model_parallel_size = 3
[train]
micro_batch_size = 1
train_iters = 10
[optimizer]
lr = 0.001
)";
  Recipe r = load_recipe_string(text, "test.toml");
  const std::string msg = error_message([&] { finalize(r, 3); });
  EXPECT_TRUE(has(msg, "test.toml:4: model.num_attention_heads: must be divisible by "
                       "model.tensor_model_parallel_size (8 % 3 = 2)"))
      << msg;
  EXPECT_TRUE(has(msg, "test.toml:3: model.ffn_hidden_size: must be divisible by model.tensor_model_parallel_size") ||
              has(msg, "test.toml: model.ffn_hidden_size: must be divisible by model.tensor_model_parallel_size"))
      << msg;
  // World 2 with TP 3 cannot be laid out at all.
  const std::string world = error_message([&] { finalize(r, 2); });
  EXPECT_TRUE(has(world, "test.toml:6: model.tensor_model_parallel_size: world size 2 is not divisible by "
                         "tensor_model_parallel_size * pipeline_model_parallel_size * context_parallel_size = "
                         "3 * 1 * 1 = 3"))
      << world;
}

TEST(ConfigFinalize, InterleavedScheduleNeedsWholeGroups) {
  // valid(): global batch 8 / micro batch 2 = 4 micro-batches at DP 1.
  const std::string odd = problems_with({"model.num_layers=6", "model.pipeline_model_parallel_size=3",
                                         "model.virtual_pipeline_model_parallel_size=2"}, 3);
  EXPECT_TRUE(has(odd, "train.global_batch_size: gives 4 micro-batches per step, which the interleaved pipeline "
                       "schedule (virtual stages) needs divisible by model.pipeline_model_parallel_size (3)"))
      << odd;
  const std::string group = problems_with({"model.num_layers=4", "model.pipeline_model_parallel_size=2",
                                           "model.virtual_pipeline_model_parallel_size=2",
                                           "model.microbatch_group_size_per_vp_stage=8"}, 2);
  EXPECT_TRUE(has(group, "model.microbatch_group_size_per_vp_stage: must lie in [pipeline_model_parallel_size, "
                         "micro-batches per step] = [2, 4], got 8"))
      << group;
  Recipe ok = valid();
  apply_overrides(ok, {"model.num_layers=4", "model.pipeline_model_parallel_size=2",
                       "model.virtual_pipeline_model_parallel_size=2"});
  finalize(ok, 2);
  EXPECT_TRUE(ok.finalized);
}

TEST(ConfigFinalize, GlobalBatchMustDivideByMicroBatchTimesDp) {
  const std::string msg = problems_with({"train.global_batch_size=7"});
  EXPECT_EQ(msg,
            "override 'train.global_batch_size=7': train.global_batch_size: must be divisible by "
            "train.micro_batch_size * data-parallel size = 2 * 1 = 2, got 7");
  Recipe r = valid();
  apply_overrides(r, {"train.global_batch_size=6"});
  finalize(r, 1);
  EXPECT_EQ(r.derived.num_microbatches, 3);
}

TEST(ConfigFinalize, AttentionShapes) {
  EXPECT_TRUE(has(problems_with({"model.num_attention_heads=3"}),
                  "model.hidden_size: must be divisible by model.num_attention_heads (64 % 3 = 1), or set "
                  "model.kv_channels"));
  EXPECT_TRUE(has(problems_with({"model.num_query_groups=3"}),
                  "model.num_query_groups: must divide model.num_attention_heads (4 % 3 = 1)"));
  // kv_channels 12 * rotary_percent 0.5 = 6 is fine; 0.25 gives 3, which is odd.
  EXPECT_TRUE(has(problems_with({"model.kv_channels=12", "model.rotary_percent=0.25"}),
                  "model.rotary_percent: the rotary dimension int(kv_channels * rotary_percent) = int(12 * 0.25) = 3 "
                  "must be even"));
  Recipe r = valid();
  apply_overrides(r, {"model.kv_channels=12", "model.rotary_percent=0.5", "model.num_attention_heads=3"});
  finalize(r, 1);  // kv_channels set: hidden need not divide by heads
  EXPECT_EQ(r.derived.kv_channels, 12);
}

TEST(ConfigFinalize, WordsMustBeKnown) {
  const std::string msg = problems_with({"model.normalization=rmsnorm"});
  EXPECT_EQ(msg,
            "override 'model.normalization=rmsnorm': model.normalization: must be one of \"LayerNorm\", "
            "\"RMSNorm\"; got \"rmsnorm\" (did you mean \"RMSNorm\"?)");
  EXPECT_TRUE(has(problems_with({"model.activation_func=tanh"}), "model.activation_func: must be one of"));
  EXPECT_TRUE(has(problems_with({"dist.distributed_backend=mpi"}), "dist.distributed_backend: must be one of"));
  EXPECT_TRUE(has(problems_with({"mixed_precision=bf16"}), "mixed_precision: must be one of \"fp32\""));
  EXPECT_TRUE(has(problems_with({"model.recompute_granularity=selective", "model.recompute_modules=[\"mlp\",\"x\"]"}),
                  "model.recompute_modules: must be one of \"core_attn\""));
}

TEST(ConfigFinalize, RangesAreChecked) {
  EXPECT_TRUE(has(problems_with({"model.hidden_dropout=1.0"}), "model.hidden_dropout: must be in [0, 1), got 1.0"));
  EXPECT_TRUE(has(problems_with({"model.rotary_percent=0"}), "model.rotary_percent: must be in (0, 1], got 0.0"));
  EXPECT_TRUE(has(problems_with({"model.layernorm_epsilon=0"}), "model.layernorm_epsilon: must be > 0"));
  EXPECT_TRUE(has(problems_with({"optimizer.adam_beta2=1"}), "optimizer.adam_beta2: must be in [0, 1), got 1.0"));
  EXPECT_TRUE(has(problems_with({"optimizer.clip_grad=-1"}), "optimizer.clip_grad: must be >= 0"));
  EXPECT_TRUE(has(problems_with({"optimizer.min_lr=0.1"}), "optimizer.min_lr: must be <= optimizer.lr (0.0003)"));
  EXPECT_TRUE(has(problems_with({"logger.log_interval=0"}), "logger.log_interval: must be >= 1, got 0"));
  EXPECT_TRUE(has(problems_with({"checkpoint.save_interval=0"}), "checkpoint.save_interval: must be >= 1"));
  EXPECT_TRUE(has(problems_with({"dist.distributed_timeout_minutes=0"}), "must be > 0"));
  EXPECT_TRUE(has(problems_with({"validation.eval_iters=0"}), "validation.eval_iters: must be >= 1"));
  Recipe r = valid();
  apply_overrides(r, {"dist.distributed_timeout_minutes=0.5"});
  finalize(r, 1);  // fractions of a minute are fine
}

TEST(ConfigFinalize, ScheduleRules) {
  EXPECT_TRUE(has(problems_with({"scheduler.lr_warmup_fraction=0.1"}),
                  "scheduler.lr_warmup_fraction: cannot be combined with scheduler.lr_warmup_iters (2)"));
  EXPECT_TRUE(has(problems_with({"scheduler.lr_warmup_iters=30"}),
                  "scheduler.lr_warmup_iters: the warmup (30 iterations) must not exceed the decay iterations (20)"));
  EXPECT_TRUE(has(problems_with({"scheduler.start_weight_decay=0.1", "scheduler.end_weight_decay=0.2"}),
                  "scheduler.end_weight_decay: must equal the start weight decay"));
  EXPECT_TRUE(has(problems_with({"scheduler.weight_decay_incr_style=linear"}),
                  "needs scheduler.start_weight_decay and scheduler.end_weight_decay"));
  Recipe r = valid();
  apply_overrides(r, {"scheduler.start_weight_decay=0.033", "scheduler.end_weight_decay=0.033"});
  finalize(r, 1);
}

TEST(ConfigFinalize, DatasetRules) {
  EXPECT_TRUE(has(problems_with({"dataset.seq_length=64"}), "dataset.seq_length: must equal model.seq_length (32), got 64"));
  EXPECT_TRUE(has(problems_with({"model.vocab_size=256"}), "model.vocab_size: must be >= 257 for dataset.source \"corpus\""));
  EXPECT_TRUE(has(problems_with({"dataset.source=indexed"}), "dataset.source: \"indexed\" needs dataset.data_path"));
  EXPECT_TRUE(has(problems_with({"dataset.data_path=a"}), "dataset.data_path: is only read when dataset.source is"));
  EXPECT_TRUE(has(problems_with({"dataset.split=9,x"}), "dataset.split: must be up to three"));
  // Indexed data: a prefix list, a weighted list, or a blend table; never two of them.
  EXPECT_TRUE(has(problems_with({"dataset.source=indexed"}), "needs dataset.data_path or dataset.blend"));
  EXPECT_TRUE(has(problems_with({"dataset.source=indexed", "dataset.data_path=[\"a\", \"b\"]",
                                 "dataset.blend=[[\"c\", 1]]"}),
                  "dataset.blend: cannot be combined with dataset.data_path"));
  EXPECT_TRUE(has(problems_with({"dataset.source=indexed", "dataset.blend=[[\"c\", 0]]"}),
                  "dataset.blend: entry 1 (\"c\") has weight 0; weights must be positive"));
  {
    Recipe bad = valid();
    EXPECT_TRUE(has(error_message([&] { apply_overrides(bad, {"dataset.blend=[[\"c\", \"x\"]]"}); }),
                    "dataset.blend: expected a list of [prefix, weight] pairs"));
  }
  EXPECT_TRUE(has(problems_with({"dataset.source=indexed", "dataset.data_path=[\"0.3\", \"a\", \"b\"]"}),
                  "dataset.data_path:"));
  EXPECT_TRUE(has(problems_with({"dataset.split=100,0,0", "validation.eval_interval=5"}),
                  "validation.eval_interval: asks for validation, but dataset.split \"100,0,0\" gives the "
                  "validation split no data"));
  EXPECT_TRUE(has(problems_with({"dataset.blend=[[\"c\", 1]]"}), "dataset.blend: is only read when dataset.source is"));
  {
    Recipe ok = valid();
    apply_overrides(ok, {"dataset.source=indexed", "dataset.blend=[[\"a\", 0.3], [\"b\", 7]]"});
    finalize(ok, 1);  // the files are opened by the engine, not by finalize
    EXPECT_EQ(ok.derived.dataset_source, "indexed");
    Recipe implied = valid();
    apply_overrides(implied, {"dataset.source=", "dataset.data_path=[\"30\", \"a\", \"70\", \"b\"]"});
    finalize(implied, 1);
    EXPECT_EQ(implied.derived.dataset_source, "indexed");
  }
  Recipe r = valid();
  apply_overrides(r, {"dataset.seq_length=32", "dataset.split=969,30,1"});
  finalize(r, 1);
}

TEST(ConfigFinalize, ParallelRulesOfMegatron) {
  EXPECT_TRUE(has(problems_with({"model.sequence_parallel=true"}),
                  "model.sequence_parallel: needs model.tensor_model_parallel_size > 1"));
  EXPECT_TRUE(has(problems_with({"model.pipeline_model_parallel_size=3"}, 3),
                  "model.num_layers: must be divisible by model.pipeline_model_parallel_size (2 % 3 = 2)"));
  EXPECT_TRUE(has(problems_with({"model.context_parallel_size=3", "model.seq_length=33"}, 3),
                  "model.seq_length: must be divisible by 2 * context_parallel_size = 6, got 33"));
  EXPECT_TRUE(has(problems_with({"model.tensor_model_parallel_size=2", "model.sequence_parallel=true",
                                 "model.seq_length=31"}, 2),
                  "model.seq_length: must be divisible by tensor_model_parallel_size = 2"));
  EXPECT_TRUE(has(problems_with({"model.num_layers=8", "model.pipeline_model_parallel_size=2",
                                 "model.virtual_pipeline_model_parallel_size=3"}, 2),
                  "model.virtual_pipeline_model_parallel_size: must divide the layers per pipeline stage"));
  // Uneven stages: 10 layers, first 1 and last 3, leaves 6 over 2 middle stages.
  Recipe uneven = valid();
  apply_overrides(uneven, {"model.num_layers=10", "model.pipeline_model_parallel_size=4",
                           "model.num_layers_in_first_pipeline_stage=1", "model.num_layers_in_last_pipeline_stage=3"});
  finalize(uneven, 4);
  EXPECT_TRUE(uneven.finalized);
  EXPECT_TRUE(has(problems_with({"model.num_layers=10", "model.pipeline_model_parallel_size=4",
                                 "model.num_layers_in_first_pipeline_stage=2"}, 4),
                  "the remaining 8 layers must divide evenly over the remaining 3 pipeline stages"));
}

TEST(ConfigFinalize, ExpertRulesOfMegatron) {
  const std::string msg = problems_with({"model.num_moe_experts=6", "model.expert_model_parallel_size=4",
                                         "model.tensor_model_parallel_size=2"}, 8);
  EXPECT_TRUE(has(msg, "model.num_moe_experts: must be divisible by model.expert_model_parallel_size (6 % 4 = 2)"))
      << msg;
  EXPECT_TRUE(has(msg, "model.sequence_parallel: must be true for a mixture of experts with tensor parallelism")) << msg;
  EXPECT_FALSE(has(msg, "world size 8 is not divisible")) << msg;  // ETP 2 * EP 4 * PP 1 = 8 fits
  EXPECT_TRUE(has(problems_with({"model.expert_model_parallel_size=2"}, 2),
                  "model.expert_model_parallel_size: needs model.num_moe_experts"));
  EXPECT_TRUE(has(problems_with({"model.num_moe_experts=8", "model.expert_model_parallel_size=4"}, 6),
                  "world size 6 is not divisible by expert_tensor_parallel_size * expert_model_parallel_size * "
                  "pipeline_model_parallel_size = 1 * 4 * 1 = 4"));
}

TEST(ConfigFinalize, NotSupportedYetIsReportedWithTheRest) {
  const std::string msg =
      problems_with({"model.qk_layernorm=true", "mixed_precision=fp16_mixed", "ddp.overlap_param_gather=true",
                     "ddp.check_for_nan_in_grad=true", "optimizer.optimizer=sgd", "model.num_moe_experts=4",
                     "model.add_bias_linear=false", "model.moe_router_load_balancing_type=sinkhorn",
                     "checkpoint.most_recent_k=0", "logger.timing_log_level=1", "model.hidden_dropout=2"});
  EXPECT_TRUE(has(msg, "override 'model.qk_layernorm=true': model.qk_layernorm: query/key layernorm is not supported "
                       "yet"))
      << msg;
  EXPECT_TRUE(has(msg, "mixed_precision: the mixed-precision preset \"fp16_mixed\" is not supported yet")) << msg;
  EXPECT_TRUE(has(msg, "ddp.overlap_param_gather: this data-parallel setting is not supported yet")) << msg;
  EXPECT_FALSE(has(msg, "ddp.check_for_nan_in_grad")) << msg;
  EXPECT_TRUE(has(msg, "optimizer.optimizer: the optimizer \"sgd\" is not supported yet")) << msg;
  EXPECT_TRUE(has(msg, "model.moe_router_load_balancing_type: the load-balancing type \"sinkhorn\" is not supported "
                       "yet")) << msg;
  EXPECT_TRUE(has(msg, "checkpoint.most_recent_k: -1 keeps every checkpoint; otherwise it must be at least 1, got 0"));
  EXPECT_TRUE(has(msg, "logger.timing_log_level: per-phase timing is not supported yet")) << msg;
  EXPECT_TRUE(has(msg, "model.hidden_dropout: must be in [0, 1), got 2.0")) << msg;
  EXPECT_EQ(count_lines(msg), 8u) << msg;

  // Data parallelism is built: a world of 2 is two data-parallel ranks.
  Recipe two = valid();
  finalize(two, 2);
  EXPECT_EQ(two.derived.data_parallel_size, 2);
  EXPECT_TRUE(has(problems_with({"scheduler.lr_decay_style=WSD"}), "the lr_decay_style \"WSD\" is not supported yet"));
  Recipe r = valid();
  apply_overrides(r, {"mixed_precision=fp32", "ddp.grad_reduce_in_fp32=true", "mixed_precision.fp32=false"});
  finalize(r, 1);  // the fp32 preset and the two plain DDP switches are built
}

TEST(ConfigFinalize, Bf16MixedPrecisionIsBuiltWithFp32Gradients) {
  for (const char* how : {"mixed_precision=bf16_mixed", "mixed_precision.bf16=true", "model.bf16=true"}) {
    Recipe r = valid();
    apply_overrides(r, {how});
    finalize(r, 1);
    EXPECT_TRUE(uses_bf16(r)) << how;
  }
  Recipe plain = valid();
  finalize(plain, 1);
  EXPECT_FALSE(uses_bf16(plain));
  EXPECT_TRUE(has(problems_with({"mixed_precision.bf16=true", "mixed_precision.grad_reduce_in_fp32=false"}),
                  "mixed_precision.grad_reduce_in_fp32: gradient reduction in bf16 (gradients are accumulated and "
                  "reduced in fp32) is not supported yet"));
  EXPECT_TRUE(has(problems_with({"mixed_precision=fp32", "model.bf16=true"}),
                  "model.bf16: asks for bf16 but the recipe's mixed precision is fp32"));
}

TEST(ConfigFinalize, ManyProblemsAtOnceEachWithItsLine) {
  const char* text = R"([model]
num_layers = 3
hidden_size = 64
num_attention_heads = 6
vocab_size = 100
normalization = "BatchNorm"
hidden_dropout = -0.5
pipeline_model_parallel_size = 2
fp16 = true
[train]
micro_batch_size = 2
global_batch_size = 3
train_iters = 10
[optimizer]
lr = 0.1
min_lr = 0.2
)";
  Recipe r = load_recipe_string(text, "many.toml");
  const std::string msg = error_message([&] { finalize(r, 2); });
  EXPECT_TRUE(has(msg, "many.toml:6: model.normalization: must be one of")) << msg;
  EXPECT_TRUE(has(msg, "many.toml:7: model.hidden_dropout: must be in [0, 1), got -0.5")) << msg;
  EXPECT_TRUE(has(msg, "many.toml:3: model.hidden_size: must be divisible by model.num_attention_heads")) << msg;
  EXPECT_TRUE(has(msg, "many.toml:2: model.num_layers: must be divisible by model.pipeline_model_parallel_size")) << msg;
  EXPECT_TRUE(has(msg, "many.toml:12: train.global_batch_size: must be divisible by")) << msg;
  EXPECT_TRUE(has(msg, "many.toml:16: optimizer.min_lr: must be <= optimizer.lr")) << msg;
  EXPECT_TRUE(has(msg, "many.toml:9: model.fp16: fp16 training is not supported yet")) << msg;
  EXPECT_FALSE(has(msg, "dataset.")) << msg;
  EXPECT_GE(count_lines(msg), 7u) << msg;
}

TEST(ConfigFinalize, PresetCannotBeEditedKeyByKey) {
  const std::string msg = problems_with({"mixed_precision=fp32", "mixed_precision.grad_reduce_in_fp32=false"});
  EXPECT_EQ(msg,
            "override 'mixed_precision.grad_reduce_in_fp32=false': mixed_precision.grad_reduce_in_fp32: cannot be "
            "combined with the preset mixed_precision = \"fp32\"");
}

TEST(ConfigFinalize, RecomputeRules) {
  const std::string msg = problems_with({"model.recompute_granularity=full"});
  EXPECT_TRUE(has(msg, "model.recompute_granularity: \"full\" needs model.recompute_method")) << msg;
  EXPECT_TRUE(has(problems_with({"model.recompute_method=block"}),
                  "model.recompute_method: needs model.recompute_granularity = \"full\""));
}

}  // namespace
}  // namespace mpt::config
