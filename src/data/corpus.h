// A small English corpus compiled into the library, so a model can be trained and its loss
// watched falling with no download. Original prose; documents separated by a form feed.
#pragma once

#include <cstdint>
#include <string_view>
#include <vector>

namespace mpt::data {

constexpr char kDocumentSeparator = '\f';

// The whole text: documents joined by kDocumentSeparator (none before the first or after
// the last). Plain ASCII; the separator never occurs inside a document.
std::string_view embedded_corpus();

// The documents, in order, as views into embedded_corpus().
std::vector<std::string_view> corpus_documents();

// The byte-tokenized corpus: each document's bytes followed by kByteEod.
std::vector<int32_t> corpus_tokens();

}  // namespace mpt::data
