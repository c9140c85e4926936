// Expert parallelism: the groups an MoE layer exchanges tokens and router statistics over
// (Megatron-Core's folded expert layout, see dist/parallel_state.h).
//
// The experts are spread over EP ranks and each expert's hidden units over ETP ranks; the
// ETP x EP ranks of one pipeline stage form the token-exchange group. Every member holds its
// own tokens (different data-parallel replicas, sequence-parallel or context-parallel parts
// of a sequence), so a token's choices may be computed anywhere in the group:
//
//   allgather  every token of the group is gathered to every member, which runs the choices
//              that picked its experts; the outputs, zero elsewhere, are reduce-scattered
//              back (summing the ETP ranks' partial outputs too).
//   alltoall   each member permutes its own tokens by expert and sends each expert-parallel
//              peer just the rows for that peer's experts, to every ETP rank of it (one
//              all-to-all with per-peer counts over the group: Megatron's all-to-all over
//              EP followed by its all-gather over ETP); the outputs travel back the same
//              way and the ETP ranks' partial outputs are summed where the tokens live.
//
// The router's load-balancing counts are summed over the tensor x context group, whose
// ranks hold parts of the same micro-batch, so the loss is that of the whole micro-batch.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "dist/communicator.h"

namespace mpt::parallel {

enum class TokenDispatcher { kAllGather, kAllToAll };
// "allgather" | "alltoall"; throws Error(kInvalidConfig) naming moe_token_dispatcher_type.
TokenDispatcher parse_token_dispatcher(const std::string& name);

class ExpertParallel {
 public:
  ExpertParallel() = default;  // one rank holding every expert whole
  // group: the ETP x EP group (null or size 1: no exchange); ep_rank/etp_rank: this rank's
  // coordinates, which every member shares with the others at construction (a collective
  // over the group). tpcp: the tensor x context group (null or size 1: none).
  ExpertParallel(dist::Communicator* group, int64_t ep, int64_t ep_rank, int64_t etp, int64_t etp_rank,
                 dist::Communicator* tpcp, TokenDispatcher dispatcher);

  int64_t size() const { return group_ ? group_->size() : 1; }
  int64_t rank() const { return group_ ? group_->rank() : 0; }
  int64_t ep() const { return ep_; }
  int64_t etp() const { return etp_; }
  int64_t ep_rank() const { return ep_rank_; }
  int64_t etp_rank() const { return etp_rank_; }
  // The expert-parallel rank of group member p (members are ordered ETP-fastest, checked at
  // construction: member p is p / ETP).
  int64_t peer_ep(int64_t p) const { return peer_ep_.empty() ? 0 : peer_ep_[static_cast<size_t>(p)]; }
  TokenDispatcher dispatcher() const { return dispatcher_; }
  dist::Communicator* group() const { return group_; }
  int64_t tpcp_size() const { return tpcp_ ? tpcp_->size() : 1; }

  // Sums counts[n] over the tensor x context group (nothing without one).
  void sum_over_tpcp(int64_t* counts, int64_t n) const;
  // in[count] of each member -> out[size() * count], block p from member p.
  void all_gather(const void* in, void* out, int64_t count, DType dtype) const;
  // in[size() * count] -> out[count]: the sum over members of block rank().
  void reduce_scatter(const void* in, void* out, int64_t count, DType dtype) const;
  // send_counts[p] elements to member p, recv_counts[p] from it (see Communicator).
  void all_to_all(const void* in, const int64_t* send_counts, void* out, const int64_t* recv_counts,
                  DType dtype) const;

 private:
  dist::Communicator* group_ = nullptr;
  dist::Communicator* tpcp_ = nullptr;
  int64_t ep_ = 1, ep_rank_ = 0, etp_ = 1, etp_rank_ = 0;
  std::vector<int64_t> peer_ep_;
  TokenDispatcher dispatcher_ = TokenDispatcher::kAllGather;
};

}  // namespace mpt::parallel
