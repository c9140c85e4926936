// The rank layout against Megatron-Core's documented examples (parallel_state.py docstrings
// and the worked expert-parallel example), and properties that must hold for every layout:
// each kind of group partitions the world, coordinates agree with group membership, and the
// groups are the sets of ranks that agree on every axis the group does not span.
#include <gtest/gtest.h>

#include <cstdint>
#include <iterator>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "core/error.h"
#include "dist/parallel_state.h"
#include "test_errors.h"

namespace mpt::dist {
namespace {

using Groups = std::vector<std::vector<int64_t>>;

const GroupKind kAllKinds[] = {
    GroupKind::kTp,    GroupKind::kCp,     GroupKind::kDp,    GroupKind::kDpCp,      GroupKind::kPp,
    GroupKind::kTpCp,  GroupKind::kTpDpCp, GroupKind::kModel, GroupKind::kEmbedding, GroupKind::kPosition,
    GroupKind::kEtp,   GroupKind::kEp,     GroupKind::kEtpEp, GroupKind::kEdp,
};

ParallelSizes sizes_of(int64_t world, int64_t tp, int64_t cp, int64_t pp, int64_t ep = 1, int64_t etp = -1) {
  ParallelSizes s;
  s.world = world;
  s.tp = tp;
  s.cp = cp;
  s.pp = pp;
  s.ep = ep;
  s.etp = etp;
  return s;
}

// n groups: group g = {first + g * step_group + m * step_member : m < size}.
Groups strided(int64_t n, int64_t size, int64_t step_group, int64_t step_member) {
  Groups out(static_cast<size_t>(n));
  for (int64_t g = 0; g < n; ++g) {
    for (int64_t m = 0; m < size; ++m) out[static_cast<size_t>(g)].push_back(g * step_group + m * step_member);
  }
  return out;
}

// ---- Megatron's documented examples ------------------------------------------------------

// initialize_model_parallel's docstring: 16 GPUs, TP 2, PP 4 (so DP 2).
TEST(ParallelStateExamples, SixteenRanksTp2Pp4) {
  const ParallelState ps(sizes_of(16, 2, 1, 4));
  EXPECT_EQ(ps.dp(), 2);
  EXPECT_EQ(ps.groups(GroupKind::kTp),
            (Groups{{0, 1}, {2, 3}, {4, 5}, {6, 7}, {8, 9}, {10, 11}, {12, 13}, {14, 15}}));
  EXPECT_EQ(ps.groups(GroupKind::kDp),
            (Groups{{0, 2}, {1, 3}, {4, 6}, {5, 7}, {8, 10}, {9, 11}, {12, 14}, {13, 15}}));
  EXPECT_EQ(ps.groups(GroupKind::kPp), (Groups{{0, 4, 8, 12}, {1, 5, 9, 13}, {2, 6, 10, 14}, {3, 7, 11, 15}}));
  EXPECT_EQ(ps.groups(GroupKind::kModel),
            (Groups{{0, 1, 4, 5, 8, 9, 12, 13}, {2, 3, 6, 7, 10, 11, 14, 15}}));
  EXPECT_EQ(ps.groups(GroupKind::kEmbedding), (Groups{{0, 12}, {1, 13}, {2, 14}, {3, 15}}));
  EXPECT_EQ(ps.groups(GroupKind::kPosition), (Groups{{0}, {1}, {2}, {3}}));
  // CP = 1: every CP group is a single rank, dp-cp equals dp and tp-cp equals tp.
  EXPECT_EQ(ps.groups(GroupKind::kCp), strided(16, 1, 1, 1));
  EXPECT_EQ(ps.groups(GroupKind::kDpCp), ps.groups(GroupKind::kDp));
  EXPECT_EQ(ps.groups(GroupKind::kTpCp), ps.groups(GroupKind::kTp));
  EXPECT_EQ(ps.groups(GroupKind::kTpDpCp), (Groups{{0, 1, 2, 3}, {4, 5, 6, 7}, {8, 9, 10, 11}, {12, 13, 14, 15}}));
  // Experts default to ETP = TP, EP = 1: expert groups mirror the dense ones.
  EXPECT_EQ(ps.etp(), 2);
  EXPECT_EQ(ps.edp(), 2);
  EXPECT_EQ(ps.groups(GroupKind::kEtp), ps.groups(GroupKind::kTp));
  EXPECT_EQ(ps.groups(GroupKind::kEdp), ps.groups(GroupKind::kDp));
  EXPECT_EQ(ps.groups(GroupKind::kEp), strided(16, 1, 1, 1));
  EXPECT_EQ(ps.groups(GroupKind::kEtpEp), ps.groups(GroupKind::kTp));

  EXPECT_EQ(ps.group_of(GroupKind::kEmbedding, 13), (std::vector<int64_t>{1, 13}));
  EXPECT_EQ(ps.group_of(GroupKind::kEmbedding, 5), std::vector<int64_t>{});
  EXPECT_EQ(ps.group_of(GroupKind::kPosition, 12), std::vector<int64_t>{});
  EXPECT_EQ(ps.group_of(GroupKind::kPosition, 2), std::vector<int64_t>{2});
  const RankCoords c = ps.coords(13);  // 13 = 1 + 2 * (0 + 2 * 3)
  EXPECT_EQ(c.tp, 1);
  EXPECT_EQ(c.cp, 0);
  EXPECT_EQ(c.dp, 0);
  EXPECT_EQ(c.pp, 3);
  EXPECT_EQ(ps.describe(), "world 16 = TP 2 x CP 1 x DP 2 x PP 4; experts: ETP 2 x EP 1 x EDP 2 x PP 4");
}

// The expert fold: 16 GPUs, TP 2, CP 2, PP 2 (DP 2); ETP 1, EP 4 (EDP 2).
TEST(ParallelStateExamples, SixteenRanksExpertFold) {
  const ParallelState ps(sizes_of(16, 2, 2, 2, 4, 1));
  EXPECT_EQ(ps.dp(), 2);
  EXPECT_EQ(ps.edp(), 2);
  EXPECT_EQ(ps.etp(), 1);
  EXPECT_EQ(ps.groups(GroupKind::kTp), strided(8, 2, 2, 1));  // [0,1],[2,3],...
  EXPECT_EQ(ps.groups(GroupKind::kCp),
            (Groups{{0, 2}, {1, 3}, {4, 6}, {5, 7}, {8, 10}, {9, 11}, {12, 14}, {13, 15}}));
  EXPECT_EQ(ps.groups(GroupKind::kDp),
            (Groups{{0, 4}, {1, 5}, {2, 6}, {3, 7}, {8, 12}, {9, 13}, {10, 14}, {11, 15}}));
  EXPECT_EQ(ps.groups(GroupKind::kTpCp), (Groups{{0, 1, 2, 3}, {4, 5, 6, 7}, {8, 9, 10, 11}, {12, 13, 14, 15}}));
  EXPECT_EQ(ps.groups(GroupKind::kDpCp), (Groups{{0, 2, 4, 6}, {1, 3, 5, 7}, {8, 10, 12, 14}, {9, 11, 13, 15}}));
  EXPECT_EQ(ps.groups(GroupKind::kTpDpCp), (Groups{{0, 1, 2, 3, 4, 5, 6, 7}, {8, 9, 10, 11, 12, 13, 14, 15}}));
  EXPECT_EQ(ps.groups(GroupKind::kPp), strided(8, 2, 1, 8));  // [0,8],[1,9],...
  EXPECT_EQ(ps.groups(GroupKind::kModel),
            (Groups{{0, 1, 8, 9}, {2, 3, 10, 11}, {4, 5, 12, 13}, {6, 7, 14, 15}}));
  EXPECT_EQ(ps.groups(GroupKind::kEmbedding), strided(8, 2, 1, 8));
  EXPECT_EQ(ps.groups(GroupKind::kPosition), strided(8, 1, 1, 1));

  EXPECT_EQ(ps.groups(GroupKind::kEtp), strided(16, 1, 1, 1));  // [0],[1],...
  EXPECT_EQ(ps.groups(GroupKind::kEp), (Groups{{0, 1, 2, 3}, {4, 5, 6, 7}, {8, 9, 10, 11}, {12, 13, 14, 15}}));
  EXPECT_EQ(ps.groups(GroupKind::kEtpEp), ps.groups(GroupKind::kEp));
  EXPECT_EQ(ps.groups(GroupKind::kEdp),
            (Groups{{0, 4}, {1, 5}, {2, 6}, {3, 7}, {8, 12}, {9, 13}, {10, 14}, {11, 15}}));
  // The EP group is the attention TP x CP domain.
  EXPECT_EQ(ps.groups(GroupKind::kEp), ps.groups(GroupKind::kTpCp));

  const RankCoords c = ps.coords(14);  // dense: 0 + 2 * (1 + 2 * (1 + 2 * 1)); expert: 0 + 1 * (2 + 4 * (1 + 2 * 1))
  EXPECT_EQ(c.tp, 0);
  EXPECT_EQ(c.cp, 1);
  EXPECT_EQ(c.dp, 1);
  EXPECT_EQ(c.pp, 1);
  EXPECT_EQ(c.etp, 0);
  EXPECT_EQ(c.ep, 2);
  EXPECT_EQ(c.edp, 1);
  EXPECT_EQ(ps.describe(), "world 16 = TP 2 x CP 2 x DP 2 x PP 2; experts: ETP 1 x EP 4 x EDP 2 x PP 2");
}

// generate_masked_orthogonal_rank_groups' docstring: sizes [tp, dp, pp] = [2, 3, 4], dp groups
// [0,2,4], [1,3,5], ..., [19,21,23].
TEST(ParallelStateExamples, TwentyFourRanksDpGroups) {
  const ParallelState ps(sizes_of(24, 2, 1, 4));
  ASSERT_EQ(ps.dp(), 3);
  const Groups& dp = ps.groups(GroupKind::kDp);
  ASSERT_EQ(dp.size(), 8u);
  EXPECT_EQ(dp[0], (std::vector<int64_t>{0, 2, 4}));
  EXPECT_EQ(dp[1], (std::vector<int64_t>{1, 3, 5}));
  EXPECT_EQ(dp[7], (std::vector<int64_t>{19, 21, 23}));
}

TEST(ParallelStateExamples, EightRanksTp2Dp4) {
  const ParallelState ps(sizes_of(8, 2, 1, 1));
  EXPECT_EQ(ps.dp(), 4);
  EXPECT_EQ(ps.groups(GroupKind::kTp), (Groups{{0, 1}, {2, 3}, {4, 5}, {6, 7}}));
  EXPECT_EQ(ps.groups(GroupKind::kDp), (Groups{{0, 2, 4, 6}, {1, 3, 5, 7}}));
  EXPECT_EQ(ps.groups(GroupKind::kDpCp), ps.groups(GroupKind::kDp));
  EXPECT_EQ(ps.groups(GroupKind::kPp), strided(8, 1, 1, 1));
  EXPECT_EQ(ps.groups(GroupKind::kModel), ps.groups(GroupKind::kTp));
  // PP = 1: the embedding group of each pipeline is its one stage.
  EXPECT_EQ(ps.groups(GroupKind::kEmbedding), strided(8, 1, 1, 1));
  EXPECT_EQ(ps.groups(GroupKind::kPosition), strided(8, 1, 1, 1));
  EXPECT_EQ(ps.groups(GroupKind::kTpDpCp), (Groups{{0, 1, 2, 3, 4, 5, 6, 7}}));
  EXPECT_EQ(ps.group_of(GroupKind::kEmbedding, 5), std::vector<int64_t>{5});
  EXPECT_EQ(ps.describe(), "world 8 = TP 2 x CP 1 x DP 4 x PP 1; experts: ETP 2 x EP 1 x EDP 4 x PP 1");
}

// Expert parallelism spanning data parallel ranks: TP 1, EP 4 over DP 8.
TEST(ParallelStateExamples, EightRanksEp4) {
  const ParallelState ps(sizes_of(8, 1, 1, 1, 4));
  EXPECT_EQ(ps.dp(), 8);
  EXPECT_EQ(ps.edp(), 2);
  EXPECT_EQ(ps.groups(GroupKind::kEp), (Groups{{0, 1, 2, 3}, {4, 5, 6, 7}}));
  EXPECT_EQ(ps.groups(GroupKind::kEdp), (Groups{{0, 4}, {1, 5}, {2, 6}, {3, 7}}));
  EXPECT_EQ(ps.groups(GroupKind::kDp), (Groups{{0, 1, 2, 3, 4, 5, 6, 7}}));
}

// ETP different from TP with PP: world 16, TP 4, PP 2, ETP 2, EP 2 (EDP 2).
TEST(ParallelStateExamples, SixteenRanksEtp2Ep2Pp2) {
  const ParallelState ps(sizes_of(16, 4, 1, 2, 2, 2));
  EXPECT_EQ(ps.dp(), 2);
  EXPECT_EQ(ps.edp(), 2);
  EXPECT_EQ(ps.groups(GroupKind::kTp), (Groups{{0, 1, 2, 3}, {4, 5, 6, 7}, {8, 9, 10, 11}, {12, 13, 14, 15}}));
  EXPECT_EQ(ps.groups(GroupKind::kEtp), strided(8, 2, 2, 1));
  EXPECT_EQ(ps.groups(GroupKind::kEp), (Groups{{0, 2}, {1, 3}, {4, 6}, {5, 7}, {8, 10}, {9, 11}, {12, 14}, {13, 15}}));
  EXPECT_EQ(ps.groups(GroupKind::kEtpEp), (Groups{{0, 1, 2, 3}, {4, 5, 6, 7}, {8, 9, 10, 11}, {12, 13, 14, 15}}));
  EXPECT_EQ(ps.groups(GroupKind::kEdp),
            (Groups{{0, 4}, {1, 5}, {2, 6}, {3, 7}, {8, 12}, {9, 13}, {10, 14}, {11, 15}}));
  EXPECT_EQ(ps.groups(GroupKind::kPp), strided(8, 2, 1, 8));
  EXPECT_EQ(ps.groups(GroupKind::kEmbedding), strided(8, 2, 1, 8));
}

TEST(ParallelStateExamples, WorldOfOne) {
  const ParallelState ps(ParallelSizes{});
  EXPECT_EQ(ps.dp(), 1);
  EXPECT_EQ(ps.edp(), 1);
  EXPECT_EQ(ps.etp(), 1);
  for (GroupKind kind : kAllKinds) {
    EXPECT_EQ(ps.groups(kind), (Groups{{0}})) << group_kind_name(kind);
    EXPECT_EQ(ps.group_of(kind, 0), std::vector<int64_t>{0}) << group_kind_name(kind);
  }
  EXPECT_EQ(ps.describe(), "world 1 = TP 1 x CP 1 x DP 1 x PP 1; experts: ETP 1 x EP 1 x EDP 1 x PP 1");
}

TEST(ParallelStateExamples, KindNames) {
  std::set<std::string> names;
  for (GroupKind kind : kAllKinds) names.insert(group_kind_name(kind));
  EXPECT_EQ(names.size(), std::size(kAllKinds));
  EXPECT_STREQ(group_kind_name(GroupKind::kTp), "tp");
  EXPECT_STREQ(group_kind_name(GroupKind::kDpCp), "dp-cp");
  EXPECT_STREQ(group_kind_name(GroupKind::kEtpEp), "etp-ep");
  EXPECT_STREQ(group_kind_name(GroupKind::kModel), "tp-pp");
}

// ---- errors ---------------------------------------------------------------------------

TEST(ParallelStateErrors, WorldNotDivisibleByModelSize) {
  const Error e = error_of([] { ParallelState(sizes_of(12, 2, 1, 4)); });
  EXPECT_EQ(e.status(), Status::kInvalidConfig);
  EXPECT_TRUE(contains(e.what(), "world size 12 is not divisible by tensor_model_parallel_size * "
                                 "context_parallel_size * pipeline_model_parallel_size = 2 * 1 * 4"))
      << e.what();
}

TEST(ParallelStateErrors, WorldNotDivisibleByExpertModelSize) {
  // Dense 8 = TP 2 x DP 4 is fine; experts ETP 1 x EP 3 do not divide 8.
  const Error e = error_of([] { ParallelState(sizes_of(8, 2, 1, 1, 3, 1)); });
  EXPECT_EQ(e.status(), Status::kInvalidConfig);
  EXPECT_TRUE(contains(e.what(), "world size 8 is not divisible by expert_tensor_parallel_size * "
                                 "expert_model_parallel_size * pipeline_model_parallel_size = 1 * 3 * 1"))
      << e.what();
  // ETP defaults to TP: TP 2 x EP 4 x PP 2 = 16 does not divide 8 even though TP 2 x PP 2 does.
  const Error d = error_of([] { ParallelState(sizes_of(8, 2, 1, 2, 4)); });
  EXPECT_TRUE(contains(d.what(), "= 2 * 4 * 2")) << d.what();
}

TEST(ParallelStateErrors, SizesBelowOne) {
  struct Case {
    ParallelSizes sizes;
    std::string needle;
  };
  const Case cases[] = {
      {sizes_of(0, 1, 1, 1), "world size must be in [1, "},
      {sizes_of(-4, 1, 1, 1), "got -4"},
      {sizes_of(8, 0, 1, 1), "tensor_model_parallel_size must be >= 1, got 0"},
      {sizes_of(8, 1, -2, 1), "context_parallel_size must be >= 1, got -2"},
      {sizes_of(8, 1, 1, 0), "pipeline_model_parallel_size must be >= 1, got 0"},
      {sizes_of(8, 1, 1, 1, 0), "expert_model_parallel_size must be >= 1, got 0"},
      {sizes_of(8, 1, 1, 1, 1, 0),
       "expert_tensor_parallel_size must be >= 1 (or -1 for tensor_model_parallel_size), got 0"},
      {sizes_of(8, 1, 1, 1, 1, -2), "got -2"},
  };
  for (const Case& c : cases) {
    const Error e = error_of([&] { ParallelState{c.sizes}; });
    EXPECT_EQ(e.status(), Status::kInvalidConfig) << c.needle;
    EXPECT_TRUE(contains(e.what(), c.needle)) << e.what();
  }
}

TEST(ParallelStateErrors, HugeSizesDoNotOverflow) {
  const int64_t big = int64_t{1} << 40;
  const Error e = error_of([&] { ParallelState(sizes_of(1024, big, big, big)); });
  EXPECT_EQ(e.status(), Status::kInvalidConfig);
  EXPECT_TRUE(contains(e.what(), "world size 1024 is not divisible")) << e.what();
  const Error w = error_of([&] { ParallelState(sizes_of(big, 1, 1, 1)); });
  EXPECT_TRUE(contains(w.what(), "world size must be in [1, ")) << w.what();
}

TEST(ParallelStateErrors, RankOutOfRange) {
  const ParallelState ps(sizes_of(4, 2, 1, 1));
  for (int64_t bad : {int64_t{-1}, int64_t{4}}) {
    const Error e = error_of([&] { ps.coords(bad); });
    EXPECT_EQ(e.status(), Status::kInvalidArgument);
    EXPECT_TRUE(contains(e.what(), "rank " + std::to_string(bad) + " is outside the world [0, 4)")) << e.what();
    const Error g = error_of([&] { ps.group_of(GroupKind::kDp, bad); });
    EXPECT_EQ(g.status(), Status::kInvalidArgument);
  }
}

// ---- properties over every layout with world <= 64 -------------------------------------

struct Layout {
  int64_t world, tp, cp, pp, ep, etp;
};

std::vector<Layout> all_layouts() {
  std::vector<Layout> out;
  for (int64_t world = 1; world <= 64; ++world) {
    for (int64_t tp = 1; tp <= world; ++tp) {
      for (int64_t cp = 1; tp * cp <= world; ++cp) {
        for (int64_t pp = 1; tp * cp * pp <= world; ++pp) {
          if (world % (tp * cp * pp) != 0) continue;
          for (int64_t etp = 1; etp * pp <= world; ++etp) {
            for (int64_t ep = 1; etp * ep * pp <= world; ++ep) {
              if (world % (etp * ep * pp) != 0) continue;
              out.push_back({world, tp, cp, pp, ep, etp});
            }
          }
        }
      }
    }
  }
  return out;
}

// Axis coordinates of a rank by kind, from coords(): the axes the group spans (which vary
// inside a group) and the axes it does not (which are equal inside a group).
struct AxisSplit {
  std::vector<int64_t> inside, outside;
};

AxisSplit split_axes(GroupKind kind, const RankCoords& c) {
  switch (kind) {
    case GroupKind::kTp: return {{c.tp}, {c.cp, c.dp, c.pp}};
    case GroupKind::kCp: return {{c.cp}, {c.tp, c.dp, c.pp}};
    case GroupKind::kDp: return {{c.dp}, {c.tp, c.cp, c.pp}};
    case GroupKind::kDpCp: return {{c.cp, c.dp}, {c.tp, c.pp}};
    case GroupKind::kPp:
    case GroupKind::kEmbedding:
    case GroupKind::kPosition: return {{c.pp}, {c.tp, c.cp, c.dp}};
    case GroupKind::kTpCp: return {{c.tp, c.cp}, {c.dp, c.pp}};
    case GroupKind::kTpDpCp: return {{c.tp, c.cp, c.dp}, {c.pp}};
    case GroupKind::kModel: return {{c.tp, c.pp}, {c.cp, c.dp}};
    case GroupKind::kEtp: return {{c.etp}, {c.ep, c.edp, c.pp}};
    case GroupKind::kEp: return {{c.ep}, {c.etp, c.edp, c.pp}};
    case GroupKind::kEtpEp: return {{c.etp, c.ep}, {c.edp, c.pp}};
    case GroupKind::kEdp: return {{c.edp}, {c.etp, c.ep, c.pp}};
  }
  return {};
}

// The position of a rank inside its group: the group's own axes in mixed radix, fastest first.
int64_t position_in_group(GroupKind kind, const ParallelState& ps, const RankCoords& c) {
  const ParallelSizes& s = ps.sizes();
  switch (kind) {
    case GroupKind::kTp: return c.tp;
    case GroupKind::kCp: return c.cp;
    case GroupKind::kDp: return c.dp;
    case GroupKind::kDpCp: return c.cp + s.cp * c.dp;
    case GroupKind::kPp: return c.pp;
    case GroupKind::kTpCp: return c.tp + s.tp * c.cp;
    case GroupKind::kTpDpCp: return c.tp + s.tp * (c.cp + s.cp * c.dp);
    case GroupKind::kModel: return c.tp + s.tp * c.pp;
    case GroupKind::kEtp: return c.etp;
    case GroupKind::kEp: return c.ep;
    case GroupKind::kEtpEp: return c.etp + ps.etp() * c.ep;
    case GroupKind::kEdp: return c.edp;
    case GroupKind::kEmbedding: return c.pp == 0 ? 0 : 1;
    case GroupKind::kPosition: return 0;
  }
  return -1;
}

int64_t expected_group_size(GroupKind kind, const ParallelState& ps) {
  const ParallelSizes& s = ps.sizes();
  switch (kind) {
    case GroupKind::kTp: return s.tp;
    case GroupKind::kCp: return s.cp;
    case GroupKind::kDp: return ps.dp();
    case GroupKind::kDpCp: return ps.dp() * s.cp;
    case GroupKind::kPp: return s.pp;
    case GroupKind::kTpCp: return s.tp * s.cp;
    case GroupKind::kTpDpCp: return s.tp * s.cp * ps.dp();
    case GroupKind::kModel: return s.tp * s.pp;
    case GroupKind::kEmbedding: return s.pp == 1 ? 1 : 2;
    case GroupKind::kPosition: return 1;
    case GroupKind::kEtp: return ps.etp();
    case GroupKind::kEp: return s.ep;
    case GroupKind::kEtpEp: return ps.etp() * s.ep;
    case GroupKind::kEdp: return ps.edp();
  }
  return -1;
}

std::string name(const Layout& l) {
  return str("world ", l.world, " tp ", l.tp, " cp ", l.cp, " pp ", l.pp, " ep ", l.ep, " etp ", l.etp);
}

TEST(ParallelStateProperties, EveryLayoutUpTo64Ranks) {
  const std::vector<Layout> layouts = all_layouts();
  ASSERT_GT(layouts.size(), 1000u);
  for (const Layout& l : layouts) {
    SCOPED_TRACE(name(l));
    const ParallelState ps(sizes_of(l.world, l.tp, l.cp, l.pp, l.ep, l.etp));
    ASSERT_EQ(ps.dp() * l.tp * l.cp * l.pp, l.world);
    ASSERT_EQ(ps.edp() * l.etp * l.ep * l.pp, l.world);
    ASSERT_EQ(ps.etp(), l.etp);

    std::vector<RankCoords> coords;
    for (int64_t r = 0; r < l.world; ++r) {
      const RankCoords c = ps.coords(r);
      coords.push_back(c);
      // Mixed radix, TP fastest, PP slowest in both layouts.
      ASSERT_EQ(r, c.tp + l.tp * (c.cp + l.cp * (c.dp + ps.dp() * c.pp)));
      ASSERT_EQ(r, c.etp + l.etp * (c.ep + l.ep * (c.edp + ps.edp() * c.pp)));
    }

    for (GroupKind kind : kAllKinds) {
      SCOPED_TRACE(group_kind_name(kind));
      const Groups& groups = ps.groups(kind);
      const bool partial = kind == GroupKind::kEmbedding || kind == GroupKind::kPosition;
      const int64_t size = expected_group_size(kind, ps);
      std::vector<int> seen(static_cast<size_t>(l.world), 0);
      ASSERT_EQ(static_cast<int64_t>(groups.size()), partial ? l.world / l.pp : l.world / size);
      for (const std::vector<int64_t>& group : groups) {
        ASSERT_EQ(static_cast<int64_t>(group.size()), size);
        const AxisSplit first = split_axes(kind, coords[static_cast<size_t>(group[0])]);
        for (size_t i = 0; i < group.size(); ++i) {
          const int64_t r = group[i];
          ASSERT_GE(r, 0);
          ASSERT_LT(r, l.world);
          ++seen[static_cast<size_t>(r)];
          const RankCoords& c = coords[static_cast<size_t>(r)];
          // Members agree on every axis the group does not span, and are listed in order.
          EXPECT_EQ(split_axes(kind, c).outside, first.outside) << "rank " << r;
          EXPECT_EQ(position_in_group(kind, ps, c), static_cast<int64_t>(i)) << "rank " << r;
          EXPECT_EQ(ps.group_of(kind, r), group) << "rank " << r;
        }
      }
      for (int64_t r = 0; r < l.world; ++r) {
        const RankCoords& c = coords[static_cast<size_t>(r)];
        if (!partial) {
          ASSERT_EQ(seen[static_cast<size_t>(r)], 1) << "rank " << r;
          continue;
        }
        const bool member = kind == GroupKind::kPosition ? c.pp == 0 : (c.pp == 0 || c.pp == l.pp - 1);
        ASSERT_EQ(seen[static_cast<size_t>(r)], member ? 1 : 0) << "rank " << r;
        if (!member) {
          EXPECT_TRUE(ps.group_of(kind, r).empty()) << "rank " << r;
        }
      }
    }

    for (int64_t r = 0; r < l.world; ++r) {
      const RankCoords& c = coords[static_cast<size_t>(r)];
      EXPECT_EQ(ps.group_of(GroupKind::kTp, r)[static_cast<size_t>(c.tp)], r);
      EXPECT_EQ(ps.group_of(GroupKind::kCp, r)[static_cast<size_t>(c.cp)], r);
      EXPECT_EQ(ps.group_of(GroupKind::kDp, r)[static_cast<size_t>(c.dp)], r);
      EXPECT_EQ(ps.group_of(GroupKind::kPp, r)[static_cast<size_t>(c.pp)], r);
      EXPECT_EQ(ps.group_of(GroupKind::kEtp, r)[static_cast<size_t>(c.etp)], r);
      EXPECT_EQ(ps.group_of(GroupKind::kEp, r)[static_cast<size_t>(c.ep)], r);
      EXPECT_EQ(ps.group_of(GroupKind::kEdp, r)[static_cast<size_t>(c.edp)], r);
    }
  }
}

// Structural facts that do not go through coords().
TEST(ParallelStateProperties, GroupStructure) {
  for (const Layout& l : all_layouts()) {
    SCOPED_TRACE(name(l));
    const ParallelState ps(sizes_of(l.world, l.tp, l.cp, l.pp, l.ep, l.etp));
    // TP (and expert TP) groups are runs of consecutive ranks starting at multiples of TP.
    for (const auto& [kind, size] : {std::pair{GroupKind::kTp, l.tp}, std::pair{GroupKind::kEtp, l.etp}}) {
      const Groups& groups = ps.groups(kind);
      for (size_t g = 0; g < groups.size(); ++g) {
        for (int64_t i = 0; i < size; ++i) {
          ASSERT_EQ(groups[g][static_cast<size_t>(i)], static_cast<int64_t>(g) * size + i);
        }
      }
    }
    // TP x CP x DP groups are the contiguous blocks of one pipeline stage, as are ETP x EP x EDP.
    const int64_t stage = l.world / l.pp;
    const Groups& blocks = ps.groups(GroupKind::kTpDpCp);
    for (size_t g = 0; g < blocks.size(); ++g) {
      for (int64_t i = 0; i < stage; ++i) {
        ASSERT_EQ(blocks[g][static_cast<size_t>(i)], static_cast<int64_t>(g) * stage + i);
      }
    }
    // PP groups step by one stage.
    for (const std::vector<int64_t>& group : ps.groups(GroupKind::kPp)) {
      for (size_t i = 1; i < group.size(); ++i) {
        ASSERT_EQ(group[i] - group[i - 1], stage);
      }
    }
    // A dp-cp group is the union of the DP groups of its members, and of their CP groups.
    for (const std::vector<int64_t>& dp_cp : ps.groups(GroupKind::kDpCp)) {
      const std::set<int64_t> members(dp_cp.begin(), dp_cp.end());
      std::set<int64_t> from_dp, from_cp;
      for (int64_t r : dp_cp) {
        for (int64_t m : ps.group_of(GroupKind::kDp, r)) from_dp.insert(m);
        for (int64_t m : ps.group_of(GroupKind::kCp, r)) from_cp.insert(m);
      }
      EXPECT_EQ(from_dp, members);
      EXPECT_EQ(from_cp, members);
      // CP fastest inside it: the first CP members come first.
      const std::vector<int64_t> cp_group = ps.group_of(GroupKind::kCp, dp_cp[0]);
      EXPECT_EQ(std::vector<int64_t>(dp_cp.begin(), dp_cp.begin() + l.cp), cp_group);
    }
    // Embedding and position groups come from the pipeline groups, in the same order.
    const Groups& pp = ps.groups(GroupKind::kPp);
    const Groups& embedding = ps.groups(GroupKind::kEmbedding);
    const Groups& position = ps.groups(GroupKind::kPosition);
    ASSERT_EQ(embedding.size(), pp.size());
    ASSERT_EQ(position.size(), pp.size());
    for (size_t g = 0; g < pp.size(); ++g) {
      const std::vector<int64_t> ends =
          pp[g].size() == 1 ? std::vector<int64_t>{pp[g].front()} : std::vector<int64_t>{pp[g].front(), pp[g].back()};
      EXPECT_EQ(embedding[g], ends);
      EXPECT_EQ(position[g], std::vector<int64_t>{pp[g].front()});
    }
    // Each group of a kind is distinct and the kinds built from the same axes agree.
    const std::set<std::vector<int64_t>> tp_cp(ps.groups(GroupKind::kTpCp).begin(), ps.groups(GroupKind::kTpCp).end());
    EXPECT_EQ(tp_cp.size(), ps.groups(GroupKind::kTpCp).size());
    if (l.cp == 1) {
      EXPECT_EQ(ps.groups(GroupKind::kDpCp), ps.groups(GroupKind::kDp));
      EXPECT_EQ(ps.groups(GroupKind::kTpCp), ps.groups(GroupKind::kTp));
    }
    if (l.etp == l.tp && l.ep == 1) {
      EXPECT_EQ(ps.groups(GroupKind::kEtp), ps.groups(GroupKind::kTp));
      EXPECT_EQ(ps.groups(GroupKind::kEdp), ps.groups(GroupKind::kDpCp));
    }
  }
}

// The default ETP is TP: -1 and an explicit ETP = TP give the same layout.
TEST(ParallelStateProperties, DefaultEtpIsTp) {
  const ParallelState implicit(sizes_of(32, 4, 2, 2, 2));
  const ParallelState explicit_etp(sizes_of(32, 4, 2, 2, 2, 4));
  EXPECT_EQ(implicit.etp(), 4);
  for (GroupKind kind : kAllKinds) {
    EXPECT_EQ(implicit.groups(kind), explicit_etp.groups(kind)) << group_kind_name(kind);
  }
}

}  // namespace
}  // namespace mpt::dist
