// The byte-level tokenizer: ids 0..255 are the bytes themselves and kByteEod ends a
// document. It needs no vocabulary file, so the embedded corpus trains anywhere.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace mpt::data {

constexpr int32_t kByteEod = 256;
constexpr int64_t kByteVocabSize = 257;

// One id per byte; never emits kByteEod (documents are joined by the caller).
std::vector<int32_t> byte_encode(std::string_view text);

// Ids back to bytes. kByteEod decodes to "\n\n" so decoded samples read as separate
// paragraphs. An id outside [0, kByteEod] throws Error(kInvalidArgument) naming its offset.
std::string byte_decode(const int32_t* ids, int64_t n);

}  // namespace mpt::data
