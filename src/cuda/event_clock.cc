// The profiling timeline's DeviceClock on the CUDA backend: marks are CUDA events recorded on
// the backend's compute stream. The GPU's clock is pinned to the host's once per profiled step:
// the step's first mark records an origin event and waits for it, so the host time just after
// is when the GPU passed it (to within the wait's wake-up latency); a mark's time is the
// origin's plus the elapsed time between the two events.
#include <chrono>
#include <memory>
#include <vector>

#include "cuda/cuda_ops.h"
#include "cuda/device.h"
#include "train/timeline.h"

namespace mpt {
namespace {

class EventClock final : public DeviceClock {
 public:
  explicit EventClock(cudaStream_t stream) : stream_(stream) {
    MPT_CUDA_CHECK(cudaEventCreate(&origin_));
    events_.reserve(kInitialEvents);
    for (size_t i = 0; i < kInitialEvents; ++i) add_event();
  }
  ~EventClock() override {
    cudaEventDestroy(origin_);
    for (cudaEvent_t e : events_) cudaEventDestroy(e);
  }
  EventClock(const EventClock&) = delete;
  EventClock& operator=(const EventClock&) = delete;

  int32_t mark() override {
    if (used_ == 0) {
      MPT_CUDA_CHECK(cudaEventRecord(origin_, stream_));
      MPT_CUDA_CHECK(cudaEventSynchronize(origin_));
      origin_host_ = std::chrono::steady_clock::now();
    }
    if (used_ == events_.size()) add_event();  // past the pool: one more, kept for later steps
    MPT_CUDA_CHECK(cudaEventRecord(events_[used_], stream_));
    return static_cast<int32_t>(used_++);
  }

  TimePoint time_of(int32_t mark) override {
    cudaEvent_t e = events_.at(static_cast<size_t>(mark));
    MPT_CUDA_CHECK(cudaEventSynchronize(e));
    float ms = 0;
    MPT_CUDA_CHECK(cudaEventElapsedTime(&ms, origin_, e));
    return origin_host_ + std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                              std::chrono::duration<double, std::milli>(ms));
  }

  void reset() override { used_ = 0; }

 private:
  static constexpr size_t kInitialEvents = 1024;

  void add_event() {
    cudaEvent_t e = nullptr;
    MPT_CUDA_CHECK(cudaEventCreate(&e));
    events_.push_back(e);
  }

  cudaStream_t stream_;
  cudaEvent_t origin_ = nullptr;
  TimePoint origin_host_;
  std::vector<cudaEvent_t> events_;
  size_t used_ = 0;  // marks recorded since the last reset
};

}  // namespace

std::unique_ptr<DeviceClock> train::make_device_clock(backend::Ops& ops) {
  auto* gpu = dynamic_cast<cuda::CudaOps*>(&ops);
  if (gpu == nullptr) return nullptr;
  MPT_CUDA_CHECK(cudaSetDevice(gpu->device()));
  return std::make_unique<EventClock>(gpu->stream());
}

}  // namespace mpt
