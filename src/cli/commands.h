// The commands of the mptrain executable. Each returns the process exit status and
// throws mpt::Error for anything the recipe, data or training rejects.
#pragma once

#include <string>

#include "cli/command_line.h"

namespace mpt::cli {

int run_train(const Invocation& inv);
int run_config(const Invocation& inv);
// src/cli/data_commands.cc: `mptrain preprocess` and `mptrain dataset-info`.
int run_preprocess(const Invocation& inv);
int run_dataset_info(const Invocation& inv);
// src/cli/ckpt_info.cc: `mptrain ckpt-info`.
int run_ckpt_info(const Invocation& inv);
// src/cli/plan_command.cc: `mptrain plan --pipeline`; it parses inv.rank_arguments itself.
int run_plan(const Invocation& inv);
std::string plan_usage_text();

}  // namespace mpt::cli
