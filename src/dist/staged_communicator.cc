#include "dist/staged_communicator.h"

#include <cstring>
#include <vector>

#include "core/error.h"

namespace mpt::dist {
namespace {

// One call's staging: host copies of device buffers, and where results go back.
struct Staging {
  backend::Ops& ops;
  std::vector<std::vector<uint8_t>> buffers;
  struct Back {
    void* device;
    const void* host;
    size_t bytes;
  };
  std::vector<Back> back;

  explicit Staging(backend::Ops& o) : ops(o) {}
  // A host pointer holding `bytes` of `p`'s contents (p itself when it is host memory).
  const void* in(const void* p, size_t bytes) {
    if (p == nullptr || bytes == 0 || !ops.is_device_pointer(p)) return p;
    std::vector<uint8_t>& b = buffers.emplace_back(bytes);
    ops.to_host(b.data(), p, bytes);
    return b.data();
  }
  // A host pointer to write `bytes` into, copied to `p` when done (p when host memory).
  // with_contents: start from p's contents (in-place collectives, partial writes).
  void* out(void* p, size_t bytes, bool with_contents) {
    if (p == nullptr || bytes == 0 || !ops.is_device_pointer(p)) return p;
    std::vector<uint8_t>& b = buffers.emplace_back(bytes);
    if (with_contents) ops.to_host(b.data(), p, bytes);
    back.push_back({p, b.data(), bytes});
    return b.data();
  }
  bool empty() const { return buffers.empty(); }
  void finish() {
    for (const Back& b : back) ops.to_device(b.device, b.host, b.bytes);
  }
};

class StagedWork final : public Work {
 public:
  StagedWork(std::shared_ptr<Work> inner, std::unique_ptr<Staging> staging)
      : inner_(std::move(inner)), staging_(std::move(staging)) {}
  void wait() override {
    inner_->wait();
    if (staging_) {
      staging_->finish();
      staging_.reset();
    }
  }
  bool times(TimePoint& start, TimePoint& end) const override { return inner_->times(start, end); }

 private:
  std::shared_ptr<Work> inner_;
  std::unique_ptr<Staging> staging_;
};

class StagedCommunicator final : public Communicator {
 public:
  StagedCommunicator(std::unique_ptr<Communicator> inner, backend::Ops& ops) : inner_(std::move(inner)), ops_(ops) {}

  int64_t rank() const override { return inner_->rank(); }
  int64_t size() const override { return inner_->size(); }
  const std::string& name() const override { return inner_->name(); }
  const std::vector<int64_t>& global_ranks() const override { return inner_->global_ranks(); }
  int64_t bytes_sent() const override { return inner_->bytes_sent(); }

  std::shared_ptr<Work> all_reduce_async(void* data, int64_t count, DType dtype, ReduceOp op) override {
    auto s = std::make_unique<Staging>(ops_);
    void* d = s->out(data, bytes(count, dtype), true);
    return wrap(inner_->all_reduce_async(d, count, dtype, op), std::move(s));
  }
  std::shared_ptr<Work> reduce_scatter_async(const void* in, void* out, int64_t count, DType dtype,
                                             ReduceOp op) override {
    auto s = std::make_unique<Staging>(ops_);
    const void* i = s->in(in, bytes(count * size(), dtype));
    void* o = s->out(out, bytes(count, dtype), false);
    return wrap(inner_->reduce_scatter_async(i, o, count, dtype, op), std::move(s));
  }
  std::shared_ptr<Work> all_gather_async(const void* in, void* out, int64_t count, DType dtype) override {
    auto s = std::make_unique<Staging>(ops_);
    const size_t block = bytes(count, dtype);
    // `in` may alias out's own block: stage out first (with its contents), then point in at
    // the staged block so the alias holds on the host too.
    const bool aliased = in == static_cast<const uint8_t*>(out) + static_cast<size_t>(rank()) * block;
    void* o = s->out(out, block * static_cast<size_t>(size()), aliased);
    const void* i = aliased ? static_cast<const void*>(static_cast<uint8_t*>(o) + static_cast<size_t>(rank()) * block)
                            : s->in(in, block);
    return wrap(inner_->all_gather_async(i, o, count, dtype), std::move(s));
  }
  std::shared_ptr<Work> all_to_all_async(const void* in, const int64_t* send_counts, void* out,
                                         const int64_t* recv_counts, DType dtype) override {
    int64_t sent = 0, received = 0;
    for (int64_t p = 0; p < size(); ++p) {
      sent += send_counts[p];
      received += recv_counts[p];
    }
    auto s = std::make_unique<Staging>(ops_);
    const void* i = s->in(in, bytes(sent, dtype));
    void* o = s->out(out, bytes(received, dtype), false);
    return wrap(inner_->all_to_all_async(i, send_counts, o, recv_counts, dtype), std::move(s));
  }
  std::shared_ptr<Work> broadcast_async(void* data, int64_t count, DType dtype, int64_t root) override {
    auto s = std::make_unique<Staging>(ops_);
    void* d = s->out(data, bytes(count, dtype), rank() == root);
    return wrap(inner_->broadcast_async(d, count, dtype, root), std::move(s));
  }
  std::shared_ptr<Work> send_async(const void* data, int64_t count, DType dtype, int64_t peer, int64_t tag) override {
    auto s = std::make_unique<Staging>(ops_);
    const void* d = s->in(data, bytes(count, dtype));
    return wrap(inner_->send_async(d, count, dtype, peer, tag), std::move(s));
  }
  std::shared_ptr<Work> recv_async(void* data, int64_t count, DType dtype, int64_t peer, int64_t tag) override {
    auto s = std::make_unique<Staging>(ops_);
    void* d = s->out(data, bytes(count, dtype), false);
    return wrap(inner_->recv_async(d, count, dtype, peer, tag), std::move(s));
  }
  std::shared_ptr<Work> barrier_async() override { return inner_->barrier_async(); }

 private:
  static size_t bytes(int64_t count, DType dtype) { return static_cast<size_t>(count) * dtype_size(dtype); }
  static std::shared_ptr<Work> wrap(std::shared_ptr<Work> w, std::unique_ptr<Staging> s) {
    if (s->empty()) return w;
    return std::make_shared<StagedWork>(std::move(w), std::move(s));
  }

  std::unique_ptr<Communicator> inner_;
  backend::Ops& ops_;
};

class HybridCommunicator final : public Communicator {
 public:
  HybridCommunicator(std::unique_ptr<Communicator> host, std::unique_ptr<Communicator> device, backend::Ops& ops)
      : host_(make_staged_communicator(std::move(host), ops)), device_(std::move(device)), ops_(ops) {}

  int64_t rank() const override { return host_->rank(); }
  int64_t size() const override { return host_->size(); }
  const std::string& name() const override { return host_->name(); }
  const std::vector<int64_t>& global_ranks() const override { return host_->global_ranks(); }
  int64_t bytes_sent() const override { return host_->bytes_sent() + device_->bytes_sent(); }

  std::shared_ptr<Work> all_reduce_async(void* data, int64_t count, DType dtype, ReduceOp op) override {
    return pick({data})->all_reduce_async(data, count, dtype, op);
  }
  std::shared_ptr<Work> reduce_scatter_async(const void* in, void* out, int64_t count, DType dtype,
                                             ReduceOp op) override {
    return pick({in, out})->reduce_scatter_async(in, out, count, dtype, op);
  }
  std::shared_ptr<Work> all_gather_async(const void* in, void* out, int64_t count, DType dtype) override {
    return pick({in, out})->all_gather_async(in, out, count, dtype);
  }
  std::shared_ptr<Work> all_to_all_async(const void* in, const int64_t* send_counts, void* out,
                                         const int64_t* recv_counts, DType dtype) override {
    return pick({in, out})->all_to_all_async(in, send_counts, out, recv_counts, dtype);
  }
  std::shared_ptr<Work> broadcast_async(void* data, int64_t count, DType dtype, int64_t root) override {
    return pick({data})->broadcast_async(data, count, dtype, root);
  }
  std::shared_ptr<Work> send_async(const void* data, int64_t count, DType dtype, int64_t peer, int64_t tag) override {
    return pick({data})->send_async(data, count, dtype, peer, tag);
  }
  std::shared_ptr<Work> recv_async(void* data, int64_t count, DType dtype, int64_t peer, int64_t tag) override {
    return pick({data})->recv_async(data, count, dtype, peer, tag);
  }
  std::shared_ptr<Work> barrier_async() override { return host_->barrier_async(); }

 private:
  // Device transport only when every buffer is device memory (null: an unused argument).
  Communicator* pick(std::initializer_list<const void*> buffers) {
    for (const void* p : buffers)
      if (p != nullptr && !ops_.is_device_pointer(p)) return host_.get();
    return device_.get();
  }

  std::unique_ptr<Communicator> host_, device_;
  backend::Ops& ops_;
};

}  // namespace

std::unique_ptr<Communicator> make_hybrid_communicator(std::unique_ptr<Communicator> host,
                                                       std::unique_ptr<Communicator> device, backend::Ops& ops) {
  MPT_CHECK(host != nullptr && device != nullptr, Status::kInternal, "make_hybrid_communicator: missing transport");
  MPT_CHECK(host->size() == device->size() && host->rank() == device->rank(), Status::kInternal,
            "make_hybrid_communicator: the transports' groups differ");
  return std::make_unique<HybridCommunicator>(std::move(host), std::move(device), ops);
}

#ifndef MPT_HAVE_NCCL
std::unique_ptr<Communicator> make_device_communicator(Store&, const std::string&, const std::vector<int64_t>&,
                                                       int64_t, const CommOptions&, backend::Ops&) {
  return nullptr;
}
#endif

std::unique_ptr<Communicator> make_staged_communicator(std::unique_ptr<Communicator> inner, backend::Ops& ops) {
  MPT_CHECK(inner != nullptr, Status::kInternal, "make_staged_communicator: no communicator");
  return std::make_unique<StagedCommunicator>(std::move(inner), ops);
}

}  // namespace mpt::dist
