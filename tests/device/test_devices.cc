// GPU checks: run on a machine with an NVIDIA GPU, skipped elsewhere.
#include <gtest/gtest.h>

#include "backend/devices.h"
#include "core/error.h"
#include "cuda/device.h"

namespace mpt {
namespace {

TEST(Device, VisibleGpusReportSaneProperties) {
  auto devices = cuda::visible_devices();
  if (devices.empty()) GTEST_SKIP() << "no CUDA GPU visible";
  for (const auto& d : devices) {
    EXPECT_FALSE(d.name.empty());
    EXPECT_GE(d.compute_major, 9) << d.name << ": the CUDA sources are built for sm_90 and newer";
    EXPECT_GT(d.total_memory, size_t{1} << 30);
    EXPECT_GT(d.multiprocessors, 0);
  }
  EXPECT_EQ(backend::cuda_device_count(), static_cast<int>(devices.size()));
  EXPECT_FALSE(backend::cuda_device_summary().empty());
}

TEST(Device, ErrorsNameTheCall) {
  try {
    MPT_CUDA_CHECK(1);  // cudaErrorInvalidValue
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_EQ(e.status(), Status::kDevice);
    EXPECT_NE(std::string(e.what()).find("1 failed: cudaErrorInvalidValue"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace mpt
