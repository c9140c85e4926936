// The commands of the mptrain executable. Each returns the process exit status and
// throws mpt::Error for anything the recipe, data or training rejects.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "cli/command_line.h"
#include "config/recipe.h"

namespace mpt::cli {

// The invocation's recipe loaded, overridden and validated for this process's world size.
config::Recipe resolved_recipe(const Invocation& inv);

int run_train(const Invocation& inv);
int run_config(const Invocation& inv);
// src/cli/data_commands.cc: `mptrain preprocess` and `mptrain dataset-info`.
int run_preprocess(const Invocation& inv);
int run_dataset_info(const Invocation& inv);
// src/cli/batch_commands.cc: `mptrain batches`.
int run_batches(const Invocation& inv);
// src/cli/ckpt_info.cc: `mptrain ckpt-info`.
int run_ckpt_info(const Invocation& inv);
// `mptrain plan`, which takes options no other command has and parses them itself
// (src/cli/plan_command.cc). plan_command_line() finds it: the command line from "plan" on
// when "plan" is the command word, after any of the options every command takes (--threads,
// --quiet); nothing otherwise. Throws UsageError for a launch option (--nproc-per-node,
// --master-addr, --master-port) with it: a plan is one process.
std::optional<std::vector<std::string>> plan_command_line(int argc, const char* const* argv);
int run_plan(const std::vector<std::string>& command_line);
std::string plan_usage_text();

}  // namespace mpt::cli
