// How the fp32 kernels serve bf16 calls (ops.h, "Precision"): before the kernel, each BF16
// argument is replaced by an fp32 copy in a scratch buffer, widened exactly when the op
// reads it; after the kernel, the copies of the op's outputs are rounded back into their
// bf16 memory. A call thus equals the fp32 op on the widened inputs with its outputs
// rounded once, and an "acc" output is widened, added to in fp32 and rounded.
#pragma once

#include <array>
#include <cstdint>
#include <initializer_list>
#include <mutex>
#include <vector>

#include "core/tensor.h"

namespace mpt::backend::cpu {

// The fp32 copies, kept by the ops object and grown to the largest call seen, so that
// steady-state steps do not allocate. A call that finds it in use by another thread takes
// its own.
struct StagingScratch {
  std::mutex mu;
  std::vector<float> buf;
};

// How an op uses one of its floating arguments.
enum class Use {
  kIn,       // read
  kOut,      // overwritten: the kernel writes every element
  kInOut,    // read and written ("acc" outputs, in-place ops)
  kOperand,  // read as an operand of a bf16 GEMM: rounded to bf16 values even when F32
  kF32,      // kept in fp32 under mixed precision (ops.h lists them): must be F32
};

struct StagedArg {
  const char* name;
  Tensor* tensor;  // rewritten to the fp32 copy while the call is staged
  Use use;
};

// True when every argument is F32: the call runs the fp32 kernel as it is.
inline bool all_f32(std::initializer_list<StagedArg> args) {
  for (const StagedArg& a : args)
    if (a.tensor->dtype != DType::kF32) return false;
  return true;
}

// One op call's staging. The constructor checks every argument (F32 or BF16, and F32 for
// kF32), then points each BF16 or kOperand argument at its fp32 copy: widened (rounded,
// for an F32 kOperand) when read, left unset for kOut. Arguments with the same data
// pointer share one copy, so an output may alias an input; aliased arguments must agree in
// dtype. finish() rounds the outputs' copies back; a kernel that throws skips it, and the
// outputs are then left as they were.
class Bf16Staging {
 public:
  Bf16Staging(const char* op, StagingScratch& scratch, std::initializer_list<StagedArg> args);
  Bf16Staging(const Bf16Staging&) = delete;
  Bf16Staging& operator=(const Bf16Staging&) = delete;
  void finish();

 private:
  static constexpr int kMaxSlots = 12;
  // One distinct memory area among the arguments.
  struct Slot {
    const char* name = nullptr;  // the first argument found there, for messages
    void* data = nullptr;
    DType dtype = DType::kF32;
    bool staged = false;         // has an fp32 copy
    bool round = false;          // the copy is rounded to bf16 values (F32 operand)
    int64_t size = 0;            // elements of the copy
    int64_t read = 0, write = 0; // leading elements widened before, narrowed after
    int64_t offset = 0;          // of the copy in the buffer
  };

  std::array<Slot, kMaxSlots> slots_;
  int num_slots_ = 0;
  std::unique_lock<std::mutex> lock_;
  std::vector<float> own_;
  std::vector<float>* buf_ = nullptr;
};

}  // namespace mpt::backend::cpu
