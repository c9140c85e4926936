// The pieces of finalize(): each check_* walks one group of rules, reports every broken
// rule to the Checker and fills its part of Derived.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "config/recipe.h"
#include "config/schema_internal.h"

namespace mpt::config {

class Checker {
 public:
  Checker(const Recipe& recipe, int64_t world_size) : r(recipe), world_size(world_size) {
    d.world_size = world_size;
  }

  // Reports "WHERE: key: rule"; WHERE is where the key was set, or the recipe's path
  // when the key was left at its default.
  void fail(std::string_view key, const std::string& rule);
  std::string where(std::string_view key) const;

  const Recipe& r;
  const int64_t world_size;
  Derived d;
  Problems problems;
};

// Megatron's vocab_size_with_padding: vocab rounded up to a multiple of
// make_vocab_size_divisible_by * tensor_model_parallel_size.
int64_t padded_vocab_size(int64_t vocab_size, int64_t divisible_by, int64_t tensor_parallel_size);

void check_key_table(Checker& c);     // required keys, numeric ranges, allowed words
void check_model(Checker& c);         // architecture, MoE, recompute; model sizes in Derived
void check_layout(Checker& c);        // Megatron's parallel layout; DP, EDP, microbatches
void check_run(Checker& c);           // schedule, dataset, precision; lr and data source
void check_capabilities(Checker& c);  // what mptrain has not built yet

}  // namespace mpt::config
