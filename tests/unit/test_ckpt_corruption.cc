// Damaged checkpoints: every kind of damage is refused with the right status and a message
// that names the file, never a crash or silently wrong data.
#include <gtest/gtest.h>

#include <stdlib.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

#include "ckpt/checkpoint.h"
#include "ckpt/crc32c.h"
#include "ckpt/file_io.h"
#include "core/error.h"

namespace mpt::ckpt {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

std::string slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

void spit(const std::string& path, const std::string& content) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << content;
}

class CkptCorruption : public ::testing::Test {
 protected:
  // iter_0000010: "w" F32 [4, 6] as row halves in shard 0 and 1, "x" F32 [1000] alone in
  // shard 2, "a" and "b" F32 [10] together in shard 3.
  void SetUp() override {
    char tmpl[] = "/tmp/mpt_ckpt_corrupt_XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    save_ = tmpl;
    dir_ = save_ + "/iter_0000010";
    w_.resize(24);
    x_.resize(1000);
    ab_.resize(20);
    for (size_t i = 0; i < w_.size(); ++i) w_[i] = static_cast<float>(i);
    for (size_t i = 0; i < x_.size(); ++i) x_[i] = static_cast<float>(i) * 0.25f;
    for (size_t i = 0; i < ab_.size(); ++i) ab_[i] = -static_cast<float>(i);
    std::vector<TensorSlice> slices = {
        {"w", DType::kF32, {4, 6}, {0, 0}, {2, 6}, w_.data(), 0},
        {"w", DType::kF32, {4, 6}, {2, 0}, {2, 6}, w_.data() + 12, 1},
        {"x", DType::kF32, {1000}, {0}, {1000}, x_.data(), 2},
        {"a", DType::kF32, {10}, {0}, {10}, ab_.data(), 3},
        {"b", DType::kF32, {10}, {0}, {10}, ab_.data() + 10, 3},
    };
    save_checkpoint(save_, 10, slices, {{"k", 1}});
  }
  void TearDown() override { fs::remove_all(save_); }
  void reset() {  // a fresh, intact checkpoint for the next case in one test
    TearDown();
    SetUp();
  }

  std::string shard(int i) const { return dir_ + "/shard_0000" + std::to_string(i) + ".safetensors"; }

  void edit_index(const std::function<void(json&)>& fn) {
    json j = json::parse(slurp(dir_ + "/index.json"));
    fn(j);
    spit(dir_ + "/index.json", j.dump(1));
  }

  // Records a shard's current size and CRC in index.json, so the damage under test is
  // met by the checks past the checksum.
  void reseal(const std::string& file) {
    std::string bytes = slurp(dir_ + "/" + file);
    edit_index([&](json& j) {
      j["files"][file] = {{"bytes", bytes.size()}, {"crc32c", format_crc32c(crc32c(bytes.data(), bytes.size()))}};
    });
  }

  // Rewrites a shard's header JSON (keeping its data) and reseals it.
  void edit_header(int i, const std::function<void(json&)>& fn) {
    std::string bytes = slurp(shard(i));
    uint64_t n = 0;
    for (int b = 7; b >= 0; --b) n = (n << 8) | static_cast<uint8_t>(bytes[b]);
    json header = json::parse(bytes.substr(8, n));
    fn(header);
    std::string text = header.dump();
    std::string prefix(8, '\0');
    for (int b = 0; b < 8; ++b) prefix[b] = static_cast<char>((text.size() >> (8 * b)) & 0xFF);
    spit(shard(i), prefix + text + bytes.substr(8 + n));
    reseal(fs::path(shard(i)).filename());
  }

  // Opening (and, if given, reading) must fail with `status` and a message holding every needle.
  void expect_error(Status status, const std::vector<std::string>& needles,
                    const std::function<void()>& action = nullptr, const std::string& open_dir = "") {
    try {
      CheckpointReader r(open_dir.empty() ? save_ : open_dir);
      if (action) action();
      r.read("w", DType::kF32, {0, 0}, {4, 6}, got_.data());
      FAIL() << "damage went unnoticed; expected " << needles[0];
    } catch (const Error& e) {
      EXPECT_EQ(e.status(), status) << e.what();
      for (const std::string& n : needles)
        EXPECT_NE(std::string(e.what()).find(n), std::string::npos) << "missing '" << n << "' in: " << e.what();
    }
  }

  std::string save_, dir_;
  std::vector<float> w_, x_, ab_;
  std::vector<float> got_ = std::vector<float>(24);
};

TEST_F(CkptCorruption, IntactCheckpointReads) {
  CheckpointReader r(save_);
  r.read("w", DType::kF32, {0, 0}, {4, 6}, got_.data());
  EXPECT_EQ(got_, w_);
}

TEST_F(CkptCorruption, TruncatedShard) {
  std::string bytes = slurp(shard(1));
  spit(shard(1), bytes.substr(0, bytes.size() - 5));
  expect_error(Status::kCorruptData, {"shard_00001.safetensors", "size", "index.json records"});
}

TEST_F(CkptCorruption, FlippedByteFailsTheChecksum) {
  std::string bytes = slurp(shard(0));
  bytes[bytes.size() - 3] ^= 0x10;
  spit(shard(0), bytes);
  expect_error(Status::kCorruptData, {"shard_00000.safetensors", "crc32c", "does not match"});
}

TEST_F(CkptCorruption, BadHeaderLength) {
  std::string bytes = slurp(shard(2));
  bytes[5] = 0x7f;  // a length far past the end of the file
  spit(shard(2), bytes);
  reseal("shard_00002.safetensors");
  expect_error(Status::kCorruptData, {"shard_00002.safetensors", "header length"});
}

TEST_F(CkptCorruption, BadHeaderJson) {
  std::string bytes = slurp(shard(2));
  bytes[8] = '[';  // the header's opening brace
  spit(shard(2), bytes);
  reseal("shard_00002.safetensors");
  expect_error(Status::kCorruptData, {"shard_00002.safetensors", "invalid JSON"});
}

TEST_F(CkptCorruption, OffsetsOutOfRange) {
  edit_header(2, [](json& h) { h["x"]["data_offsets"] = {96, 4096}; });
  expect_error(Status::kCorruptData, {"shard_00002.safetensors",
                                      "tensor 'x' data_offsets [96, 4096] exceed the data section (4000 bytes)"});
}

TEST_F(CkptCorruption, OverlappingOffsets) {
  edit_header(3, [](json& h) { h["b"]["data_offsets"] = {20, 60}; });
  expect_error(Status::kCorruptData, {"shard_00003.safetensors", "overlap"});
}

TEST_F(CkptCorruption, ShapeDisagreesWithOffsets) {
  edit_header(2, [](json& h) { h["x"]["shape"] = {999}; });
  expect_error(Status::kCorruptData, {"shard_00002.safetensors", "needs 3996 bytes"});
}

TEST_F(CkptCorruption, UnknownDtypeInShard) {
  edit_header(2, [](json& h) { h["x"]["dtype"] = "F8"; });
  expect_error(Status::kCorruptData, {"shard_00002.safetensors", "unsupported dtype 'F8'"});
}

TEST_F(CkptCorruption, ShardHeaderDisagreesWithIndex) {
  edit_header(3, [](json& h) { h["a"]["dtype"] = "I32"; });
  expect_error(Status::kCorruptData, {"shard_00003.safetensors", "tensor 'a' is I32 [10]", "index.json says F32"});
}

TEST_F(CkptCorruption, KeyMissingFromShard) {
  edit_index([](json& j) { j["tensors"]["x"]["shards"][0]["key"] = "y"; });
  expect_error(Status::kCorruptData, {"shard_00002.safetensors", "has no tensor 'y'"});
}

TEST_F(CkptCorruption, MissingShardFile) {
  fs::remove(shard(1));
  expect_error(Status::kCorruptData, {"shard_00001.safetensors", "missing"});
}

TEST_F(CkptCorruption, BadIndexJson) {
  spit(dir_ + "/index.json", "{\"format\": \"mptrain-checkpoint\", ");
  expect_error(Status::kCorruptData, {"iter_0000010/index.json", "invalid JSON"});
  spit(dir_ + "/index.json", "[]");
  expect_error(Status::kCorruptData, {"iter_0000010/index.json", "expected a JSON object"});
}

TEST_F(CkptCorruption, BadIndexFields) {
  edit_index([](json& j) { j["format"] = "torch_dist"; });
  expect_error(Status::kCorruptData, {"index.json", "format 'torch_dist'"});
  reset();
  edit_index([](json& j) { j["version"] = 2; });
  expect_error(Status::kNotSupported, {"index.json", "version 2"});
  reset();
  edit_index([](json& j) { j["iteration"] = 11; });
  expect_error(Status::kCorruptData, {"index.json", "iteration 11 does not match"});
  reset();
  edit_index([](json& j) { j["files"]["../escape"] = j["files"]["shard_00000.safetensors"]; });
  expect_error(Status::kCorruptData, {"index.json", "'../escape'", "not a plain file name"});
  reset();
  edit_index([](json& j) { j["files"]["shard_00000.safetensors"]["crc32c"] = "xyz"; });
  expect_error(Status::kCorruptData, {"index.json", "crc32c 'xyz'"});
  reset();
  edit_index([](json& j) { j["tensors"]["w"]["shards"][1]["file"] = "shard_00009.safetensors"; });
  expect_error(Status::kCorruptData, {"index.json", "'shard_00009.safetensors' that is not listed"});
  reset();
  edit_index([](json& j) { j["tensors"]["w"].erase("global_shape"); });
  expect_error(Status::kCorruptData, {"index.json", "tensor 'w'", "missing field 'global_shape'"});
}

TEST_F(CkptCorruption, ShardOutsideTheGlobalShape) {
  edit_index([](json& j) { j["tensors"]["w"]["shards"][1]["offset"] = {3, 0}; });
  expect_error(Status::kCorruptData, {"index.json", "tensor 'w'", "lies outside global_shape [4, 6]"});
}

TEST_F(CkptCorruption, OverlappingShards) {
  edit_index([](json& j) {
    j["tensors"]["w"]["global_shape"] = {3, 6};
    j["tensors"]["w"]["shards"][1]["offset"] = {1, 0};
  });
  expect_error(Status::kCorruptData, {"index.json", "tensor 'w'", "overlap"});
}

TEST_F(CkptCorruption, RegionNotCovered) {
  edit_index([](json& j) { j["tensors"]["w"]["shards"].erase(1); });
  CheckpointReader r(save_);
  std::vector<float> top(12);
  r.read("w", DType::kF32, {0, 0}, {2, 6}, top.data());  // still covered
  EXPECT_EQ(top, std::vector<float>(w_.begin(), w_.begin() + 12));
  expect_error(Status::kCorruptData, {"index.json", "tensor 'w'", "covered by shards for only 12 of 24"});
}

TEST_F(CkptCorruption, BadLatestFile) {
  const std::string latest = save_ + "/latest_checkpointed_iteration.txt";
  for (const std::string& text : {std::string("abc"), std::string(""), std::string("1 2"), std::string("-3"),
                                  std::string(100, '7')}) {
    spit(latest, text);
    expect_error(Status::kCorruptData, {"latest_checkpointed_iteration.txt"});
    try {
      latest_iteration(save_);
      ADD_FAILURE() << "accepted latest file '" << text << "'";
    } catch (const Error& e) {
      EXPECT_EQ(e.status(), Status::kCorruptData);
    }
  }
  spit(latest, "10\n");  // surrounding whitespace is fine (Megatron strips it)
  EXPECT_EQ(latest_iteration(save_), 10);
}

TEST_F(CkptCorruption, LatestNamesAMissingIteration) {
  spit(save_ + "/latest_checkpointed_iteration.txt", "20");
  expect_error(Status::kCorruptData, {"iter_0000020", "does not exist", "latest_checkpointed_iteration.txt"});
}

TEST_F(CkptCorruption, NoCheckpointAtAll) {
  expect_error(Status::kIoError, {save_ + "/nothing", "does not exist"}, nullptr, save_ + "/nothing");
  fs::create_directories(save_ + "/empty");
  expect_error(Status::kIoError, {save_ + "/empty", "latest_checkpointed_iteration.txt"}, nullptr, save_ + "/empty");
  EXPECT_FALSE(latest_iteration(save_ + "/empty").has_value());
  EXPECT_FALSE(latest_iteration(save_ + "/nothing").has_value());
  fs::remove(dir_ + "/index.json");
  expect_error(Status::kIoError, {"iter_0000010/index.json", "missing"}, nullptr, dir_);
  expect_error(Status::kCorruptData, {"iter_0000010/index.json", "missing"});
}

}  // namespace
}  // namespace mpt::ckpt
