#include "data/indexed_dataset.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <type_traits>

#include "core/error.h"

// The file format is little-endian and is read by reinterpreting bytes in place.
static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "indexed datasets are read on little-endian hosts only");

namespace mpt::data {
namespace {

constexpr int64_t kMaxInt64 = std::numeric_limits<int64_t>::max();

// Every dtype, in code order, for messages and name lookup.
constexpr TokenDType kAllDTypes[] = {TokenDType::kUInt8,   TokenDType::kInt8,    TokenDType::kInt16,
                                     TokenDType::kInt32,   TokenDType::kInt64,   TokenDType::kFloat64,
                                     TokenDType::kFloat32, TokenDType::kUInt16};

std::string errno_text(int err) { return std::strerror(err); }

// A file descriptor closed on scope exit unless released.
class Fd {
 public:
  explicit Fd(int fd) : fd_(fd) {}
  ~Fd() {
    if (fd_ >= 0) ::close(fd_);
  }
  Fd(Fd&& other) noexcept : fd_(other.release()) {}
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  int get() const { return fd_; }
  int release() {
    const int fd = fd_;
    fd_ = -1;
    return fd;
  }

 private:
  int fd_;
};

// Opens `path` read-only and returns its size through `bytes`.
Fd open_for_reading(const std::string& path, int64_t* bytes) {
  Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (fd.get() < 0) fail(Status::kIoError, path, ": cannot open: ", errno_text(errno));
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) fail(Status::kIoError, path, ": cannot stat: ", errno_text(errno));
  if (!S_ISREG(st.st_mode)) fail(Status::kIoError, path, ": not a regular file");
  *bytes = static_cast<int64_t>(st.st_size);
  return fd;
}

// A read-only mapping of a whole file, unmapped on scope exit unless released.
class Mapping {
 public:
  Mapping(int fd, int64_t bytes, const std::string& path) : bytes_(bytes) {
    if (bytes == 0) return;
    void* p = ::mmap(nullptr, static_cast<size_t>(bytes), PROT_READ, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) fail(Status::kIoError, path, ": cannot mmap ", bytes, " bytes: ", errno_text(errno));
    data_ = p;
  }
  ~Mapping() {
    if (data_ != nullptr) ::munmap(data_, static_cast<size_t>(bytes_));
  }
  Mapping(const Mapping&) = delete;
  Mapping& operator=(const Mapping&) = delete;
  const uint8_t* bytes() const { return static_cast<const uint8_t*>(data_); }
  void* release() {
    void* p = data_;
    data_ = nullptr;
    return p;
  }

 private:
  void* data_ = nullptr;
  int64_t bytes_;
};

// A floating-point value printed with every digit it has (1.5, 16777217, nan).
std::string exact_text(double v) {
  char buf[32];
  for (int digits = 1; digits <= 17; ++digits) {
    std::snprintf(buf, sizeof(buf), "%.*g", digits, v);
    if (std::strtod(buf, nullptr) == v) break;
  }
  return buf;
}

template <typename T>
T load(const uint8_t* p) {
  T v;
  std::memcpy(&v, p, sizeof(T));
  return v;
}

std::string hex_bytes(const uint8_t* p, size_t n) {
  static const char kDigits[] = "0123456789abcdef";
  std::string s;
  for (size_t i = 0; i < n; ++i) {
    if (i > 0) s += ' ';
    s += kDigits[p[i] >> 4];
    s += kDigits[p[i] & 15];
  }
  return s;
}

// Converts `count` tokens stored as Stored to Out; a token that is not an integer in Out's
// range is a kCorruptData error naming the .bin, the sequence and the position.
template <typename Stored, typename Out>
void convert_tokens(const uint8_t* src, int64_t count, Out* out, const std::string& bin_path, int64_t seq,
                    int64_t first) {
  constexpr Out lo = std::numeric_limits<Out>::min();
  constexpr Out hi = std::numeric_limits<Out>::max();
  for (int64_t i = 0; i < count; ++i) {
    const Stored v = load<Stored>(src + i * static_cast<int64_t>(sizeof(Stored)));
    if constexpr (std::is_floating_point_v<Stored>) {
      // Out's bounds as floating point: lo is a power of two (exact); hi + 1 is too.
      const double d = static_cast<double>(v);
      const double lo_d = static_cast<double>(lo);
      const double end_d = -lo_d;  // hi + 1
      if (!(std::isfinite(d) && std::floor(d) == d && d >= lo_d && d < end_d))
        fail(Status::kCorruptData, bin_path, ": sequence ", seq, ", token ", first + i, ": ", exact_text(d),
             " is not an integer token id in [", lo, ", ", hi, "]");
      out[i] = static_cast<Out>(d);
    } else {
      if constexpr (sizeof(Stored) > sizeof(Out)) {
        if (v < static_cast<Stored>(lo) || v > static_cast<Stored>(hi))
          fail(Status::kCorruptData, bin_path, ": sequence ", seq, ", token ", first + i, ": ", +v,
               " does not fit in int", 8 * sizeof(Out));
      }
      out[i] = static_cast<Out>(v);
    }
  }
}

template <typename Out>
void convert_any(TokenDType dtype, const uint8_t* src, int64_t count, Out* out, const std::string& bin_path,
                 int64_t seq, int64_t first) {
  switch (dtype) {
    case TokenDType::kUInt8: return convert_tokens<uint8_t>(src, count, out, bin_path, seq, first);
    case TokenDType::kInt8: return convert_tokens<int8_t>(src, count, out, bin_path, seq, first);
    case TokenDType::kInt16: return convert_tokens<int16_t>(src, count, out, bin_path, seq, first);
    case TokenDType::kInt32: return convert_tokens<int32_t>(src, count, out, bin_path, seq, first);
    case TokenDType::kInt64: return convert_tokens<int64_t>(src, count, out, bin_path, seq, first);
    case TokenDType::kFloat64: return convert_tokens<double>(src, count, out, bin_path, seq, first);
    case TokenDType::kFloat32: return convert_tokens<float>(src, count, out, bin_path, seq, first);
    case TokenDType::kUInt16: return convert_tokens<uint16_t>(src, count, out, bin_path, seq, first);
  }
  MPT_ASSERT(false);
}

}  // namespace

size_t dtype_size(TokenDType dtype) {
  switch (dtype) {
    case TokenDType::kUInt8:
    case TokenDType::kInt8: return 1;
    case TokenDType::kInt16:
    case TokenDType::kUInt16: return 2;
    case TokenDType::kInt32:
    case TokenDType::kFloat32: return 4;
    case TokenDType::kInt64:
    case TokenDType::kFloat64: return 8;
  }
  return 0;
}

const char* dtype_name(TokenDType dtype) {
  switch (dtype) {
    case TokenDType::kUInt8: return "uint8";
    case TokenDType::kInt8: return "int8";
    case TokenDType::kInt16: return "int16";
    case TokenDType::kInt32: return "int32";
    case TokenDType::kInt64: return "int64";
    case TokenDType::kFloat64: return "float64";
    case TokenDType::kFloat32: return "float32";
    case TokenDType::kUInt16: return "uint16";
  }
  return "unknown";
}

bool dtype_from_code(uint8_t code, TokenDType* out) {
  if (code < 1 || code > 8) return false;
  *out = static_cast<TokenDType>(code);
  return true;
}

bool dtype_from_name(const std::string& name, TokenDType* out) {
  for (TokenDType d : kAllDTypes) {
    if (name == dtype_name(d)) {
      *out = d;
      return true;
    }
  }
  return false;
}

TokenDType optimal_dtype(int64_t vocab_size) { return vocab_size < 65500 ? TokenDType::kUInt16 : TokenDType::kInt32; }

// --- reading ------------------------------------------------------------------------------

IndexedDataset::IndexedDataset(const std::string& prefix, bool mmap_bin) : prefix_(prefix) {
  const std::string idx = idx_path();
  const std::string bin = bin_path();

  // The header and counts, each checked before anything is read past it.
  Fd idx_fd = open_for_reading(idx, &idx_bytes_);
  if (idx_bytes_ < kIndexHeaderBytes)
    fail(Status::kCorruptData, idx, ": ", idx_bytes_, " bytes, shorter than the ", kIndexHeaderBytes,
         "-byte header (truncated)");
  const Mapping idx_map(idx_fd.get(), idx_bytes_, idx);
  const uint8_t* p = idx_map.bytes();

  if (std::memcmp(p, kIndexMagic, sizeof(kIndexMagic)) != 0)
    fail(Status::kCorruptData, idx, ": bad magic bytes [", hex_bytes(p, sizeof(kIndexMagic)),
         "], expected \"MMIDIDX\\0\\0\" (not a Megatron indexed dataset index)");
  const uint64_t version = load<uint64_t>(p + 9);
  if (version != kIndexVersion)
    fail(Status::kCorruptData, idx, ": version = ", version, ", expected ", kIndexVersion);
  const uint8_t code = p[17];
  if (!dtype_from_code(code, &dtype_))
    fail(Status::kCorruptData, idx, ": dtype code = ", +code,
         ", expected 1..8 (uint8, int8, int16, int32, int64, float64, float32, uint16)");
  const int64_t itemsize = static_cast<int64_t>(dtype_size(dtype_));

  // Counts are compared by division so that huge values cannot overflow a product.
  const uint64_t seq_count = load<uint64_t>(p + 18);
  const uint64_t doc_count = load<uint64_t>(p + 26);
  const uint64_t body = static_cast<uint64_t>(idx_bytes_ - kIndexHeaderBytes);
  if (seq_count > body / 12)
    fail(Status::kCorruptData, idx, ": sequence count = ", seq_count, " does not fit in the file: its ", body,
         " bytes after the header hold at most ", body / 12, " sequences (truncated, or a wrong count)");
  const uint64_t after_sequences = body - 12 * seq_count;
  if (doc_count > after_sequences / 8)
    fail(Status::kCorruptData, idx, ": document count = ", doc_count, " does not fit in the file: with ",
         seq_count, " sequences, its last ", after_sequences, " bytes hold at most ", after_sequences / 8,
         " document indices (truncated, or a wrong count)");
  if (doc_count < 1)
    fail(Status::kCorruptData, idx, ": document count = 0, expected at least 1 (the document indices start with 0)");
  const uint64_t trailing = after_sequences - 8 * doc_count;
  if (trailing != 0 && trailing != seq_count)
    fail(Status::kCorruptData, idx, ": ", trailing, " trailing bytes after the document indices, expected 0 or ",
         seq_count, " (one sequence mode per sequence)");
  num_sequences_ = static_cast<int64_t>(seq_count);
  num_doc_indices_ = static_cast<int64_t>(doc_count);

  lengths_.resize(seq_count);
  pointers_.resize(seq_count);
  doc_indices_.resize(doc_count);
  const uint8_t* at = p + kIndexHeaderBytes;
  if (seq_count > 0) {
    std::memcpy(lengths_.data(), at, seq_count * sizeof(int32_t));
    std::memcpy(pointers_.data(), at + seq_count * sizeof(int32_t), seq_count * sizeof(int64_t));
  }
  std::memcpy(doc_indices_.data(), at + seq_count * 12, doc_count * sizeof(int64_t));

  Fd bin_fd = open_for_reading(bin, &bin_bytes_);

  // Lengths: non-negative, and together exactly the .bin.
  int64_t total_bytes = 0;
  for (int64_t i = 0; i < num_sequences_; ++i) {
    const int32_t length = lengths_[i];
    if (length < 0) fail(Status::kCorruptData, idx, ": sequence_lengths[", i, "] = ", length, ", expected >= 0");
    if (total_bytes > kMaxInt64 - int64_t{length} * itemsize)
      fail(Status::kCorruptData, idx, ": sequence_lengths sum past 2^63 bytes at sequence_lengths[", i, "]");
    total_bytes += int64_t{length} * itemsize;
  }
  num_tokens_ = total_bytes / itemsize;
  if (bin_bytes_ != total_bytes)
    fail(Status::kCorruptData, bin, ": ", bin_bytes_, " bytes, expected ", total_bytes, " (", num_tokens_,
         " tokens x ", itemsize, " bytes: the sum of sequence_lengths in ", idx, ")",
         bin_bytes_ < total_bytes ? "; the .bin is truncated" : "; the .bin is longer than its index says");

  // Pointers: the prefix sums of the lengths in bytes, so every sequence lies in the .bin.
  int64_t expected = 0;
  for (int64_t i = 0; i < num_sequences_; ++i) {
    const int64_t pointer = pointers_[i];
    const int64_t bytes = int64_t{lengths_[i]} * itemsize;
    if (pointer != expected) {
      if (pointer < 0 || pointer > bin_bytes_ - bytes)
        fail(Status::kCorruptData, idx, ": sequence_pointers[", i, "] = ", pointer, " with sequence_lengths[", i,
             "] = ", lengths_[i], " runs past the end of ", bin, " (", bin_bytes_, " bytes)");
      fail(Status::kCorruptData, idx, ": sequence_pointers[", i, "] = ", pointer, ", expected ", expected,
           " (the sum of the earlier lengths x ", itemsize, " bytes)");
    }
    expected += bytes;
  }

  // Document indices: 0, non-decreasing, ending at the sequence count.
  if (doc_indices_[0] != 0)
    fail(Status::kCorruptData, idx, ": document_indices[0] = ", doc_indices_[0], ", expected 0");
  for (int64_t d = 1; d < num_doc_indices_; ++d) {
    if (doc_indices_[d] < doc_indices_[d - 1])
      fail(Status::kCorruptData, idx, ": document_indices[", d, "] = ", doc_indices_[d], " is below document_indices[",
           d - 1, "] = ", doc_indices_[d - 1], " (they must not decrease)");
  }
  if (doc_indices_[num_doc_indices_ - 1] != num_sequences_)
    fail(Status::kCorruptData, idx, ": document_indices[", num_doc_indices_ - 1, "] = ",
         doc_indices_[num_doc_indices_ - 1], ", expected ", num_sequences_, " (the sequence count)");

  if (mmap_bin) {
    Mapping bin_map(bin_fd.get(), bin_bytes_, bin);
    bin_map_ = bin_map.release();
  } else {
    bin_fd_ = bin_fd.release();
  }
}

IndexedDataset::~IndexedDataset() {
  if (bin_map_ != nullptr) ::munmap(bin_map_, static_cast<size_t>(bin_bytes_));
  if (bin_fd_ >= 0) ::close(bin_fd_);
}

const uint8_t* IndexedDataset::bin_span(int64_t seq, int64_t offset, int64_t count,
                                        std::vector<uint8_t>& scratch) const {
  const int64_t itemsize = static_cast<int64_t>(dtype_size(dtype_));
  const int64_t start = pointers_[seq] + offset * itemsize;
  const int64_t bytes = count * itemsize;
  if (bin_map_ != nullptr) return static_cast<const uint8_t*>(bin_map_) + start;

  scratch.resize(static_cast<size_t>(bytes));
  int64_t done = 0;
  while (done < bytes) {
    const ssize_t n = ::pread(bin_fd_, scratch.data() + done, static_cast<size_t>(bytes - done), start + done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0)
      fail(Status::kIoError, bin_path(), ": read of ", bytes - done, " bytes at offset ", start + done,
           " failed: ", errno_text(errno));
    if (n == 0)
      fail(Status::kCorruptData, bin_path(), ": ends at byte ", start + done, " while reading sequence ", seq,
           " (the file shrank after it was opened)");
    done += n;
  }
  return scratch.data();
}

namespace {

// The shared bounds check of both read() overloads.
void check_read_range(const IndexedDataset& ds, int64_t seq, int64_t offset, int64_t count, const void* out) {
  MPT_CHECK(seq >= 0 && seq < ds.num_sequences(), Status::kInvalidArgument, ds.prefix(), ": sequence ", seq,
            " is outside [0, ", ds.num_sequences(), ")");
  const int64_t length = ds.sequence_lengths()[seq];
  MPT_CHECK(offset >= 0 && count >= 0 && offset <= length && count <= length - offset, Status::kInvalidArgument,
            ds.prefix(), ": tokens [", offset, ", ", offset, " + ", count, ") are outside sequence ", seq,
            " of length ", length);
  MPT_CHECK(count == 0 || out != nullptr, Status::kInvalidArgument, ds.prefix(), ": null output for ", count,
            " tokens");
}

}  // namespace

void IndexedDataset::read(int64_t seq, int64_t offset, int64_t count, int32_t* out) const {
  check_read_range(*this, seq, offset, count, out);
  if (count == 0) return;
  std::vector<uint8_t> scratch;
  convert_any(dtype_, bin_span(seq, offset, count, scratch), count, out, bin_path(), seq, offset);
}

void IndexedDataset::read(int64_t seq, int64_t offset, int64_t count, int64_t* out) const {
  check_read_range(*this, seq, offset, count, out);
  if (count == 0) return;
  std::vector<uint8_t> scratch;
  convert_any(dtype_, bin_span(seq, offset, count, scratch), count, out, bin_path(), seq, offset);
}

int64_t IndexedDataset::max_token() const {
  constexpr int64_t kChunk = 1 << 16;
  std::vector<int64_t> tokens(kChunk);
  std::vector<uint8_t> scratch;
  int64_t best = -1;
  bool any = false;
  for (int64_t seq = 0; seq < num_sequences_; ++seq) {
    for (int64_t at = 0; at < lengths_[seq]; at += kChunk) {
      const int64_t n = std::min<int64_t>(kChunk, lengths_[seq] - at);
      convert_any(dtype_, bin_span(seq, at, n, scratch), n, tokens.data(), bin_path(), seq, at);
      const int64_t m = *std::max_element(tokens.begin(), tokens.begin() + n);
      best = any ? std::max(best, m) : m;
      any = true;
    }
  }
  return best;
}

// --- writing ------------------------------------------------------------------------------

namespace {

bool path_exists(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0;
}

// `v` stored as T when T holds it exactly; false otherwise.
template <typename T>
bool store_exact(int64_t v, uint8_t* dst) {
  T t;
  if constexpr (std::is_floating_point_v<T>) {
    t = static_cast<T>(v);
    // 2^63 is the one rounding result outside int64; compare in the floating type's range.
    if (!(t < static_cast<T>(9223372036854775808.0)) || static_cast<int64_t>(t) != v) return false;
  } else {
    if (v < static_cast<int64_t>(std::numeric_limits<T>::min())) return false;
    if constexpr (sizeof(T) < sizeof(int64_t) || std::is_signed_v<T>) {
      if (v > static_cast<int64_t>(std::numeric_limits<T>::max())) return false;
    }
    t = static_cast<T>(v);
  }
  std::memcpy(dst, &t, sizeof(T));
  return true;
}

bool store_token(TokenDType dtype, int64_t v, uint8_t* dst) {
  switch (dtype) {
    case TokenDType::kUInt8: return store_exact<uint8_t>(v, dst);
    case TokenDType::kInt8: return store_exact<int8_t>(v, dst);
    case TokenDType::kInt16: return store_exact<int16_t>(v, dst);
    case TokenDType::kInt32: return store_exact<int32_t>(v, dst);
    case TokenDType::kInt64: return store_exact<int64_t>(v, dst);
    case TokenDType::kFloat64: return store_exact<double>(v, dst);
    case TokenDType::kFloat32: return store_exact<float>(v, dst);
    case TokenDType::kUInt16: return store_exact<uint16_t>(v, dst);
  }
  return false;
}

// Writes `bytes` to `f` or throws kIoError naming `path`.
void write_or_fail(std::FILE* f, const void* data, size_t bytes, const std::string& path) {
  if (bytes > 0 && std::fwrite(data, 1, bytes, f) != bytes)
    fail(Status::kIoError, path, ": write of ", bytes, " bytes failed: ", errno_text(errno));
}

// Encodes a sequence in the dtype, 64Ki tokens at a time, handing each chunk to `write`.
template <typename Int, typename Write>
void encode_sequence(TokenDType dtype, const Int* tokens, int64_t count, std::vector<uint8_t>& scratch,
                     const std::string& prefix, int64_t seq, Write&& write) {
  MPT_CHECK(count >= 0 && count <= std::numeric_limits<int32_t>::max(), Status::kInvalidArgument, prefix,
            ": sequence length ", count, " is outside [0, 2^31 - 1]");
  MPT_CHECK(count == 0 || tokens != nullptr, Status::kInvalidArgument, prefix, ": null tokens for a sequence of ",
            count);
  const size_t itemsize = dtype_size(dtype);
  constexpr int64_t kChunk = 1 << 16;
  for (int64_t at = 0; at < count; at += kChunk) {
    const int64_t n = std::min(kChunk, count - at);
    scratch.resize(static_cast<size_t>(n) * itemsize);
    for (int64_t i = 0; i < n; ++i) {
      const int64_t v = tokens[at + i];
      if (!store_token(dtype, v, scratch.data() + i * itemsize))
        fail(Status::kInvalidArgument, prefix, ": token ", at + i, " of sequence ", seq, " = ", v,
             " is not representable as ", dtype_name(dtype));
    }
    write(scratch.data(), scratch.size());
  }
}

}  // namespace

IndexedDatasetBuilder::IndexedDatasetBuilder(const std::string& prefix, TokenDType dtype, bool overwrite)
    : prefix_(prefix), dtype_(dtype) {
  MPT_CHECK(dtype_size(dtype) != 0, Status::kInvalidArgument, prefix, ": unknown dtype code ",
            static_cast<int>(dtype));
  if (!overwrite) {
    for (const char* ext : {".bin", ".idx"}) {
      const std::string path = prefix + ext;
      if (path_exists(path))
        fail(Status::kIoError, path, " already exists; refusing to overwrite it (pass overwrite to replace it)");
    }
  }
  const std::string tmp = prefix + ".bin.tmp";
  bin_ = std::fopen(tmp.c_str(), "wb");
  if (bin_ == nullptr) fail(Status::kIoError, tmp, ": cannot create: ", errno_text(errno));
}

IndexedDatasetBuilder::~IndexedDatasetBuilder() {
  if (finalized_) return;
  if (bin_ != nullptr) std::fclose(bin_);
  std::remove((prefix_ + ".bin.tmp").c_str());
  std::remove((prefix_ + ".idx.tmp").c_str());
}

void IndexedDatasetBuilder::write_bytes(const void* data, size_t bytes) {
  MPT_CHECK(!finalized_ && bin_ != nullptr, Status::kInvalidArgument, prefix_,
            ": the builder is finalized; nothing more can be added");
  write_or_fail(bin_, data, bytes, prefix_ + ".bin.tmp");
}

void IndexedDatasetBuilder::add_item(const int64_t* tokens, int64_t count) {
  MPT_CHECK(!finalized_, Status::kInvalidArgument, prefix_, ": add_item after finalize()");
  encode_sequence(dtype_, tokens, count, scratch_, prefix_, num_sequences(),
                  [this](const void* data, size_t bytes) { write_bytes(data, bytes); });
  lengths_.push_back(static_cast<int32_t>(count));
  num_tokens_ += count;
}

void IndexedDatasetBuilder::add_item(const int32_t* tokens, int64_t count) {
  MPT_CHECK(!finalized_, Status::kInvalidArgument, prefix_, ": add_item after finalize()");
  encode_sequence(dtype_, tokens, count, scratch_, prefix_, num_sequences(),
                  [this](const void* data, size_t bytes) { write_bytes(data, bytes); });
  lengths_.push_back(static_cast<int32_t>(count));
  num_tokens_ += count;
}

void IndexedDatasetBuilder::end_document() {
  MPT_CHECK(!finalized_, Status::kInvalidArgument, prefix_, ": end_document after finalize()");
  doc_indices_.push_back(num_sequences());
}

void IndexedDatasetBuilder::add_index(const IndexedDataset& other) {
  MPT_CHECK(!finalized_, Status::kInvalidArgument, prefix_, ": add_index after finalize()");
  MPT_CHECK(other.dtype() == dtype_, Status::kInvalidArgument, prefix_, ": cannot add ", other.prefix(),
            ": its dtype is ", dtype_name(other.dtype()), ", this dataset's is ", dtype_name(dtype_));
  // Sequences added since the last end_document() form their own document.
  if (doc_indices_.back() != num_sequences()) end_document();

  // The data, byte for byte: the other .bin was checked against its index when opened.
  const std::string other_bin = other.bin_path();
  std::FILE* in = std::fopen(other_bin.c_str(), "rb");
  if (in == nullptr) fail(Status::kIoError, other_bin, ": cannot open: ", errno_text(errno));
  std::vector<uint8_t> buffer(1 << 20);
  int64_t copied = 0;
  try {
    while (copied < other.bin_bytes()) {
      const size_t want = static_cast<size_t>(std::min<int64_t>(buffer.size(), other.bin_bytes() - copied));
      const size_t got = std::fread(buffer.data(), 1, want, in);
      if (got == 0)
        fail(std::ferror(in) ? Status::kIoError : Status::kCorruptData, other_bin, ": read stopped at byte ", copied,
             " of ", other.bin_bytes(), std::ferror(in) ? ": " + errno_text(errno) : " (the file shrank)");
      write_bytes(buffer.data(), got);
      copied += static_cast<int64_t>(got);
    }
  } catch (...) {
    std::fclose(in);
    throw;
  }
  std::fclose(in);

  const int64_t offset = num_sequences();
  lengths_.insert(lengths_.end(), other.sequence_lengths(), other.sequence_lengths() + other.num_sequences());
  for (int64_t d = 1; d <= other.num_documents(); ++d) doc_indices_.push_back(offset + other.document_indices()[d]);
  num_tokens_ += other.num_tokens();
}

void IndexedDatasetBuilder::finalize() {
  MPT_CHECK(!finalized_, Status::kInvalidArgument, prefix_, ": finalize() called twice");
  if (doc_indices_.back() != num_sequences()) end_document();

  const std::string bin_tmp = prefix_ + ".bin.tmp";
  const std::string idx_tmp = prefix_ + ".idx.tmp";
  std::FILE* bin = bin_;
  bin_ = nullptr;
  if (std::fclose(bin) != 0) fail(Status::kIoError, bin_tmp, ": close failed: ", errno_text(errno));

  std::FILE* idx = std::fopen(idx_tmp.c_str(), "wb");
  if (idx == nullptr) fail(Status::kIoError, idx_tmp, ": cannot create: ", errno_text(errno));
  try {
    const uint64_t version = kIndexVersion;
    const uint8_t code = static_cast<uint8_t>(dtype_);
    const uint64_t seq_count = lengths_.size();
    const uint64_t doc_count = doc_indices_.size();
    write_or_fail(idx, kIndexMagic, sizeof(kIndexMagic), idx_tmp);
    write_or_fail(idx, &version, sizeof(version), idx_tmp);
    write_or_fail(idx, &code, sizeof(code), idx_tmp);
    write_or_fail(idx, &seq_count, sizeof(seq_count), idx_tmp);
    write_or_fail(idx, &doc_count, sizeof(doc_count), idx_tmp);
    write_or_fail(idx, lengths_.data(), lengths_.size() * sizeof(int32_t), idx_tmp);
    std::vector<int64_t> pointers(lengths_.size());
    const int64_t itemsize = static_cast<int64_t>(dtype_size(dtype_));
    int64_t at = 0;
    for (size_t i = 0; i < lengths_.size(); ++i) {
      pointers[i] = at;
      at += int64_t{lengths_[i]} * itemsize;
    }
    write_or_fail(idx, pointers.data(), pointers.size() * sizeof(int64_t), idx_tmp);
    write_or_fail(idx, doc_indices_.data(), doc_indices_.size() * sizeof(int64_t), idx_tmp);
  } catch (...) {
    std::fclose(idx);
    throw;
  }
  if (std::fclose(idx) != 0) fail(Status::kIoError, idx_tmp, ": close failed: ", errno_text(errno));

  for (const char* ext : {".bin", ".idx"}) {
    const std::string to = prefix_ + ext;
    const std::string from = to + ".tmp";
    if (std::rename(from.c_str(), to.c_str()) != 0)
      fail(Status::kIoError, "cannot rename ", from, " to ", to, ": ", errno_text(errno));
  }
  finalized_ = true;
}

}  // namespace mpt::data
