// POSIX file primitives for crash-safe checkpoints: whole-file writes that are fsync'ed
// before they count, directory syncs, atomic renames and read-only memory maps.
// Every failure is mpt::Error(kIoError) naming the path and strerror.
#pragma once

#include <cstdint>
#include <string>

namespace mpt::ckpt {

std::string join_path(const std::string& dir, const std::string& name);
bool path_exists(const std::string& path);
bool is_directory(const std::string& path);
void make_directories(const std::string& path);  // mkdir -p
// Removes a file or a directory tree; returns false (never throws) when it could not.
bool remove_tree(const std::string& path) noexcept;
void fsync_directory(const std::string& dir);
// rename(2); an existing empty directory or file at `to` is replaced, a non-empty one is not.
void rename_path(const std::string& from, const std::string& to);
// Atomically swaps two existing paths (renameat2 RENAME_EXCHANGE). Returns false when the
// file system does not support it; throws on any other failure.
bool exchange_paths(const std::string& a, const std::string& b);
// Whole small file into memory (index.json, latest_checkpointed_iteration.txt).
std::string read_file(const std::string& path, uint64_t max_bytes);
// Writes `content` to `path` through a temporary sibling, fsync, rename, directory fsync:
// readers see the old content or the new, never a mix.
void write_file_atomic(const std::string& path, const std::string& content);
// Identifies this process in staging names so a later save can tell live from dead ones.
std::string host_name();
bool process_is_alive(int64_t pid);

// A new file written front to back; tracks its size and CRC-32C. finish() fsyncs and
// closes; a writer destroyed unfinished closes and leaves removal to the caller.
class FileWriter {
 public:
  explicit FileWriter(const std::string& path);  // fails if the file exists
  ~FileWriter();
  FileWriter(const FileWriter&) = delete;
  FileWriter& operator=(const FileWriter&) = delete;

  void write(const void* data, uint64_t size);
  void finish();
  uint64_t bytes() const { return bytes_; }
  uint32_t crc32c() const { return crc_; }

 private:
  std::string path_;
  int fd_ = -1;
  uint64_t bytes_ = 0;
  uint32_t crc_ = 0;
};

// A read-only map of a whole file; the mapping outlives moves of the object.
class MappedFile {
 public:
  MappedFile() = default;
  explicit MappedFile(const std::string& path);
  ~MappedFile();
  MappedFile(MappedFile&& other) noexcept;
  MappedFile& operator=(MappedFile&& other) noexcept;
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const uint8_t* data() const { return data_; }
  uint64_t size() const { return size_; }
  const std::string& path() const { return path_; }

 private:
  void release() noexcept;
  std::string path_;
  const uint8_t* data_ = nullptr;
  uint64_t size_ = 0;
};

}  // namespace mpt::ckpt
