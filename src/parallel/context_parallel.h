// Context parallelism: every sequence is split over the CP ranks for all layers, so no rank
// holds or attends over the whole of it. Only attention mixes positions; every other layer
// works on this rank's tokens alone.
//
// Load-balanced split (Megatron's): the sequence is cut into 2*CP chunks of c = S / (2*CP)
// positions and rank r keeps chunks r and 2*CP-1-r, in that order. Local position s sits at
// global position r*c + s for s < c, else (2*CP-1-r)*c + (s - c); local order is global
// order, so a causal mask over local positions is the causal mask over global ones. Tokens
// are token-major rows (t = s*B + b), so each chunk is a contiguous block of c*B rows.
//
// Ring attention ("p2p"). At step i (0 .. CP-1) rank r holds the K/V block of rank
// j = (r - i) mod CP, received from rank r-1 while step i-1 computed (double-buffered), and
// passes it on to rank r+1. Only unmasked work is done:
//   j == r   causal attention of both local query chunks over the local keys;
//   j <  r   both query chunks over key chunk j only (chunk 2*CP-1-j lies in their future);
//   j >  r   the second query chunk only, over both key chunks (the first lies before them).
// Each partial result is merged into the running (out, lse) by its log-sum-exp. Backward
// runs the ring in the reverse direction (blocks go to rank r-1): step i holds block
// (r + i) mod CP with its dK/dV accumulator, adds this rank's share computed from the final
// out and lse, and passes both on; after the last step each accumulator reaches its owner.
// Bytes sent per rank per layer and micro-batch, with KV = 2 * tokens * kv_width * (4 for f32,
// 2 for bf16):
// forward (CP-1) * KV, backward (CP-1) * KV + CP * KV.
//
// All-gather ("all_gather"): the K/V of the whole sequence is all-gathered (and put in
// global order), each local query chunk attends causally over the keys up to its end;
// backward gathers again, computes dK/dV for the whole sequence and reduce-scatters them to
// their owners. Bytes: forward (CP-1) * KV, backward 2 * (CP-1) * KV. Not overlapped, and
// its workspace holds the whole sequence's K/V.
#pragma once

#include <cstdint>
#include <string>

#include "backend/ops.h"
#include "core/tensor.h"
#include "dist/communicator.h"

namespace mpt::parallel {

enum class CpCommType { kP2P, kAllGather };
// "p2p" | "all_gather" (model.cp_comm_type); anything else throws Error(kInvalidConfig).
CpCommType parse_cp_comm_type(const std::string& name);

class ContextParallel {
 public:
  ContextParallel() = default;  // one rank: attention is the plain op
  // comm: the context-parallel group (null or size 1: one rank).
  ContextParallel(dist::Communicator* comm, CpCommType type);

  int64_t size() const { return comm_ ? comm_->size() : 1; }
  int64_t rank() const { return comm_ ? comm_->rank() : 0; }
  CpCommType comm_type() const { return type_; }
  dist::Communicator* comm() const { return comm_; }

  // Global position of local position s, for a rank holding local_seq = S / size() positions.
  int64_t position(int64_t s, int64_t local_seq) const;
  // The SeqPositions of this rank's local positions (identity at one rank).
  backend::SeqPositions local_positions(int64_t local_seq) const;

  // Bytes of workspace attention_forward/backward need for local attention `d` with q, k,
  // v, out and their gradients in `dtype` (f32 or bf16; lse is always f32). 0 at one rank.
  int64_t workspace_bytes(const backend::AttentionDims& d, DType dtype) const;

  // Causal self-attention of this rank's queries over the whole sequence's keys. d describes
  // the local tensors: seq_q = seq_kv = S / size() local positions, causal; its dropout
  // fields as for a one-rank call (positions and mask_seq are set here). q, k, v, out, lse
  // are laid out as for Ops::attention_fwd, all in one dtype. workspace: at least
  // workspace_bytes(d, dtype) bytes of scratch (any dtype); nothing in it needs to survive from one call to the next (the
  // backward works from q, k, v, out and lse alone). A collective over the group.
  void attention_forward(backend::Ops& ops, Tensor workspace, Tensor out, Tensor lse, Tensor q, Tensor k, Tensor v,
                         const backend::AttentionDims& d) const;
  // Its backward: overwrites dq, dk, dv (this rank's K/V rows) with the gradients of the
  // whole sequence's loss.
  void attention_backward(backend::Ops& ops, Tensor workspace, Tensor dq, Tensor dk, Tensor dv, Tensor dout,
                          Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, const backend::AttentionDims& d) const;

 private:
  dist::Communicator* comm_ = nullptr;
  CpCommType type_ = CpCommType::kP2P;
};

}  // namespace mpt::parallel
