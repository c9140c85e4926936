// C helpers that cgo's rules call for: the log function pointer (the exported Go function's
// C type differs in const), the cgo.Handle passed as user_data, and a batch assembled on
// the C side, so that no Go memory handed to C holds a Go pointer.
#ifndef MPTRAIN_GO_SHIM_H
#define MPTRAIN_GO_SHIM_H

#include <stdint.h>
#include <mptrain.h>

void mpt_go_set_log(mpt_init_options* opts, uintptr_t handle);

mpt_status mpt_go_train_step(mpt_model* model, const int32_t* tokens, const int32_t* labels,
                             const float* loss_mask, int64_t rows, int64_t cols,
                             mpt_step_result* out);

#endif
