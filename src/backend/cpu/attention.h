// Causal / full softmax attention with grouped key-value heads (GQA, MQA), forward with
// log-sum-exp and a flash-style backward that recomputes probabilities from q, k and lse.
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
// lse [B, heads, seq_q].
void attention_fwd(Tensor out, Tensor lse, Tensor q, Tensor k, Tensor v, const AttentionDims& d,
                   AttentionScratch& scratch);
// Overwrites dq, dk, dv.
void attention_bwd(Tensor dq, Tensor dk, Tensor dv, Tensor dout, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse,
                   const AttentionDims& d, AttentionScratch& scratch);

}  // namespace mpt::backend::cpu
