#include "data/corpus.h"

#include <iterator>
#include <string>

#include "data/byte_tokenizer.h"

namespace mpt::data {

namespace {

// One raw string literal per document; no single literal approaches the ~16 KB limit some
// compilers set.
constexpr std::string_view kDocuments[] = {
#include "data/corpus/corpus_text.inc"
};

const std::string& joined_corpus() {
  static const std::string text = [] {
    std::string t;
    for (std::string_view doc : kDocuments) {
      if (!t.empty()) t.push_back(kDocumentSeparator);
      t.append(doc);
    }
    return t;
  }();
  return text;
}

}  // namespace

std::string_view embedded_corpus() { return joined_corpus(); }

std::vector<std::string_view> corpus_documents() {
  std::vector<std::string_view> docs;
  std::string_view text = embedded_corpus();
  size_t start = 0;
  while (start <= text.size()) {
    size_t end = text.find(kDocumentSeparator, start);
    if (end == std::string_view::npos) end = text.size();
    docs.push_back(text.substr(start, end - start));
    start = end + 1;
  }
  return docs;
}

std::vector<int32_t> corpus_tokens() {
  std::vector<int32_t> tokens;
  tokens.reserve(embedded_corpus().size() + std::size(kDocuments));
  for (std::string_view doc : corpus_documents()) {
    std::vector<int32_t> ids = byte_encode(doc);
    tokens.insert(tokens.end(), ids.begin(), ids.end());
    tokens.push_back(kByteEod);
  }
  return tokens;
}

}  // namespace mpt::data
