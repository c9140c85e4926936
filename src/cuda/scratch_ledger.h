// Which scratch blocks a recorded graph may still use. A CUDA graph bakes in the addresses
// of the scratch areas current when it was recorded, and replays them until destroyed, so
// a block outgrown outside capture must not go back to the allocator (which would hand it
// to the next tensor) while a graph recorded during its lifetime lives. Time is counted in
// scratch generations: each growth of a scratch area starts a new one. A graph holds the
// generation it was recorded in; a retired block is released once no live graph holds a
// generation in which it was current. Plain C++ (no CUDA), so it is tested on the CPU.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <utility>
#include <vector>

namespace mpt::cuda {

class ScratchLedger {
 public:
  using Release = std::function<void(void*)>;
  explicit ScratchLedger(Release release) : release_(std::move(release)) {}
  ScratchLedger(const ScratchLedger&) = delete;
  ScratchLedger& operator=(const ScratchLedger&) = delete;

  uint64_t generation() const {
    std::lock_guard<std::mutex> lock(mu_);
    return generation_;
  }

  // A scratch area outgrown: `block` (of `bytes`, current since generation `since`) is
  // released now when no live graph may use it, else kept; a new generation begins.
  void retire(void* block, size_t bytes, uint64_t since) {
    void* now = nullptr;
    Release release;
    {
      std::lock_guard<std::mutex> lock(mu_);
      release = release_;
      if (block != nullptr) {
        if (held_within(since, generation_))
          retired_.push_back({block, bytes, since, generation_});
        else
          now = block;
      }
      ++generation_;
    }
    if (now && release) release(now);
  }

  // A graph recorded now: it holds the current generation until dropped with release_graph().
  uint64_t hold_for_graph() {
    std::lock_guard<std::mutex> lock(mu_);
    ++graphs_[generation_];
    return generation_;
  }

  // A graph recorded in `generation` is gone: the blocks no live graph may use go back.
  void release_graph(uint64_t generation) {
    std::vector<void*> freed;
    Release release;
    {
      std::lock_guard<std::mutex> lock(mu_);
      release = release_;
      auto it = graphs_.find(generation);
      if (it == graphs_.end()) return;
      if (--it->second == 0) graphs_.erase(it);
      for (size_t i = 0; i < retired_.size();) {
        if (held_within(retired_[i].since, retired_[i].until)) {
          ++i;
          continue;
        }
        freed.push_back(retired_[i].block);
        retired_[i] = retired_.back();
        retired_.pop_back();
      }
    }
    // Stream order makes this safe even while a replay is still queued: the backend's
    // allocator hands a block only to work queued after it on the same stream.
    if (release)
      for (void* p : freed) release(p);
  }

  // The owner is going away and frees every block itself: nothing is released from now on
  // (a graph that outlives its backend must not reach a destroyed allocator).
  void detach() {
    std::lock_guard<std::mutex> lock(mu_);
    release_ = nullptr;
    retired_.clear();
  }

  // Bytes of retired blocks still kept for live graphs.
  size_t retired_bytes() const {
    std::lock_guard<std::mutex> lock(mu_);
    size_t total = 0;
    for (const Retired& r : retired_) total += r.bytes;
    return total;
  }
  size_t retired_blocks() const {
    std::lock_guard<std::mutex> lock(mu_);
    return retired_.size();
  }

 private:
  struct Retired {
    void* block;
    size_t bytes;
    uint64_t since, until;  // the generations in which it was current, both included
  };

  // Whether a live graph was recorded in a generation of [first, last].
  bool held_within(uint64_t first, uint64_t last) const {
    auto it = graphs_.lower_bound(first);
    return it != graphs_.end() && it->first <= last;
  }

  mutable std::mutex mu_;
  Release release_;
  uint64_t generation_ = 0;
  std::map<uint64_t, int64_t> graphs_;  // generation -> live graphs recorded in it
  std::vector<Retired> retired_;
};

}  // namespace mpt::cuda
