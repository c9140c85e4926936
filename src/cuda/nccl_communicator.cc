// dist::Communicator over NCCL (see nccl_communicator.h for the semantics). The NCCL
// communicator is non-blocking (ncclConfig_t::blocking = 0): no NCCL call can hang the host,
// and every wait (creation, connection, completion) polls ncclCommGetAsyncError against the
// timeout, so a lost peer becomes an error instead of a hang. The group's state lives in
// nccl_group_internal.h; here are the Work handles, the operations and the creation.
#include "cuda/nccl_communicator.h"
#include "cuda/op_checks.h"

#include <cuda_runtime.h>
#include <nccl.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <exception>
#include <memory>
#include <mutex>
#include <utility>

#include "core/error.h"
#include "cuda/device.h"
#include "cuda/nccl_group_internal.h"
#include "dist/store.h"

#if NCCL_VERSION_CODE < NCCL_VERSION(2, 14, 0)
#error "the NCCL communicator needs NCCL 2.14 or newer (non-blocking communicators)"
#endif

namespace mpt::cuda {

namespace {

using dist::ReduceOp;
using namespace nccl_group;

constexpr int64_t kMaxTag = (int64_t{1} << 23) - 1;


const char* op_label(ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum: return "sum";
    case ReduceOp::kMax: return "max";
    case ReduceOp::kAvg: return "avg";
  }
  return "?";
}

// Every live communicator's state, so that a wait on any of them can first launch the
// sends and receives all of them hold back.
std::mutex& registry_mutex() {
  static std::mutex mu;
  return mu;
}
std::vector<std::weak_ptr<State>>& registry() {
  static std::vector<std::weak_ptr<State>> states;
  return states;
}

void register_state(const std::shared_ptr<State>& st) {
  std::lock_guard<std::mutex> lock(registry_mutex());
  auto& r = registry();
  r.erase(std::remove_if(r.begin(), r.end(), [](const std::weak_ptr<State>& w) { return w.expired(); }), r.end());
  r.push_back(st);
}

void launch_all_pending() {
  std::vector<std::shared_ptr<State>> live;
  {
    std::lock_guard<std::mutex> lock(registry_mutex());
    for (auto& w : registry())
      if (auto st = w.lock()) live.push_back(std::move(st));
  }
  for (auto& st : live) {
    std::lock_guard<std::mutex> lock(st->mu);
    st->launch_pending();
  }
}

class NcclWork final : public dist::Work {
 public:
  NcclWork(std::shared_ptr<State> st, std::shared_ptr<Op> op) : st_(std::move(st)), op_(std::move(op)) {}

  ~NcclWork() override {
    std::lock_guard<std::mutex> lock(st_->mu);
    release_slot();
  }

  void wait() override {
    std::lock_guard<std::mutex> one_waiter(wait_mu_);
    if (finished_) return;
    if (error_) std::rethrow_exception(error_);
    try {
      launch_all_pending();
      std::shared_ptr<Event> done;
      {
        std::lock_guard<std::mutex> lock(st_->mu);
        if (op_->error) std::rethrow_exception(op_->error);
        done = op_->done;  // set at launch, or error is
        MPT_ASSERT(done != nullptr);
      }
      await(*done);
      std::lock_guard<std::mutex> lock(st_->mu);
      op_->seen_done = Clock::now();
      if (op_->p2p && !op_->is_send) check_header();
      release_slot();
      finished_ = true;
    } catch (...) {
      error_ = std::current_exception();
      std::lock_guard<std::mutex> lock(st_->mu);
      release_slot();
      throw;
    }
  }

  // When the GPU ran the operation: its timing events (recorded around the NCCL calls, or
  // around the group of sends and receives it was launched in) on the host's clock; see
  // TimingPool for how and how exactly. False until it has completed, and for an operation
  // that never launched.
  bool times(TimePoint& start, TimePoint& end) const override {
    std::shared_ptr<Timing> timing;
    Clock::time_point seen_done;
    {
      std::lock_guard<std::mutex> lock(st_->mu);
      timing = op_->timing;
      seen_done = op_->seen_done;
    }
    return timing != nullptr && st_->timing_pool->host_times(*timing, seen_done, start, end);
  }

 private:
  // Polls the completion event; meanwhile NCCL's asynchronous errors and the timeout break
  // the communicator. Once it was aborted every wait fails: its kernels end early, so an
  // event that completes says nothing about the data.
  void await(Event& done) {
    const char* op = op_->name;
    const auto deadline = Clock::now() + std::chrono::duration<double>(st_->timeout_s);
    for (int spins = 0;; ++spins) {
      const cudaError_t q = cudaEventQuery(done.event);
      std::lock_guard<std::mutex> lock(st_->mu);
      if (st_->aborted) st_->check_usable(op);
      if (q == cudaSuccess) return;
      if (q != cudaErrorNotReady) {
        cudaGetLastError();
        fail(Status::kDevice, st_->where(op), ": waiting for the operation: ", cudaGetErrorName(q), " (",
             cudaGetErrorString(q), ")");
      }
      if (st_->comm == nullptr) st_->check_usable(op);  // destroyed
      ncclResult_t state = ncclSuccess;
      const ncclResult_t r = ncclCommGetAsyncError(st_->comm, &state);
      if (r != ncclSuccess) st_->nccl_failure(op, "ncclCommGetAsyncError", r);
      if (state != ncclSuccess && state != ncclInProgress) st_->nccl_failure(op, "an asynchronous NCCL operation", state);
      if (Clock::now() > deadline)
        st_->fail_with(op, str("no progress within ", seconds_text(st_->timeout_s),
                               op_->p2p ? str(op_->is_send ? " sending to" : " receiving from", " peer rank ",
                                              st_->world(op_->peer), " (timeout)")
                                        : std::string(" (timeout)")));
      State::backoff(spins);
    }
  }

  // With mu held: the header that arrived is the one this receive expects.
  void check_header() {
    const P2PHeader& got = *op_->slot->host;
    const P2PHeader& want = op_->header;
    const int64_t peer = st_->world(op_->peer);
    if (got.magic != kHeaderMagic)
      st_->fail_with(op_->name, str("message #", want.seq, " from peer rank ", peer, " has a malformed header"));
    if (got.seq != want.seq || got.tag != want.tag || got.bytes != want.bytes)
      st_->fail_with(op_->name,
                     str("message #", got.seq, " from peer rank ", peer, " has tag ", got.tag, " and ", got.bytes,
                         " bytes where this rank expected message #", want.seq, " with tag ", want.tag, " and ",
                         want.bytes, " bytes (messages between two ranks match in issue order)"));
  }

  void release_slot() {
    if (op_->slot) op_->slot->released = true;
    op_->slot = nullptr;
  }

  std::shared_ptr<State> st_;
  std::shared_ptr<Op> op_;
  std::mutex wait_mu_;
  bool finished_ = false;
  std::exception_ptr error_;
};

// --- argument checks ------------------------------------------------------------------------

bool overlaps(const void* a, size_t a_bytes, const void* b, size_t b_bytes) {
  auto pa = reinterpret_cast<uintptr_t>(a), pb = reinterpret_cast<uintptr_t>(b);
  return a_bytes > 0 && b_bytes > 0 && pa < pb + b_bytes && pb < pa + a_bytes;
}

const char* memory_kind(cudaMemoryType t) {
  switch (t) {
    case cudaMemoryTypeUnregistered: return "pageable host memory";
    case cudaMemoryTypeHost: return "pinned host memory";
    case cudaMemoryTypeDevice: return "device memory";
    case cudaMemoryTypeManaged: return "managed memory";
  }
  return "unknown memory";
}

class NcclCommunicatorImpl final : public NcclCommunicator {
 public:
  explicit NcclCommunicatorImpl(std::shared_ptr<State> st) : st_(std::move(st)) { register_state(st_); }

  // Launches what is held back, then lets NCCL finish every operation (ncclCommFinalize,
  // bounded by the timeout; past it the communicator is aborted) and frees it.
  ~NcclCommunicatorImpl() override {
    std::lock_guard<std::mutex> lock(st_->mu);
    st_->launch_pending();
    if (st_->comm == nullptr) return;
    int previous = -1;
    if (cudaGetDevice(&previous) != cudaSuccess) previous = -1;
    cudaSetDevice(st_->device);
    try {
      st_->nccl("destroy", "ncclCommFinalize", ncclCommFinalize(st_->comm));
      const ncclResult_t r = ncclCommDestroy(st_->comm);  // the handle is gone whatever it returns
      st_->comm = nullptr;
      if (r != ncclSuccess && r != ncclInProgress) {
        st_->broken = str("destroy: ncclCommDestroy failed: ", ncclGetErrorString(r));
        st_->aborted = true;
      }
    } catch (const std::exception&) {
      // finalize failed or timed out: the communicator was aborted
    }
    if (st_->broken.empty()) st_->broken = "the communicator was destroyed";
    cudaGetLastError();
    if (previous >= 0) cudaSetDevice(previous);
  }

  int64_t rank() const override { return st_->rank; }
  int64_t size() const override { return st_->size; }
  const std::string& name() const override { return st_->name; }
  const std::vector<int64_t>& global_ranks() const override { return st_->ranks; }
  int64_t bytes_sent() const override { return st_->bytes_sent.load(); }
  cudaStream_t stream() const override { return st_->stream; }

  void set_input_stream(cudaStream_t producer) override {
    std::lock_guard<std::mutex> lock(st_->mu);
    if (producer && st_->input_event == nullptr) {
      DeviceGuard guard(st_->device);
      MPT_CUDA_CHECK(cudaEventCreateWithFlags(&st_->input_event, cudaEventDisableTiming));
    }
    st_->input_stream = producer;
  }

  std::shared_ptr<dist::Work> all_reduce_async(void* data, int64_t count, DType dtype, ReduceOp op) override {
    const char* name = "all_reduce";
    std::lock_guard<std::mutex> lock(st_->mu);
    const ncclDataType_t type = reduce_type(name, dtype, op);
    check_buffer(name, data, count, dtype, "data");
    // The ring: rank r sends every chunk but (r+1) % n in the reduce-scatter and every chunk
    // but (r+2) % n in the all-gather.
    const int64_t n = st_->size, r = st_->rank;
    auto chunk = [&](int64_t c) { return count / n + (c < count % n ? 1 : 0); };
    const int64_t sent =
        n == 1 ? 0 : (2 * count - chunk((r + 1) % n) - chunk((r + 2) % n)) * static_cast<int64_t>(dtype_size(dtype));
    return issue(name, sent, [&] {
      st_->nccl(name, "ncclAllReduce",
                ncclAllReduce(data, data, static_cast<size_t>(count), type, nccl_op(op), st_->comm, st_->stream));
    });
  }

  std::shared_ptr<dist::Work> reduce_scatter_async(const void* in, void* out, int64_t count, DType dtype,
                                                   ReduceOp op) override {
    const char* name = "reduce_scatter";
    std::lock_guard<std::mutex> lock(st_->mu);
    const ncclDataType_t type = reduce_type(name, dtype, op);
    MPT_CHECK(count >= 0, Status::kInvalidArgument, st_->where(name), ": count ", count, " is negative");
    const size_t block = check_buffer(name, out, count, dtype, "out");
    check_buffer(name, in, count * st_->size, dtype, "in");
    const void* own_block = static_cast<const char*>(in) + st_->rank * block;
    MPT_CHECK(out == own_block || !overlaps(in, block * st_->size, out, block), Status::kInvalidArgument,
              st_->where(name), ": out overlaps in other than as this rank's block (in + ", st_->rank, " * ", block,
              " bytes)");
    const int64_t sent = (st_->size - 1) * static_cast<int64_t>(block);
    return issue(name, sent, [&] {
      st_->nccl(name, "ncclReduceScatter",
                ncclReduceScatter(in, out, static_cast<size_t>(count), type, nccl_op(op), st_->comm, st_->stream));
    });
  }

  std::shared_ptr<dist::Work> all_gather_async(const void* in, void* out, int64_t count, DType dtype) override {
    const char* name = "all_gather";
    std::lock_guard<std::mutex> lock(st_->mu);
    check_dtype(name, dtype);
    MPT_CHECK(count >= 0, Status::kInvalidArgument, st_->where(name), ": count ", count, " is negative");
    const size_t block = check_buffer(name, in, count, dtype, "in");
    check_buffer(name, out, count * st_->size, dtype, "out");
    const void* own_block = static_cast<const char*>(out) + st_->rank * block;
    MPT_CHECK(in == own_block || !overlaps(in, block, out, block * st_->size), Status::kInvalidArgument,
              st_->where(name), ": in overlaps out other than as this rank's block (out + ", st_->rank, " * ", block,
              " bytes)");
    const int64_t sent = (st_->size - 1) * static_cast<int64_t>(block);
    return issue(name, sent, [&] {
      st_->nccl(name, "ncclAllGather", ncclAllGather(in, out, block, ncclUint8, st_->comm, st_->stream));
    });
  }

  std::shared_ptr<dist::Work> all_to_all_async(const void* in, const int64_t* send_counts, void* out,
                                               const int64_t* recv_counts, DType dtype) override {
    const char* name = "all_to_all";
    std::lock_guard<std::mutex> lock(st_->mu);
    check_dtype(name, dtype);
    MPT_CHECK(send_counts != nullptr && recv_counts != nullptr, Status::kInvalidArgument, st_->where(name),
              ": send_counts and recv_counts must not be null");
    const int64_t n = st_->size, me = st_->rank;
    const auto es = static_cast<int64_t>(dtype_size(dtype));
    std::vector<int64_t> send_off(static_cast<size_t>(n + 1), 0), recv_off(static_cast<size_t>(n + 1), 0);
    int64_t sent = 0;
    for (int64_t p = 0; p < n; ++p) {
      MPT_CHECK(send_counts[p] >= 0 && recv_counts[p] >= 0, Status::kInvalidArgument, st_->where(name),
                ": counts for peer ", p, " are negative (send ", send_counts[p], ", recv ", recv_counts[p], ")");
      send_off[p + 1] = send_off[p] + send_counts[p];
      recv_off[p + 1] = recv_off[p] + recv_counts[p];
      if (p != me) sent += send_counts[p] * es;
    }
    MPT_CHECK(send_counts[me] == recv_counts[me], Status::kInvalidArgument, st_->where(name),
              ": this rank sends itself ", send_counts[me], " elements but expects ", recv_counts[me]);
    const size_t in_bytes = check_buffer(name, in, send_off[n], dtype, "in");
    const size_t out_bytes = check_buffer(name, out, recv_off[n], dtype, "out");
    MPT_CHECK(!overlaps(in, in_bytes, out, out_bytes), Status::kInvalidArgument, st_->where(name),
              ": in and out overlap");
    return issue(name, sent, [&] {
      // Pairwise sends and receives in one group; a block for this rank goes through NCCL too.
      st_->nccl(name, "ncclGroupStart", ncclGroupStart());
      ncclResult_t first = ncclSuccess;
      const char* failed = nullptr;
      for (int64_t p = 0; p < n; ++p) {
        const size_t sb = static_cast<size_t>(send_counts[p] * es), rb = static_cast<size_t>(recv_counts[p] * es);
        if (sb > 0 && first == ncclSuccess) {
          first = ncclSend(static_cast<const char*>(in) + send_off[p] * es, sb, ncclUint8, static_cast<int>(p),
                           st_->comm, st_->stream);
          if (first == ncclInProgress) first = ncclSuccess;
          failed = "ncclSend";
        }
        if (rb > 0 && first == ncclSuccess) {
          first = ncclRecv(static_cast<char*>(out) + recv_off[p] * es, rb, ncclUint8, static_cast<int>(p), st_->comm,
                           st_->stream);
          if (first == ncclInProgress) first = ncclSuccess;
          failed = "ncclRecv";
        }
      }
      const ncclResult_t end = ncclGroupEnd();
      if (first != ncclSuccess) st_->nccl_failure(name, failed, first);
      st_->nccl(name, "ncclGroupEnd", end);
    });
  }

  std::shared_ptr<dist::Work> broadcast_async(void* data, int64_t count, DType dtype, int64_t root) override {
    const char* name = "broadcast";
    std::lock_guard<std::mutex> lock(st_->mu);
    check_dtype(name, dtype);
    const size_t bytes = check_buffer(name, data, count, dtype, "data");
    MPT_CHECK(root >= 0 && root < st_->size, Status::kInvalidArgument, st_->where(name), ": root ", root,
              " is outside the group of size ", st_->size);
    // A chain from the root: every rank but the last one passes the data on.
    const int64_t position = ((st_->rank - root) % st_->size + st_->size) % st_->size;
    const int64_t sent = position < st_->size - 1 ? static_cast<int64_t>(bytes) : 0;
    return issue(name, sent, [&] {
      st_->nccl(name, "ncclBroadcast",
                ncclBroadcast(data, data, bytes, ncclUint8, static_cast<int>(root), st_->comm, st_->stream));
    });
  }

  std::shared_ptr<dist::Work> send_async(const void* data, int64_t count, DType dtype, int64_t peer,
                                         int64_t tag) override {
    return point_to_point("send", true, const_cast<void*>(data), count, dtype, peer, tag);
  }

  std::shared_ptr<dist::Work> recv_async(void* data, int64_t count, DType dtype, int64_t peer, int64_t tag) override {
    return point_to_point("recv", false, data, count, dtype, peer, tag);
  }

  std::shared_ptr<dist::Work> barrier_async() override {
    const char* name = "barrier";
    std::lock_guard<std::mutex> lock(st_->mu);
    return issue(name, 0, [&] {
      st_->nccl(name, "ncclAllReduce",
                ncclAllReduce(st_->barrier_word, st_->barrier_word, 1, ncclInt32, ncclSum, st_->comm, st_->stream));
    });
  }

 private:
  // With mu held: launches what is held back, then `launch` (the NCCL calls, timed by a
  // pair of events around them) after the input stream's work, and returns the Work
  // waiting for it.
  template <typename Launch>
  std::shared_ptr<dist::Work> issue(const char* name, int64_t sent, Launch&& launch) {
    st_->check_usable(name);
    st_->launch_pending();
    st_->check_usable(name);
    DeviceGuard guard(st_->device);
    st_->order_after_input();
    std::shared_ptr<Timing> timing = st_->start_timing();
    launch();
    st_->end_timing(*timing);
    auto op = std::make_shared<Op>();
    op->name = name;
    op->timing = std::move(timing);
    op->done = st_->record_completion();
    st_->bytes_sent += sent;
    return std::make_shared<NcclWork>(st_, op);
  }

  std::shared_ptr<dist::Work> point_to_point(const char* name, bool is_send, void* data, int64_t count, DType dtype,
                                             int64_t peer, int64_t tag) {
    std::lock_guard<std::mutex> lock(st_->mu);
    st_->check_usable(name);
    check_dtype(name, dtype);
    const size_t bytes = check_buffer(name, data, count, dtype, "data");
    MPT_CHECK(tag >= 0 && tag <= kMaxTag, Status::kInvalidArgument, st_->where(name), ": tag ", tag, " is not in 0..",
              kMaxTag);
    MPT_CHECK(peer >= 0 && peer < st_->size && peer != st_->rank, Status::kInvalidArgument, st_->where(name),
              ": peer ", peer, " is not another member of the group of size ", st_->size);
    DeviceGuard guard(st_->device);
    st_->order_after_input();
    auto op = std::make_shared<Op>();
    op->slot = st_->acquire_slot();  // first: the sequence numbers only move once nothing can fail
    op->name = name;
    op->p2p = true;
    op->is_send = is_send;
    op->peer = peer;
    if (is_send)
      op->send_data = data;
    else
      op->recv_data = data;
    op->bytes = bytes;
    auto& seq = is_send ? st_->send_seq : st_->recv_seq;
    op->header.tag = static_cast<uint32_t>(tag);
    op->header.seq = seq[static_cast<size_t>(peer)]++;
    op->header.bytes = static_cast<int64_t>(bytes);
    op->header.sender = is_send ? st_->world(st_->rank) : st_->world(peer);
    if (is_send) *op->slot->host = op->header;
    st_->pending.push_back(op);
    if (is_send) st_->bytes_sent += static_cast<int64_t>(bytes);
    return std::make_shared<NcclWork>(st_, op);
  }

  void check_dtype(const char* op, DType dtype) const {
    MPT_CHECK(dtype_size(dtype) > 0, Status::kInvalidArgument, st_->where(op), ": unknown dtype ",
              static_cast<int>(dtype));
  }

  // count elements of dtype at p: device memory of this communicator's GPU (or null when
  // empty). Returns the bytes.
  size_t check_buffer(const char* op, const void* p, int64_t count, DType dtype, const char* what) const {
    check_dtype(op, dtype);
    MPT_CHECK(count >= 0, Status::kInvalidArgument, st_->where(op), ": count ", count, " is negative");
    if (count == 0) return 0;
    MPT_CHECK(p != nullptr, Status::kInvalidArgument, st_->where(op), ": ", what, " is null");
    cudaPointerAttributes a{};
    const cudaError_t e = cudaPointerGetAttributes(&a, p);
    if (e != cudaSuccess) {
      cudaGetLastError();
      fail(Status::kInvalidArgument, st_->where(op), ": ", what, " is not memory CUDA knows (",
           cudaGetErrorString(e), ")");
    }
    const bool usable = (a.type == cudaMemoryTypeDevice || a.type == cudaMemoryTypeManaged) && a.device == st_->device;
    MPT_CHECK(usable, Status::kInvalidArgument, st_->where(op), ": ", what, " must be device memory of GPU ",
              st_->device, ", got ", memory_kind(a.type),
              a.type == cudaMemoryTypeDevice ? str(" of GPU ", a.device) : std::string());
    return static_cast<size_t>(count) * dtype_size(dtype);
  }

  ncclDataType_t reduce_type(const char* op, DType dtype, ReduceOp rop) const {
    MPT_CHECK(rop == ReduceOp::kSum || rop == ReduceOp::kMax || rop == ReduceOp::kAvg, Status::kInvalidArgument,
              st_->where(op), ": unknown reduce op ", static_cast<int>(rop));
    bool floating = true;
    ncclDataType_t type = ncclFloat32;
    switch (dtype) {
      case DType::kF32: type = ncclFloat32; break;
      case DType::kF64: type = ncclFloat64; break;
      case DType::kBF16: type = ncclBfloat16; break;
      case DType::kF16: type = ncclFloat16; break;
      case DType::kI32: type = ncclInt32, floating = false; break;
      case DType::kI64: type = ncclInt64, floating = false; break;
      default:
        check_dtype(op, dtype);
        fail(Status::kNotSupported, st_->where(op), ": reductions of ", dtype_label(dtype),
             " are not supported (f32, f64, bf16, f16, i32 and i64 are)");
    }
    MPT_CHECK(floating || rop != ReduceOp::kAvg, Status::kInvalidArgument, st_->where(op), ": ", op_label(rop),
              " needs a floating dtype, got ", dtype_label(dtype));
    return type;
  }

  static ncclRedOp_t nccl_op(ReduceOp op) {
    switch (op) {
      case ReduceOp::kSum: return ncclSum;
      case ReduceOp::kMax: return ncclMax;
      case ReduceOp::kAvg: return ncclAvg;
    }
    return ncclSum;
  }

  std::shared_ptr<State> st_;
};

// The keys of one formation of the group under `name`: members count their joins.
std::string formation_prefix(dist::Store& store, const State& st) {
  const std::string base = "nccl/" + st.name + "/";
  const int64_t generation = (store.add(base + "joins", 1) - 1) / st.size;
  return base + std::to_string(generation) + "/";
}

// Group ranks whose "joined" key is missing, as world ranks: "rank 3" or "ranks 1, 3".
std::string missing_ranks(dist::Store& store, const State& st, const std::string& prefix) {
  std::string list;
  int64_t missing = 0;
  try {
    for (int64_t i = 0; i < st.size; ++i)
      if (!store.check({prefix + "joined/" + std::to_string(i)})) {
        list += (missing++ ? ", " : "") + std::to_string(st.world(i));
      }
  } catch (const Error&) {
    return "";
  }
  return missing == 0 ? "" : str(missing == 1 ? "rank " : "ranks ", list);
}

}  // namespace

std::unique_ptr<NcclCommunicator> make_nccl_communicator(dist::Store& store, const std::string& name,
                                                         const std::vector<int64_t>& global_ranks,
                                                         int64_t world_rank, int device,
                                                         const dist::CommOptions& options) {
  const std::string what = str("group ", name, ": rank ", world_rank);
  MPT_CHECK(!name.empty(), Status::kInvalidArgument, "communicator for rank ", world_rank, ": the group name is empty");
  MPT_CHECK(!global_ranks.empty(), Status::kInvalidArgument, what, ": the group has no ranks");
  for (size_t i = 0; i < global_ranks.size(); ++i)
    MPT_CHECK(global_ranks[i] >= 0 && (i == 0 || global_ranks[i] > global_ranks[i - 1]), Status::kInvalidArgument,
              what, ": global_ranks must be sorted, non-negative and distinct (entry ", i, " is ", global_ranks[i], ")");
  auto it = std::find(global_ranks.begin(), global_ranks.end(), world_rank);
  MPT_CHECK(it != global_ranks.end(), Status::kInvalidArgument, what, ": this rank is not a member of the group");
  MPT_CHECK(global_ranks.size() <= static_cast<size_t>(INT32_MAX), Status::kInvalidArgument, what,
            ": NCCL groups hold at most ", INT32_MAX, " ranks");

  auto st = std::make_shared<State>();
  st->name = name;
  st->ranks = global_ranks;
  st->size = static_cast<int64_t>(global_ranks.size());
  st->rank = it - global_ranks.begin();
  st->device = device;
  st->timeout_s = options.timeout_s;
  st->timing_pool = std::make_shared<TimingPool>(device);
  st->send_seq.assign(global_ranks.size(), 0);
  st->recv_seq.assign(global_ranks.size(), 0);
  MPT_CHECK(options.timeout_s > 0, Status::kInvalidArgument, st->where("create"), ": timeout ", options.timeout_s,
            " s is not positive");
  // visible_devices() reads "no GPU" as none and throws, naming the cause, for any other failure.
  const int devices = static_cast<int>(visible_devices().size());
  MPT_CHECK(device >= 0 && device < devices, Status::kDevice, st->where("create"), ": GPU ", device,
            " is not one of the ", devices, " visible GPUs");

  // The unique id: made by group rank 0, fetched by the others through the store.
  ncclUniqueId id;
  std::string prefix;
  if (st->size == 1) {
    st->nccl("create", "ncclGetUniqueId", ncclGetUniqueId(&id));
  } else {
    prefix = formation_prefix(store, *st);
    if (st->rank == 0) {
      st->nccl("create", "ncclGetUniqueId", ncclGetUniqueId(&id));
      store.set(prefix + "id", std::string(id.internal, sizeof(id.internal)));
    } else {
      std::string value;
      try {
        value = store.get(prefix + "id");
      } catch (const Error& e) {
        fail(Status::kDistributed, st->where("create"), ": group rank 0 (world rank ", st->world(0),
             ") never published the NCCL id: ", e.what());
      }
      MPT_CHECK(value.size() == sizeof(id.internal), Status::kDistributed, st->where("create"),
                ": the NCCL id in the store has ", value.size(), " bytes, not ", sizeof(id.internal));
      std::memcpy(id.internal, value.data(), sizeof(id.internal));
    }
    store.set(prefix + "joined/" + std::to_string(st->rank), "1");
  }

  DeviceGuard guard(device);
  MPT_CUDA_CHECK(cudaStreamCreateWithFlags(&st->stream, cudaStreamNonBlocking));
  MPT_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&st->barrier_word), sizeof(int32_t)));
  MPT_CUDA_CHECK(cudaMemset(st->barrier_word, 0, sizeof(int32_t)));

  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.blocking = 0;
#if NCCL_VERSION_CODE >= NCCL_VERSION(2, 20, 0)
  config.commName = st->name.c_str();
#endif
  {
    std::lock_guard<std::mutex> lock(st->mu);
    const ncclResult_t r = ncclCommInitRankConfig(&st->comm, static_cast<int>(st->size), id,
                                                  static_cast<int>(st->rank), &config);
    if (r != ncclSuccess && r != ncclInProgress) {
      st->nccl_failure("create", "ncclCommInitRankConfig", r);
    }
    try {
      if (r == ncclInProgress) st->settle("create", "ncclCommInitRankConfig");
    } catch (const Error& e) {
      const std::string missing = prefix.empty() ? "" : missing_ranks(store, *st, prefix);
      if (missing.empty()) throw;
      fail(Status::kDistributed, st->where("create"), ": ", missing, " never joined within ",
           seconds_text(options.timeout_s));
    }
  }
  return std::make_unique<NcclCommunicatorImpl>(st);
}

}  // namespace mpt::cuda
