// The pieces under the checkpoint files: CRC-32C, the safetensors container and names.
#include <gtest/gtest.h>

#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "ckpt/checkpoint_index.h"
#include "ckpt/crc32c.h"
#include "ckpt/safetensors.h"
#include "core/error.h"

namespace mpt::ckpt {
namespace {

const uint8_t* bytes_of(const std::string& s) { return reinterpret_cast<const uint8_t*>(s.data()); }

// A file: the header built by hand from JSON text, then `data_bytes` zero bytes.
std::string file_with_header(const std::string& json_text, size_t data_bytes) {
  std::string out(8, '\0');
  uint64_t n = json_text.size();
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((n >> (8 * i)) & 0xFF);
  return out + json_text + std::string(data_bytes, '\0');
}

// Expects parse_safetensors to fail with kCorruptData and a message holding `needle`.
void expect_corrupt(const std::string& file, const std::string& needle) {
  try {
    parse_safetensors(bytes_of(file), file.size(), "dir/shard.safetensors");
    FAIL() << "accepted a bad file; expected: " << needle;
  } catch (const Error& e) {
    EXPECT_EQ(e.status(), Status::kCorruptData) << e.what();
    EXPECT_NE(std::string(e.what()).find("dir/shard.safetensors"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
}

TEST(CkptCrc32c, KnownVectors) {
  // RFC 3720 appendix B.4 and the common "123456789" check value.
  EXPECT_EQ(crc32c("123456789", 9), 0xE3069283u);
  std::vector<uint8_t> zeros(32, 0), ones(32, 0xFF), inc(32);
  for (int i = 0; i < 32; ++i) inc[i] = static_cast<uint8_t>(i);
  EXPECT_EQ(crc32c(zeros.data(), 32), 0x8A9136AAu);
  EXPECT_EQ(crc32c(ones.data(), 32), 0x62A8AB43u);
  EXPECT_EQ(crc32c(inc.data(), 32), 0x46DD794Eu);
  EXPECT_EQ(crc32c(nullptr, 0), 0u);
}

TEST(CkptCrc32c, StreamingAndPortableAgree) {
  std::vector<uint8_t> data(1000);
  for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<uint8_t>(i * 131 + 7);
  for (size_t len : {0u, 1u, 7u, 8u, 9u, 63u, 1000u}) {
    uint32_t whole = crc32c(data.data(), len);
    EXPECT_EQ(crc32c_extend_portable(0, data.data(), len), whole) << len;
    size_t cut = len / 3;
    EXPECT_EQ(crc32c_extend(crc32c(data.data(), cut), data.data() + cut, len - cut), whole) << len;
  }
}

TEST(CkptSafetensors, EncodeParseRoundTrip) {
  std::vector<SafetensorsEntry> entries = {{"a", DType::kF32, {2, 3}, 0, 24},
                                           {"b.c", DType::kI64, {}, 24, 32},
                                           {"u", DType::kU8, {5}, 32, 37}};
  std::string header = encode_safetensors_header(entries, {{"format", "x"}});
  ASSERT_EQ(header.size() % 8, 0u);  // data starts 8-byte aligned
  std::string file = header + std::string(37, '\x01');
  SafetensorsHeader h = parse_safetensors(bytes_of(file), file.size(), "f");
  EXPECT_EQ(h.data_start, header.size());
  ASSERT_EQ(h.entries.size(), 3u);
  EXPECT_EQ(h.metadata.at("format"), "x");
  const SafetensorsEntry* b = h.find("b.c");
  ASSERT_NE(b, nullptr);
  EXPECT_EQ(b->dtype, DType::kI64);
  EXPECT_TRUE(b->shape.empty());
  EXPECT_EQ(b->begin, 24u);
  EXPECT_EQ(h.find("a")->shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(h.find("missing"), nullptr);
}

TEST(CkptSafetensors, RejectsBadLengthPrefix) {
  expect_corrupt("abc", "too short");
  std::string huge(8, '\xff');
  expect_corrupt(huge + "{}", "header length");
  std::string past = file_with_header("{}", 0);
  past[0] = 100;  // claims 100 header bytes in a 10-byte file
  expect_corrupt(past, "exceeds the file");
}

TEST(CkptSafetensors, RejectsBadJson) {
  expect_corrupt(file_with_header("{\"a\": ", 0), "invalid JSON");
  expect_corrupt(file_with_header("[1, 2]", 0), "expected a JSON object");
  expect_corrupt(file_with_header(std::string(1 << 20, '[') + std::string(1 << 20, ']'), 0), "nested deeper");
  expect_corrupt(file_with_header(
                     R"({"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},)"
                     R"("a":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}})",
                     2),
                 "appears twice");
}

TEST(CkptSafetensors, RejectsBadFields) {
  expect_corrupt(file_with_header(R"({"x":{"dtype":"F64","shape":[1],"data_offsets":[0,8]}})", 8),
                 "unsupported dtype 'F64'");
  expect_corrupt(file_with_header(R"({"x":{"shape":[1],"data_offsets":[0,4]}})", 4),
                 "missing field 'dtype'");
  expect_corrupt(file_with_header(R"({"x":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}})", 4),
                 "negative extent");
  expect_corrupt(file_with_header(R"({"x":{"dtype":"F32","shape":[1.5],"data_offsets":[0,4]}})", 4),
                 "expected an integer");
  expect_corrupt(file_with_header(R"({"x":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}})", 4),
                 "needs 8 bytes but data_offsets [0, 4] span 4");
  expect_corrupt(file_with_header(R"({"x":{"dtype":"F32","shape":[1],"data_offsets":[4,0]}})", 4),
                 "end before they begin");
  expect_corrupt(file_with_header(R"({"x":{"dtype":"F32","shape":[1],"data_offsets":[0]}})", 4),
                 "exactly [begin, end]");
  expect_corrupt(file_with_header(
                     R"({"x":{"dtype":"F32","shape":[4611686018427387904,4],"data_offsets":[0,4]}})", 4),
                 "too many");
  expect_corrupt(file_with_header(R"({"__metadata__":{"k":1}})", 0), "expected a string");
}

TEST(CkptSafetensors, RejectsOffsetsOutsideOrOverlapping) {
  expect_corrupt(file_with_header(R"({"x":{"dtype":"F32","shape":[1000],"data_offsets":[96,4096]}})", 4000),
                 "tensor 'x' data_offsets [96, 4096] exceed the data section (4000 bytes)");
  expect_corrupt(file_with_header(R"({"a":{"dtype":"F32","shape":[10],"data_offsets":[0,40]},)"
                                  R"("b":{"dtype":"F32","shape":[10],"data_offsets":[20,60]}})",
                                  80),
                 "overlap tensor 'a' [0, 40]");
  expect_corrupt(file_with_header(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", 8),
                 "belong to no tensor");
  expect_corrupt(file_with_header(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", 12),
                 "data section is 12 bytes but its tensors end at 4");
}

TEST(CkptSafetensors, RandomDamageIsRefusedNotCrashed) {
  std::vector<SafetensorsEntry> entries = {{"a", DType::kF32, {2, 3}, 0, 24}, {"b", DType::kU8, {5}, 24, 29}};
  const std::string good = encode_safetensors_header(entries, {{"k", "v"}}) + std::string(29, '\x05');
  std::mt19937 rng(11);
  int refused = 0;
  for (int trial = 0; trial < 3000; ++trial) {
    std::string file = good;
    int edits = 1 + static_cast<int>(rng() % 3);
    for (int e = 0; e < edits; ++e) {
      size_t at = rng() % file.size();
      switch (rng() % 3) {
        case 0: file[at] = static_cast<char>(rng()); break;
        case 1: file[at] = "{}[],:\"0123456789-e."[rng() % 21]; break;
        case 2: file.resize(at); break;
      }
      if (file.empty()) break;
    }
    try {
      parse_safetensors(bytes_of(file), file.size(), "f");
    } catch (const Error& e) {
      ASSERT_EQ(e.status(), Status::kCorruptData) << e.what();
      ++refused;
    }
  }
  EXPECT_GT(refused, 2500);
}

TEST(CkptNames, IterationDirectoriesAndShardFiles) {
  EXPECT_EQ(iteration_dir_name(100), "iter_0000100");
  EXPECT_EQ(iteration_dir_name(123456789), "iter_123456789");
  EXPECT_EQ(parse_iteration_dir_name("iter_0000100"), 100);
  EXPECT_EQ(parse_iteration_dir_name("iter_123456789"), 123456789);
  EXPECT_FALSE(parse_iteration_dir_name("iter_100"));
  EXPECT_FALSE(parse_iteration_dir_name("iter_00001x0"));
  EXPECT_FALSE(parse_iteration_dir_name(".tmp_iter_0000100_h_1"));
  EXPECT_EQ(shard_file_name(3), "shard_00003.safetensors");
  EXPECT_TRUE(is_plain_file_name("shard_00000.safetensors"));
  EXPECT_FALSE(is_plain_file_name("../x"));
  EXPECT_FALSE(is_plain_file_name("a/b"));
  EXPECT_FALSE(is_plain_file_name(".hidden"));
  EXPECT_FALSE(is_plain_file_name(""));
  EXPECT_EQ(parse_crc32c(format_crc32c(0xE3069283u)), 0xE3069283u);
  EXPECT_FALSE(parse_crc32c("e306928"));
  EXPECT_FALSE(parse_crc32c("e306928g"));
}

}  // namespace
}  // namespace mpt::ckpt
