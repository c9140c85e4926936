// The host-memory defaults of Ops' memory calls (the CPU backend's), graphs refused, and the
// CUDA backend's factory in a build without CUDA.
#include <cstdlib>
#include <cstring>

#include "backend/ops.h"
#include "core/error.h"

namespace mpt::backend {

void* Ops::allocate(size_t bytes) {
  const size_t rounded = (bytes + 255) / 256 * 256;
  void* p = rounded == 0 ? nullptr : std::aligned_alloc(256, rounded);
  MPT_CHECK(rounded == 0 || p != nullptr, Status::kOutOfMemory, name(), ": cannot allocate ", bytes, " bytes");
  if (p) std::memset(p, 0, rounded);
  return p;
}

void Ops::release(void* p) { std::free(p); }

void Ops::to_device(void* dst, const void* src, size_t bytes) {
  if (bytes) std::memcpy(dst, src, bytes);
}

void Ops::to_host(void* dst, const void* src, size_t bytes) {
  if (bytes) std::memcpy(dst, src, bytes);
}

void Ops::device_copy(void* dst, const void* src, size_t bytes) {
  if (bytes) std::memmove(dst, src, bytes);
}

void Ops::begin_capture() { fail(Status::kNotSupported, name(), ": this backend does not record graphs"); }

std::unique_ptr<Graph> Ops::end_capture() {
  fail(Status::kNotSupported, name(), ": this backend does not record graphs");
}

#ifndef MPT_HAVE_CUDA
std::unique_ptr<Ops> make_cuda_ops(int device) {
  fail(Status::kNotSupported, "the CUDA backend (GPU ", device, "): this build has no CUDA sources");
}
#endif

}  // namespace mpt::backend
