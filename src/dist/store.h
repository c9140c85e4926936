// The rendezvous store: a TCP key-value store hosted by rank 0, through which ranks
// exchange communicator addresses and meet at barriers. Keys and values are byte strings.
//
// Frames, both directions: u32 little-endian length, then that many bytes: u8 opcode (a
// reply: u8 status) and the operands, each string as u32 length + bytes, integers as
// little-endian i64 (store_wire_internal.h lists them). A frame that is too long (> 64 MiB),
// truncated, or has an unknown opcode or operands that do not fill it exactly closes that
// connection and is logged by the server; the server and the other clients carry on.
//
// Every blocking call waits at most the store's timeout (dist.distributed_timeout_minutes)
// and then throws Error(kDistributed) naming the key — and, for wait_ranks(), the ranks
// that never arrived. A lost server connection throws Error(kDistributed) naming the host.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/log.h"

namespace mpt::dist {

// Hosted by rank 0 in a background thread (poll loop), listening on all interfaces.
class StoreServer {
 public:
  // port 0 picks a free port. Throws Error(kDistributed) when the port cannot be bound,
  // naming it (e.g. another job already uses MASTER_PORT). Dropped connections (malformed
  // frames) are logged to `log` as warnings.
  explicit StoreServer(int port, Logger log = Logger());
  ~StoreServer();  // stops the thread, closes every connection
  StoreServer(const StoreServer&) = delete;
  StoreServer& operator=(const StoreServer&) = delete;
  int port() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

class Store {
 public:
  // Connects to host:port, retrying until timeout_s (rank 0's server may start later).
  // `rank` names this client in messages. Thread-safe: calls are serialised.
  Store(const std::string& host, int port, double timeout_s, int64_t rank);
  ~Store();
  Store(const Store&) = delete;
  Store& operator=(const Store&) = delete;

  void set(const std::string& key, const std::string& value);
  // Waits until the key exists, then returns its value.
  std::string get(const std::string& key);
  // Waits until every key exists.
  void wait(const std::vector<std::string>& keys);
  // Whether every key exists, without waiting.
  bool check(const std::vector<std::string>& keys);
  // Adds delta to the integer stored at key (absent: 0) and returns the new value.
  int64_t add(const std::string& key, int64_t delta);

  // Sets PREFIX/RANK for this rank, then waits for PREFIX/0 .. PREFIX/(world - 1). On
  // timeout the error lists the ranks whose keys never appeared.
  void wait_ranks(const std::string& prefix, int64_t rank, int64_t world, const std::string& value = "1");

  double timeout_s() const;
  int64_t rank() const;
  const std::string& host() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace mpt::dist
