#include "model/gpt_model.h"

#include <algorithm>
#include <cstring>

#include "core/rng.h"
#include "model/linear.h"

namespace mpt::model {

namespace {
enum Site : uint64_t { kEmbedding = 1000001 };

// Plans tensors inside the activation arena: each slot's own tensors, or tensors in one
// region every slot shares for what recompute drops after forward and regenerates in
// backward. The region is laid out again from its start for each layer (selective) or group
// of layers (full), so it is as large as the largest of them.
class ActPlanner {
 public:
  ActPlanner(Arena& arena, DType compute) : arena_(arena), compute_(compute) {}
  // Where the next tensors go: the slot (kept) or the shared region.
  void keep() { shared_ = false; }
  void share() { shared_ = true; }
  // The shared region starts over: the tensors that follow reuse it.
  void restart_shared() { cursor_ = 0; }
  void act(Tensor& t, std::initializer_list<int64_t> shape) { place(t, compute_, shape); }
  void f32(Tensor& t, std::initializer_list<int64_t> shape) { place(t, DType::kF32, shape); }
  void i32(Tensor& t, std::initializer_list<int64_t> shape) { place(t, DType::kI32, shape); }
  // Reserves the shared region, allocates the arena once and points every tensor into it.
  void allocate() {
    const size_t region = arena_.reserve(region_);
    arena_.allocate();
    for (const Planned& p : plan_) p.t->data = arena_.at<uint8_t>(p.shared ? region + p.offset : p.offset);
  }

 private:
  struct Planned {
    Tensor* t;
    size_t offset;
    bool shared;
  };
  void place(Tensor& t, DType dtype, std::initializer_list<int64_t> shape) {
    t = Tensor(nullptr, dtype, shape);
    if (!shared_) {
      plan_.push_back({&t, arena_.reserve(t.bytes()), false});
      return;
    }
    plan_.push_back({&t, cursor_, true});
    cursor_ += (t.bytes() + Arena::kAlign - 1) / Arena::kAlign * Arena::kAlign;  // as the arena rounds
    region_ = std::max(region_, cursor_);
  }
  Arena& arena_;
  DType compute_;
  std::vector<Planned> plan_;
  bool shared_ = false;
  size_t cursor_ = 0, region_ = 0;
};

parallel::ChunkLayers whole_model(const GPTDims& d) { return parallel::ChunkLayers{0, d.num_layers, true, true}; }
}  // namespace

ChunkParams register_chunk(ParamRegistry& reg, std::vector<ParamUnit>& units, const GPTDims& d,
                           const parallel::ChunkLayers& chunk, int64_t unit_align, const ExpertLayout* experts) {
  ChunkParams ids;
  auto close = [](ParamRegistry& r, std::vector<ParamUnit>& us, int64_t align, std::string name) {
    r.pad_to(align);
    const int64_t begin = us.empty() ? 0 : us.back().end;
    us.push_back(ParamUnit{std::move(name), begin, r.total_numel()});
  };
  auto close_unit = [&](std::string name) { close(reg, units, unit_align, std::move(name)); };
  // Vocab-parallel: each tensor-parallel rank holds a contiguous range of vocabulary rows.
  const TensorSplit vocab{0, 1, d.tp_rank, d.tp}, whole{-1, 1, d.tp_rank, d.tp};
  if (chunk.pre_process) {
    ids.word_emb = reg.add_split("embedding.word_embeddings.weight", {d.local_vocab(), d.hidden}, vocab,
                                 Init::kNormal, d.embedding_init_std, true);
    if (d.learned_positions) {
      ids.pos_emb = reg.add_split("embedding.position_embeddings.weight", {d.seq, d.hidden}, whole, Init::kNormal,
                                  d.embedding_init_std, true);
      reg.set_sequence_parallel(ids.pos_emb, d.sequence_parallel);  // added to this rank's rows only
    }
    close_unit("embedding");
  }
  for (int64_t l = chunk.begin; l < chunk.end; ++l) {
    ids.layers.push_back(register_layer(reg, experts ? *experts->reg : reg, d, l));
    close_unit(str("decoder.layers.", l));
    ids.expert_unit.push_back(-1);
    if (experts && ids.layers.back().moe) {
      ids.expert_unit.back() = static_cast<int>(experts->units->size());
      close(*experts->reg, *experts->units, experts->unit_align, str("decoder.layers.", l, ".mlp.experts"));
    }
  }
  if (chunk.post_process) {
    ids.final_w = reg.add_split("decoder.final_layernorm.weight", {d.hidden}, whole, Init::kOnes, 0, false);
    reg.set_sequence_parallel(ids.final_w, d.sequence_parallel);
    if (d.layernorm) {
      ids.final_b = reg.add_split("decoder.final_layernorm.bias", {d.hidden}, whole, Init::kZeros, 0, false);
      reg.set_sequence_parallel(ids.final_b, d.sequence_parallel);
    }
    if (!d.tied_output) {
      ids.output_w = reg.add_split("output_layer.weight", {d.local_vocab(), d.hidden}, vocab, Init::kNormal,
                                   d.init_std, true);
    } else if (!chunk.pre_process) {
      // The same name draws the same initial values as the first stage's embedding.
      ids.word_copy = reg.add_split("embedding.word_embeddings.weight", {d.local_vocab(), d.hidden}, vocab,
                                    Init::kNormal, d.embedding_init_std, true);
      reg.set_pipeline_copy(ids.word_copy);
    }
    close_unit("head");
  }
  return ids;
}

ParamRegistry whole_model_registry(const GPTDims& dims) {
  GPTDims d = dims;
  // Whole tensors keep this layout's padded vocabulary (padded_vocab is already whole).
  d.tp = 1;
  d.tp_rank = 0;
  d.sequence_parallel = false;
  d.ep = d.etp = 1;
  d.ep_rank = d.etp_rank = 0;
  ParamRegistry reg;
  std::vector<ParamUnit> units;
  register_chunk(reg, units, d, whole_model(d), ParamRegistry::kAlign);
  return reg;
}

GPTModel::GPTModel(const GPTDims& dims, backend::Ops& ops, ModelOptions o)
    : dims_(dims), ops_(ops), tp_(o.tp), cp_(o.cp), chunk_(o.chunk.value_or(whole_model(dims))), ep_(o.ep) {
  MPT_CHECK(tp_.size() == dims.tp, Status::kInvalidArgument, "the model is split over ", dims.tp,
            " tensor-parallel ranks but its group has ", tp_.size());
  MPT_CHECK(tp_.sequence_parallel() == dims.sequence_parallel, Status::kInvalidArgument,
            "sequence parallelism differs between the model's sizes and its group");
  MPT_CHECK(cp_.size() == dims.cp, Status::kInvalidArgument, "the model's sequence is split over ", dims.cp,
            " context-parallel ranks but its group has ", cp_.size());
  MPT_CHECK(dims.cp == 1 || dims.seq % (2 * dims.cp) == 0, Status::kInvalidConfig, "seq_length ", dims.seq,
            " must be divisible by 2 x context_parallel_size = ", 2 * dims.cp);
  dims_.tp_rank = tp_.rank();
  dims_.cp_rank = cp_.rank();
  if (dims.num_experts > 0) {
    MPT_CHECK(ep_.ep() == dims.ep && ep_.etp() == dims.etp, Status::kInvalidArgument, "the experts are split over ",
              dims.ep, " expert-parallel x ", dims.etp, " expert-tensor-parallel ranks but the token-exchange group is ",
              ep_.ep(), " x ", ep_.etp());
    dims_.ep_rank = ep_.ep_rank();
    dims_.etp_rank = ep_.etp_rank();
  }
  eval_dims_ = dims_;
  eval_dims_.hidden_dropout = 0;
  eval_dims_.attention_dropout = 0;
  const GPTDims& d = dims_;
  MPT_CHECK(d.heads % d.groups == 0, Status::kInvalidConfig, "heads ", d.heads, " not divisible by groups ", d.groups);
  MPT_CHECK(d.groups % d.tp == 0 && d.ffn % d.tp == 0 && d.padded_vocab % d.tp == 0 &&
                (!d.sequence_parallel || d.tokens() % d.tp == 0),
            Status::kInvalidConfig, "query groups ", d.groups, ", ffn ", d.ffn, ", padded vocabulary ", d.padded_vocab,
            d.sequence_parallel ? str(" and tokens ", d.tokens()) : std::string(),
            " must each be divisible by the tensor-parallel size ", d.tp);
  MPT_CHECK(0 <= chunk_.begin && chunk_.begin <= chunk_.end && chunk_.end <= d.num_layers, Status::kInvalidArgument,
            "model chunk layers [", chunk_.begin, ", ", chunk_.end, ") are outside the model's ", d.num_layers);
  // Megatron's MoELayer refuses to train with tensor parallelism unless the sequence is split
  // too: each rank routes its own rows.
  MPT_CHECK(d.num_experts == 0 || d.tp == 1 || d.sequence_parallel, Status::kInvalidConfig,
            "mixture of experts with tensor parallelism needs model.sequence_parallel = true");
  MPT_CHECK(d.num_experts == 0 || (d.num_experts % d.ep == 0 && d.moe_ffn % d.etp == 0 && d.shared_ffn % d.tp == 0),
            Status::kInvalidConfig, "experts ", d.num_experts, ", expert ffn ", d.moe_ffn, " and shared expert ffn ",
            d.shared_ffn, " must divide by expert-parallel ", d.ep, ", expert-tensor-parallel ", d.etp,
            " and tensor-parallel ", d.tp, " sizes");
  MPT_CHECK(d.recompute.full == Recompute::Full::kNone || d.recompute.num_layers >= 1, Status::kInvalidConfig,
            "full activation recompute needs model.recompute_num_layers >= 1, got ", d.recompute.num_layers);
  MPT_CHECK(d.recompute.full == Recompute::Full::kNone || !d.recompute.selective, Status::kInvalidConfig,
            "activation recompute is either full or selective, not both");
  MPT_CHECK(o.unit_align > 0 && o.unit_align % ParamRegistry::kAlign == 0, Status::kInvalidArgument,
            "unit alignment ", o.unit_align, " must be a positive multiple of ", ParamRegistry::kAlign);
  MPT_CHECK(o.slots >= 1, Status::kInvalidArgument, "a model needs at least one activation slot, got ", o.slots);
  MPT_CHECK(o.expert_unit_align > 0 && o.expert_unit_align % ParamRegistry::kAlign == 0, Status::kInvalidArgument,
            "expert unit alignment ", o.expert_unit_align, " must be a positive multiple of ", ParamRegistry::kAlign);
  const ExpertLayout experts{&expert_reg_, &expert_units_, o.expert_unit_align};
  ids_ = register_chunk(reg_, units_, d, chunk_, o.unit_align, &experts);
  if (chunk_.post_process) {
    if (!d.tied_output) {
      out_unit_ = head_unit(), out_param_ = ids_.output_w;
    } else if (chunk_.pre_process) {
      out_unit_ = 0, out_param_ = ids_.word_emb;
    } else {
      out_unit_ = head_unit(), out_param_ = ids_.word_copy;
    }
  }

  if (o.storage) {
    storage_ = o.storage(reg_, units_);
  } else {
    auto full = std::make_unique<FullStorage>(reg_.total_numel(), ops_);
    full->set_units(&units_);
    storage_ = std::move(full);
  }
  if (!expert_units_.empty()) {
    if (o.expert_storage) {
      expert_storage_ = o.expert_storage(expert_reg_, expert_units_);
    } else {
      auto full = std::make_unique<FullStorage>(expert_reg_.total_numel(), ops_);
      full->set_units(&expert_units_);
      expert_storage_ = std::move(full);
    }
    expert_compute_ = std::make_unique<ComputeParams>(ops_, d.compute, expert_units_,
                                                      expert_storage_->full_params() != nullptr);
  }
  compute_ = std::make_unique<ComputeParams>(ops_, d.compute, units_, storage_->full_params() != nullptr);
  slots_.resize(static_cast<size_t>(o.slots));
  acts_ = Arena(&ops_);  // activations live in the backend's memory
  plan_activations();
}

GPTModel::SlotActs& GPTModel::slot_at(int64_t s) {
  MPT_CHECK(s >= 0 && s < slots(), Status::kInvalidArgument, "activation slot ", s, " is outside [0, ", slots(), ")");
  return slots_[static_cast<size_t>(s)];
}

void GPTModel::plan_activations() {
  const GPTDims& d = dims_;
  const Recompute& rc = d.recompute;
  const int64_t T = d.tokens(), R = d.rows(), L = chunk_.count();
  ActPlanner plan(acts_, d.compute);
  // Each tensor a layer keeps goes to the slot, or to the shared region when backward
  // regenerates it (dropped: the whole layer is recomputed, or its selective module is).
  auto place = [&](bool dropped) {
    if (dropped) plan.share();
    else plan.keep();
  };
  auto plan_layer = [&](LayerActs& a, int64_t i, bool whole) {
    place(whole || rc.layernorm);
    plan.act(a.norm1_out, {R, d.hidden});
    if (d.layernorm) plan.f32(a.norm1_mean, {R});
    plan.f32(a.norm1_rstd, {R});
    place(whole);
    plan.act(a.q, {T, d.attn_width()});
    plan.act(a.k, {T, d.kv_width()});
    plan.act(a.v, {T, d.kv_width()});
    plan.act(a.attn_out, {T, d.attn_width()});
    plan.f32(a.lse, {T, d.local_heads()});
    plan.act(a.resid_mid, {R, d.hidden});
    place(whole || rc.layernorm);
    plan.act(a.norm2_out, {R, d.hidden});
    if (d.layernorm) plan.f32(a.norm2_mean, {R});
    plan.f32(a.norm2_rstd, {R});
    if (d.is_moe_layer(chunk_.begin + i)) {
      auto act = [&](Tensor& t, std::initializer_list<int64_t> shape) {
        place(whole || moe_recomputed(rc, a.moe, t));
        plan.act(t, shape);
      };
      auto f32 = [&](Tensor& t, std::initializer_list<int64_t> shape) {
        place(whole || moe_recomputed(rc, a.moe, t));
        plan.f32(t, shape);
      };
      auto i32 = [&](Tensor& t, std::initializer_list<int64_t> shape) {
        place(whole || moe_recomputed(rc, a.moe, t));
        plan.i32(t, shape);
      };
      plan_moe(d, a.moe, act, f32, i32);
    } else {
      place(whole || rc.mlp);
      plan.act(a.fc1_out, {T, d.fc1_width()});
      plan.act(a.act_out, {T, d.local_ffn()});
    }
  };
  for (SlotActs& s : slots_) {
    plan.keep();
    plan.i32(s.ids, {T});
    plan.i32(s.labels, {T});
    plan.f32(s.loss_mask, {T});
    s.residual.resize(static_cast<size_t>(L + 1));
    s.layers.resize(static_cast<size_t>(L));
    for (int64_t i = 0; i < L; ++i) {
      const Recompute::Group g = rc.group(i, L);
      // Full recompute: a group keeps its input; the inputs of its other layers and every
      // layer's activations are regenerated. Selective: each layer's dropped parts.
      if (g.recomputed() ? i == g.begin : rc.selective) plan.restart_shared();
      place(g.recomputed() && i > g.begin);
      plan.act(s.residual[static_cast<size_t>(i)], {R, d.hidden});
      plan_layer(s.layers[static_cast<size_t>(i)], i, g.recomputed());
    }
    plan.keep();
    plan.act(s.residual.back(), {R, d.hidden});  // the chunk's output
    if (chunk_.post_process) plan.act(s.dhead, {R, d.hidden});
  }
  plan.keep();
  plan.i32(positions_, {T});
  if (chunk_.post_process) {
    HeadScratch& h = head_;
    const int64_t C = d.loss_chunk();
    plan.act(h.normed, {R, d.hidden});
    if (d.layernorm) plan.f32(h.mean, {R});
    plan.f32(h.rstd, {R});
    plan.f32(h.logits, {C, d.local_vocab()});
    if (d.compute == DType::kBF16) plan.act(h.dlogits, {C, d.local_vocab()});
    plan.f32(h.row_max, {C});
    plan.f32(h.loss, {C});
    plan.f32(h.sumexp_target, {2 * C});
    plan.f32(h.weights, {2 * T});
    plan.f32(h.loss_sum, {1});
  }
  LayerScratch& s = scratch_;
  plan.act(s.qkv, {T, d.qkv_width()});
  plan.act(s.branch, {R, d.hidden});
  plan.act(s.dnorm, {R, d.hidden});
  plan.act(s.dact, {T, d.local_ffn()});
  plan.act(s.dfc1, {T, d.fc1_width()});
  plan.act(s.dattn, {T, d.attn_width()});
  plan.act(s.dq, {T, d.attn_width()});
  plan.act(s.dk, {T, d.kv_width()});
  plan.act(s.dv, {T, d.kv_width()});
  if (d.sequence_parallel) {
    plan.act(s.full, {T, d.hidden});
    plan.act(s.partial, {T, d.hidden});
  }
  if (cp_.size() > 1) plan.f32(s.cp_work, {(cp_.workspace_bytes(attention_dims(d, 0), d.compute) + 3) / 4});
  bool any_moe = false;
  for (int64_t i = chunk_.begin; i < chunk_.end; ++i) any_moe = any_moe || d.is_moe_layer(i);
  if (any_moe) {
    auto act = [&](Tensor& t, std::initializer_list<int64_t> shape) { plan.act(t, shape); };
    auto f32 = [&](Tensor& t, std::initializer_list<int64_t> shape) { plan.f32(t, shape); };
    auto i32 = [&](Tensor& t, std::initializer_list<int64_t> shape) { plan.i32(t, shape); };
    plan_moe_scratch(d, s.moe, act, f32, i32);
  }
  plan.act(dres_, {R, d.hidden});
  plan.allocate();
  local_positions_ = Tensor(positions_.i() + tp_.row_offset(T), DType::kI32, {R});
  runs_ = residual_row_runs(d, cp_, tp_);

  std::vector<int32_t> pos(static_cast<size_t>(T));
  for (int64_t q = 0; q < d.local_seq(); ++q)
    for (int64_t b = 0; b < d.micro_batch; ++b)
      pos[static_cast<size_t>(q * d.micro_batch + b)] = static_cast<int32_t>(cp_.position(q, d.local_seq()));
  ops_.to_device(positions_.data, pos.data(), pos.size() * sizeof(int32_t));
}

MicroBatchInput GPTModel::input(int64_t slot) {
  MPT_CHECK(ops_.host_memory(), Status::kInvalidArgument, "GPTModel::input: the ", ops_.name(),
            " backend's memory is not host memory; use load_input");
  SlotActs& a = slot_at(slot);
  return {a.ids.i(), a.labels.i(), a.loss_mask.f()};
}

void GPTModel::load_input(int64_t slot, const MicroBatchInput& host) {
  SlotActs& a = slot_at(slot);
  const int64_t T = dims_.tokens();
  if (host.ids) ops_.to_device(a.ids.data, host.ids, static_cast<size_t>(T) * sizeof(int32_t));
  if (host.labels) ops_.to_device(a.labels.data, host.labels, static_cast<size_t>(T) * sizeof(int32_t));
  if (host.loss_mask) {
    // The mask reaches the device as the loss and gradient weights (prepare_forward); a
    // host-memory backend's input() buffer may be filled in place instead.
    if (ops_.host_memory())
      std::memcpy(a.loss_mask.data, host.loss_mask, static_cast<size_t>(T) * sizeof(float));
    else
      a.host_mask.assign(host.loss_mask, host.loss_mask + T);
    a.mask_sum = 0;
    for (int64_t t = 0; t < T; ++t) a.mask_sum += host.loss_mask[t];
  }
}

void GPTModel::init_parameters(uint64_t seed) {
  MPT_CHECK(params() != nullptr, Status::kInvalidArgument,
            "init_parameters needs resident parameters; a sharding storage initialises its shards");
  // Drawn on the host, then copied into the backend's memory.
  auto init = [&](const ParamRegistry& reg, float* dst) {
    std::vector<float> host(static_cast<size_t>(reg.total_numel()));
    reg.initialize(host.data(), seed);
    ops_.to_device(dst, host.data(), host.size() * sizeof(float));
  };
  init(reg_, params());
  if (expert_storage_) {
    MPT_CHECK(expert_storage_->full_params() != nullptr, Status::kInvalidArgument,
              "init_parameters needs resident expert parameters");
    init(expert_reg_, expert_storage_->full_params());
  }
  params_changed();
}

void GPTModel::params_changed() {
  compute_->invalidate();
  if (expert_compute_) expert_compute_->invalidate();
}

void GPTModel::zero_grads() {
  storage_->zero_grads();
  if (expert_storage_) expert_storage_->zero_grads();
}

LayerContext GPTModel::layer_context(const GPTDims& d, int64_t i, void* params, float* grads, bool training,
                                     float aux_scale) {
  const int u = layer_unit(i);
  LayerContext c{ops_, d, reg_, params, grads, units_[static_cast<size_t>(u)].begin, positions_, tp_, cp_, runs_,
                 training, aux_scale};
  const int eu = ids_.expert_unit[static_cast<size_t>(i)];
  if (eu >= 0) {
    c.ereg = &expert_reg_;
    c.eparams = expert_compute_->unit(eu, expert_storage_->unit_params(eu));
    if (grads) c.egrads = expert_storage_->unit_grads(eu);
    c.ebase = expert_units_[static_cast<size_t>(eu)].begin;
  }
  c.ep = &ep_;
  return c;
}

void GPTModel::expert_unit_done(int64_t i, bool grads) {
  const int eu = ids_.expert_unit[static_cast<size_t>(i)];
  if (eu < 0) return;
  expert_storage_->params_done(eu);
  if (grads) expert_storage_->grads_done(eu);
}

void GPTModel::cast_compute_params() {
  MPT_CHECK(storage_->full_params() != nullptr && (!expert_storage_ || expert_storage_->full_params() != nullptr),
            Status::kInvalidArgument, "cast_compute_params needs resident parameters");
  for (int u = 0; u < static_cast<int>(units_.size()); ++u) {
    unit_params(u);
    storage_->params_done(u);
  }
  for (int u = 0; expert_storage_ && u < static_cast<int>(expert_units_.size()); ++u) {
    expert_compute_->unit(u, expert_storage_->unit_params(u));
    expert_storage_->params_done(u);
  }
}

void GPTModel::prepare_forward(int64_t slot, LossWeights weights) {
  SlotActs& a = slot_at(slot);
  if (!chunk_.post_process) return;
  HeadScratch& h = head_;
  const int64_t T = dims_.tokens();
  MPT_CHECK(ops_.host_memory() || static_cast<int64_t>(a.host_mask.size()) == T, Status::kInvalidArgument,
            "forward of activation slot ", slot, ": no loss mask was loaded (load_input)");
  const float* mask = ops_.host_memory() ? a.loss_mask.f() : a.host_mask.data();
  std::vector<float>& w = weights_host_;
  w.resize(static_cast<size_t>(2 * T));
  const float loss_w = static_cast<float>(weights.loss);
  for (int64_t t = 0; t < T; ++t) {
    w[static_cast<size_t>(t)] = mask[t] * loss_w;
    w[static_cast<size_t>(T + t)] = mask[t] * weights.grad;
  }
  ops_.to_device(h.weights.data, w.data(), w.size() * sizeof(float));
  h.prepared_slot = slot;
  h.prepared_grads = weights.grad != 0;
}

void GPTModel::forward_replayed(int64_t slot) {
  SlotActs& a = slot_at(slot);
  if (!chunk_.post_process) return;
  MPT_CHECK(head_.prepared_slot == slot, Status::kInvalidArgument, "forward of activation slot ", slot,
            ": its loss weights were not prepared (prepare_forward)");
  a.head_grads = head_.prepared_grads;
  head_.prepared_slot = -1;
}

void GPTModel::backward_replayed(int64_t slot) { slot_at(slot).head_grads = false; }

GPTModel::LossSums GPTModel::forward(uint64_t key, bool training, int64_t slot, LossWeights weights) {
  prepare_forward(slot, weights);
  return forward_prepared(key, training, slot);
}

GPTModel::LossSums GPTModel::forward_prepared(uint64_t key, bool training, int64_t slot) {
  const GPTDims& d = training ? dims_ : eval_dims_;
  SlotActs& a = slot_at(slot);
  bool grads = false;
  if (chunk_.post_process) {
    MPT_CHECK(head_.prepared_slot == slot, Status::kInvalidArgument, "forward of activation slot ", slot,
              ": its loss weights were not prepared (prepare_forward)");
    grads = head_.prepared_grads;
    head_.prepared_slot = -1;
  }
  MPT_CHECK(training || !grads, Status::kInvalidArgument,
            "an evaluation forward (no dropout) cannot be followed by backward: its gradient weight must be 0");
  a.head_grads = false;
  ParamStorage& st = *storage_;
  st.begin_pass(training ? Pass::kForward : Pass::kEval);
  if (expert_storage_) expert_storage_->begin_pass(training ? Pass::kForward : Pass::kEval);
  if (chunk_.pre_process) {
    // Embedding: vocab-parallel word lookup (ids outside this rank's rows give zeros) summed
    // over tensor-parallel ranks, (+ learned position) then dropout, on this rank's rows.
    Tensor x = a.residual[0];
    void* emb = unit_params(0);
    const Tensor words = d.sequence_parallel ? scratch_.partial : x;
    ops_.embedding_fwd(words, a.ids, P(0, emb, ids_.word_emb), d.vocab_start(), false);
    tp_.leave(words, x);
    if (ids_.pos_emb >= 0) ops_.embedding_fwd(x, local_positions_, P(0, emb, ids_.pos_emb), 0, true);
    st.params_done(0);
    if (d.hidden_dropout > 0) dropout_rows_fwd(ops_, runs_, x, x, d.hidden_dropout, mix_key(key, kEmbedding));
  }

  LossSums sums;
  ResidualSum pending;  // the previous layer's residual add, left to the next norm
  for (int64_t i = 0; i < chunk_.count(); ++i) {
    const int u = layer_unit(i);
    const size_t li = static_cast<size_t>(i);
    const LayerContext c = layer_context(d, i, unit_params(u), nullptr, training, 1.0f);
    pending = layer_forward(c, ids_.layers[li], a.layers[li], scratch_, a.residual[li], a.residual[li + 1],
                            mix_key(key, static_cast<uint64_t>(chunk_.begin + i)), pending, defers_residual(i));
    st.params_done(u);
    expert_unit_done(i, false);
    if (ids_.layers[li].moe) {
      const MoeActs& m = a.layers[li].moe;
      sums.moe_aux_loss += m.aux_loss;
      sums.moe_z_loss += m.z_loss;
      const std::vector<int64_t>& routed = m.routed_total;
      const double mean = static_cast<double>(m.tokens_total * d.moe_topk) / static_cast<double>(d.num_experts);
      sums.moe_spread += static_cast<double>(*std::max_element(routed.begin(), routed.end())) / mean;
      ++sums.moe_layers;
    }
  }
  if (!chunk_.post_process) return sums;

  head_forward(a, grads, pending);
  return sums;
}

bool GPTModel::defers_residual(int64_t i) const {
  const int64_t L = chunk_.count();
  if (i + 1 == L) return chunk_.post_process;
  const Recompute::Group g = dims_.recompute.group(i, L);
  return !g.recomputed() || i + 1 < g.end;
}

double GPTModel::mask_sum(int64_t slot) {
  SlotActs& a = slot_at(slot);
  if (!ops_.host_memory()) return a.mask_sum;  // summed on the host by load_input
  const float* m = a.loss_mask.f();            // input() may have filled the mask in place
  double sum = 0;
  for (int64_t t = 0; t < dims_.tokens(); ++t) sum += m[t];
  return sum;
}

double GPTModel::take_loss() {
  if (!chunk_.post_process) return 0;
  float sum = 0;
  ops_.to_host(&sum, head_.loss_sum.data, sizeof(float));
  ops_.fill(head_.loss_sum, 0.0f);
  return sum;
}

void GPTModel::reset_loss() {
  if (chunk_.post_process) ops_.fill(head_.loss_sum, 0.0f);
}

void GPTModel::head_forward(SlotActs& a, bool grads, const ResidualSum& last) {
  const GPTDims& d = dims_;
  ParamStorage& st = *storage_;
  HeadScratch& s = head_;
  const int hu = head_unit();
  void* head = unit_params(hu);
  const Tensor h = a.residual.back();
  const Tensor norm_w = P(hu, head, ids_.final_w), norm_b = d.layernorm ? P(hu, head, ids_.final_b) : Tensor();
  // The final norm forms the chunk's output from the last layer's residual add as it reads it.
  if (last.pending() && d.layernorm)
    ops_.add_layernorm_fwd(h, s.normed, s.mean, s.rstd, last.a, last.b, norm_w, norm_b, d.norm_eps);
  else if (last.pending())
    ops_.add_rmsnorm_fwd(h, s.normed, s.rstd, last.a, last.b, norm_w, d.norm_eps);
  else if (d.layernorm)
    ops_.layernorm_fwd(s.normed, s.mean, s.rstd, h, norm_w, norm_b, d.norm_eps);
  else
    ops_.rmsnorm_fwd(s.normed, s.rstd, h, norm_w, d.norm_eps);

  // The output layer is column-parallel over the vocabulary: each rank computes its columns
  // of the logits of every token, one row block at a time. The cross-entropy pieces of a
  // block (row max, then sum of exponentials and target logit) are reduced over
  // tensor-parallel ranks, so the whole logits never exist anywhere. With a gradient weight
  // the block's d(logits) follows at once, and from it the block's share of d(weight) and of
  // d(input): the logits are never kept for backward.
  void* out_area = out_unit_ == hu ? head : unit_params(out_unit_);
  const Tensor weight = P(out_unit_, out_area, out_param_);
  Tensor dweight;
  if (grads) dweight = G(out_unit_, out_unit_ == hu ? st.unit_grads(hu) : st.unit_grads(out_unit_), out_param_);
  const Tensor x = tp_.enter(s.normed, scratch_.full);  // [T, H]
  // d(input) before its tensor-parallel reduction: [T, H] (the reduce-scatter's input under
  // sequence parallelism, else reduced in place).
  const Tensor dx = d.sequence_parallel ? scratch_.partial : scratch_.dnorm;
  const int64_t T = d.tokens(), C = d.loss_chunk();
  for (int64_t t0 = 0; t0 < T; t0 += C) {
    const int64_t n = std::min(C, T - t0);
    const Tensor logits = s.logits.rows(0, n), row_max = s.row_max.rows(0, n), loss = s.loss.rows(0, n);
    const Tensor sumexp_target = Tensor::f32(s.sumexp_target.f(), {2 * n});
    const Tensor sumexp = Tensor::f32(s.sumexp_target.f(), {n}), target = Tensor::f32(s.sumexp_target.f() + n, {n});
    const Tensor labels = a.labels.rows(t0, n);
    const Tensor loss_w = Tensor::f32(s.weights.f() + t0, {n, 1}), grad_w = Tensor::f32(s.weights.f() + T + t0, {n});
    ops_.matmul(logits, x.rows(t0, n), weight, false, true, 1.0f, 0.0f);
    if (d.tp == 1) {
      ops_.ce_stats(row_max, sumexp, target, logits, labels, d.vocab_start(), d.vocab);  // one read of the logits
    } else {
      // Vocab-parallel: the sums of exponentials are taken against the global max.
      ops_.ce_row_max(row_max, logits, d.vocab_start(), d.vocab);
      tp_.all_reduce(row_max, dist::ReduceOp::kMax);
      ops_.ce_sumexp_target(sumexp, target, logits, row_max, labels, d.vocab_start(), d.vocab);
      tp_.all_reduce(sumexp_target, dist::ReduceOp::kSum);
    }
    ops_.ce_loss(loss, row_max, sumexp, target);
    // loss_sum += sum_t loss[t] * mask[t] * weights.loss, as a [1, n] x [n, 1] product on
    // the device.
    ops_.matmul(Tensor::f32(s.loss_sum.f(), {1, 1}), Tensor::f32(loss.f(), {1, n}), loss_w, false, false, 1.0f,
                1.0f);
    if (!grads) continue;
    const Tensor dlogits = s.dlogits.data ? s.dlogits.rows(0, n) : logits;
    ops_.ce_bwd(dlogits, logits, row_max, sumexp, labels, grad_w, d.vocab_start(), d.vocab);
    // logits = x W^T: d(x) = d(logits) W; dW += d(logits)^T x.
    ops_.matmul(dx.rows(t0, n), dlogits, weight, false, false, 1.0f, 0.0f);
    ops_.matmul(dweight, dlogits, x.rows(t0, n), true, false, 1.0f, 1.0f);
  }
  if (out_unit_ != hu) st.params_done(out_unit_);
  a.head_grads = grads;
  if (!grads) {
    st.params_done(hu);
    return;
  }
  tp_.enter_backward_async(dx, scratch_.dnorm).wait();
  // The final norm's backward: d(last layer's output) into the slot, the norm's weights'
  // gradients into the head unit (kept open until backward; see GPTModel::backward).
  float* head_g = st.unit_grads(hu);
  ops_.fill(a.dhead, 0.0f);
  if (d.layernorm)
    ops_.layernorm_bwd(a.dhead, G(hu, head_g, ids_.final_w), G(hu, head_g, ids_.final_b), scratch_.dnorm, h,
                       P(hu, head, ids_.final_w), s.mean, s.rstd);
  else
    ops_.rmsnorm_bwd(a.dhead, G(hu, head_g, ids_.final_w), scratch_.dnorm, h, P(hu, head, ids_.final_w), s.rstd);
  st.params_done(hu);
}

void GPTModel::recompute_group(SlotActs& a, const Recompute::Group& g, uint64_t key) {
  ParamStorage& st = *storage_;
  ResidualSum pending;  // the group's input is kept: its first norm reads it as it is
  for (int64_t i = g.begin; i < g.end; ++i) {
    const int u = layer_unit(i);
    const size_t li = static_cast<size_t>(i);
    const LayerContext c = layer_context(dims_, i, unit_params(u), nullptr, true, 1.0f);
    // Each layer's residual add is formed by the next one's first norm, as in forward; the
    // group's output is kept already, so the last layer's add is not formed at all.
    pending = layer_forward(c, ids_.layers[li], a.layers[li], scratch_, a.residual[li],
                            i + 1 < g.end ? a.residual[li + 1] : Tensor(),
                            mix_key(key, static_cast<uint64_t>(chunk_.begin + i)), pending, true);
    st.params_done(u);
    expert_unit_done(i, false);
  }
}

void GPTModel::backward(uint64_t key, int64_t slot, Tensor output_grad, float aux_scale) {
  const GPTDims& d = dims_;
  SlotActs& a = slot_at(slot);
  ParamStorage& st = *storage_;
  st.begin_pass(Pass::kBackward);
  if (expert_storage_) expert_storage_->begin_pass(Pass::kBackward);
  if (chunk_.post_process) {
    // The output layer, loss and final norm ran their backward in forward: d(output of the
    // last layer) is in the slot, their gradients in the head unit (and, for a tied output
    // layer on the first stage, the embedding unit, whose gradients stay open until the
    // embedding's own backward has added to them).
    MPT_CHECK(a.head_grads, Status::kInvalidArgument, "backward of activation slot ", slot,
              " needs a training forward with a gradient weight (LossWeights::grad)");
    a.head_grads = false;
    ops_.copy(dres_, a.dhead);
    st.grads_done(head_unit());
  } else {
    MPT_CHECK(output_grad.data != nullptr && output_grad.numel() == dres_.numel(), Status::kInvalidArgument,
              "backward of a chunk without the loss needs d(output) of ", dres_.numel(), " elements");
    ops_.copy(dres_, output_grad);
  }

  for (int64_t i = chunk_.count() - 1; i >= 0; --i) {
    const Recompute::Group g = d.recompute.group(i, chunk_.count());
    if (g.recomputed() && i == g.end - 1) recompute_group(a, g, key);
    const int u = layer_unit(i);
    const size_t li = static_cast<size_t>(i);
    const LayerContext c = layer_context(d, i, unit_params(u), st.unit_grads(u), true, aux_scale);
    layer_backward(c, ids_.layers[li], a.layers[li], scratch_, a.residual[li], dres_,
                   mix_key(key, static_cast<uint64_t>(chunk_.begin + i)));
    st.params_done(u);
    st.grads_done(u);
    expert_unit_done(i, true);
  }
  if (!chunk_.pre_process) return;  // dres_ holds d(input) for the previous stage

  Tensor demb = dres_;
  if (d.hidden_dropout > 0) {
    demb = scratch_.branch;
    dropout_rows_bwd(ops_, runs_, demb, dres_, d.hidden_dropout, mix_key(key, kEmbedding));
  }
  float* emb_g = st.unit_grads(0);
  if (ids_.pos_emb >= 0) ops_.embedding_bwd(G(0, emb_g, ids_.pos_emb), local_positions_, demb, 0);
  // Dual of the forward reduction: every rank needs the gradient of every token's lookup.
  const Tensor dwords = tp_.leave_backward(demb, scratch_.full);
  ops_.embedding_bwd(G(0, emb_g, ids_.word_emb), a.ids, dwords, d.vocab_start());
  st.grads_done(0);
}

}  // namespace mpt::model
