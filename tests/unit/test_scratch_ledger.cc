// The ledger that keeps outgrown CUDA scratch areas allocated while a recorded graph may
// replay their addresses (src/cuda/scratch_ledger.h), exercised on the CPU with host
// addresses: a block goes back only once no live graph recorded during its lifetime remains,
// at once when there is none, and never after the owner has detached.
#include <gtest/gtest.h>

#include <algorithm>
#include <vector>

#include "cuda/scratch_ledger.h"

namespace mpt::cuda {
namespace {

struct Released {
  std::vector<void*> blocks;
  bool has(void* p) const { return std::find(blocks.begin(), blocks.end(), p) != blocks.end(); }
};

TEST(ScratchLedger, WithoutGraphsAnOutgrownBlockGoesBackAtOnce) {
  Released released;
  ScratchLedger ledger([&](void* p) { released.blocks.push_back(p); });
  int a = 0;
  const uint64_t since = ledger.generation();
  ledger.retire(&a, 64, since);
  EXPECT_TRUE(released.has(&a));
  EXPECT_EQ(ledger.retired_bytes(), 0u);
  EXPECT_EQ(ledger.generation(), since + 1) << "each growth starts a generation";
  ledger.retire(nullptr, 0, ledger.generation());  // the first growth has nothing to give back
  EXPECT_EQ(released.blocks.size(), 1u);
}

// The hazard: a graph recorded while block A was current replays A's address. A must stay
// allocated after the area grows, until that graph is gone.
TEST(ScratchLedger, AGraphKeepsTheBlocksOfItsGenerationUntilItIsGone) {
  Released released;
  ScratchLedger ledger([&](void* p) { released.blocks.push_back(p); });
  int a = 0, b = 0, c = 0;
  const uint64_t a_since = ledger.generation();
  const uint64_t graph = ledger.hold_for_graph();  // recorded while A is current
  ledger.retire(&a, 100, a_since);                  // A outgrown by B
  EXPECT_FALSE(released.has(&a));
  EXPECT_EQ(ledger.retired_bytes(), 100u);
  EXPECT_EQ(ledger.retired_blocks(), 1u);

  const uint64_t b_since = ledger.generation();
  const uint64_t later = ledger.hold_for_graph();  // recorded while B is current: not A
  ledger.retire(&b, 200, b_since);                  // B outgrown by C: kept for `later`
  EXPECT_FALSE(released.has(&b));
  EXPECT_EQ(ledger.retired_bytes(), 300u);

  ledger.release_graph(graph);
  EXPECT_TRUE(released.has(&a)) << "no live graph was recorded while A was current";
  EXPECT_FALSE(released.has(&b));
  EXPECT_EQ(ledger.retired_bytes(), 200u);
  ledger.release_graph(later);
  EXPECT_TRUE(released.has(&b));
  EXPECT_EQ(ledger.retired_bytes(), 0u);

  const uint64_t c_since = ledger.generation();
  ledger.retire(&c, 300, c_since);  // no graph left: straight back
  EXPECT_TRUE(released.has(&c));
  EXPECT_EQ(released.blocks.size(), 3u);
}

// A block current over several generations (the other area grew meanwhile) is kept by a graph
// recorded in any of them; two graphs of one generation both hold it.
TEST(ScratchLedger, ABlockIsHeldByEveryGraphOfItsLifetime) {
  Released released;
  ScratchLedger ledger([&](void* p) { released.blocks.push_back(p); });
  int first = 0, second = 0;
  const uint64_t first_since = ledger.generation();
  ledger.retire(nullptr, 0, first_since);  // the second area's first growth: a new generation
  const uint64_t g1 = ledger.hold_for_graph();
  const uint64_t g2 = ledger.hold_for_graph();
  EXPECT_EQ(g1, g2);
  const uint64_t second_since = ledger.generation();
  EXPECT_EQ(second_since, g1);
  ledger.retire(&second, 8, second_since);  // the second area, current in g1's generation
  ledger.retire(&first, 16, first_since);       // the first area, current since before
  EXPECT_TRUE(released.blocks.empty());
  ledger.release_graph(g1);
  EXPECT_TRUE(released.blocks.empty()) << "g2 was recorded in the same generation";
  ledger.release_graph(g2);
  EXPECT_TRUE(released.has(&first));
  EXPECT_TRUE(released.has(&second));
}

TEST(ScratchLedger, NothingIsReleasedAfterTheOwnerDetached) {
  Released released;
  ScratchLedger ledger([&](void* p) { released.blocks.push_back(p); });
  int a = 0;
  const uint64_t graph = ledger.hold_for_graph();
  ledger.retire(&a, 64, 0);
  ledger.detach();  // the backend frees every block itself
  EXPECT_EQ(ledger.retired_bytes(), 0u);
  ledger.release_graph(graph);  // a graph outliving its backend
  EXPECT_TRUE(released.blocks.empty());
  ledger.release_graph(graph + 7);  // an unknown generation changes nothing
  EXPECT_TRUE(released.blocks.empty());
}

}  // namespace
}  // namespace mpt::cuda
