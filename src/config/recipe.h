// The recipe: plain typed structs mirroring Megatron Bridge's ConfigContainer. Field names
// are the TOML keys (`[model] num_layers` is ModelConfig::num_layers). std::optional
// stands for Bridge's None. Everything is validated in one place, finalize().
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace mpt::config {

struct ModelConfig {
  // architecture (GPTModelProvider / TransformerConfig)
  int64_t num_layers = 0;
  int64_t hidden_size = 0;
  std::optional<int64_t> ffn_hidden_size;   // None: 4 * hidden_size
  int64_t num_attention_heads = 0;
  std::optional<int64_t> num_query_groups;  // None: num_attention_heads (MHA)
  std::optional<int64_t> kv_channels;       // None: hidden_size / num_attention_heads
  int64_t seq_length = 1024;
  int64_t vocab_size = 0;
  int64_t make_vocab_size_divisible_by = 128;
  std::string normalization = "LayerNorm";  // LayerNorm | RMSNorm
  double layernorm_epsilon = 1e-5;
  std::string activation_func = "gelu";     // gelu | gelu_tanh | silu | relu | squared_relu
  bool gated_linear_unit = false;
  bool add_bias_linear = true;
  bool add_qkv_bias = false;
  std::string position_embedding_type = "learned_absolute";  // learned_absolute | rope | none
  double rotary_base = 10000;
  double rotary_percent = 1.0;
  bool share_embeddings_and_output_weights = true;
  double init_method_std = 0.02;
  std::optional<double> embedding_init_method_std;  // None: init_method_std
  double hidden_dropout = 0.1;
  double attention_dropout = 0.1;
  std::optional<double> softmax_scale;       // None: 1/sqrt(kv_channels)
  bool apply_residual_connection_post_layernorm = false;
  bool qk_layernorm = false;
  bool layernorm_zero_centered_gamma = false;
  bool bf16 = false;
  bool fp16 = false;

  // parallel layout (ModelParallelConfig)
  int64_t tensor_model_parallel_size = 1;
  int64_t pipeline_model_parallel_size = 1;
  std::optional<int64_t> virtual_pipeline_model_parallel_size;
  bool sequence_parallel = false;
  int64_t context_parallel_size = 1;
  std::string cp_comm_type = "p2p";          // p2p | all_gather
  int64_t expert_model_parallel_size = 1;
  std::optional<int64_t> expert_tensor_parallel_size;  // None: tensor_model_parallel_size
  std::optional<int64_t> num_layers_in_first_pipeline_stage;
  std::optional<int64_t> num_layers_in_last_pipeline_stage;
  std::optional<int64_t> microbatch_group_size_per_vp_stage;

  // mixture of experts
  std::optional<int64_t> num_moe_experts;
  std::optional<int64_t> moe_ffn_hidden_size;
  int64_t moe_router_topk = 2;
  double moe_aux_loss_coeff = 0.0;
  std::optional<double> moe_z_loss_coeff;
  std::string moe_router_load_balancing_type = "aux_loss";
  std::string moe_token_dispatcher_type = "allgather";  // allgather | alltoall
  std::optional<double> moe_expert_capacity_factor;
  bool moe_pad_expert_input_to_capacity = false;
  std::string moe_token_drop_policy = "probs";          // probs | position
  int64_t moe_layer_freq = 1;
  std::optional<int64_t> moe_shared_expert_intermediate_size;
  bool moe_grouped_gemm = false;
  std::string moe_router_score_function = "softmax";    // softmax | sigmoid
  bool moe_router_pre_softmax = false;

  // activation recompute
  std::optional<std::string> recompute_granularity;     // full | selective
  std::optional<std::string> recompute_method;          // uniform | block
  std::optional<int64_t> recompute_num_layers;
  std::vector<std::string> recompute_modules;

  // CUDA graphs: "local" records each micro-batch's forward and backward once, after
  // cuda_graph_warmup_steps steps, and replays them (none | local).
  std::string cuda_graph_impl = "none";
  int64_t cuda_graph_warmup_steps = 3;
};

struct TrainConfig {
  std::optional<int64_t> micro_batch_size;
  std::optional<int64_t> global_batch_size;
  std::optional<int64_t> train_iters;
  std::optional<int64_t> exit_interval;
};

struct OptimizerConfig {
  std::string optimizer = "adam";
  std::optional<double> lr;
  std::optional<double> min_lr;
  double weight_decay = 0.01;
  double adam_beta1 = 0.9;
  double adam_beta2 = 0.999;
  double adam_eps = 1e-8;
  double clip_grad = 1.0;
  bool use_distributed_optimizer = false;
  bool overlap_param_gather = false;
};

struct SchedulerConfig {
  std::string lr_decay_style = "linear";  // constant | linear | cosine
  std::optional<int64_t> lr_decay_iters;   // None: train_iters
  int64_t lr_warmup_iters = 0;
  std::optional<double> lr_warmup_fraction;
  double lr_warmup_init = 0.0;
  std::optional<double> start_weight_decay;
  std::optional<double> end_weight_decay;
  std::string weight_decay_incr_style = "constant";  // constant | linear | cosine
};

struct DDPConfig {
  bool grad_reduce_in_fp32 = false;
  bool overlap_grad_reduce = false;
  bool overlap_param_gather = false;
  bool align_param_gather = false;
  bool use_distributed_optimizer = false;
  int64_t num_distributed_optimizer_instances = 1;
  bool check_for_nan_in_grad = false;
  std::optional<int64_t> bucket_size;
  bool average_in_collective = false;
  std::string data_parallel_sharding_strategy = "no_shard";  // no_shard | optim | optim_grads | optim_grads_params
  bool use_megatron_fsdp = false;
};

// One dataset of a blend: dataset.blend = [["path/prefix", 0.3], ...].
struct BlendItem {
  std::string prefix;
  double weight = 1.0;
  bool operator==(const BlendItem& o) const { return prefix == o.prefix && weight == o.weight; }
};

struct DatasetConfig {
  std::string source;                      // mock | corpus | indexed; empty: indexed if data_path/blend else mock
  std::optional<int64_t> seq_length;       // must equal model.seq_length when set
  int64_t random_seed = 1234;
  std::vector<std::string> data_path;      // Megatron .bin/.idx prefixes, optionally weight-prefixed
  std::vector<BlendItem> blend;            // the same as [prefix, weight] pairs
  std::optional<std::string> split;        // e.g. "969,30,1"; unset: "969,30,1" (indexed), "90,10,0" (corpus)
  std::optional<std::string> path_to_cache;
  bool mmap_bin_files = true;
  bool eod_mask_loss = false;
  int64_t num_workers = 2;                 // batches prepared ahead in the background; 0: in the training loop
};

struct CheckpointConfig {
  std::optional<std::string> save;
  std::optional<std::string> load;
  std::optional<int64_t> save_interval;
  bool save_optim = true;
  bool save_rng = true;
  bool load_optim = true;
  bool load_rng = true;
  bool finetune = false;
  bool exit_on_missing_checkpoint = false;
  bool async_save = false;
  int64_t most_recent_k = -1;
  // SIGTERM / SIGINT end training after the current step with a checkpoint (when save is
  // set) and exit status 0.
  bool exit_signal_handler = true;
};

struct LoggerConfig {
  int64_t log_interval = 100;
  std::optional<std::string> metrics_file;   // JSON lines
  std::optional<std::string> tensorboard_dir;
  bool log_throughput = false;
  int64_t timing_log_level = 0;
};

struct RNGConfig {
  int64_t seed = 1234;
};

struct ValidationConfig {
  int64_t eval_iters = 100;
  std::optional<int64_t> eval_interval;
};

struct DistConfig {
  // Collectives on device buffers: auto (NCCL when every local rank has its own GPU, else
  // gloo staging through host memory) | nccl | gloo. Host values always go over gloo.
  std::string distributed_backend = "auto";
  double distributed_timeout_minutes = 10.0;
};

// Bridge's ProfilingConfig, and mptrain's timeline of compute and communication.
struct ProfilingConfig {
  bool use_nsys_profiler = false;     // refused: no cudaProfilerStart / NVTX ranges yet
  int64_t profile_step_start = 10;    // the steps after this many iterations are profiled ...
  int64_t profile_step_end = 12;      // ... up to this iteration: steps start+1 .. end
  bool use_pytorch_profiler = false;  // refused: there is no PyTorch
  std::vector<int64_t> profile_ranks; // global ranks profiled; empty: every rank
  // Where each profiled rank writes timeline_rank<R>.json, a Chrome trace of its profiled
  // steps; unset: no timeline.
  std::optional<std::string> timeline_dir;
};

struct MixedPrecisionConfig {
  std::optional<std::string> preset;  // `mixed_precision = "bf16_mixed"` at top level
  bool bf16 = false;
  bool fp16 = false;
  bool fp32 = false;
  bool grad_reduce_in_fp32 = true;
};

// Where a key's value came from: "recipes/tiny.toml:12" or "override #2 'x.y=3'".
struct Source {
  std::string file;
  int64_t line = 0;     // 0 when not from a file line
  std::string where() const;  // "file:line" or "file"
};

// Sizes derived by finalize(); the rest of the runtime reads these, never re-derives them.
struct Derived {
  int64_t world_size = 1;
  int64_t data_parallel_size = 1;
  int64_t expert_tensor_parallel_size = 1;
  int64_t expert_data_parallel_size = 1;
  int64_t ffn_hidden_size = 0;
  int64_t num_query_groups = 0;
  int64_t kv_channels = 0;
  int64_t padded_vocab_size = 0;
  int64_t num_microbatches = 0;  // global_batch / (micro_batch * dp)
  int64_t lr_decay_iters = 0;
  int64_t lr_warmup_iters = 0;
  double min_lr = 0;
  std::string dataset_source;    // resolved: mock | corpus | indexed
};

struct Recipe {
  std::string path;              // file the recipe came from ("<string>" for in-memory)
  ModelConfig model;
  TrainConfig train;
  OptimizerConfig optimizer;
  SchedulerConfig scheduler;
  DDPConfig ddp;
  DatasetConfig dataset;
  CheckpointConfig checkpoint;
  LoggerConfig logger;
  RNGConfig rng;
  ValidationConfig validation;
  DistConfig dist;
  ProfilingConfig profiling;
  MixedPrecisionConfig mixed_precision;
  std::map<std::string, Source> sources;  // "section.key" -> where it was set
  Derived derived;                        // valid after finalize()
  bool finalized = false;
};

// Loading. Syntax errors, unknown keys (with a did-you-mean) and wrong types throw
// Error(kInvalidConfig) naming file:line and key; all problems are reported at once.
Recipe load_recipe_file(const std::string& path);
Recipe load_recipe_string(const std::string& toml, const std::string& name = "<string>");

// `section.key=value` as Bridge's CLI takes it; the value is parsed as a TOML value
// (a bare word that is not valid TOML is taken as a string). `origin` names it in errors.
void apply_override(Recipe& recipe, const std::string& assignment, const std::string& origin);
void apply_overrides(Recipe& recipe, const std::vector<std::string>& assignments);

// Validates everything against the rules of Megatron (and what mptrain has built so far)
// and fills recipe.derived. Throws Error(kInvalidConfig) listing every problem, one per
// line, each "file:line: section.key: rule".
void finalize(Recipe& recipe, int64_t world_size);

// The resolved recipe as TOML that loads back to the same configuration.
std::string to_toml(const Recipe& recipe);

// Whether the recipe trains in bf16 mixed precision: mixed_precision = "bf16_mixed",
// mixed_precision.bf16 or model.bf16.
inline bool uses_bf16(const Recipe& r) {
  return r.mixed_precision.preset.value_or("") == "bf16_mixed" || r.mixed_precision.bf16 || r.model.bf16;
}

}  // namespace mpt::config
