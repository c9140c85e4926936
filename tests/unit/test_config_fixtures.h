// Shared pieces of the recipe tests: a small valid recipe and a helper that captures the
// message of the Error a call throws.
#pragma once

#include <gtest/gtest.h>

#include <string>

#include "config/recipe.h"
#include "core/error.h"

namespace mpt::config::testing {

// A recipe finalize() accepts at world size 1 with what mptrain has built. Line numbers
// are stable: line 3 is num_layers, line 10 is position_embedding_type.
inline const char* kValidRecipe = R"(# a tiny model on the embedded corpus
[model]
num_layers = 2
hidden_size = 64
num_attention_heads = 4
vocab_size = 257
seq_length = 32
make_vocab_size_divisible_by = 128
normalization = "RMSNorm"
position_embedding_type = "rope"

[train]
micro_batch_size = 2
global_batch_size = 8
train_iters = 20

[optimizer]
lr = 3e-4
min_lr = 3e-5

[scheduler]
lr_decay_style = "cosine"
lr_warmup_iters = 2

[dataset]
source = "corpus"

[logger]
log_interval = 1
)";

// The message of the mpt::Error that `f` throws; fails the test when it throws none or
// a different status.
template <typename F>
std::string error_message(F&& f, Status expected = Status::kInvalidConfig) {
  try {
    f();
  } catch (const Error& e) {
    EXPECT_EQ(static_cast<int>(e.status()), static_cast<int>(expected)) << e.what();
    return e.what();
  }
  ADD_FAILURE() << "expected an mpt::Error, none was thrown";
  return "";
}

inline size_t count_lines(const std::string& s) {
  if (s.empty()) return 0;
  size_t n = 1;
  for (char c : s) n += c == '\n';
  return n;
}

}  // namespace mpt::config::testing
