// The files behind cached dataset indices: .npy arrays in numpy's format 1.0 (what
// numpy.save writes and Megatron's caches hold), written atomically and read back with every
// header field checked; a lock that lets one process build an entry while the others wait;
// and the hash that names cache entries.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace mpt::data {

enum class NpyDType { kInt16, kInt32, kInt64, kUInt32 };

// "<i2", "<i4", "<i8", "<u4"; bytes per element.
const char* npy_descr(NpyDType dtype);
size_t npy_itemsize(NpyDType dtype);

// What a .npy header says. shape has one entry for a 1-D array, two for [rows, cols].
struct NpyHeader {
  std::string descr;
  bool fortran_order = false;
  std::vector<int64_t> shape;
  int64_t data_offset = 0;  // bytes before the first element
};

// Writes `values` as a 1-D array of `rows` elements (cols == 0) or a C-order [rows, cols]
// array, stored as `dtype` (each value converted; one that does not fit is
// Error(kInvalidArgument)). The data goes to a temporary sibling that is synced and renamed
// over PATH, so readers see the old file or the new one, never a part. Throws
// Error(kIoError) naming the path when it cannot be written. T is int16_t, int32_t or int64_t.
template <typename T>
void write_npy(const std::string& path, NpyDType dtype, int64_t rows, int64_t cols, const T* values);

// Parses the header of PATH. Throws Error(kIoError) when it cannot be opened or read,
// Error(kCorruptData) naming the file and the field when the magic, the version or the
// header dictionary is malformed.
NpyHeader read_npy_header(const std::string& path);

// Reads PATH, which must hold a C-order array of one of the `accepted` dtypes with shape
// [rows] (cols == 0) or [rows, cols], whose data fills the rest of the file exactly, and
// converts it to T. Throws Error(kIoError) when the file cannot be read and
// Error(kCorruptData) naming the file, the field and the value for any mismatch or for a
// value that does not fit T. T is int16_t, int32_t or int64_t.
template <typename T>
std::vector<T> read_npy(const std::string& path, const std::vector<NpyDType>& accepted, int64_t rows, int64_t cols);

// Small text files (cache descriptions): the same atomic write, and a whole-file read of at
// most max_bytes (Error(kIoError) when missing or unreadable, Error(kCorruptData) when longer).
void write_text_atomic(const std::string& path, const std::string& text);
std::string read_text(const std::string& path, size_t max_bytes);

// mkdir -p; Error(kIoError) naming the directory when it cannot be created.
void make_directories(const std::string& dir);

// An exclusive advisory lock (flock) on PATH, which is created when missing, held until
// destruction. Blocks while another process, or another thread through its own lock object,
// holds it. Throws Error(kIoError) naming the path when the file cannot be opened or locked.
class ExclusiveFileLock {
 public:
  explicit ExclusiveFileLock(const std::string& path);
  ~ExclusiveFileLock();
  ExclusiveFileLock(const ExclusiveFileLock&) = delete;
  ExclusiveFileLock& operator=(const ExclusiveFileLock&) = delete;

 private:
  int fd_ = -1;
};

// A cache entry BASE-description.txt plus arrays beside it, shared by processes. The entry
// counts once its description exists (it is written after the arrays) and equals
// `description`. load_arrays() reads the arrays and throws Error for anything damaged;
// build() computes them in memory; save_arrays() writes them (each file atomically).
// Without a usable entry: creates `dir`, takes BASE.lock, looks again (another process may
// have built it meanwhile) and otherwise builds and saves. Returns true when loaded. A
// damaged entry is rebuilt and explained in *warning. Throws Error(kIoError) naming `dir`
// when the entry must be written and cannot be.
bool load_or_build(const std::string& dir, const std::string& base, const std::string& description,
                   const std::function<void()>& load_arrays, const std::function<void()>& build,
                   const std::function<void()>& save_arrays, std::string* warning);

// FNV-1a 128-bit hash of `text` as 32 lowercase hex digits: the same on every host and build.
std::string hash_hex(const std::string& text);

}  // namespace mpt::data
