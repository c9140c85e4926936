// The commands of the mptrain executable. Each returns the process exit status and
// throws mpt::Error for anything the recipe, data or training rejects.
#pragma once

#include "cli/command_line.h"

namespace mpt::cli {

int run_train(const Invocation& inv);
int run_config(const Invocation& inv);

}  // namespace mpt::cli
