#include "train/tensorboard.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>

#include "ckpt/crc32c.h"
#include "ckpt/file_io.h"
#include "core/error.h"

namespace mpt::train {
namespace tfrecord {
namespace {

// Protobuf wire types.
constexpr int kVarint = 0;
constexpr int kFixed64 = 1;
constexpr int kLengthDelimited = 2;
constexpr int kFixed32 = 5;

void put_varint(std::string& out, uint64_t v) {
  while (v >= 0x80) {
    out += static_cast<char>((v & 0x7F) | 0x80);
    v >>= 7;
  }
  out += static_cast<char>(v);
}

void put_tag(std::string& out, int field, int wire_type) {
  put_varint(out, static_cast<uint64_t>(field) << 3 | static_cast<uint64_t>(wire_type));
}

void put_fixed(std::string& out, uint64_t bits, int bytes) {
  for (int i = 0; i < bytes; ++i) out += static_cast<char>((bits >> (8 * i)) & 0xFF);
}

void put_double(std::string& out, int field, double v) {
  uint64_t bits;
  std::memcpy(&bits, &v, 8);
  put_tag(out, field, kFixed64);
  put_fixed(out, bits, 8);
}

void put_bytes(std::string& out, int field, const std::string& bytes) {
  put_tag(out, field, kLengthDelimited);
  put_varint(out, bytes.size());
  out += bytes;
}

// Event field numbers (tensorflow/core/util/event.proto).
constexpr int kEventWallTime = 1;
constexpr int kEventStep = 2;
constexpr int kEventFileVersion = 3;
constexpr int kEventSummary = 5;
constexpr int kSummaryValue = 1;
constexpr int kValueTag = 1;
constexpr int kValueSimpleValue = 2;

}  // namespace

uint32_t masked_crc32c(const void* data, size_t size) {
  uint32_t crc = ckpt::crc32c(data, size);
  return ((crc >> 15) | (crc << 17)) + 0xa282ead8u;
}

std::string frame(const std::string& payload) {
  std::string len;
  put_fixed(len, payload.size(), 8);
  std::string out = len;
  put_fixed(out, masked_crc32c(len.data(), len.size()), 4);
  out += payload;
  put_fixed(out, masked_crc32c(payload.data(), payload.size()), 4);
  return out;
}

std::string file_version_event(double wall_time) {
  std::string event;
  put_double(event, kEventWallTime, wall_time);
  put_bytes(event, kEventFileVersion, "brain.Event:2");
  return event;
}

std::string scalar_event(double wall_time, int64_t step, const std::string& tag, float value) {
  std::string v;
  put_bytes(v, kValueTag, tag);
  uint32_t bits;
  std::memcpy(&bits, &value, 4);
  put_tag(v, kValueSimpleValue, kFixed32);
  put_fixed(v, bits, 4);
  std::string summary;
  put_bytes(summary, kSummaryValue, v);

  std::string event;
  put_double(event, kEventWallTime, wall_time);
  put_tag(event, kEventStep, kVarint);
  put_varint(event, static_cast<uint64_t>(step));  // int64: negatives take ten bytes
  put_bytes(event, kEventSummary, summary);
  return event;
}

}  // namespace tfrecord

namespace {

double wall_time_now() {
  using namespace std::chrono;
  return duration<double>(system_clock::now().time_since_epoch()).count();
}

}  // namespace

TensorBoardWriter::TensorBoardWriter(const std::string& dir) {
  ckpt::make_directories(dir);
  const double now = wall_time_now();
  const std::string base = ckpt::join_path(
      dir, "events.out.tfevents." + std::to_string(static_cast<int64_t>(now)) + "." + ckpt::host_name());
  // Two writers started in the same second on one host must not share a file.
  for (int attempt = 0; fd_ < 0; ++attempt) {
    path_ = attempt == 0 ? base : base + "." + std::to_string(::getpid()) + "." + std::to_string(attempt);
    fd_ = ::open(path_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd_ < 0 && (errno != EEXIST || attempt >= 100))
      fail(Status::kIoError, path_, ": cannot create event file: ", std::strerror(errno));
  }
  append_record(tfrecord::file_version_event(now));
  flush();
}

TensorBoardWriter::~TensorBoardWriter() {
  try {
    flush();
  } catch (const Error&) {
  }
  if (fd_ >= 0) ::close(fd_);
}

void TensorBoardWriter::add_scalar(const std::string& tag, double value, int64_t step) {
  append_record(tfrecord::scalar_event(wall_time_now(), step, tag, static_cast<float>(value)));
}

void TensorBoardWriter::append_record(const std::string& event) { pending_ += tfrecord::frame(event); }

void TensorBoardWriter::flush() {
  size_t done = 0;
  while (done < pending_.size()) {
    ssize_t n = ::write(fd_, pending_.data() + done, pending_.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      pending_.erase(0, done);
      fail(Status::kIoError, path_, ": write failed: ", std::strerror(errno));
    }
    done += static_cast<size_t>(n);
  }
  pending_.clear();
}

}  // namespace mpt::train
