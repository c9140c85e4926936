// Rotary position embedding, Megatron's non-interleaved (rotate-half) form.
#pragma once

#include <cstdint>

#include "core/tensor.h"

namespace mpt::backend::cpu {

// In place on x [T, heads, head_dim], token t at positions[t] (I32). For i < rotary_dim/2,
// the pair (x_i, x_{i+rotary_dim/2}) turns by pos * base^(-2i/rotary_dim); channels from
// rotary_dim on are untouched. inverse turns by the negative angle (the backward).
void rope(Tensor x, Tensor positions, int64_t heads, int64_t head_dim, int64_t rotary_dim, float base, bool inverse);

}  // namespace mpt::backend::cpu
