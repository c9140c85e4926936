// Megatron's indexed dataset: a PREFIX.bin of token ids and a PREFIX.idx describing it,
// read and written byte for byte as megatron/core/datasets/indexed_dataset.py does, so data
// prepared by Megatron-LM's tools/preprocess_data.py is used as is.
//
// PREFIX.idx, little-endian:
//   offset 0   9 bytes  "MMIDIDX\0\0"
//   offset 9   u64      version, 1
//   offset 17  u8       dtype code (TokenDType)
//   offset 18  u64      sequence count S
//   offset 26  u64      document count D (documents + 1: the indices start with 0)
//   offset 34  i32[S]   sequence lengths, in tokens
//              i64[S]   sequence pointers: byte offsets into PREFIX.bin (prefix sums of length * itemsize)
//              i64[D]   document indices: document d is sequences [doc[d], doc[d+1]); doc[0] = 0, doc[D-1] = S
//              (i8[S]   sequence modes of multimodal data may follow; they are not read)
// PREFIX.bin holds the tokens of every sequence, C order, in the dtype of the index.
#pragma once

#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

namespace mpt::data {

enum class TokenDType : uint8_t {
  kUInt8 = 1,
  kInt8 = 2,
  kInt16 = 3,
  kInt32 = 4,
  kInt64 = 5,
  kFloat64 = 6,
  kFloat32 = 7,
  kUInt16 = 8,
};

// Size in bytes of one token; "uint16" etc. for messages; code -> dtype (false if unknown).
size_t dtype_size(TokenDType dtype);
const char* dtype_name(TokenDType dtype);
bool dtype_from_code(uint8_t code, TokenDType* out);
// Parses "uint8", "int8", "int16", "int32", "int64", "float64", "float32", "uint16".
bool dtype_from_name(const std::string& name, TokenDType* out);
// Megatron's DType.optimal_dtype: uint16 when vocab_size < 65500, else int32.
TokenDType optimal_dtype(int64_t vocab_size);

constexpr char kIndexMagic[9] = {'M', 'M', 'I', 'D', 'I', 'D', 'X', '\0', '\0'};
constexpr uint64_t kIndexVersion = 1;
constexpr int64_t kIndexHeaderBytes = 34;

// A read-only view of PREFIX.bin/.idx. The index is memory-mapped; the .bin is memory-mapped
// (default) or read with pread (mmap_bin = false, Megatron's --no-mmap-bin-files). The
// constructor validates the whole index against both file sizes, so every later read is in
// bounds: a bad magic or version, an unknown dtype, counts that do not fit the .idx size, a
// negative length, pointers that are not the prefix sums of the lengths or run past the end
// of the .bin, document indices that do not start at 0, decrease or do not end at the
// sequence count, or a .bin whose size is not the total of the lengths — each throws
// Error(kCorruptData) naming the file, the field (with its index) and the offending value.
// A missing or unreadable file throws Error(kIoError) naming it. Thread-safe for reads.
class IndexedDataset {
 public:
  explicit IndexedDataset(const std::string& prefix, bool mmap_bin = true);
  ~IndexedDataset();
  IndexedDataset(const IndexedDataset&) = delete;
  IndexedDataset& operator=(const IndexedDataset&) = delete;

  const std::string& prefix() const { return prefix_; }
  std::string idx_path() const { return prefix_ + ".idx"; }
  std::string bin_path() const { return prefix_ + ".bin"; }
  TokenDType dtype() const { return dtype_; }
  int64_t num_sequences() const { return num_sequences_; }
  int64_t num_documents() const { return num_doc_indices_ - 1; }
  int64_t num_tokens() const { return num_tokens_; }
  int64_t idx_bytes() const { return idx_bytes_; }
  int64_t bin_bytes() const { return bin_bytes_; }

  // The index arrays: num_sequences() lengths and pointers, num_documents() + 1 document
  // indices. Copied out of the mapped .idx into aligned memory, since in the file they sit
  // at offsets that are not multiples of their element size.
  const int32_t* sequence_lengths() const { return lengths_.data(); }
  const int64_t* sequence_pointers() const { return pointers_.data(); }
  const int64_t* document_indices() const { return doc_indices_.data(); }

  // Copies tokens [offset, offset + count) of sequence `seq` to out, converted to int32.
  // Throws Error(kInvalidArgument) when the range is outside the sequence, and
  // Error(kCorruptData) naming the .bin, the sequence and the position when a token is not an
  // integer representable as int32 (possible with int64 or float dtypes).
  void read(int64_t seq, int64_t offset, int64_t count, int32_t* out) const;
  // The same, to int64 (float tokens must still be integral).
  void read(int64_t seq, int64_t offset, int64_t count, int64_t* out) const;

  // Largest token id in the whole .bin (scans it); -1 when the dataset has no tokens.
  int64_t max_token() const;

 private:
  const uint8_t* bin_span(int64_t seq, int64_t offset, int64_t count, std::vector<uint8_t>& scratch) const;

  std::string prefix_;
  TokenDType dtype_ = TokenDType::kUInt16;
  int64_t num_sequences_ = 0, num_doc_indices_ = 0, num_tokens_ = 0;
  int64_t idx_bytes_ = 0, bin_bytes_ = 0;
  void* bin_map_ = nullptr;  // null when mmap_bin is false or the .bin is empty
  int bin_fd_ = -1;          // open only when mmap_bin is false
  std::vector<int32_t> lengths_;
  std::vector<int64_t> pointers_;
  std::vector<int64_t> doc_indices_;
};

// Writes PREFIX.bin and PREFIX.idx as Megatron's IndexedDatasetBuilder does. Data goes to
// PREFIX.bin.tmp / PREFIX.idx.tmp and is renamed into place by finalize(), so a failed or
// interrupted build never leaves a half-written dataset under the final names. Refuses
// (Error(kIoError)) to start when PREFIX.bin or PREFIX.idx exists, unless overwrite is set.
class IndexedDatasetBuilder {
 public:
  IndexedDatasetBuilder(const std::string& prefix, TokenDType dtype, bool overwrite = false);
  ~IndexedDatasetBuilder();  // without finalize(): removes the .tmp files
  IndexedDatasetBuilder(const IndexedDatasetBuilder&) = delete;
  IndexedDatasetBuilder& operator=(const IndexedDatasetBuilder&) = delete;

  // Appends one sequence. Each token must be representable in the dtype, else
  // Error(kInvalidArgument) naming the value, the dtype and the position.
  void add_item(const int64_t* tokens, int64_t count);
  void add_item(const int32_t* tokens, int64_t count);
  // Closes the current document (the sequences added since the previous end_document()).
  void end_document();
  // Appends every sequence and document of another dataset (Megatron's add_index). Its
  // dtype must match. Sequences added since the last end_document() are first closed into
  // a document of their own.
  void add_index(const IndexedDataset& other);
  // Writes the index and renames both files into place. Sequences added after the last
  // end_document() are closed into a final document first.
  void finalize();

  int64_t num_sequences() const { return static_cast<int64_t>(lengths_.size()); }
  int64_t num_tokens() const { return num_tokens_; }

 private:
  void write_bytes(const void* data, size_t bytes);

  std::string prefix_;
  TokenDType dtype_;
  std::FILE* bin_ = nullptr;
  std::vector<int32_t> lengths_;
  std::vector<int64_t> doc_indices_{0};
  std::vector<uint8_t> scratch_;
  int64_t num_tokens_ = 0;
  bool finalized_ = false;
};

}  // namespace mpt::data
