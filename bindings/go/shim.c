#include "shim.h"

#include "_cgo_export.h"

static int mpt_go_log(void* user_data, int32_t level, const char* message) {
  return mptGoLog(user_data, level, (char*)message);
}

void mpt_go_set_log(mpt_init_options* opts, uintptr_t handle) {
  opts->log_fn = mpt_go_log;
  opts->log_user_data = (void*)handle;
}

mpt_status mpt_go_train_step(mpt_model* model, const int32_t* tokens, const int32_t* labels,
                             const float* loss_mask, int64_t rows, int64_t cols,
                             mpt_step_result* out) {
  mpt_batch batch = MPT_BATCH_INIT;
  batch.tokens = tokens;
  batch.labels = labels;
  batch.loss_mask = loss_mask;
  batch.rows = rows;
  batch.cols = cols;
  return mpt_train_step(model, &batch, out);
}
