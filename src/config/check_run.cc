// Rules of the run itself: learning-rate schedule, weight decay, dataset and precision;
// derives the schedule lengths and the dataset source.
#include <charconv>
#include <cmath>
#include <string>
#include <string_view>

#include "config/finalize_internal.h"
#include "core/error.h"
#include "data/dataset_builder.h"
#include "data/split.h"

namespace mpt::config {
namespace {

// The byte tokenizer's vocabulary: 256 byte values and one end-of-document id.
constexpr int64_t kByteTokenizerVocab = 257;

void check_schedule(Checker& c) {
  const OptimizerConfig& o = c.r.optimizer;
  const SchedulerConfig& s = c.r.scheduler;
  Derived& d = c.d;

  d.min_lr = o.min_lr.value_or(0.0);
  if (o.lr && o.min_lr && *o.min_lr > *o.lr) {
    c.fail("optimizer.min_lr",
           str("must be <= optimizer.lr (", format_number(*o.lr), "), got ", format_number(*o.min_lr)));
  }

  d.lr_decay_iters = s.lr_decay_iters.value_or(c.r.train.train_iters.value_or(0));
  if (s.lr_warmup_fraction && s.lr_warmup_iters != 0) {
    c.fail("scheduler.lr_warmup_fraction",
           str("cannot be combined with scheduler.lr_warmup_iters (", s.lr_warmup_iters, "); set only one"));
  }
  const char* warmup_key = s.lr_warmup_fraction ? "scheduler.lr_warmup_fraction" : "scheduler.lr_warmup_iters";
  d.lr_warmup_iters = s.lr_warmup_fraction
                          ? std::llround(*s.lr_warmup_fraction * static_cast<double>(d.lr_decay_iters))
                          : s.lr_warmup_iters;
  if (d.lr_decay_iters > 0 && d.lr_warmup_iters > d.lr_decay_iters) {
    c.fail(warmup_key, str("the warmup (", d.lr_warmup_iters, " iterations) must not exceed the decay iterations (",
                           d.lr_decay_iters, ")"));
  }

  if (s.weight_decay_incr_style == "constant") {
    // Megatron starts and ends at optimizer.weight_decay unless told otherwise.
    const double start = s.start_weight_decay.value_or(o.weight_decay);
    const double end = s.end_weight_decay.value_or(o.weight_decay);
    if (start != end) {
      c.fail(s.end_weight_decay ? "scheduler.end_weight_decay" : "scheduler.start_weight_decay",
             str("must equal the start weight decay when scheduler.weight_decay_incr_style is \"constant\" (start ",
                 format_number(start), ", end ", format_number(end), ")"));
    }
  } else if (!s.start_weight_decay || !s.end_weight_decay) {
    c.fail("scheduler.weight_decay_incr_style",
           str("\"", s.weight_decay_incr_style, "\" needs scheduler.start_weight_decay and scheduler.end_weight_decay"));
  }
}

// Megatron's split: up to three non-negative weights separated by commas, e.g. "969,30,1".
bool valid_split(std::string_view text) {
  double sum = 0;
  int parts = 0;
  size_t pos = 0;
  while (pos <= text.size()) {
    size_t comma = text.find(',', pos);
    if (comma == std::string_view::npos) comma = text.size();
    std::string_view part = text.substr(pos, comma - pos);
    while (!part.empty() && part.front() == ' ') part.remove_prefix(1);
    while (!part.empty() && part.back() == ' ') part.remove_suffix(1);
    double w = -1;
    auto res = std::from_chars(part.data(), part.data() + part.size(), w);
    if (part.empty() || res.ec != std::errc() || res.ptr != part.data() + part.size() || !(w >= 0) ||
        !std::isfinite(w))
      return false;
    sum += w;
    ++parts;
    pos = comma + 1;
  }
  return parts <= 3 && sum > 0;
}

void check_dataset(Checker& c) {
  const DatasetConfig& ds = c.r.dataset;
  const ModelConfig& m = c.r.model;
  if (ds.seq_length && *ds.seq_length != m.seq_length) {
    c.fail("dataset.seq_length", str("must equal model.seq_length (", m.seq_length, "), got ", *ds.seq_length));
  }
  const bool has_data = !ds.data_path.empty() || !ds.blend.empty();
  c.d.dataset_source = !ds.source.empty() ? ds.source : (has_data ? "indexed" : "mock");
  const std::string& source = c.d.dataset_source;
  if (!ds.data_path.empty() && !ds.blend.empty()) {
    c.fail("dataset.blend", "cannot be combined with dataset.data_path; give the datasets in one of them");
  }
  if (!ds.data_path.empty()) {
    try {
      data::parse_data_path(ds.data_path, "dataset.data_path");
    } catch (const Error& e) {
      c.fail("dataset.data_path", e.what());
    }
  }
  for (size_t i = 0; i < ds.blend.size(); ++i) {
    const BlendItem& b = ds.blend[i];
    if (b.prefix.empty()) c.fail("dataset.blend", str("entry ", i + 1, " has an empty prefix"));
    if (!(b.weight > 0) || !std::isfinite(b.weight))
      c.fail("dataset.blend", str("entry ", i + 1, " (", toml_quote(b.prefix), ") has weight ", format_number(b.weight),
                                  "; weights must be positive"));
  }
  if (source == "corpus" && m.vocab_size > 0 && m.vocab_size < kByteTokenizerVocab) {
    c.fail("model.vocab_size",
           str("must be >= ", kByteTokenizerVocab, " for dataset.source \"corpus\" (the byte tokenizer has 256 byte ids "
               "and an end-of-document id), got ", m.vocab_size));
  }
  if (source == "indexed" && !has_data) {
    c.fail("dataset.source", "\"indexed\" needs dataset.data_path or dataset.blend");
  }
  if ((source == "mock" || source == "corpus") && has_data) {
    c.fail(ds.blend.empty() ? "dataset.data_path" : "dataset.blend",
           str("is only read when dataset.source is \"indexed\", but it is \"", source, "\""));
  }
  if (ds.split && !valid_split(*ds.split)) {
    c.fail("dataset.split", str("must be up to three comma-separated non-negative weights with a positive sum, "
                                "e.g. \"969,30,1\"; got ", toml_quote(*ds.split)));
  } else if (c.r.validation.eval_interval && source != "mock") {
    const std::string split = ds.split.value_or(source == "indexed" ? data::kDefaultIndexedSplit : data::kDefaultSplit);
    if (data::parse_split_weights(split)[1] == 0.0)
      c.fail("validation.eval_interval", str("asks for validation, but dataset.split ", toml_quote(split),
                                             " gives the validation split no data; give it a weight or unset "
                                             "validation.eval_interval"));
  }
}

void check_precision(Checker& c) {
  const MixedPrecisionConfig& mp = c.r.mixed_precision;
  if (mp.preset) {
    // A preset is Bridge's whole MixedPrecisionConfig; it cannot be edited key by key.
    const MixedPrecisionConfig defaults;
    const auto preset_clash = [&](const char* key) {
      c.fail(key, str("cannot be combined with the preset mixed_precision = ", toml_quote(*mp.preset)));
    };
    if (mp.bf16 != defaults.bf16) preset_clash("mixed_precision.bf16");
    if (mp.fp16 != defaults.fp16) preset_clash("mixed_precision.fp16");
    if (mp.fp32 != defaults.fp32) preset_clash("mixed_precision.fp32");
    if (mp.grad_reduce_in_fp32 != defaults.grad_reduce_in_fp32) preset_clash("mixed_precision.grad_reduce_in_fp32");
  }
  if (mp.bf16 && mp.fp16) c.fail("mixed_precision.fp16", "cannot be combined with mixed_precision.bf16");
  const bool fp32 = mp.preset.value_or("") == "fp32" || mp.fp32;
  if (fp32 && (c.r.model.bf16 || mp.bf16))
    c.fail(c.r.model.bf16 ? "model.bf16" : "mixed_precision.bf16",
           "asks for bf16 but the recipe's mixed precision is fp32 (mixed_precision = \"fp32\" or "
           "mixed_precision.fp32 = true); choose one");
}

void check_checkpoint(Checker& c) {
  const CheckpointConfig& ck = c.r.checkpoint;
  if (ck.most_recent_k == 0)
    c.fail("checkpoint.most_recent_k", "-1 keeps every checkpoint; otherwise it must be at least 1, got 0");
}

void check_profiling(Checker& c) {
  const ProfilingConfig& p = c.r.profiling;
  if (p.use_pytorch_profiler)
    c.fail("profiling.use_pytorch_profiler", "mptrain has no PyTorch to profile; set profiling.timeline_dir for a "
                                             "Chrome trace of each rank's compute and communication");
  if (p.profile_step_end <= p.profile_step_start)
    c.fail("profiling.profile_step_end", str("must be greater than profiling.profile_step_start (",
                                             p.profile_step_start, "), got ", p.profile_step_end));
  for (size_t i = 0; i < p.profile_ranks.size(); ++i) {
    const int64_t r = p.profile_ranks[i];
    if (r >= c.world_size)
      c.fail("profiling.profile_ranks", str("rank ", r, " is not in this run of ", c.world_size, " rank",
                                            c.world_size == 1 ? "" : "s"));
    for (size_t j = 0; j < i; ++j)
      if (p.profile_ranks[j] == r) c.fail("profiling.profile_ranks", str("rank ", r, " is listed twice"));
  }
  if (p.timeline_dir && p.timeline_dir->empty())
    c.fail("profiling.timeline_dir", "is empty; give a directory, or leave it unset for no timeline");
  const std::optional<int64_t>& iters = c.r.train.train_iters;
  if (p.timeline_dir && iters && p.profile_step_start >= *iters)
    c.fail("profiling.profile_step_start", str("the timeline would start after iteration ", p.profile_step_start,
                                               " but training stops at train.train_iters = ", *iters,
                                               "; nothing would be recorded"));
}

}  // namespace

void check_run(Checker& c) {
  check_schedule(c);
  check_dataset(c);
  check_precision(c);
  check_checkpoint(c);
  check_profiling(c);
}

}  // namespace mpt::config
