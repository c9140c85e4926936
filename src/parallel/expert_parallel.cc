#include "parallel/expert_parallel.h"

#include "core/error.h"

namespace mpt::parallel {

TokenDispatcher parse_token_dispatcher(const std::string& name) {
  if (name == "allgather") return TokenDispatcher::kAllGather;
  if (name == "alltoall") return TokenDispatcher::kAllToAll;
  fail(Status::kInvalidConfig, "model.moe_token_dispatcher_type: unknown dispatcher '", name,
       "' (expected \"allgather\" or \"alltoall\")");
}

ExpertParallel::ExpertParallel(dist::Communicator* group, int64_t ep, int64_t ep_rank, int64_t etp, int64_t etp_rank,
                               dist::Communicator* tpcp, TokenDispatcher dispatcher)
    : group_(group != nullptr && group->size() > 1 ? group : nullptr),
      tpcp_(tpcp != nullptr && tpcp->size() > 1 ? tpcp : nullptr),
      ep_(ep),
      ep_rank_(ep_rank),
      etp_(etp),
      etp_rank_(etp_rank),
      dispatcher_(dispatcher) {
  MPT_CHECK(ep >= 1 && etp >= 1 && 0 <= ep_rank && ep_rank < ep && 0 <= etp_rank && etp_rank < etp,
            Status::kInvalidArgument, "expert parallel coordinates (ep ", ep_rank, " of ", ep, ", etp ", etp_rank,
            " of ", etp, ") are out of range");
  MPT_CHECK(size() == ep * etp, Status::kInvalidArgument, "the token-exchange group has ", size(),
            " ranks but expert_model_parallel_size x expert_tensor_parallel_size = ", ep * etp);
  if (!group_) return;
  peer_ep_.resize(static_cast<size_t>(size()));
  group_->all_gather(&ep_rank_, peer_ep_.data(), 1, DType::kI64);
  // The layout orders the group ETP-fastest: member p is expert-parallel rank p / ETP.
  for (int64_t p = 0; p < size(); ++p)
    MPT_CHECK(peer_ep_[static_cast<size_t>(p)] == p / etp, Status::kInternal, "group ", group_->name(), ": member ", p,
              " is expert-parallel rank ", peer_ep_[static_cast<size_t>(p)], ", expected ", p / etp);
}

void ExpertParallel::sum_over_tpcp(int64_t* counts, int64_t n) const {
  if (tpcp_) tpcp_->all_reduce(counts, n, DType::kI64, dist::ReduceOp::kSum);
}

void ExpertParallel::all_gather(const void* in, void* out, int64_t count, DType dtype) const {
  MPT_ASSERT(group_ != nullptr);
  group_->all_gather(in, out, count, dtype);
}

void ExpertParallel::reduce_scatter(const void* in, void* out, int64_t count, DType dtype) const {
  MPT_ASSERT(group_ != nullptr);
  group_->reduce_scatter(in, out, count, dtype, dist::ReduceOp::kSum);
}

void ExpertParallel::all_to_all(const void* in, const int64_t* send_counts, void* out, const int64_t* recv_counts,
                                DType dtype) const {
  MPT_ASSERT(group_ != nullptr);
  group_->all_to_all(in, send_counts, out, recv_counts, dtype);
}

}  // namespace mpt::parallel
