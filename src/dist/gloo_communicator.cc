// Host collectives over gloo's TCP transport. gloo provides the connections (a full mesh
// formed through our Store) and tagged point-to-point transfers; the algorithms are ours:
//   all_reduce      ring reduce-scatter, then ring all-gather. The count is cut into
//                   size() chunks as equal as possible (the first count % size() chunks one
//                   element longer). Chunk c is summed as x[c-1] + (... + (x[c+1] + x[c])) at
//                   rank c-1 and copied to the others, so every rank gets identical bits.
//                   Rank r sends 2 * total - chunk[(r+1) % n] - chunk[(r+2) % n] bytes.
//   reduce_scatter  ring: block b is summed as x[b] + (... + (x[b+2] + x[b+1])) at rank b;
//                   (n-1) * block bytes sent per rank.
//   all_gather      ring; (n-1) * block bytes sent per rank.
//   all_to_all      pairwise exchange: step s sends to rank + s, receives from rank - s.
//   broadcast       binomial tree from the root (log2(n) rounds); a rank sends one copy
//                   per child.
//   barrier         dissemination (ceil(log2(n)) rounds of empty messages).
// Every collective starts with a 32-byte header to each peer it receives from, naming the
// operation, its sequence number, count, dtype and op: a rank that issued a different
// collective is reported instead of hanging or corrupting memory. Headers are framing and
// do not count in bytes_sent().
//
// Slots (gloo's message tags): 1 carries headers, 2 + sequence the payload of each
// collective, and point-to-point messages use bit 63 | tag << 40 | bytes, so a receive
// only matches a send of the same size.
#include "dist/communicator.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <sys/socket.h>
#include <unistd.h>

#include <gloo/rendezvous/store.h>
#include <gloo/transport/tcp/attr.h>
#include <gloo/transport/tcp/device.h>

#include <algorithm>
#include <cerrno>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <functional>
#include <thread>

#include "dist/gloo_group_internal.h"
#include "dist/reduce_internal.h"
#include "dist/store.h"

namespace mpt::dist {

using gloo_group::Buffer;
using gloo_group::Direction;
using gloo_group::Group;

namespace {

constexpr uint64_t kHeaderSlot = 1;
constexpr uint64_t kFirstCollectiveSlot = 2;
constexpr uint64_t kP2PSlot = uint64_t{1} << 63;
constexpr int64_t kMaxTag = (int64_t{1} << 23) - 1;
constexpr int64_t kMaxP2PBytes = (int64_t{1} << 40) - 1;
constexpr uint32_t kHeaderMagic = 0x4d50544b;  // "MPTK"

enum class Kind : uint32_t { kAllReduce = 1, kReduceScatter, kAllGather, kAllToAll, kBroadcast, kBarrier };

const char* kind_name(uint32_t kind) {
  switch (static_cast<Kind>(kind)) {
    case Kind::kAllReduce: return "all_reduce";
    case Kind::kReduceScatter: return "reduce_scatter";
    case Kind::kAllGather: return "all_gather";
    case Kind::kAllToAll: return "all_to_all";
    case Kind::kBroadcast: return "broadcast";
    case Kind::kBarrier: return "barrier";
  }
  return "unknown collective";
}

// What one rank tells the next about the collective it is running.
struct Header {
  uint32_t magic = kHeaderMagic;
  uint32_t kind = 0;
  uint64_t seq = 0;
  int64_t count = 0;  // elements per block; all_to_all: elements sent to the receiver
  int32_t dtype = 0;
  int32_t arg = 0;  // reduce op, or broadcast root (world rank)
};
static_assert(sizeof(Header) == 32);

std::string describe(const Header& h) {
  if (h.magic != kHeaderMagic) return "a malformed header";
  auto kind = static_cast<Kind>(h.kind);
  std::string dtype = dtype_name(static_cast<DType>(h.dtype));  // "?" when unknown
  std::string s = str(kind_name(h.kind), " #", h.seq);
  if (kind == Kind::kBarrier) return s;
  s += str(" (count ", h.count, ", ", dtype);
  if (kind == Kind::kAllReduce || kind == Kind::kReduceScatter)
    s += str(", ", h.arg >= 0 && h.arg <= 2 ? reduce::op_name(static_cast<ReduceOp>(h.arg)) : "op?");
  if (kind == Kind::kBroadcast) s += str(", root ", h.arg);
  return s + ")";
}

Header make_header(Kind kind, uint64_t seq, int64_t count, DType dtype, int32_t arg) {
  Header h;
  h.kind = static_cast<uint32_t>(kind);
  h.seq = seq;
  h.count = count;
  h.dtype = static_cast<int32_t>(dtype);
  h.arg = arg;
  return h;
}

bool same(const Header& a, const Header& b) {
  return a.magic == b.magic && a.kind == b.kind && a.seq == b.seq && a.count == b.count && a.dtype == b.dtype &&
         a.arg == b.arg;
}

int64_t mod(int64_t a, int64_t n) { return ((a % n) + n) % n; }

// The collectives, run on the communicator's worker thread (inline for a group of one).
class Collectives {
 public:
  explicit Collectives(std::shared_ptr<Group> group) : g_(std::move(group)) {}

  void all_reduce(char* data, int64_t count, DType dtype, ReduceOp op) {
    const char* name = "all_reduce";
    const int64_t n = g_->size, r = g_->rank;
    if (n == 1) return;  // a sum, max or average over one rank is the input
    uint64_t seq = seq_++;
    Header h = make_header(Kind::kAllReduce, seq, count, dtype, static_cast<int32_t>(op));
    ring_headers(name, h);
    const size_t es = dtype_size(dtype);
    auto offset = [&](int64_t c) { return c * (count / n) + std::min(c, count % n); };
    auto length = [&](int64_t c) { return count / n + (c < count % n ? 1 : 0); };
    scratch_a_.resize(static_cast<size_t>(length(0)) * es);
    const uint64_t slot = kFirstCollectiveSlot + seq;
    const int64_t next = mod(r + 1, n), prev = mod(r - 1, n);
    for (int64_t s = 0; s < n - 1; ++s) {  // reduce-scatter: rank r ends owning chunk r + 1
      int64_t sc = mod(r - s, n), rc = mod(r - s - 1, n);
      g_->exchange(name, slot, next, data + offset(sc) * es, length(sc) * es, prev, scratch_a_.data(),
                   length(rc) * es);
      reduce::combine(data + offset(rc) * es, data + offset(rc) * es, scratch_a_.data(), length(rc), dtype, op);
    }
    int64_t owned = mod(r + 1, n);
    reduce::finish_avg(data + offset(owned) * es, length(owned), dtype, op, n);
    for (int64_t s = 0; s < n - 1; ++s) {  // all-gather of the reduced chunks
      int64_t sc = mod(r + 1 - s, n), rc = mod(r - s, n);
      g_->exchange(name, slot, next, data + offset(sc) * es, length(sc) * es, prev, data + offset(rc) * es,
                   length(rc) * es);
    }
  }

  void reduce_scatter(const char* in, char* out, int64_t count, DType dtype, ReduceOp op) {
    const char* name = "reduce_scatter";
    const int64_t n = g_->size, r = g_->rank;
    const size_t block = static_cast<size_t>(count) * dtype_size(dtype);
    if (n == 1) {
      if (out != in) std::memmove(out, in, block);
      return;
    }
    uint64_t seq = seq_++;
    ring_headers(name, make_header(Kind::kReduceScatter, seq, count, dtype, static_cast<int32_t>(op)));
    // The partial sum travels in scratch_a_; out is written once, at the end, so it may
    // alias this rank's block of in.
    scratch_a_.resize(block);
    scratch_b_.resize(block);
    const uint64_t slot = kFirstCollectiveSlot + seq;
    const int64_t next = mod(r + 1, n), prev = mod(r - 1, n);
    for (int64_t s = 0; s < n - 1; ++s) {
      const char* send = s == 0 ? in + mod(r - 1, n) * block : scratch_a_.data();
      g_->exchange(name, slot, next, send, block, prev, scratch_b_.data(), block);
      int64_t b = mod(r - s - 2, n);  // the block whose partial sum just arrived
      char* dst = s == n - 2 ? out : scratch_a_.data();
      reduce::combine(dst, in + b * block, scratch_b_.data(), count, dtype, op);
    }
    reduce::finish_avg(out, count, dtype, op, n);
  }

  void all_gather(const char* in, char* out, int64_t count, DType dtype) {
    const char* name = "all_gather";
    const int64_t n = g_->size, r = g_->rank;
    const size_t block = static_cast<size_t>(count) * dtype_size(dtype);
    if (out + r * block != in) std::memmove(out + r * block, in, block);
    if (n == 1) return;
    uint64_t seq = seq_++;
    ring_headers(name, make_header(Kind::kAllGather, seq, count, dtype, 0));
    const uint64_t slot = kFirstCollectiveSlot + seq;
    const int64_t next = mod(r + 1, n), prev = mod(r - 1, n);
    for (int64_t s = 0; s < n - 1; ++s)
      g_->exchange(name, slot, next, out + mod(r - s, n) * block, block, prev, out + mod(r - s - 1, n) * block, block);
  }

  void all_to_all(const char* in, const std::vector<int64_t>& send_counts, char* out,
                  const std::vector<int64_t>& recv_counts, DType dtype) {
    const char* name = "all_to_all";
    const int64_t n = g_->size, r = g_->rank;
    const size_t es = dtype_size(dtype);
    std::vector<int64_t> send_off(n + 1, 0), recv_off(n + 1, 0);
    for (int64_t p = 0; p < n; ++p) {
      send_off[p + 1] = send_off[p] + send_counts[p];
      recv_off[p + 1] = recv_off[p] + recv_counts[p];
    }
    std::memmove(out + recv_off[r] * es, in + send_off[r] * es, send_counts[r] * es);
    if (n == 1) return;
    uint64_t seq = seq_++;
    const uint64_t slot = kFirstCollectiveSlot + seq;
    for (int64_t s = 1; s < n; ++s) {
      int64_t to = mod(r + s, n), from = mod(r - s, n);
      Header mine = make_header(Kind::kAllToAll, seq, send_counts[to], dtype, 0);
      Header expected = make_header(Kind::kAllToAll, seq, recv_counts[from], dtype, 0);
      Buffer payload;
      if (send_counts[to] > 0)
        payload = g_->post_send(name, to, in + send_off[to] * es, send_counts[to] * es, slot, true);
      headers(name, {to}, mine, from, expected);
      g_->exchange(name, slot, to, nullptr, 0, from, out + recv_off[from] * es, recv_counts[from] * es);
      if (payload) g_->wait(name, to, Direction::kSend, *payload);
    }
  }

  void broadcast(char* data, int64_t count, DType dtype, int64_t root) {
    const char* name = "broadcast";
    const int64_t n = g_->size;
    if (n == 1) return;
    uint64_t seq = seq_++;
    Header h = make_header(Kind::kBroadcast, seq, count, dtype, static_cast<int32_t>(g_->world(root)));
    // Binomial tree over ranks relative to the root: v receives from v minus its lowest set
    // bit, then sends to v + 2^k for each 2^k below that bit.
    const int64_t v = mod(g_->rank - root, n);
    int64_t mask = 1, parent = -1;
    while (mask < n) {
      if (v & mask) {
        parent = mod(v - mask + root, n);
        break;
      }
      mask <<= 1;
    }
    std::vector<int64_t> children;
    for (mask >>= 1; mask > 0; mask >>= 1)
      if (v + mask < n) children.push_back(mod(v + mask + root, n));
    const size_t bytes = static_cast<size_t>(count) * dtype_size(dtype);
    const uint64_t slot = kFirstCollectiveSlot + seq;
    headers(name, children, h, parent, h);
    if (parent >= 0) g_->exchange(name, slot, -1, nullptr, 0, parent, data, bytes);
    if (bytes == 0) return;
    std::vector<Buffer> sends;
    for (int64_t c : children) sends.push_back(g_->post_send(name, c, data, bytes, slot, true));
    for (size_t i = 0; i < sends.size(); ++i) g_->wait(name, children[i], Direction::kSend, *sends[i]);
  }

  void barrier() {
    const char* name = "barrier";
    const int64_t n = g_->size, r = g_->rank;
    if (n == 1) return;
    Header h = make_header(Kind::kBarrier, seq_++, 0, DType::kU8, 0);
    for (int64_t d = 1; d < n; d <<= 1) headers(name, {mod(r + d, n)}, h, mod(r - d, n), h);
  }

 private:
  // Sends `mine` to each of `to` and checks that `from` (if >= 0) sends `expected`.
  void headers(const char* op, const std::vector<int64_t>& to, const Header& mine, int64_t from,
               const Header& expected) {
    std::vector<Buffer> sends;
    for (int64_t peer : to) sends.push_back(g_->post_send(op, peer, &mine, sizeof(Header), kHeaderSlot, false));
    if (from >= 0) {
      Header got{};
      Buffer recv = g_->post_recv(op, from, &got, sizeof(Header), kHeaderSlot);
      g_->wait(op, from, Direction::kRecv, *recv);
      if (!same(got, expected)) {
        // Deliver this rank's own headers before the group is torn down, so that each peer
        // names the mismatch too rather than only the lost connection.
        for (auto& send : sends) g_->flush(*send);
        g_->fail_with(op, str("peer rank ", g_->world(from), " issued ", describe(got), " where this rank issued ",
                              describe(expected), " (every member must issue the same collectives in order)"));
      }
    }
    for (size_t i = 0; i < sends.size(); ++i) g_->wait(op, to[i], Direction::kSend, *sends[i]);
  }

  void ring_headers(const char* op, const Header& h) {
    headers(op, {mod(g_->rank + 1, g_->size)}, h, mod(g_->rank - 1, g_->size), h);
  }

  std::shared_ptr<Group> g_;
  uint64_t seq_ = 0;  // collectives run so far: equal on every member
  std::vector<char> scratch_a_, scratch_b_;
};

// A queued operation's handle. Sends and receives are only posted by the worker (so that a
// send and a receive issued back to back can both be in flight); their wait() waits for
// the transfer itself.
class OpWork final : public Work {
 public:
  OpWork(std::shared_ptr<Group> group, const char* op, int64_t peer = -1, Direction dir = Direction::kSend)
      : group_(std::move(group)), op_(op), peer_(peer), dir_(dir) {}

  // The worker begins the operation.
  void start() {
    std::lock_guard<std::mutex> lock(mu_);
    started_ = std::chrono::steady_clock::now();
  }

  void finish(std::exception_ptr error, Buffer pending = nullptr) {
    std::lock_guard<std::mutex> lock(mu_);
    error_ = std::move(error);
    pending_ = std::move(pending);
    done_ = true;
    ended_ = std::chrono::steady_clock::now();
    cv_.notify_all();
  }

  bool times(TimePoint& start, TimePoint& end) const override {
    std::lock_guard<std::mutex> lock(mu_);
    if (!done_ || pending_) return false;
    start = started_;
    end = ended_;
    return true;
  }

  void wait() override {
    std::lock_guard<std::mutex> one_waiter(wait_mu_);
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [&] { return done_; });
    }
    if (error_) std::rethrow_exception(error_);
    if (!pending_) return;
    try {
      group_->wait(op_, peer_, dir_, *pending_);
      std::lock_guard<std::mutex> lock(mu_);
      pending_.reset();
      ended_ = std::chrono::steady_clock::now();
    } catch (...) {
      error_ = std::current_exception();
      pending_.reset();
      throw;
    }
  }

 private:
  std::shared_ptr<Group> group_;
  const char* op_;
  int64_t peer_;
  Direction dir_;
  std::mutex wait_mu_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  bool done_ = false;
  std::exception_ptr error_;
  Buffer pending_;
  TimePoint started_, ended_;
};

class GlooCommunicator final : public Communicator {
 public:
  explicit GlooCommunicator(std::shared_ptr<Group> group) : g_(group), coll_(group) {
    if (g_->size > 1) worker_ = std::thread([this] { run(); });
  }

  // Runs what is queued, then closes the connections: peers still waiting on this rank
  // fail at once, and Work still pending here fails with "destroyed".
  ~GlooCommunicator() override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stopping_ = true;
    }
    cv_.notify_all();
    if (worker_.joinable()) worker_.join();
    g_->abort("the communicator was destroyed");
  }

  int64_t rank() const override { return g_->rank; }
  int64_t size() const override { return g_->size; }
  const std::string& name() const override { return g_->name; }
  const std::vector<int64_t>& global_ranks() const override { return g_->ranks; }
  int64_t bytes_sent() const override { return g_->bytes_sent.load(); }

  std::shared_ptr<Work> all_reduce_async(void* data, int64_t count, DType dtype, ReduceOp op) override {
    const char* name = "all_reduce";
    check_buffer(name, data, count, dtype, "data");
    reduce::check_supported(dtype, op, g_->where(name));
    return submit(name, [=, this] { coll_.all_reduce(static_cast<char*>(data), count, dtype, op); });
  }

  std::shared_ptr<Work> reduce_scatter_async(const void* in, void* out, int64_t count, DType dtype,
                                             ReduceOp op) override {
    const char* name = "reduce_scatter";
    check_buffer(name, in, count, dtype, "in");
    check_buffer(name, out, count, dtype, "out");
    reduce::check_supported(dtype, op, g_->where(name));
    return submit(name, [=, this] {
      coll_.reduce_scatter(static_cast<const char*>(in), static_cast<char*>(out), count, dtype, op);
    });
  }

  std::shared_ptr<Work> all_gather_async(const void* in, void* out, int64_t count, DType dtype) override {
    const char* name = "all_gather";
    check_buffer(name, in, count, dtype, "in");
    check_buffer(name, out, count, dtype, "out");
    return submit(name, [=, this] { coll_.all_gather(static_cast<const char*>(in), static_cast<char*>(out), count, dtype); });
  }

  std::shared_ptr<Work> all_to_all_async(const void* in, const int64_t* send_counts, void* out,
                                         const int64_t* recv_counts, DType dtype) override {
    const char* name = "all_to_all";
    check_dtype(name, dtype);
    MPT_CHECK(send_counts != nullptr && recv_counts != nullptr, Status::kInvalidArgument, g_->where(name),
              ": send_counts and recv_counts must not be null");
    std::vector<int64_t> sends(send_counts, send_counts + g_->size), recvs(recv_counts, recv_counts + g_->size);
    int64_t send_total = 0, recv_total = 0;
    for (int64_t p = 0; p < g_->size; ++p) {
      MPT_CHECK(sends[p] >= 0 && recvs[p] >= 0, Status::kInvalidArgument, g_->where(name), ": counts for peer ", p,
                " are negative (send ", sends[p], ", recv ", recvs[p], ")");
      send_total += sends[p];
      recv_total += recvs[p];
    }
    MPT_CHECK(sends[g_->rank] == recvs[g_->rank], Status::kInvalidArgument, g_->where(name),
              ": this rank sends itself ", sends[g_->rank], " elements but expects ", recvs[g_->rank]);
    check_buffer(name, in, send_total, dtype, "in");
    check_buffer(name, out, recv_total, dtype, "out");
    return submit(name, [=, this] {
      coll_.all_to_all(static_cast<const char*>(in), sends, static_cast<char*>(out), recvs, dtype);
    });
  }

  std::shared_ptr<Work> broadcast_async(void* data, int64_t count, DType dtype, int64_t root) override {
    const char* name = "broadcast";
    check_buffer(name, data, count, dtype, "data");
    MPT_CHECK(root >= 0 && root < g_->size, Status::kInvalidArgument, g_->where(name), ": root ", root,
              " is outside the group of size ", g_->size);
    return submit(name, [=, this] { coll_.broadcast(static_cast<char*>(data), count, dtype, root); });
  }

  std::shared_ptr<Work> send_async(const void* data, int64_t count, DType dtype, int64_t peer, int64_t tag) override {
    const char* name = "send";
    uint64_t slot = p2p_slot(name, data, count, dtype, peer, tag);
    size_t bytes = static_cast<size_t>(count) * dtype_size(dtype);
    auto work = std::make_shared<OpWork>(g_, name, peer, Direction::kSend);
    enqueue(work, [=, this] { return bytes ? g_->post_send(name, peer, data, bytes, slot, true) : nullptr; });
    return work;
  }

  std::shared_ptr<Work> recv_async(void* data, int64_t count, DType dtype, int64_t peer, int64_t tag) override {
    const char* name = "recv";
    uint64_t slot = p2p_slot(name, data, count, dtype, peer, tag);
    size_t bytes = static_cast<size_t>(count) * dtype_size(dtype);
    auto work = std::make_shared<OpWork>(g_, name, peer, Direction::kRecv);
    enqueue(work, [=, this] { return bytes ? g_->post_recv(name, peer, data, bytes, slot) : nullptr; });
    return work;
  }

  std::shared_ptr<Work> barrier_async() override {
    return submit("barrier", [this] { coll_.barrier(); });
  }

 private:
  using Task = std::function<Buffer()>;

  void check_dtype(const char* op, DType dtype) {
    g_->check_usable(op);
    MPT_CHECK(dtype_size(dtype) > 0, Status::kInvalidArgument, g_->where(op), ": unknown dtype ",
              static_cast<int>(dtype));
  }

  void check_buffer(const char* op, const void* p, int64_t count, DType dtype, const char* what) {
    check_dtype(op, dtype);
    MPT_CHECK(count >= 0, Status::kInvalidArgument, g_->where(op), ": count ", count, " is negative");
    MPT_CHECK(p != nullptr || count == 0, Status::kInvalidArgument, g_->where(op), ": ", what, " is null");
  }

  uint64_t p2p_slot(const char* op, const void* p, int64_t count, DType dtype, int64_t peer, int64_t tag) {
    check_buffer(op, p, count, dtype, "data");
    MPT_CHECK(peer >= 0 && peer < g_->size && peer != g_->rank, Status::kInvalidArgument, g_->where(op), ": peer ",
              peer, " is not another member of the group of size ", g_->size);
    MPT_CHECK(tag >= 0 && tag <= kMaxTag, Status::kInvalidArgument, g_->where(op), ": tag ", tag, " is not in 0..",
              kMaxTag);
    int64_t bytes = count * static_cast<int64_t>(dtype_size(dtype));
    MPT_CHECK(bytes <= kMaxP2PBytes, Status::kInvalidArgument, g_->where(op), ": ", bytes,
              " bytes exceed the point-to-point limit of ", kMaxP2PBytes);
    return kP2PSlot | (static_cast<uint64_t>(tag) << 40) | static_cast<uint64_t>(bytes);
  }

  std::shared_ptr<Work> submit(const char* op, std::function<void()> fn) {
    g_->check_usable(op);
    auto work = std::make_shared<OpWork>(g_, op);
    enqueue(work, [fn = std::move(fn)] {
      fn();
      return Buffer();
    });
    return work;
  }

  void enqueue(const std::shared_ptr<OpWork>& work, Task task) {
    if (g_->size == 1) {  // no network: run in place
      execute(*work, task);
      return;
    }
    {
      std::lock_guard<std::mutex> lock(mu_);
      queue_.emplace_back(work, std::move(task));
    }
    cv_.notify_all();
  }

  void execute(OpWork& work, const Task& task) {
    work.start();
    try {
      Buffer pending = task();
      work.finish(nullptr, std::move(pending));
    } catch (...) {
      work.finish(std::current_exception());
    }
  }

  void run() {
    for (;;) {
      std::pair<std::shared_ptr<OpWork>, Task> next;
      {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
        if (queue_.empty()) return;
        next = std::move(queue_.front());
        queue_.pop_front();
      }
      execute(*next.first, next.second);
    }
  }

  std::shared_ptr<Group> g_;
  Collectives coll_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::pair<std::shared_ptr<OpWork>, Task>> queue_;
  bool stopping_ = false;
  std::thread worker_;
};

// gloo's rendezvous keys, kept under the group's prefix in our store.
class StoreAdapter final : public gloo::rendezvous::Store {
 public:
  StoreAdapter(dist::Store& store, std::string prefix) : store_(store), prefix_(std::move(prefix)) {}
  void set(const std::string& key, const std::vector<char>& data) override {
    store_.set(prefix_ + key, std::string(data.begin(), data.end()));
  }
  std::vector<char> get(const std::string& key) override {
    std::string v = store_.get(prefix_ + key);
    return std::vector<char>(v.begin(), v.end());
  }
  // The store's own timeout bounds every wait.
  void wait(const std::vector<std::string>& keys) override {
    std::vector<std::string> full;
    for (const auto& k : keys) full.push_back(prefix_ + k);
    store_.wait(full);
  }
  void wait(const std::vector<std::string>& keys, const std::chrono::milliseconds&) override { wait(keys); }

 private:
  dist::Store& store_;
  std::string prefix_;
};

// The local address of the interface that routes to `host` (no packet is sent: connecting
// a UDP socket only picks the route).
std::string local_address_towards(const std::string& host, const std::string& where) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_DGRAM;
  addrinfo* list = nullptr;
  int rv = ::getaddrinfo(host.c_str(), "9", &hints, &list);
  MPT_CHECK(rv == 0, Status::kDistributed, where, ": cannot resolve the store host ", host, ": ", gai_strerror(rv));
  std::string found, why = "no address";
  for (addrinfo* ai = list; ai != nullptr && found.empty(); ai = ai->ai_next) {
    int fd = ::socket(ai->ai_family, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0) continue;
    sockaddr_storage local{};
    socklen_t len = sizeof(local);
    char text[INET6_ADDRSTRLEN] = "";
    if (::connect(fd, ai->ai_addr, ai->ai_addrlen) == 0 &&
        ::getsockname(fd, reinterpret_cast<sockaddr*>(&local), &len) == 0 &&
        ::getnameinfo(reinterpret_cast<sockaddr*>(&local), len, text, sizeof(text), nullptr, 0, NI_NUMERICHOST) == 0) {
      found = text;
    } else {
      why = std::strerror(errno);
    }
    ::close(fd);
  }
  freeaddrinfo(list);
  MPT_CHECK(!found.empty(), Status::kDistributed, where, ": no local interface routes to the store host ", host,
            " (", why, "); set the communicator's host explicitly");
  return found;
}

}  // namespace

std::unique_ptr<Communicator> make_gloo_communicator(Store& store, const std::string& name,
                                                     const std::vector<int64_t>& global_ranks, int64_t world_rank,
                                                     const CommOptions& options) {
  auto g = std::make_shared<Group>();
  g->name = name;
  g->ranks = global_ranks;
  g->size = static_cast<int64_t>(global_ranks.size());
  g->timeout_s = options.timeout_s;
  std::string what = str("group ", name, ": rank ", world_rank);
  MPT_CHECK(!name.empty(), Status::kInvalidArgument, "communicator for rank ", world_rank, ": the group name is empty");
  MPT_CHECK(!global_ranks.empty(), Status::kInvalidArgument, what, ": the group has no ranks");
  for (size_t i = 0; i < global_ranks.size(); ++i)
    MPT_CHECK(global_ranks[i] >= 0 && (i == 0 || global_ranks[i] > global_ranks[i - 1]), Status::kInvalidArgument,
              what, ": global_ranks must be sorted, non-negative and distinct (entry ", i, " is ", global_ranks[i], ")");
  auto it = std::find(global_ranks.begin(), global_ranks.end(), world_rank);
  MPT_CHECK(it != global_ranks.end(), Status::kInvalidArgument, what, ": this rank is not a member of the group");
  g->rank = it - global_ranks.begin();
  MPT_CHECK(options.timeout_s > 0, Status::kInvalidArgument, g->where("create"), ": timeout ", options.timeout_s,
            " s is not positive");
  if (g->size == 1) return std::make_unique<GlooCommunicator>(g);

  // Each formation of a group under this name gets fresh keys: members count their joins.
  const std::string base = "gloo/" + name + "/";
  const int64_t generation = (store.add(base + "joins", 1) - 1) / g->size;
  const std::string prefix = base + std::to_string(generation) + "/";
  std::vector<std::string> joined;
  for (int64_t i = 0; i < g->size; ++i) joined.push_back(prefix + "joined/" + std::to_string(i));
  store.set(joined[static_cast<size_t>(g->rank)], "1");
  try {
    store.wait(joined);
  } catch (const Error& e) {
    std::vector<std::string> missing;
    try {
      for (int64_t i = 0; i < g->size; ++i)
        if (!store.check({joined[static_cast<size_t>(i)]})) missing.push_back(std::to_string(g->world(i)));
    } catch (const Error&) {
      throw e;  // the store itself is gone: its error says so
    }
    if (missing.empty()) throw;
    std::string list;
    for (const auto& m : missing) list += (list.empty() ? "" : ", ") + m;
    fail(Status::kDistributed, g->where("create"), ": ", missing.size() == 1 ? "rank " : "ranks ", list,
         " never joined within the store's timeout of ", gloo_group::seconds_text(store.timeout_s()));
  }

  try {
    gloo::transport::tcp::attr attr;
    attr.hostname = options.host.empty() ? local_address_towards(store.host(), g->where("create")) : options.host;
    auto device = gloo::transport::tcp::CreateDevice(attr);
    auto mesh = std::make_shared<gloo::rendezvous::Context>(static_cast<int>(g->rank), static_cast<int>(g->size));
    mesh->setTimeout(std::chrono::milliseconds(static_cast<int64_t>(options.timeout_s * 1000 + 0.5)));
    StoreAdapter adapter(store, prefix + "mesh/");
    mesh->connectFullMesh(adapter, device);
    g->mesh = std::move(mesh);
  } catch (const Error& e) {
    throw Error(e.status(), g->where("create") + ": connecting to the other members: " + e.what());
  } catch (const std::exception& e) {
    fail(Status::kDistributed, g->where("create"), ": connecting to the other members (this rank's address ",
         options.host.empty() ? "from the route to the store" : options.host, "): ", gloo_group::reason_of(e.what()));
  }
  return std::make_unique<GlooCommunicator>(g);
}

}  // namespace mpt::dist
