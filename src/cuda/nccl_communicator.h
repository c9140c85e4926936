// Collectives over device buffers with NCCL: the dist::Communicator of the CUDA backend.
// Built only when NCCL is found (MPT_HAVE_NCCL); needs NCCL 2.14 or newer.
//
// Streams and waiting. Every operation runs on the communicator's own CUDA stream; the
// asynchronous forms return at once with a Work whose wait() blocks the host until the
// operation has finished on the GPU (an event recorded after it, polled together with
// NCCL's asynchronous error state and the timeout). After wait() the outputs may be used on
// any stream. This stream sees no other stream: a caller either finishes writing the inputs
// before issuing (e.g. Ops::synchronize()) or names the stream that writes them with
// set_input_stream(). Buffers must stay alive and untouched until the Work is waited on.
//
// What communicator.h leaves to the transport:
// - Reductions take f32, f64, i32, i64, bf16 and f16 (kAvg, through ncclAvg: floating
//   types only); all_gather, all_to_all, broadcast and send/recv move any dtype as bytes.
//   NCCL picks its algorithm (ring, tree, NVLS) by size and topology; every rank gets the
//   same bits. In place: all_reduce and broadcast always; reduce_scatter when out is this
//   rank's block of in, all_gather when in is this rank's block of out; other overlaps are
//   refused.
// - bytes_sent() counts what the ring algorithms send per rank (NCCL's own traffic cannot
//   be observed): all_reduce 2 (n-1)/n of the data (the gloo communicator's formula),
//   reduce_scatter and all_gather (n-1) blocks, all_to_all the blocks for other ranks,
//   broadcast the data on every rank but the last of the chain from the root, send its
//   payload. Barriers and the point-to-point headers are framing and do not count.
// - Point to point: NCCL has no tags, so messages between two ranks match in issue order.
//   Each message carries a 32-byte header (tag, per-pair sequence number, bytes) and a
//   receive whose header is not the one it expects fails wait() with Error(kDistributed)
//   naming both; a size mismatch times out, as with gloo. NCCL runs one stream's operations
//   in order, so two ranks that both send before they receive would wait on each other:
//   sends and receives are therefore held and launched together as one NCCL group when this
//   process next waits on any NCCL Work, issues a collective on this communicator, or
//   destroys it. A send and a receive issued back to back (a pipeline's exchange) are thus
//   in flight together, as communicator.h promises; a rank must not block on anything
//   but an NCCL Work (a host collective, say) while a peer waits for its pending sends.
// - The first collective, and the first send or receive between two ranks, connects them
//   and returns only when every rank involved has issued it.
// - Failures: an NCCL error (the call named, with ncclGetErrorString and NCCL's last
//   message), an asynchronous error found while waiting, or no completion within
//   CommOptions::timeout_s aborts the NCCL communicator (ncclCommAbort) and throws
//   Error(kDistributed) naming the group, this rank and the operation; every later call
//   throws. A CUDA failure throws Error(kDevice). Bad arguments (a host pointer, a negative
//   count, a peer outside the group, ...) throw Error(kInvalidArgument) and leave the
//   communicator usable.
// - Work::times() reports when the GPU ran the operation: a pair of timing events recorded
//   on the stream just before and just after its NCCL calls (a group counts as one; sends
//   and receives launched together share their group's), turned into host steady-clock
//   times by a reference event on a private stream. Known once the events have completed;
//   late by the host's reading of the reference (a microsecond or two), never early (the
//   bound is in nccl_group_internal.h, TimingPool). Recording them synchronizes nothing,
//   and the events are reused across operations.
// - Thread safety: any thread may issue operations, wait on Works and ask their times; calls
//   are serialised.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "dist/communicator.h"

namespace mpt::dist {
class Store;
}

namespace mpt::cuda {

class NcclCommunicator : public dist::Communicator {
 public:
  // The stream every operation of this communicator runs on (on its device).
  virtual cudaStream_t stream() const = 0;
  // From now on every operation first waits, on the device, for the work queued on
  // `producer` (a stream of the same device) at the time it is issued, so inputs written
  // there need no host synchronization. nullptr (the default) orders nothing.
  virtual void set_input_stream(cudaStream_t producer) = 0;
};

// A group over NCCL on GPU `device`: every member calls this with the same `name` and
// `global_ranks` (sorted, each once), its own world rank among them. Group rank 0 creates
// the NCCL unique id and publishes it through `store` under keys prefixed by
// "nccl/<name>/" (each formation under a name gets fresh keys); a group of one uses no
// store. Throws Error(kInvalidArgument) for bad arguments, Error(kDevice) when the device
// cannot be used, and Error(kDistributed) naming the ranks that never joined when the
// group does not form within options.timeout_s (or the store's timeout for the id).
std::unique_ptr<NcclCommunicator> make_nccl_communicator(dist::Store& store, const std::string& name,
                                                         const std::vector<int64_t>& global_ranks,
                                                         int64_t world_rank, int device,
                                                         const dist::CommOptions& options);

}  // namespace mpt::cuda
