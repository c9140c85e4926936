// `mptrain batches`: the token ids training reads, written as a .npy array, so that another
// implementation (or a person) can train on, or look at, exactly the same batches.
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "cli/commands.h"
#include "core/error.h"
#include "train/data_streams.h"

namespace mpt::cli {
namespace {

// NumPy's format 1.0: magic, version, a little-endian header length, then a Python dict
// literal padded with spaces to a multiple of 64 bytes and ended by a newline.
std::string npy_header(const std::vector<int64_t>& shape) {
  std::string dims;
  for (int64_t d : shape) dims += std::to_string(d) + ", ";
  std::string dict = "{'descr': '<i4', 'fortran_order': False, 'shape': (" + dims + "), }";
  const size_t fixed = 10;  // magic (6), version (2), header length (2)
  dict.append(63 - (fixed + dict.size()) % 64, ' ');
  dict += '\n';
  std::string out = "\x93NUMPY";
  out += '\x01';
  out += '\x00';
  out += static_cast<char>(dict.size() & 0xff);
  out += static_cast<char>(dict.size() >> 8);
  return out + dict;
}

}  // namespace

int run_batches(const Invocation& inv) {
  const config::Recipe r = resolved_recipe(inv);
  // Samples per iteration over every data-parallel rank, as the engine sizes its stream.
  const int64_t global = *r.train.micro_batch_size * r.derived.num_microbatches * r.derived.data_parallel_size;
  const int64_t width = r.model.seq_length + 1;
  const BatchesOptions& o = inv.batches;
  const train::DataStreams streams = train::make_streams(r, global);

  const std::string path = o.output;
  std::FILE* f = std::fopen(path.c_str(), "wb");
  MPT_CHECK(f != nullptr, Status::kIoError, path, ": cannot open for writing: ", std::strerror(errno));
  const std::string header = npy_header({o.iterations, global, width});
  bool ok = std::fwrite(header.data(), 1, header.size(), f) == header.size();
  std::vector<int32_t> batch(static_cast<size_t>(global * width));
  try {
    for (int64_t i = 0; ok && i < o.iterations; ++i) {
      // Iteration start + i + 1 reads samples from consumed_samples = (start + i) * global.
      data::fill_batch(*streams.train, (o.start + i) * global, global, batch.data());
      ok = std::fwrite(batch.data(), sizeof(int32_t), batch.size(), f) == batch.size();
    }
  } catch (...) {
    std::fclose(f);
    std::remove(path.c_str());
    throw;
  }
  ok = std::fclose(f) == 0 && ok;
  if (!ok) std::remove(path.c_str());
  MPT_CHECK(ok, Status::kIoError, path, ": write failed: ", std::strerror(errno));
  if (!inv.quiet)
    std::printf("mptrain: wrote iterations %lld..%lld (%lld samples of %lld tokens each) of %s to %s\n",
                static_cast<long long>(o.start + 1), static_cast<long long>(o.start + o.iterations),
                static_cast<long long>(global), static_cast<long long>(width), streams.train->describe().c_str(),
                path.c_str());
  return 0;
}

}  // namespace mpt::cli
