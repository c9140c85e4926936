#include "data/sample_source.h"

#include "core/error.h"

namespace mpt::data {

void fill_batch(const SampleSource& src, int64_t first_index, int64_t rows, int32_t* out) {
  MPT_CHECK(first_index >= 0, Status::kInvalidArgument, "fill_batch: negative first sample index ", first_index);
  MPT_CHECK(rows >= 0, Status::kInvalidArgument, "fill_batch: negative row count ", rows);
  MPT_CHECK(rows == 0 || out != nullptr, Status::kInvalidArgument, "fill_batch: null output for ", rows, " rows");
  const int64_t cols = src.seq_length() + 1;
  for (int64_t r = 0; r < rows; ++r) src.sample(first_index + r, out + r * cols);
}

}  // namespace mpt::data
