// What a failed cudaGetDeviceCount means (backend/devices.h): only "no GPU present" and "no
// driver installed at all" read as a machine without a GPU; a driver older than the runtime,
// a driver mismatch and every other error are problems whose message names the CUDA error
// and what to check. Pure values: no CUDA needed at run time.
#include <gtest/gtest.h>

#include <string>

#include "backend/devices.h"

namespace mpt::backend {
namespace {

DeviceCountFailure failure(int error, const char* name, const char* text, int driver, int runtime = 13000) {
  DeviceCountFailure f;
  f.error = error;
  f.name = name;
  f.text = text;
  f.driver_version = driver;
  f.runtime_version = runtime;
  return f;
}

void expect_mentions(const std::string& message, const std::string& part) {
  EXPECT_NE(message.find(part), std::string::npos) << "'" << message << "' lacks '" << part << "'";
}

TEST(DeviceCount, NoDeviceMeansNoGpu) {
  EXPECT_TRUE(device_count_means_no_gpu(
      failure(kCudaErrorNoDevice, "cudaErrorNoDevice", "no CUDA-capable device is detected", 12080)));
  EXPECT_TRUE(device_count_means_no_gpu(
      failure(kCudaErrorNoDevice, "cudaErrorNoDevice", "no CUDA-capable device is detected", 0)));
}

// The runtime reports "insufficient driver" when it finds no libcuda at all: a build machine.
TEST(DeviceCount, InsufficientDriverWithoutAnyDriverMeansNoGpu) {
  EXPECT_TRUE(device_count_means_no_gpu(failure(kCudaErrorInsufficientDriver, "cudaErrorInsufficientDriver",
                                                "CUDA driver version is insufficient for CUDA runtime version", 0)));
}

TEST(DeviceCount, AnOldDriverIsAProblemNamingBothVersions) {
  const auto f = failure(kCudaErrorInsufficientDriver, "cudaErrorInsufficientDriver",
                         "CUDA driver version is insufficient for CUDA runtime version", 12020, 13000);
  EXPECT_FALSE(device_count_means_no_gpu(f));
  const std::string m = device_count_problem(f);
  expect_mentions(m, "cudaGetDeviceCount failed");
  expect_mentions(m, "cudaErrorInsufficientDriver");
  expect_mentions(m, "insufficient for CUDA runtime");
  expect_mentions(m, "driver for CUDA 12.2");
  expect_mentions(m, "runtime CUDA 13.0");
  expect_mentions(m, "update the NVIDIA driver");
}

TEST(DeviceCount, EveryOtherErrorIsAProblemWithWhatToCheck) {
  struct Case {
    int error;
    const char* name;
    const char* hint;
  };
  const Case cases[] = {
      {kCudaErrorSystemDriverMismatch, "cudaErrorSystemDriverMismatch", "kernel module"},
      {kCudaErrorStubLibrary, "cudaErrorStubLibrary", "stubs"},
      {kCudaErrorCompatNotSupportedOnDevice, "cudaErrorCompatNotSupportedOnDevice", "cuda-compat"},
      {kCudaErrorInvalidDevice, "cudaErrorInvalidDevice", "CUDA_VISIBLE_DEVICES"},
      {kCudaErrorDevicesUnavailable, "cudaErrorDevicesUnavailable", "compute mode"},
      {999, "cudaErrorUnknown", "/dev/nvidia"},
      {304, "cudaErrorOperatingSystem", "nvidia-smi"},
  };
  for (const Case& c : cases) {
    for (int driver : {0, 13000}) {
      const auto f = failure(c.error, c.name, "the error's words", driver);
      EXPECT_FALSE(device_count_means_no_gpu(f)) << c.name << " with driver " << driver;
      const std::string m = device_count_problem(f);
      expect_mentions(m, c.name);
      expect_mentions(m, "the error's words");
      expect_mentions(m, "error " + std::to_string(c.error));
      expect_mentions(m, c.hint);
      expect_mentions(m, driver ? "driver for CUDA 13.0" : "no driver found");
    }
  }
}

// On any machine the count is a number or an error, never a crash; on a machine whose driver
// is broken this fails, loudly, as it should.
TEST(DeviceCount, TheCountOnThisMachineIsReadable) { EXPECT_GE(cuda_device_count(), 0); }

}  // namespace
}  // namespace mpt::backend
