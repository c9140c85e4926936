#include "ckpt/file_io.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <system_error>

#include "ckpt/crc32c.h"
#include "core/error.h"

namespace mpt::ckpt {
namespace {

[[noreturn]] void fail_errno(const std::string& path, const char* action, int err) {
  fail(Status::kIoError, path, ": ", action, " failed: ", std::strerror(err));
}

int open_retry(const char* path, int flags, mode_t mode = 0) {
  int fd;
  do fd = ::open(path, flags | O_CLOEXEC, mode);
  while (fd < 0 && errno == EINTR);
  return fd;
}

}  // namespace

std::string join_path(const std::string& dir, const std::string& name) {
  if (dir.empty()) return name;
  return dir.back() == '/' ? dir + name : dir + "/" + name;
}

bool path_exists(const std::string& path) {
  struct stat st;
  return ::lstat(path.c_str(), &st) == 0;
}

bool is_directory(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

void make_directories(const std::string& path) {
  std::error_code ec;
  std::filesystem::create_directories(path, ec);
  if (ec) fail(Status::kIoError, path, ": cannot create directory: ", ec.message());
  MPT_CHECK(is_directory(path), Status::kIoError, path, ": exists and is not a directory");
}

bool remove_tree(const std::string& path) noexcept {
  std::error_code ec;
  std::filesystem::remove_all(path, ec);
  return !ec;
}

void fsync_directory(const std::string& dir) {
  int fd = open_retry(dir.c_str(), O_RDONLY | O_DIRECTORY);
  if (fd < 0) fail_errno(dir, "open directory", errno);
  int rc = ::fsync(fd);
  int err = errno;
  ::close(fd);
  // Some file systems cannot sync directories; their renames are durable without it.
  if (rc != 0 && err != EINVAL && err != ENOTSUP) fail_errno(dir, "fsync directory", err);
}

void rename_path(const std::string& from, const std::string& to) {
  if (::rename(from.c_str(), to.c_str()) != 0)
    fail(Status::kIoError, "rename ", from, " -> ", to, " failed: ", std::strerror(errno));
}

bool exchange_paths(const std::string& a, const std::string& b) {
  if (::renameat2(AT_FDCWD, a.c_str(), AT_FDCWD, b.c_str(), RENAME_EXCHANGE) == 0) return true;
  if (errno == EINVAL || errno == ENOSYS || errno == ENOTSUP) return false;
  fail(Status::kIoError, "exchange ", a, " <-> ", b, " failed: ", std::strerror(errno));
}

std::string read_file(const std::string& path, uint64_t max_bytes) {
  int fd = open_retry(path.c_str(), O_RDONLY);
  if (fd < 0) fail_errno(path, "open", errno);
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    int err = errno;
    ::close(fd);
    fail_errno(path, "stat", err);
  }
  if (static_cast<uint64_t>(st.st_size) > max_bytes) {
    ::close(fd);
    fail(Status::kCorruptData, path, ": size ", st.st_size, " bytes exceeds the limit of ",
         max_bytes);
  }
  std::string content(static_cast<size_t>(st.st_size), '\0');
  size_t done = 0;
  while (done < content.size()) {
    ssize_t n = ::read(fd, content.data() + done, content.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      int err = errno;
      ::close(fd);
      fail_errno(path, "read", err);
    }
    if (n == 0) break;  // shrank while reading
    done += static_cast<size_t>(n);
  }
  ::close(fd);
  content.resize(done);
  return content;
}

void write_file_atomic(const std::string& path, const std::string& content) {
  std::filesystem::path p(path);
  std::string dir = p.parent_path().empty() ? "." : p.parent_path().string();
  std::string tmp_name = ".";
  tmp_name.append(p.filename().string()).append(".tmp_").append(host_name());
  tmp_name.append("_").append(std::to_string(::getpid()));
  std::string tmp = join_path(dir, tmp_name);
  remove_tree(tmp);
  try {
    FileWriter w(tmp);
    w.write(content.data(), content.size());
    w.finish();
    rename_path(tmp, path);
  } catch (...) {
    remove_tree(tmp);
    throw;
  }
  fsync_directory(dir);
}

std::string host_name() {
  char buf[256] = {};
  if (::gethostname(buf, sizeof(buf) - 1) != 0 || buf[0] == '\0') return "localhost";
  std::string name(buf);
  for (char& c : name)
    if (c == '/' || c == '_') c = '-';  // keeps staging names parseable
  return name;
}

bool process_is_alive(int64_t pid) {
  if (pid <= 0) return false;
  return ::kill(static_cast<pid_t>(pid), 0) == 0 || errno != ESRCH;
}

FileWriter::FileWriter(const std::string& path) : path_(path) {
  fd_ = open_retry(path.c_str(), O_WRONLY | O_CREAT | O_EXCL, 0644);
  if (fd_ < 0) fail_errno(path, "create", errno);
}

FileWriter::~FileWriter() {
  if (fd_ >= 0) ::close(fd_);
}

void FileWriter::write(const void* data, uint64_t size) {
  MPT_ASSERT(fd_ >= 0);
  const auto* p = static_cast<const uint8_t*>(data);
  uint64_t left = size;
  while (left > 0) {
    size_t chunk = left < (1u << 30) ? static_cast<size_t>(left) : (1u << 30);
    ssize_t n = ::write(fd_, p, chunk);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) fail_errno(path_, "write", errno);
    crc_ = crc32c_extend(crc_, p, static_cast<size_t>(n));
    p += n;
    left -= static_cast<uint64_t>(n);
  }
  bytes_ += size;
}

void FileWriter::finish() {
  MPT_ASSERT(fd_ >= 0);
  int fd = fd_;
  fd_ = -1;
  if (::fsync(fd) != 0) {
    int err = errno;
    ::close(fd);
    fail_errno(path_, "fsync", err);
  }
  if (::close(fd) != 0) fail_errno(path_, "close", errno);
}

MappedFile::MappedFile(const std::string& path) : path_(path) {
  int fd = open_retry(path.c_str(), O_RDONLY);
  if (fd < 0) fail_errno(path, "open", errno);
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    int err = errno;
    ::close(fd);
    fail_errno(path, "stat", err);
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    fail(Status::kIoError, path, ": not a regular file");
  }
  size_ = static_cast<uint64_t>(st.st_size);
  if (size_ > 0) {
    void* p = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) {
      int err = errno;
      ::close(fd);
      fail_errno(path, "mmap", err);
    }
    data_ = static_cast<const uint8_t*>(p);
  }
  ::close(fd);
}

MappedFile::~MappedFile() { release(); }

MappedFile::MappedFile(MappedFile&& other) noexcept
    : path_(std::move(other.path_)), data_(other.data_), size_(other.size_) {
  other.data_ = nullptr;
  other.size_ = 0;
}

MappedFile& MappedFile::operator=(MappedFile&& other) noexcept {
  if (this != &other) {
    release();
    path_ = std::move(other.path_);
    data_ = other.data_;
    size_ = other.size_;
    other.data_ = nullptr;
    other.size_ = 0;
  }
  return *this;
}

void MappedFile::release() noexcept {
  if (data_ != nullptr) ::munmap(const_cast<uint8_t*>(data_), size_);
  data_ = nullptr;
  size_ = 0;
}

}  // namespace mpt::ckpt
