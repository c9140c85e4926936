// `mptrain preprocess` (text or JSON lines to a Megatron indexed dataset, byte-level
// tokens) and `mptrain dataset-info` (what an indexed dataset holds).
#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <vector>

#include "cli/commands.h"
#include "core/error.h"
#include "data/byte_tokenizer.h"
#include "data/indexed_dataset.h"

namespace mpt::cli {
namespace {

using data::IndexedDataset;
using data::IndexedDatasetBuilder;

// An input file read line by line or whole, counting lines and bytes; one line in memory.
class InputFile {
 public:
  explicit InputFile(const std::string& path) : path_(path) {
    file_ = std::fopen(path.c_str(), "rb");
    if (file_ == nullptr) fail(Status::kIoError, path, ": cannot open: ", std::strerror(errno));
  }
  ~InputFile() {
    std::free(buffer_);
    std::fclose(file_);
  }
  InputFile(const InputFile&) = delete;
  InputFile& operator=(const InputFile&) = delete;

  // The next line without its "\n", or false at the end of the file.
  bool next_line(std::string_view* line) {
    errno = 0;
    const ssize_t n = ::getline(&buffer_, &capacity_, file_);
    if (n < 0) {
      check_read();
      return false;
    }
    ++line_number_;
    bytes_ += n;
    size_t len = static_cast<size_t>(n);
    if (len > 0 && buffer_[len - 1] == '\n') --len;
    *line = std::string_view(buffer_, len);
    return true;
  }

  // The rest of the file.
  std::string read_all() {
    std::string text;
    struct stat st {};
    if (::fstat(fileno(file_), &st) == 0 && S_ISREG(st.st_mode)) text.reserve(static_cast<size_t>(st.st_size));
    char chunk[1 << 16];
    size_t n;
    while ((n = std::fread(chunk, 1, sizeof(chunk), file_)) > 0) text.append(chunk, n);
    check_read();
    bytes_ += static_cast<int64_t>(text.size());
    return text;
  }

  const std::string& path() const { return path_; }
  int64_t line_number() const { return line_number_; }
  int64_t bytes() const { return bytes_; }

 private:
  void check_read() const {
    if (std::ferror(file_)) fail(Status::kIoError, path_, ": read failed: ", std::strerror(errno));
  }

  std::string path_;
  std::FILE* file_ = nullptr;
  char* buffer_ = nullptr;
  size_t capacity_ = 0;
  int64_t line_number_ = 0;
  int64_t bytes_ = 0;
};

std::string_view without_cr(std::string_view line) {
  if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
  return line;
}

bool is_blank(std::string_view line) {
  return std::all_of(line.begin(), line.end(), [](char c) { return c == ' ' || c == '\t' || c == '\r'; });
}

// Tokenizes documents into the builder, one sequence per document.
class DocumentWriter {
 public:
  DocumentWriter(IndexedDatasetBuilder& builder, bool append_eod) : builder_(builder), append_eod_(append_eod) {}

  void add(std::string_view text) {
    if (text.empty()) {
      ++skipped_;
      return;
    }
    std::vector<int32_t> ids = data::byte_encode(text);
    if (append_eod_) ids.push_back(data::kByteEod);
    builder_.add_item(ids.data(), static_cast<int64_t>(ids.size()));
    builder_.end_document();
    ++documents_;
  }

  int64_t documents() const { return documents_; }
  int64_t skipped() const { return skipped_; }

 private:
  IndexedDatasetBuilder& builder_;
  bool append_eod_;
  int64_t documents_ = 0, skipped_ = 0;
};

void read_json_lines(InputFile& in, const std::string& key, DocumentWriter& out) {
  std::string_view line;
  while (in.next_line(&line)) {
    if (is_blank(line)) continue;
    const std::string where = in.path() + ":" + std::to_string(in.line_number());
    nlohmann::json doc;
    try {
      doc = nlohmann::json::parse(line.begin(), line.end());
    } catch (const nlohmann::json::parse_error& e) {
      fail(Status::kCorruptData, where, ": not valid JSON: ", e.what());
    }
    if (!doc.is_object()) fail(Status::kCorruptData, where, ": expected a JSON object, got a JSON ", doc.type_name());
    const auto field = doc.find(key);
    if (field == doc.end()) fail(Status::kCorruptData, where, ": the object has no field \"", key, "\"");
    if (!field->is_string())
      fail(Status::kCorruptData, where, ": field \"", key, "\" is a JSON ", field->type_name(), ", expected a string");
    out.add(field->get_ref<const std::string&>());
  }
}

void read_text(InputFile& in, DocumentUnit unit, DocumentWriter& out) {
  std::string_view line;
  switch (unit) {
    case DocumentUnit::kFile:
      out.add(in.read_all());
      return;
    case DocumentUnit::kLine:
      while (in.next_line(&line)) out.add(without_cr(line));
      return;
    case DocumentUnit::kParagraph: {
      std::string paragraph;
      bool open = false;
      while (in.next_line(&line)) {
        if (is_blank(line)) {
          if (open) out.add(paragraph);
          paragraph.clear();
          open = false;
          continue;
        }
        if (open) paragraph += '\n';
        paragraph += without_cr(line);
        open = true;
      }
      if (open) out.add(paragraph);
      return;
    }
  }
}

bool path_exists(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0;
}

int64_t file_size(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 ? static_cast<int64_t>(st.st_size) : -1;
}

const char* unit_name(DocumentUnit unit) {
  switch (unit) {
    case DocumentUnit::kFile: return "file";
    case DocumentUnit::kLine: return "line";
    case DocumentUnit::kParagraph: return "paragraph";
  }
  return "?";
}

}  // namespace

int run_preprocess(const Invocation& inv) {
  const PreprocessOptions& opt = inv.preprocess;
  const std::string bin = opt.output_prefix + ".bin", idx = opt.output_prefix + ".idx";
  if (!opt.overwrite) {
    for (const std::string& path : {bin, idx})
      if (path_exists(path)) fail(Status::kIoError, path, " already exists; pass --overwrite to replace it");
  }
  const auto start = std::chrono::steady_clock::now();
  const data::TokenDType dtype = data::optimal_dtype(data::kByteVocabSize);

  IndexedDatasetBuilder builder(opt.output_prefix, dtype, opt.overwrite);
  DocumentWriter writer(builder, opt.append_eod);
  int64_t input_bytes = 0;
  for (const std::string& path : opt.inputs) {
    InputFile in(path);
    if (opt.json_key.empty()) {
      read_text(in, opt.docs, writer);
    } else {
      read_json_lines(in, opt.json_key, writer);
    }
    input_bytes += in.bytes();
  }
  const int64_t tokens = builder.num_tokens();
  builder.finalize();
  const double seconds =
      std::max(1e-9, std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());

  const std::string unit = opt.json_key.empty() ? str("--docs ", unit_name(opt.docs)) : "--json-key " + opt.json_key;
  std::printf("preprocess: %lld documents, %lld tokens, dtype %s (%s%s)\n", static_cast<long long>(writer.documents()),
              static_cast<long long>(tokens), data::dtype_name(dtype), unit.c_str(),
              opt.append_eod ? ", --append-eod" : "");
  if (writer.skipped() > 0)
    std::printf("  skipped %lld empty document%s\n", static_cast<long long>(writer.skipped()),
                writer.skipped() == 1 ? "" : "s");
  std::printf("  read %zu input file%s, %lld bytes\n", opt.inputs.size(), opt.inputs.size() == 1 ? "" : "s",
              static_cast<long long>(input_bytes));
  std::printf("  wrote %s (%lld bytes) and %s (%lld bytes)\n", bin.c_str(),
              static_cast<long long>(file_size(bin)), idx.c_str(), static_cast<long long>(file_size(idx)));
  std::printf("  %.3f s: %.2f MB/s, %.0f tokens/s\n", seconds, input_bytes / seconds / 1e6, tokens / seconds);
  std::fflush(stdout);
  return 0;
}

int run_dataset_info(const Invocation& inv) {
  const IndexedDataset ds(inv.dataset_prefix);
  std::printf("path: %s\n", ds.prefix().c_str());
  std::printf("dtype: %s\n", data::dtype_name(ds.dtype()));
  std::printf("sequences: %lld\n", static_cast<long long>(ds.num_sequences()));
  std::printf("documents: %lld\n", static_cast<long long>(ds.num_documents()));
  std::printf("tokens: %lld\n", static_cast<long long>(ds.num_tokens()));
  std::printf("bin bytes: %lld\n", static_cast<long long>(ds.bin_bytes()));
  std::printf("idx bytes: %lld\n", static_cast<long long>(ds.idx_bytes()));
  if (ds.num_sequences() == 0) {
    std::printf("sequence length: none (no sequences)\n");
  } else {
    const int32_t* lengths = ds.sequence_lengths();
    const auto [lo, hi] = std::minmax_element(lengths, lengths + ds.num_sequences());
    std::printf("sequence length: min %d, mean %.2f, max %d\n", *lo,
                static_cast<double>(ds.num_tokens()) / static_cast<double>(ds.num_sequences()), *hi);
  }
  if (inv.scan) {
    const int64_t max_token = ds.max_token();
    if (max_token < 0 && ds.num_tokens() == 0) {
      std::printf("max token: none (no tokens)\n");
    } else {
      std::printf("max token: %lld\n", static_cast<long long>(max_token));
    }
  }
  std::fflush(stdout);
  return 0;
}

}  // namespace mpt::cli
