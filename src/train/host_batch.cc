#include "train/host_batch.h"

#include <cmath>

#include "core/error.h"

namespace mpt::train {

namespace {
void check_host_batch(const HostBatch& b, const HostBatchShape& sh) {
  const int64_t S = sh.seq;
  MPT_CHECK(b.tokens != nullptr, Status::kInvalidArgument, "batch.tokens is NULL");
  MPT_CHECK(b.rows == sh.rows, Status::kInvalidArgument, "batch.rows is ", b.rows, " but the recipe needs ", sh.rows,
            " (micro_batch_size ", sh.micro_batch, " x ", sh.microbatches, " micro-batches)");
  const int64_t want_cols = b.labels ? S : S + 1;
  MPT_CHECK(b.cols == want_cols, Status::kInvalidArgument, "batch.cols is ", b.cols, " but must be ", want_cols,
            b.labels ? " (seq_length, labels given)" : " (seq_length + 1, labels taken from the shifted tokens)");
  for (int64_t r = 0; r < b.rows; ++r)
    for (int64_t c = 0; c < b.cols; ++c) {
      int32_t v = b.tokens[r * b.cols + c];
      MPT_CHECK(v >= 0 && v < sh.vocab, Status::kInvalidArgument, "batch.tokens[", r, "][", c, "] = ", v,
                " is outside the vocabulary [0, ", sh.vocab, ")");
    }
  for (int64_t r = 0; r < b.rows; ++r)
    for (int64_t s = 0; s < S; ++s) {
      const int64_t i = r * S + s;
      float m = b.loss_mask ? b.loss_mask[i] : 1.0f;
      MPT_CHECK(std::isfinite(m) && m >= 0.0f, Status::kInvalidArgument, "batch.loss_mask[", r, "][", s, "] = ", m,
                " must be finite and >= 0");
      if (b.labels && m != 0.0f) {
        int32_t v = b.labels[i];
        MPT_CHECK(v >= 0 && v < sh.vocab, Status::kInvalidArgument, "batch.labels[", r, "][", s, "] = ", v,
                  " is outside the vocabulary [0, ", sh.vocab, ")");
      }
    }
}
}  // namespace

void stage_host_batch(const HostBatch& hb, const HostBatchShape& sh, const std::function<int64_t(int64_t)>& position,
                      data::RankBatch& b) {
  check_host_batch(hb, sh);
  const int64_t S = sh.seq, L = sh.local_seq, rows = sh.rows;
  b.rows = rows;
  b.cols = L;
  b.tokens.resize(static_cast<size_t>(rows * L));
  b.labels.resize(static_cast<size_t>(rows * L));
  b.loss_mask.resize(static_cast<size_t>(rows * L));
  for (int64_t r = 0; r < rows; ++r) {
    const int32_t* tok = hb.tokens + r * hb.cols;
    for (int64_t j = 0; j < L; ++j) {
      const int64_t s = position(j);
      const size_t i = static_cast<size_t>(r * L + j), g = static_cast<size_t>(r * S + s);
      b.tokens[i] = tok[s];
      b.labels[i] = hb.labels ? hb.labels[g] : tok[s + 1];
      float m = hb.loss_mask ? hb.loss_mask[g] : 1.0f;
      if (sh.eod_mask_loss && tok[s] == sh.eod_id) m = 0.0f;
      b.loss_mask[i] = m;
    }
  }
}

}  // namespace mpt::train
