// A communicator for buffers in a backend's memory (a GPU's) over a transport that only
// reaches host memory (gloo): each call copies the device buffers it reads to host memory,
// runs the collective there, and copies what it wrote back when waited on. Host buffers
// pass straight through, so one communicator serves both (a gradient bucket on the device,
// a loss sum on the host). This is how ranks that share one GPU communicate (NCCL refuses
// two ranks on one device), and how the engine runs on a backend whose memory the host
// cannot touch.
#pragma once

#include <memory>

#include "backend/ops.h"
#include "dist/communicator.h"

namespace mpt::dist {

// Wraps `inner`; `ops` tells device memory from host memory and copies between them.
std::unique_ptr<Communicator> make_staged_communicator(std::unique_ptr<Communicator> inner, backend::Ops& ops);

}  // namespace mpt::dist
