// Whole-model gradient checks: for every parameter tensor, the directional derivative of
// the loss along a random direction (central finite difference) must match <grad, u>.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <vector>

#include "backend/ops.h"
#include "core/rng.h"
#include "model/gpt_model.h"

namespace mpt::model {
namespace {

GPTDims small_dims() {
  GPTDims d;
  d.num_layers = 2;
  d.hidden = 16;
  d.ffn = 24;
  d.heads = 4;
  d.groups = 4;
  d.head_dim = 4;
  d.seq = 8;
  d.micro_batch = 2;
  d.vocab = 23;
  d.padded_vocab = 32;
  d.rotary_dim = 4;
  d.softmax_scale = 0.5f;
  d.init_std = 0.2f;
  d.embedding_init_std = 0.5f;
  return d;
}

GPTDims gpt_family() {
  GPTDims d = small_dims();  // LayerNorm, learned positions, GELU, biases, tied, MHA
  d.layernorm = true;
  d.learned_positions = true;
  d.activation = backend::Activation::kGelu;
  d.bias = d.qkv_bias = true;
  d.tied_output = true;
  return d;
}

GPTDims llama_family() {
  GPTDims d = small_dims();  // RMSNorm, RoPE, SwiGLU, no biases, untied, GQA
  d.layernorm = false;
  d.learned_positions = false;
  d.rope = true;
  d.groups = 2;
  d.activation = backend::Activation::kSilu;
  d.gated = true;
  d.bias = d.qkv_bias = false;
  d.tied_output = false;
  return d;
}

// The objective backward differentiates: the token-mean loss plus, with experts, the
// router's load-balancing and z-losses (weight 1).
double loss_of(GPTModel& m, uint64_t key) {
  GPTModel::LossSums s = m.forward(key, true, 0, LossWeights{1.0 / m.mask_sum(), 0.0f});
  return m.take_loss() + s.moe_aux_loss + s.moe_z_loss;
}

void fill_inputs(GPTModel& m, uint64_t seed) {
  const GPTDims& d = m.dims();
  MicroBatchInput in = m.input();
  for (int64_t t = 0; t < d.tokens(); ++t) {
    Philox r(seed, 7, static_cast<uint64_t>(t));
    in.ids[t] = static_cast<int32_t>(r.out[0] % d.vocab);
    in.labels[t] = static_cast<int32_t>(r.out[1] % d.vocab);
    in.loss_mask[t] = (t % 5 == 3) ? 0.0f : 1.0f;  // some masked tokens
  }
}

void check_model_gradients(const GPTDims& dims, float eps = 1e-2f) {
  auto ops = backend::make_cpu_ops(0);
  GPTModel m(dims, *ops);
  m.init_parameters(42);
  fill_inputs(m, 9);
  const uint64_t key = 1234;

  // The output layer's backward runs in forward: gradients are zeroed first.
  m.zero_grads();
  const double token_mean = 1.0 / m.mask_sum();
  m.forward(key, true, 0, LossWeights{token_mean, static_cast<float>(token_mean)});
  m.reset_loss();
  m.backward(key);
  // The experts of MoE layers live in their own storage.
  struct Part {
    const ParamRegistry* reg;
    float* params;
    std::vector<float> grads;
  };
  std::vector<Part> parts;
  parts.push_back({&m.registry(), m.params(), std::vector<float>(m.grads(), m.grads() + m.flat_numel())});
  if (ParamStorage* es = m.expert_storage()) {
    const int64_t n = m.expert_registry().total_numel();
    parts.push_back({&m.expert_registry(), es->full_params(), std::vector<float>(es->full_grads(), es->full_grads() + n)});
  }
  for (const Part& part : parts)
  for (const ParamInfo& p : part.reg->params()) {
    const std::vector<float>& grads = part.grads;
    if (p.name == "embedding.word_embeddings.weight" || p.name == "output_layer.weight") {
      // rows past the real vocabulary never influence the loss: their gradient must be 0
      for (int64_t i = dims.vocab * dims.hidden; i < p.numel; ++i)
        ASSERT_EQ(grads[p.offset + i], 0.0f) << p.name << " padded row element " << i;
    }
    std::vector<float> u(p.numel);
    fill_normal(u.data(), p.numel, hash_name(p.name), 0, 0.0f, 1.0f);
    double analytic = 0;
    for (int64_t i = 0; i < p.numel; ++i) analytic += static_cast<double>(grads[p.offset + i]) * u[i];
    float* w = part.params + p.offset;
    std::vector<float> saved(w, w + p.numel);
    for (int64_t i = 0; i < p.numel; ++i) w[i] = saved[i] + eps * u[i];
    double lp = loss_of(m, key);
    for (int64_t i = 0; i < p.numel; ++i) w[i] = saved[i] - eps * u[i];
    double lm = loss_of(m, key);
    std::copy(saved.begin(), saved.end(), w);
    double numeric = (lp - lm) / (2.0 * eps);
    EXPECT_NEAR(numeric, analytic, 2e-3 + 2e-2 * std::fabs(analytic)) << p.name;
    // Every parameter moves the loss: a forward that read the wrong memory would give zero
    // on both sides and pass the comparison above.
    EXPECT_GT(std::fabs(numeric), 1e-5) << p.name << ": the loss does not depend on it";
  }
  // Every expert was checked: the layers' experts are all in this rank's storage.
  if (dims.num_experts > 0) {
    int64_t experts = 0;
    for (const ParamInfo& p : m.expert_registry().params()) experts += p.name.find(".mlp.experts.") != std::string::npos;
    int64_t moe_layers = 0;
    for (int64_t l = 0; l < dims.num_layers; ++l) moe_layers += dims.is_moe_layer(l);
    EXPECT_EQ(experts, 2 * dims.num_experts * moe_layers);
  }
}

// A mixture of experts in every other layer: 4 experts, top 2, a shared expert, the
// load-balancing and z-losses. The step is small so that no token's top-k choice flips.
GPTDims moe_family() {
  GPTDims d = llama_family();
  d.num_layers = 2;
  d.num_experts = 4;
  d.moe_topk = 2;
  d.moe_ffn = 12;
  d.moe_layer_freq = 1;
  d.shared_ffn = 8;
  d.aux_loss_coeff = 0.1f;
  d.z_loss_coeff = 0.05f;
  return d;
}

TEST(ModelGradcheck, MixtureOfExperts) { check_model_gradients(moe_family(), 1e-3f); }

TEST(ModelGradcheck, MixtureOfExpertsSigmoidAndPreSoftmax) {
  GPTDims d = moe_family();
  d.router_score = backend::RouterScore::kSigmoid;
  d.moe_topk = 3;
  d.shared_ffn = 0;
  d.moe_layer_freq = 2;  // layer 0 MoE, layer 1 dense
  check_model_gradients(d, 1e-3f);
  d = moe_family();
  d.router_pre_softmax = true;
  check_model_gradients(d, 1e-3f);
}

TEST(ModelGradcheck, GPTFamily) { check_model_gradients(gpt_family()); }

TEST(ModelGradcheck, LlamaFamily) { check_model_gradients(llama_family()); }

// The output layer and loss in row blocks of 5 of the 16 tokens (the last block short).
TEST(ModelGradcheck, LossInRowBlocks) {
  GPTDims d = gpt_family();
  d.loss_chunk_rows = 5;
  ASSERT_EQ(d.loss_chunk(), 5);
  check_model_gradients(d);
  d = llama_family();
  d.loss_chunk_rows = 3;
  check_model_gradients(d);
}

TEST(ModelGradcheck, MultiQueryAttention) {
  GPTDims d = llama_family();
  d.groups = 1;
  check_model_gradients(d);
}

TEST(ModelGradcheck, WithDropout) {
  GPTDims d = gpt_family();
  d.hidden_dropout = 0.2f;
  d.attention_dropout = 0.1f;
  check_model_gradients(d);
}

TEST(ModelGradcheck, GeluTanhNoBiasRopePartial) {
  GPTDims d = gpt_family();
  d.activation = backend::Activation::kGeluTanh;
  d.bias = d.qkv_bias = false;
  d.learned_positions = false;
  d.rope = true;
  d.rotary_dim = 2;  // rotary_percent 0.5
  check_model_gradients(d);
}

// Parameters are drawn from (seed, name, element index) only: building the same model twice
// gives the same bits, and a parameter's values do not depend on what else the model has.
TEST(ModelInit, LayoutInvariantAndMegatronScaled) {
  auto ops = backend::make_cpu_ops(0);
  GPTDims d = llama_family();
  GPTModel a(d, *ops), b(d, *ops);
  a.init_parameters(5);
  b.init_parameters(5);
  ASSERT_EQ(0, std::memcmp(a.params(), b.params(), a.flat_numel() * sizeof(float)));
  GPTDims d2 = d;
  d2.num_layers = 3;  // a different model; shared names must hold the same values
  GPTModel c(d2, *ops);
  c.init_parameters(5);
  const auto& reg = a.registry();
  for (const auto& p : reg.params()) {
    int j = c.registry().find(p.name);
    ASSERT_GE(j, 0) << p.name;
    if (p.name.rfind("decoder.layers.", 0) == 0 && p.name.find("linear_proj") != std::string::npos) continue;
    if (p.name.find("linear_fc2") != std::string::npos) continue;  // scaled by 1/sqrt(2L): differs with L
    ASSERT_EQ(0, std::memcmp(a.params() + p.offset, c.params() + c.registry().at(j).offset, p.numel * 4)) << p.name;
  }
  // element i of a normal-initialised parameter is std * normal_at(key(seed, name), i)
  const auto& q = reg.at(reg.find("decoder.layers.1.self_attention.linear_qkv.weight"));
  uint64_t key = mix_key(5, hash_name(q.name));
  EXPECT_FLOAT_EQ(a.params()[q.offset + 17], d.init_std * normal_at(key, 17));
  // output-side projections use std / sqrt(2 * num_layers)
  const auto& f2 = reg.at(reg.find("decoder.layers.0.mlp.linear_fc2.weight"));
  double ss = 0;
  for (int64_t i = 0; i < f2.numel; ++i) ss += a.params()[f2.offset + i] * a.params()[f2.offset + i];
  double std_est = std::sqrt(ss / f2.numel);
  EXPECT_NEAR(std_est, d.init_std / std::sqrt(4.0), 0.25 * d.init_std / std::sqrt(4.0));
  // norm weights start at one
  const auto& n = reg.at(reg.find("decoder.final_layernorm.weight"));
  for (int64_t i = 0; i < n.numel; ++i) ASSERT_EQ(a.params()[n.offset + i], 1.0f);
}

}  // namespace
}  // namespace mpt::model
