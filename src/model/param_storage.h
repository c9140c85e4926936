// Where the model finds its parameters and gradients. The flat layout of the registry is
// cut into units — the embedding, each decoder layer, the head (final norm and output
// layer) — each a padded flat range. The model asks for one unit at a time, so a storage
// can keep everything resident (FullStorage), shard gradients (ZeRO-2) or shard parameters
// and gather each unit just before use (FSDP / ZeRO-3): see optim/data_parallel.h.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "backend/ops.h"
#include "core/arena.h"
#include "model/param_registry.h"

namespace mpt::model {

struct ParamUnit {
  std::string name;         // "embedding", "decoder.layers.3", "head"
  int64_t begin = 0, end = 0;  // flat range, begin and end multiples of the model's unit alignment
  int64_t numel() const { return end - begin; }
};

enum class Pass { kForward, kBackward, kEval };

class ParamStorage {
 public:
  virtual ~ParamStorage() = default;
  // The model announces each pass, so a storage can prefetch units in the pass's order
  // (forward: units ascending; backward: descending).
  virtual void begin_pass(Pass pass) { (void)pass; }
  // Unit u's parameters: parameter i of the unit is at ptr + (offset_i - units[u].begin).
  // Valid until params_done(u).
  virtual float* unit_params(int u) = 0;
  virtual void params_done(int u) { (void)u; }
  // Where backward accumulates unit u's gradients, same addressing. Calling it again before
  // grads_done(u) returns the same area.
  virtual float* unit_grads(int u) = 0;
  // Unit u's gradients of this micro-batch are complete.
  virtual void grads_done(int u) { (void)u; }
  virtual void zero_grads() = 0;
  // The whole flat buffers when resident on this rank, else null.
  virtual float* full_params() { return nullptr; }
  virtual float* full_grads() { return nullptr; }
  // Bytes this rank holds for parameters and gradients (working buffers included).
  virtual int64_t params_bytes() const = 0;
  virtual int64_t grads_bytes() const = 0;
};

// Everything resident: one arena with the parameters, then the gradients, in the backend's
// memory.
class FullStorage final : public ParamStorage {
 public:
  FullStorage(int64_t total_numel, backend::Ops& ops);
  float* unit_params(int u) override;
  float* unit_grads(int u) override;
  void zero_grads() override;
  float* full_params() override { return params_; }
  float* full_grads() override { return grads_; }
  int64_t params_bytes() const override { return total_ * 4; }
  int64_t grads_bytes() const override { return total_ * 4; }
  // Set by the model once its units are known.
  void set_units(const std::vector<ParamUnit>* units) { units_ = units; }

 private:
  int64_t total_ = 0;
  backend::Ops& ops_;
  Arena arena_;
  float* params_ = nullptr;
  float* grads_ = nullptr;
  const std::vector<ParamUnit>* units_ = nullptr;
};

}  // namespace mpt::model
