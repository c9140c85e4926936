#include "backend/cpu/cross_entropy.h"

#include <algorithm>
#include <cstdint>
#include <cmath>
#include <limits>

#include "backend/cpu/check.h"
#include "backend/cpu/threading.h"

namespace mpt::backend::cpu {

namespace {

struct Layout {
  int64_t tokens, cols, valid;  // valid: leading columns whose ids are < vocab_valid
};

Layout ce_layout(const char* op, const Tensor& logits, int64_t vocab_start, int64_t vocab_valid) {
  check_f32(op, "logits", logits);
  MPT_CPU_CHECK(vocab_start >= 0 && vocab_valid >= 0, op,
            str("vocab_start ", vocab_start, " and vocab_valid ", vocab_valid, " must be non-negative"));
  const int64_t cols = last_dim(logits);
  MPT_CPU_CHECK(cols > 0, op, "logits " + describe(logits) + " has no columns");
  return {logits.numel() / cols, cols, std::clamp<int64_t>(vocab_valid - vocab_start, 0, cols)};
}

void check_per_token(const char* op, const char* arg, const Tensor& t, int64_t tokens, bool is_int = false) {
  if (is_int)
    check_i32(op, arg, t);
  else
    check_f32(op, arg, t);
  check_numel(op, arg, t, tokens);
}

}  // namespace

void ce_row_max(Tensor row_max, Tensor logits, int64_t vocab_start, int64_t vocab_valid) {
  const char* op = "ce_row_max";
  const Layout l = ce_layout(op, logits, vocab_start, vocab_valid);
  check_per_token(op, "row_max", row_max, l.tokens);
  const float* px = logits.f();
  float* pm = row_max.f();
#pragma omp parallel for schedule(static) if(l.tokens * l.cols >= kMinParallelWork)
  for (int64_t t = 0; t < l.tokens; ++t) {
    const float* row = px + t * l.cols;
    float mx = -std::numeric_limits<float>::infinity();
    for (int64_t c = 0; c < l.valid; ++c) mx = std::max(mx, row[c]);
    pm[t] = mx;
  }
}

void ce_sumexp_target(Tensor sumexp, Tensor target_logit, Tensor logits, Tensor row_max, Tensor targets,
                      int64_t vocab_start, int64_t vocab_valid) {
  const char* op = "ce_sumexp_target";
  const Layout l = ce_layout(op, logits, vocab_start, vocab_valid);
  check_per_token(op, "sumexp", sumexp, l.tokens);
  check_per_token(op, "target_logit", target_logit, l.tokens);
  check_per_token(op, "row_max", row_max, l.tokens);
  check_per_token(op, "targets", targets, l.tokens, true);
  const float *px = logits.f(), *pm = row_max.f();
  const int32_t* pt = targets.i();
  float *ps = sumexp.f(), *ptl = target_logit.f();
#pragma omp parallel for schedule(static) if(l.tokens * l.cols >= kMinParallelWork)
  for (int64_t t = 0; t < l.tokens; ++t) {
    const float* row = px + t * l.cols;
    const float mx = pm[t];
    double sum = 0;
    for (int64_t c = 0; c < l.valid; ++c) sum += std::exp(row[c] - mx);
    ps[t] = static_cast<float>(sum);
    const int64_t col = static_cast<int64_t>(pt[t]) - vocab_start;
    ptl[t] = col >= 0 && col < l.cols ? row[col] : 0.0f;
  }
}

void ce_loss(Tensor loss, Tensor row_max, Tensor sumexp, Tensor target_logit) {
  const char* op = "ce_loss";
  check_f32(op, "loss", loss);
  const int64_t tokens = loss.numel();
  check_per_token(op, "row_max", row_max, tokens);
  check_per_token(op, "sumexp", sumexp, tokens);
  check_per_token(op, "target_logit", target_logit, tokens);
  const float *pm = row_max.f(), *ps = sumexp.f(), *ptl = target_logit.f();
  float* pl = loss.f();
#pragma omp parallel for schedule(static) if(tokens >= kMinParallelWork)
  for (int64_t t = 0; t < tokens; ++t)
    pl[t] = static_cast<float>(std::log(static_cast<double>(ps[t]))) + pm[t] - ptl[t];
}

void ce_bwd(Tensor dlogits, Tensor logits, Tensor row_max, Tensor sumexp, Tensor targets, Tensor grad_scale,
            int64_t vocab_start, int64_t vocab_valid) {
  const char* op = "ce_bwd";
  const Layout l = ce_layout(op, logits, vocab_start, vocab_valid);
  check_f32(op, "dlogits", dlogits);
  check_numel(op, "dlogits", dlogits, logits.numel());
  check_per_token(op, "row_max", row_max, l.tokens);
  check_per_token(op, "sumexp", sumexp, l.tokens);
  check_per_token(op, "targets", targets, l.tokens, true);
  check_per_token(op, "grad_scale", grad_scale, l.tokens);
  const float *px = logits.f(), *pm = row_max.f(), *ps = sumexp.f(), *pgs = grad_scale.f();
  const int32_t* pt = targets.i();
  float* pd = dlogits.f();
#pragma omp parallel for schedule(static) if(l.tokens * l.cols >= kMinParallelWork)
  for (int64_t t = 0; t < l.tokens; ++t) {
    const float* row = px + t * l.cols;
    float* drow = pd + t * l.cols;  // may be row itself: each element is read before written
    const float mx = pm[t], scale = pgs[t], inv_sum = 1.0f / ps[t];
    const int64_t target = static_cast<int64_t>(pt[t]) - vocab_start;
    for (int64_t c = 0; c < l.valid; ++c)
      drow[c] = (std::exp(row[c] - mx) * inv_sum - (c == target ? 1.0f : 0.0f)) * scale;
    std::fill(drow + l.valid, drow + l.cols, 0.0f);
  }
}

void check_dlogits_apart(const Tensor& dlogits, const Tensor& logits) {
  if (dlogits.dtype == logits.dtype || dlogits.data == nullptr || logits.data == nullptr) return;
  const auto d = reinterpret_cast<uintptr_t>(dlogits.data), l = reinterpret_cast<uintptr_t>(logits.data);
  MPT_CPU_CHECK(d + dlogits.bytes() <= l || l + logits.bytes() <= d, "ce_bwd",
                "dlogits " + describe(dlogits) + " must not overlap logits " + describe(logits) +
                    " unless it has their dtype");
}

}  // namespace mpt::backend::cpu
