// A communicator for buffers in a backend's memory (a GPU's) over a transport that only
// reaches host memory (gloo): each call copies the device buffers it reads to host memory,
// runs the collective there, and copies what it wrote back when waited on. Host buffers
// pass straight through, so one communicator serves both (a gradient bucket on the device,
// a loss sum on the host). This is how ranks that share one GPU communicate (NCCL refuses
// two ranks on one device), and how the engine runs on a backend whose memory the host
// cannot touch.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "backend/ops.h"
#include "dist/communicator.h"

namespace mpt::dist {

// Wraps `inner`; `ops` tells device memory from host memory and copies between them.
std::unique_ptr<Communicator> make_staged_communicator(std::unique_ptr<Communicator> inner, backend::Ops& ops);

// One group over two transports: a call whose buffers are all device memory goes to
// `device` (NCCL), any other to `host` (gloo), staged when it mixes the two. Both are formed
// over the same ranks; every rank issues the same calls, so each transport sees the same
// sequence everywhere. bytes_sent() adds both.
std::unique_ptr<Communicator> make_hybrid_communicator(std::unique_ptr<Communicator> host,
                                                       std::unique_ptr<Communicator> device, backend::Ops& ops);

// A communicator over device buffers for `ops`' device (NCCL for the CUDA backend), or null
// when this build or backend has none. Arguments as make_gloo_communicator's.
std::unique_ptr<Communicator> make_device_communicator(Store& store, const std::string& name,
                                                       const std::vector<int64_t>& global_ranks, int64_t world_rank,
                                                       const CommOptions& options, backend::Ops& ops);

}  // namespace mpt::dist
