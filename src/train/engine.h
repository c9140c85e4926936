// The engine: owns the backend, the model, the optimizer and the data stream for one rank
// and runs training steps. The CLI and the C ABI are thin layers over this class.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "config/recipe.h"
#include "core/log.h"
#include "dist/launch_env.h"

namespace mpt::train {

// A global batch (this rank's share) supplied by the host instead of the recipe's dataset.
// tokens [rows, cols]; labels [rows, seq] or null; loss_mask [rows, seq] or null.
// With labels, cols == seq_length; without, cols == seq_length + 1 and labels are the
// tokens shifted by one. rows == micro_batch_size * num_microbatches. Sequences are whole:
// under context parallelism each rank takes its own chunks.
struct HostBatch {
  const int32_t* tokens = nullptr;
  const int32_t* labels = nullptr;
  const float* loss_mask = nullptr;
  int64_t rows = 0;
  int64_t cols = 0;
};

struct StepResult {
  int64_t iteration = 0;         // iterations completed, this one included
  double lm_loss = 0;            // mean over micro-batches of the per-token mean loss
  double grad_norm = 0;          // global L2 norm before clipping
  double lr = 0;                 // learning rate this step used
  int64_t tokens = 0;            // tokens in the global batch
  double step_time_s = 0;
  int64_t consumed_samples = 0;  // after this step
  double data_wait_s = 0;        // time the step waited for its batch (0 when prefetched in time)
  // Mixture of experts (0 for a dense model), each the mean over MoE layers and micro-batches:
  // the router's load-balancing loss and z-loss, and the tokens-per-expert spread (the most
  // loaded expert's routed tokens over the mean).
  double moe_aux_loss = 0, moe_z_loss = 0, moe_expert_spread = 0;
};

struct MemoryReport {
  int64_t params_bytes = 0;
  int64_t expert_params_bytes = 0;  // the MoE experts' share of params_bytes
  int64_t grads_bytes = 0;
  int64_t optimizer_bytes = 0;
  int64_t activations_peak_bytes = 0;
  // The backend's own work buffers as of now (Ops::workspace_bytes), outside the above.
  int64_t backend_workspace_bytes = 0;
  // The most backend memory in use at once so far, as its allocator counts it (the GPU's
  // caching allocator: everything above plus transient buffers); 0 on the CPU.
  int64_t backend_peak_bytes = 0;
};

class Engine {
 public:
  // Takes a finalized recipe. Builds the backend, model (this rank's slice), optimizer and
  // data stream; loads checkpoint.load if set. Throws mpt::Error. With world_size > 1 every
  // rank constructs its Engine with its own place: rank 0 hosts the rendezvous store at
  // master_addr:master_port, all ranks meet there and form their process groups. Only
  // rank 0 logs progress and writes metrics; every rank writes its part of a checkpoint.
  Engine(const config::Recipe& recipe, Logger logger, const dist::LaunchPlace& place = dist::LaunchPlace());
  ~Engine();
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  // One global batch: all micro-batches, gradient accumulation, clipping, optimizer step.
  StepResult train_step(const HostBatch* batch = nullptr);

  // Runs train_iters steps from the current iteration with logging, metrics and periodic
  // checkpoints as the recipe says (checkpoint.async_save: written by a background thread
  // while training goes on; the next save, and the end of train(), wait for it). With
  // checkpoint.exit_signal_handler, a SIGTERM or SIGINT ends training after the current
  // step, with a checkpoint when checkpoint.save is set; stopped_by_signal() then says so.
  // Returns the last step's result.
  StepResult train();
  bool stopped_by_signal() const;

  // Saves SAVE_DIR/iter_XXXXXXX/ now (after any save in flight) and updates
  // latest_checkpointed_iteration.txt: every rank writes its own slices; a collective.
  // Returns the directory written on rank 0 (empty on the others).
  std::string save_checkpoint(const std::string& save_dir);
  // Loads a checkpoint: an iter_XXXXXXX directory, or a save directory (its latest).
  void load_checkpoint(const std::string& dir);

  const config::Recipe& recipe() const;
  int64_t iteration() const;
  int64_t num_parameters() const;
  MemoryReport memory() const;
  // Bytes this rank has sent to its data-parallel peers so far.
  int64_t dp_bytes_sent() const;
  // Elements of the flat parameter layout, alignment padding included.
  int64_t flat_numel() const;
  // Bytes this rank has sent to its tensor-parallel peers, to its pipeline neighbours and to
  // its context-parallel peers.
  int64_t tp_bytes_sent() const;
  int64_t pp_bytes_sent() const;
  int64_t cp_bytes_sent() const;
  // Bytes this rank has sent in the MoE token exchange (its expert-tensor x expert-parallel
  // group), and to its expert-data-parallel peers (the experts' gradients).
  int64_t ep_bytes_sent() const;
  int64_t edp_bytes_sent() const;
  // Every parameter in registry order as whole tensors (global shapes), concatenated without
  // padding, gathered over data-parallel shards and tensor-parallel slices: a collective,
  // every rank must call it.
  std::vector<float> gather_parameters();
  // One parameter, or its gradient from the last step (averaged over data-parallel ranks), as
  // the whole tensor in row-major order of its global shape; a collective like
  // gather_parameters. Throws Error(kInvalidArgument) for a name the model does not have.
  std::vector<float> gather_tensor(const std::string& name, bool gradient = false);
  std::vector<int64_t> tensor_shape(const std::string& name) const;  // the global shape

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace mpt::train
