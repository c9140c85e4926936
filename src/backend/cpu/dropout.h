// Dropout whose mask is regenerated from (key, element index), never stored.
#pragma once

#include <cstdint>

#include "core/tensor.h"

namespace mpt::backend::cpu {

// x, out [R, C]: element (r, c) is kept iff dropout_keep(key, (row_offset + r) * C + c, p)
// and scaled by 1 / (1 - p). out may alias x.
void dropout_fwd(Tensor out, Tensor x, float p, uint64_t key, int64_t row_offset);
// dx = the same mask and scale applied to dout; overwrites dx, which may alias dout.
void dropout_bwd(Tensor dx, Tensor dout, float p, uint64_t key, int64_t row_offset);

}  // namespace mpt::backend::cpu
