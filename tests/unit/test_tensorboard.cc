// TensorBoard event files: read back with an independent TFRecord + protobuf decoder.
#include <gtest/gtest.h>

#include <stdlib.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include "ckpt/crc32c.h"
#include "core/error.h"
#include "train/tensorboard.h"

namespace mpt::train {
namespace {

namespace fs = std::filesystem;

uint32_t mask(uint32_t crc) { return ((crc >> 15) | (crc << 17)) + 0xa282ead8u; }

uint64_t load_le(const std::string& s, size_t at, int bytes) {
  uint64_t v = 0;
  for (int i = bytes - 1; i >= 0; --i) v = (v << 8) | static_cast<uint8_t>(s.at(at + i));
  return v;
}

// Splits a TFRecord stream into payloads, checking both CRCs of every record.
std::vector<std::string> read_records(const std::string& file) {
  std::vector<std::string> out;
  size_t at = 0;
  while (at < file.size()) {
    EXPECT_LE(at + 12, file.size()) << "truncated record header at " << at;
    uint64_t len = load_le(file, at, 8);
    EXPECT_EQ(load_le(file, at + 8, 4), mask(ckpt::crc32c(file.data() + at, 8))) << "length crc at " << at;
    EXPECT_LE(at + 12 + len + 4, file.size()) << "truncated record at " << at;
    std::string payload = file.substr(at + 12, len);
    EXPECT_EQ(load_le(file, at + 12 + len, 4), mask(ckpt::crc32c(payload.data(), payload.size())))
        << "data crc at " << at;
    out.push_back(payload);
    at += 12 + len + 4;
  }
  return out;
}

// One decoded protobuf field: varints and fixed values as bits, length-delimited as bytes.
struct Field {
  int wire_type;
  uint64_t bits;
  std::string bytes;
};

std::multimap<int, Field> decode(const std::string& msg) {
  std::multimap<int, Field> fields;
  size_t at = 0;
  auto varint = [&] {
    uint64_t v = 0;
    for (int shift = 0; at < msg.size(); shift += 7) {
      uint8_t b = static_cast<uint8_t>(msg[at++]);
      v |= static_cast<uint64_t>(b & 0x7F) << shift;
      if (!(b & 0x80)) return v;
    }
    ADD_FAILURE() << "varint runs past the message";
    return v;
  };
  while (at < msg.size()) {
    uint64_t key = varint();
    Field f{static_cast<int>(key & 7), 0, ""};
    switch (f.wire_type) {
      case 0: f.bits = varint(); break;
      case 1: f.bits = load_le(msg, at, 8); at += 8; break;
      case 5: f.bits = load_le(msg, at, 4); at += 4; break;
      case 2: {
        uint64_t len = varint();
        f.bytes = msg.substr(at, len);
        at += len;
        break;
      }
      default: ADD_FAILURE() << "unexpected wire type " << f.wire_type; return fields;
    }
    fields.emplace(static_cast<int>(key >> 3), f);
  }
  return fields;
}

double as_double(uint64_t bits) {
  double d;
  std::memcpy(&d, &bits, 8);
  return d;
}

float as_float(uint64_t bits) {
  uint32_t b = static_cast<uint32_t>(bits);
  float f;
  std::memcpy(&f, &b, 4);
  return f;
}

class TensorBoardWriterTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/mpt_tb_test_XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    root_ = tmpl;
  }
  void TearDown() override { fs::remove_all(root_); }
  std::string root_;
};

TEST(TFRecord, ScalarEventBytesFollowTheProtoSpec) {
  // Event{wall_time=0, step=1, summary{value{tag="a", simple_value=1.0}}}, encoded by hand.
  const std::string expect = std::string("\x09", 1) + std::string(8, '\0') + "\x10\x01" + "\x2a\x0a" +
                             "\x0a\x08" + "\x0a\x01" "a" + "\x15" + std::string("\x00\x00\x80\x3f", 4);
  EXPECT_EQ(tfrecord::scalar_event(0.0, 1, "a", 1.0f), expect);
  EXPECT_EQ(tfrecord::masked_crc32c("", 0), 0xa282ead8u);  // crc32c("") == 0
  std::string framed = tfrecord::frame("xyz");
  ASSERT_EQ(framed.size(), 8u + 4 + 3 + 4);
  EXPECT_EQ(read_records(framed), std::vector<std::string>{"xyz"});
}

TEST_F(TensorBoardWriterTest, WritesScalarsTensorBoardCanRead) {
  const std::string dir = root_ + "/tb/run1";  // created on demand
  std::string path;
  {
    TensorBoardWriter tb(dir);
    path = tb.path();
    tb.add_scalar("lm loss", 2.5, 1);
    tb.add_scalar("learning-rate", 3e-4, 1);
    tb.flush();
    tb.add_scalar("lm loss", 1.25, int64_t{1} << 40);
    tb.add_scalar("grad-norm", -0.5, 0);
  }  // the destructor flushes the last two
  EXPECT_EQ(fs::path(path).parent_path(), fs::path(dir));
  EXPECT_EQ(fs::path(path).filename().string().rfind("events.out.tfevents.", 0), 0u);

  std::ifstream in(path, std::ios::binary);
  std::string file((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::vector<std::string> records = read_records(file);
  ASSERT_EQ(records.size(), 5u);

  auto first = decode(records[0]);
  ASSERT_EQ(first.count(1), 1u);
  EXPECT_GT(as_double(first.find(1)->second.bits), 1.5e9);  // seconds since 1970
  ASSERT_EQ(first.count(3), 1u);
  EXPECT_EQ(first.find(3)->second.bytes, "brain.Event:2");

  struct Expect {
    std::string tag;
    float value;
    int64_t step;
  };
  const std::vector<Expect> want = {{"lm loss", 2.5f, 1},
                                    {"learning-rate", 3e-4f, 1},
                                    {"lm loss", 1.25f, int64_t{1} << 40},
                                    {"grad-norm", -0.5f, 0}};
  for (size_t i = 0; i < want.size(); ++i) {
    auto event = decode(records[i + 1]);
    ASSERT_EQ(event.count(1), 1u);
    EXPECT_GT(as_double(event.find(1)->second.bits), 1.5e9);
    EXPECT_EQ(event.count(2) ? static_cast<int64_t>(event.find(2)->second.bits) : 0, want[i].step);
    ASSERT_EQ(event.count(5), 1u);
    auto summary = decode(event.find(5)->second.bytes);
    ASSERT_EQ(summary.count(1), 1u);
    auto value = decode(summary.find(1)->second.bytes);
    ASSERT_EQ(value.count(1), 1u);
    ASSERT_EQ(value.count(2), 1u);
    EXPECT_EQ(value.find(1)->second.bytes, want[i].tag);
    EXPECT_EQ(value.find(2)->second.wire_type, 5);
    EXPECT_EQ(as_float(value.find(2)->second.bits), want[i].value);
  }
}

TEST_F(TensorBoardWriterTest, TwoWritersInOneDirectoryGetTwoFiles) {
  TensorBoardWriter a(root_);
  TensorBoardWriter b(root_);
  EXPECT_NE(a.path(), b.path());
}

TEST_F(TensorBoardWriterTest, UnwritableDirectoryIsAnIoError) {
  std::ofstream(root_ + "/file") << "x";
  try {
    TensorBoardWriter tb(root_ + "/file/tb");
    FAIL() << "created an event file under a regular file";
  } catch (const Error& e) {
    EXPECT_EQ(e.status(), Status::kIoError);
    EXPECT_NE(std::string(e.what()).find(root_ + "/file"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace mpt::train
