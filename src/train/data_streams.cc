#include "train/data_streams.h"

#include "core/error.h"
#include "data/dataset_builder.h"

namespace mpt::train {

DataStreams make_streams(const config::Recipe& r, int64_t global_batch) {
  const std::string& src = r.derived.dataset_source;
  const bool validate = r.validation.eval_interval.has_value();
  const uint64_t seed = static_cast<uint64_t>(r.dataset.random_seed);
  DataStreams out;
  if (src == "mock" || src == "corpus") {
    auto make = [&](data::Split split) -> std::shared_ptr<data::SampleSource> {
      if (src == "mock") return data::make_mock_source(r.model.vocab_size, r.model.seq_length, seed, split);
      return data::make_corpus_source(r.model.seq_length, seed, split, r.dataset.split.value_or(""));
    };
    out.train = make(data::Split::kTrain);
    if (validate) out.valid = make(data::Split::kValid);
    out.log_lines.push_back(out.train->describe());
    return out;
  }
  MPT_CHECK(src == "indexed", Status::kNotSupported, "dataset.source '", src, "' is not supported");
  data::DataSpec spec;
  if (!r.dataset.blend.empty()) {
    for (const config::BlendItem& b : r.dataset.blend) spec.blend.push_back(data::BlendEntry{b.prefix, b.weight});
  } else {
    spec.blend = data::parse_data_path(r.dataset.data_path, "dataset.data_path");
  }
  spec.split = r.dataset.split.value_or(data::kDefaultIndexedSplit);
  spec.seq_length = r.model.seq_length;
  spec.seed = static_cast<uint32_t>(r.dataset.random_seed);
  spec.cache_dir = r.dataset.path_to_cache.value_or("");
  spec.mmap_bin = r.dataset.mmap_bin_files;
  // Megatron's sample counts: every training step, and eval_iters batches at each
  // evaluation plus one more round.
  const int64_t train_iters = *r.train.train_iters;
  spec.num_samples[0] = train_iters * global_batch;
  if (validate)
    spec.num_samples[1] = (train_iters / *r.validation.eval_interval + 1) * r.validation.eval_iters * global_batch;
  data::SplitSources sources = data::build_indexed_sources(spec);
  out.train = sources.by_split[0];
  out.valid = sources.by_split[1];
  MPT_CHECK(out.train != nullptr, Status::kInvalidConfig, "dataset.split ", spec.split,
            " leaves the training split empty");
  MPT_CHECK(!validate || out.valid != nullptr, Status::kInvalidConfig, "dataset.split ", spec.split,
            " leaves the validation split empty, but validation.eval_interval asks for validation");
  out.log_lines = std::move(sources.log_lines);
  return out;
}

}  // namespace mpt::train
