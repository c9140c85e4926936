#include "backend/cpu/attention.h"

#include <omp.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <limits>

#include "backend/cpu/blas.h"
#include "backend/cpu/check.h"
#include "backend/cpu/threading.h"
#include "core/rng.h"

namespace mpt::backend::cpu {

namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// Sequence length of the dropout mask rows: q_pos.at(i) * mask_seq + kv_pos.at(j).
inline int64_t mask_seq(const AttentionDims& d) { return d.mask_seq > 0 ? d.mask_seq : d.seq_kv; }

// a + b for non-negative a, b, saturating at INT64_MAX.
inline int64_t add_saturated(int64_t a, int64_t b) { return a > INT64_MAX - b ? INT64_MAX : a + b; }

// Largest of p.at(i) over i in [0, n), n > 0, saturating at INT64_MAX.
int64_t last_position(const SeqPositions& p, int64_t n) {
  if (p.split >= n) return add_saturated(p.first, n - 1);
  const int64_t second_last = add_saturated(p.second, n - 1 - p.split);
  return p.split > 0 ? std::max(add_saturated(p.first, p.split - 1), second_last) : second_last;
}

void check_positions(const char* op, const char* name, const SeqPositions& p) {
  MPT_CPU_CHECK(p.first >= 0 && p.split >= 0 && p.second >= 0, op,
                str(name, " must be non-negative: first ", p.first, ", split ", p.split, ", second ", p.second));
}

void check_dims(const char* op, const AttentionDims& d) {
  MPT_CPU_CHECK(d.seq_q > 0 && d.seq_kv > 0 && d.batch > 0 && d.heads > 0 && d.groups > 0 && d.head_dim > 0, op,
            str("dims must be positive: seq_q ", d.seq_q, ", seq_kv ", d.seq_kv, ", batch ", d.batch, ", heads ",
                d.heads, ", groups ", d.groups, ", head_dim ", d.head_dim));
  MPT_CPU_CHECK(d.heads % d.groups == 0, op, str("heads ", d.heads, " must be a multiple of groups ", d.groups));
  MPT_CPU_CHECK(!d.causal || d.seq_q <= d.seq_kv, op,
            str("causal attention needs seq_q <= seq_kv (queries are the last keys' positions), got seq_q ",
                d.seq_q, " and seq_kv ", d.seq_kv));
  MPT_CPU_CHECK(d.dropout_p >= 0 && d.dropout_p < 1, op, str("dropout_p ", d.dropout_p, " must be in [0, 1)"));
  check_positions(op, "q_pos", d.q_pos);
  check_positions(op, "kv_pos", d.kv_pos);
  MPT_CPU_CHECK(d.mask_seq >= 0, op, str("mask_seq ", d.mask_seq, " must be non-negative (0: seq_kv)"));
  if (d.dropout_p > 0) {
    // Distinct (i, j) must key distinct mask elements, and the index must not overflow.
    const int64_t ms = mask_seq(d), kv_last = last_position(d.kv_pos, d.seq_kv),
                  q_last = last_position(d.q_pos, d.seq_q);
    MPT_CPU_CHECK(kv_last < ms, op,
                  str("kv_pos reaches position ", kv_last, ", which must be below mask_seq ", ms));
    MPT_CPU_CHECK(q_last < INT64_MAX / ms, op,
                  str("q_pos reaches position ", q_last, ": q_pos * mask_seq (", ms, ") overflows"));
  }
  MPT_CPU_CHECK(std::isfinite(d.softmax_scale) && d.softmax_scale > 0, op,
            str("softmax_scale ", d.softmax_scale, " must be positive (usually 1/sqrt(head_dim))"));
  // Checked here because the GEMMs run inside a parallel region, where nothing may throw.
  MPT_CPU_CHECK(d.batch * d.heads * d.head_dim <= INT_MAX && d.seq_q <= INT_MAX && d.seq_kv <= INT_MAX, op,
            "dimensions exceed the 32-bit BLAS interface");
  blas_load();
}

// names: the three argument names, e.g. {"q", "k", "v"} or {"dq", "dk", "dv"}.
void check_qkv(const char* op, const AttentionDims& d, const Tensor& q, const Tensor& k, const Tensor& v,
               const char* const (&names)[3]) {
  check_f32(op, names[0], q);
  check_f32(op, names[1], k);
  check_f32(op, names[2], v);
  check_numel(op, names[0], q, d.seq_q * d.batch * d.heads * d.head_dim);
  check_numel(op, names[1], k, d.seq_kv * d.batch * d.groups * d.head_dim);
  check_numel(op, names[2], v, d.seq_kv * d.batch * d.groups * d.head_dim);
}

// Strides and base offsets of one (batch, head) slice in the token-major layouts.
struct Slice {
  int64_t ldq, ldk;         // row strides of q-like and k-like tensors
  int64_t q_off, kv_off;    // offset of row 0 of this (b, h) / (b, group)
  uint64_t dropout_key;     // mask stream of this (global head, b)
  Slice(const AttentionDims& d, int64_t b, int64_t h) {
    const int64_t g = h / (d.heads / d.groups);
    ldq = d.batch * d.heads * d.head_dim;
    ldk = d.batch * d.groups * d.head_dim;
    q_off = (b * d.heads + h) * d.head_dim;
    kv_off = (b * d.groups + g) * d.head_dim;
    dropout_key = mix_key(mix_key(d.dropout_key, static_cast<uint64_t>(d.head_offset + h)), static_cast<uint64_t>(b));
  }
};

// Keys visible to query i: causal masks are aligned to the bottom right.
inline int64_t visible(const AttentionDims& d, int64_t i) { return d.causal ? i + 1 + (d.seq_kv - d.seq_q) : d.seq_kv; }

// Dropout mask index of element (i, j) is row_base(i) + kv_pos.at(j).
inline uint64_t mask_row_base(const AttentionDims& d, int64_t i) {
  return static_cast<uint64_t>(d.q_pos.at(i) * mask_seq(d));
}
inline uint64_t mask_index(const AttentionDims& d, uint64_t row_base, int64_t j) {
  return row_base + static_cast<uint64_t>(d.kv_pos.at(j));
}

// A buffer of n floats: the ops object's when free, else one for this call only.
class ScratchLease {
 public:
  ScratchLease(AttentionScratch& s, size_t n) : lock_(s.mu, std::try_to_lock) {
    buf_ = lock_.owns_lock() ? &s.buf : &own_;
    if (buf_->size() < n) buf_->resize(n);
  }
  float* data() { return buf_->data(); }

 private:
  std::unique_lock<std::mutex> lock_;
  std::vector<float> own_;
  std::vector<float>* buf_;
};

}  // namespace

void attention_fwd(Tensor out, Tensor lse, Tensor q, Tensor k, Tensor v, const AttentionDims& d,
                   AttentionScratch& scratch) {
  const char* op = "attention_fwd";
  check_dims(op, d);
  check_qkv(op, d, q, k, v, {"q", "k", "v"});
  check_f32(op, "out", out);
  check_numel(op, "out", out, q.numel());
  check_f32(op, "lse", lse);
  check_numel(op, "lse", lse, d.seq_q * d.batch * d.heads);

  const int64_t sq = d.seq_q, skv = d.seq_kv, dim = d.head_dim, pairs = d.batch * d.heads;
  const int64_t block = sq * skv;
  const int threads = omp_get_max_threads();
  ScratchLease lease(scratch, static_cast<size_t>(threads) * block);
  const float *pq = q.f(), *pk = k.f(), *pv = v.f();
  float *po = out.f(), *pl = lse.f();
  const float p = d.dropout_p, keep_scale = 1.0f / (1.0f - p);
#pragma omp parallel num_threads(threads) if(pairs > 1 && pairs * block * dim >= kMinParallelWork)
  {
    float* s = lease.data() + omp_get_thread_num() * block;
#pragma omp for schedule(static)
    for (int64_t bh = 0; bh < pairs; ++bh) {
      const int64_t b = bh / d.heads, h = bh % d.heads;
      const Slice sl(d, b, h);
      sgemm(false, true, sq, skv, dim, d.softmax_scale, pq + sl.q_off, sl.ldq, pk + sl.kv_off, sl.ldk, 0.0f, s, skv);
      for (int64_t i = 0; i < sq; ++i) {
        float* row = s + i * skv;
        const int64_t n = visible(d, i);
        float mx = row[0];
        for (int64_t j = 1; j < n; ++j) mx = std::max(mx, row[j]);
        double sum = 0;
        for (int64_t j = 0; j < n; ++j) {
          row[j] = std::exp(row[j] - mx);
          sum += row[j];
        }
        pl[(i * d.batch + b) * d.heads + h] = mx + static_cast<float>(std::log(sum));
        const double inv = 1.0 / sum;
        for (int64_t j = 0; j < n; ++j) row[j] = static_cast<float>(row[j] * inv);
        if (p > 0) {
          const uint64_t base = mask_row_base(d, i);
          for (int64_t j = 0; j < n; ++j)
            row[j] = dropout_keep(sl.dropout_key, mask_index(d, base, j), p) ? row[j] * keep_scale : 0.0f;
        }
        std::fill(row + n, row + skv, 0.0f);
      }
      sgemm(false, false, sq, dim, skv, 1.0f, s, skv, pv + sl.kv_off, sl.ldk, 0.0f, po + sl.q_off, sl.ldq);
    }
  }
}

void attention_bwd(Tensor dq, Tensor dk, Tensor dv, Tensor dout, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse,
                   const AttentionDims& d, AttentionScratch& scratch) {
  const char* op = "attention_bwd";
  check_dims(op, d);
  check_qkv(op, d, q, k, v, {"q", "k", "v"});
  check_f32(op, "out", out);
  check_numel(op, "out", out, q.numel());
  check_f32(op, "dout", dout);
  check_numel(op, "dout", dout, q.numel());
  check_f32(op, "lse", lse);
  check_numel(op, "lse", lse, d.seq_q * d.batch * d.heads);
  check_qkv(op, d, dq, dk, dv, {"dq", "dk", "dv"});

  const int64_t sq = d.seq_q, skv = d.seq_kv, dim = d.head_dim, pairs = d.batch * d.heads;
  const int64_t hpg = d.heads / d.groups, block = sq * skv;
  const int threads = omp_get_max_threads();
  // With several query heads per group, each head writes its own dk/dv partial; the
  // partials are then summed in head order, so results never depend on thread timing.
  const bool partials = hpg > 1;
  const int64_t partial_size = partials ? pairs * skv * dim : 0;
  ScratchLease lease(scratch, static_cast<size_t>(threads) * 2 * block + 2 * partial_size);
  float* dk_part = lease.data() + static_cast<int64_t>(threads) * 2 * block;
  float* dv_part = dk_part + partial_size;
  const float *pq = q.f(), *pk = k.f(), *pv = v.f(), *po = out.f(), *pg = dout.f(), *pl = lse.f();
  float *pdq = dq.f(), *pdk = dk.f(), *pdv = dv.f();
  const float p = d.dropout_p, keep_scale = 1.0f / (1.0f - p);
#pragma omp parallel num_threads(threads) if(pairs > 1 && pairs * block * dim >= kMinParallelWork)
  {
    float* prob = lease.data() + omp_get_thread_num() * 2 * block;  // P, then dropped P
    float* dprob = prob + block;                                     // dP, then dS
#pragma omp for schedule(static)
    for (int64_t bh = 0; bh < pairs; ++bh) {
      const int64_t b = bh / d.heads, h = bh % d.heads;
      const Slice sl(d, b, h);
      sgemm(false, true, sq, skv, dim, d.softmax_scale, pq + sl.q_off, sl.ldq, pk + sl.kv_off, sl.ldk, 0.0f, prob,
            skv);
      sgemm(false, true, sq, skv, dim, 1.0f, pg + sl.q_off, sl.ldq, pv + sl.kv_off, sl.ldk, 0.0f, dprob, skv);
      for (int64_t i = 0; i < sq; ++i) {
        const float* o_row = po + sl.q_off + i * sl.ldq;
        const float* g_row = pg + sl.q_off + i * sl.ldq;
        double di = 0;  // D_i = dout_i . out_i = sum_j P_ij dP_ij
        for (int64_t c = 0; c < dim; ++c) di += static_cast<double>(g_row[c]) * o_row[c];
        const float dif = static_cast<float>(di), l = pl[(i * d.batch + b) * d.heads + h];
        float *pr = prob + i * skv, *dr = dprob + i * skv;
        const int64_t n = visible(d, i);
        const uint64_t base = p > 0 ? mask_row_base(d, i) : 0;
        // P_ij = exp(s_ij - lse_i) without renormalising: with the lse of a larger attention
        // these rows sum to this key block's share, which is what its gradients need.
        for (int64_t j = 0; j < n; ++j) {
          const float pij = std::exp(pr[j] - l);
          const bool keep = p == 0 || dropout_keep(sl.dropout_key, mask_index(d, base, j), p);
          const float dpij = p == 0 ? dr[j] : (keep ? dr[j] * keep_scale : 0.0f);
          dr[j] = pij * (dpij - dif);
          pr[j] = p == 0 ? pij : (keep ? pij * keep_scale : 0.0f);
        }
        std::fill(pr + n, pr + skv, 0.0f);
        std::fill(dr + n, dr + skv, 0.0f);
      }
      // dQ = scale * dS K, dK = scale * dS^T Q, dV = P_dropped^T dout.
      sgemm(false, false, sq, dim, skv, d.softmax_scale, dprob, skv, pk + sl.kv_off, sl.ldk, 0.0f, pdq + sl.q_off,
            sl.ldq);
      float* dkt = partials ? dk_part + bh * skv * dim : pdk + sl.kv_off;
      float* dvt = partials ? dv_part + bh * skv * dim : pdv + sl.kv_off;
      const int64_t ldt = partials ? dim : sl.ldk;
      sgemm(true, false, skv, dim, sq, d.softmax_scale, dprob, skv, pq + sl.q_off, sl.ldq, 0.0f, dkt, ldt);
      sgemm(true, false, skv, dim, sq, 1.0f, prob, skv, pg + sl.q_off, sl.ldq, 0.0f, dvt, ldt);
    }
    if (partials) {
      // dk[s, b, g, :] = sum over the group's heads in order.
#pragma omp for schedule(static)
      for (int64_t row = 0; row < skv * d.batch * d.groups; ++row) {
        const int64_t s = row / (d.batch * d.groups), b = (row / d.groups) % d.batch, g = row % d.groups;
        float* dk_row = pdk + row * dim;
        float* dv_row = pdv + row * dim;
        for (int64_t c = 0; c < dim; ++c) {
          dk_row[c] = 0.0f;
          dv_row[c] = 0.0f;
        }
        for (int64_t j = 0; j < hpg; ++j) {
          const int64_t part = ((b * d.heads + g * hpg + j) * skv + s) * dim;
          for (int64_t c = 0; c < dim; ++c) {
            dk_row[c] += dk_part[part + c];
            dv_row[c] += dv_part[part + c];
          }
        }
      }
    }
  }
}

void attention_merge(Tensor out, Tensor lse, Tensor part_out, Tensor part_lse, int64_t heads, int64_t head_dim) {
  const char* op = "attention_merge";
  MPT_CPU_CHECK(heads > 0 && head_dim > 0, op,
                str("heads ", heads, " and head_dim ", head_dim, " must be positive"));
  check_f32(op, "out", out);
  check_f32(op, "lse", lse);
  check_f32(op, "part_out", part_out);
  check_f32(op, "part_lse", part_lse);
  MPT_CPU_CHECK(lse.numel() % heads == 0, op,
                "lse " + describe(lse) + str(" must hold [tokens, heads ", heads, "] elements"));
  const int64_t rows = lse.numel();  // one per (token, head)
  check_numel(op, "out", out, rows * head_dim);
  check_numel(op, "part_lse", part_lse, rows);
  check_numel(op, "part_out", part_out, rows * head_dim);

  float *po = out.f(), *pl = lse.f();
  const float *px = part_out.f(), *pxl = part_lse.f();
#pragma omp parallel for schedule(static) if(rows * head_dim >= kMinParallelWork)
  for (int64_t r = 0; r < rows; ++r) {
    const float a = pl[r], b = pxl[r];
    if (b == kNegInf) continue;  // the part saw no keys
    float* o = po + r * head_dim;
    const float* x = px + r * head_dim;
    if (a == kNegInf) {  // no keys yet: out may hold anything
      std::copy(x, x + head_dim, o);
      pl[r] = b;
      continue;
    }
    // log(e^a + e^b) = max + log1p(e^-|a-b|): no overflow, and NaN in either propagates.
    const double merged = std::max<double>(a, b) + std::log1p(std::exp(-std::fabs(static_cast<double>(a) - b)));
    const double wa = std::exp(a - merged), wb = std::exp(b - merged);
    for (int64_t c = 0; c < head_dim; ++c) o[c] = static_cast<float>(wa * o[c] + wb * x[c]);
    pl[r] = static_cast<float>(merged);
  }
}

}  // namespace mpt::backend::cpu
