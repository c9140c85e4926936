// Mixture of experts: router top-k with its backward, the router z-loss pieces, the
// permutation of token rows into expert order and back, and the grouped GEMM that runs
// every local expert's linear layer over its block of rows. Semantics as in ops.h.
#pragma once

#include <cstdint>
#include <mutex>
#include <vector>

#include "backend/ops.h"

namespace mpt::backend::cpu {

// The row-to-choice map the permutations build while validating `rows`, kept by the ops
// object so that steady-state steps do not allocate. A call that finds it in use by another
// thread takes its own.
struct MoeScratch {
  std::mutex mu;
  std::vector<int64_t> slots;
};

// logits [T, E]; indices i32 [T, k], probs [T, k], scores [T, E] (scores may be empty).
// Selection compares the fp32 scores Megatron selects on (logits, softmax or sigmoid) with
// ties to the lower expert. Sigmoid sums get Megatron's epsilon: s / (sum + 1e-20).
// pre_softmax only matters for kSoftmax (Megatron's sigmoid always scores before top-k).
void router_topk(Tensor indices, Tensor probs, Tensor scores, Tensor logits, int64_t k, RouterScore fn,
                 bool pre_softmax);
// Overwrites dlogits [T, E]; dscores may be empty. indices must be k distinct experts per row.
void router_topk_bwd(Tensor dlogits, Tensor dprobs, Tensor dscores, Tensor logits, Tensor indices, int64_t k,
                     RouterScore fn, bool pre_softmax);
// lse [T] = logsumexp over each row of logits [T, E].
void router_lse(Tensor lse, Tensor logits);
// dlogits [T, E] += scale * 2 * lse[t] * exp(logits[t, e] - lse[t]).
void router_z_loss_bwd(Tensor dlogits, Tensor logits, Tensor lse, float scale);

// rows i32 [T, k]: entries in [0, R) or -1 (dropped), no row of [0, R) named twice.
void moe_permute(Tensor x_perm, Tensor x, Tensor rows, MoeScratch& scratch);
void moe_permute_bwd(Tensor dx, Tensor dx_perm, Tensor rows, MoeScratch& scratch);
void moe_unpermute(Tensor out, Tensor y, Tensor rows, Tensor probs, MoeScratch& scratch);
// y is read only for dprobs and may be empty when dprobs is.
void moe_unpermute_bwd(Tensor dy, Tensor dprobs, Tensor dout, Tensor y, Tensor rows, Tensor probs,
                       MoeScratch& scratch);

// counts: `groups` (> 0) non-negative row counts summing to the rows of a (and of b for
// kWeightGrad). b is [groups, out, in] for kForward/kInputGrad; c is [groups, out, in] for
// kWeightGrad, where an empty group leaves beta * c[g] (zeros when beta == 0).
void grouped_matmul(Tensor c, Tensor a, Tensor b, const int64_t* counts, int64_t groups, GroupedForm form,
                    float beta);

}  // namespace mpt::backend::cpu
