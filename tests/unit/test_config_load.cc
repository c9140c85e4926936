// Loading recipes: values, sources, and every kind of load error with file:line and key.
#include <gtest/gtest.h>

#include <regex>
#include <string>

#include "config/recipe.h"
#include "test_config_fixtures.h"

namespace mpt::config {
namespace {

using testing::count_lines;
using testing::error_message;
using testing::kValidRecipe;

TEST(ConfigLoad, ValidRecipeLoadsValuesAndSources) {
  Recipe r = load_recipe_string(kValidRecipe, "test.toml");
  EXPECT_EQ(r.path, "test.toml");
  EXPECT_EQ(r.model.num_layers, 2);
  EXPECT_EQ(r.model.hidden_size, 64);
  EXPECT_EQ(r.model.normalization, "RMSNorm");
  EXPECT_EQ(r.train.micro_batch_size, 2);
  EXPECT_EQ(r.train.train_iters, 20);
  EXPECT_DOUBLE_EQ(*r.optimizer.lr, 3e-4);
  EXPECT_EQ(r.dataset.source, "corpus");
  // Keys left out keep Bridge's defaults and have no source.
  EXPECT_EQ(r.model.activation_func, "gelu");
  EXPECT_FALSE(r.model.ffn_hidden_size.has_value());
  EXPECT_EQ(r.sources.count("model.activation_func"), 0u);
  ASSERT_EQ(r.sources.count("model.num_layers"), 1u);
  EXPECT_EQ(r.sources.at("model.num_layers").where(), "test.toml:3");
  EXPECT_EQ(r.sources.at("model.position_embedding_type").line, 10);
  EXPECT_EQ(r.sources.at("logger.log_interval").where(), "test.toml:29");
  EXPECT_FALSE(r.finalized);
}

TEST(ConfigLoad, SourceWhere) {
  EXPECT_EQ((Source{"recipes/tiny.toml", 12}).where(), "recipes/tiny.toml:12");
  EXPECT_EQ((Source{"override #2 'x.y=3'", 0}).where(), "override #2 'x.y=3'");
}

TEST(ConfigLoad, SyntaxErrorNamesLineAndColumn) {
  const std::string msg = error_message([] { load_recipe_string("[model]\nnum_layers = 2\nhidden_size = = 4\n", "test.toml"); });
  EXPECT_TRUE(std::regex_search(msg, std::regex("^test\\.toml:3:[0-9]+: syntax error: "))) << msg;
}

TEST(ConfigLoad, DuplicateKeyIsASyntaxError) {
  const std::string msg = error_message([] { load_recipe_string("[model]\nnum_layers = 2\nnum_layers = 3\n", "test.toml"); });
  EXPECT_NE(msg.find("test.toml:3:"), std::string::npos) << msg;
  EXPECT_NE(msg.find("syntax error"), std::string::npos) << msg;
}

TEST(ConfigLoad, UnknownKeySuggestsTheClosestKey) {
  const std::string msg = error_message([] { load_recipe_string("[model]\nnum_layer = 4\n", "test.toml"); });
  EXPECT_EQ(msg, "test.toml:2: unknown key 'model.num_layer' (did you mean 'model.num_layers'?)");
}

TEST(ConfigLoad, KeyInTheWrongSectionSuggestsItsSection) {
  const std::string msg = error_message([] { load_recipe_string("[train]\nlr = 1\n", "test.toml"); });
  EXPECT_EQ(msg, "test.toml:2: unknown key 'train.lr' (did you mean 'optimizer.lr'?)");
  const std::string msg2 = error_message([] { load_recipe_string("[train]\nlr_warmup_iter = 1\n", "test.toml"); });
  EXPECT_NE(msg2.find("did you mean 'scheduler.lr_warmup_iters'"), std::string::npos) << msg2;
}

TEST(ConfigLoad, UnknownKeyWithNothingCloseHasNoSuggestion) {
  const std::string msg = error_message([] { load_recipe_string("[model]\nzzzzzzzz = 4\n", "test.toml"); });
  EXPECT_EQ(msg, "test.toml:2: unknown key 'model.zzzzzzzz'");
}

TEST(ConfigLoad, UnknownSectionSuggestsASection) {
  const std::string msg = error_message([] { load_recipe_string("\n[modle]\nnum_layers = 4\n", "test.toml"); });
  EXPECT_EQ(msg, "test.toml:2: unknown section 'modle' (did you mean 'model'?)");
  const std::string msg2 = error_message([] { load_recipe_string("[optim]\nlr = 1\n", "test.toml"); });
  EXPECT_NE(msg2.find("unknown section 'optim' (did you mean 'optimizer'?)"), std::string::npos) << msg2;
}

TEST(ConfigLoad, NestedTableInASectionIsAnUnknownKey) {
  const std::string msg = error_message([] { load_recipe_string("[model.extra]\nx = 1\n", "test.toml"); });
  EXPECT_NE(msg.find("unknown key 'model.extra'"), std::string::npos) << msg;
}

TEST(ConfigLoad, TopLevelKeySuggestsItsSection) {
  const std::string msg = error_message([] { load_recipe_string("num_layers = 4\n", "test.toml"); });
  EXPECT_EQ(msg, "test.toml:1: unknown key 'num_layers' (did you mean 'model.num_layers'?)");
}

TEST(ConfigLoad, SectionWrittenAsAValueIsATypeError) {
  const std::string msg = error_message([] { load_recipe_string("model = 3\n", "test.toml"); });
  EXPECT_EQ(msg, "test.toml:1: model: expected a table [model], got integer 3");
}

TEST(ConfigLoad, WrongTypeNamesKeyAndValue) {
  const std::string msg = error_message([] { load_recipe_string("[model]\nnum_layers = \"four\"\n", "test.toml"); });
  EXPECT_EQ(msg, "test.toml:2: model.num_layers: expected an integer, got string \"four\"");
  const std::string b = error_message([] { load_recipe_string("[model]\nqk_layernorm = 1\n", "test.toml"); });
  EXPECT_EQ(b, "test.toml:2: model.qk_layernorm: expected a boolean, got integer 1");
  const std::string s = error_message([] { load_recipe_string("[model]\nnormalization = 3.5\n", "test.toml"); });
  EXPECT_EQ(s, "test.toml:2: model.normalization: expected a string, got float 3.5");
}

TEST(ConfigLoad, IntegralFloatForAnIntegerKeyIsRejected) {
  const std::string msg = error_message([] { load_recipe_string("[model]\nnum_layers = 4.0\n", "test.toml"); });
  EXPECT_NE(msg.find("test.toml:2: model.num_layers: expected an integer, got float 4.0"), std::string::npos) << msg;
}

TEST(ConfigLoad, IntegerForAFloatKeyIsAccepted) {
  Recipe r = load_recipe_string("[optimizer]\nlr = 1\nclip_grad = 0\n", "test.toml");
  EXPECT_DOUBLE_EQ(*r.optimizer.lr, 1.0);
  EXPECT_DOUBLE_EQ(r.optimizer.clip_grad, 0.0);
}

TEST(ConfigLoad, StringIsAOneElementList) {
  Recipe r = load_recipe_string("[dataset]\ndata_path = \"/data/a_text_document\"\n", "test.toml");
  ASSERT_EQ(r.dataset.data_path.size(), 1u);
  EXPECT_EQ(r.dataset.data_path[0], "/data/a_text_document");
  Recipe r2 = load_recipe_string("[dataset]\ndata_path = [\"0.3\", \"a\", \"0.7\", \"b\"]\n", "test.toml");
  EXPECT_EQ(r2.dataset.data_path, (std::vector<std::string>{"0.3", "a", "0.7", "b"}));
  const std::string msg = error_message([] { load_recipe_string("[dataset]\ndata_path = [\"a\", 3]\n", "t.toml"); });
  EXPECT_NE(msg.find("t.toml:2: dataset.data_path: expected a string or a list of strings"), std::string::npos) << msg;
}

TEST(ConfigLoad, EveryProblemIsReportedInFileOrder) {
  const char* text = R"([model]
num_layer = 2
hidden_size = "big"

[trian]
micro_batch_size = 1

[optimizer]
lr = "fast"
)";
  const std::string msg = error_message([&] { load_recipe_string(text, "test.toml"); });
  EXPECT_EQ(count_lines(msg), 4u) << msg;
  const size_t a = msg.find("test.toml:2: unknown key 'model.num_layer'");
  const size_t b = msg.find("test.toml:3: model.hidden_size: expected an integer, got string \"big\"");
  const size_t c = msg.find("test.toml:5: unknown section 'trian' (did you mean 'train'?)");
  const size_t d = msg.find("test.toml:9: optimizer.lr: expected a number, got string \"fast\"");
  ASSERT_NE(a, std::string::npos) << msg;
  ASSERT_NE(b, std::string::npos) << msg;
  ASSERT_NE(c, std::string::npos) << msg;
  ASSERT_NE(d, std::string::npos) << msg;
  EXPECT_LT(a, b);
  EXPECT_LT(b, c);
  EXPECT_LT(c, d);
}

TEST(ConfigLoad, MixedPrecisionAsPresetOrTable) {
  Recipe preset = load_recipe_string("mixed_precision = \"bf16_mixed\"\n[model]\nnum_layers = 1\n", "test.toml");
  EXPECT_EQ(preset.mixed_precision.preset, "bf16_mixed");
  EXPECT_EQ(preset.sources.at("mixed_precision").where(), "test.toml:1");

  Recipe table = load_recipe_string("[mixed_precision]\nbf16 = true\ngrad_reduce_in_fp32 = false\n", "test.toml");
  EXPECT_FALSE(table.mixed_precision.preset.has_value());
  EXPECT_TRUE(table.mixed_precision.bf16);
  EXPECT_FALSE(table.mixed_precision.grad_reduce_in_fp32);
  EXPECT_EQ(table.sources.at("mixed_precision.bf16").line, 2);

  const std::string msg = error_message([] { load_recipe_string("mixed_precision = 16\n", "test.toml"); });
  EXPECT_EQ(msg, "test.toml:1: mixed_precision: expected a string or a table, got integer 16");
  const std::string msg2 = error_message([] { load_recipe_string("[mixed_precision]\npreset = \"fp32\"\n", "t.toml"); });
  EXPECT_NE(msg2.find("t.toml:2: unknown key 'mixed_precision.preset'"), std::string::npos) << msg2;
}

TEST(ConfigLoad, InlineTablesAndDottedKeysWork) {
  Recipe r = load_recipe_string("model = { num_layers = 3 }\ntrain.train_iters = 7\n", "test.toml");
  EXPECT_EQ(r.model.num_layers, 3);
  EXPECT_EQ(r.train.train_iters, 7);
  EXPECT_EQ(r.sources.at("train.train_iters").line, 2);
}

TEST(ConfigLoad, EmptyRecipeLoadsDefaults) {
  Recipe r = load_recipe_string("", "empty.toml");
  EXPECT_EQ(r.model.num_layers, 0);
  EXPECT_TRUE(r.sources.empty());
}

TEST(ConfigLoad, FileLoadsWithItsPath) {
  const std::string path = std::string(MPT_SOURCE_DIR) + "/tests/data/recipes/config_valid.toml";
  Recipe r = load_recipe_file(path);
  EXPECT_EQ(r.path, path);
  EXPECT_EQ(r.model.num_layers, 2);
  EXPECT_EQ(r.sources.at("model.num_layers").where(), path + ":3");
  finalize(r, 1);
  EXPECT_TRUE(r.finalized);
}

TEST(ConfigLoad, MissingFileIsAnIoErrorNamingThePath) {
  const std::string msg =
      error_message([] { load_recipe_file("/nonexistent/dir/recipe.toml"); }, Status::kIoError);
  EXPECT_NE(msg.find("/nonexistent/dir/recipe.toml"), std::string::npos) << msg;
  const std::string dir = error_message([] { load_recipe_file(MPT_SOURCE_DIR); }, Status::kIoError);
  EXPECT_NE(dir.find("directory"), std::string::npos) << dir;
}

}  // namespace
}  // namespace mpt::config
