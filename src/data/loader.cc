// The batch loader: the sampler arithmetic of loader.h, a token check, and a producer
// thread that keeps up to `prefetch` batches ready in order.
#include "data/loader.h"

#include <chrono>
#include <condition_variable>
#include <exception>
#include <mutex>
#include <thread>
#include <utility>

#include "core/error.h"

namespace mpt::data {

namespace {

using Clock = std::chrono::steady_clock;

struct Slot {
  int64_t position = 0;
  RankBatch batch;
  std::exception_ptr error;
};

}  // namespace

struct BatchLoader::Impl {
  std::shared_ptr<const SampleSource> source;
  LoaderLayout layout;
  LoaderOptions options;
  int64_t seq = 0, cols = 0, rows = 0, global = 0;
  std::vector<int32_t> positions;  // local column -> sequence position

  // Shared with the producer thread, under mutex.
  std::mutex mutex;
  std::condition_variable changed;
  // Both are reserved up front, so the steady state allocates nothing.
  std::vector<Slot> ready;          // batches at position, position + global, ...
  std::vector<RankBatch> spare;     // buffers to reuse
  int64_t position = 0;             // what next() returns next
  int64_t produce_at = 0;           // what the producer makes next
  uint64_t generation = 0;          // bumped by seek(): work for an older one is dropped
  bool started = false;             // nothing is produced before the first seek() or next()
  bool halted = false;              // a batch failed: produce nothing more until seek()
  bool stop = false;
  std::thread producer;

  RankBatch current;
  double wait_s = 0;

  void produce_loop() {
    std::unique_lock<std::mutex> lock(mutex);
    while (true) {
      changed.wait(lock, [&] {
        return stop || (started && !halted && static_cast<int64_t>(ready.size()) < options.prefetch);
      });
      if (stop) return;
      const int64_t at = produce_at;
      const uint64_t gen = generation;
      RankBatch batch;
      if (!spare.empty()) {
        batch = std::move(spare.back());
        spare.pop_back();
      }
      lock.unlock();
      std::exception_ptr error;
      try {
        assemble(at, batch);
      } catch (...) {
        error = std::current_exception();
      }
      lock.lock();
      if (gen != generation) {
        spare.push_back(std::move(batch));
        continue;
      }
      ready.push_back(Slot{at, std::move(batch), error});
      produce_at = at + global;
      if (error) halted = true;
      changed.notify_all();
    }
  }

  void assemble(int64_t c, RankBatch& out) const {
    MPT_CHECK(c >= 0, Status::kInvalidArgument, "batch loader: negative consumed_samples ", c);
    out.first_sample = c;
    out.rows = rows;
    out.cols = cols;
    out.positions = positions;
    const bool tokens = layout.needs_tokens, labels = layout.needs_labels;
    out.tokens.resize(tokens ? static_cast<size_t>(rows * cols) : 0);
    out.labels.resize(labels ? static_cast<size_t>(rows * cols) : 0);
    out.loss_mask.resize(labels ? static_cast<size_t>(rows * cols) : 0);
    if (!tokens && !labels) return;
    thread_local std::vector<int32_t> sample;
    sample.resize(static_cast<size_t>(seq + 1));
    const int64_t mbs = layout.micro_batch;
    for (int64_t m = 0; m < layout.num_microbatches; ++m) {
      for (int64_t b = 0; b < mbs; ++b) {
        const int64_t index = c + m * mbs * layout.dp_size + layout.dp_rank * mbs + b;
        source->sample(index, sample.data());
        check_tokens(index, sample.data());
        const int64_t row = m * mbs + b;
        for (int64_t j = 0; j < cols; ++j) {
          const int64_t p = positions[static_cast<size_t>(j)];
          const size_t o = static_cast<size_t>(row * cols + j);
          if (tokens) out.tokens[o] = sample[static_cast<size_t>(p)];
          if (labels) {
            out.labels[o] = sample[static_cast<size_t>(p + 1)];
            const bool eod = options.eod_mask_loss && sample[static_cast<size_t>(p)] == options.eod_id;
            out.loss_mask[o] = eod ? 0.0f : 1.0f;
          }
        }
      }
    }
  }

  void check_tokens(int64_t index, const int32_t* s) const {
    for (int64_t j = 0; j <= seq; ++j) {
      const int32_t v = s[j];
      if (v < 0 || v >= options.vocab_size)
        fail(Status::kCorruptData, "sample ", index, " token ", j, " is ", v, ", outside the model's vocabulary [0, ",
             options.vocab_size, ") (data: ", source->describe(),
             "); the data was tokenized for a larger vocabulary than model.vocab_size");
    }
  }
};

BatchLoader::BatchLoader(std::shared_ptr<const SampleSource> source, const LoaderLayout& layout,
                         const LoaderOptions& options)
    : impl_(std::make_unique<Impl>()) {
  Impl& m = *impl_;
  MPT_CHECK(source != nullptr, Status::kInvalidArgument, "batch loader: no sample source");
  m.source = std::move(source);
  m.layout = layout;
  m.options = options;
  m.seq = m.source->seq_length();
  const LoaderLayout& l = layout;
  MPT_CHECK(l.micro_batch > 0 && l.num_microbatches > 0, Status::kInvalidConfig, "batch loader: micro_batch ",
            l.micro_batch, " and num_microbatches ", l.num_microbatches, " must be positive");
  MPT_CHECK(l.dp_size > 0 && l.dp_rank >= 0 && l.dp_rank < l.dp_size, Status::kInvalidConfig,
            "batch loader: data-parallel rank ", l.dp_rank, " is not in [0, ", l.dp_size, ")");
  MPT_CHECK(l.cp_size > 0 && l.cp_rank >= 0 && l.cp_rank < l.cp_size, Status::kInvalidConfig,
            "batch loader: context-parallel rank ", l.cp_rank, " is not in [0, ", l.cp_size, ")");
  MPT_CHECK(options.vocab_size > 0, Status::kInvalidConfig, "batch loader: vocab_size ", options.vocab_size,
            " must be positive");
  MPT_CHECK(options.prefetch >= 0, Status::kInvalidConfig, "batch loader: prefetch ", options.prefetch,
            " must be >= 0");
  MPT_CHECK(l.cp_size == 1 || m.seq % (2 * l.cp_size) == 0, Status::kInvalidConfig, "seq_length ", m.seq,
            " must be divisible by 2 x context_parallel_size = ", 2 * l.cp_size);
  m.cols = m.seq / l.cp_size;
  m.rows = l.micro_batch * l.num_microbatches;
  m.global = m.rows * l.dp_size;
  m.positions.resize(static_cast<size_t>(m.cols));
  if (l.cp_size == 1) {
    for (int64_t j = 0; j < m.cols; ++j) m.positions[static_cast<size_t>(j)] = static_cast<int32_t>(j);
  } else {
    const int64_t chunk = m.seq / (2 * l.cp_size);
    const int64_t first = l.cp_rank, second = 2 * l.cp_size - 1 - l.cp_rank;
    for (int64_t j = 0; j < chunk; ++j) {
      m.positions[static_cast<size_t>(j)] = static_cast<int32_t>(first * chunk + j);
      m.positions[static_cast<size_t>(chunk + j)] = static_cast<int32_t>(second * chunk + j);
    }
  }
  if (options.prefetch > 0) {
    m.ready.reserve(static_cast<size_t>(options.prefetch));
    m.spare.reserve(static_cast<size_t>(options.prefetch) + 2);
    m.producer = std::thread([this] { impl_->produce_loop(); });
  }
}

BatchLoader::~BatchLoader() {
  if (impl_->producer.joinable()) {
    {
      std::lock_guard<std::mutex> lock(impl_->mutex);
      impl_->stop = true;
    }
    impl_->changed.notify_all();
    impl_->producer.join();
  }
}

int64_t BatchLoader::global_batch() const { return impl_->global; }

void BatchLoader::seek(int64_t consumed_samples) {
  MPT_CHECK(consumed_samples >= 0, Status::kInvalidArgument, "batch loader: negative consumed_samples ",
            consumed_samples);
  Impl& m = *impl_;
  std::lock_guard<std::mutex> lock(m.mutex);
  ++m.generation;
  for (Slot& s : m.ready) m.spare.push_back(std::move(s.batch));
  m.ready.clear();
  m.position = m.produce_at = consumed_samples;
  m.started = true;
  m.halted = false;
  m.changed.notify_all();
}

int64_t BatchLoader::position() const {
  std::lock_guard<std::mutex> lock(impl_->mutex);
  return impl_->position;
}

const RankBatch& BatchLoader::next() {
  Impl& m = *impl_;
  if (m.options.prefetch == 0) {
    m.wait_s = 0;
    const auto t0 = Clock::now();
    m.assemble(m.position, m.current);
    m.wait_s = std::chrono::duration<double>(Clock::now() - t0).count();
    m.position += m.global;
    return m.current;
  }
  std::unique_lock<std::mutex> lock(m.mutex);
  if (!m.started) {
    m.started = true;
    m.changed.notify_all();
  }
  const auto t0 = Clock::now();
  const bool was_ready = !m.ready.empty();
  m.changed.wait(lock, [&] { return !m.ready.empty(); });
  m.wait_s = was_ready ? 0.0 : std::chrono::duration<double>(Clock::now() - t0).count();
  Slot& slot = m.ready.front();
  MPT_ASSERT(slot.position == m.position);
  // Keep a failed batch queued: it is the one the caller asked for, until seek().
  if (slot.error) std::rethrow_exception(slot.error);
  m.spare.push_back(std::move(m.current));
  m.current = std::move(slot.batch);
  m.ready.erase(m.ready.begin());
  m.position += m.global;
  m.changed.notify_all();
  return m.current;
}

double BatchLoader::last_wait_s() const { return impl_->wait_s; }

void BatchLoader::assemble(int64_t c, RankBatch& out) const { impl_->assemble(c, out); }

}  // namespace mpt::data
