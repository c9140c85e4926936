#include "model/gpt_model.h"

#include "core/rng.h"
#include "model/linear.h"

namespace mpt::model {

namespace {
enum Site : uint64_t { kEmbedding = 1000001 };

// Plans a tensor inside an arena; resolved to a pointer once the arena is allocated.
struct Planned {
  Tensor* t;
  size_t offset;
};
}  // namespace

GPTModel::GPTModel(const GPTDims& dims, backend::Ops& ops, const StorageFactory& storage, int64_t unit_align,
                   const parallel::TensorParallel& tp)
    : dims_(dims), ops_(ops), tp_(tp) {
  MPT_CHECK(tp.size() == dims.tp, Status::kInvalidArgument, "the model is split over ", dims.tp,
            " tensor-parallel ranks but its group has ", tp.size());
  MPT_CHECK(tp.sequence_parallel() == dims.sequence_parallel, Status::kInvalidArgument,
            "sequence parallelism differs between the model's sizes and its group");
  dims_.tp_rank = tp.rank();
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
  MPT_CHECK(unit_align > 0 && unit_align % ParamRegistry::kAlign == 0, Status::kInvalidArgument, "unit alignment ",
            unit_align, " must be a positive multiple of ", ParamRegistry::kAlign);
  auto close_unit = [&](std::string name) {
    reg_.pad_to(unit_align);
    const int64_t begin = units_.empty() ? 0 : units_.back().end;
    units_.push_back(ParamUnit{std::move(name), begin, reg_.total_numel()});
  };
  // Vocab-parallel: each tensor-parallel rank holds a contiguous range of vocabulary rows.
  const TensorSplit vocab{0, 1, d.tp_rank, d.tp}, whole{-1, 1, d.tp_rank, d.tp};
  word_emb_ = reg_.add_split("embedding.word_embeddings.weight", {d.local_vocab(), d.hidden}, vocab, Init::kNormal,
                             d.embedding_init_std, true);
  if (d.learned_positions) {
    pos_emb_ = reg_.add_split("embedding.position_embeddings.weight", {d.seq, d.hidden}, whole, Init::kNormal,
                              d.embedding_init_std, true);
    reg_.set_sequence_parallel(pos_emb_, d.sequence_parallel);  // added to this rank's rows only
  }
  close_unit("embedding");
  for (int64_t l = 0; l < d.num_layers; ++l) {
    layer_params_.push_back(register_layer(reg_, d, l));
    close_unit(str("decoder.layers.", l));
  }
  final_w_ = reg_.add_split("decoder.final_layernorm.weight", {d.hidden}, whole, Init::kOnes, 0, false);
  reg_.set_sequence_parallel(final_w_, d.sequence_parallel);
  if (d.layernorm) {
    final_b_ = reg_.add_split("decoder.final_layernorm.bias", {d.hidden}, whole, Init::kZeros, 0, false);
    reg_.set_sequence_parallel(final_b_, d.sequence_parallel);
  }
  if (!d.tied_output)
    output_w_ = reg_.add_split("output_layer.weight", {d.local_vocab(), d.hidden}, vocab, Init::kNormal, d.init_std,
                               true);
  close_unit("head");

  if (storage) {
    storage_ = storage(reg_, units_);
  } else {
    auto full = std::make_unique<FullStorage>(reg_.total_numel());
    full->set_units(&units_);
    storage_ = std::move(full);
  }
  plan_activations();
}

void GPTModel::plan_activations() {
  const GPTDims& d = dims_;
  const int64_t T = d.tokens(), R = d.rows();
  std::vector<Planned> plan;
  auto f32 = [&](Tensor& t, std::initializer_list<int64_t> shape) {
    t = Tensor(nullptr, DType::kF32, shape);
    plan.push_back({&t, acts_.reserve(t.bytes())});
  };
  auto i32 = [&](Tensor& t, std::initializer_list<int64_t> shape) {
    t = Tensor(nullptr, DType::kI32, shape);
    plan.push_back({&t, acts_.reserve(t.bytes())});
  };
  i32(ids_, {T});
  i32(labels_, {T});
  f32(loss_mask_, {T});
  i32(positions_, {T});
  f32(grad_scale_, {T});
  residual_.resize(d.num_layers + 1);
  for (auto& r : residual_) f32(r, {R, d.hidden});
  layer_acts_.resize(d.num_layers);
  for (auto& a : layer_acts_) {
    f32(a.norm1_out, {R, d.hidden});
    if (d.layernorm) f32(a.norm1_mean, {R});
    f32(a.norm1_rstd, {R});
    f32(a.q, {T, d.attn_width()});
    f32(a.k, {T, d.kv_width()});
    f32(a.v, {T, d.kv_width()});
    f32(a.attn_out, {T, d.attn_width()});
    f32(a.lse, {d.micro_batch, d.local_heads(), d.seq});
    f32(a.resid_mid, {R, d.hidden});
    f32(a.norm2_out, {R, d.hidden});
    if (d.layernorm) f32(a.norm2_mean, {R});
    f32(a.norm2_rstd, {R});
    f32(a.fc1_out, {T, d.fc1_width()});
    f32(a.act_out, {T, d.local_ffn()});
  }
  LayerScratch& s = scratch_;
  f32(s.qkv, {T, d.qkv_width()});
  f32(s.branch, {R, d.hidden});
  f32(s.dnorm, {R, d.hidden});
  f32(s.dact, {T, d.local_ffn()});
  f32(s.dfc1, {T, d.fc1_width()});
  f32(s.dattn, {T, d.attn_width()});
  f32(s.dq, {T, d.attn_width()});
  f32(s.dk, {T, d.kv_width()});
  f32(s.dv, {T, d.kv_width()});
  if (d.sequence_parallel) {
    f32(s.full, {T, d.hidden});
    f32(s.partial, {T, d.hidden});
  }
  f32(final_out_, {R, d.hidden});
  if (d.layernorm) f32(final_mean_, {R});
  f32(final_rstd_, {R});
  f32(logits_, {T, d.local_vocab()});
  f32(row_max_, {T});
  f32(sumexp_target_, {2, T});
  f32(token_loss_, {T});
  f32(dres_, {R, d.hidden});
  acts_.allocate();
  for (auto& p : plan) p.t->data = acts_.at<uint8_t>(p.offset);
  sumexp_ = Tensor::f32(sumexp_target_.f(), {T});
  target_logit_ = Tensor::f32(sumexp_target_.f() + T, {T});
  local_positions_ = Tensor(positions_.i() + tp_.row_offset(T), DType::kI32, {R});

  int32_t* pos = positions_.i();
  for (int64_t s = 0; s < d.seq; ++s)
    for (int64_t b = 0; b < d.micro_batch; ++b) pos[s * d.micro_batch + b] = static_cast<int32_t>(s);
}

void GPTModel::init_parameters(uint64_t seed) {
  MPT_CHECK(params() != nullptr, Status::kInvalidArgument,
            "init_parameters needs resident parameters; a sharding storage initialises its shards");
  reg_.initialize(params(), seed);
}

void GPTModel::zero_grads() { storage_->zero_grads(); }

GPTModel::LossSums GPTModel::forward(uint64_t key, bool training) {
  const GPTDims& d = training ? dims_ : eval_dims_;
  const int64_t T = d.tokens();
  ParamStorage& st = *storage_;
  st.begin_pass(training ? Pass::kForward : Pass::kEval);
  // Embedding: vocab-parallel word lookup (ids outside this rank's rows give zeros) summed
  // over tensor-parallel ranks, (+ learned position) then dropout, on this rank's rows.
  Tensor x = residual_[0];
  float* emb = st.unit_params(0);
  const Tensor words = d.sequence_parallel ? scratch_.partial : x;
  ops_.embedding_fwd(words, ids_, P(0, emb, word_emb_), d.vocab_start(), false);
  tp_.leave(words, x);
  if (pos_emb_ >= 0) ops_.embedding_fwd(x, local_positions_, P(0, emb, pos_emb_), 0, true);
  st.params_done(0);
  if (d.hidden_dropout > 0) ops_.dropout_fwd(x, x, d.hidden_dropout, mix_key(key, kEmbedding), tp_.row_offset(T));

  for (int64_t l = 0; l < d.num_layers; ++l) {
    const int u = static_cast<int>(l) + 1;
    LayerContext c{ops_, d, reg_, st.unit_params(u), nullptr, units_[static_cast<size_t>(u)].begin, positions_, tp_};
    layer_forward(c, layer_params_[l], layer_acts_[l], scratch_, residual_[l], residual_[l + 1], mix_key(key, l));
    st.params_done(u);
  }

  const int hu = head_unit();
  float* head = st.unit_params(hu);
  Tensor h = residual_[d.num_layers];
  if (d.layernorm)
    ops_.layernorm_fwd(final_out_, final_mean_, final_rstd_, h, P(hu, head, final_w_), P(hu, head, final_b_),
                       d.norm_eps);
  else
    ops_.rmsnorm_fwd(final_out_, final_rstd_, h, P(hu, head, final_w_), d.norm_eps);
  // The output layer is column-parallel over the vocabulary: this rank's logits only.
  if (d.tied_output) {
    column_parallel_forward(ops_, tp_, logits_, final_out_, P(0, st.unit_params(0), word_emb_), Tensor(),
                            scratch_.full);
    st.params_done(0);
  } else {
    column_parallel_forward(ops_, tp_, logits_, final_out_, P(hu, head, output_w_), Tensor(), scratch_.full);
  }
  st.params_done(hu);

  // Vocab-parallel cross-entropy: the row max, then the sum of exponentials and the target
  // logit, each reduced over tensor-parallel ranks; the whole logits never exist on one rank.
  ops_.ce_row_max(row_max_, logits_, d.vocab_start(), d.vocab);
  tp_.all_reduce(row_max_, dist::ReduceOp::kMax);
  ops_.ce_sumexp_target(sumexp_, target_logit_, logits_, row_max_, labels_, d.vocab_start(), d.vocab);
  tp_.all_reduce(sumexp_target_, dist::ReduceOp::kSum);
  ops_.ce_loss(token_loss_, row_max_, sumexp_, target_logit_);
  LossSums sums;
  sums.weighted_loss = ops_.dot(token_loss_, loss_mask_);
  const float* m = loss_mask_.f();
  for (int64_t t = 0; t < T; ++t) sums.mask_sum += m[t];
  return sums;
}

void GPTModel::backward(float loss_scale, uint64_t key) {
  const GPTDims& d = dims_;
  const int64_t T = d.tokens();
  float* gs = grad_scale_.f();
  const float* m = loss_mask_.f();
  for (int64_t t = 0; t < T; ++t) gs[t] = m[t] * loss_scale;

  ParamStorage& st = *storage_;
  st.begin_pass(Pass::kBackward);
  Tensor dlogits = logits_;
  ops_.ce_bwd(dlogits, logits_, row_max_, sumexp_, labels_, grad_scale_, d.vocab_start(), d.vocab);
  // logits = final_out @ W^T: dW += dlogits^T final_out; d(final_out) = dlogits @ W, reduced
  // over tensor-parallel ranks.
  const int hu = head_unit();
  float* head = st.unit_params(hu);
  float* head_g = st.unit_grads(hu);
  if (d.tied_output) {
    // The tied weight lives in the embedding unit, whose gradients stay open until the
    // embedding's own backward has added to them.
    column_parallel_backward(ops_, tp_, scratch_.dnorm, P(0, st.unit_grads(0), word_emb_), Tensor(), dlogits,
                             final_out_, P(0, st.unit_params(0), word_emb_), scratch_.full, scratch_.partial);
    st.params_done(0);
  } else {
    column_parallel_backward(ops_, tp_, scratch_.dnorm, P(hu, head_g, output_w_), Tensor(), dlogits, final_out_,
                             P(hu, head, output_w_), scratch_.full, scratch_.partial);
  }
  ops_.fill(dres_, 0.0f);
  Tensor h = residual_[d.num_layers];
  if (d.layernorm)
    ops_.layernorm_bwd(dres_, P(hu, head_g, final_w_), P(hu, head_g, final_b_), scratch_.dnorm, h,
                       P(hu, head, final_w_), final_mean_, final_rstd_);
  else
    ops_.rmsnorm_bwd(dres_, P(hu, head_g, final_w_), scratch_.dnorm, h, P(hu, head, final_w_), final_rstd_);
  st.params_done(hu);
  st.grads_done(hu);

  for (int64_t l = d.num_layers - 1; l >= 0; --l) {
    const int u = static_cast<int>(l) + 1;
    LayerContext c{ops_, d, reg_, st.unit_params(u), st.unit_grads(u), units_[static_cast<size_t>(u)].begin,
                   positions_, tp_};
    layer_backward(c, layer_params_[l], layer_acts_[l], scratch_, residual_[l], dres_, mix_key(key, l));
    st.params_done(u);
    st.grads_done(u);
  }

  Tensor demb = dres_;
  if (d.hidden_dropout > 0) {
    demb = scratch_.branch;
    ops_.dropout_bwd(demb, dres_, d.hidden_dropout, mix_key(key, kEmbedding), tp_.row_offset(T));
  }
  float* emb_g = st.unit_grads(0);
  if (pos_emb_ >= 0) ops_.embedding_bwd(P(0, emb_g, pos_emb_), local_positions_, demb, 0);
  // Dual of the forward reduction: every rank needs the gradient of every token's lookup.
  const Tensor dwords = tp_.leave_backward(demb, scratch_.full);
  ops_.embedding_bwd(P(0, emb_g, word_emb_), ids_, dwords, d.vocab_start());
  st.grads_done(0);
}

}  // namespace mpt::model
