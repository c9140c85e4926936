// One NCCL group's state, shared by the communicator and the Work handles of its
// operations (nccl_communicator.cc): the NCCL communicator and its stream, the sends and
// receives held back until a flush launches them as one NCCL group, the pool of their
// 32-byte headers (device slots with pinned host twins; a slot is reused once its owner is
// done with it and the group that used it has completed), and the pool of timing events
// that tell when each operation ran on the GPU. Every failure breaks the group: the NCCL
// communicator is aborted, its kernels end, and every later call throws.
#pragma once

#include <cuda_runtime.h>
#include <nccl.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <deque>
#include <exception>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "core/error.h"
#include "cuda/device.h"

namespace mpt::cuda::nccl_group {

using Clock = std::chrono::steady_clock;

inline constexpr uint32_t kHeaderMagic = 0x4d50544e;  // "MPTN"
inline constexpr size_t kSlotsPerChunk = 64;

inline std::string seconds_text(double s) { return str(s, " s"); }

// What a send tells its receiver; compared with what the receive expects.
struct P2PHeader {
  uint32_t magic = kHeaderMagic;
  uint32_t tag = 0;
  uint64_t seq = 0;    // messages from the sender to the receiver before this one
  int64_t bytes = 0;   // payload
  int64_t sender = 0;  // world rank
};
static_assert(sizeof(P2PHeader) == 32);

// Makes `device` current for the scope and restores the caller's device after.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) : device_(device) {
    if (cudaGetDevice(&previous_) != cudaSuccess) {
      cudaGetLastError();
      previous_ = -1;
    }
    if (previous_ != device_) MPT_CUDA_CHECK(cudaSetDevice(device_));
  }
  ~DeviceGuard() {
    if (previous_ >= 0 && previous_ != device_) cudaSetDevice(previous_);
  }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int device_;
  int previous_ = -1;
};

// An event that marks the end of one launched operation (or group).
struct Event {
  cudaEvent_t event = nullptr;
  Event() { MPT_CUDA_CHECK(cudaEventCreateWithFlags(&event, cudaEventDisableTiming)); }
  ~Event() {
    if (event) cudaEventDestroy(event);
  }
  Event(const Event&) = delete;
  Event& operator=(const Event&) = delete;
  bool done() const { return cudaEventQuery(event) == cudaSuccess; }
};

// The two timing events around one launched operation (or one group of sends and
// receives, whose operations share them), lent by a TimingPool.
struct Timing {
  cudaEvent_t start = nullptr, end = nullptr;
};

// Timing-enabled events, reused across operations: a pair goes back to the pool when its
// last holder drops it, so the steady state creates none. Also the clock that turns a
// completed pair into host times (host_times). Every pair lent keeps the pool alive.
//
// The clock: an event e that has completed happened at host time t(e) = h - elapsed(e, r),
// where r is a reference event recorded after e completed and h the steady clock read just
// after the host saw r complete. r goes on a private stream that holds nothing else, so it
// completes at once, and waiting for it never waits for the communicator's stream (which
// may still run later operations): timing adds no synchronization with the step's work,
// only the two asynchronous records per operation. Error: t(e) is late by the time from r's
// completion on the GPU to the host's reading (one poll of r, a microsecond or two unless
// the thread is descheduled), never early, give or take cudaEventElapsedTime's resolution
// (about 0.5 us) and the drift of the GPU's clock against the host's over e..r (parts per
// million). A reference recorded after the host saw an operation complete serves it as
// well, so operations converted after their waits share one reference and keep the
// device's order exactly.
class TimingPool {
 public:
  explicit TimingPool(int device) : device_(device) {}
  ~TimingPool() {
    if (free_.empty() && reference_ == nullptr && clock_stream_ == nullptr) return;
    int previous = -1;
    if (cudaGetDevice(&previous) != cudaSuccess) previous = -1;
    cudaSetDevice(device_);
    for (cudaEvent_t e : free_) cudaEventDestroy(e);
    if (reference_) cudaEventDestroy(reference_);
    if (clock_stream_) cudaStreamDestroy(clock_stream_);
    cudaGetLastError();
    if (previous >= 0) cudaSetDevice(previous);
  }
  TimingPool(const TimingPool&) = delete;
  TimingPool& operator=(const TimingPool&) = delete;

  // A pair for one operation, its events created on the current device (the pool's) when
  // the pool has none free. Throws Error(kDevice).
  static std::shared_ptr<Timing> acquire(const std::shared_ptr<TimingPool>& pool) {
    std::shared_ptr<Timing> t(new Timing, [pool](Timing* p) { pool->give_back(p); });
    {
      std::lock_guard<std::mutex> lock(pool->mu_);
      for (cudaEvent_t* e : {&t->start, &t->end})
        if (!pool->free_.empty()) {
          *e = pool->free_.back();
          pool->free_.pop_back();
        }
    }
    for (cudaEvent_t* e : {&t->start, &t->end})
      if (*e == nullptr) MPT_CUDA_CHECK(cudaEventCreateWithFlags(e, cudaEventDefault));  // timing enabled
    return t;
  }

  // The host times at which the GPU passed t's events, once both have completed.
  // `seen_done` is when the host saw the operation complete (zero: not yet). False, with
  // start and end untouched, before completion or when CUDA fails (a span that cannot be
  // timed is no error: the operation itself succeeded or fails on its own). Thread-safe.
  bool host_times(const Timing& t, Clock::time_point seen_done, Clock::time_point& start, Clock::time_point& end) {
    std::lock_guard<std::mutex> lock(clock_mu_);
    try {
      DeviceGuard guard(device_);
      const bool reuse = has_reference_ && seen_done != Clock::time_point{} && seen_done < reference_recorded_;
      if (!reuse && !(completed(t.start) && completed(t.end) && calibrate())) return false;
      float to_start = 0, to_end = 0;
      if (cudaEventElapsedTime(&to_start, t.start, reference_) != cudaSuccess ||
          cudaEventElapsedTime(&to_end, t.end, reference_) != cudaSuccess) {
        cudaGetLastError();
        return false;
      }
      start = reference_host_ - milliseconds(to_start);
      end = reference_host_ - milliseconds(to_end);
      return true;
    } catch (const Error&) {
      cudaGetLastError();
      has_reference_ = false;
      return false;
    }
  }

 private:
  // How long the host waits for a reference on the idle clock stream before giving up.
  static constexpr std::chrono::seconds kReferencePatience{1};

  static Clock::duration milliseconds(float ms) {
    return std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double, std::milli>(ms));
  }

  static bool completed(cudaEvent_t e) {
    const cudaError_t q = cudaEventQuery(e);
    if (q != cudaSuccess && q != cudaErrorNotReady) cudaGetLastError();
    return q == cudaSuccess;
  }

  // With clock_mu_ held and the device current: records a fresh reference and polls it
  // (rather than cudaEventSynchronize, whose wake-up depends on the device's scheduling
  // flags), reading the host clock as soon as it has completed.
  bool calibrate() {
    has_reference_ = false;
    if (clock_stream_ == nullptr) MPT_CUDA_CHECK(cudaStreamCreateWithFlags(&clock_stream_, cudaStreamNonBlocking));
    if (reference_ == nullptr) MPT_CUDA_CHECK(cudaEventCreateWithFlags(&reference_, cudaEventDefault));
    reference_recorded_ = Clock::now();
    MPT_CUDA_CHECK(cudaEventRecord(reference_, clock_stream_));
    const Clock::time_point deadline = reference_recorded_ + kReferencePatience;
    for (;;) {
      const cudaError_t q = cudaEventQuery(reference_);
      const Clock::time_point now = Clock::now();
      if (q == cudaSuccess) {
        reference_host_ = now;
        has_reference_ = true;
        return true;
      }
      if (q != cudaErrorNotReady) {
        cudaGetLastError();
        return false;
      }
      if (now > deadline) return false;
    }
  }

  void give_back(Timing* t) noexcept {
    for (cudaEvent_t e : {t->start, t->end}) {
      if (e == nullptr) continue;
      bool kept = false;
      try {
        std::lock_guard<std::mutex> lock(mu_);
        free_.push_back(e);
        kept = true;
      } catch (...) {
        // no room to keep it: destroyed below
      }
      if (!kept) cudaEventDestroy(e);
    }
    delete t;
  }

  const int device_;
  std::mutex mu_;  // guards free_
  std::vector<cudaEvent_t> free_;
  std::mutex clock_mu_;  // guards the clock below
  cudaStream_t clock_stream_ = nullptr;
  cudaEvent_t reference_ = nullptr;
  bool has_reference_ = false;
  Clock::time_point reference_recorded_;  // just before the reference was recorded
  Clock::time_point reference_host_;      // just after the host saw it complete
};

// One header's device memory and its pinned host twin.
struct HeaderSlot {
  void* dev = nullptr;
  P2PHeader* host = nullptr;
  bool busy = false;
  bool launched = false;  // the group that uses it was launched (or failed to launch)
  bool released = false;  // its Work is done with it
  std::shared_ptr<Event> fence;

  bool reusable() const { return !busy || (launched && released && (!fence || fence->done())); }
};

// One issued operation, shared by its Work and (for sends and receives, until launched)
// the pending queue. Fields after `header` are guarded by State::mu.
struct Op {
  const char* name = "";
  bool p2p = false, is_send = false;
  int64_t peer = -1;  // group rank
  const void* send_data = nullptr;
  void* recv_data = nullptr;
  size_t bytes = 0;
  P2PHeader header;  // sent, or the one the receive expects
  HeaderSlot* slot = nullptr;
  std::shared_ptr<Event> done;     // set at launch
  std::shared_ptr<Timing> timing;  // set at launch once both its events were recorded
  Clock::time_point seen_done;     // when a wait() saw it complete (zero: not yet)
  std::exception_ptr error;        // a launch failure
};

struct State {
  std::string name;
  std::vector<int64_t> ranks;  // group rank -> world rank
  int64_t rank = 0, size = 1;
  int device = 0;
  double timeout_s = 600;

  std::mutex mu;
  ncclComm_t comm = nullptr;  // null once aborted or destroyed
  cudaStream_t stream = nullptr;
  std::string broken;   // why the communicator became unusable
  bool aborted = false;  // by a failure (not by an orderly destruction)
  std::atomic<int64_t> bytes_sent{0};
  int32_t* barrier_word = nullptr;
  cudaStream_t input_stream = nullptr;
  cudaEvent_t input_event = nullptr;
  std::vector<uint64_t> send_seq, recv_seq;  // per peer (group rank)
  std::vector<std::shared_ptr<Op>> pending;
  std::deque<HeaderSlot> slots;
  std::vector<void*> slot_dev_chunks, slot_host_chunks;
  std::shared_ptr<TimingPool> timing_pool;  // set at creation, never replaced

  ~State() {
    // Creation failures land here with a live comm; the communicator's destructor
    // finalizes normally and leaves null.
    int previous = -1;
    if (cudaGetDevice(&previous) != cudaSuccess) previous = -1;
    cudaSetDevice(device);
    if (comm) ncclCommAbort(comm);
    if (stream) {
      cudaStreamSynchronize(stream);
      cudaStreamDestroy(stream);
    }
    if (input_event) cudaEventDestroy(input_event);
    if (barrier_word) cudaFree(barrier_word);
    for (void* p : slot_dev_chunks) cudaFree(p);
    for (void* p : slot_host_chunks) cudaFreeHost(p);
    cudaGetLastError();
    if (previous >= 0) cudaSetDevice(previous);
  }

  int64_t world(int64_t group_rank) const { return ranks[static_cast<size_t>(group_rank)]; }

  // "group dp (ranks 0,1,2,3): rank 2: all_reduce", as the gloo communicator names it.
  std::string where(const char* op) const {
    std::string list;
    for (size_t i = 0; i < ranks.size(); ++i) {
      if (ranks.size() > 16 && i == 8) {
        list += str(",...,", ranks.back());
        break;
      }
      list += (i ? "," : "") + std::to_string(ranks[i]);
    }
    return str("group ", name, " (ranks ", list, "): rank ", world(rank), ": ", op);
  }

  // --- everything below runs with `mu` held ---------------------------------------------

  void check_usable(const char* op) const {
    if (!broken.empty())
      fail(Status::kDistributed, where(op), ": the communicator is unusable after an earlier failure (", broken, ")");
  }

  // Breaks the communicator (the first reason is kept) and aborts the NCCL communicator,
  // which ends its kernels, so that streams waiting on it drain.
  void abort(const std::string& why) {
    if (broken.empty()) broken = why;
    aborted = true;
    if (comm) ncclCommAbort(comm);
    comm = nullptr;
  }

  [[noreturn]] void fail_with(const char* op, const std::string& detail) {
    abort(str(op, ": ", detail));
    fail(Status::kDistributed, where(op), ": ", detail);
  }

  [[noreturn]] void nccl_failure(const char* op, const char* call, ncclResult_t r) {
    std::string detail = str(call, " failed: ", ncclGetErrorString(r));
    const char* last = comm ? ncclGetLastError(comm) : nullptr;
    if (last && *last) detail += str(" (", last, ")");
    fail_with(op, detail);
  }

  // Waits (polling) until the NCCL communicator has no call in progress; any error or
  // the timeout breaks it.
  void settle(const char* op, const char* call) {
    const auto deadline = Clock::now() + std::chrono::duration<double>(timeout_s);
    for (int spins = 0;; ++spins) {
      ncclResult_t state = ncclSuccess;
      const ncclResult_t r = ncclCommGetAsyncError(comm, &state);
      if (r != ncclSuccess) nccl_failure(op, "ncclCommGetAsyncError", r);
      if (state == ncclSuccess) return;
      if (state != ncclInProgress) nccl_failure(op, call, state);
      if (Clock::now() > deadline)
        fail_with(op, str(call, " made no progress within ", seconds_text(timeout_s),
                          " (timeout; a member of the group has not issued the same operation)"));
      backoff(spins);
    }
  }

  // Checks an NCCL call's result: a call still in progress (non-blocking mode) is waited
  // out, an error breaks the communicator.
  void nccl(const char* op, const char* call, ncclResult_t r) {
    if (r == ncclSuccess) return;
    if (r == ncclInProgress) return settle(op, call);
    nccl_failure(op, call, r);
  }

  static void backoff(int spins) {
    if (spins < 1000)
      std::this_thread::yield();
    else
      std::this_thread::sleep_for(std::chrono::microseconds(100));
  }

  // Makes this stream wait for the input stream's work queued so far.
  void order_after_input() {
    if (input_stream == nullptr) return;
    MPT_CUDA_CHECK(cudaEventRecord(input_event, input_stream));
    MPT_CUDA_CHECK(cudaStreamWaitEvent(stream, input_event, 0));
  }

  // A pair from the pool with its start recorded on the stream: the operation's NCCL
  // calls come next, then end_timing().
  std::shared_ptr<Timing> start_timing() {
    std::shared_ptr<Timing> t = TimingPool::acquire(timing_pool);
    MPT_CUDA_CHECK(cudaEventRecord(t->start, stream));
    return t;
  }
  void end_timing(const Timing& t) { MPT_CUDA_CHECK(cudaEventRecord(t.end, stream)); }

  std::shared_ptr<Event> record_completion() {
    auto ev = std::make_shared<Event>();
    MPT_CUDA_CHECK(cudaEventRecord(ev->event, stream));
    return ev;
  }

  HeaderSlot* acquire_slot() {
    for (auto& s : slots)
      if (s.reusable()) {
        s.busy = true;
        s.launched = s.released = false;
        s.fence.reset();
        return &s;
      }
    void* dev = nullptr;
    void* host = nullptr;
    MPT_CUDA_CHECK(cudaMalloc(&dev, kSlotsPerChunk * sizeof(P2PHeader)));
    slot_dev_chunks.push_back(dev);
    MPT_CUDA_CHECK(cudaMallocHost(&host, kSlotsPerChunk * sizeof(P2PHeader)));
    slot_host_chunks.push_back(host);
    for (size_t i = 0; i < kSlotsPerChunk; ++i) {
      HeaderSlot s;
      s.dev = static_cast<char*>(dev) + i * sizeof(P2PHeader);
      s.host = static_cast<P2PHeader*>(host) + i;
      slots.push_back(s);
    }
    HeaderSlot* s = &slots[slots.size() - kSlotsPerChunk];
    s->busy = true;
    return s;
  }

  // Launches the queued sends and receives as one NCCL group: each sends (receives) its
  // header, then its payload. A failure is kept by every operation of the group (their
  // wait() throws it) and breaks the communicator; nothing is thrown here.
  void launch_pending() {
    if (pending.empty()) return;
    std::vector<std::shared_ptr<Op>> batch;
    batch.swap(pending);
    std::shared_ptr<Event> done;
    std::shared_ptr<Timing> timing;
    try {
      check_usable(batch.front()->name);
      DeviceGuard guard(device);
      for (auto& op : batch)
        if (op->is_send)
          MPT_CUDA_CHECK(cudaMemcpyAsync(op->slot->dev, op->slot->host, sizeof(P2PHeader), cudaMemcpyHostToDevice,
                                         stream));
      timing = start_timing();
      nccl(batch.front()->name, "ncclGroupStart", ncclGroupStart());
      ncclResult_t first = ncclSuccess;
      const char* failed = nullptr;
      auto note = [&](ncclResult_t r, const char* call) {
        if (r != ncclSuccess && r != ncclInProgress && first == ncclSuccess) {
          first = r;
          failed = call;
        }
      };
      for (auto& op : batch) {
        const int peer = static_cast<int>(op->peer);
        if (op->is_send) {
          note(ncclSend(op->slot->dev, sizeof(P2PHeader), ncclUint8, peer, comm, stream), "ncclSend");
          if (op->bytes > 0) note(ncclSend(op->send_data, op->bytes, ncclUint8, peer, comm, stream), "ncclSend");
        } else {
          note(ncclRecv(op->slot->dev, sizeof(P2PHeader), ncclUint8, peer, comm, stream), "ncclRecv");
          if (op->bytes > 0) note(ncclRecv(op->recv_data, op->bytes, ncclUint8, peer, comm, stream), "ncclRecv");
        }
      }
      const ncclResult_t end = ncclGroupEnd();
      if (failed) nccl_failure(batch.front()->name, failed, first);
      nccl(batch.front()->name, "ncclGroupEnd", end);
      end_timing(*timing);
      for (auto& op : batch)
        if (!op->is_send)
          MPT_CUDA_CHECK(cudaMemcpyAsync(op->slot->host, op->slot->dev, sizeof(P2PHeader), cudaMemcpyDeviceToHost,
                                         stream));
      done = record_completion();
    } catch (...) {
      std::exception_ptr error = std::current_exception();
      for (auto& op : batch) op->error = error;
      timing.reset();
    }
    for (auto& op : batch) {
      op->done = done;
      op->timing = timing;
      op->slot->launched = true;
      op->slot->fence = done;
    }
  }
};

}  // namespace mpt::cuda::nccl_group
