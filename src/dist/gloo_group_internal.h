// One gloo group's transport state and its point-to-point transfers, shared by the
// communicator and the Work handles of its sends and receives. Every transfer failure is
// turned into Error(kDistributed) naming the group, this rank, the operation and the peer;
// the first failure breaks the group: its connections are closed (peers fail fast instead
// of waiting out their timeout) and every later call throws.
#pragma once

#include <gloo/rendezvous/context.h>
#include <gloo/transport/unbound_buffer.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <exception>
#include <memory>
#include <mutex>
#include <sstream>
#include <string>
#include <vector>

#include "core/error.h"

namespace mpt::dist::gloo_group {

using Buffer = std::unique_ptr<gloo::transport::UnboundBuffer>;

// Failures this side raised itself: gloo's timeout closes every connection of the group with
// this message, and so does abort(). Any other failure of a pair means its peer was lost.
inline bool is_local_abort(const std::string& what) {
  return what.find("Application timeout caused pair closure") != std::string::npos;
}

// The slot of the probes that ask a pair for its failure (never matched by a receive).
inline constexpr uint64_t kProbeSlot = 0;

// gloo's messages start with "[file:line] "; the rest reads as a reason.
inline std::string reason_of(const std::string& what) {
  std::string s = what;
  if (!s.empty() && s[0] == '[') {
    size_t end = s.find("] ");
    if (end != std::string::npos) s = s.substr(end + 2);
  }
  if (!s.empty() && s[0] >= 'A' && s[0] <= 'Z') s[0] = static_cast<char>(s[0] - 'A' + 'a');
  return s;
}

inline std::string seconds_text(double s) {
  std::ostringstream os;
  os << s << " s";
  return os.str();
}

enum class Direction { kSend, kRecv };

struct Group {
  std::string name;
  std::vector<int64_t> ranks;  // group rank -> world rank
  int64_t rank = 0;            // in the group
  int64_t size = 1;
  double timeout_s = 600;
  std::shared_ptr<gloo::rendezvous::Context> mesh;  // connected; null for a group of one
  std::atomic<int64_t> bytes_sent{0};

  int64_t world(int64_t group_rank) const { return ranks[static_cast<size_t>(group_rank)]; }

  // "group dp (ranks 0,1,2,3): rank 2: all_reduce"
  std::string where(const char* op) const {
    std::string list;
    for (size_t i = 0; i < ranks.size(); ++i) {
      if (ranks.size() > 16 && i == 8) {
        list += str(",...,", ranks.back());
        break;
      }
      list += (i ? "," : "") + std::to_string(ranks[i]);
    }
    return str("group ", name, " (ranks ", list, "): rank ", world(rank), ": ", op);
  }

  // Throws the first failure's error once the group is broken.
  void check_usable(const char* op) {
    std::lock_guard<std::mutex> lock(mu_);
    if (!broken_.empty())
      fail(Status::kDistributed, where(op), ": the communicator is unusable after an earlier failure (", broken_,
           ")");
  }

  // Breaks the group with `detail` (a later failure keeps the first one's message), closes
  // its connections and throws.
  [[noreturn]] void fail_with(const char* op, const std::string& detail) {
    std::string message = where(op) + ": " + detail;
    abort(str(op, ": ", detail));
    throw Error(Status::kDistributed, message);
  }

  // Breaks the group (unless already broken) with `why`, closes every connection and wakes
  // every pending transfer. A wait that times out at once is gloo's public way to do it: it
  // fails every pair of the context.
  void abort(const std::string& why) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (broken_.empty()) broken_ = why;
    }
    if (mesh == nullptr) return;
    char byte = 0;
    try {
      Buffer b = mesh->createUnboundBuffer(&byte, 1);
      b->waitRecv(nullptr, std::chrono::milliseconds(0));
    } catch (const std::exception&) {
      // the expected timeout
    }
  }

  // Posted transfers; `payload` sends count towards bytes_sent (operation headers do not).
  Buffer post_send(const char* op, int64_t peer, const void* data, size_t bytes, uint64_t slot, bool payload) {
    try {
      Buffer b = mesh->createUnboundBuffer(const_cast<void*>(data), bytes);
      b->send(static_cast<int>(peer), slot);
      if (payload) bytes_sent += static_cast<int64_t>(bytes);
      return b;
    } catch (const Error&) {
      throw;
    } catch (const std::exception& e) {
      transport_failure(op, peer, Direction::kSend, e);
    }
  }

  Buffer post_recv(const char* op, int64_t peer, void* data, size_t bytes, uint64_t slot) {
    try {
      Buffer b = mesh->createUnboundBuffer(data, bytes);
      b->recv(static_cast<int>(peer), slot);
      return b;
    } catch (const Error&) {
      throw;
    } catch (const std::exception& e) {
      transport_failure(op, peer, Direction::kRecv, e);
    }
  }

  void wait(const char* op, int64_t peer, Direction dir, gloo::transport::UnboundBuffer& buffer) {
    auto timeout = std::chrono::milliseconds(static_cast<int64_t>(timeout_s * 1000 + 0.5));
    bool done = false;
    try {
      done = dir == Direction::kSend ? buffer.waitSend(timeout) : buffer.waitRecv(timeout);
    } catch (const Error&) {
      throw;
    } catch (const std::exception& e) {
      transport_failure(op, peer, dir, e);
    }
    if (!done) fail_with(op, str(dir_text(dir), " peer rank ", world(peer), ": the transfer was aborted"));
  }

  // Gives a posted send up to a second to complete before the group is torn down; any
  // failure is left to the abort that follows.
  void flush(gloo::transport::UnboundBuffer& buffer) {
    try {
      buffer.waitSend(std::chrono::milliseconds(std::min<int64_t>(1000, static_cast<int64_t>(timeout_s * 1000))));
    } catch (const std::exception&) {
      // lost or timed out: the abort names the failure
    }
  }

  // Sends [send, send + send_bytes) to `to` while receiving into [recv, recv + recv_bytes)
  // from `from`; empty sides are skipped (both ends know the sizes).
  void exchange(const char* op, uint64_t slot, int64_t to, const void* send, size_t send_bytes, int64_t from,
                void* recv, size_t recv_bytes) {
    Buffer s, r;
    if (send_bytes > 0) s = post_send(op, to, send, send_bytes, slot, true);
    if (recv_bytes > 0) r = post_recv(op, from, recv, recv_bytes, slot);
    if (r) wait(op, from, Direction::kRecv, *r);
    if (s) wait(op, to, Direction::kSend, *s);
  }

 private:
  static const char* dir_text(Direction dir) { return dir == Direction::kSend ? "sending to" : "receiving from"; }

  // Names the peers whose connections failed (not by this side's own abort), else the
  // peer this transfer waited on and why.
  [[noreturn]] void transport_failure(const char* op, int64_t peer, Direction dir, const std::exception& e) {
    check_usable(op);  // broken by another failure or by destruction: report that one
    std::string what = e.what();
    std::string detail;
    for (const auto& lost : lost_peers(peer)) detail += (detail.empty() ? "lost " : ", ") + lost;
    if (what.find("Timed out waiting") != std::string::npos) {
      detail += str(detail.empty() ? "" : "; ", "no progress within ", seconds_text(timeout_s), " ", dir_text(dir),
                    " peer rank ", world(peer), " (timeout)");
    } else if (detail.empty()) {
      detail = str(dir_text(dir), " peer rank ", world(peer), ": ", reason_of(what));
    }
    fail_with(op, detail);
  }

  // A pair keeps its first failure and rethrows it when used: an empty send (to a slot
  // nobody receives on) asks each pair. Only called on the way to abort(). The peer this
  // rank waited on comes first.
  std::vector<std::string> lost_peers(int64_t waited_on) const {
    std::vector<std::string> lost;
    char byte = 0;
    for (int64_t k = 0; k < size; ++k) {
      int64_t i = (waited_on + k) % size;
      if (i == rank) continue;
      try {
        Buffer probe = mesh->createUnboundBuffer(&byte, 1);
        probe->send(static_cast<int>(i), kProbeSlot, 0, 0);
      } catch (const std::exception& e) {
        if (!is_local_abort(e.what())) lost.push_back(str("peer rank ", world(i), " (", reason_of(e.what()), ")"));
      }
    }
    return lost;
  }

  std::mutex mu_;
  std::string broken_;  // what broke the group first: "all_reduce: lost peer rank 3 (...)"
};

}  // namespace mpt::dist::gloo_group
