// to_toml(): every key, stable order, exact round trip through load_recipe_string.
#include <gtest/gtest.h>

#include <cmath>
#include <string>

#include "config/recipe.h"
#include "config/schema_internal.h"
#include "test_config_fixtures.h"

namespace mpt::config {
namespace {

using testing::kValidRecipe;

// Every key of the two recipes, compared through the key table.
void expect_same_configuration(const Recipe& a, const Recipe& b) {
  for (const KeySpec& k : key_table()) {
    const Value va = k.get(a), vb = k.get(b);
    EXPECT_TRUE(va == vb) << k.full_name() << ": " << render(va) << " vs " << render(vb);
  }
}

Recipe round_trip(const Recipe& r) { return load_recipe_string(to_toml(r), r.path); }

TEST(ConfigEmit, EveryKeyOfEverySectionIsWritten) {
  const std::string text = to_toml(load_recipe_string(kValidRecipe, "test.toml"));
  for (const std::string& section : section_names()) {
    EXPECT_NE(text.find("\n[" + section + "]\n"), std::string::npos) << section;
  }
  for (const KeySpec& k : key_table()) {
    const std::string name(k.name);
    const bool unset = std::holds_alternative<std::monostate>(k.get(load_recipe_string(kValidRecipe)));
    EXPECT_NE(text.find((unset ? "\n# " : "\n") + name + " = "), std::string::npos) << k.full_name();
  }
  EXPECT_NE(text.find("\n# ffn_hidden_size = (unset)\n"), std::string::npos) << text;
  EXPECT_NE(text.find("\nnum_layers = 2\n"), std::string::npos) << text;
  // Integral doubles stay floats so they load back as floats.
  EXPECT_NE(text.find("\nrotary_base = 10000.0\n"), std::string::npos) << text;
  EXPECT_NE(text.find("\nclip_grad = 1.0\n"), std::string::npos) << text;
  EXPECT_NE(text.find("\nlr = 0.0003\n"), std::string::npos) << text;
  // Sections in a fixed order.
  EXPECT_LT(text.find("[model]"), text.find("[train]"));
  EXPECT_LT(text.find("[dist]"), text.find("[mixed_precision]"));
}

TEST(ConfigEmit, ValidRecipeRoundTrips) {
  Recipe r = load_recipe_string(kValidRecipe, "test.toml");
  const Recipe back = round_trip(r);
  expect_same_configuration(r, back);
  EXPECT_EQ(to_toml(back), to_toml(r));
}

TEST(ConfigEmit, DefaultsRoundTrip) {
  Recipe r;
  r.path = "<string>";
  const Recipe back = round_trip(r);
  expect_same_configuration(r, back);
  EXPECT_EQ(to_toml(back), to_toml(r));
}

TEST(ConfigEmit, AwkwardValuesRoundTripExactly) {
  Recipe r = load_recipe_string(kValidRecipe, "test.toml");
  r.optimizer.lr = 0.1 + 0.2;  // 0.30000000000000004
  r.optimizer.adam_eps = 1e-8;
  r.model.layernorm_epsilon = 1e-300;
  r.model.rotary_base = 1e20;
  r.model.init_method_std = 1.0 / 3.0;
  r.model.softmax_scale = 0.125;
  r.scheduler.lr_warmup_init = 5e-324;
  r.dist.distributed_timeout_minutes = 2.5;
  r.checkpoint.save = "runs/\"quoted\" dir\\with\tescapes\nand newline";
  r.checkpoint.load = "caf\xc3\xa9/\x01";
  r.dataset.data_path = {"0.5", "/data/a b", ""};
  r.dataset.blend = {{"/data/c \"d\"", 0.1 + 0.2}, {"e", 3.0}};
  r.dataset.split = "";
  r.model.recompute_modules = {"core_attn", "mlp"};
  r.rng.seed = -7;
  r.model.num_moe_experts = 8;
  r.train.global_batch_size = std::nullopt;
  const Recipe back = round_trip(r);
  expect_same_configuration(r, back);
  EXPECT_EQ(to_toml(back), to_toml(r));
  EXPECT_EQ(*back.optimizer.lr, 0.1 + 0.2);
  EXPECT_EQ(back.model.rotary_base, 1e20);
}

TEST(ConfigEmit, PresetIsWrittenAtTopLevel) {
  Recipe r = load_recipe_string("mixed_precision = \"bf16_mixed\"\n", "test.toml");
  const std::string text = to_toml(r);
  EXPECT_NE(text.find("\nmixed_precision = \"bf16_mixed\"\n"), std::string::npos) << text;
  EXPECT_NE(text.find("\n# [mixed_precision]\n"), std::string::npos) << text;
  const Recipe back = round_trip(r);
  expect_same_configuration(r, back);
  EXPECT_EQ(to_toml(back), text);
}

TEST(ConfigEmit, FinalizedRecipeShowsDerivedSizesAndFinalizesAgain) {
  Recipe r = load_recipe_string(kValidRecipe, "test.toml");
  apply_overrides(r, {"train.train_iters=33", "model.make_vocab_size_divisible_by=100"});
  finalize(r, 1);
  const std::string text = to_toml(r);
  EXPECT_NE(text.find("#   padded_vocab_size = 300\n"), std::string::npos) << text;
  EXPECT_NE(text.find("#   num_microbatches = 4\n"), std::string::npos) << text;
  Recipe back = round_trip(r);
  expect_same_configuration(r, back);
  finalize(back, 1);
  EXPECT_EQ(back.derived.padded_vocab_size, 300);
  EXPECT_EQ(back.derived.lr_decay_iters, 33);
  EXPECT_EQ(to_toml(back), text);
}

TEST(ConfigEmit, NumbersKeepTheirTomlType) {
  EXPECT_EQ(format_double(1.0), "1.0");
  EXPECT_EQ(format_double(10000.0), "10000.0");
  EXPECT_EQ(format_double(0.1), "0.1");
  EXPECT_EQ(format_double(3e-4), "0.0003");
  EXPECT_EQ(format_double(1e-8), "1e-08");
  EXPECT_EQ(format_double(-2.5), "-2.5");
  EXPECT_EQ(format_double(std::nan("")), "nan");
  EXPECT_EQ(format_double(-INFINITY), "-inf");
  EXPECT_EQ(toml_quote("a\"b\\c\n"), "\"a\\\"b\\\\c\\n\"");
  EXPECT_EQ(toml_quote(std::string("\x01", 1)), "\"\\u0001\"");
}

}  // namespace
}  // namespace mpt::config
