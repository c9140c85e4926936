#include "backend/cpu/staging.h"

#include <algorithm>

#include "backend/cpu/check.h"
#include "backend/cpu/convert.h"

namespace mpt::backend::cpu {

namespace {

bool reads(Use u) { return u == Use::kIn || u == Use::kInOut || u == Use::kOperand; }
bool writes(Use u) { return u == Use::kOut || u == Use::kInOut; }

}  // namespace

Bf16Staging::Bf16Staging(const char* op, StagingScratch& scratch, std::initializer_list<StagedArg> args) {
  MPT_CPU_CHECK(args.size() <= static_cast<size_t>(kMaxSlots), op,
                str("more than ", kMaxSlots, " tensor arguments to stage"));
  // Checks and the sharing of copies are settled before any memory is touched.
  std::array<int, kMaxSlots> slot_of;  // per argument: its slot when staged, else -1
  slot_of.fill(-1);
  int arg = -1;
  for (const StagedArg& a : args) {
    ++arg;
    Tensor& t = *a.tensor;
    if (t.data == nullptr) {
      // An optional argument left out (or a missing one, which the kernel reports).
      t.dtype = DType::kF32;
      continue;
    }
    if (a.use == Use::kF32)
      MPT_CPU_CHECK(t.dtype == DType::kF32, op,
                    str(a.name, " must be F32 (it stays fp32 under bf16 mixed precision), got ", describe(t)));
    else
      check_float(op, a.name, t);
    const bool staged = t.dtype == DType::kBF16 || a.use == Use::kOperand;
    if (staged && t.numel() == 0) {
      t.dtype = DType::kF32;  // nothing to convert
      continue;
    }
    int index = 0;
    while (index < num_slots_ && slots_[index].data != t.data) ++index;
    Slot* s = &slots_[index];
    if (index < num_slots_) {
      MPT_CPU_CHECK(s->dtype == t.dtype, op,
                    str(a.name, " ", describe(t), " shares memory with ", s->name, " (", dtype_name(s->dtype),
                        "): aliased arguments must have the same dtype"));
      MPT_CPU_CHECK(s->staged == staged, op,
                    str(a.name, " ", describe(t), " shares memory with ", s->name,
                        ": a GEMM operand of a bf16 product cannot alias another argument"));
    } else {
      ++num_slots_;
      s->name = a.name;
      s->data = t.data;
      s->dtype = t.dtype;
      s->staged = staged;
    }
    if (!staged) continue;  // fp32 memory the kernel uses as it is
    slot_of[arg] = index;
    const int64_t n = t.numel();
    s->size = std::max(s->size, n);
    if (reads(a.use)) s->read = std::max(s->read, n);
    if (writes(a.use)) s->write = std::max(s->write, n);
  }

  int64_t total = 0;
  for (int i = 0; i < num_slots_; ++i) {
    slots_[i].offset = total;
    if (slots_[i].staged) total += slots_[i].size;
  }
  if (total == 0) return;
  lock_ = std::unique_lock<std::mutex>(scratch.mu, std::try_to_lock);
  buf_ = lock_.owns_lock() ? &scratch.buf : &own_;
  if (buf_->size() < static_cast<size_t>(total)) buf_->resize(static_cast<size_t>(total));

  for (int i = 0; i < num_slots_; ++i) {
    const Slot& s = slots_[i];
    if (!s.staged || s.read == 0) continue;
    float* copy = buf_->data() + s.offset;
    if (s.dtype == DType::kBF16)
      widen_bf16(copy, static_cast<const uint16_t*>(s.data), s.read);
    else
      round_to_bf16(copy, static_cast<const float*>(s.data), s.read);
  }
  arg = -1;
  for (const StagedArg& a : args) {
    if (slot_of[++arg] < 0) continue;
    a.tensor->data = buf_->data() + slots_[slot_of[arg]].offset;
    a.tensor->dtype = DType::kF32;
  }
}

void Bf16Staging::finish() {
  for (int i = 0; i < num_slots_; ++i) {
    const Slot& s = slots_[i];
    if (!s.staged || s.write == 0) continue;
    MPT_ASSERT(s.dtype == DType::kBF16);
    narrow_to_bf16(static_cast<uint16_t*>(s.data), buf_->data() + s.offset, s.write);
  }
}

}  // namespace mpt::backend::cpu
