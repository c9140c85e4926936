// The rank layout: a pure function from the world size and the parallel sizes to every
// process group, ordered as Megatron-Core orders them (megatron/core/parallel_state.py,
// RankGenerator with order "tp-cp-ep-dp-pp", leftmost fastest). It needs no communicator,
// so it is tested against Megatron's documented examples.
//
// Dense layout: axes tp, cp, dp, pp (DP = world / (TP * CP * PP)).
// Expert layout: axes etp (expert tensor), ep, edp, pp (EDP = world / (ETP * EP * PP));
// both layouts share their pipeline groups.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace mpt::dist {

struct ParallelSizes {
  int64_t world = 1;
  int64_t tp = 1, cp = 1, pp = 1;
  int64_t ep = 1;
  int64_t etp = -1;  // expert tensor parallel; -1: equal to tp (Megatron's default)
};

enum class GroupKind {
  kTp,          // tensor parallel
  kCp,          // context parallel
  kDp,          // data parallel
  kDpCp,        // data x context parallel: dense gradients are reduced over it
  kPp,          // pipeline
  kTpCp,        // tensor x context
  kTpDpCp,      // tensor x data x context
  kModel,       // tensor x pipeline ("model parallel")
  kEmbedding,   // first and last pipeline stage of each pipeline group (one stage when PP = 1)
  kPosition,    // first pipeline stage only
  kEtp,         // expert tensor parallel
  kEp,          // expert parallel
  kEtpEp,       // expert tensor x expert parallel (token dispatch)
  kEdp,         // expert data parallel: expert gradients are reduced over it
};
const char* group_kind_name(GroupKind kind);  // "tp", "dp-cp", "etp-ep", ...

// This rank's coordinate on each axis.
struct RankCoords {
  int64_t tp = 0, cp = 0, dp = 0, pp = 0;
  int64_t etp = 0, ep = 0, edp = 0;
};

class ParallelState {
 public:
  // Throws Error(kInvalidConfig) naming the sizes when a size is < 1 (ETP: other than -1),
  // the world is above 2^20 ranks, or the world is not divisible by TP x CP x PP or by
  // ETP x EP x PP. (EP with CP > 1 is fine: the expert layout folds EP over TP x CP x DP,
  // as Megatron's does.)
  explicit ParallelState(const ParallelSizes& sizes);

  const ParallelSizes& sizes() const { return sizes_; }
  int64_t dp() const { return dp_; }
  int64_t edp() const { return edp_; }
  int64_t etp() const { return etp_; }

  // Every group of a kind, each a list of world ranks in group-rank order; together they
  // cover every rank exactly once (embedding and position groups: only their members).
  const std::vector<std::vector<int64_t>>& groups(GroupKind kind) const;
  // The group of `kind` holding world rank `rank` (empty for embedding/position groups it
  // is not in). group_of and coords throw Error(kInvalidArgument) for a rank outside
  // [0, world).
  std::vector<int64_t> group_of(GroupKind kind, int64_t rank) const;
  RankCoords coords(int64_t rank) const;

  // "world 16 = TP 2 x CP 2 x DP 2 x PP 2; experts: ETP 1 x EP 4 x EDP 2 x PP 2".
  std::string describe() const;

 private:
  ParallelSizes sizes_;
  int64_t dp_ = 1, edp_ = 1, etp_ = 1;
  std::vector<std::vector<std::vector<int64_t>>> groups_;  // indexed by GroupKind
};

}  // namespace mpt::dist
