#include "cli/commands.h"

#include <cstdio>
#include <string>

#include "dist/launch_env.h"
#include "config/recipe.h"
#include "core/error.h"
#include "core/log.h"
#include "train/engine.h"

namespace mpt::cli {
namespace {

// Loads, overrides and validates the recipe for this process's world size.
config::Recipe resolved_recipe(const Invocation& inv) {
  config::Recipe recipe = config::load_recipe_file(inv.recipe_path);
  config::apply_overrides(recipe, inv.overrides);
  const dist::LaunchPlace place = dist::resolve_launch_place();
  config::finalize(recipe, place.world_size);
  return recipe;
}

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

int run_config(const Invocation& inv) {
  const std::string text = config::to_toml(resolved_recipe(inv));
  std::fwrite(text.data(), 1, text.size(), stdout);
  std::fflush(stdout);
  return 0;
}

int run_train(const Invocation& inv) {
  const config::Recipe recipe = resolved_recipe(inv);
  const Logger logger = console_logger(inv.quiet);
  const dist::LaunchPlace place = dist::resolve_launch_place();
  train::Engine engine(recipe, logger, place);

  const train::StepResult last = engine.train();
  if (place.rank == 0)
    logger.info(str(engine.stopped_by_signal() ? "mptrain: stopped by a signal at iteration " : "mptrain: finished at iteration ",
                    last.iteration, ", lm loss ", last.lm_loss));
  return 0;
}

}  // namespace mpt::cli
