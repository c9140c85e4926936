// TensorBoard scalars without TensorFlow: Event protobufs encoded by hand, framed as
// TFRecords (length, masked CRC-32C of the length, data, masked CRC-32C of the data) in
// DIR/events.out.tfevents.<unix seconds>.<hostname>, which TensorBoard's reader loads.
#pragma once

#include <cstdint>
#include <string>

namespace mpt::train {

class TensorBoardWriter {
 public:
  // Creates `dir` if missing and a new event file in it, starting with the file_version
  // record. Throws mpt::Error(kIoError) naming the path.
  explicit TensorBoardWriter(const std::string& dir);
  ~TensorBoardWriter();  // flushes; errors at this point are dropped
  TensorBoardWriter(const TensorBoardWriter&) = delete;
  TensorBoardWriter& operator=(const TensorBoardWriter&) = delete;

  // Buffers one scalar (stored as float32, as TensorBoard's simple_value is).
  void add_scalar(const std::string& tag, double value, int64_t step);
  // Writes what is buffered to the file. Throws kIoError naming the path.
  void flush();

  const std::string& path() const { return path_; }

 private:
  void append_record(const std::string& event);

  std::string path_;
  int fd_ = -1;
  std::string pending_;
};

// The pieces, exposed for tests and for anything else that writes TFRecords.
namespace tfrecord {
uint32_t masked_crc32c(const void* data, size_t size);
std::string frame(const std::string& payload);  // one TFRecord
std::string file_version_event(double wall_time);
std::string scalar_event(double wall_time, int64_t step, const std::string& tag, float value);
}  // namespace tfrecord

}  // namespace mpt::train
