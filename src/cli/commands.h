// The commands of the mptrain executable. Each returns the process exit status and
// throws mpt::Error for anything the recipe, data or training rejects.
#pragma once

#include "cli/command_line.h"

namespace mpt::cli {

int run_train(const Invocation& inv);
int run_config(const Invocation& inv);
// src/cli/data_commands.cc: `mptrain preprocess` and `mptrain dataset-info`.
int run_preprocess(const Invocation& inv);
int run_dataset_info(const Invocation& inv);

}  // namespace mpt::cli
