// Versions and status strings: the parts of the C ABI that need no handle.
#include <cstddef>
#include <string_view>

#include "core/error.h"
#include "mptrain.h"

#define MPT_STRINGIFY_(x) #x
#define MPT_STRINGIFY(x) MPT_STRINGIFY_(x)

namespace {

constexpr const char kVersion[] = MPT_STRINGIFY(MPT_VERSION_MAJOR) "." MPT_STRINGIFY(
    MPT_VERSION_MINOR) "." MPT_STRINGIFY(MPT_VERSION_PATCH);

// The header's version and the project's (CMake) version must not drift apart.
static_assert(std::string_view(kVersion) == std::string_view(MPT_VERSION_STRING),
              "include/mptrain.h MPT_VERSION_* differ from the project version in CMakeLists.txt");

// The C codes are the C++ codes; src/api converts by value.
#define MPT_SAME_CODE(c, cc) static_assert(static_cast<int>(c) == static_cast<int>(mpt::Status::cc))
MPT_SAME_CODE(MPT_OK, kOk);
MPT_SAME_CODE(MPT_ERR_INVALID_ARGUMENT, kInvalidArgument);
MPT_SAME_CODE(MPT_ERR_INVALID_CONFIG, kInvalidConfig);
MPT_SAME_CODE(MPT_ERR_NOT_SUPPORTED, kNotSupported);
MPT_SAME_CODE(MPT_ERR_IO, kIoError);
MPT_SAME_CODE(MPT_ERR_CORRUPT_DATA, kCorruptData);
MPT_SAME_CODE(MPT_ERR_OUT_OF_MEMORY, kOutOfMemory);
MPT_SAME_CODE(MPT_ERR_DISTRIBUTED, kDistributed);
MPT_SAME_CODE(MPT_ERR_DEVICE, kDevice);
MPT_SAME_CODE(MPT_ERR_NUMERICAL, kNumerical);
MPT_SAME_CODE(MPT_ERR_INTERNAL, kInternal);
#undef MPT_SAME_CODE

// The layouts of version 1 of the ABI's structs, frozen on LP64 targets: fields may only
// be appended after the last offset listed here.
#if UINTPTR_MAX == 0xFFFFFFFFFFFFFFFFu
static_assert(offsetof(mpt_init_options, recipe_path) == 8);
static_assert(offsetof(mpt_init_options, num_overrides) == 32);
static_assert(offsetof(mpt_init_options, log_level) == 56);
static_assert(offsetof(mpt_init_options, master_addr) == 72);
static_assert(offsetof(mpt_init_options, master_port) == 80);
static_assert(sizeof(mpt_init_options) == 88);
static_assert(offsetof(mpt_batch, cols) == 40 && sizeof(mpt_batch) == 48);
static_assert(offsetof(mpt_step_result, consumed_samples) == 56 && sizeof(mpt_step_result) == 64);
static_assert(offsetof(mpt_model_info, activations_peak_bytes) == 88 &&
              offsetof(mpt_model_info, expert_params_bytes) == 96 && sizeof(mpt_model_info) == 104);
#endif
static_assert(sizeof(mpt_status) == sizeof(int), "mpt_status must stay int-sized");

}  // namespace

extern "C" {

const char* mpt_version(void) noexcept { return kVersion; }

int mpt_version_number(void) noexcept { return MPT_VERSION_NUMBER; }

const char* mpt_status_string(mpt_status status) noexcept {
  switch (status) {
    case MPT_OK: return "ok";
    case MPT_ERR_INVALID_ARGUMENT: return "invalid argument";
    case MPT_ERR_INVALID_CONFIG: return "invalid configuration";
    case MPT_ERR_NOT_SUPPORTED: return "not supported";
    case MPT_ERR_IO: return "input/output error";
    case MPT_ERR_CORRUPT_DATA: return "corrupt data";
    case MPT_ERR_OUT_OF_MEMORY: return "out of memory";
    case MPT_ERR_DISTRIBUTED: return "distributed error";
    case MPT_ERR_DEVICE: return "device error";
    case MPT_ERR_NUMERICAL: return "numerical error";
    case MPT_ERR_INTERNAL: return "internal error";
  }
  return "unknown status";
}

}  // extern "C"
