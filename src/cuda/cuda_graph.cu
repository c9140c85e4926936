// Graph capture on the CUDA backend: the backend's stream is recorded into a CUDA graph
// (cudaStreamBeginCapture in thread-local mode, so the CUDA calls of other threads, such as
// communicator workers, are not disturbed), instantiated once, and replayed with
// cudaGraphLaunch on the same stream. What a replay could not repeat (a new allocation, a
// copy from or to the host, a wait for the GPU) is refused during capture by the call
// itself (cuda_ops.cu), and the first refusal fails end_capture().
#include <cuda_runtime.h>

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "core/error.h"
#include "cuda/cuda_ops.h"
#include "cuda/device.h"
#include "cuda/scratch_ledger.h"

namespace mpt::cuda {

namespace {

// "call: <error name> (<error string>)", clearing the runtime's last error so that a later
// launch check does not report it again.
std::string cuda_failure(const char* call, cudaError_t err) {
  cudaGetLastError();
  return str(call, ": ", cudaGetErrorName(err), " (", cudaGetErrorString(err), ")");
}

// A captured graph and its instantiation, replayed on the stream it was captured from. It
// holds the scratch generation it was recorded in, so that the scratch areas it replays stay
// allocated while it lives (scratch_ledger.h).
class CudaGraph final : public backend::Graph {
 public:
  CudaGraph(cudaStream_t stream, cudaGraph_t graph, std::shared_ptr<ScratchLedger> ledger)
      : stream_(stream), graph_(graph), ledger_(std::move(ledger)), generation_(ledger_->hold_for_graph()) {}
  ~CudaGraph() override {  // an in-flight replay finishes first; the status carries nothing to act on
    if (exec_) cudaGraphExecDestroy(exec_);
    if (graph_) cudaGraphDestroy(graph_);
    ledger_->release_graph(generation_);
  }
  CudaGraph(const CudaGraph&) = delete;
  CudaGraph& operator=(const CudaGraph&) = delete;

  // Counts the recorded nodes and makes the executable graph (none for an empty one: there is
  // nothing to launch); on failure the destructor frees what was made.
  void instantiate() {
    size_t count = 0;
    MPT_CUDA_CHECK(cudaGraphGetNodes(graph_, nullptr, &count));
    nodes_ = static_cast<int64_t>(count);
    if (nodes_ > 0) MPT_CUDA_CHECK(cudaGraphInstantiate(&exec_, graph_, 0));
  }

  void replay() override {
    if (exec_) MPT_CUDA_CHECK(cudaGraphLaunch(exec_, stream_));
  }
  int64_t nodes() const override { return nodes_; }

 private:
  cudaStream_t stream_;
  cudaGraph_t graph_;
  std::shared_ptr<ScratchLedger> ledger_;
  uint64_t generation_;
  cudaGraphExec_t exec_ = nullptr;
  int64_t nodes_ = 0;
};

}  // namespace

void CudaOps::refuse_in_capture(const std::string& call, const char* why) {
  std::string refusal = str(call, " during graph capture: ", why);
  if (capture_error_.empty()) capture_error_ = refusal;
  fail(Status::kInternal, name_, ": ", refusal);
}

void CudaOps::begin_capture() {
  if (capturing_) refuse_in_capture("begin_capture()", "a capture is already under way");
  MPT_CUDA_CHECK(cudaSetDevice(device_));
  MPT_CUDA_CHECK(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal));
  capturing_ = true;
  capture_error_.clear();
  released_in_capture_.clear();
}

std::unique_ptr<backend::Graph> CudaOps::end_capture() {
  MPT_CHECK(capturing_, Status::kInternal, name_, ": end_capture() without begin_capture()");
  // End the capture first, whatever happened during it: the stream is then usable again.
  capturing_ = false;
  cudaGraph_t graph = nullptr;
  const cudaError_t ended = cudaStreamEndCapture(stream_, &graph);
  std::string error = std::move(capture_error_);
  capture_error_.clear();
  Status status = Status::kInternal;
  if (ended != cudaSuccess) {
    const std::string failure = cuda_failure("cudaStreamEndCapture", ended);
    if (error.empty()) {  // a refused call comes first: it is usually what invalidated the capture
      error = failure;
      status = Status::kDevice;
    }
  } else if (graph == nullptr && error.empty()) {
    error = "cudaStreamEndCapture returned no graph";
    status = Status::kDevice;
  }
  // Blocks released during the capture: nothing recorded will run now, so they can go back.
  std::vector<void*> released = std::move(released_in_capture_);
  released_in_capture_.clear();
  for (void* p : released) {
    try {
      alloc_->release(p);
    } catch (const Error& e) {  // a pointer the allocator never gave out: say so beside the rest
      error += str("; then ", e.what());
    }
  }
  if (!error.empty()) {
    if (graph) cudaGraphDestroy(graph);
    fail(status, name_, ": graph capture failed: ", error);
  }
  // Scratch cannot grow during a capture, so the generation now is the one it recorded in.
  auto recorded = std::make_unique<CudaGraph>(stream_, graph, scratch_ledger_);
  recorded->instantiate();
  return recorded;
}

}  // namespace mpt::cuda
