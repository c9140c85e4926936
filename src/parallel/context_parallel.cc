#include "parallel/context_parallel.h"

#include <algorithm>
#include <initializer_list>
#include <memory>
#include <utility>

#include "core/error.h"

namespace mpt::parallel {

namespace {

using backend::AttentionDims;
using backend::Ops;
using backend::SeqPositions;
using WorkPtr = std::shared_ptr<dist::Work>;

// One tag per kind of message, so that the forward ring, the backward ring and the dK/dV
// accumulators never match each other's messages (with CP = 2 both neighbours are one rank).
constexpr int64_t kTagForwardKV = 0x4350'01;
constexpr int64_t kTagBackwardKV = 0x4350'02;
constexpr int64_t kTagGradKV = 0x4350'03;

void wait(WorkPtr& w) {
  if (w) w->wait();
  w.reset();
}

// `count` rows of `width` elements of `dtype` starting at row `first` of the array at `base`.
Tensor rows(void* base, DType dtype, int64_t width, int64_t first, int64_t count) {
  return Tensor(static_cast<char*>(base) + static_cast<size_t>(first * width) * dtype_size(dtype), dtype,
                {count, width});
}
Tensor rows(Tensor t, int64_t first, int64_t count) { return rows(t.data, t.dtype, t.dim(-1), first, count); }

// Hands out consecutive typed areas of a workspace (each aligned to 16 bytes); with a null
// base it only adds up the bytes (workspace_bytes).
struct Carve {
  char* at;
  int64_t used = 0;
  void* take(int64_t numel, DType dtype) {
    void* p = at ? at + used : nullptr;
    used += (numel * static_cast<int64_t>(dtype_size(dtype)) + 15) / 16 * 16;
    return p;
  }
};

// A rank's K and V (or their gradients) packed as [k rows; v rows], so that one message
// carries both.
struct PackedKV {
  void* data;
  DType dtype;
  int64_t tokens;  // rows of k (and of v)
  int64_t width;   // groups * head_dim
  Tensor k(int64_t first, int64_t count) const { return rows(data, dtype, width, first, count); }
  Tensor v(int64_t first, int64_t count) const { return rows(data, dtype, width, tokens + first, count); }
  Tensor k() const { return k(0, tokens); }
  Tensor v() const { return v(0, tokens); }
  Tensor all() const { return rows(data, dtype, width, 0, 2 * tokens); }
  int64_t numel() const { return 2 * tokens * width; }
};

// This rank's share of the sequence: chunks `rank` and 2*cp-1-rank of c positions each.
struct Split {
  int64_t cp, rank;
  int64_t chunk;     // c
  int64_t batch;
  int64_t heads, head_dim, kv_width;
  DType dtype;       // of q, k, v, out and their gradients (lse is f32)

  int64_t chunk_rows() const { return chunk * batch; }
  int64_t tokens() const { return 2 * chunk_rows(); }
  int64_t seq() const { return 2 * cp * chunk; }
  int64_t q_width() const { return heads * head_dim; }
  int64_t kv_numel() const { return tokens() * kv_width; }  // of k alone
  PackedKV packed(void* at) const { return PackedKV{at, dtype, tokens(), kv_width}; }
  PackedKV take_packed(Carve& w) const { return packed(w.take(2 * kv_numel(), dtype)); }
  // The global chunk holding half h (0, 1) of rank p's positions.
  int64_t global_chunk(int64_t p, int64_t h) const { return h == 0 ? p : 2 * cp - 1 - p; }
};

// The workspace areas of each direction and exchange, carved in the same order by the
// code below and by workspace_bytes.
struct RingForwardAreas {
  PackedKV kv[2];
  void* part_out;   // [tokens, q_width]
  float* part_lse;  // [tokens, heads]
  RingForwardAreas(const Split& s, Carve& w)
      : kv{s.take_packed(w), s.take_packed(w)},
        part_out(w.take(s.tokens() * s.q_width(), s.dtype)),
        part_lse(static_cast<float*>(w.take(s.tokens() * s.heads, DType::kF32))) {}
};
struct RingBackwardAreas {
  PackedKV kv[2], acc[2], part;  // K/V in flight, dK/dV accumulators, one block's dK/dV
  void* dq_part;                 // [tokens, q_width]
  RingBackwardAreas(const Split& s, Carve& w)
      : kv{s.take_packed(w), s.take_packed(w)},
        acc{s.take_packed(w), s.take_packed(w)},
        part(s.take_packed(w)),
        dq_part(w.take(s.tokens() * s.q_width(), s.dtype)) {}
};
// The gathered blocks (rank-major), the whole sequence's K and V in global order and, for
// backward, their gradients.
struct GatherAreas {
  void* gathered;
  void* keys;
  void* values;
  void* dkeys = nullptr;
  void* dvalues = nullptr;
  GatherAreas(const Split& s, Carve& w, bool backward)
      : gathered(w.take(2 * s.cp * s.kv_numel(), s.dtype)),
        keys(w.take(s.cp * s.kv_numel(), s.dtype)),
        values(w.take(s.cp * s.kv_numel(), s.dtype)) {
    if (backward) {
      dkeys = w.take(s.cp * s.kv_numel(), s.dtype);
      dvalues = w.take(s.cp * s.kv_numel(), s.dtype);
    }
  }
};

void check_tensor(const char* op, const char* name, const Tensor& t, int64_t numel, DType dtype) {
  MPT_CHECK(t.dtype == dtype, Status::kInvalidArgument, "context-parallel ", op, ": ", name, " must be ",
            dtype_name(dtype), ", got ", dtype_name(t.dtype));
  MPT_CHECK(t.numel() == numel, Status::kInvalidArgument, "context-parallel ", op, ": ", name, " has ", t.numel(),
            " elements, expected ", numel);
  MPT_CHECK(t.data != nullptr || numel == 0, Status::kInvalidArgument, "context-parallel ", op, ": ", name,
            " has no data");
}

// Checks what the ring relies on before any message is posted, so that no op throws
// while a transfer is in flight.
void check_dims(const char* op, const AttentionDims& d, int64_t cp) {
  MPT_CHECK(d.causal, Status::kInvalidArgument, "context-parallel ", op,
            ": AttentionDims.causal is false; context parallelism splits causal self-attention only");
  MPT_CHECK(d.seq_q == d.seq_kv, Status::kInvalidArgument, "context-parallel ", op, ": seq_q (", d.seq_q,
            ") and seq_kv (", d.seq_kv, ") must be equal: both are this rank's local positions");
  MPT_CHECK(d.seq_q > 0 && d.batch > 0 && d.heads > 0 && d.groups > 0 && d.head_dim > 0, Status::kInvalidArgument,
            "context-parallel ", op, ": dims must be positive: seq_q ", d.seq_q, ", batch ", d.batch, ", heads ",
            d.heads, ", groups ", d.groups, ", head_dim ", d.head_dim);
  MPT_CHECK(d.heads % d.groups == 0, Status::kInvalidArgument, "context-parallel ", op, ": heads (", d.heads,
            ") must be a multiple of groups (", d.groups, ")");
  MPT_CHECK(d.dropout_p >= 0 && d.dropout_p < 1, Status::kInvalidArgument, "context-parallel ", op, ": dropout_p (",
            d.dropout_p, ") must be in [0, 1)");
  MPT_CHECK(d.softmax_scale > 0, Status::kInvalidArgument, "context-parallel ", op, ": softmax_scale (",
            d.softmax_scale, ") must be positive");
  MPT_CHECK(cp == 1 || d.seq_q % 2 == 0, Status::kInvalidArgument, "context-parallel ", op,
            ": the local sequence length seq_q (", d.seq_q, ") must be even: each rank holds two chunks of the ",
            2 * cp, " the sequence is cut into (context_parallel_size ", cp, ")");
}

void check_workspace(const char* op, const Tensor& workspace, int64_t needed) {
  MPT_CHECK(static_cast<int64_t>(workspace.bytes()) >= needed && workspace.data != nullptr, Status::kInvalidArgument,
            "context-parallel ", op, ": workspace holds ", workspace.bytes(), " bytes, needs at least ", needed,
            " (workspace_bytes)");
}

// --- ring ("p2p") ------------------------------------------------------------------------

void ring_forward(Ops& ops, dist::Communicator& comm, const Split& s, char* ws, Tensor out, Tensor lse, Tensor q,
                  Tensor k, Tensor v, const AttentionDims& local) {
  const int64_t P = s.cp, r = s.rank, c = s.chunk, cb = s.chunk_rows();
  const int64_t next = (r + 1) % P, prev = (r + P - 1) % P;
  Carve w{ws};
  const RingForwardAreas a(s, w);
  const PackedKV* kv = a.kv;

  ops.copy(kv[0].k(), k);
  ops.copy(kv[0].v(), v);
  WorkPtr sent[2], received;
  for (int64_t i = 0; i < P; ++i) {
    const int64_t cur = i % 2, j = (r - i + P) % P;
    wait(received);
    // The block to pass on is complete, and the other buffer's last reader is done.
    ops.synchronize();
    if (i + 1 < P) {
      wait(sent[1 - cur]);
      sent[cur] = comm.send_async(kv[cur].data, kv[cur].numel(), s.dtype, next, kTagForwardKV);
      received = comm.recv_async(kv[1 - cur].data, kv[1 - cur].numel(), s.dtype, prev, kTagForwardKV);
    }
    if (j == r) {  // the diagonal: causal over the local keys, straight into out and lse
      ops.attention_fwd(out, lse, q, k, v, local);
      continue;
    }
    AttentionDims d = local;
    d.causal = false;  // every key of the block is visible to the queries it is paired with
    if (j < r) {       // both query chunks over key chunk j
      d.seq_kv = c;
      d.kv_pos = SeqPositions{j * c};
      const Tensor po = rows(a.part_out, s.dtype, s.q_width(), 0, s.tokens());
      const Tensor pl = rows(a.part_lse, DType::kF32, s.heads, 0, s.tokens());
      ops.attention_fwd(po, pl, q, kv[cur].k(0, cb), kv[cur].v(0, cb), d);
      ops.attention_merge(out, lse, po, pl, s.heads, s.head_dim);
    } else {           // the second query chunk over both key chunks of block j
      d.seq_q = c;
      d.q_pos = SeqPositions{s.global_chunk(r, 1) * c};
      d.kv_pos = SeqPositions{j * c, c, s.global_chunk(j, 1) * c};
      const Tensor po = rows(a.part_out, s.dtype, s.q_width(), 0, cb);
      const Tensor pl = rows(a.part_lse, DType::kF32, s.heads, 0, cb);
      ops.attention_fwd(po, pl, rows(q, cb, cb), kv[cur].k(), kv[cur].v(), d);
      ops.attention_merge(rows(out, cb, cb), rows(lse, cb, cb), po, pl, s.heads, s.head_dim);
    }
  }
  wait(sent[0]);
  wait(sent[1]);
}

void ring_backward(Ops& ops, dist::Communicator& comm, const Split& s, char* ws, Tensor dq, Tensor dk, Tensor dv,
                   Tensor dout, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, const AttentionDims& local) {
  const int64_t P = s.cp, r = s.rank, c = s.chunk, cb = s.chunk_rows();
  const int64_t next = (r + 1) % P, prev = (r + P - 1) % P;
  Carve w{ws};
  const RingBackwardAreas a(s, w);
  const PackedKV *kv = a.kv, *acc = a.acc;
  const PackedKV& part = a.part;

  ops.copy(kv[0].k(), k);
  ops.copy(kv[0].v(), v);
  WorkPtr kv_sent[2], kv_received, acc_sent[2], acc_received;
  for (int64_t i = 0; i < P; ++i) {
    const int64_t cur = i % 2, j = (r + i) % P;  // blocks travel to rank r-1
    wait(kv_received);
    ops.synchronize();
    if (i + 1 < P) {
      wait(kv_sent[1 - cur]);
      kv_sent[cur] = comm.send_async(kv[cur].data, kv[cur].numel(), s.dtype, prev, kTagBackwardKV);
      kv_received = comm.recv_async(kv[1 - cur].data, kv[1 - cur].numel(), s.dtype, next, kTagBackwardKV);
    }
    if (j == r) {  // the diagonal starts this rank's own accumulator and dq
      ops.attention_bwd(dq, acc[cur].k(), acc[cur].v(), dout, q, k, v, out, lse, local);
    } else {
      AttentionDims d = local;
      d.causal = false;
      if (j < r) {  // both query chunks over key chunk j: the first half of the block's rows
        d.seq_kv = c;
        d.kv_pos = SeqPositions{j * c};
        const Tensor pdq = rows(a.dq_part, s.dtype, s.q_width(), 0, s.tokens());
        ops.attention_bwd(pdq, part.k(0, cb), part.v(0, cb), dout, q, kv[cur].k(0, cb), kv[cur].v(0, cb), out, lse,
                          d);
        ops.add_inplace(dq, pdq);
        wait(acc_received);
        ops.add_inplace(acc[cur].k(0, cb), part.k(0, cb));
        ops.add_inplace(acc[cur].v(0, cb), part.v(0, cb));
      } else {      // the second query chunk over the whole block
        d.seq_q = c;
        d.q_pos = SeqPositions{s.global_chunk(r, 1) * c};
        d.kv_pos = SeqPositions{j * c, c, s.global_chunk(j, 1) * c};
        const Tensor pdq = rows(a.dq_part, s.dtype, s.q_width(), 0, cb);
        ops.attention_bwd(pdq, part.k(), part.v(), rows(dout, cb, cb), rows(q, cb, cb), kv[cur].k(), kv[cur].v(),
                          rows(out, cb, cb), rows(lse, cb, cb), d);
        ops.add_inplace(rows(dq, cb, cb), pdq);
        wait(acc_received);
        ops.add_inplace(acc[cur].all(), part.all());
      }
    }
    // Pass the accumulator on and take the next one (after the last step: this rank's own).
    ops.synchronize();
    wait(acc_sent[1 - cur]);
    acc_sent[cur] = comm.send_async(acc[cur].data, acc[cur].numel(), s.dtype, prev, kTagGradKV);
    acc_received = comm.recv_async(acc[1 - cur].data, acc[1 - cur].numel(), s.dtype, next, kTagGradKV);
  }
  wait(acc_received);
  const PackedKV& mine = acc[P % 2];
  ops.copy(dk, mine.k());
  ops.copy(dv, mine.v());
  wait(kv_sent[0]);
  wait(kv_sent[1]);
  wait(acc_sent[0]);
  wait(acc_sent[1]);
}

// --- all-gather ------------------------------------------------------------------------

// All-gathers every rank's packed K/V into `gathered` (rank-major) and puts it in global
// chunk order in `keys` and `values` ([S*B, kv_width] each).
void gather_sequence(Ops& ops, dist::Communicator& comm, const Split& s, const GatherAreas& a, Tensor k, Tensor v) {
  const int64_t cb = s.chunk_rows(), w = s.kv_width;
  auto block = [&](int64_t p) { return s.packed(rows(a.gathered, s.dtype, 2 * s.kv_numel(), p, 1).data); };
  const PackedKV mine = block(s.rank);
  ops.copy(mine.k(), k);
  ops.copy(mine.v(), v);
  ops.synchronize();
  comm.all_gather(mine.data, a.gathered, mine.numel(), s.dtype);
  for (int64_t p = 0; p < s.cp; ++p) {
    for (int64_t h = 0; h < 2; ++h) {
      const int64_t g = s.global_chunk(p, h);
      ops.copy(rows(a.keys, s.dtype, w, g * cb, cb), block(p).k(h * cb, cb));
      ops.copy(rows(a.values, s.dtype, w, g * cb, cb), block(p).v(h * cb, cb));
    }
  }
}

// The call of local query chunk h (0, 1): causal, bottom-right, over the keys up to its end.
AttentionDims chunk_dims(const Split& s, int64_t h, const AttentionDims& local) {
  AttentionDims d = local;
  const int64_t g = s.global_chunk(s.rank, h);
  d.seq_q = s.chunk;
  d.seq_kv = (g + 1) * s.chunk;
  d.q_pos = SeqPositions{g * s.chunk};
  d.kv_pos = SeqPositions{};
  return d;
}

void all_gather_forward(Ops& ops, dist::Communicator& comm, const Split& s, char* ws, Tensor out, Tensor lse,
                        Tensor q, Tensor k, Tensor v, const AttentionDims& local) {
  const int64_t cb = s.chunk_rows(), w = s.kv_width;
  Carve carve{ws};
  const GatherAreas a(s, carve, false);
  gather_sequence(ops, comm, s, a, k, v);
  for (int64_t h = 0; h < 2; ++h) {
    const AttentionDims d = chunk_dims(s, h, local);
    const int64_t n = d.seq_kv * s.batch;
    ops.attention_fwd(rows(out, h * cb, cb), rows(lse, h * cb, cb), rows(q, h * cb, cb),
                      rows(a.keys, s.dtype, w, 0, n), rows(a.values, s.dtype, w, 0, n), d);
  }
}

void all_gather_backward(Ops& ops, dist::Communicator& comm, const Split& s, char* ws, Tensor dq, Tensor dk,
                         Tensor dv, Tensor dout, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse,
                         const AttentionDims& local) {
  const int64_t cb = s.chunk_rows(), w = s.kv_width, seq_rows = s.seq() * s.batch;
  Carve carve{ws};
  const GatherAreas a(s, carve, true);
  const DType dt = s.dtype;
  void* const gathered = a.gathered;
  void* const keys = a.keys;
  void* const values = a.values;
  void* const dkeys = a.dkeys;
  void* const dvalues = a.dvalues;
  gather_sequence(ops, comm, s, a, k, v);

  // The second chunk's key prefix is the longer one: its gradients go straight into the
  // whole-sequence buffers; the first chunk's are computed aside (in `gathered`, free
  // now) and added.
  const AttentionDims d1 = chunk_dims(s, 1, local), d0 = chunk_dims(s, 0, local);
  const int64_t n1 = d1.seq_kv * s.batch, n0 = d0.seq_kv * s.batch;
  ops.attention_bwd(rows(dq, cb, cb), rows(dkeys, dt, w, 0, n1), rows(dvalues, dt, w, 0, n1), rows(dout, cb, cb),
                    rows(q, cb, cb), rows(keys, dt, w, 0, n1), rows(values, dt, w, 0, n1), rows(out, cb, cb),
                    rows(lse, cb, cb), d1);
  if (n1 < seq_rows) {
    ops.fill(rows(dkeys, dt, w, n1, seq_rows - n1), 0.0f);
    ops.fill(rows(dvalues, dt, w, n1, seq_rows - n1), 0.0f);
  }
  const Tensor dk0 = rows(gathered, dt, w, 0, n0), dv0 = rows(gathered, dt, w, n0, n0);
  ops.attention_bwd(rows(dq, 0, cb), dk0, dv0, rows(dout, 0, cb), rows(q, 0, cb), rows(keys, dt, w, 0, n0),
                    rows(values, dt, w, 0, n0), rows(out, 0, cb), rows(lse, 0, cb), d0);
  ops.add_inplace(rows(dkeys, dt, w, 0, n0), dk0);
  ops.add_inplace(rows(dvalues, dt, w, 0, n0), dv0);

  // Back to rank-major packed blocks, summed over the group into their owners.
  for (int64_t p = 0; p < s.cp; ++p) {
    const PackedKV block = s.packed(rows(gathered, dt, 2 * s.kv_numel(), p, 1).data);
    for (int64_t h = 0; h < 2; ++h) {
      const int64_t g = s.global_chunk(p, h);
      ops.copy(block.k(h * cb, cb), rows(dkeys, dt, w, g * cb, cb));
      ops.copy(block.v(h * cb, cb), rows(dvalues, dt, w, g * cb, cb));
    }
  }
  ops.synchronize();
  const PackedKV mine = s.packed(keys);  // the gathered K/V are no longer needed
  comm.reduce_scatter(gathered, mine.data, mine.numel(), dt, dist::ReduceOp::kSum);
  ops.copy(dk, mine.k());
  ops.copy(dv, mine.v());
}

// What both directions check and derive before any message is posted: the arguments'
// shapes, this rank's split, and the local call's dims with the dropout positions set.
struct Call {
  Split s;
  AttentionDims local;
  int64_t tokens;
  // The arguments as [tokens, width] rows.
  Tensor q(Tensor t) const { return rows(t.data, t.dtype, s.q_width(), 0, tokens); }
  Tensor kv(Tensor t) const { return rows(t.data, t.dtype, s.kv_width, 0, tokens); }
  Tensor lse(Tensor t) const { return rows(t.data, t.dtype, s.heads, 0, tokens); }
};

using Named = std::pair<const char*, Tensor>;

Call prepare(const char* op, const ContextParallel& cp, const AttentionDims& d, const Tensor& workspace,
             std::initializer_list<Named> q_like, std::initializer_list<Named> kv_like, const Tensor& lse) {
  const int64_t tokens = d.seq_q * d.batch;
  const DType dtype = q_like.begin()->second.dtype;
  for (const Named& t : q_like) check_tensor(op, t.first, t.second, tokens * d.heads * d.head_dim, dtype);
  for (const Named& t : kv_like) check_tensor(op, t.first, t.second, tokens * d.groups * d.head_dim, dtype);
  check_tensor(op, "lse", lse, tokens * d.heads, DType::kF32);
  check_workspace(op, workspace, cp.workspace_bytes(d, dtype));
  Call c{Split{cp.size(), cp.rank(), d.seq_q / 2, d.batch, d.heads, d.head_dim, d.groups * d.head_dim, dtype}, d,
         tokens};
  c.local.q_pos = c.local.kv_pos = cp.local_positions(d.seq_q);
  c.local.mask_seq = c.s.seq();
  return c;
}

}  // namespace

CpCommType parse_cp_comm_type(const std::string& name) {
  if (name == "p2p") return CpCommType::kP2P;
  if (name == "all_gather") return CpCommType::kAllGather;
  MPT_CHECK(name != "a2a" && name != "a2a+p2p", Status::kInvalidConfig, "model.cp_comm_type: '", name,
            "' is not supported (a2a and a2a+p2p are not built); choose p2p or all_gather");
  fail(Status::kInvalidConfig, "model.cp_comm_type: unknown value '", name, "' (p2p, all_gather)");
}

ContextParallel::ContextParallel(dist::Communicator* comm, CpCommType type)
    : comm_(comm != nullptr && comm->size() > 1 ? comm : nullptr), type_(type) {}

int64_t ContextParallel::position(int64_t s, int64_t local_seq) const {
  if (size() == 1) return s;
  MPT_CHECK(local_seq % 2 == 0 && s >= 0 && s < local_seq, Status::kInvalidArgument,
            "context-parallel position: local position ", s, " must lie in [0, local_seq) with local_seq (",
            local_seq, ") even");
  const int64_t c = local_seq / 2;
  return s < c ? rank() * c + s : (2 * size() - 1 - rank()) * c + (s - c);
}

backend::SeqPositions ContextParallel::local_positions(int64_t local_seq) const {
  if (size() == 1) return SeqPositions{};
  MPT_CHECK(local_seq % 2 == 0, Status::kInvalidArgument, "context-parallel local_positions: local_seq (", local_seq,
            ") must be even");
  const int64_t c = local_seq / 2;
  return SeqPositions{rank() * c, c, (2 * size() - 1 - rank()) * c};
}

int64_t ContextParallel::workspace_bytes(const backend::AttentionDims& d, DType dtype) const {
  if (size() == 1) return 0;
  const Split s{size(), rank(), d.seq_q / 2, d.batch, d.heads, d.head_dim, d.groups * d.head_dim, dtype};
  Carve forward{nullptr}, backward{nullptr};
  if (type_ == CpCommType::kAllGather) {
    (void)GatherAreas(s, forward, false);
    (void)GatherAreas(s, backward, true);
  } else {
    (void)RingForwardAreas(s, forward);
    (void)RingBackwardAreas(s, backward);
  }
  return std::max(forward.used, backward.used);
}

void ContextParallel::attention_forward(backend::Ops& ops, Tensor workspace, Tensor out, Tensor lse, Tensor q,
                                        Tensor k, Tensor v, const backend::AttentionDims& d) const {
  const char* op = "attention_forward";
  check_dims(op, d, size());
  if (size() == 1) {
    ops.attention_fwd(out, lse, q, k, v, d);
    return;
  }
  const Call c = prepare(op, *this, d, workspace, {{"q", q}, {"out", out}}, {{"k", k}, {"v", v}}, lse);
  if (type_ == CpCommType::kAllGather)
    all_gather_forward(ops, *comm_, c.s, static_cast<char*>(workspace.data), c.q(out), c.lse(lse), c.q(q), c.kv(k), c.kv(v), c.local);
  else
    ring_forward(ops, *comm_, c.s, static_cast<char*>(workspace.data), c.q(out), c.lse(lse), c.q(q), c.kv(k), c.kv(v), c.local);
}

void ContextParallel::attention_backward(backend::Ops& ops, Tensor workspace, Tensor dq, Tensor dk, Tensor dv,
                                         Tensor dout, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse,
                                         const backend::AttentionDims& d) const {
  const char* op = "attention_backward";
  check_dims(op, d, size());
  if (size() == 1) {
    ops.attention_bwd(dq, dk, dv, dout, q, k, v, out, lse, d);
    return;
  }
  const Call c = prepare(op, *this, d, workspace, {{"q", q}, {"out", out}, {"dout", dout}, {"dq", dq}},
                         {{"k", k}, {"v", v}, {"dk", dk}, {"dv", dv}}, lse);
  if (type_ == CpCommType::kAllGather)
    all_gather_backward(ops, *comm_, c.s, static_cast<char*>(workspace.data), c.q(dq), c.kv(dk), c.kv(dv), c.q(dout), c.q(q), c.kv(k),
                        c.kv(v), c.q(out), c.lse(lse), c.local);
  else
    ring_backward(ops, *comm_, c.s, static_cast<char*>(workspace.data), c.q(dq), c.kv(dk), c.kv(dv), c.q(dout), c.q(q), c.kv(k), c.kv(v),
                  c.q(out), c.lse(lse), c.local);
}

}  // namespace mpt::parallel
