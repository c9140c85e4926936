// MLP activations: GELU (erf and tanh forms), SiLU, ReLU, squared ReLU, plain or gated
// (GLU: x rows [gate | up], out = act(gate) * up).
#pragma once

#include "backend/ops.h"

namespace mpt::backend::cpu {

// out [T, F] = act(x) for x [T, F]; gated: x [T, 2F], out [T, F] = act(gate) * up.
void activation_fwd(Tensor out, Tensor x, Activation act, bool gated);
// Overwrites dx (shaped like x).
void activation_bwd(Tensor dx, Tensor dout, Tensor x, Activation act, bool gated);

}  // namespace mpt::backend::cpu
