// `section.key=value` overrides: parsing, type checks, origins and did-you-mean.
#include <gtest/gtest.h>

#include <string>

#include "config/recipe.h"
#include "test_config_fixtures.h"

namespace mpt::config {
namespace {

using testing::count_lines;
using testing::error_message;
using testing::kValidRecipe;

TEST(ConfigOverride, ValuesAreReadAsToml) {
  Recipe r = load_recipe_string(kValidRecipe, "test.toml");
  apply_override(r, "train.train_iters=40", "override #1 'train.train_iters=40'");
  apply_override(r, "model.normalization=LayerNorm", "o2");
  apply_override(r, "dataset.data_path=[\"a\",\"b\"]", "o3");
  apply_override(r, "optimizer.lr=1e-3", "o4");
  apply_override(r, "model.qk_layernorm=true", "o5");
  apply_override(r, " model.hidden_size = 128 ", "o6");
  apply_override(r, "checkpoint.save=/tmp/run one/ckpt", "o7");
  EXPECT_EQ(r.train.train_iters, 40);
  EXPECT_EQ(r.model.normalization, "LayerNorm");
  EXPECT_EQ(r.dataset.data_path, (std::vector<std::string>{"a", "b"}));
  EXPECT_DOUBLE_EQ(*r.optimizer.lr, 1e-3);
  EXPECT_TRUE(r.model.qk_layernorm);
  EXPECT_EQ(r.model.hidden_size, 128);
  EXPECT_EQ(r.checkpoint.save, "/tmp/run one/ckpt");
  const Source& s = r.sources.at("train.train_iters");
  EXPECT_EQ(s.file, "override #1 'train.train_iters=40'");
  EXPECT_EQ(s.line, 0);
  EXPECT_EQ(s.where(), "override #1 'train.train_iters=40'");
}

TEST(ConfigOverride, TextForAStringKeyIsTheString) {
  Recipe r;
  apply_override(r, "dataset.split=100", "o");
  EXPECT_EQ(r.dataset.split, "100");
  apply_override(r, "dataset.split=\"969,30,1\"", "o");
  EXPECT_EQ(r.dataset.split, "969,30,1");
  apply_override(r, "dataset.data_path=/data/x_text_document", "o");
  EXPECT_EQ(r.dataset.data_path, (std::vector<std::string>{"/data/x_text_document"}));
}

TEST(ConfigOverride, MixedPrecisionPresetReplacesTheTable) {
  Recipe r = load_recipe_string("[mixed_precision]\nfp16 = true\n", "test.toml");
  apply_override(r, "mixed_precision=bf16_mixed", "o");
  EXPECT_EQ(r.mixed_precision.preset, "bf16_mixed");
  EXPECT_FALSE(r.mixed_precision.fp16);
  EXPECT_EQ(r.sources.count("mixed_precision.fp16"), 0u);
  EXPECT_EQ(r.sources.at("mixed_precision").where(), "o");
}

TEST(ConfigOverride, NullUnsetsAnOptionalKey) {
  Recipe r = load_recipe_string("[train]\nglobal_batch_size = 16\n", "test.toml");
  apply_override(r, "train.global_batch_size=null", "o");
  EXPECT_FALSE(r.train.global_batch_size.has_value());
  EXPECT_EQ(r.sources.count("train.global_batch_size"), 0u);
  const std::string msg = error_message([&] { apply_override(r, "model.num_layers=null", "o"); });
  EXPECT_EQ(msg, "o: model.num_layers: expected an integer, got string \"null\"");
}

TEST(ConfigOverride, WrongTypeNamesTheOrigin) {
  Recipe r;
  const std::string msg =
      error_message([&] { apply_override(r, "train.train_iters=abc", "override #2 'train.train_iters=abc'"); });
  EXPECT_EQ(msg, "override #2 'train.train_iters=abc': train.train_iters: expected an integer, got string \"abc\"");
  const std::string f = error_message([&] { apply_override(r, "model.num_layers=2.5", "o"); });
  EXPECT_EQ(f, "o: model.num_layers: expected an integer, got float 2.5");
  EXPECT_FALSE(r.train.train_iters.has_value());
}

TEST(ConfigOverride, MalformedTomlIsNotTakenAsAString) {
  Recipe r;
  const std::string msg = error_message([&] { apply_override(r, "dataset.data_path=[\"a\",", "o"); });
  EXPECT_NE(msg.find("o: dataset.data_path: the value [\"a\", is not valid TOML"), std::string::npos) << msg;
  EXPECT_TRUE(r.dataset.data_path.empty());
}

TEST(ConfigOverride, UnknownKeySuggests) {
  Recipe r;
  const std::string msg = error_message([&] { apply_override(r, "model.num_layer=4", "o"); });
  EXPECT_EQ(msg, "o: unknown key 'model.num_layer' (did you mean 'model.num_layers'?)");
  const std::string other = error_message([&] { apply_override(r, "train.lr=0.1", "o"); });
  EXPECT_EQ(other, "o: unknown key 'train.lr' (did you mean 'optimizer.lr'?)");
  const std::string section = error_message([&] { apply_override(r, "model=4", "o"); });
  EXPECT_NE(section.find("'model' is a section"), std::string::npos) << section;
}

TEST(ConfigOverride, MissingEqualsIsAnError) {
  Recipe r;
  const std::string msg = error_message([&] { apply_override(r, "train.train_iters", "o"); });
  EXPECT_EQ(msg, "o: expected section.key=value, found no '=' (did you mean 'train.train_iters=...'?)");
  const std::string typo = error_message([&] { apply_override(r, "train.train_iter 5", "o"); });
  EXPECT_NE(typo.find("did you mean 'train.train_iters'"), std::string::npos) << typo;
}

TEST(ConfigOverride, ApplyOverridesNamesEachAndReportsAll) {
  Recipe r = load_recipe_string(kValidRecipe, "test.toml");
  apply_overrides(r, {"train.train_iters=5", "model.num_layers=6"});
  EXPECT_EQ(r.train.train_iters, 5);
  EXPECT_EQ(r.sources.at("model.num_layers").where(), "override 'model.num_layers=6'");

  const std::string msg = error_message([&] {
    apply_overrides(r, {"train.train_iters=x", "model.hiden_size=3", "optimizer.lr=0.5", "nonsense"});
  });
  EXPECT_EQ(count_lines(msg), 3u) << msg;
  EXPECT_NE(msg.find("override 'train.train_iters=x': train.train_iters: expected an integer"), std::string::npos);
  EXPECT_NE(msg.find("override 'model.hiden_size=3': unknown key 'model.hiden_size' (did you mean "
                     "'model.hidden_size'?)"),
            std::string::npos)
      << msg;
  EXPECT_NE(msg.find("override 'nonsense': expected section.key=value"), std::string::npos) << msg;
}

TEST(ConfigOverride, OverrideOriginIsWhereFinalizeReports) {
  Recipe r = load_recipe_string(kValidRecipe, "test.toml");
  apply_overrides(r, {"train.micro_batch_size=0"});
  const std::string msg = error_message([&] { finalize(r, 1); });
  EXPECT_NE(msg.find("override 'train.micro_batch_size=0': train.micro_batch_size: must be >= 1, got 0"),
            std::string::npos)
      << msg;
}

}  // namespace
}  // namespace mpt::config
