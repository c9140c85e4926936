#include "cli/commands.h"

#include <cstdio>
#include <string>

#include "dist/launch_env.h"
#include "config/recipe.h"
#include "core/error.h"
#include "core/log.h"
#include "train/engine.h"

namespace mpt::cli {

config::Recipe resolved_recipe(const Invocation& inv) {
  config::Recipe recipe = config::load_recipe_file(inv.recipe_path);
  config::apply_overrides(recipe, inv.overrides);
  const dist::LaunchPlace place = dist::resolve_launch_place();
  config::finalize(recipe, place.world_size);
  return recipe;
}

namespace {

// Progress to stdout (it is the program's output); warnings and errors to stderr.
Logger console_logger(bool quiet) {
  Logger::Sink sink = [](LogLevel level, const std::string& message) {
    std::FILE* to = level <= LogLevel::kWarn ? stderr : stdout;
    std::fputs(message.c_str(), to);
    std::fputc('\n', to);
    std::fflush(to);
  };
  return Logger(sink, quiet ? LogLevel::kWarn : LogLevel::kInfo);
}

}  // namespace

std::optional<std::vector<std::string>> plan_command_line(int argc, const char* const* argv) {
  std::string launch_option;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "plan") {
      if (!launch_option.empty())
        throw UsageError(launch_option + " starts ranks for 'train' and 'config', not for 'plan'");
      return std::vector<std::string>(argv + i, argv + argc);
    }
    if (arg == "-q" || arg == "--quiet" || arg.starts_with("--threads=")) continue;
    if (arg == "--threads") {
      ++i;
      continue;
    }
    bool launch = false;
    for (const std::string name : {"--nproc-per-node", "--master-addr", "--master-port"}) {
      if (arg != name && !arg.starts_with(name + "=")) continue;
      launch = true;
      launch_option = name;
      if (arg == name) ++i;  // its value
    }
    if (launch) continue;
    return std::nullopt;  // another command, option or a recipe
  }
  return std::nullopt;
}

int run_config(const Invocation& inv) {
  const std::string text = config::to_toml(resolved_recipe(inv));
  std::fwrite(text.data(), 1, text.size(), stdout);
  std::fflush(stdout);
  return 0;
}

int run_train(const Invocation& inv) {
  const config::Recipe recipe = resolved_recipe(inv);
  MPT_CHECK(!inv.save_initial || recipe.checkpoint.save, Status::kInvalidConfig,
            "--save-initial saves into checkpoint.save, which the recipe does not set");
  const Logger logger = console_logger(inv.quiet);
  const dist::LaunchPlace place = dist::resolve_launch_place();
  train::Engine engine(recipe, logger, place);
  if (inv.save_initial) {
    // A resumed run starts from a checkpoint that is on disk already.
    if (engine.iteration() == 0)
      engine.save_checkpoint(*recipe.checkpoint.save);
    else if (place.rank == 0)
      logger.info(str("mptrain: --save-initial: resuming at iteration ", engine.iteration(),
                      " from checkpoint.load; nothing saved before the first step"));
  }

  const train::StepResult last = engine.train();
  if (place.rank == 0)
    logger.info(str(engine.stopped_by_signal() ? "mptrain: stopped by a signal at iteration " : "mptrain: finished at iteration ",
                    last.iteration, ", lm loss ", last.lm_loss));
  return 0;
}

}  // namespace mpt::cli
