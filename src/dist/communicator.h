// Collective communication over a group of ranks. One interface for every transport:
// gloo over TCP for host buffers (here), NCCL for device buffers (with the CUDA backend).
//
// Every member of a group issues the same collectives in the same order. Each call has a
// synchronous form and an asynchronous one returning a Work handle; asynchronous work runs
// on the communicator's own thread in issue order, so communication overlaps computation.
// Buffers must stay alive and untouched until the Work is waited on.
//
// Failures (a peer process died, a connection reset, no progress within the timeout) throw
// Error(kDistributed) naming the group, this rank, the collective and the peer it lost,
// e.g. "group dp-cp (ranks 0,1,2,3): rank 2: all_reduce: lost peer rank 3 (connection
// closed)". After a failure the communicator is unusable and every later call throws.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "core/timeline.h"

namespace mpt::dist {

class Store;

enum class ReduceOp { kSum, kMax, kAvg };

class Work {
 public:
  virtual ~Work() = default;
  // Blocks until done; rethrows the operation's error.
  virtual void wait() = 0;
  // When the transport ran the operation, known once it has finished: from the moment its
  // worker began it to the moment it ended (a send or receive: until wait() saw the
  // transfer complete), for the profiling timeline. False, with start and end untouched,
  // where the transport does not time its operations or before the operation has finished.
  virtual bool times(TimePoint& start, TimePoint& end) const {
    (void)start;
    (void)end;
    return false;
  }
};

class Communicator {
 public:
  virtual ~Communicator() = default;

  virtual int64_t rank() const = 0;  // in the group
  virtual int64_t size() const = 0;
  virtual const std::string& name() const = 0;
  virtual const std::vector<int64_t>& global_ranks() const = 0;  // group rank -> world rank

  // data[count] reduced elementwise across the group, result on every rank. kAvg divides
  // the sum by size() (floating types only). Every rank gets identical bits: the reduction
  // order is fixed by the algorithm, not by timing.
  virtual std::shared_ptr<Work> all_reduce_async(void* data, int64_t count, DType dtype, ReduceOp op) = 0;
  // in[size() * count] -> out[count]: rank r gets the reduction of block r.
  virtual std::shared_ptr<Work> reduce_scatter_async(const void* in, void* out, int64_t count, DType dtype,
                                                     ReduceOp op) = 0;
  // in[count] -> out[size() * count]: block r is rank r's input. in may alias block rank() of out.
  virtual std::shared_ptr<Work> all_gather_async(const void* in, void* out, int64_t count, DType dtype) = 0;
  // send_counts[p] elements of `in` (consecutive blocks, in peer order) go to peer p;
  // recv_counts[p] elements from peer p land in consecutive blocks of `out`.
  virtual std::shared_ptr<Work> all_to_all_async(const void* in, const int64_t* send_counts, void* out,
                                                 const int64_t* recv_counts, DType dtype) = 0;
  virtual std::shared_ptr<Work> broadcast_async(void* data, int64_t count, DType dtype, int64_t root) = 0;
  // Point-to-point: the communicator's thread posts sends and receives in issue order and
  // Work::wait() waits for the transfer, so a send and a receive issued back to back (a
  // pipeline's exchange) are in flight together. A receive matches the send with the same
  // tag (0 .. 2^23 - 1) and byte count, in order; a size mismatch times out.
  virtual std::shared_ptr<Work> send_async(const void* data, int64_t count, DType dtype, int64_t peer,
                                           int64_t tag) = 0;
  virtual std::shared_ptr<Work> recv_async(void* data, int64_t count, DType dtype, int64_t peer, int64_t tag) = 0;
  virtual std::shared_ptr<Work> barrier_async() = 0;

  // Synchronous forms.
  void all_reduce(void* data, int64_t count, DType dtype, ReduceOp op) { all_reduce_async(data, count, dtype, op)->wait(); }
  void reduce_scatter(const void* in, void* out, int64_t count, DType dtype, ReduceOp op) {
    reduce_scatter_async(in, out, count, dtype, op)->wait();
  }
  void all_gather(const void* in, void* out, int64_t count, DType dtype) { all_gather_async(in, out, count, dtype)->wait(); }
  void all_to_all(const void* in, const int64_t* send_counts, void* out, const int64_t* recv_counts, DType dtype) {
    all_to_all_async(in, send_counts, out, recv_counts, dtype)->wait();
  }
  void broadcast(void* data, int64_t count, DType dtype, int64_t root) { broadcast_async(data, count, dtype, root)->wait(); }
  void send(const void* data, int64_t count, DType dtype, int64_t peer, int64_t tag = 0) {
    send_async(data, count, dtype, peer, tag)->wait();
  }
  void recv(void* data, int64_t count, DType dtype, int64_t peer, int64_t tag = 0) {
    recv_async(data, count, dtype, peer, tag)->wait();
  }
  void barrier() { barrier_async()->wait(); }

  // Payload bytes this rank has sent through this communicator so far (data only, no
  // framing), for checks of communication volume.
  virtual int64_t bytes_sent() const = 0;
};

struct CommOptions {
  double timeout_s = 600;  // dist.distributed_timeout_minutes * 60
  // Address the other ranks reach this one at; empty: the local address of the interface
  // that routes to the store's host.
  std::string host;
};

// A group over TCP (gloo transport): every member calls this with the same `name` and
// `global_ranks` (sorted, each once), its own world rank among them. Members meet through
// `store` under keys prefixed by the name. A group of one needs no network. The collectives
// are ring algorithms (all-reduce = reduce-scatter + all-gather, 2(n-1)/n of the data sent
// per rank); broadcast is a binomial tree, barrier a dissemination barrier. Reductions take
// f32, f64, i32 and i64 (kAvg: floats only); other dtypes throw Error(kNotSupported). Throws
// Error(kDistributed) when the group cannot be formed within the store's timeout, naming the
// ranks that never joined.
std::unique_ptr<Communicator> make_gloo_communicator(Store& store, const std::string& name,
                                                     const std::vector<int64_t>& global_ranks, int64_t world_rank,
                                                     const CommOptions& options);

}  // namespace mpt::dist
