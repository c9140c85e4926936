#include "data/byte_tokenizer.h"

#include "core/error.h"

namespace mpt::data {

std::vector<int32_t> byte_encode(std::string_view text) {
  std::vector<int32_t> ids(text.size());
  for (size_t i = 0; i < text.size(); ++i) ids[i] = static_cast<unsigned char>(text[i]);
  return ids;
}

std::string byte_decode(const int32_t* ids, int64_t n) {
  MPT_CHECK(n >= 0, Status::kInvalidArgument, "byte_decode: negative length ", n);
  MPT_CHECK(n == 0 || ids != nullptr, Status::kInvalidArgument, "byte_decode: null ids for length ", n);
  std::string text;
  text.reserve(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    int32_t id = ids[i];
    if (id == kByteEod) {
      text += "\n\n";
      continue;
    }
    MPT_CHECK(id >= 0 && id < kByteEod, Status::kInvalidArgument, "byte_decode: id ", id, " at offset ", i,
              " is outside the byte vocabulary [0, ", kByteVocabSize, ")");
    text.push_back(static_cast<char>(static_cast<unsigned char>(id)));
  }
  return text;
}

}  // namespace mpt::data
