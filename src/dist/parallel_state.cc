// Megatron-Core's rank layout. Both layouts number ranks in mixed radix over their axes,
// fastest first: rank = tp + TP * (cp + CP * (dp + DP * pp)) for the dense layout and
// rank = etp + ETP * (ep + EP * (edp + EDP * pp)) for the expert one. A group of some axes
// holds the ranks that agree on every other axis; its members are listed by counting over
// the group's own axes (fastest first) and the groups by counting over the other axes.
#include "dist/parallel_state.h"

#include <array>
#include <cstddef>
#include <initializer_list>

#include "core/error.h"

namespace mpt::dist {
namespace {

constexpr size_t kNumKinds = static_cast<size_t>(GroupKind::kEdp) + 1;
constexpr size_t kNumAxes = 4;  // (tp, cp|ep, dp, pp): the second axis is cp or ep, never both
// Enough for any cluster; bounds the memory the groups take (14 ints per rank).
constexpr int64_t kMaxWorld = int64_t{1} << 20;

using Axes = std::array<int64_t, kNumAxes>;  // sizes, fastest axis first
using Mask = std::array<bool, kNumAxes>;     // which axes a group spans

size_t index_of(GroupKind kind) { return static_cast<size_t>(kind); }

// Every group spanning the masked axes, members in group-rank order.
std::vector<std::vector<int64_t>> masked_groups(const Axes& sizes, const Mask& mask) {
  Axes stride{};
  int64_t world = 1, group_size = 1;
  for (size_t a = 0; a < kNumAxes; ++a) {
    stride[a] = world;
    world *= sizes[a];
    if (mask[a]) group_size *= sizes[a];
  }
  // Offset of a member (or of a group) from its counter: decompose the counter in mixed
  // radix over the masked (or unmasked) axes and place each digit at its axis's stride.
  auto offset = [&](int64_t counter, bool masked) {
    int64_t rank = 0;
    for (size_t a = 0; a < kNumAxes; ++a) {
      if (mask[a] != masked) continue;
      rank += (counter % sizes[a]) * stride[a];
      counter /= sizes[a];
    }
    MPT_ASSERT(counter == 0);
    return rank;
  };
  std::vector<std::vector<int64_t>> groups(static_cast<size_t>(world / group_size));
  for (size_t g = 0; g < groups.size(); ++g) {
    const int64_t base = offset(static_cast<int64_t>(g), false);
    groups[g].reserve(static_cast<size_t>(group_size));
    for (int64_t m = 0; m < group_size; ++m) groups[g].push_back(base + offset(m, true));
  }
  return groups;
}

// Multiplies sizes, stopping (and returning a value > limit) once the product passes limit,
// so that absurd sizes cannot overflow.
int64_t bounded_product(std::initializer_list<int64_t> sizes, int64_t limit) {
  int64_t product = 1;
  for (int64_t s : sizes) {
    if (product > limit / s) return limit + 1;
    product *= s;
  }
  return product;
}

void check_size(const char* name, int64_t value) {
  MPT_CHECK(value >= 1, Status::kInvalidConfig, "parallel layout: ", name, " must be >= 1, got ", value);
}

}  // namespace

const char* group_kind_name(GroupKind kind) {
  switch (kind) {
    case GroupKind::kTp: return "tp";
    case GroupKind::kCp: return "cp";
    case GroupKind::kDp: return "dp";
    case GroupKind::kDpCp: return "dp-cp";
    case GroupKind::kPp: return "pp";
    case GroupKind::kTpCp: return "tp-cp";
    case GroupKind::kTpDpCp: return "tp-dp-cp";
    case GroupKind::kModel: return "tp-pp";
    case GroupKind::kEmbedding: return "embedding";
    case GroupKind::kPosition: return "position-embedding";
    case GroupKind::kEtp: return "etp";
    case GroupKind::kEp: return "ep";
    case GroupKind::kEtpEp: return "etp-ep";
    case GroupKind::kEdp: return "edp";
  }
  return "unknown";
}

ParallelState::ParallelState(const ParallelSizes& sizes) : sizes_(sizes) {
  const ParallelSizes& s = sizes_;
  MPT_CHECK(s.world >= 1 && s.world <= kMaxWorld, Status::kInvalidConfig, "parallel layout: world size must be in [1, ",
            kMaxWorld, "], got ", s.world);
  check_size("tensor_model_parallel_size", s.tp);
  check_size("context_parallel_size", s.cp);
  check_size("pipeline_model_parallel_size", s.pp);
  check_size("expert_model_parallel_size", s.ep);
  MPT_CHECK(s.etp == -1 || s.etp >= 1, Status::kInvalidConfig,
            "parallel layout: expert_tensor_parallel_size must be >= 1 (or -1 for tensor_model_parallel_size), got ",
            s.etp);
  etp_ = s.etp == -1 ? s.tp : s.etp;

  const int64_t model_size = bounded_product({s.tp, s.cp, s.pp}, s.world);
  MPT_CHECK(model_size <= s.world && s.world % model_size == 0, Status::kInvalidConfig, "parallel layout: world size ",
            s.world, " is not divisible by tensor_model_parallel_size * context_parallel_size * "
            "pipeline_model_parallel_size = ", s.tp, " * ", s.cp, " * ", s.pp);
  dp_ = s.world / model_size;
  const int64_t expert_model_size = bounded_product({etp_, s.ep, s.pp}, s.world);
  MPT_CHECK(expert_model_size <= s.world && s.world % expert_model_size == 0, Status::kInvalidConfig,
            "parallel layout: world size ", s.world, " is not divisible by expert_tensor_parallel_size * "
            "expert_model_parallel_size * pipeline_model_parallel_size = ", etp_, " * ", s.ep, " * ", s.pp);
  edp_ = s.world / expert_model_size;

  // Axis masks over (tp, cp, dp, pp) and (etp, ep, edp, pp).
  const Axes dense{s.tp, s.cp, dp_, s.pp};
  const Axes expert{etp_, s.ep, edp_, s.pp};
  groups_.resize(kNumKinds);
  auto set = [&](GroupKind kind, const Axes& layout, Mask mask) {
    groups_[index_of(kind)] = masked_groups(layout, mask);
  };
  set(GroupKind::kTp, dense, {true, false, false, false});
  set(GroupKind::kCp, dense, {false, true, false, false});
  set(GroupKind::kDp, dense, {false, false, true, false});
  set(GroupKind::kDpCp, dense, {false, true, true, false});
  set(GroupKind::kPp, dense, {false, false, false, true});
  set(GroupKind::kTpCp, dense, {true, true, false, false});
  set(GroupKind::kTpDpCp, dense, {true, true, true, false});
  set(GroupKind::kModel, dense, {true, false, false, true});
  set(GroupKind::kEtp, expert, {true, false, false, false});
  set(GroupKind::kEp, expert, {false, true, false, false});
  set(GroupKind::kEtpEp, expert, {true, true, false, false});
  set(GroupKind::kEdp, expert, {false, false, true, false});

  // Megatron requires both layouts to agree on the pipeline groups; with PP the slowest
  // axis of both they always do.
  MPT_ASSERT(masked_groups(expert, {false, false, false, true}) == groups(GroupKind::kPp));

  for (const std::vector<int64_t>& stages : groups(GroupKind::kPp)) {
    if (stages.size() == 1) {
      groups_[index_of(GroupKind::kEmbedding)].push_back({stages.front()});
    } else {
      groups_[index_of(GroupKind::kEmbedding)].push_back({stages.front(), stages.back()});
    }
    groups_[index_of(GroupKind::kPosition)].push_back({stages.front()});
  }
}

const std::vector<std::vector<int64_t>>& ParallelState::groups(GroupKind kind) const {
  MPT_CHECK(index_of(kind) < kNumKinds, Status::kInvalidArgument, "parallel layout: unknown group kind ",
            static_cast<int>(kind));
  return groups_[index_of(kind)];
}

RankCoords ParallelState::coords(int64_t rank) const {
  MPT_CHECK(rank >= 0 && rank < sizes_.world, Status::kInvalidArgument, "parallel layout: rank ", rank,
            " is outside the world [0, ", sizes_.world, ")");
  RankCoords c;
  int64_t r = rank;
  c.tp = r % sizes_.tp;
  r /= sizes_.tp;
  c.cp = r % sizes_.cp;
  r /= sizes_.cp;
  c.dp = r % dp_;
  c.pp = r / dp_;
  r = rank;
  c.etp = r % etp_;
  r /= etp_;
  c.ep = r % sizes_.ep;
  r /= sizes_.ep;
  c.edp = r % edp_;
  MPT_ASSERT(r / edp_ == c.pp);
  return c;
}

std::vector<int64_t> ParallelState::group_of(GroupKind kind, int64_t rank) const {
  const RankCoords c = coords(rank);
  // The index of the group holding `rank`: its coordinates on the axes the group does not
  // span, in mixed radix fastest first (the order masked_groups counts groups in).
  const int64_t tp = sizes_.tp, cp = sizes_.cp, ep = sizes_.ep;
  int64_t index = 0;
  switch (kind) {
    case GroupKind::kTp: index = c.cp + cp * (c.dp + dp_ * c.pp); break;
    case GroupKind::kCp: index = c.tp + tp * (c.dp + dp_ * c.pp); break;
    case GroupKind::kDp: index = c.tp + tp * (c.cp + cp * c.pp); break;
    case GroupKind::kDpCp: index = c.tp + tp * c.pp; break;
    case GroupKind::kPp:
    case GroupKind::kEmbedding:
    case GroupKind::kPosition: index = c.tp + tp * (c.cp + cp * c.dp); break;
    case GroupKind::kTpCp: index = c.dp + dp_ * c.pp; break;
    case GroupKind::kTpDpCp: index = c.pp; break;
    case GroupKind::kModel: index = c.cp + cp * c.dp; break;
    case GroupKind::kEtp: index = c.ep + ep * (c.edp + edp_ * c.pp); break;
    case GroupKind::kEp: index = c.etp + etp_ * (c.edp + edp_ * c.pp); break;
    case GroupKind::kEtpEp: index = c.edp + edp_ * c.pp; break;
    case GroupKind::kEdp: index = c.etp + etp_ * (c.ep + ep * c.pp); break;
  }
  const std::vector<int64_t>& group = groups(kind).at(static_cast<size_t>(index));
  for (int64_t member : group) {
    if (member == rank) return group;
  }
  // Only embedding and position groups leave ranks out.
  MPT_ASSERT(kind == GroupKind::kEmbedding || kind == GroupKind::kPosition);
  return {};
}

std::string ParallelState::describe() const {
  const ParallelSizes& s = sizes_;
  return str("world ", s.world, " = TP ", s.tp, " x CP ", s.cp, " x DP ", dp_, " x PP ", s.pp, "; experts: ETP ", etp_,
             " x EP ", s.ep, " x EDP ", edp_, " x PP ", s.pp);
}

}  // namespace mpt::dist
