// The data-parallel family as a parameter storage: DDP and the distributed optimizer
// (ZeRO-1/2) and FSDP (ZeRO-3), selected by ddp.data_parallel_sharding_strategy.
//
// Gradients are reduced over the data-parallel (dp-cp) group in buckets: contiguous runs of
// the model's units (embedding, layers, head), each a multiple of the group size so it
// splits into equal shards; rank r owns shard r of every bucket. A bucket is launched
// asynchronously as soon as backward has finished all of its units — on the last
// micro-batch only for no_shard and optim, on every micro-batch for optim_grads and
// optim_grads_params, whose gradients do not stay resident — so reduction overlaps the rest
// of backward (ddp.overlap_grad_reduce; without it everything is reduced after backward).
//
//   no_shard            params and grads resident; grads all-reduced (averaged).
//   optim               params and grads resident; grads reduce-scattered into this rank's
//                       shard, the optimizer updates the shard, params all-gathered.
//   optim_grads         params resident; each unit's grads live in a working buffer only
//                       until reduce-scattered and added into the resident shard.
//   optim_grads_params  params sharded at rest too: each unit is all-gathered into a
//                       working buffer just before use (the next unit in the pass
//                       prefetched) and released after; the optimizer updates the shard.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "backend/ops.h"
#include "core/arena.h"
#include "core/timeline.h"
#include "dist/communicator.h"
#include "model/param_storage.h"
#include "optim/adamw.h"

namespace mpt::optim {

enum class Sharding { kNoShard, kOptim, kOptimGrads, kOptimGradsParams };
// Parses Megatron's names ("no_shard", "optim", ...); throws Error(kInvalidConfig).
Sharding parse_sharding(const std::string& name);
const char* sharding_name(Sharding s);

struct DataParallelConfig {
  Sharding sharding = Sharding::kNoShard;
  bool overlap_grad_reduce = true;
  int64_t bucket_numel = 40000000;  // no_shard/optim: units are merged into buckets up to this size
  // Units held at once in working buffers: the one in use and the one prefetched or in
  // flight, plus the embedding when the output layer is tied to it (its gradients stay open
  // through backward, its parameters are read again by the head).
  int64_t param_slots = 2;          // optim_grads_params: gathered units
  int64_t grad_slots = 2;           // optim_grads(_params): unit gradient buffers
};

class DataParallel final : public model::ParamStorage {
 public:
  // comm: the data-parallel group (size 1 is fine: nothing is sent). Units must be
  // multiples of comm.size() elements (GPTModel's unit_align).
  DataParallel(const model::ParamRegistry& registry, const std::vector<model::ParamUnit>& units,
               backend::Ops& ops, dist::Communicator& comm, const DataParallelConfig& config);
  ~DataParallel() override;

  // ParamStorage.
  void begin_pass(model::Pass pass) override;
  float* unit_params(int u) override;
  void params_done(int u) override;
  float* unit_grads(int u) override;
  void grads_done(int u) override;
  void zero_grads() override;
  float* full_params() override;
  float* full_grads() override;
  int64_t params_bytes() const override;
  int64_t grads_bytes() const override;

  // Initialises the parameters this rank holds (all, or its shards) from the
  // layout-invariant generator.
  void init_parameters(uint64_t seed);

  // The engine marks the last micro-batch of a step: buckets of no_shard/optim launch then.
  void set_last_microbatch(bool last) { last_microbatch_ = last; }
  // Waits for every gradient reduction of the step. Afterwards the owned gradients hold the
  // data-parallel average.
  void finish_grad_sync();
  // The ranges this rank's optimizer updates and where their parameters and gradients are.
  const std::vector<FlatRange>& owned() const { return owned_; }
  const std::vector<float*>& owned_params() const { return owned_params_; }
  const std::vector<float*>& owned_grads() const { return owned_grads_; }
  // The sum of squares of the owned gradients (those the norm counts on this rank, see
  // ParamInfo::counted_in_norm), summed over the group when they are sharded, so each element
  // is counted once. The global norm is its square root once summed over model-parallel ranks.
  double grad_sum_squares(const AdamW& optimizer);
  // After the optimizer step: all-gathers updated parameters (optim, optim_grads).
  void finish_step();

  // Gathers a compact owned-layout buffer (e.g. optimizer moments) into a whole-layout one,
  // on every rank; and the reverse (takes this rank's shards of a whole-layout buffer).
  void gather_owned(const float* owned_compact, float* whole);
  void scatter_owned(const float* whole, float* owned_compact) const;
  // Loads a whole-layout parameter buffer (e.g. from a checkpoint) into this rank's storage.
  void load_params(const float* whole);
  // The whole parameters, gathered when sharded (for checkpoints).
  void gather_params(float* whole);
  // The whole averaged gradients after finish_grad_sync(), gathered when sharded.
  void gather_grads(float* whole);
  // The averaged gradients of flat elements [begin, end), a range inside one unit, gathered
  // when sharded (a collective over the group); and the reverse: overwrites this rank's
  // gradients of that range with values[0, end - begin). For gradients summed with another
  // group after the data-parallel reduction (tied embeddings across pipeline stages).
  std::vector<float> gather_grad_range(int64_t begin, int64_t end);
  void store_grad_range(int64_t begin, int64_t end, const float* values);

  dist::Communicator& comm() { return comm_; }
  Sharding sharding() const { return cfg_.sharding; }
  int64_t num_buckets() const;
  // Records this storage's collectives (bucket and unit reductions, parameter gathers) on
  // `timeline` while it records, on lane `lane` (static text); null: not profiled.
  void set_timeline(Timeline* timeline, const char* lane);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  dist::Communicator& comm_;
  DataParallelConfig cfg_;
  bool last_microbatch_ = true;
  std::vector<FlatRange> owned_;
  std::vector<float*> owned_params_, owned_grads_;
};

}  // namespace mpt::optim
