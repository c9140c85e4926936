// The stand-in for cudnn_attention.cc in a build without cuDNN or its frontend's headers
// (CMakeLists.txt picks one of the two): attention runs on mptrain's own kernels.
#include "cuda/fused_attention.h"

namespace mpt::cuda {

std::unique_ptr<FusedAttention> make_cudnn_attention(CudaOps&, std::string& why) {
  why = "this build has no cuDNN attention (cuDNN or the cudnn-frontend headers were not found at configure time)";
  return nullptr;
}

bool cudnn_attention_built() { return false; }

std::string check_cudnn_attention_graph(const AttentionPlanShape&, int) { return "this build has no cuDNN attention"; }

}  // namespace mpt::cuda
