// Context-parallel attention with ranks as threads: for CP 2-4, both comm types, GQA and
// dropout, each rank's out, lse, dq, dk, dv equal the rows of one attention call over the
// whole sequence; the bytes sent equal the header's volumes; bad arguments are rejected
// before any message; one rank is the plain op bit for bit.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "backend/ops.h"
#include "dist_threads.h"
#include "parallel/context_parallel.h"
#include "test_errors.h"
#include "test_ops_util.h"

namespace mpt::parallel {
namespace {

using backend::AttentionDims;
using dist::testing::RankEnv;
using dist::testing::run_ranks;
using dist::testing::world_comm;
using test::random_vector;
using test::view;

// Workspace sizes in f32 elements (the areas are multiples of 16 bytes).
int64_t ws_numel(const ContextParallel& cp, const AttentionDims& d) { return cp.workspace_bytes(d, DType::kF32) / 4; }

struct Case {
  int64_t cp;
  CpCommType type;
  float dropout_p = 0;
  int64_t head_offset = 0;
  int64_t chunk = 3;  // positions per chunk: the sequence is 2 * cp * chunk
  int64_t batch = 2, heads = 4, groups = 2, head_dim = 8;
};

std::string describe(const Case& c) {
  return str("cp ", c.cp, " ", c.type == CpCommType::kP2P ? "p2p" : "all_gather", " dropout ", c.dropout_p,
             " head_offset ", c.head_offset);
}

AttentionDims dims_of(const Case& c, int64_t seq) {
  AttentionDims d;
  d.seq_q = d.seq_kv = seq;
  d.batch = c.batch;
  d.heads = c.heads;
  d.groups = c.groups;
  d.head_dim = c.head_dim;
  d.softmax_scale = 1.0f / std::sqrt(static_cast<float>(c.head_dim));
  d.causal = true;
  d.dropout_p = c.dropout_p;
  d.dropout_key = 0x5eed;
  d.head_offset = c.head_offset;
  return d;
}

// The whole sequence's inputs and one call's outputs and gradients over it.
struct Whole {
  std::vector<float> q, k, v, dout, out, lse, dq, dk, dv;
};

Whole reference(const Case& c) {
  const int64_t seq = 2 * c.cp * c.chunk, tokens = seq * c.batch;
  const int64_t qw = c.heads * c.head_dim, kw = c.groups * c.head_dim;
  const AttentionDims d = dims_of(c, seq);
  Whole w;
  w.q = random_vector(tokens * qw, 11);
  w.k = random_vector(tokens * kw, 12);
  w.v = random_vector(tokens * kw, 13);
  w.dout = random_vector(tokens * qw, 14);
  w.out.resize(w.q.size());
  w.lse.resize(static_cast<size_t>(tokens * c.heads));
  w.dq.resize(w.q.size());
  w.dk.resize(w.k.size());
  w.dv.resize(w.v.size());
  auto ops = backend::make_cpu_ops(1);
  ops->attention_fwd(view(w.out, {tokens, qw}), view(w.lse, {tokens, c.heads}), view(w.q, {tokens, qw}),
                     view(w.k, {tokens, kw}), view(w.v, {tokens, kw}), d);
  ops->attention_bwd(view(w.dq, {tokens, qw}), view(w.dk, {tokens, kw}), view(w.dv, {tokens, kw}),
                     view(w.dout, {tokens, qw}), view(w.q, {tokens, qw}), view(w.k, {tokens, kw}),
                     view(w.v, {tokens, kw}), view(w.out, {tokens, qw}), view(w.lse, {tokens, c.heads}), d);
  return w;
}

// Rank r's rows of a token-major array: global chunks r and 2*cp-1-r, chunk_rows rows each.
std::vector<float> local_rows(const std::vector<float>& whole, int64_t width, int64_t cp, int64_t rank,
                              int64_t chunk_rows) {
  std::vector<float> mine;
  for (int64_t g : {rank, 2 * cp - 1 - rank}) {
    auto first = whole.begin() + g * chunk_rows * width;
    mine.insert(mine.end(), first, first + chunk_rows * width);
  }
  return mine;
}

void expect_close(const std::string& what, const std::vector<float>& got, const std::vector<float>& want) {
  ASSERT_EQ(got.size(), want.size()) << what;
  int64_t bad = 0;
  for (size_t i = 0; i < got.size(); ++i)
    if (!(std::fabs(got[i] - want[i]) <= 1e-5f) && ++bad <= 3)
      ADD_FAILURE() << what << "[" << i << "]: " << got[i] << " vs one-call " << want[i];
  EXPECT_EQ(bad, 0) << what << ": " << bad << " of " << got.size() << " elements differ";
}

// Bytes one rank sends per forward and backward (header): KV = 2 * tokens * kv_width * 4.
struct Volume {
  int64_t forward, backward;
};
Volume expected_volume(const Case& c) {
  const int64_t kv = 2 * (2 * c.chunk * c.batch) * (c.groups * c.head_dim) * 4;
  if (c.type == CpCommType::kP2P) return {(c.cp - 1) * kv, (c.cp - 1) * kv + c.cp * kv};
  return {(c.cp - 1) * kv, 2 * (c.cp - 1) * kv};
}

void check_against_one_call(const Case& c) {
  SCOPED_TRACE(describe(c));
  const Whole w = reference(c);
  const Volume volume = expected_volume(c);
  run_ranks(c.cp, [&](RankEnv& env) {
    auto comm = world_comm(env);
    auto ops = backend::make_cpu_ops(1);
    const ContextParallel cp(comm.get(), c.type);
    const int64_t local_seq = 2 * c.chunk, tokens = local_seq * c.batch, cb = c.chunk * c.batch;
    const int64_t qw = c.heads * c.head_dim, kw = c.groups * c.head_dim;
    const AttentionDims d = dims_of(c, local_seq);
    auto mine = [&](const std::vector<float>& whole, int64_t width) {
      return local_rows(whole, width, c.cp, env.rank, cb);
    };
    std::vector<float> q = mine(w.q, qw), k = mine(w.k, kw), v = mine(w.v, kw), dout = mine(w.dout, qw);
    std::vector<float> out(q.size()), lse(static_cast<size_t>(tokens * c.heads));
    std::vector<float> dq(q.size()), dk(k.size()), dv(v.size());
    std::vector<float> workspace(static_cast<size_t>(ws_numel(cp, d)));

    const int64_t before = comm->bytes_sent();
    cp.attention_forward(*ops, view(workspace, {ws_numel(cp, d)}), view(out, {tokens, qw}),
                         view(lse, {tokens, c.heads}), view(q, {tokens, qw}), view(k, {tokens, kw}),
                         view(v, {tokens, kw}), d);
    const int64_t after_forward = comm->bytes_sent();
    cp.attention_backward(*ops, view(workspace, {ws_numel(cp, d)}), view(dq, {tokens, qw}),
                          view(dk, {tokens, kw}), view(dv, {tokens, kw}), view(dout, {tokens, qw}),
                          view(q, {tokens, qw}), view(k, {tokens, kw}), view(v, {tokens, kw}),
                          view(out, {tokens, qw}), view(lse, {tokens, c.heads}), d);
    const int64_t after_backward = comm->bytes_sent();

    const std::string at = str(describe(c), " rank ", env.rank, ": ");
    expect_close(at + "out", out, mine(w.out, qw));
    expect_close(at + "lse", lse, mine(w.lse, c.heads));
    expect_close(at + "dq", dq, mine(w.dq, qw));
    expect_close(at + "dk", dk, mine(w.dk, kw));
    expect_close(at + "dv", dv, mine(w.dv, kw));
    EXPECT_EQ(after_forward - before, volume.forward) << at << "forward bytes";
    EXPECT_EQ(after_backward - after_forward, volume.backward) << at << "backward bytes";
  });
}

TEST(ContextParallelAttention, RingMatchesOneCallOverTheWholeSequence) {
  for (int64_t n : {2, 3, 4}) check_against_one_call(Case{n, CpCommType::kP2P});
}

TEST(ContextParallelAttention, AllGatherMatchesOneCallOverTheWholeSequence) {
  for (int64_t n : {2, 3, 4}) check_against_one_call(Case{n, CpCommType::kAllGather});
}

// Masks are keyed by global positions: any call that kept its local ones would differ.
TEST(ContextParallelAttention, DropoutMasksEqualTheOneCallMasks) {
  for (CpCommType type : {CpCommType::kP2P, CpCommType::kAllGather})
    for (int64_t n : {2, 3, 4}) check_against_one_call(Case{n, type, 0.2f, 3});
}

TEST(ContextParallelAttention, MultiHeadAndMultiQueryWithLongerChunks) {
  for (CpCommType type : {CpCommType::kP2P, CpCommType::kAllGather}) {
    Case mha{3, type, 0.1f, 1, 4};
    mha.groups = mha.heads;
    check_against_one_call(mha);
    Case mqa{2, type, 0, 0, 5, 1};
    mqa.groups = 1;
    check_against_one_call(mqa);
  }
}

TEST(ContextParallelSplit, RankKeepsChunksRAndTwoCpMinusOneMinusR) {
  run_ranks(3, [](RankEnv& env) {
    auto comm = world_comm(env);
    const ContextParallel cp(comm.get(), CpCommType::kP2P);
    // S = 12, c = 2: rank 0 holds {0,1, 10,11}, rank 1 {2,3, 8,9}, rank 2 {4,5, 6,7}.
    const std::vector<std::vector<int64_t>> expected = {{0, 1, 10, 11}, {2, 3, 8, 9}, {4, 5, 6, 7}};
    const backend::SeqPositions p = cp.local_positions(4);
    for (int64_t s = 0; s < 4; ++s) {
      EXPECT_EQ(cp.position(s, 4), expected[env.rank][s]) << "rank " << env.rank << " s " << s;
      EXPECT_EQ(p.at(s), expected[env.rank][s]) << "rank " << env.rank << " s " << s;
    }
  });
  const ContextParallel one;
  EXPECT_EQ(one.position(5, 8), 5);
  EXPECT_EQ(one.local_positions(8).at(7), 7);
  EXPECT_EQ(ws_numel(one, dims_of(Case{1, CpCommType::kP2P}, 8)), 0);
}

TEST(ContextParallelConfig, ParsesCommTypes) {
  EXPECT_EQ(parse_cp_comm_type("p2p"), CpCommType::kP2P);
  EXPECT_EQ(parse_cp_comm_type("all_gather"), CpCommType::kAllGather);
  for (const char* bad : {"a2a", "a2a+p2p", "ring", ""}) {
    const Error e = error_of([&] { parse_cp_comm_type(bad); });
    EXPECT_EQ(e.status(), Status::kInvalidConfig) << bad;
    EXPECT_TRUE(contains(e.what(), "model.cp_comm_type")) << e.what();
    EXPECT_TRUE(contains(e.what(), "p2p") && contains(e.what(), "all_gather")) << e.what();
  }
  EXPECT_TRUE(contains(error_of([] { parse_cp_comm_type("a2a"); }).what(), "not supported"));
}

TEST(ContextParallelErrors, RejectsBadArgumentsBeforeAnyMessage) {
  for (CpCommType type : {CpCommType::kP2P, CpCommType::kAllGather}) {
    run_ranks(2, [type](RankEnv& env) {
      auto comm = world_comm(env);
      auto ops = backend::make_cpu_ops(1);
      const ContextParallel cp(comm.get(), type);
      const Case c{2, type};
      const int64_t tokens = 6 * c.batch, qw = c.heads * c.head_dim, kw = c.groups * c.head_dim;
      std::vector<float> q(tokens * qw), k(tokens * kw), v(tokens * kw), out(tokens * qw), lse(tokens * c.heads);
      const AttentionDims good = dims_of(c, 6);
      std::vector<float> ws(static_cast<size_t>(ws_numel(cp, good)));
      auto forward = [&](const AttentionDims& d, int64_t ws_numel) {
        cp.attention_forward(*ops, view(ws, {ws_numel}), view(out, {tokens, qw}), view(lse, {tokens, c.heads}),
                             view(q, {tokens, qw}), view(k, {tokens, kw}), view(v, {tokens, kw}), d);
      };
      auto backward = [&](const AttentionDims& d, int64_t ws_numel) {
        cp.attention_backward(*ops, view(ws, {ws_numel}), view(q, {tokens, qw}), view(k, {tokens, kw}),
                              view(v, {tokens, kw}), view(out, {tokens, qw}), view(q, {tokens, qw}),
                              view(k, {tokens, kw}), view(v, {tokens, kw}), view(out, {tokens, qw}),
                              view(lse, {tokens, c.heads}), d);
      };
      const int64_t enough = ws_numel(cp, good);
      ASSERT_GT(enough, 0);
      auto expect_rejected = [&](const Error& e, const char* part) {
        EXPECT_EQ(e.status(), Status::kInvalidArgument) << e.what();
        EXPECT_TRUE(contains(e.what(), part)) << e.what();
      };
      expect_rejected(error_of([&] { forward(good, enough - 1); }), "workspace");
      expect_rejected(error_of([&] { backward(good, enough - 1); }), "workspace");
      AttentionDims not_causal = good;
      not_causal.causal = false;
      expect_rejected(error_of([&] { forward(not_causal, enough); }), "causal");
      expect_rejected(error_of([&] { backward(not_causal, enough); }), "causal");
      // An odd local sequence (tensors sized for it) cannot be cut into two chunks.
      AttentionDims odd = good;
      odd.seq_q = odd.seq_kv = 5;
      const int64_t odd_tokens = 5 * c.batch;
      std::vector<float> oq(odd_tokens * qw), ok(odd_tokens * kw), ov(odd_tokens * kw), oout(odd_tokens * qw),
          olse(odd_tokens * c.heads);
      expect_rejected(error_of([&] {
                        cp.attention_forward(*ops, view(ws, {enough}), view(oout, {odd_tokens, qw}),
                                             view(olse, {odd_tokens, c.heads}), view(oq, {odd_tokens, qw}),
                                             view(ok, {odd_tokens, kw}), view(ov, {odd_tokens, kw}), odd);
                      }),
                      "even");
      AttentionDims uneven = good;
      uneven.seq_kv = 4;
      expect_rejected(error_of([&] { forward(uneven, enough); }), "seq_kv");
      // A tensor of the wrong size is named.
      expect_rejected(error_of([&] {
                        cp.attention_forward(*ops, view(ws, {enough}), view(out, {tokens, qw}),
                                             view(lse, {tokens - 1, c.heads}), view(q, {tokens, qw}),
                                             view(k, {tokens, kw}), view(v, {tokens, kw}), good);
                      }),
                      "lse");
      // Nothing was sent, and the group still works.
      EXPECT_EQ(comm->bytes_sent(), 0);
      comm->barrier();
    });
  }
}

// At one rank (no group, or a group of one) attention is the plain op, d unchanged.
TEST(ContextParallelOneRank, IsThePlainOpBitForBit) {
  Case c{1, CpCommType::kP2P, 0.3f, 2, 4};
  const Whole w = reference(c);
  const int64_t seq = 2 * c.chunk, tokens = seq * c.batch, qw = c.heads * c.head_dim, kw = c.groups * c.head_dim;
  const AttentionDims d = dims_of(c, seq);
  auto check = [&](const ContextParallel& cp) {
    EXPECT_EQ(cp.size(), 1);
    EXPECT_EQ(ws_numel(cp, d), 0);
    auto ops = backend::make_cpu_ops(1);
    Whole in = w;
    std::vector<float> out(w.out.size()), lse(w.lse.size()), dq(w.dq.size()), dk(w.dk.size()), dv(w.dv.size());
    cp.attention_forward(*ops, Tensor(), view(out, {tokens, qw}), view(lse, {tokens, c.heads}),
                         view(in.q, {tokens, qw}), view(in.k, {tokens, kw}), view(in.v, {tokens, kw}), d);
    cp.attention_backward(*ops, Tensor(), view(dq, {tokens, qw}), view(dk, {tokens, kw}), view(dv, {tokens, kw}),
                          view(in.dout, {tokens, qw}), view(in.q, {tokens, qw}), view(in.k, {tokens, kw}),
                          view(in.v, {tokens, kw}), view(out, {tokens, qw}), view(lse, {tokens, c.heads}), d);
    auto same_bits = [](const std::vector<float>& a, const std::vector<float>& b) {
      return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
    };
    EXPECT_TRUE(same_bits(out, w.out));
    EXPECT_TRUE(same_bits(lse, w.lse));
    EXPECT_TRUE(same_bits(dq, w.dq));
    EXPECT_TRUE(same_bits(dk, w.dk));
    EXPECT_TRUE(same_bits(dv, w.dv));
  };
  check(ContextParallel());
  run_ranks(1, [&](RankEnv& env) {
    auto comm = world_comm(env);
    check(ContextParallel(comm.get(), CpCommType::kAllGather));
  });
}

}  // namespace
}  // namespace mpt::parallel
