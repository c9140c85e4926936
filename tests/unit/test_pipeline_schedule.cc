// Pipeline schedules as data: every schedule covers each (micro-batch, chunk) forward and
// backward once, runs to the end in the unit-time simulation, keeps the activations it
// promises, and has the textbook bubble: (P-1)/M for GPipe and 1F1B, (P-1)/(V*M) for
// Megatron's interleaved schedule.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "parallel/pipeline_schedule.h"
#include "test_errors.h"

namespace mpt::parallel {
namespace {

using Kind = ScheduleKind;

std::string describe(const ScheduleSpec& s) {
  return str(schedule_name(s.kind), " P=", s.stages, " V=", s.chunks, " M=", s.microbatches, " G=", s.group);
}

PipelineAction F(int64_t m, int64_t c = 0) { return {true, m, c}; }
PipelineAction B(int64_t m, int64_t c = 0) { return {false, m, c}; }

bool valid(const ScheduleSpec& s) {
  try {
    check_schedule(s);
    return true;
  } catch (const Error&) {
    return false;
  }
}

// Every schedulable spec over P in {1,2,3,4,8}, several M per P, V in {1..4} and several G.
std::vector<ScheduleSpec> all_specs() {
  std::vector<ScheduleSpec> specs;
  for (int64_t p : {1, 2, 3, 4, 8}) {
    std::set<int64_t> ms = {1, p, 2 * p, 3 * p, 3 * p + 1, 16, 32};
    for (int64_t m : ms) {
      if (p == 1) specs.push_back({Kind::kNone, 1, 1, m, 0});
      specs.push_back({Kind::kGPipe, p, 1, m, 0});
      specs.push_back({Kind::k1F1B, p, 1, m, 0});
      for (int64_t v : {1, 2, 3, 4}) {
        for (int64_t g : std::set<int64_t>{0, p + 1, 2 * p, 3 * p, m}) {
          const ScheduleSpec s{Kind::kInterleaved, p, v, m, g};
          if (valid(s)) specs.push_back(s);
        }
      }
    }
  }
  return specs;
}

TEST(PipelineSchedule, SpecListCoversTheSizesAsked) {
  const std::vector<ScheduleSpec> specs = all_specs();
  int interleaved = 0;
  std::set<std::pair<int64_t, int64_t>> interleaved_pv;
  for (const ScheduleSpec& s : specs) {
    if (s.kind != Kind::kInterleaved) continue;
    ++interleaved;
    interleaved_pv.insert({s.stages, s.chunks});
  }
  EXPECT_EQ(interleaved_pv.size(), 20u);  // every P in {1,2,3,4,8} with every V in {1..4}
  EXPECT_GT(interleaved, 200);
}

TEST(PipelineSchedule, EveryActionOnceForwardBeforeBackward) {
  for (const ScheduleSpec& s : all_specs()) {
    for (int64_t r = 0; r < s.stages; ++r) {
      const std::vector<PipelineAction> actions = pipeline_schedule(s, r);
      ASSERT_EQ(static_cast<int64_t>(actions.size()), 2 * s.microbatches * s.chunks) << describe(s) << " stage " << r;
      std::set<std::pair<int64_t, int64_t>> forwards, backwards;
      for (const PipelineAction& a : actions) {
        ASSERT_TRUE(a.microbatch >= 0 && a.microbatch < s.microbatches) << describe(s);
        ASSERT_TRUE(a.chunk >= 0 && a.chunk < s.chunks) << describe(s);
        const std::pair<int64_t, int64_t> key{a.microbatch, a.chunk};
        if (a.forward) {
          EXPECT_TRUE(forwards.insert(key).second) << describe(s) << " stage " << r << ": forward of " << a.microbatch
                                                   << "," << a.chunk << " twice";
        } else {
          EXPECT_TRUE(forwards.count(key)) << describe(s) << " stage " << r << ": backward of " << a.microbatch << ","
                                           << a.chunk << " before its forward";
          EXPECT_TRUE(backwards.insert(key).second) << describe(s) << " stage " << r;
        }
      }
      EXPECT_EQ(static_cast<int64_t>(forwards.size()), s.microbatches * s.chunks) << describe(s);
      EXPECT_EQ(static_cast<int64_t>(backwards.size()), s.microbatches * s.chunks) << describe(s);
    }
  }
}

TEST(PipelineSchedule, SimulationCompletesWithTheTextbookBubble) {
  for (const ScheduleSpec& s : all_specs()) {
    const Simulation sim = simulate(s);
    const int64_t p = s.stages, v = s.chunks, m = s.microbatches;
    ASSERT_EQ(static_cast<int64_t>(sim.busy.size()), p) << describe(s);
    int64_t idle = 0, busy = 0;
    for (int64_t r = 0; r < p; ++r) {
      EXPECT_EQ(sim.busy[r], 2 * m * v) << describe(s);
      EXPECT_EQ(sim.busy[r] + sim.idle[r], sim.makespan) << describe(s);
      for (int64_t t : sim.start[r]) EXPECT_TRUE(t >= 0 && t < sim.makespan) << describe(s);
      idle += sim.idle[r];
      busy += sim.busy[r];
    }
    // idle / busy == (P-1) / (V*M), compared as integers, then as the double reported.
    EXPECT_EQ(idle * v * m, busy * (p - 1)) << describe(s) << ": idle " << idle << ", busy " << busy;
    EXPECT_NEAR(sim.bubble_fraction(), static_cast<double>(p - 1) / static_cast<double>(v * m), 1e-12) << describe(s);
  }
}

// The start times obey the model: one action per stage per unit, in list order, and each
// action after the one it needs.
TEST(PipelineSchedule, SimulationRespectsDependencies) {
  for (const ScheduleSpec& s : {ScheduleSpec{Kind::k1F1B, 4, 1, 8, 0}, ScheduleSpec{Kind::kInterleaved, 4, 2, 8, 0},
                                ScheduleSpec{Kind::kInterleaved, 3, 3, 9, 5}, ScheduleSpec{Kind::kGPipe, 3, 1, 5, 0}}) {
    const Simulation sim = simulate(s);
    const int64_t p = s.stages, v = s.chunks;
    // end[(virtual stage, micro-batch, forward)]
    std::map<std::tuple<int64_t, int64_t, bool>, int64_t> end;
    for (int64_t r = 0; r < p; ++r) {
      const auto actions = pipeline_schedule(s, r);
      for (size_t i = 0; i < actions.size(); ++i) {
        if (i > 0) {
          EXPECT_GT(sim.start[r][i], sim.start[r][i - 1]) << describe(s);
        }
        end[{actions[i].chunk * p + r, actions[i].microbatch, actions[i].forward}] = sim.start[r][i] + 1;
      }
    }
    for (int64_t r = 0; r < p; ++r) {
      const auto actions = pipeline_schedule(s, r);
      for (size_t i = 0; i < actions.size(); ++i) {
        const PipelineAction& a = actions[i];
        const int64_t vs = a.chunk * p + r;
        const int64_t t = sim.start[r][i];
        if (a.forward && vs > 0) {
          EXPECT_GE(t, end.at({vs - 1, a.microbatch, true})) << describe(s);
        }
        if (!a.forward && vs < p * v - 1) {
          EXPECT_GE(t, end.at({vs + 1, a.microbatch, false})) << describe(s);
        }
        if (!a.forward) {
          EXPECT_GE(t, end.at({vs, a.microbatch, true})) << describe(s);
        }
      }
    }
  }
}

TEST(PipelineSchedule, InFlightMicroBatches) {
  for (const ScheduleSpec& s : all_specs()) {
    for (int64_t r = 0; r < s.stages; ++r) {
      const int64_t in_flight = max_in_flight(pipeline_schedule(s, r), s.chunks);
      switch (s.kind) {
        case Kind::kNone: EXPECT_EQ(in_flight, 1) << describe(s); break;
        case Kind::kGPipe: EXPECT_EQ(in_flight, s.microbatches) << describe(s); break;
        case Kind::k1F1B:
          EXPECT_LE(in_flight, s.stages - r) << describe(s) << " stage " << r;
          EXPECT_EQ(in_flight, std::min(s.stages - r, s.microbatches)) << describe(s) << " stage " << r;
          break;
        case Kind::kInterleaved:
          EXPECT_GE(in_flight, 1) << describe(s);
          EXPECT_LE(in_flight, s.microbatches) << describe(s);
          break;
      }
    }
  }
  // Per chunk, not per stage: F0a F0b B0b B0a holds one micro-batch on each chunk.
  EXPECT_EQ(max_in_flight({F(0, 0), F(0, 1), B(0, 1), B(0, 0)}, 2), 1);
  EXPECT_EQ(max_in_flight({F(0, 0), F(1, 0), B(0, 0), F(2, 0), B(1, 0), B(2, 0)}, 1), 2);
  EXPECT_EQ(error_of([] { max_in_flight({F(0, 2)}, 2); }).status(), Status::kInvalidArgument);
}

TEST(PipelineSchedule, OneForwardOneBackwardOrder) {
  // P=4, M=4: stage 1 warms up with P - r - 1 = 2 forwards.
  const ScheduleSpec s{Kind::k1F1B, 4, 1, 4, 0};
  EXPECT_EQ(pipeline_schedule(s, 1), (std::vector<PipelineAction>{F(0), F(1), F(2), B(0), F(3), B(1), B(2), B(3)}));
  EXPECT_EQ(pipeline_schedule(s, 3), (std::vector<PipelineAction>{F(0), B(0), F(1), B(1), F(2), B(2), F(3), B(3)}));
  // Fewer micro-batches than the warm-up asks for: min(P - r - 1, M) = 2, all forwards first.
  EXPECT_EQ(pipeline_schedule({Kind::k1F1B, 4, 1, 2, 0}, 0), (std::vector<PipelineAction>{F(0), F(1), B(0), B(1)}));
  EXPECT_EQ(pipeline_schedule({Kind::kGPipe, 2, 1, 3, 0}, 1),
            (std::vector<PipelineAction>{F(0), F(1), F(2), B(0), B(1), B(2)}));
  EXPECT_EQ(pipeline_schedule({Kind::kNone, 1, 1, 3, 0}, 0),
            (std::vector<PipelineAction>{F(0), B(0), F(1), B(1), F(2), B(2)}));
}

// Megatron's get_schedule_table example: PP2, M=5, G=3, VP2 gives micro-batches
// 0 1 2 0 1 2 3 4 3 4 and chunks 0 0 0 1 1 1 0 0 1 1. The forward order is the table on
// every stage; M=5 is not divisible by P=2 (which the interleaved rules here require), so
// the table is read off a one-stage interleaved schedule, whose rules M=5, G=3 meet.
TEST(PipelineSchedule, InterleavedForwardOrderIsMegatronsTable) {
  const ScheduleSpec s{Kind::kInterleaved, 1, 2, 5, 3};
  std::vector<int64_t> micro, chunk;
  for (const PipelineAction& a : pipeline_schedule(s, 0)) {
    if (!a.forward) continue;
    micro.push_back(a.microbatch);
    chunk.push_back(a.chunk);
  }
  EXPECT_EQ(micro, (std::vector<int64_t>{0, 1, 2, 0, 1, 2, 3, 4, 3, 4}));
  EXPECT_EQ(chunk, (std::vector<int64_t>{0, 0, 0, 1, 1, 1, 0, 0, 1, 1}));

  // Backwards use the same table with the chunks reversed.
  std::vector<int64_t> back_micro, back_chunk;
  for (const PipelineAction& a : pipeline_schedule(s, 0)) {
    if (a.forward) continue;
    back_micro.push_back(a.microbatch);
    back_chunk.push_back(a.chunk);
  }
  EXPECT_EQ(back_micro, (std::vector<int64_t>{0, 1, 2, 0, 1, 2, 3, 4, 3, 4}));
  EXPECT_EQ(back_chunk, (std::vector<int64_t>{1, 1, 1, 0, 0, 0, 1, 1, 0, 0}));

  // The same table on every stage of a schedulable spec: P=2, M=6, G=4 (last group 2 = P).
  for (int64_t r = 0; r < 2; ++r) {
    std::vector<std::pair<int64_t, int64_t>> order;
    for (const PipelineAction& a : pipeline_schedule({Kind::kInterleaved, 2, 2, 6, 4}, r))
      if (a.forward) order.emplace_back(a.microbatch, a.chunk);
    EXPECT_EQ(order, (std::vector<std::pair<int64_t, int64_t>>{
                         {0, 0}, {1, 0}, {2, 0}, {3, 0}, {0, 1}, {1, 1}, {2, 1}, {3, 1},
                         {4, 0}, {5, 0}, {4, 1}, {5, 1}}));
  }
}

// Forwards before the first backward: Megatron's warm-up (P - r - 1) * 2 + (V - 1) * G,
// capped at M * V, plus the forward that opens the steady state when one is left.
int64_t forwards_before_first_backward(const std::vector<PipelineAction>& actions) {
  int64_t n = 0;
  for (const PipelineAction& a : actions) {
    if (!a.forward) break;
    ++n;
  }
  return n;
}

TEST(PipelineSchedule, InterleavedWarmupMatchesMegatron) {
  struct Case {
    int64_t p, r, v, m, g, warmup;
  };
  // warmup worked out by hand from (P - r - 1) * 2 + (V - 1) * G, capped at M * V.
  const Case cases[] = {
      {4, 0, 2, 8, 4, 10},   // 3*2 + 1*4
      {4, 3, 2, 8, 4, 4},    // 0*2 + 1*4
      {4, 1, 3, 12, 6, 16},  // 2*2 + 2*6
      {4, 2, 4, 8, 4, 14},   // 1*2 + 3*4
      {8, 0, 2, 16, 8, 22},  // 7*2 + 1*8
      {2, 0, 2, 2, 2, 4},    // 1*2 + 1*2 = 4 = M*V: all forwards first
      {4, 0, 4, 4, 4, 16},   // 3*2 + 3*4 = 18 > M*V = 16: capped
  };
  for (const Case& c : cases) {
    const auto actions = pipeline_schedule({Kind::kInterleaved, c.p, c.v, c.m, c.g}, c.r);
    const int64_t opening = c.warmup < c.m * c.v ? 1 : 0;
    EXPECT_EQ(forwards_before_first_backward(actions), c.warmup + opening)
        << "P=" << c.p << " r=" << c.r << " V=" << c.v << " M=" << c.m << " G=" << c.g;
  }
  // Steady state: forward k + warmup, then backward k. P=2, V=2, M=4, G=2 on stage 1:
  // warm-up 0*2 + 1*2 = 2, table 0a 1a 0b 1b 2a 3a 2b 3b, backwards with chunks reversed.
  EXPECT_EQ(pipeline_schedule({Kind::kInterleaved, 2, 2, 4, 2}, 1),
            (std::vector<PipelineAction>{F(0, 0), F(1, 0), F(0, 1), B(0, 1), F(1, 1), B(1, 1), F(2, 0), B(0, 0),
                                         F(3, 0), B(1, 0), F(2, 1), B(2, 1), F(3, 1), B(3, 1), B(2, 0), B(3, 0)}));
}

TEST(PipelineSchedule, CheckScheduleNamesTheRule) {
  auto message = [](const ScheduleSpec& s) {
    const Error e = error_of([&] { check_schedule(s); });
    EXPECT_EQ(e.status(), Status::kInvalidConfig) << describe(s);
    return std::string(e.what());
  };
  EXPECT_EQ(message({Kind::kInterleaved, 4, 2, 6, 0}),
            "interleaved pipeline schedule: the number of micro-batches (6) must be divisible by "
            "pipeline_model_parallel_size (4)");
  std::string m = message({Kind::kInterleaved, 4, 2, 8, 3});
  EXPECT_TRUE(contains(m, "microbatch_group_size_per_vp_stage (3) must be in [pipeline_model_parallel_size, "
                          "number of micro-batches] = [4, 8]"))
      << m;
  m = message({Kind::kInterleaved, 4, 2, 8, 9});
  EXPECT_TRUE(contains(m, "microbatch_group_size_per_vp_stage (9)")) << m;
  m = message({Kind::kInterleaved, 4, 2, 12, 5});
  EXPECT_TRUE(contains(m, "the last group of micro-batches (12 % microbatch_group_size_per_vp_stage 5 = 2) must be "
                          "empty or at least pipeline_model_parallel_size (4)"))
      << m;
  m = message({Kind::k1F1B, 4, 2, 8, 0});
  EXPECT_TRUE(contains(m, "1f1b pipeline schedule: the number of model chunks per stage (2) must be 1")) << m;
  m = message({Kind::kGPipe, 4, 3, 8, 0});
  EXPECT_TRUE(contains(m, "gpipe pipeline schedule: the number of model chunks per stage (3) must be 1")) << m;
  m = message({Kind::kNone, 2, 1, 8, 0});
  EXPECT_TRUE(contains(m, "none pipeline schedule: pipeline_model_parallel_size (2) must be 1")) << m;
  m = message({Kind::k1F1B, 0, 1, 8, 0});
  EXPECT_TRUE(contains(m, "pipeline_model_parallel_size (0) must be at least 1")) << m;
  m = message({Kind::k1F1B, 2, 1, 0, 0});
  EXPECT_TRUE(contains(m, "the number of micro-batches (0) must be at least 1")) << m;
  m = message({Kind::kInterleaved, 2, 0, 4, 0});
  EXPECT_TRUE(contains(m, "the number of model chunks per stage (0) must be at least 1")) << m;
  m = message({Kind::kInterleaved, 2, 2, 4, -1});
  EXPECT_TRUE(contains(m, "microbatch_group_size_per_vp_stage (-1) must be at least 1")) << m;

  // The edges that are allowed: G = P, G = M, a last group of exactly P.
  check_schedule({Kind::kInterleaved, 4, 2, 8, 4});
  check_schedule({Kind::kInterleaved, 4, 2, 8, 8});
  check_schedule({Kind::kInterleaved, 4, 2, 12, 8});
  // Every entry point checks the spec; pipeline_schedule also checks the stage.
  EXPECT_EQ(error_of([] { pipeline_schedule({Kind::kInterleaved, 4, 2, 6, 0}, 0); }).status(), Status::kInvalidConfig);
  EXPECT_EQ(error_of([] { simulate({Kind::kInterleaved, 4, 2, 6, 0}); }).status(), Status::kInvalidConfig);
  EXPECT_EQ(error_of([] { render_timeline({Kind::k1F1B, 2, 2, 4, 0}); }).status(), Status::kInvalidConfig);
  EXPECT_EQ(error_of([] { pipeline_schedule({Kind::k1F1B, 4, 1, 8, 0}, 4); }).status(), Status::kInvalidArgument);
  EXPECT_EQ(error_of([] { pipeline_schedule({Kind::k1F1B, 4, 1, 8, 0}, -1); }).status(), Status::kInvalidArgument);
}

// P=2, M=4, 1F1B, worked out by hand: stage 0 runs F0 F1 B0 F2 B1 F3 B2 B3, stage 1 runs
// F0 B0 F1 B1 F2 B2 F3 B3. Stage 1's F0 waits for stage 0's F0 (t=1); stage 0's B0 waits
// for stage 1's B0 (t=2, so t=3); B3 on stage 1 runs at t=8, on stage 0 at t=9. Ten units;
// each stage idles 2, so the bubble is 4 / 16 = (P-1)/M = 0.25.
TEST(PipelineSchedule, RenderTimelineSmallCase) {
  EXPECT_EQ(render_timeline({Kind::k1F1B, 2, 1, 4, 0}),
            "stage 0: F0 F1 .. B0 F2 B1 F3 B2 .. B3\n"
            "stage 1: .. F0 B0 F1 B1 F2 B2 F3 B3 ..\n"
            "bubble fraction: 0.25 (idle 4 / busy 16 time units)\n");
  const Simulation sim = simulate({Kind::k1F1B, 2, 1, 4, 0});
  EXPECT_EQ(sim.makespan, 10);
  EXPECT_EQ(sim.start[0], (std::vector<int64_t>{0, 1, 3, 4, 5, 6, 7, 9}));
  EXPECT_EQ(sim.start[1], (std::vector<int64_t>{1, 2, 3, 4, 5, 6, 7, 8}));
}

// Chunk letters, one cell width for all, and stage numbers padded when P >= 10.
TEST(PipelineSchedule, RenderTimelineCellsAndLabels) {
  // P=2, V=2, M=2 (G=2), worked out by hand: stage 0 runs F0a F1a F0b F1b B0b B1b B0a B1a
  // (all forwards first: warm-up 1*2 + 1*2 = 4), stage 1 runs F0a F1a F0b B0b F1b B1b B0a B1a.
  EXPECT_EQ(render_timeline({Kind::kInterleaved, 2, 2, 2, 0}),
            "stage 0: F0a F1a F0b F1b ... B0b ... B1b B0a B1a\n"
            "stage 1: ... F0a F1a F0b B0b F1b B1b B0a B1a ...\n"
            "bubble fraction: 0.25 (idle 4 / busy 16 time units)\n");
  const std::string text = render_timeline({Kind::k1F1B, 11, 1, 11, 0});
  EXPECT_EQ(text.substr(0, 12), "stage  0: F0");
  EXPECT_TRUE(contains(text, "\nstage 10: ... ...")) << text;
  EXPECT_TRUE(contains(text, " F10 ")) << text;
  EXPECT_TRUE(contains(text, " F0  ")) << text;  // short cells padded to the width of "F10"
}

TEST(PipelineSchedule, SimulationIsFastForLargeSchedules) {
  const auto begin = std::chrono::steady_clock::now();
  const Simulation sim = simulate({Kind::kInterleaved, 8, 4, 64, 0});
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - begin).count();
  EXPECT_NEAR(sim.bubble_fraction(), 7.0 / 256.0, 1e-12);
  EXPECT_LT(seconds, 0.5);
}

TEST(PipelineSchedule, Names) {
  EXPECT_STREQ(schedule_name(Kind::kNone), "none");
  EXPECT_STREQ(schedule_name(Kind::kGPipe), "gpipe");
  EXPECT_STREQ(schedule_name(Kind::k1F1B), "1f1b");
  EXPECT_STREQ(schedule_name(Kind::kInterleaved), "interleaved");
}

}  // namespace
}  // namespace mpt::parallel
