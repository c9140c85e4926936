// The engine's state (Engine::Impl), shared by the files that implement it: engine.cc
// (construction, process groups, model chunks, the training step, the public calls),
// engine_pipeline.cc (the pipeline executor, micro-batch inputs, evaluation) and
// engine_checkpoint.cc (snapshots, sharded saves and loads, whole-tensor gathers).
// Internal to src/train.
#pragma once

#include "train/engine.h"

#include <signal.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <exception>
#include <cstring>
#include <csignal>
#include <filesystem>
#include <future>
#include <optional>
#include <cmath>
#include <vector>

#include "backend/devices.h"
#include "backend/ops.h"
#include "ckpt/checkpoint.h"
#include "core/rng.h"
#include "data/loader.h"
#include "data/sample_source.h"
#include "dist/communicator.h"
#include "dist/parallel_state.h"
#include "dist/staged_communicator.h"
#include "dist/store.h"
#include "optim/data_parallel.h"
#include "model/gpt_dims.h"
#include "model/gpt_model.h"
#include "optim/adamw.h"
#include "optim/lr_schedule.h"
#include "parallel/context_parallel.h"
#include "parallel/expert_parallel.h"
#include "parallel/pipeline_layout.h"
#include "parallel/pipeline_schedule.h"
#include "parallel/tensor_parallel.h"
#include "train/checkpointing.h"
#include "train/data_streams.h"
#include "train/host_batch.h"
#include "train/metrics.h"
#include "train/tensorboard.h"
#include "train/timeline.h"

namespace mpt::train {

using Clock = std::chrono::steady_clock;
inline double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

// The backend this process trains on (engine.cc).
std::unique_ptr<backend::Ops> make_backend(const dist::LaunchPlace& place);

struct Engine::Impl {
  // Parameters of a chunk that share a storage and an optimizer: the experts of MoE layers
  // apart from the rest, as their gradients reduce over another group.
  struct Part {
    const model::ParamRegistry* reg = nullptr;  // null: the chunk has no such parameters
    model::ParamStorage* storage = nullptr;
    optim::DataParallel* dp = nullptr;          // the storage when distributed
    std::unique_ptr<optim::AdamW> optimizer;
    dist::Communicator* slices = nullptr;       // the group its split tensors are cut over
  };
  // One model chunk of this rank: its layers, storage, optimizer (a pipeline stage with
  // virtual stages holds several).
  struct Chunk {
    std::unique_ptr<model::GPTModel> model;
    Part dense, experts;
    std::unique_ptr<parallel::SequenceParallelGrads> sp_grads;
    int tied = -1;                      // the tied embedding (or its copy) when shared across stages
    int64_t last_backward = -1;         // index of this chunk's last backward in the schedule
    std::vector<int64_t> free_slots;    // activation slots not holding a micro-batch
    std::vector<int64_t> slot_of;       // micro-batch -> slot while in flight
    std::vector<std::shared_ptr<dist::Work>> out_send;  // per slot: its output's send
    std::vector<void*> grad_buf;                        // per slot: d(input) being sent (backend memory)
    std::vector<std::shared_ptr<dist::Work>> grad_send;
  };

  config::Recipe recipe;
  Logger log;
  dist::LaunchPlace place;
  bool rank0 = true;
  // The distributed runtime (world_size > 1).
  std::unique_ptr<dist::StoreServer> store_server;
  std::unique_ptr<dist::Store> store;
  std::unique_ptr<dist::ParallelState> layout;
  std::unique_ptr<dist::Communicator> dp_comm, tp_comm, pp_comm, cp_comm, emb_comm;
  // Mixture of experts: token exchange (etp-ep), expert gradients (edp), expert slices
  // (etp), expert owners (ep), router counts (tp-cp).
  std::unique_ptr<dist::Communicator> etp_ep_comm, edp_comm, etp_comm, ep_comm, tpcp_comm;
  parallel::ExpertParallel ep;        // one rank holding every expert unless expert-parallel
  parallel::TensorParallel tp;        // one rank unless tensor-parallel
  parallel::ContextParallel cp;       // one rank unless context-parallel
  std::unique_ptr<backend::Ops> ops;
  model::GPTDims dims;
  model::ParamRegistry whole_reg;     // the whole model, as checkpoints hold it
  std::vector<Chunk> chunks;
  int64_t pp_rank = 0, pp_size = 1, vpp = 1;
  parallel::ScheduleSpec pipe;
  std::vector<parallel::PipelineAction> actions;
  // Receives are posted one action ahead, so a transfer overlaps the compute before it: two
  // [R,H] buffers, for the action running and the next one.
  struct PostedRecv {
    int64_t index = -1;  // the action it is for
    std::shared_ptr<dist::Work> work;
  };
  PostedRecv posted[2];
  void* recv_stage[2] = {nullptr, nullptr};  // backend memory, [R,H] each in the compute dtype
  std::unique_ptr<Arena> pipe_buffers;        // recv_stage and every chunk's grad_buf
  // Host staging of a micro-batch's inputs, copied into a model slot.
  std::vector<int32_t> in_ids, in_labels;
  std::vector<float> in_mask;
  // The MoE router's figures of the step so far, summed over this rank's layers and
  // micro-batches.
  struct MoeSums {
    double aux = 0, z = 0, spread = 0, layers = 0;
  } moe_sums;
  optim::LRSchedule schedule;
  std::unique_ptr<data::BatchLoader> train_loader, valid_loader;
  data::RankBatch host_staging;  // a host-supplied batch in the loader's layout
  int64_t iteration = 0;
  int64_t consumed_samples = 0;
  int64_t consumed_valid_samples = 0;
  int64_t rows = 0;              // samples per global batch on this rank
  int64_t num_microbatches = 0;
  int32_t eod_id = 0;            // end-of-document id, for dataset.eod_mask_loss
  int64_t dp_rank = 0, dp_size = 1;
  int64_t saves = 0;             // checkpoint saves so far (keys their rendezvous)
  bool stopped_by_signal = false;  // the last train() ended on SIGTERM / SIGINT
  // The [profiling] timeline of this rank; null when it is not profiled.
  std::unique_ptr<StepProfiler> profiler;
  // CUDA graphs (model.cuda_graph_impl = "local"; no model parallelism, so one chunk with
  // one slot):
  // a micro-batch's training forward and its backward, each recorded once in the first step
  // after the warm-up steps and replayed for every micro-batch from then on. What differs
  // between micro-batches (tokens, labels, loss and gradient weights, the dropout seed) is
  // written to backend memory before each replay; what a recording fixes (addresses, the
  // step-invariant scalars, the model's dropout keys) is the same in every step of this
  // engine.
  struct Graphs {
    bool on = false;        // asked for, and the backend records graphs
    int64_t warmup = 0;     // steps run eagerly first
    int64_t steps = 0;      // training steps this engine has started
    std::unique_ptr<backend::Graph> forward, backward;
  } graphs;

  Impl(const config::Recipe& r, Logger l, const dist::LaunchPlace& p);

  // Rendezvous and process groups: tensor-parallel (tp), data-parallel (dp-cp), pipeline (pp),
  // context-parallel (cp) and, for an output layer tied to the embedding across stages, the
  // embedding group.
  // Every rank forms its groups in the same order.
  void start_distributed();

  // This rank's model chunks, the pipeline schedule it runs and the activation slots it needs.
  void build_chunks();

  optim::DataParallelConfig dp_config() const;

  double dp_average(double v) {
    if (dp_comm) dp_comm->all_reduce(&v, 1, DType::kF64, dist::ReduceOp::kAvg);
    return v;
  }

  // The sum of a value over the pipeline stages (each contributes its part).
  double pp_sum(double v) {
    if (pp_size > 1) pp_comm->all_reduce(&v, 1, DType::kF64, dist::ReduceOp::kSum);
    return v;
  }

  static double part_sum_squares(Part& p) {
    if (!p.reg) return 0;
    return p.dp ? p.dp->grad_sum_squares(*p.optimizer) : p.optimizer->grad_sum_squares(p.storage->full_grads());
  }

  // The global gradient norm: each element counted once over data-, tensor- and pipeline-
  // parallel ranks; experts once over expert-data-parallel ranks, summed over the experts'
  // owners (the etp-ep group).
  double grad_norm();

  // After the data-parallel reduction: gradients that other groups share. Sequence-parallel
  // parameters sum over TP; the output layer tied to the embedding on another stage sums
  // with it over the embedding group.
  void finalize_grads();

  // What a chunk holds, as whole-model buffers: parameters, gradients or Adam moments.
  enum class Buffer { kParams, kGrads, kExpAvg, kExpAvgSq };

  // A part's flat buffer of that kind, gathered over data-parallel shards.
  std::vector<float> local_flat(Part& p, Buffer which);

  // The whole model's expert tensors, in whole_reg order: each rank holds only its
  // expert-parallel rank's experts, so the others are summed in over the ep group.
  std::vector<int> whole_expert_params() const;

  // The whole model's buffer of that kind laid out by whole_reg, on every rank: gathered over
  // data-parallel shards, tensor-parallel slices, expert owners and pipeline stages (a
  // collective).
  std::vector<float> gather_whole(Buffer which);
  // What this rank holds of a part as whole local slices (gathered over data-parallel
  // shards: a collective), for checkpoints.
  struct LocalCopy {
    Part* part = nullptr;
    std::vector<float> params, exp_avg, exp_avg_sq;
    std::vector<bool> writes;
  };

  // writes: mark the parameters this rank saves: each tensor slice once over its replicas
  // (data-parallel ranks, spread by parameter index; tensor-parallel rank 0 for tensors
  // replicated over TP; the first stage's original of a tied output layer).
  std::vector<LocalCopy> local_copies(bool moments, bool writes);

  static std::vector<LocalBuffers> buffers(std::vector<LocalCopy>& copies);

  // Puts loaded local copies back: each part keeps its shards.
  void store_local_copies(std::vector<LocalCopy>& copies);
  // A checkpoint to write: every rank's slices, taken at a step boundary.
  struct SaveJob {
    std::vector<LocalCopy> copies;
    CheckpointState state;
    std::string save_dir, key;
  };
  std::future<std::string> pending_save;  // checkpoint.async_save: the save in flight
  int64_t pending_iteration = -1;

  // The snapshot (a collective: sharded slices are gathered over data-parallel ranks).
  SaveJob snapshot(const std::string& save_dir);

  // Writes a snapshot: file I/O and the rendezvous store only, no communicator, so it may
  // run beside training. Every rank writes its own shard file into one staging directory
  // that rank 0 made; rank 0 commits once every shard is written (and prunes to
  // checkpoint.most_recent_k) and tells every rank the outcome. Returns the directory on
  // rank 0 (empty elsewhere); throws Error(kIoError) on every rank when any rank failed,
  // the previous checkpoint then being kept.
  std::string write_checkpoint(SaveJob& job);

  // Waits for an asynchronous save in flight; rethrows its failure.
  void finish_pending_save();
  // Writes the timeline recorded and not yet written (training stopped inside the window).
  void flush_timeline() {
    if (profiler) profiler->flush();
  }

  // Saves at this step boundary: after the previous save has finished, a snapshot, written
  // now or (async) by a background thread while training goes on.
  std::string save(const std::string& save_dir, bool async);

  ~Impl() {
    try {
      flush_timeline();
    } catch (const Error& e) {
      log.error(e.what());
    }
    if (!pending_save.valid()) return;
    try {
      finish_pending_save();
    } catch (const Error& e) {
      log.error(e.what());
    }
  }

  // True on every rank when `failed` is true on any.
  bool any_rank(bool failed);

  MemoryReport memory() const;

  // Copies micro-batch `mb` of a batch (this rank's columns) into a model slot's token-major
  // inputs.
  void load_microbatch(model::GPTModel& m, int64_t slot, int64_t mb, const data::RankBatch& batch);

  // Every rank of a tensor- or context-parallel group, and every stage of a pipeline,
  // computes on the same samples. A host-supplied batch that differs between them would
  // train a silently wrong model, so the ranks compare a hash of it. `invalid` is this rank's
  // own rejection of its batch (stage_host_batch), if any. A collective: every rank takes
  // part whatever its batch, so a rank that fails never leaves the others waiting; all of
  // them fail alike when any batch was rejected or differs.
  void agree_on_batch(const HostBatch& b, std::exception_ptr invalid);

  uint64_t dropout_key(int64_t it, int64_t mb) const {
    return mix_key(mix_key(static_cast<uint64_t>(recipe.rng.seed), static_cast<uint64_t>(it)), static_cast<uint64_t>(mb));
  }
  // Before a training action of micro-batch `mb`: its dropout masks. They are keyed by the
  // micro-batch's index in the global batch, so dropout draws the same masks at every
  // data-parallel layout, through the backend's dropout seed; the model's keys (returned)
  // are the same for every micro-batch, so that a recorded graph draws this micro-batch's
  // masks when replayed.
  uint64_t seed_dropout(int64_t mb) {
    if (dims.hidden_dropout > 0 || dims.attention_dropout > 0)
      ops->set_dropout_seed(dropout_key(iteration, mb * dp_size + dp_rank));
    return static_cast<uint64_t>(recipe.rng.seed);
  }

  // Pipeline neighbours of (this stage, chunk c): the stage and chunk of the previous and
  // next virtual stage (virtual stage v = c * P + stage).
  int64_t prev_stage() const { return (pp_rank + pp_size - 1) % pp_size; }
  int64_t next_stage() const { return (pp_rank + 1) % pp_size; }
  // Message tags: unique per direction, receiving chunk and micro-batch within a step.
  int64_t tag(bool forward, int64_t recv_chunk, int64_t mb) const {
    return ((forward ? 0 : 1) * vpp + recv_chunk) * num_microbatches + mb;
  }

  // Whether action `a` takes a message from a neighbour: the input of a chunk without the
  // embedding, the output gradient of a chunk without the loss.
  bool needs_recv(const parallel::PipelineAction& a) const {
    const parallel::ChunkLayers& c = chunks[static_cast<size_t>(a.chunk)].model->chunk();
    return a.forward ? !c.pre_process : !c.post_process;
  }

  void post_recv(int64_t index, const parallel::PipelineAction& a);

  // The message for action `index`, posting its receive now if it was not posted ahead.
  void* take_recv(int64_t index, const parallel::PipelineAction& a);

  // One pipeline action (number `index` of the step). Sends are posted asynchronously and
  // waited on only when their buffer is reused.
  void run_forward(const parallel::PipelineAction& a, int64_t index, const data::RankBatch& batch, bool training);
  // The micro-batch losses (each its token mean) summed since the last call, on the last
  // stage (0 elsewhere), over the whole sequence under context parallelism: one device read.
  double take_loss();

  void run_backward(const parallel::PipelineAction& a, int64_t index);

  // Runs `pass` (a model forward or backward, backend calls only) eagerly, or through the
  // graph `g`: recorded from it the first time past the warm-up steps, then replayed.
  // A recording that fails is an error naming the call, and the step fails before any
  // parameter changes. `replayed` runs after each replay that `pass` did not just record
  // (the host-side state `pass` keeps);
  // `graphable` false: eagerly in any case.
  template <class Pass, class Replayed>
  void run_graphed(std::unique_ptr<backend::Graph>& g, const char* what, Pass&& pass, Replayed&& replayed,
                   bool graphable = true);

  void reset_slots();

  void wait_sends();

  StepResult step(const HostBatch* batch);

  // eval_iters global batches of the validation split, continuing where the previous
  // evaluation stopped (Megatron's consumed_valid_samples). Forward only: each stage runs
  // its chunks micro-batch by micro-batch in virtual-stage order.
  double evaluate();
};

template <class Pass, class Replayed>
void Engine::Impl::run_graphed(std::unique_ptr<backend::Graph>& g, const char* what, Pass&& pass, Replayed&& replayed,
                               bool graphable) {
  if (!graphs.on || graphs.steps <= graphs.warmup || !graphable) {
    pass();
    return;
  }
  const bool recorded_now = !g;  // then `pass` ran its host side while recording
  if (recorded_now) {
    ops->begin_capture();
    try {
      pass();
      g = ops->end_capture();
    } catch (const Error& e) {
      if (ops->capturing()) {
        try {
          ops->end_capture();
        } catch (const Error&) {
          // The recording is dropped; the first error names what spoiled it.
        }
      }
      fail(e.status(), "iteration ", iteration + 1, ": recording the micro-batch's ", what,
           " as a CUDA graph failed: ", e.what(), "; parameters were not updated (set model.cuda_graph_impl = "
           "\"none\" to train without graphs)");
    }
    log.info(str("mptrain: CUDA graph of a micro-batch's ", what, " recorded at iteration ", iteration + 1, ": ",
                 g->nodes(), " nodes"));
  }
  g->replay();
  if (!recorded_now) replayed();
}

}  // namespace mpt::train
