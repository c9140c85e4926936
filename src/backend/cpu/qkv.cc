#include "backend/cpu/qkv.h"

#include <algorithm>

#include "backend/cpu/check.h"
#include "backend/cpu/threading.h"

namespace mpt::backend::cpu {

namespace {

// Checks sizes and returns the number of tokens T.
int64_t qkv_tokens(const char* op, const Tensor& qkv, const Tensor& q, const Tensor& k, const Tensor& v,
                   int64_t groups, int64_t hpg, int64_t d) {
  MPT_CPU_CHECK(groups > 0 && hpg > 0 && d > 0, op,
            str("groups ", groups, ", heads_per_group ", hpg, ", head_dim ", d, " must be positive"));
  check_f32(op, "qkv", qkv);
  check_f32(op, "q", q);
  check_f32(op, "k", k);
  check_f32(op, "v", v);
  const int64_t width = groups * (hpg + 2) * d;
  MPT_CPU_CHECK(qkv.numel() % width == 0, op, "qkv " + describe(qkv) + str(" rows must hold ", width, " values"));
  const int64_t tokens = qkv.numel() / width;
  check_numel(op, "q", q, tokens * groups * hpg * d);
  check_numel(op, "k", k, tokens * groups * d);
  check_numel(op, "v", v, tokens * groups * d);
  return tokens;
}

// Moves every head between the fused row and the three separate rows; to_fused picks
// the direction.
void shuffle(float* qkv, float* q, float* k, float* v, int64_t tokens, int64_t groups, int64_t hpg, int64_t d,
             bool to_fused) {
  const int64_t width = groups * (hpg + 2) * d, q_width = groups * hpg * d, kv_width = groups * d;
  auto move = [&](float* fused, float* part) {
    if (to_fused)
      std::copy(part, part + d, fused);
    else
      std::copy(fused, fused + d, part);
  };
#pragma omp parallel for schedule(static) if(tokens * width >= kMinParallelWork)
  for (int64_t t = 0; t < tokens; ++t) {
    float* row = qkv + t * width;
    for (int64_t g = 0; g < groups; ++g) {
      float* block = row + g * (hpg + 2) * d;
      for (int64_t j = 0; j < hpg; ++j) move(block + j * d, q + t * q_width + (g * hpg + j) * d);
      move(block + hpg * d, k + t * kv_width + g * d);
      move(block + (hpg + 1) * d, v + t * kv_width + g * d);
    }
  }
}

}  // namespace

void qkv_split(Tensor q, Tensor k, Tensor v, Tensor qkv, int64_t groups, int64_t heads_per_group, int64_t head_dim) {
  const int64_t tokens = qkv_tokens("qkv_split", qkv, q, k, v, groups, heads_per_group, head_dim);
  shuffle(qkv.f(), q.f(), k.f(), v.f(), tokens, groups, heads_per_group, head_dim, false);
}

void qkv_merge(Tensor dqkv, Tensor dq, Tensor dk, Tensor dv, int64_t groups, int64_t heads_per_group,
               int64_t head_dim) {
  const int64_t tokens = qkv_tokens("qkv_merge", dqkv, dq, dk, dv, groups, heads_per_group, head_dim);
  shuffle(dqkv.f(), dq.f(), dk.f(), dv.f(), tokens, groups, heads_per_group, head_dim, true);
}

}  // namespace mpt::backend::cpu
