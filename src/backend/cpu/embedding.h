// Vocab-parallel embedding lookup: a rank's table holds rows [vocab_start,
// vocab_start + V_local) of the vocabulary; ids outside it contribute zeros.
#pragma once

#include <cstdint>

#include "core/tensor.h"

namespace mpt::backend::cpu {

// out[t,:] (= or +=) table[ids[t] - vocab_start], zeros for ids outside the table.
void embedding_fwd(Tensor out, Tensor ids, Tensor table, int64_t vocab_start, bool accumulate);
// dtable[ids[t] - vocab_start] += dout[t,:] for ids inside the table. Threads own column
// blocks and walk tokens in order, so repeated ids sum in a fixed order.
void embedding_bwd(Tensor dtable, Tensor ids, Tensor dout, int64_t vocab_start);

}  // namespace mpt::backend::cpu
