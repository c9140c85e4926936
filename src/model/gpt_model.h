// The GPT model, or the chunk of it one pipeline stage holds, for one rank: embedding,
// decoder layers, final norm, output layer and the vocab-parallel cross-entropy pieces.
// Parameters, gradients and every activation are planned at construction and allocated
// once; a training step allocates nothing.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <vector>

#include "backend/ops.h"
#include "core/arena.h"
#include "model/compute_params.h"
#include "model/gpt_dims.h"
#include "model/param_registry.h"
#include "model/param_storage.h"
#include "model/transformer_layer.h"
#include "parallel/context_parallel.h"
#include "parallel/expert_parallel.h"
#include "parallel/pipeline_layout.h"
#include "parallel/tensor_parallel.h"

namespace mpt::model {

// Host-side inputs of one micro-batch in token-major order (token t = s * micro_batch + b).
struct MicroBatchInput {
  int32_t* ids = nullptr;       // [T]
  int32_t* labels = nullptr;    // [T]
  float* loss_mask = nullptr;   // [T]
};

// Builds the storage for a model's registry and units (see param_storage.h).
using StorageFactory =
    std::function<std::unique_ptr<ParamStorage>(const ParamRegistry&, const std::vector<ParamUnit>&)>;

// Registry indices of a model chunk's parameters (-1: not in this chunk).
struct ChunkParams {
  int word_emb = -1, pos_emb = -1;              // pre-process chunk
  std::vector<LayerParams> layers;              // local layer i is global layer chunk.begin + i
  int final_w = -1, final_b = -1, output_w = -1;  // post-process chunk
  // The tied output layer on a chunk without the embedding: a copy of
  // embedding.word_embeddings.weight (ParamInfo::pipeline_copy).
  int word_copy = -1;
  std::vector<int> expert_unit;  // per local layer: its unit of the expert layout, or -1
};

// Where a chunk's experts go when they are kept apart from the other parameters (their
// gradients reduce over the expert-data-parallel group): their own registry, cut into one
// unit per MoE layer ("decoder.layers.N.mlp.experts"), each padded to a multiple of
// unit_align.
struct ExpertLayout {
  ParamRegistry* reg = nullptr;
  std::vector<ParamUnit>* units = nullptr;
  int64_t unit_align = ParamRegistry::kAlign;
};

// Registers a chunk's parameters under Megatron's names and cuts them into units: the
// embedding (pre-process), each decoder layer, the head (post-process), each unit padded to a
// multiple of unit_align. Experts go to `experts` when given, else into their layer's unit.
ChunkParams register_chunk(ParamRegistry& reg, std::vector<ParamUnit>& units, const GPTDims& dims,
                           const parallel::ChunkLayers& chunk, int64_t unit_align,
                           const ExpertLayout* experts = nullptr);
// The whole model's registry (every layer, nothing split): the layout checkpoints store.
ParamRegistry whole_model_registry(const GPTDims& dims);

struct ModelOptions {
  StorageFactory storage;  // null: everything resident (FullStorage)
  // Every unit's flat range starts and ends at a multiple of it (a data-parallel storage
  // asks for a multiple of its group size so units shard evenly).
  int64_t unit_align = ParamRegistry::kAlign;
  parallel::TensorParallel tp;  // this rank's tensor-parallel group; its size must be dims.tp
  parallel::ContextParallel cp;  // this rank's context-parallel group; its size must be dims.cp
  // Mixture of experts: the experts' storage (null: resident) and unit alignment, and this
  // rank's token-exchange group (its sizes must be dims.ep and dims.etp).
  StorageFactory expert_storage;
  int64_t expert_unit_align = ParamRegistry::kAlign;
  parallel::ExpertParallel ep;
  std::optional<parallel::ChunkLayers> chunk;  // the layers this model holds; default all
  // Sets of saved activations: micro-batches whose forward has run and backward has not
  // (a pipeline schedule keeps several in flight). What each keeps depends on dims.recompute.
  int64_t slots = 1;
};

// How a micro-batch's loss counts: `loss` weighs its sum over tokens of loss * mask in the
// reported value (GPTModel::take_loss); `grad` weighs it in the objective backward
// differentiates. grad 0: no backward follows the forward.
struct LossWeights {
  double loss = 1;
  float grad = 0;
};

class GPTModel {
 public:
  GPTModel(const GPTDims& dims, backend::Ops& ops, ModelOptions options = {});

  const GPTDims& dims() const { return dims_; }
  const parallel::ChunkLayers& chunk() const { return chunk_; }
  const ParamRegistry& registry() const { return reg_; }
  const std::vector<ParamUnit>& units() const { return units_; }
  ParamStorage& storage() { return *storage_; }
  // The experts of this chunk's MoE layers, apart from the other parameters (empty registry
  // and null storage when the chunk has none).
  const ParamRegistry& expert_registry() const { return expert_reg_; }
  const std::vector<ParamUnit>& expert_units() const { return expert_units_; }
  ParamStorage* expert_storage() { return expert_storage_.get(); }
  // The whole flat buffers; null when the storage shards them.
  float* params() { return storage_->full_params(); }
  const float* params() const { return storage_->full_params(); }
  float* grads() { return storage_->full_grads(); }
  int64_t flat_numel() const { return reg_.total_numel(); }
  int64_t slots() const { return static_cast<int64_t>(slots_.size()); }

  // Needs resident parameters (a sharding storage initialises its own shards).
  void init_parameters(uint64_t seed);
  // The fp32 master parameters changed outside the model (an optimizer step, a load): the
  // compute copies (bf16 mixed precision) are cast again at their next use.
  void params_changed();
  void zero_grads();

  // Buffers the caller fills before forward() of a slot: token ids (pre-process chunk) and
  // labels and loss mask (post-process chunk). Host-memory backends only; load_input copies
  // host arrays of tokens() elements into a slot on any backend (null pointers are skipped).
  MicroBatchInput input(int64_t slot = 0);
  void load_input(int64_t slot, const MicroBatchInput& host);
  // [R, H]: where a chunk without the embedding takes its input (the previous pipeline
  // stage's output), and the chunk's output (valid until the slot's backward).
  Tensor chunk_input(int64_t slot) { return slot_at(slot).residual.front(); }
  Tensor chunk_output(int64_t slot) { return slot_at(slot).residual.back(); }

  // The loss mask's sum over this slot's tokens on this rank (from the host copy: no device
  // read). Set by load_input or, on a host-memory backend, read from input()'s buffers.
  double mask_sum(int64_t slot = 0);

  // Runs forward and keeps activations in `slot`. The chunk with the loss runs its output
  // layer and cross-entropy in row blocks (dims.loss_chunk()) and, when weights.grad is set,
  // their backward too, block by block: the whole logits never exist, and the slot keeps
  // only d(output of the last layer) for backward. That backward accumulates the output
  // layer's and final norm's gradients already. Returns the router's sums (MoE).
  struct LossSums {
    // Mixture of experts, summed over this chunk's MoE layers (0 without): the router's
    // load-balancing loss and z-loss, and each layer's tokens-per-expert spread (the largest
    // expert's routed tokens over the mean).
    double moe_aux_loss = 0, moe_z_loss = 0, moe_spread = 0;
    int64_t moe_layers = 0;
  };
  // training = false runs without dropout (evaluation). The same as prepare_forward() then
  // forward_prepared().
  LossSums forward(uint64_t dropout_key, bool training = true, int64_t slot = 0, LossWeights weights = {});
  // forward() in two parts. prepare_forward writes the micro-batch's per-token loss and
  // gradient weights (its loss mask times weights.loss and weights.grad, on the host) to the
  // backend: a host-to-device copy, for the next forward of `slot`. forward_prepared then
  // calls backend ops only, reading every value that differs between micro-batches (inputs,
  // weights) from backend memory: it may be recorded as a graph (Ops::begin_capture) and
  // replayed for later micro-batches prepared alike. A chunk without the loss has no
  // weights to write.
  void prepare_forward(int64_t slot, LossWeights weights);
  LossSums forward_prepared(uint64_t dropout_key, bool training, int64_t slot);
  // After a replay of a recording of forward_prepared (training) or backward of `slot`: the
  // host-side state they keep (whether the slot holds its loss gradient), as they would
  // have left it.
  void forward_replayed(int64_t slot);
  void backward_replayed(int64_t slot);
  // Casts every unit's compute copy (bf16 mixed precision) that is stale now, rather than at
  // its first use in a pass, so that every micro-batch of a step runs the same backend calls
  // (a recorded graph holds no casts). Needs resident parameters; nothing without copies.
  void cast_compute_params();
  // The compute copies of the dense and the expert parameters (the latter null without
  // experts): an optimizer may write them with its update (ComputeParams::resident_copy).
  ComputeParams& compute_params() { return *compute_; }
  ComputeParams* expert_compute_params() { return expert_compute_.get(); }
  // The weighted losses summed on the device since the last call (one device read); 0 on a
  // chunk without the loss.
  double take_loss();
  void reset_loss();  // drops them (no device read)
  // Backward through `slot`'s activations; accumulates parameter gradients. The chunk with
  // the loss needs a forward with weights.grad set; a chunk without it takes d(output)
  // [R, H] from the next stage; a chunk without the embedding leaves d(input) in
  // input_grad(). aux_scale: the weight of the MoE router's losses in the objective
  // (1 / micro-batches).
  void backward(uint64_t dropout_key, int64_t slot = 0, Tensor output_grad = Tensor(), float aux_scale = 1.0f);
  Tensor input_grad() { return dres_; }

  // Bytes held, experts and the bf16 compute copies included; and the experts' parameters
  // alone (their compute copies included).
  int64_t params_bytes() const { return storage_->params_bytes() + compute_->bytes() + expert_params_bytes(); }
  int64_t grads_bytes() const {
    return storage_->grads_bytes() + (expert_storage_ ? expert_storage_->grads_bytes() : 0);
  }
  int64_t expert_params_bytes() const {
    return expert_storage_ ? expert_storage_->params_bytes() + expert_compute_->bytes() : 0;
  }
  int64_t activations_bytes() const { return static_cast<int64_t>(acts_.size()); }

 private:
  // Activations one micro-batch keeps from its forward to its backward.
  struct SlotActs {
    Tensor ids, labels, loss_mask;              // [T]
    std::vector<Tensor> residual;               // [L+1] x [R,H]: each local layer's input, then the output
    // Layers' activations; those recompute drops point into the region all slots share.
    std::vector<LayerActs> layers;
    Tensor dhead;                               // [R,H]: d(last layer's output), from forward
    bool head_grads = false;                    // dhead holds this micro-batch's gradient
    double mask_sum = 0;                        // the loss mask's sum, from load_input
    std::vector<float> host_mask;               // the loss mask as loaded (device backends)
  };
  // The output layer's and loss's working buffers, one set per chunk: the final norm's
  // output and statistics, one row block's logits and cross-entropy pieces.
  struct HeadScratch {
    Tensor normed, mean, rstd;  // [R,H], [R], [R]
    Tensor logits;              // [C, Vp / TP] fp32; becomes d(logits) in place under fp32
    // [C, Vp / TP] bf16 d(logits) under bf16 mixed precision (rounded once, as the GEMMs that
    // read it would round an fp32 operand), so both backward GEMMs run bf16 x bf16; empty else.
    Tensor dlogits;
    Tensor row_max, loss;       // [C]
    Tensor sumexp_target;       // [2C]: a block's sums of exponentials, then its target logits
    Tensor loss_sum;            // [1]: the weighted losses since take_loss()
    // [2T]: the prepared micro-batch's per-token loss weights, then its gradient weights.
    Tensor weights;
    int64_t prepared_slot = -1;  // the slot they were prepared for (-1: none)
    bool prepared_grads = false; // with a gradient weight
  };
  // The output layer and cross-entropy of one micro-batch, in row blocks; with gradient
  // weights, their backward and the final norm's into a.dhead.
  // `last` is the last layer's closing residual add when it left it to the final norm.
  void head_forward(SlotActs& a, bool grads, const ResidualSum& last);
  // Whether local layer i leaves its closing residual add to the norm that reads its output
  // next (the next layer's first norm, or the final norm): not when the output leaves the
  // chunk (the next pipeline stage), nor across full recompute's groups (the next group lays
  // the shared region out again, over this layer's resid_mid, and its recompute starts from
  // its kept input).
  bool defers_residual(int64_t i) const;
  SlotActs& slot_at(int64_t s);
  // Every slot keeps what d.recompute keeps; what it drops lives in one region all slots
  // share (see ActPlanner in gpt_model.cc).
  void plan_activations();
  // Full recompute: runs the forward of local layers [g.begin, g.end) again from the group's
  // kept input, with the same dropout masks, before backward walks them.
  void recompute_group(SlotActs& a, const Recompute::Group& g, uint64_t dropout_key);
  int layer_unit(int64_t i) const { return static_cast<int>(i) + (chunk_.pre_process ? 1 : 0); }
  int head_unit() const { return static_cast<int>(units_.size()) - 1; }
  // The context layer i (local) runs with; params/grads: its unit's areas (grads null in
  // forward). Takes its expert unit's areas from the expert storage.
  LayerContext layer_context(const GPTDims& d, int64_t i, void* params, float* grads, bool training,
                             float aux_scale);
  // Unit u's parameters in the compute dtype (the storage's area is held until params_done).
  void* unit_params(int u) { return compute_->unit(u, storage_->unit_params(u)); }
  void expert_unit_done(int64_t i, bool grads);
  // Views of parameter i inside unit u's current areas: its compute parameters, its gradients.
  Tensor P(int u, void* area, int i) const {
    return reg_.view(area, dims_.compute, units_[static_cast<size_t>(u)].begin, i);
  }
  Tensor G(int u, float* area, int i) const { return reg_.view(area, units_[static_cast<size_t>(u)].begin, i); }

  GPTDims dims_;
  GPTDims eval_dims_;  // dims_ with dropout off
  backend::Ops& ops_;
  parallel::TensorParallel tp_;
  parallel::ContextParallel cp_;
  RowRuns runs_;                  // this rank's residual rows in the whole micro-batch
  parallel::ChunkLayers chunk_;
  ParamRegistry reg_;
  ChunkParams ids_;
  int out_unit_ = -1, out_param_ = -1;  // where the output layer's weight lives

  std::vector<ParamUnit> units_;
  std::unique_ptr<ParamStorage> storage_;
  std::unique_ptr<ComputeParams> compute_;
  parallel::ExpertParallel ep_;
  ParamRegistry expert_reg_;
  std::vector<ParamUnit> expert_units_;
  std::unique_ptr<ParamStorage> expert_storage_;
  std::unique_ptr<ComputeParams> expert_compute_;

  Arena acts_;
  std::vector<SlotActs> slots_;
  Tensor positions_;              // i32 [T]: each token's position in the whole sequence
  Tensor local_positions_;        // the rows of positions_ this rank holds (sequence parallelism)
  LayerScratch scratch_;
  HeadScratch head_;
  Tensor dres_;                   // [R,H]
  std::vector<float> weights_host_;  // prepare_forward's staging of HeadScratch::weights
};

}  // namespace mpt::model
