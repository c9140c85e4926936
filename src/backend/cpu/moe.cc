#include "backend/cpu/moe.h"

#include <algorithm>
#include <cmath>
#include <string>

#include "backend/cpu/blas.h"
#include "backend/cpu/check.h"
#include "backend/cpu/threading.h"

namespace mpt::backend::cpu {

namespace {

// Megatron normalises sigmoid scores as s / (sum + 1e-20) (topk_routing_with_score_function
// and compute_routing_scores_for_aux_loss): the guard only matters when every score underflows.
constexpr double kSigmoidSumEps = 1e-20;

std::string extent(int64_t n) { return n < 0 ? "*" : std::to_string(n); }

// Throws unless t is a 2-D F32 (or I32) [rows, cols]; -1 accepts any extent.
void check_matrix(const char* op, const char* arg, const Tensor& t, int64_t rows, int64_t cols, bool i32 = false) {
  if (i32)
    check_i32(op, arg, t);
  else
    check_f32(op, arg, t);
  MPT_CPU_CHECK(t.ndim == 2 && (rows < 0 || t.shape[0] == rows) && (cols < 0 || t.shape[1] == cols), op,
                str(arg, " ", describe(t), " must be [", extent(rows), ", ", extent(cols), "]"));
}

// ---- router -----------------------------------------------------------------------------

struct RouterDims {
  int64_t tokens, experts;
};

RouterDims check_router(const char* op, const Tensor& logits, int64_t k, RouterScore fn) {
  MPT_CPU_CHECK(fn == RouterScore::kSoftmax || fn == RouterScore::kSigmoid, op,
                str("unknown score function ", static_cast<int>(fn)));
  check_f32(op, "logits", logits);
  MPT_CPU_CHECK(logits.ndim == 2 && logits.shape[1] > 0, op,
                "logits " + describe(logits) + " must be [tokens, experts] with experts > 0");
  const RouterDims d{logits.shape[0], logits.shape[1]};
  MPT_CPU_CHECK(k >= 1 && k <= d.experts, op, str("k ", k, " must be in [1, experts = ", d.experts, "]"));
  return d;
}

inline double sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }

// One token's logits and the sums over all experts its scores need.
struct RouterRow {
  const float* logits;
  int64_t experts;
  double max = 0, inv_sum = 0;  // softmax: max logit and 1 / sum exp(l - max)
  double sigmoid_den = 0;       // sigmoid: sum of sigmoid(l) + eps

  RouterRow(const float* l, int64_t e, RouterScore fn) : logits(l), experts(e) {
    if (fn == RouterScore::kSoftmax) {
      max = l[0];
      for (int64_t i = 1; i < e; ++i) max = std::max<double>(max, l[i]);
      double sum = 0;
      for (int64_t i = 0; i < e; ++i) sum += std::exp(l[i] - max);
      inv_sum = 1.0 / sum;
    } else {
      double sum = 0;
      for (int64_t i = 0; i < e; ++i) sum += sigmoid(l[i]);
      sigmoid_den = sum + kSigmoidSumEps;
    }
  }
  double softmax(int64_t i) const { return std::exp(logits[i] - max) * inv_sum; }
};

// True when (va, a) ranks before (vb, b): larger first, NaN above everything (as torch.topk
// ranks it), ties to the lower index. A strict total order, so k distinct experts always come out.
inline bool ranks_before(float va, int64_t a, float vb, int64_t b) {
  const bool na = std::isnan(va), nb = std::isnan(vb);
  if (na != nb) return na;
  if (!na && va != vb) return va > vb;
  return a < b;
}

// The fp32 value Megatron's top-k compares for expert i.
inline float selection_value(const RouterRow& row, int64_t i, RouterScore fn, bool pre_softmax) {
  if (fn == RouterScore::kSigmoid) return static_cast<float>(sigmoid(row.logits[i]));
  return pre_softmax ? static_cast<float>(row.softmax(i)) : row.logits[i];
}

// Writes the k best experts of the row in rank order (each pass takes the best expert ranking
// after the previous pick, so no buffer is needed).
void select_top_k(const RouterRow& row, int64_t k, RouterScore fn, bool pre_softmax, int32_t* out) {
  float prev_v = 0;
  int64_t prev = -1;
  for (int64_t j = 0; j < k; ++j) {
    float best_v = 0;
    int64_t best = -1;
    for (int64_t i = 0; i < row.experts; ++i) {
      const float v = selection_value(row, i, fn, pre_softmax);
      if (prev >= 0 && !ranks_before(prev_v, prev, v, i)) continue;
      if (best < 0 || ranks_before(v, i, best_v, best)) {
        best = i;
        best_v = v;
      }
    }
    out[j] = static_cast<int32_t>(best);
    prev = best;
    prev_v = best_v;
  }
}

// Throws unless every row of indices [T, k] holds k distinct experts in [0, E).
void check_indices(const char* op, const Tensor& indices, int64_t tokens, int64_t k, int64_t experts) {
  check_matrix(op, "indices", indices, tokens, k, true);
  const int32_t* pi = indices.i();
  for (int64_t t = 0; t < tokens; ++t) {
    const int32_t* row = pi + t * k;
    for (int64_t j = 0; j < k; ++j) {
      MPT_CPU_CHECK(row[j] >= 0 && row[j] < experts, op,
                    str("indices[", t, ", ", j, "] = ", row[j], " is not an expert in [0, ", experts, ")"));
      for (int64_t i = 0; i < j; ++i)
        MPT_CPU_CHECK(row[i] != row[j], op,
                      str("indices[", t, ", ", j, "] = ", row[j], " repeats indices[", t, ", ", i, "]"));
    }
  }
}

// ---- permutation ------------------------------------------------------------------------

// The slot buffer: the ops object's when free, else one for this call only.
class SlotLease {
 public:
  SlotLease(MoeScratch& s, size_t n) : lock_(s.mu, std::try_to_lock) {
    slots_ = lock_.owns_lock() ? &s.slots : &own_;
    if (slots_->size() < n) slots_->resize(n);
  }
  int64_t* data() { return slots_->data(); }

 private:
  std::unique_lock<std::mutex> lock_;
  std::vector<int64_t> own_;
  std::vector<int64_t>* slots_;
};

struct PermuteDims {
  int64_t tokens, choices, rows, hidden;
};

// Checks rows i32 [T, k], the token side tok [T, H] and the permuted side perm [R, H].
PermuteDims check_permute(const char* op, const Tensor& rows, const char* tok_name, const Tensor& tok,
                          const char* perm_name, const Tensor& perm) {
  check_matrix(op, "rows", rows, -1, -1, true);
  PermuteDims d{rows.shape[0], rows.shape[1], 0, 0};
  check_matrix(op, tok_name, tok, d.tokens, -1);
  d.hidden = tok.shape[1];
  check_matrix(op, perm_name, perm, -1, d.hidden);
  d.rows = perm.shape[0];
  return d;
}

// Validates rows against the R permuted rows and fills slot[r] = t * k + j for the choice
// that names row r, -1 for rows no choice names (padding).
void map_rows(const char* op, const Tensor& rows, const PermuteDims& d, int64_t* slot) {
  std::fill(slot, slot + d.rows, int64_t{-1});
  const int32_t* pr = rows.i();
  for (int64_t t = 0; t < d.tokens; ++t)
    for (int64_t j = 0; j < d.choices; ++j) {
      const int64_t r = pr[t * d.choices + j];
      MPT_CPU_CHECK(r >= -1 && r < d.rows, op,
                    str("rows[", t, ", ", j, "] = ", r, " must be a row in [0, ", d.rows, ") or -1 (dropped)"));
      if (r < 0) continue;
      const int64_t other = slot[r];
      MPT_CPU_CHECK(other < 0, op,
                    str("rows[", t, ", ", j, "] = ", r, " names the row rows[", other / d.choices, ", ",
                        other % d.choices, "] already names"));
      slot[r] = t * d.choices + j;
    }
}

void check_probs(const char* op, const char* arg, const Tensor& probs, const PermuteDims& d) {
  if (!is_empty(probs)) check_matrix(op, arg, probs, d.tokens, d.choices);
}

}  // namespace

void router_topk(Tensor indices, Tensor probs, Tensor scores, Tensor logits, int64_t k, RouterScore fn,
                 bool pre_softmax) {
  const char* op = "router_topk";
  const RouterDims d = check_router(op, logits, k, fn);
  check_matrix(op, "indices", indices, d.tokens, k, true);
  check_matrix(op, "probs", probs, d.tokens, k);
  const bool with_scores = !is_empty(scores);
  if (with_scores) check_matrix(op, "scores", scores, d.tokens, d.experts);

  const int64_t E = d.experts;
  const float* pl = logits.f();
  int32_t* pi = indices.i();
  float *pp = probs.f(), *ps = with_scores ? scores.f() : nullptr;
#pragma omp parallel for schedule(static) if(d.tokens * E * k >= kMinParallelWork)
  for (int64_t t = 0; t < d.tokens; ++t) {
    const RouterRow row(pl + t * E, E, fn);
    int32_t* idx = pi + t * k;
    float* p = pp + t * k;
    select_top_k(row, k, fn, pre_softmax, idx);
    if (fn == RouterScore::kSoftmax && !pre_softmax) {
      // Softmax over the selected logits; the first is the largest.
      const double mx = row.logits[idx[0]];
      double sum = 0;
      for (int64_t j = 0; j < k; ++j) sum += std::exp(row.logits[idx[j]] - mx);
      for (int64_t j = 0; j < k; ++j) p[j] = static_cast<float>(std::exp(row.logits[idx[j]] - mx) / sum);
    } else if (fn == RouterScore::kSoftmax) {
      for (int64_t j = 0; j < k; ++j) p[j] = static_cast<float>(row.softmax(idx[j]));
    } else {
      double sum = 0;
      for (int64_t j = 0; j < k; ++j) sum += sigmoid(row.logits[idx[j]]);
      const double den = k > 1 ? sum + kSigmoidSumEps : 1.0;
      for (int64_t j = 0; j < k; ++j) p[j] = static_cast<float>(sigmoid(row.logits[idx[j]]) / den);
    }
    if (!with_scores) continue;
    float* s = ps + t * E;
    for (int64_t e = 0; e < E; ++e)
      s[e] = static_cast<float>(fn == RouterScore::kSoftmax ? row.softmax(e)
                                                            : sigmoid(row.logits[e]) / row.sigmoid_den);
  }
}

void router_topk_bwd(Tensor dlogits, Tensor dprobs, Tensor dscores, Tensor logits, Tensor indices, int64_t k,
                     RouterScore fn, bool pre_softmax) {
  const char* op = "router_topk_bwd";
  const RouterDims d = check_router(op, logits, k, fn);
  check_matrix(op, "dlogits", dlogits, d.tokens, d.experts);
  check_matrix(op, "dprobs", dprobs, d.tokens, k);
  const bool with_scores = !is_empty(dscores);
  if (with_scores) check_matrix(op, "dscores", dscores, d.tokens, d.experts);
  check_indices(op, indices, d.tokens, k, d.experts);

  const int64_t E = d.experts;
  const float *pl = logits.f(), *pdp = dprobs.f(), *pds = with_scores ? dscores.f() : nullptr;
  const int32_t* pi = indices.i();
  float* pdl = dlogits.f();
#pragma omp parallel for schedule(static) if(d.tokens * E >= kMinParallelWork)
  for (int64_t t = 0; t < d.tokens; ++t) {
    const RouterRow row(pl + t * E, E, fn);
    const int32_t* idx = pi + t * k;
    const float* dp = pdp + t * k;
    const float* ds = with_scores ? pds + t * E : nullptr;
    float* dl = pdl + t * E;  // first the gradient on the scores, then on the logits
    if (fn == RouterScore::kSoftmax && pre_softmax) {
      // probs are entries of the all-E softmax: one softmax backward with both upstreams.
      for (int64_t e = 0; e < E; ++e) dl[e] = ds ? ds[e] : 0.0f;
      for (int64_t j = 0; j < k; ++j) dl[idx[j]] += dp[j];
      double dot = 0;
      for (int64_t e = 0; e < E; ++e) dot += row.softmax(e) * dl[e];
      for (int64_t e = 0; e < E; ++e) dl[e] = static_cast<float>(row.softmax(e) * (dl[e] - dot));
    } else if (fn == RouterScore::kSoftmax) {
      // scores: softmax over all E; probs: softmax over the k selected logits.
      double dot = 0;
      if (ds)
        for (int64_t e = 0; e < E; ++e) dot += row.softmax(e) * ds[e];
      for (int64_t e = 0; e < E; ++e) dl[e] = ds ? static_cast<float>(row.softmax(e) * (ds[e] - dot)) : 0.0f;
      double mx = row.logits[idx[0]];
      for (int64_t j = 1; j < k; ++j) mx = std::max<double>(mx, row.logits[idx[j]]);
      double sum = 0, dot_p = 0;
      for (int64_t j = 0; j < k; ++j) sum += std::exp(row.logits[idx[j]] - mx);
      for (int64_t j = 0; j < k; ++j) dot_p += std::exp(row.logits[idx[j]] - mx) / sum * dp[j];
      for (int64_t j = 0; j < k; ++j)
        dl[idx[j]] += static_cast<float>(std::exp(row.logits[idx[j]] - mx) / sum * (dp[j] - dot_p));
    } else {
      // Gradient on sigmoid(l) from both normalisations, then through the sigmoid.
      double dot = 0;
      if (ds)
        for (int64_t e = 0; e < E; ++e) dot += sigmoid(row.logits[e]) / row.sigmoid_den * ds[e];
      for (int64_t e = 0; e < E; ++e) dl[e] = ds ? static_cast<float>((ds[e] - dot) / row.sigmoid_den) : 0.0f;
      if (k == 1) {
        dl[idx[0]] += dp[0];
      } else {
        double sum = 0, dot_p = 0;
        for (int64_t j = 0; j < k; ++j) sum += sigmoid(row.logits[idx[j]]);
        const double den = sum + kSigmoidSumEps;
        for (int64_t j = 0; j < k; ++j) dot_p += sigmoid(row.logits[idx[j]]) / den * dp[j];
        for (int64_t j = 0; j < k; ++j) dl[idx[j]] += static_cast<float>((dp[j] - dot_p) / den);
      }
      for (int64_t e = 0; e < E; ++e) {
        const double s = sigmoid(row.logits[e]);
        dl[e] = static_cast<float>(dl[e] * s * (1.0 - s));
      }
    }
  }
}

void router_lse(Tensor lse, Tensor logits) {
  const char* op = "router_lse";
  const RouterDims d = check_router(op, logits, 1, RouterScore::kSoftmax);
  check_f32(op, "lse", lse);
  check_numel(op, "lse", lse, d.tokens);
  const int64_t E = d.experts;
  const float* pl = logits.f();
  float* po = lse.f();
#pragma omp parallel for schedule(static) if(d.tokens * E >= kMinParallelWork)
  for (int64_t t = 0; t < d.tokens; ++t) {
    const RouterRow row(pl + t * E, E, RouterScore::kSoftmax);
    po[t] = static_cast<float>(row.max - std::log(row.inv_sum));
  }
}

void router_z_loss_bwd(Tensor dlogits, Tensor logits, Tensor lse, float scale) {
  const char* op = "router_z_loss_bwd";
  const RouterDims d = check_router(op, logits, 1, RouterScore::kSoftmax);
  check_matrix(op, "dlogits", dlogits, d.tokens, d.experts);
  check_f32(op, "lse", lse);
  check_numel(op, "lse", lse, d.tokens);
  MPT_CPU_CHECK(std::isfinite(scale), op, str("scale ", scale, " must be finite"));
  const int64_t E = d.experts;
  const float *pl = logits.f(), *plse = lse.f();
  float* pdl = dlogits.f();
#pragma omp parallel for schedule(static) if(d.tokens * E >= kMinParallelWork)
  for (int64_t t = 0; t < d.tokens; ++t) {
    const double l = plse[t], g = 2.0 * scale * l;
    for (int64_t e = 0; e < E; ++e) pdl[t * E + e] += static_cast<float>(g * std::exp(pl[t * E + e] - l));
  }
}

void moe_permute(Tensor x_perm, Tensor x, Tensor rows, MoeScratch& scratch) {
  const char* op = "moe_permute";
  const PermuteDims d = check_permute(op, rows, "x", x, "x_perm", x_perm);
  SlotLease lease(scratch, static_cast<size_t>(d.rows));
  const int64_t* slot = lease.data();
  map_rows(op, rows, d, lease.data());
  const int64_t H = d.hidden, k = d.choices;
  const float* px = x.f();
  float* pp = x_perm.f();
#pragma omp parallel for schedule(static) if(d.rows * H >= kMinParallelWork)
  for (int64_t r = 0; r < d.rows; ++r) {
    float* dst = pp + r * H;
    if (slot[r] < 0)
      std::fill(dst, dst + H, 0.0f);
    else
      std::copy(px + slot[r] / k * H, px + (slot[r] / k + 1) * H, dst);
  }
}

void moe_permute_bwd(Tensor dx, Tensor dx_perm, Tensor rows, MoeScratch& scratch) {
  const char* op = "moe_permute_bwd";
  const PermuteDims d = check_permute(op, rows, "dx", dx, "dx_perm", dx_perm);
  SlotLease lease(scratch, static_cast<size_t>(d.rows));
  map_rows(op, rows, d, lease.data());
  const int64_t H = d.hidden, k = d.choices;
  const int32_t* pr = rows.i();
  const float* pg = dx_perm.f();
  float* pd = dx.f();
#pragma omp parallel for schedule(static) if(d.tokens * k * H >= kMinParallelWork)
  for (int64_t t = 0; t < d.tokens; ++t) {
    float* dst = pd + t * H;
    std::fill(dst, dst + H, 0.0f);
    for (int64_t j = 0; j < k; ++j) {
      const int64_t r = pr[t * k + j];
      if (r < 0) continue;
      const float* src = pg + r * H;
      for (int64_t c = 0; c < H; ++c) dst[c] += src[c];
    }
  }
}

void moe_unpermute(Tensor out, Tensor y, Tensor rows, Tensor probs, MoeScratch& scratch) {
  const char* op = "moe_unpermute";
  const PermuteDims d = check_permute(op, rows, "out", out, "y", y);
  check_probs(op, "probs", probs, d);
  SlotLease lease(scratch, static_cast<size_t>(d.rows));
  map_rows(op, rows, d, lease.data());
  const int64_t H = d.hidden, k = d.choices;
  const int32_t* pr = rows.i();
  const float *py = y.f(), *pw = is_empty(probs) ? nullptr : probs.f();
  float* po = out.f();
#pragma omp parallel for schedule(static) if(d.tokens * k * H >= kMinParallelWork)
  for (int64_t t = 0; t < d.tokens; ++t) {
    float* dst = po + t * H;
    std::fill(dst, dst + H, 0.0f);
    for (int64_t j = 0; j < k; ++j) {
      const int64_t r = pr[t * k + j];
      if (r < 0) continue;
      const float w = pw ? pw[t * k + j] : 1.0f;
      const float* src = py + r * H;
      for (int64_t c = 0; c < H; ++c) dst[c] += w * src[c];
    }
  }
}

void moe_unpermute_bwd(Tensor dy, Tensor dprobs, Tensor dout, Tensor y, Tensor rows, Tensor probs,
                       MoeScratch& scratch) {
  const char* op = "moe_unpermute_bwd";
  const PermuteDims d = check_permute(op, rows, "dout", dout, "dy", dy);
  check_probs(op, "probs", probs, d);
  const bool with_dprobs = !is_empty(dprobs);
  if (with_dprobs) check_matrix(op, "dprobs", dprobs, d.tokens, d.choices);
  if (with_dprobs || !is_empty(y)) check_matrix(op, "y", y, d.rows, d.hidden);
  SlotLease lease(scratch, static_cast<size_t>(d.rows));
  const int64_t* slot = lease.data();
  map_rows(op, rows, d, lease.data());
  const int64_t H = d.hidden, k = d.choices;
  const float *pg = dout.f(), *pw = is_empty(probs) ? nullptr : probs.f();
  float* pdy = dy.f();
#pragma omp parallel for schedule(static) if(d.rows * H >= kMinParallelWork)
  for (int64_t r = 0; r < d.rows; ++r) {
    float* dst = pdy + r * H;
    if (slot[r] < 0) {
      std::fill(dst, dst + H, 0.0f);
      continue;
    }
    const float w = pw ? pw[slot[r]] : 1.0f;
    const float* src = pg + slot[r] / k * H;
    for (int64_t c = 0; c < H; ++c) dst[c] = w * src[c];
  }
  if (!with_dprobs) return;
  const int32_t* pr = rows.i();
  const float* py = y.f();
  float* pdp = dprobs.f();
#pragma omp parallel for schedule(static) if(d.tokens * k * H >= kMinParallelWork)
  for (int64_t t = 0; t < d.tokens; ++t)
    for (int64_t j = 0; j < k; ++j) {
      const int64_t r = pr[t * k + j];
      double dot = 0;
      if (r >= 0)
        for (int64_t c = 0; c < H; ++c) dot += static_cast<double>(pg[t * H + c]) * py[r * H + c];
      pdp[t * k + j] = static_cast<float>(dot);
    }
}

void grouped_matmul(Tensor c, Tensor a, Tensor b, const int64_t* counts, int64_t groups, GroupedForm form,
                    float beta) {
  const char* op = "grouped_matmul";
  MPT_CPU_CHECK(form == GroupedForm::kForward || form == GroupedForm::kInputGrad || form == GroupedForm::kWeightGrad,
                op, str("unknown form ", static_cast<int>(form)));
  MPT_CPU_CHECK(groups > 0 && counts != nullptr, op,
                str("needs groups > 0 and their counts, got groups ", groups,
                    counts ? "" : " and no counts"));
  MPT_CPU_CHECK(std::isfinite(beta), op, str("beta ", beta, " must be finite"));
  check_matrix(op, "a", a, -1, -1);
  const int64_t R = a.shape[0];
  int64_t total = 0;
  for (int64_t g = 0; g < groups; ++g) {
    MPT_CPU_CHECK(counts[g] >= 0 && counts[g] <= R - total, op,
                  str("counts[", g, "] = ", counts[g], (counts[g] < 0 ? " is negative" : " runs past the rows of a"),
                      " (a ", describe(a), ", ", total, " rows in groups before it)"));
    total += counts[g];
  }
  MPT_CPU_CHECK(total == R, op, str("counts sum to ", total, ", not to the ", R, " rows of a ", describe(a)));

  if (form == GroupedForm::kWeightGrad) {
    // c[g] [out, in] = dy_g^T @ x_g + beta * c[g]
    const int64_t out = a.shape[1];
    check_matrix(op, "b", b, R, -1);
    const int64_t in = b.shape[1];
    check_f32(op, "c", c);
    MPT_CPU_CHECK(c.ndim == 3 && c.shape[0] == groups && c.shape[1] == out && c.shape[2] == in, op,
                  str("c ", describe(c), " must be [groups, out, in] = [", groups, ", ", out, ", ", in, "]"));
    const float *pa = a.f(), *pb = b.f();
    float* pc = c.f();
    int64_t first = 0;
    for (int64_t g = 0; g < groups; ++g) {
      float* cg = pc + g * out * in;
      if (counts[g] > 0)
        sgemm(true, false, out, in, counts[g], 1.0f, pa + first * out, out, pb + first * in, in, beta, cg, in);
      else if (beta != 1.0f)  // no rows: the product is zero
        for (int64_t i = 0; i < out * in; ++i) cg[i] = beta == 0.0f ? 0.0f : beta * cg[i];
      first += counts[g];
    }
    return;
  }

  // Weights b [groups, out, in]; kForward: c [R, out] = a [R, in] @ b[g]^T,
  // kInputGrad: c [R, in] = a [R, out] @ b[g].
  check_f32(op, "b", b);
  MPT_CPU_CHECK(b.ndim == 3 && b.shape[0] == groups, op,
                str("b ", describe(b), " must be [groups = ", groups, ", out, in]"));
  const int64_t out = b.shape[1], in = b.shape[2];
  const bool fwd = form == GroupedForm::kForward;
  const int64_t a_cols = fwd ? in : out, c_cols = fwd ? out : in;
  check_matrix(op, "a", a, R, a_cols);
  check_matrix(op, "c", c, R, c_cols);
  const float *pa = a.f(), *pb = b.f();
  float* pc = c.f();
  int64_t first = 0;
  for (int64_t g = 0; g < groups; ++g) {
    if (counts[g] > 0)
      sgemm(false, fwd, counts[g], c_cols, a_cols, 1.0f, pa + first * a_cols, a_cols, pb + g * out * in, in, beta,
            pc + first * c_cols, c_cols);
    first += counts[g];
  }
}

}  // namespace mpt::backend::cpu
