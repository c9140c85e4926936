// The engine's way to NCCL (dist::make_device_communicator, see dist/staged_communicator.h):
// a communicator on the CUDA backend's GPU whose operations wait for that backend's stream.
#include <memory>

#include "cuda/cuda_ops.h"
#include "cuda/nccl_communicator.h"
#include "dist/staged_communicator.h"

namespace mpt::dist {

std::unique_ptr<Communicator> make_device_communicator(Store& store, const std::string& name,
                                                       const std::vector<int64_t>& global_ranks, int64_t world_rank,
                                                       const CommOptions& options, backend::Ops& ops) {
  auto* gpu = dynamic_cast<cuda::CudaOps*>(&ops);
  if (gpu == nullptr) return nullptr;
  std::unique_ptr<cuda::NcclCommunicator> c =
      cuda::make_nccl_communicator(store, name, global_ranks, world_rank, gpu->device(), options);
  c->set_input_stream(gpu->stream());
  return c;
}

}  // namespace mpt::dist
