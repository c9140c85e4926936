#include "data/index_cache.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <limits>
#include <optional>
#include <system_error>
#include <type_traits>

#include "core/error.h"

// Arrays are written and read in host order and labelled little-endian ('<').
static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "index caches are written on little-endian hosts only");

namespace mpt::data {

namespace {

constexpr char kNpyMagic[6] = {'\x93', 'N', 'U', 'M', 'P', 'Y'};
constexpr size_t kNpyAlign = 64;          // numpy pads headers to this many bytes
constexpr size_t kGrowthDigits = 21;      // numpy leaves room for the first dimension to grow
constexpr size_t kMaxHeaderBytes = 65536;  // far above any header written for 1-D or 2-D arrays
constexpr int64_t kChunkElements = 1 << 16;

std::string errno_text() { return std::strerror(errno); }

// --- raw file I/O -----------------------------------------------------------------------

void write_all(int fd, const void* data, size_t bytes, const std::string& path) {
  const char* p = static_cast<const char*>(data);
  while (bytes > 0) {
    ssize_t n = ::write(fd, p, bytes);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) fail(Status::kIoError, "cannot write ", path, ": ", errno_text());
    p += n;
    bytes -= static_cast<size_t>(n);
  }
}

void read_all_at(int fd, void* data, size_t bytes, int64_t offset, const std::string& path) {
  char* p = static_cast<char*>(data);
  while (bytes > 0) {
    ssize_t n = ::pread(fd, p, bytes, static_cast<off_t>(offset));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) fail(Status::kIoError, "cannot read ", path, ": ", errno_text());
    if (n == 0) fail(Status::kCorruptData, path, ": file ends early at byte ", offset);
    p += n;
    offset += n;
    bytes -= static_cast<size_t>(n);
  }
}

// A file opened for reading, closed on every path out.
struct ReadFd {
  int fd = -1;
  int64_t size = 0;
  explicit ReadFd(const std::string& path) {
    fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) fail(Status::kIoError, "cannot open ", path, ": ", errno_text());
    struct stat st {};
    if (::fstat(fd, &st) != 0) {
      int saved = errno;
      ::close(fd);
      fail(Status::kIoError, "cannot stat ", path, ": ", std::strerror(saved));
    }
    size = static_cast<int64_t>(st.st_size);
  }
  ~ReadFd() { ::close(fd); }
  ReadFd(const ReadFd&) = delete;
  ReadFd& operator=(const ReadFd&) = delete;
};

// Writes through a temporary sibling that `commit` syncs and renames over the target; a
// writer destroyed without commit removes its temporary.
class AtomicWriter {
 public:
  explicit AtomicWriter(std::string path) : path_(std::move(path)) {
    static std::atomic<uint64_t> counter{0};
    tmp_ = str(path_, ".tmp-", ::getpid(), "-", counter.fetch_add(1));
    fd_ = ::open(tmp_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd_ < 0) fail(Status::kIoError, "cannot create ", tmp_, " (writing ", path_, "): ", errno_text());
  }
  ~AtomicWriter() {
    if (fd_ >= 0) ::close(fd_);
    if (!committed_) ::unlink(tmp_.c_str());
  }
  AtomicWriter(const AtomicWriter&) = delete;
  AtomicWriter& operator=(const AtomicWriter&) = delete;

  void write(const void* data, size_t bytes) { write_all(fd_, data, bytes, tmp_); }

  void commit() {
    if (::fsync(fd_) != 0) fail(Status::kIoError, "cannot sync ", tmp_, ": ", errno_text());
    int rc = ::close(fd_);
    fd_ = -1;
    if (rc != 0) fail(Status::kIoError, "cannot close ", tmp_, ": ", errno_text());
    if (::rename(tmp_.c_str(), path_.c_str()) != 0)
      fail(Status::kIoError, "cannot rename ", tmp_, " to ", path_, ": ", errno_text());
    committed_ = true;
  }

 private:
  std::string path_, tmp_;
  int fd_ = -1;
  bool committed_ = false;
};

// --- header -----------------------------------------------------------------------------

std::string shape_text(const std::vector<int64_t>& shape) {
  // As Python prints a tuple: (7,) and (7, 2).
  if (shape.size() == 1) return str("(", shape[0], ",)");
  std::string s = "(";
  for (size_t i = 0; i < shape.size(); ++i) s += str(i ? ", " : "", shape[i]);
  return s + ")";
}

// Byte for byte what numpy.save writes: the dictionary, spare spaces for the first
// dimension to grow to 21 digits, then padding and a newline up to a multiple of 64.
std::string header_bytes(NpyDType dtype, const std::vector<int64_t>& shape) {
  std::string dict =
      str("{'descr': '", npy_descr(dtype), "', 'fortran_order': False, 'shape': ", shape_text(shape), ", }");
  dict.append(kGrowthDigits - std::to_string(shape[0]).size(), ' ');
  const size_t prefix = sizeof(kNpyMagic) + 2 + 2;
  const size_t pad = kNpyAlign - (prefix + dict.size() + 1) % kNpyAlign;
  dict.append(pad, ' ');
  dict += '\n';
  std::string out(kNpyMagic, sizeof(kNpyMagic));
  out += '\x01';
  out += '\x00';
  const uint16_t len = static_cast<uint16_t>(dict.size());
  out += static_cast<char>(len & 0xff);
  out += static_cast<char>(len >> 8);
  return out + dict;
}

// A parser for the one Python literal numpy writes: a dict of string keys whose values are
// strings, True/False or tuples of integers.
class HeaderParser {
 public:
  HeaderParser(const std::string& text, const std::string& path) : s_(text), path_(path) {}

  NpyHeader parse() {
    NpyHeader h;
    bool seen_descr = false, seen_order = false, seen_shape = false;
    expect('{');
    while (true) {
      skip_space();
      if (peek() == '}') break;
      const std::string key = quoted();
      skip_space();
      expect(':');
      skip_space();
      if (key == "descr") {
        h.descr = quoted();
        seen_descr = true;
      } else if (key == "fortran_order") {
        h.fortran_order = boolean();
        seen_order = true;
      } else if (key == "shape") {
        h.shape = tuple();
        seen_shape = true;
      } else {
        bad(str("unexpected key '", key, "'"));
      }
      skip_space();
      if (peek() == ',') {
        ++pos_;
        continue;
      }
      skip_space();
      if (peek() != '}') bad("expected ',' or '}'");
    }
    ++pos_;
    skip_space();
    if (pos_ != s_.size()) bad("text after the dictionary");
    if (!seen_descr || !seen_order || !seen_shape) bad("missing 'descr', 'fortran_order' or 'shape'");
    return h;
  }

 private:
  [[noreturn]] void bad(const std::string& why) const {
    fail(Status::kCorruptData, path_, ": malformed .npy header (", why, " at character ", pos_, "): ", s_);
  }
  char peek() const { return pos_ < s_.size() ? s_[pos_] : '\0'; }
  void skip_space() {
    while (pos_ < s_.size() && (s_[pos_] == ' ' || s_[pos_] == '\n' || s_[pos_] == '\t')) ++pos_;
  }
  void expect(char c) {
    skip_space();
    if (peek() != c) bad(str("expected '", c, "'"));
    ++pos_;
  }
  std::string quoted() {
    const char q = peek();
    if (q != '\'' && q != '"') bad("expected a quoted string");
    const size_t end = s_.find(q, pos_ + 1);
    if (end == std::string::npos) bad("unterminated string");
    std::string out = s_.substr(pos_ + 1, end - pos_ - 1);
    pos_ = end + 1;
    return out;
  }
  bool boolean() {
    if (s_.compare(pos_, 4, "True") == 0) {
      pos_ += 4;
      return true;
    }
    if (s_.compare(pos_, 5, "False") == 0) {
      pos_ += 5;
      return false;
    }
    bad("expected True or False");
  }
  std::vector<int64_t> tuple() {
    expect('(');
    std::vector<int64_t> out;
    while (true) {
      skip_space();
      if (peek() == ')') break;
      if (peek() < '0' || peek() > '9') bad("expected a non-negative integer");
      int64_t v = 0;
      while (peek() >= '0' && peek() <= '9') {
        if (v > (std::numeric_limits<int64_t>::max() - 9) / 10) bad("dimension too large");
        v = v * 10 + (peek() - '0');
        ++pos_;
      }
      out.push_back(v);
      skip_space();
      if (peek() == ',') ++pos_;
      else if (peek() != ')') bad("expected ',' or ')'");
    }
    ++pos_;
    return out;
  }

  const std::string& s_;
  const std::string& path_;
  size_t pos_ = 0;
};

NpyHeader parse_header(const ReadFd& f, const std::string& path) {
  const size_t fixed = sizeof(kNpyMagic) + 2;
  if (f.size < static_cast<int64_t>(fixed + 2))
    fail(Status::kCorruptData, path, ": ", f.size, " bytes is too short for a .npy file");
  char lead[sizeof(kNpyMagic) + 2 + 4];
  const size_t lead_bytes = std::min<size_t>(sizeof(lead), static_cast<size_t>(f.size));
  read_all_at(f.fd, lead, lead_bytes, 0, path);
  if (std::memcmp(lead, kNpyMagic, sizeof(kNpyMagic)) != 0) fail(Status::kCorruptData, path, ": not a .npy file (bad magic)");
  const int major = static_cast<unsigned char>(lead[6]), minor = static_cast<unsigned char>(lead[7]);
  size_t len_bytes = 0;
  if (major == 1 && minor == 0) len_bytes = 2;
  else if ((major == 2 || major == 3) && minor == 0) len_bytes = 4;
  else fail(Status::kCorruptData, path, ": unsupported .npy version ", major, ".", minor);
  if (lead_bytes < fixed + len_bytes) fail(Status::kCorruptData, path, ": file ends inside the header length");
  uint64_t header_len = 0;
  for (size_t i = 0; i < len_bytes; ++i) header_len |= static_cast<uint64_t>(static_cast<unsigned char>(lead[fixed + i])) << (8 * i);
  const int64_t offset = static_cast<int64_t>(fixed + len_bytes + header_len);
  if (header_len > kMaxHeaderBytes || offset > f.size)
    fail(Status::kCorruptData, path, ": header length ", header_len, " runs past the end of the ", f.size, "-byte file");
  std::string text(header_len, '\0');
  read_all_at(f.fd, text.data(), header_len, static_cast<int64_t>(fixed + len_bytes), path);
  if (text.empty() || text.back() != '\n') fail(Status::kCorruptData, path, ": .npy header does not end in a newline");
  NpyHeader h = HeaderParser(text, path).parse();
  h.data_offset = offset;
  return h;
}

bool descr_to_dtype(const std::string& descr, NpyDType* out) {
  for (NpyDType d : {NpyDType::kInt16, NpyDType::kInt32, NpyDType::kInt64, NpyDType::kUInt32}) {
    if (descr == npy_descr(d)) {
      *out = d;
      return true;
    }
  }
  return false;
}

// --- element conversion -----------------------------------------------------------------

template <typename Stored, typename T>
void store_chunk(const T* in, int64_t n, char* out, const std::string& path, int64_t first) {
  for (int64_t i = 0; i < n; ++i) {
    const T v = in[i];
    if constexpr (!std::is_same_v<Stored, T>) {
      const bool fits = std::is_signed_v<Stored>
                            ? static_cast<int64_t>(v) >= std::numeric_limits<Stored>::min() &&
                                  static_cast<int64_t>(v) <= std::numeric_limits<Stored>::max()
                            : static_cast<int64_t>(v) >= 0 &&
                                  static_cast<uint64_t>(v) <= std::numeric_limits<Stored>::max();
      MPT_CHECK(fits, Status::kInvalidArgument, "writing ", path, ": element ", first + i, " = ", v,
                " does not fit the stored dtype");
    }
    const Stored s = static_cast<Stored>(v);
    std::memcpy(out + i * static_cast<int64_t>(sizeof(Stored)), &s, sizeof(Stored));
  }
}

template <typename Stored, typename T>
void load_chunk(const char* in, int64_t n, T* out, const std::string& path, int64_t first) {
  for (int64_t i = 0; i < n; ++i) {
    Stored s;
    std::memcpy(&s, in + i * static_cast<int64_t>(sizeof(Stored)), sizeof(Stored));
    if constexpr (!std::is_same_v<Stored, T>) {
      const bool fits = std::is_signed_v<Stored>
                            ? static_cast<int64_t>(s) >= std::numeric_limits<T>::min() &&
                                  static_cast<int64_t>(s) <= std::numeric_limits<T>::max()
                            : static_cast<uint64_t>(s) <= static_cast<uint64_t>(std::numeric_limits<T>::max());
      MPT_CHECK(fits, Status::kCorruptData, path, ": element ", first + i, " = ", s, " is out of range");
    }
    out[i] = static_cast<T>(s);
  }
}

template <typename Fn>
void dispatch(NpyDType dtype, Fn&& fn) {
  switch (dtype) {
    case NpyDType::kInt16: fn(int16_t{}); return;
    case NpyDType::kInt32: fn(int32_t{}); return;
    case NpyDType::kInt64: fn(int64_t{}); return;
    case NpyDType::kUInt32: fn(uint32_t{}); return;
  }
}

}  // namespace

const char* npy_descr(NpyDType dtype) {
  switch (dtype) {
    case NpyDType::kInt16: return "<i2";
    case NpyDType::kInt32: return "<i4";
    case NpyDType::kInt64: return "<i8";
    case NpyDType::kUInt32: return "<u4";
  }
  return "?";
}

size_t npy_itemsize(NpyDType dtype) {
  switch (dtype) {
    case NpyDType::kInt16: return 2;
    case NpyDType::kInt32: return 4;
    case NpyDType::kInt64: return 8;
    case NpyDType::kUInt32: return 4;
  }
  return 0;
}

template <typename T>
void write_npy(const std::string& path, NpyDType dtype, int64_t rows, int64_t cols, const T* values) {
  MPT_CHECK(rows >= 0 && cols >= 0, Status::kInvalidArgument, "writing ", path, ": bad shape [", rows, ", ", cols, "]");
  std::vector<int64_t> shape{rows};
  if (cols > 0) shape.push_back(cols);
  const int64_t count = rows * (cols > 0 ? cols : 1);
  AtomicWriter w(path);
  const std::string head = header_bytes(dtype, shape);
  w.write(head.data(), head.size());
  const int64_t item = static_cast<int64_t>(npy_itemsize(dtype));
  std::vector<char> buf(static_cast<size_t>(std::min(count, kChunkElements) * item));
  for (int64_t first = 0; first < count; first += kChunkElements) {
    const int64_t n = std::min(kChunkElements, count - first);
    dispatch(dtype, [&](auto stored) {
      store_chunk<decltype(stored)>(values + first, n, buf.data(), path, first);
    });
    w.write(buf.data(), static_cast<size_t>(n * item));
  }
  w.commit();
}

NpyHeader read_npy_header(const std::string& path) {
  ReadFd f(path);
  return parse_header(f, path);
}

template <typename T>
std::vector<T> read_npy(const std::string& path, const std::vector<NpyDType>& accepted, int64_t rows, int64_t cols) {
  ReadFd f(path);
  const NpyHeader h = parse_header(f, path);
  NpyDType dtype;
  bool ok = descr_to_dtype(h.descr, &dtype);
  if (ok) {
    ok = false;
    for (NpyDType a : accepted) ok = ok || a == dtype;
  }
  if (!ok) {
    std::string want;
    for (NpyDType a : accepted) want += str(want.empty() ? "" : " or ", npy_descr(a));
    fail(Status::kCorruptData, path, ": descr '", h.descr, "', expected ", want);
  }
  if (h.fortran_order) fail(Status::kCorruptData, path, ": fortran_order is True, expected False");
  std::vector<int64_t> want_shape{rows};
  if (cols > 0) want_shape.push_back(cols);
  if (h.shape != want_shape)
    fail(Status::kCorruptData, path, ": shape ", shape_text(h.shape), ", expected ", shape_text(want_shape));
  const int64_t count = rows * (cols > 0 ? cols : 1);
  const int64_t item = static_cast<int64_t>(npy_itemsize(dtype));
  if (f.size - h.data_offset != count * item)
    fail(Status::kCorruptData, path, ": ", f.size - h.data_offset, " data bytes, expected ", count * item, " for shape ",
         shape_text(h.shape), " of ", h.descr);
  std::vector<T> out(static_cast<size_t>(count));
  if (item == static_cast<int64_t>(sizeof(T)) && (dtype != NpyDType::kUInt32)) {
    read_all_at(f.fd, out.data(), static_cast<size_t>(count * item), h.data_offset, path);
    return out;
  }
  std::vector<char> buf(static_cast<size_t>(std::min(count, kChunkElements) * item));
  for (int64_t first = 0; first < count; first += kChunkElements) {
    const int64_t n = std::min(kChunkElements, count - first);
    read_all_at(f.fd, buf.data(), static_cast<size_t>(n * item), h.data_offset + first * item, path);
    dispatch(dtype, [&](auto stored) { load_chunk<decltype(stored)>(buf.data(), n, out.data() + first, path, first); });
  }
  return out;
}

template void write_npy<int16_t>(const std::string&, NpyDType, int64_t, int64_t, const int16_t*);
template void write_npy<int32_t>(const std::string&, NpyDType, int64_t, int64_t, const int32_t*);
template void write_npy<int64_t>(const std::string&, NpyDType, int64_t, int64_t, const int64_t*);
template std::vector<int16_t> read_npy<int16_t>(const std::string&, const std::vector<NpyDType>&, int64_t, int64_t);
template std::vector<int32_t> read_npy<int32_t>(const std::string&, const std::vector<NpyDType>&, int64_t, int64_t);
template std::vector<int64_t> read_npy<int64_t>(const std::string&, const std::vector<NpyDType>&, int64_t, int64_t);

void write_text_atomic(const std::string& path, const std::string& text) {
  AtomicWriter w(path);
  w.write(text.data(), text.size());
  w.commit();
}

std::string read_text(const std::string& path, size_t max_bytes) {
  ReadFd f(path);
  if (f.size > static_cast<int64_t>(max_bytes))
    fail(Status::kCorruptData, path, ": ", f.size, " bytes, more than the ", max_bytes, " expected");
  std::string text(static_cast<size_t>(f.size), '\0');
  read_all_at(f.fd, text.data(), text.size(), 0, path);
  return text;
}

void make_directories(const std::string& dir) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) fail(Status::kIoError, "cannot create directory ", dir, ": ", ec.message());
  if (!std::filesystem::is_directory(dir, ec)) fail(Status::kIoError, "cannot create directory ", dir, ": not a directory");
}

ExclusiveFileLock::ExclusiveFileLock(const std::string& path) {
  fd_ = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd_ < 0) fail(Status::kIoError, "cannot open lock file ", path, ": ", errno_text());
  int rc;
  do {
    rc = ::flock(fd_, LOCK_EX);
  } while (rc != 0 && errno == EINTR);
  if (rc != 0) {
    int saved = errno;
    ::close(fd_);
    fail(Status::kIoError, "cannot lock ", path, ": ", std::strerror(saved));
  }
}

ExclusiveFileLock::~ExclusiveFileLock() {
  ::flock(fd_, LOCK_UN);
  ::close(fd_);
}

bool load_or_build(const std::string& dir, const std::string& base, const std::string& description,
                   const std::function<void()>& load_arrays, const std::function<void()>& build,
                   const std::function<void()>& save_arrays, std::string* warning) {
  const std::string description_path = base + "-description.txt";
  auto try_load = [&]() {
    std::error_code ec;
    if (!std::filesystem::exists(description_path, ec)) return false;
    try {
      const std::string on_disk = read_text(description_path, description.size() + 4096);
      MPT_CHECK(on_disk == description, Status::kCorruptData, description_path, ": does not match this entry's inputs");
      load_arrays();
      return true;
    } catch (const Error& e) {
      if (warning) *warning = str("cache entry ", base, " is damaged and was rebuilt: ", e.what());
      return false;
    }
  };
  if (try_load()) return true;
  std::optional<ExclusiveFileLock> lock;
  try {
    make_directories(dir);
    lock.emplace(base + ".lock");
  } catch (const Error& e) {
    fail(Status::kIoError, "index cache directory ", dir, " is not writable: ", e.what());
  }
  if (try_load()) return true;
  build();
  try {
    // A stale description would vouch for the arrays being replaced: it goes first and
    // comes back last.
    std::error_code ignored;
    std::filesystem::remove(description_path, ignored);
    save_arrays();
    write_text_atomic(description_path, description);
  } catch (const Error& e) {
    fail(Status::kIoError, "cannot write to index cache directory ", dir, ": ", e.what());
  }
  return false;
}

std::string hash_hex(const std::string& text) {
  // FNV-1a with the published 128-bit offset basis and prime (2^88 + 0x13b).
  using u128 = unsigned __int128;
  u128 h = (static_cast<u128>(0x6c62272e07bb0142ULL) << 64) | 0x62b821756295c58dULL;
  const u128 prime = (static_cast<u128>(1) << 88) | 0x13b;
  for (unsigned char c : text) {
    h ^= c;
    h *= prime;
  }
  static const char kHex[] = "0123456789abcdef";
  std::string out(32, '0');
  for (int i = 31; i >= 0; --i) {
    out[static_cast<size_t>(i)] = kHex[static_cast<unsigned>(h & 0xf)];
    h >>= 4;
  }
  return out;
}

}  // namespace mpt::data
