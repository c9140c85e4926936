// The model's sizes and switches, resolved once from a finalized recipe.
#pragma once

#include <cstdint>
#include <string>

#include "backend/ops.h"
#include "config/recipe.h"

namespace mpt::model {

// Activation recompute, resolved from Megatron's recompute_granularity / recompute_method /
// recompute_num_layers / recompute_modules: what a micro-batch does not keep from forward to
// backward and backward regenerates. Dropout masks are keyed by position, so a forward run
// again draws the same masks and the gradients are the same bits as without recompute.
struct Recompute {
  // Full granularity: whole layers run their forward again in backward from a kept input.
  // uniform: the layers of each model chunk in groups of num_layers, only each group's input
  // kept; block: the first num_layers layers of each chunk, each from its kept input.
  enum class Full { kNone, kUniform, kBlock };
  Full full = Full::kNone;
  int64_t num_layers = 0;
  // Selective granularity: recompute_modules, in every layer. "core_attn" drops nothing: the
  // flash-style attention keeps only its output and log-sum-exp, and its backward regenerates
  // the probabilities already (Megatron's fused attention is the same).
  bool selective = false;
  bool core_attn = false;
  bool layernorm = false;       // both norms' outputs and statistics, from the norms' inputs
  bool mlp = false;             // a dense MLP's fc1 and activation outputs, from norm2_out
  bool moe = false;             // an MoE MLP entirely (router, routing, exchange, experts)
  bool moe_act = false;         // the routed experts' activation output, from their fc1 output
  bool shared_experts = false;  // the shared expert's fc1 and activation outputs
  // Local layer i of a chunk of `layers` layers under full recompute: the local layers
  // [begin, end) it runs again with in backward (begin == end: it keeps its activations).
  struct Group {
    int64_t begin = 0, end = 0;
    bool recomputed() const { return end > begin; }
  };
  Group group(int64_t i, int64_t layers) const;
  // "full (uniform, groups of 2 layers)", "selective (core_attn, mlp)", "none".
  std::string describe() const;
};

struct GPTDims {
  int64_t num_layers = 0;
  int64_t hidden = 0;
  int64_t ffn = 0;
  int64_t heads = 0;
  int64_t groups = 0;
  int64_t head_dim = 0;
  int64_t seq = 0;
  int64_t micro_batch = 0;
  int64_t vocab = 0;         // real vocabulary; ids >= vocab are padding
  int64_t padded_vocab = 0;
  bool layernorm = true;     // false: RMSNorm
  bool gated = false;
  bool bias = true;          // add_bias_linear
  bool qkv_bias = false;     // bias on linear_qkv (add_bias_linear or add_qkv_bias)
  bool rope = false;
  bool learned_positions = true;
  bool tied_output = true;
  backend::Activation activation = backend::Activation::kGelu;
  float norm_eps = 1e-5f;
  float rotary_base = 10000.0f;
  int64_t rotary_dim = 0;
  float softmax_scale = 0;
  float hidden_dropout = 0;
  float attention_dropout = 0;
  float init_std = 0.02f;
  float embedding_init_std = 0.02f;
  // Mixed precision: the dtype of activations, their gradients and the parameters' compute
  // copy (kBF16 under bf16_mixed). Master weights, gradients and optimizer state stay fp32,
  // as do the logits, the cross-entropy pieces, normalisation statistics, attention lse and
  // the router.
  DType compute = DType::kF32;
  // Tensor parallelism: heads, query groups, ffn and the padded vocabulary are split over
  // tp ranks (the sizes above are whole-model sizes); under sequence_parallel the residual
  // stream between the parallel regions is split along the sequence too.
  int64_t tp = 1;
  int64_t tp_rank = 0;
  bool sequence_parallel = false;
  // Context parallelism: each sequence of `seq` positions is split over cp ranks; this rank
  // holds local_seq() of them (see parallel/context_parallel.h for which).
  int64_t cp = 1;
  int64_t cp_rank = 0;

  // Mixture of experts (num_experts 0: every MLP is dense). Layer i is an MoE layer when
  // i % moe_layer_freq == 0; its MLP is a router over num_experts experts of moe_ffn hidden
  // units, moe_topk per token, plus an optional always-on shared expert of shared_ffn units.
  int64_t num_experts = 0;
  int64_t moe_topk = 2;
  int64_t moe_ffn = 0;
  int64_t moe_layer_freq = 1;
  int64_t shared_ffn = 0;
  backend::RouterScore router_score = backend::RouterScore::kSoftmax;
  bool router_pre_softmax = false;
  float aux_loss_coeff = 0;      // load-balancing loss (Switch): E * coeff * sum_e f_e * P_e
  float z_loss_coeff = 0;        // router z-loss: coeff * mean_t logsumexp(logits_t)^2
  float capacity_factor = 0;     // 0: dropless
  bool drop_by_position = false; // moe_token_drop_policy "position" (else "probs")
  bool pad_to_capacity = false;
  // Expert parallelism: the experts are spread over ep ranks, each holding local_experts()
  // of them, and each expert's hidden units are split over etp ranks. An MoE layer exchanges
  // tokens within the etp x ep group of moe_group() ranks, through an all-to-all of the
  // routed rows (alltoall) or by gathering every token of the group (allgather).
  int64_t ep = 1, ep_rank = 0;
  int64_t etp = 1, etp_rank = 0;
  bool alltoall = false;  // moe_token_dispatcher_type

  Recompute recompute;

  // The output layer and the cross-entropy run over row blocks of this many tokens, so that
  // only one block's fp32 logits exist at a time (0: loss_chunk() picks the block).
  int64_t loss_chunk_rows = 0;

  bool is_moe_layer(int64_t layer) const { return num_experts > 0 && layer % moe_layer_freq == 0; }
  int64_t moe_group() const { return ep * etp; }
  int64_t local_experts() const { return num_experts / ep; }
  int64_t first_expert() const { return ep_rank * local_experts(); }
  // This rank's widths of an expert's (etp split) and of the shared expert's (tp split) layers.
  int64_t local_moe_ffn() const { return moe_ffn / etp; }
  int64_t moe_fc1_width() const { return gated ? 2 * local_moe_ffn() : local_moe_ffn(); }
  int64_t local_shared_ffn() const { return shared_ffn / tp; }
  int64_t shared_fc1_width() const { return gated ? 2 * local_shared_ffn() : local_shared_ffn(); }
  // Expert capacity (tokens per expert) for `tokens` tokens routed on one rank:
  // ceil(tokens * k / E * factor).
  int64_t expert_capacity(int64_t tokens) const;
  // Rows that `experts` experts may receive from one rank's routing of `tokens` tokens (each
  // token picks each expert at most once; with a capacity, at most that many per expert).
  int64_t expert_rows(int64_t tokens, int64_t experts) const;
  // Rows of one rank's permuted activations for all of its `tokens` tokens' choices.
  int64_t max_expert_rows(int64_t tokens) const { return expert_rows(tokens, num_experts); }
  // Rows this rank's local experts may receive from the whole group.
  int64_t max_received_rows(int64_t tokens) const { return moe_group() * expert_rows(tokens, local_experts()); }

  int64_t local_seq() const { return seq / cp; }
  // Tokens of a micro-batch on this rank.
  int64_t tokens() const { return local_seq() * micro_batch; }
  // Rows of the residual stream this rank holds: tokens() / tp under sequence parallelism.
  int64_t rows() const { return sequence_parallel ? tokens() / tp : tokens(); }
  // This rank's share of each split size.
  int64_t local_heads() const { return heads / tp; }
  int64_t local_groups() const { return groups / tp; }
  int64_t local_ffn() const { return ffn / tp; }
  int64_t local_vocab() const { return padded_vocab / tp; }
  int64_t vocab_start() const { return tp_rank * local_vocab(); }
  int64_t qkv_width() const { return (local_heads() + 2 * local_groups()) * head_dim; }
  int64_t attn_width() const { return local_heads() * head_dim; }
  int64_t kv_width() const { return local_groups() * head_dim; }
  int64_t fc1_width() const { return gated ? 2 * local_ffn() : local_ffn(); }
  // Tokens per block of the output layer and loss: loss_chunk_rows when set, else as many as
  // keep one block's logits within kLogitsBlockBytes (whole multiples of 64 rows, at least
  // 64), never more than tokens().
  static constexpr int64_t kLogitsBlockBytes = int64_t{128} << 20;
  int64_t loss_chunk() const;
};

GPTDims make_dims(const config::Recipe& recipe);

}  // namespace mpt::model
