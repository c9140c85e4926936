// Causal / full softmax attention with grouped key-value heads (GQA, MQA), forward with
// log-sum-exp and a flash-style backward that recomputes probabilities from q, k and lse,
// plus the log-sum-exp merge that combines attention over separate key blocks.
#pragma once

#include <mutex>
#include <vector>

#include "backend/ops.h"

namespace mpt::backend::cpu {

// Score and partial-gradient buffers kept by the ops object, so steady-state steps do
// not allocate. A call that finds them in use by another thread takes its own.
struct AttentionScratch {
  std::mutex mu;
  std::vector<float> buf;
};

// q [seq_q*B, heads*D], k/v [seq_kv*B, groups*D] (token t = s*B + b); out like q;
// lse [seq_q*B, heads]: element (i*B + b)*heads + h. Causal masks are bottom-right aligned
// (query i sees keys j <= i + seq_kv - seq_q) and need seq_q <= seq_kv. Dropout element
// (h, b, i, j) is q_pos.at(i) * mask_seq + kv_pos.at(j) of its (head, b) stream; positions
// must be non-negative and, with dropout on, every key position below mask_seq.
void attention_fwd(Tensor out, Tensor lse, Tensor q, Tensor k, Tensor v, const AttentionDims& d,
                   AttentionScratch& scratch);
// Overwrites dq, dk, dv. out and lse may come from a larger attention over more keys than
// k/v hold: the gradients are then this key block's share (dq summed over the blocks).
void attention_bwd(Tensor dq, Tensor dk, Tensor dv, Tensor dout, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse,
                   const AttentionDims& d, AttentionScratch& scratch);

// Folds part (part_out, part_lse) into the running (out, lse), in place: out [T, heads*D],
// lse [T, heads], part_out and part_lse alike (T from the numels). Per (token, head):
//   lse' = max + log1p(exp(min - max))   of lse and part_lse,
//   out' = out * exp(lse - lse') + part_out * exp(part_lse - lse').
// lse = -inf (no keys yet): out and lse become the part's, and out is not read (it may hold
// anything). part_lse = -inf (no keys in the part): out and lse are left as they are and
// part_out is not read. Both -inf: nothing changes. lse values are otherwise finite.
void attention_merge(Tensor out, Tensor lse, Tensor part_out, Tensor part_lse, int64_t heads, int64_t head_dim);

}  // namespace mpt::backend::cpu
