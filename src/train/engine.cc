#include "train/engine_impl.h"

#include "model/transformer_layer.h"

namespace mpt::train {

// The backend this process trains on: MPT_BACKEND (cpu, cuda, cpu-device) when set, else
// the GPU LOCAL_RANK selects when there is one and this build has the CUDA backend, else
// the CPU.
std::unique_ptr<backend::Ops> make_backend(const dist::LaunchPlace& place) {
  const char* env = std::getenv("MPT_BACKEND");
  const std::string want = env ? env : "";
  if (want == "cpu") return backend::make_cpu_ops(0);
  if (want == "cpu-device") return backend::make_emulated_device_ops(0);
  // Counted only when a GPU is an option: a broken driver is an error there, not on the CPU.
  const int gpus = backend::built_with_cuda() && (want.empty() || want == "cuda") ? backend::cuda_device_count() : 0;
  if (want == "cuda" || (want.empty() && gpus > 0)) {
    MPT_CHECK(gpus > 0, Status::kDevice, "MPT_BACKEND=cuda: no CUDA GPU is visible");
    return backend::make_cuda_ops(static_cast<int>(place.local_rank % gpus));
  }
  MPT_CHECK(want.empty(), Status::kInvalidArgument, "MPT_BACKEND='", want,
            "': expected cpu, cuda or cpu-device");
  return backend::make_cpu_ops(0);
}

Engine::Impl::Impl(const config::Recipe& r, Logger l, const dist::LaunchPlace& p)
    : recipe(r), log(std::move(l)), place(p) {
  MPT_CHECK(recipe.finalized, Status::kInvalidArgument, "Engine needs a finalized recipe (call config::finalize)");
  MPT_CHECK(place.world_size == recipe.derived.world_size, Status::kInvalidArgument, "the recipe was finalized for ",
            recipe.derived.world_size, " ranks but this process is rank ", place.rank, " of ", place.world_size);
  rank0 = place.rank == 0;
  if (!rank0) log.set_level(LogLevel::kWarn);
  ops = make_backend(place);
  const bool on_gpu = std::string(ops->name()).rfind("cuda", 0) == 0;
  dims = model::make_dims(recipe);
  log.info(str("mptrain: backend ", ops->name(), on_gpu ? str(" (", backend::cuda_device_summary(), ")") : std::string(),
               ops->host_memory() ? "" : ", device memory",
               config::uses_bf16(recipe) ? ", bf16 mixed precision (fp32 master weights and gradients)" : ", fp32",
               "; attention: ", ops->attention_summary(model::attention_dims(dims, 0), dims.compute)));
  whole_reg = model::whole_model_registry(dims);
  num_microbatches = recipe.derived.num_microbatches;
  rows = dims.micro_batch * num_microbatches;
  eod_id = recipe.derived.dataset_source == "corpus" ? data::kByteEod : static_cast<int32_t>(dims.vocab - 1);
  {
    // Room for a profiled step's spans: the actions, and per micro-batch and layer of this
    // stage a few collectives, each a comm span and a wait.
    const int64_t layers = dims.num_layers / recipe.model.pipeline_model_parallel_size + 1;
    const size_t spans = static_cast<size_t>(64 + num_microbatches * (16 + 16 * layers));
    profiler = StepProfiler::from_recipe(recipe, place.rank, spans, *ops);
  }
  if (place.world_size > 1) start_distributed();
  build_chunks();
  if (recipe.model.cuda_graph_impl == "local") {
    // finalize() allows graphs only for a dense model, alone or data-parallel with resident
    // gradients.
    MPT_ASSERT(chunks.size() == 1 && chunks[0].model->slots() == 1 && !chunks[0].experts.reg);
    graphs.warmup = recipe.model.cuda_graph_warmup_steps;
    graphs.on = ops->supports_graphs();
    if (graphs.on)
      log.info(str("mptrain: CUDA graphs: a micro-batch's forward and backward are recorded after ", graphs.warmup,
                   " warm-up steps and replayed"));
    else
      log.warn(str("mptrain: model.cuda_graph_impl = \"local\": the ", ops->name(),
                   " backend records no graphs; training without them"));
  }
  schedule = optim::LRSchedule::from_recipe(recipe);
  log.info(str("mptrain: ", whole_reg.num_parameters(), " parameters, ",
               num_microbatches, " micro-batches of ", dims.micro_batch, " x ", dims.seq, " tokens per step",
               dims.recompute.describe() == "none" ? std::string() : ", recompute " + dims.recompute.describe()));
  DataStreams streams = make_streams(recipe, rows * recipe.derived.data_parallel_size);
  for (const std::string& line : streams.log_lines) log.info(str("mptrain: data ", line));
  data::LoaderLayout ll;
  ll.micro_batch = dims.micro_batch;
  ll.num_microbatches = num_microbatches;
  if (layout) {
    dp_rank = ll.dp_rank = layout->coords(place.rank).dp;
    dp_size = ll.dp_size = layout->dp();
    ll.cp_rank = cp.rank();
    ll.cp_size = cp.size();
  }
  data::LoaderOptions lo;
  lo.vocab_size = dims.vocab;
  lo.eod_mask_loss = recipe.dataset.eod_mask_loss;
  lo.eod_id = eod_id;
  lo.prefetch = recipe.dataset.num_workers;
  train_loader = std::make_unique<data::BatchLoader>(streams.train, ll, lo);
  if (streams.valid) valid_loader = std::make_unique<data::BatchLoader>(streams.valid, ll, lo);
  MemoryReport m = memory();
  auto mib = [](int64_t b) { return str(static_cast<double>(b) / (1 << 20), " MiB"); };
  log.info(str("mptrain: memory per rank, allocated once: parameters ", mib(m.params_bytes), ", gradients ",
               mib(m.grads_bytes), ", optimizer ", mib(m.optimizer_bytes), ", activations ",
               mib(m.activations_peak_bytes)));
}

void Engine::Impl::start_distributed() {
  const double timeout = recipe.dist.distributed_timeout_minutes * 60.0;
  if (rank0) store_server = std::make_unique<dist::StoreServer>(static_cast<int>(place.master_port));
  store = std::make_unique<dist::Store>(place.master_addr, static_cast<int>(place.master_port), timeout, place.rank);
  dist::ParallelSizes sizes;
  sizes.world = place.world_size;
  sizes.tp = recipe.model.tensor_model_parallel_size;
  sizes.cp = recipe.model.context_parallel_size;
  sizes.pp = recipe.model.pipeline_model_parallel_size;
  if (dims.num_experts > 0) {
    sizes.ep = dims.ep;
    sizes.etp = dims.etp;
  }
  layout = std::make_unique<dist::ParallelState>(sizes);
  // Whether every rank has a GPU of its own: a rank whose local rank wraps around the
  // node's GPUs shares one. All ranks learn it through the store, so all choose alike.
  const std::string& wanted = recipe.dist.distributed_backend;
  const int gpus = backend::cuda_device_count();
  store->set(str("engine/shares_gpu/", place.rank), gpus > 0 && place.local_rank < gpus ? "0" : "1");
  bool own_gpu = true;
  for (int64_t r = 0; r < place.world_size; ++r) own_gpu = own_gpu && store->get(str("engine/shares_gpu/", r)) == "0";
  const bool device_collectives = !ops->host_memory() && (wanted == "nccl" || (wanted == "auto" && own_gpu));
  MPT_CHECK(wanted != "nccl" || ops->host_memory() || own_gpu, Status::kInvalidConfig,
            "dist.distributed_backend = \"nccl\": ranks share a GPU (", gpus,
            " visible on rank ", place.rank, ") and NCCL needs one per rank; use \"auto\" or \"gloo\"");
  store->wait_ranks("engine/start", place.rank, place.world_size);
  dist::CommOptions co;
  co.timeout_s = timeout;
  auto group = [&](dist::GroupKind kind) {
    const std::vector<int64_t> ranks = layout->group_of(kind, place.rank);
    std::string name = str(dist::group_kind_name(kind), ":");
    for (size_t i = 0; i < ranks.size(); ++i) name += str(i ? "," : "", ranks[i]);
    std::unique_ptr<dist::Communicator> c = dist::make_gloo_communicator(*store, name, ranks, place.rank, co);
    if (ops->host_memory()) return c;
    // Device buffers over NCCL when every rank has a GPU of its own; otherwise (ranks
    // sharing a GPU, which NCCL refuses, or dist.distributed_backend = "gloo") staged
    // through host memory over gloo, which carries host values in every case.
    if (device_collectives) {
      std::unique_ptr<dist::Communicator> d =
          dist::make_device_communicator(*store, name + "/device", ranks, place.rank, co, *ops);
      if (d) return dist::make_hybrid_communicator(std::move(c), std::move(d), *ops);
    }
    return dist::make_staged_communicator(std::move(c), *ops);
  };
  // Profiled: the tensor-, context-, pipeline- and expert-parallel collectives go on the
  // timeline (the data-parallel storages record their own, naming buckets and units).
  auto recorded = [&](std::unique_ptr<dist::Communicator> c, const char* lane) {
    return profiler && c->size() > 1 ? record_collectives(std::move(c), profiler->timeline(), lane) : std::move(c);
  };
  tp_comm = recorded(group(dist::GroupKind::kTp), "tp comm");
  dp_comm = group(dist::GroupKind::kDpCp);
  pp_comm = recorded(group(dist::GroupKind::kPp), "pp comm");
  cp_comm = recorded(group(dist::GroupKind::kCp), "cp comm");
  pp_rank = layout->coords(place.rank).pp;
  pp_size = sizes.pp;
  if (dims.tied_output && pp_size > 1 && (pp_rank == 0 || pp_rank == pp_size - 1))
    emb_comm = group(dist::GroupKind::kEmbedding);
  if (dims.num_experts > 0) {
    etp_ep_comm = recorded(group(dist::GroupKind::kEtpEp), "ep comm");
    edp_comm = group(dist::GroupKind::kEdp);
    etp_comm = group(dist::GroupKind::kEtp);
    ep_comm = group(dist::GroupKind::kEp);
    tpcp_comm = group(dist::GroupKind::kTpCp);
    const dist::RankCoords rc = layout->coords(place.rank);
    ep = parallel::ExpertParallel(etp_ep_comm.get(), dims.ep, rc.ep, dims.etp, rc.etp, tpcp_comm.get(),
                                  parallel::parse_token_dispatcher(recipe.model.moe_token_dispatcher_type));
  }
  tp = parallel::TensorParallel(tp_comm.get(), dims.sequence_parallel);
  cp = parallel::ContextParallel(cp_comm.get(), parallel::parse_cp_comm_type(recipe.model.cp_comm_type));
  log.info(str("mptrain: rank ", place.rank, " of ", place.world_size, ": ", layout->describe(),
               dims.sequence_parallel ? ", sequence parallel" : "",
               cp.size() > 1 ? str(", context parallel (", recipe.model.cp_comm_type, ")") : std::string(),
               "; sharding ",
               recipe.ddp.data_parallel_sharding_strategy));
}

void Engine::Impl::build_chunks() {
  const config::ModelConfig& mc = recipe.model;
  vpp = mc.virtual_pipeline_model_parallel_size.value_or(1);
  pipe.stages = pp_size;
  pipe.chunks = vpp;
  pipe.microbatches = num_microbatches;
  pipe.group = mc.microbatch_group_size_per_vp_stage.value_or(0);
  pipe.kind = pp_size == 1 ? parallel::ScheduleKind::kNone
              : vpp > 1    ? parallel::ScheduleKind::kInterleaved
                           : parallel::ScheduleKind::k1F1B;
  parallel::check_schedule(pipe);
  actions = parallel::pipeline_schedule(pipe, pp_rank);
  // Each chunk keeps as many sets of activations as its micro-batches in flight.
  const std::vector<int64_t> slots = parallel::in_flight_per_chunk(actions, vpp);
  parallel::PipelineSplit split;
  split.num_layers = dims.num_layers;
  split.stages = pp_size;
  split.chunks = vpp;
  split.first = mc.num_layers_in_first_pipeline_stage;
  split.last = mc.num_layers_in_last_pipeline_stage;
  const uint64_t seed = static_cast<uint64_t>(recipe.rng.seed);
  chunks.resize(static_cast<size_t>(vpp));
  for (int64_t c = 0; c < vpp; ++c) {
    Chunk& ch = chunks[static_cast<size_t>(c)];
    model::ModelOptions mo;
    mo.tp = tp;
    mo.cp = cp;
    mo.chunk = parallel::chunk_layers(split, pp_rank, c);
    mo.slots = slots[static_cast<size_t>(c)];
    mo.ep = ep;
    if (dp_comm) {
      const optim::DataParallelConfig dc = dp_config();
      mo.storage = [&](const model::ParamRegistry& reg, const std::vector<model::ParamUnit>& units) {
        auto storage = std::make_unique<optim::DataParallel>(reg, units, *ops, *dp_comm, dc);
        ch.dense.dp = storage.get();
        return std::unique_ptr<model::ParamStorage>(std::move(storage));
      };
      mo.unit_align = model::ParamRegistry::kAlign * dp_comm->size();
      if (edp_comm) {
        mo.expert_storage = [&](const model::ParamRegistry& reg, const std::vector<model::ParamUnit>& units) {
          auto storage = std::make_unique<optim::DataParallel>(reg, units, *ops, *edp_comm, dc);
          ch.experts.dp = storage.get();
          return std::unique_ptr<model::ParamStorage>(std::move(storage));
        };
        mo.expert_unit_align = model::ParamRegistry::kAlign * edp_comm->size();
      }
    }
    ch.model = std::make_unique<model::GPTModel>(dims, *ops, mo);
    const model::ParamRegistry& reg = ch.model->registry();
    ch.dense.reg = &reg;
    ch.dense.storage = &ch.model->storage();
    ch.dense.slices = tp.comm();
    if (ch.model->expert_storage()) {
      ch.experts.reg = &ch.model->expert_registry();
      ch.experts.storage = ch.model->expert_storage();
      ch.experts.slices = etp_comm && etp_comm->size() > 1 ? etp_comm.get() : nullptr;
    }
    if (ch.dense.dp && profiler) {
      ch.dense.dp->set_timeline(&profiler->timeline(), "dp-cp comm");
      if (ch.experts.dp) ch.experts.dp->set_timeline(&profiler->timeline(), "edp comm");
    }
    if (ch.dense.dp) {
      ch.dense.dp->init_parameters(seed);
      if (ch.experts.dp) ch.experts.dp->init_parameters(seed);
      if (dims.sequence_parallel) {
        std::vector<std::pair<int64_t, int64_t>> owned;
        for (const optim::FlatRange& r : ch.dense.dp->owned()) owned.emplace_back(r.begin, r.end);
        ch.sp_grads = std::make_unique<parallel::SequenceParallelGrads>(reg, owned);
      }
    } else {
      ch.model->init_parameters(seed);
    }
    if (emb_comm) {
      const bool pre = mo.chunk->pre_process, post = mo.chunk->post_process;
      if (pre || post) ch.tied = reg.find("embedding.word_embeddings.weight");
    }
    optim::AdamWConfig oc;
    oc.beta1 = recipe.optimizer.adam_beta1;
    oc.beta2 = recipe.optimizer.adam_beta2;
    oc.eps = recipe.optimizer.adam_eps;
    oc.clip_grad = recipe.optimizer.clip_grad;
    for (Part* part : {&ch.dense, &ch.experts}) {
      if (!part->reg) continue;
      part->optimizer = std::make_unique<optim::AdamW>(
          *part->reg, *ops, oc, part->dp ? part->dp->owned() : std::vector<optim::FlatRange>{});
      // Where the update covers every element of the model's bf16 compute copies, it writes
      // them too, and the next step casts none.
      model::ComputeParams* copies =
          part == &ch.dense ? &ch.model->compute_params() : ch.model->expert_compute_params();
      if (copies && copies->resident()) part->optimizer->write_compute_copies(*copies);
    }
    const size_t n = static_cast<size_t>(ch.model->slots());
    ch.out_send.resize(n);
    ch.grad_send.resize(n);
    ch.grad_buf.assign(n, nullptr);
  }
  for (size_t i = 0; i < actions.size(); ++i)
    if (!actions[i].forward) chunks[static_cast<size_t>(actions[i].chunk)].last_backward = static_cast<int64_t>(i);
  // Pipeline messages in the backend's memory: two receive buffers, one send buffer per
  // chunk and slot.
  pipe_buffers = std::make_unique<Arena>(ops.get());
  const size_t msg = static_cast<size_t>(dims.rows() * dims.hidden) * dtype_size(dims.compute);
  size_t at[2] = {pipe_buffers->reserve(msg), pipe_buffers->reserve(msg)};
  std::vector<size_t> grad_at;
  for (Chunk& ch : chunks)
    for (size_t s = 0; s < ch.grad_buf.size(); ++s) grad_at.push_back(pipe_buffers->reserve(msg));
  pipe_buffers->allocate();
  for (int b = 0; b < 2; ++b) recv_stage[b] = pipe_buffers->at<uint8_t>(at[b]);
  size_t g = 0;
  for (Chunk& ch : chunks)
    for (void*& buf : ch.grad_buf) buf = pipe_buffers->at<uint8_t>(grad_at[g++]);
}

optim::DataParallelConfig Engine::Impl::dp_config() const {
  optim::DataParallelConfig c;
  const bool dist_opt = recipe.ddp.use_distributed_optimizer || recipe.optimizer.use_distributed_optimizer;
  c.sharding = optim::parse_sharding(recipe.ddp.data_parallel_sharding_strategy);
  if (dist_opt && c.sharding == optim::Sharding::kNoShard) c.sharding = optim::Sharding::kOptim;
  c.overlap_grad_reduce = recipe.ddp.overlap_grad_reduce;
  if (dims.tied_output) c.param_slots = c.grad_slots = 3;
  if (recipe.ddp.bucket_size) c.bucket_numel = *recipe.ddp.bucket_size;
  else c.bucket_numel = std::max<int64_t>(40000000, 1000000 * dp_comm->size());  // Megatron's default
  return c;
}

double Engine::Impl::grad_norm() {
  double sq = 0, esq = 0;
  for (Chunk& ch : chunks) {
    sq += part_sum_squares(ch.dense);
    esq += part_sum_squares(ch.experts);
  }
  if (tp.size() > 1) tp_comm->all_reduce(&sq, 1, DType::kF64, dist::ReduceOp::kSum);
  if (etp_ep_comm && etp_ep_comm->size() > 1) etp_ep_comm->all_reduce(&esq, 1, DType::kF64, dist::ReduceOp::kSum);
  return std::sqrt(pp_sum(sq + esq));
}

void Engine::Impl::finalize_grads() {
  for (Chunk& ch : chunks) {
    if (ch.dense.dp) ch.dense.dp->finish_grad_sync();
    if (ch.sp_grads) ch.sp_grads->all_reduce(*tp_comm, ch.dense.dp->owned_grads(), *ops);
    if (ch.tied >= 0) {
      const model::ParamInfo& p = ch.model->registry().at(ch.tied);
      std::vector<float> g = ch.dense.dp->gather_grad_range(p.offset, p.offset + p.numel);
      emb_comm->all_reduce(g.data(), static_cast<int64_t>(g.size()), DType::kF32, dist::ReduceOp::kSum);
      ch.dense.dp->store_grad_range(p.offset, p.offset + p.numel, g.data());
    }
    if (ch.experts.dp) {
      // Averaged over the expert-data-parallel group, but each expert saw the tokens of
      // several data-parallel replicas: the objective's mean over dp-cp ranks needs the sum
      // over replicas divided by DP x CP (Megatron's expert_gradient_scaling_factor).
      ch.experts.dp->finish_grad_sync();
      const float f = static_cast<float>(static_cast<double>(edp_comm->size()) / static_cast<double>(dp_comm->size()));
      if (f != 1.0f) {
        const std::vector<optim::FlatRange>& owned = ch.experts.dp->owned();
        for (size_t k = 0; k < owned.size(); ++k)
          ops->scale(Tensor::f32(ch.experts.dp->owned_grads()[k], {owned[k].end - owned[k].begin}), f);
      }
    }
  }
}

bool Engine::Impl::any_rank(bool failed) {
  int64_t f = failed ? 1 : 0;
  for (dist::Communicator* c : {dp_comm.get(), tp_comm.get(), pp_comm.get(), cp_comm.get()})
    if (c) c->all_reduce(&f, 1, DType::kI64, dist::ReduceOp::kMax);
  return f != 0;
}

MemoryReport Engine::Impl::memory() const {
  MemoryReport m;
  for (const Chunk& ch : chunks) {
    m.params_bytes += ch.model->params_bytes();
    m.grads_bytes += ch.model->grads_bytes();
    m.expert_params_bytes += ch.model->expert_params_bytes();
    for (const Part* part : {&ch.dense, &ch.experts})
      if (part->optimizer) m.optimizer_bytes += part->optimizer->state_bytes();
    m.activations_peak_bytes += ch.model->activations_bytes();
  }
  m.backend_workspace_bytes = ops->workspace_bytes();
  m.backend_peak_bytes = ops->peak_bytes();
  return m;
}

StepResult Engine::Impl::step(const HostBatch* batch) {
  const auto t0 = Clock::now();
  double data_wait = 0;
  const data::RankBatch* data_batch = nullptr;
  if (batch) {
    std::exception_ptr invalid;
    try {
      HostBatchShape shape{dims.seq, dims.local_seq(), rows, dims.micro_batch, num_microbatches, dims.vocab,
                           recipe.dataset.eod_mask_loss, eod_id};
      stage_host_batch(*batch, shape, [&](int64_t j) { return cp.position(j, dims.local_seq()); }, host_staging);
      data_batch = &host_staging;
    } catch (const Error&) {
      invalid = std::current_exception();
    }
    if (layout) agree_on_batch(*batch, invalid);
    else if (invalid) std::rethrow_exception(invalid);
  } else {
    if (train_loader->position() != consumed_samples) train_loader->seek(consumed_samples);
    data_batch = &train_loader->next();
    data_wait = train_loader->last_wait_s();
  }

  for (Chunk& ch : chunks) {
    ch.model->zero_grads();
    // The master weights may have changed since the last pass (a step, a load, an init):
    // bf16 compute copies are cast again at first use.
    ch.model->params_changed();
    ch.model->reset_loss();  // a step that failed part-way may have left losses behind
  }
  moe_sums = MoeSums{};
  if (graphs.on) {
    ++graphs.steps;
    // Every micro-batch, the first included, then runs the same backend calls.
    for (Chunk& ch : chunks) ch.model->cast_compute_params();
  }
  reset_slots();
  Timeline* timeline = profiler ? profiler->begin_step(iteration) : nullptr;  // null: not profiled
  for (size_t i = 0; i < actions.size(); ++i) {
    const int64_t index = static_cast<int64_t>(i);
    const parallel::PipelineAction& a = actions[i];
    const Timeline::Point t0 = timeline ? timeline->now() : Timeline::Point();
    if (i + 1 < actions.size() && needs_recv(actions[i + 1])) post_recv(index + 1, actions[i + 1]);
    if (a.forward)
      run_forward(a, index, *data_batch, true);
    else
      run_backward(a, index);
    if (timeline)
      timeline->add_compute(a.forward ? "forward" : "backward", t0, timeline->now(), static_cast<int32_t>(a.microbatch),
                            static_cast<int32_t>(a.chunk));
  }
  wait_sends();
  finalize_grads();
  // The loss lives on the last stage; every rank reports it.
  const double lm_loss = dp_average(pp_sum(take_loss()) / static_cast<double>(num_microbatches));
  const double norm = grad_norm();
  MPT_CHECK(std::isfinite(lm_loss), Status::kNumerical, "iteration ", iteration + 1, ": lm loss is ", lm_loss,
            "; parameters were not updated");
  MPT_CHECK(std::isfinite(norm), Status::kNumerical, "iteration ", iteration + 1, ": gradient norm is ", norm,
            " (NaN or Inf in the gradients); parameters were not updated");

  const double lr = schedule.lr_at(iteration);
  const double wd = schedule.weight_decay_at(iteration);
  for (Chunk& ch : chunks)
    for (Part* part : {&ch.dense, &ch.experts}) {
      if (!part->reg) continue;
      const Timeline::Point t0 = timeline ? timeline->now() : Timeline::Point();
      if (part->dp)
        part->optimizer->step(part->dp->owned_params(), part->dp->owned_grads(), norm, lr, wd);
      else
        part->optimizer->step(part->storage->full_params(), part->storage->full_grads(), norm, lr, wd);
      if (timeline) timeline->add_compute("optimizer", t0, timeline->now());
      if (part->dp) part->dp->finish_step();
    }
  ++iteration;
  if (timeline) {
    ops->synchronize();  // device times are known once the device has passed them
    profiler->end_step(log);
  }
  consumed_samples += rows * recipe.derived.data_parallel_size;

  StepResult r;
  r.iteration = iteration;
  r.lm_loss = lm_loss;
  r.grad_norm = norm;
  r.lr = lr;
  r.tokens = rows * recipe.derived.data_parallel_size * dims.seq;
  r.consumed_samples = consumed_samples;
  r.step_time_s = seconds_since(t0);
  r.data_wait_s = data_wait;
  if (dims.num_experts > 0) {
    // Means over every MoE layer of every stage and micro-batch, averaged over data-parallel ranks.
    // Each rank of a tensor x context group holds its share of a micro-batch's losses.
    double v[4] = {moe_sums.aux, moe_sums.z, moe_sums.spread, moe_sums.layers};
    if (tpcp_comm && tpcp_comm->size() > 1) tpcp_comm->all_reduce(v, 2, DType::kF64, dist::ReduceOp::kSum);
    if (pp_size > 1) pp_comm->all_reduce(v, 4, DType::kF64, dist::ReduceOp::kSum);
    if (dp_comm) dp_comm->all_reduce(v, 4, DType::kF64, dist::ReduceOp::kSum);
    if (v[3] > 0) {
      r.moe_aux_loss = v[0] / v[3];
      r.moe_z_loss = v[1] / v[3];
      r.moe_expert_spread = v[2] / v[3];
    }
  }
  return r;
}

namespace {
// The stop signal received during train(), if any: the handler's only state.
volatile std::sig_atomic_t g_exit_signal = 0;
// A second signal while the first is being honoured stops the process the default way.
extern "C" void on_exit_signal(int s) {
  if (g_exit_signal != 0) {
    ::signal(s, SIG_DFL);
    ::raise(s);
    return;
  }
  g_exit_signal = s;
}
int exit_signal() { return g_exit_signal; }

// Installs the SIGTERM / SIGINT handlers for its lifetime, then restores the previous ones.
class ExitSignalHandlers {
 public:
  ExitSignalHandlers() {
    g_exit_signal = 0;
    struct sigaction action {};
    action.sa_handler = on_exit_signal;
    sigemptyset(&action.sa_mask);
    ::sigaction(SIGTERM, &action, &old_term_);
    ::sigaction(SIGINT, &action, &old_int_);
  }
  ~ExitSignalHandlers() {
    ::sigaction(SIGTERM, &old_term_, nullptr);
    ::sigaction(SIGINT, &old_int_, nullptr);
  }
  ExitSignalHandlers(const ExitSignalHandlers&) = delete;
  ExitSignalHandlers& operator=(const ExitSignalHandlers&) = delete;

 private:
  struct sigaction old_term_ {}, old_int_ {};
};

// Fails at start, not after hours of training, when checkpoints could not be written.
void check_save_dir(const std::string& dir) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  MPT_CHECK(!ec, Status::kIoError, "checkpoint.save: cannot create '", dir, "': ", ec.message());
  MPT_CHECK(::access(dir.c_str(), W_OK | X_OK) == 0, Status::kIoError, "checkpoint.save: '", dir,
            "' is not writable: ", std::strerror(errno));
}
}  // namespace

Engine::Engine(const config::Recipe& recipe, Logger logger, const dist::LaunchPlace& place)
    : impl_(std::make_unique<Impl>(recipe, std::move(logger), place)) {
  const auto& ck = impl_->recipe.checkpoint;
  if (ck.save && impl_->rank0) check_save_dir(*ck.save);
  if (ck.load) {
    if (checkpoint_exists(*ck.load)) {
      load_checkpoint(*ck.load);
    } else {
      MPT_CHECK(!ck.exit_on_missing_checkpoint, Status::kIoError, "checkpoint.load: no checkpoint found in '",
                *ck.load, "' (checkpoint.exit_on_missing_checkpoint is set)");
      impl_->log.warn(str("mptrain: no checkpoint in '", *ck.load, "'; starting from scratch"));
    }
  }
  // Start preparing the first batch while the caller gets ready.
  impl_->train_loader->seek(impl_->consumed_samples);
}

Engine::~Engine() = default;

StepResult Engine::train_step(const HostBatch* batch) { return impl_->step(batch); }

StepResult Engine::train() {
  Impl& m = *impl_;
  const config::Recipe& r = m.recipe;
  const int64_t train_iters = *r.train.train_iters;
  const int64_t stop = r.train.exit_interval ? std::min(train_iters, m.iteration + *r.train.exit_interval) : train_iters;
  MetricsFile metrics;
  if (r.logger.metrics_file && m.rank0) metrics.open(*r.logger.metrics_file, m.iteration == 0);
  std::unique_ptr<TensorBoardWriter> tb;
  if (r.logger.tensorboard_dir && m.rank0) tb = std::make_unique<TensorBoardWriter>(*r.logger.tensorboard_dir);

  // SIGTERM / SIGINT (what a scheduler sends before pre-emption) end training after the
  // current step; the previous handlers come back when train() returns.
  const bool signals = r.checkpoint.exit_signal_handler;
  std::optional<ExitSignalHandlers> handlers;
  if (signals) handlers.emplace();
  m.stopped_by_signal = false;

  StepResult last;
  last.iteration = m.iteration;
  last.consumed_samples = m.consumed_samples;
  const int64_t first_iteration = m.iteration;
  IntervalStats acc;
  int64_t in_interval = 0;
  double interval_time = 0;
  bool memory_logged = false;
  while (m.iteration < stop) {
    last = m.step(nullptr);
    const double tps = static_cast<double>(last.tokens) / last.step_time_s;
    metrics.write_step(last, tps);
    if (!memory_logged) {
      metrics.write_memory(0, m.memory());
      memory_logged = true;
    }
    ++in_interval;
    interval_time += last.step_time_s;
    acc.lm_loss += last.lm_loss;
    acc.grad_norm += last.grad_norm;
    acc.moe_aux_loss += last.moe_aux_loss;
    acc.moe_z_loss += last.moe_z_loss;
    acc.moe_expert_spread += last.moe_expert_spread;
    if (last.iteration % r.logger.log_interval == 0 || last.iteration == stop) {
      IntervalStats s;
      s.iteration = last.iteration;
      s.train_iters = train_iters;
      s.consumed_samples = last.consumed_samples;
      s.global_batch_size = m.rows * r.derived.data_parallel_size;
      s.ms_per_iteration = 1000.0 * interval_time / static_cast<double>(in_interval);
      s.lr = last.lr;
      s.lm_loss = acc.lm_loss / static_cast<double>(in_interval);
      s.grad_norm = acc.grad_norm / static_cast<double>(in_interval);
      s.moe_aux_loss = acc.moe_aux_loss / static_cast<double>(in_interval);
      s.moe_z_loss = acc.moe_z_loss / static_cast<double>(in_interval);
      s.moe_expert_spread = acc.moe_expert_spread / static_cast<double>(in_interval);
      s.tokens_per_sec = static_cast<double>(last.tokens) * static_cast<double>(in_interval) / interval_time;
      m.log.info(format_log_line(s));
      if (tb) {
        tb->add_scalar("lm loss", s.lm_loss, s.iteration);
        tb->add_scalar("grad-norm", s.grad_norm, s.iteration);
        tb->add_scalar("learning-rate", s.lr, s.iteration);
        tb->add_scalar("throughput/tokens-per-sec", s.tokens_per_sec, s.iteration);
        tb->add_scalar("iteration-time-ms", s.ms_per_iteration, s.iteration);
        tb->flush();
      }
      acc = IntervalStats();
      in_interval = 0;
      interval_time = 0;
    }
    if (r.validation.eval_interval && last.iteration % *r.validation.eval_interval == 0) {
      const double vl = m.evaluate();
      m.log.info(str(" validation loss at iteration ", last.iteration, " | lm loss value: ", vl,
                     " | lm loss PPL: ", std::exp(std::min(vl, 20.0))));
      metrics.write_validation(last.iteration, vl);
      if (tb) {
        tb->add_scalar("lm loss validation", vl, last.iteration);
        tb->flush();
      }
    }
    const bool saved = r.checkpoint.save && r.checkpoint.save_interval &&
                       last.iteration % *r.checkpoint.save_interval == 0;
    if (saved) m.save(*r.checkpoint.save, r.checkpoint.async_save);
    // A signal: every rank stops after this same step (they agree on it), with a checkpoint.
    if (signals && m.any_rank(exit_signal() != 0)) {
      m.stopped_by_signal = true;
      m.log.info(str("mptrain: received ", exit_signal() == SIGINT ? "SIGINT" : "a stop signal",
                     "; stopping after iteration ", m.iteration,
                     r.checkpoint.save ? " with a checkpoint" : " (no checkpoint.save: nothing is saved)"));
      if (r.checkpoint.save && !saved) m.save(*r.checkpoint.save, false);
      break;
    }
  }
  if (r.checkpoint.save && m.iteration > first_iteration && !m.stopped_by_signal &&
      !(r.checkpoint.save_interval && m.iteration % *r.checkpoint.save_interval == 0))
    m.save(*r.checkpoint.save, false);
  m.finish_pending_save();
  m.flush_timeline();
  return last;
}

std::string Engine::save_checkpoint(const std::string& save_dir) { return impl_->save(save_dir, false); }

void Engine::load_checkpoint(const std::string& dir) {
  Impl& m = *impl_;
  m.finish_pending_save();
  // Every rank reads the slices it holds from whatever layout saved them, then keeps its
  // shards; the current values stay where the checkpoint has none (checkpoint.load_optim
  // off).
  std::vector<Impl::LocalCopy> copies = m.local_copies(true, false);
  // Each rank verifies the files it reads, so all agree before any keeps what it read.
  CheckpointState st;
  std::exception_ptr error;
  try {
    st = load_local_checkpoint(dir, m.recipe, Impl::buffers(copies));
  } catch (const Error&) {
    error = std::current_exception();
  }
  const bool failed = m.any_rank(error != nullptr);
  if (error) std::rethrow_exception(error);
  MPT_CHECK(!failed, Status::kCorruptData, "rank ", m.place.rank, ": loading the checkpoint in '", dir,
            "' failed on another rank (see its error); nothing was loaded");
  // The compute copies the last step wrote are stale from here on, even if storing fails part-way.
  for (Impl::Chunk& ch : m.chunks)
    for (Impl::Part* part : {&ch.dense, &ch.experts})
      if (part->optimizer) part->optimizer->params_replaced();
  m.store_local_copies(copies);
  if (!m.recipe.checkpoint.finetune) {
    m.iteration = st.iteration;
    m.consumed_samples = st.consumed_samples;
    m.consumed_valid_samples = st.consumed_valid_samples;
    for (Impl::Chunk& ch : m.chunks)
      for (Impl::Part* part : {&ch.dense, &ch.experts})
        if (part->optimizer) part->optimizer->set_step_count(st.optimizer_steps);
  }
  m.log.info(str("mptrain: loaded checkpoint from ", dir, " at iteration ", st.iteration));
}

const config::Recipe& Engine::recipe() const { return impl_->recipe; }
bool Engine::stopped_by_signal() const { return impl_->stopped_by_signal; }
int64_t Engine::iteration() const { return impl_->iteration; }
int64_t Engine::num_parameters() const { return impl_->whole_reg.num_parameters(); }
MemoryReport Engine::memory() const { return impl_->memory(); }
int64_t Engine::dp_bytes_sent() const { return impl_->dp_comm ? impl_->dp_comm->bytes_sent() : 0; }
int64_t Engine::tp_bytes_sent() const { return impl_->tp_comm ? impl_->tp_comm->bytes_sent() : 0; }
int64_t Engine::pp_bytes_sent() const { return impl_->pp_comm ? impl_->pp_comm->bytes_sent() : 0; }
int64_t Engine::cp_bytes_sent() const { return impl_->cp_comm ? impl_->cp_comm->bytes_sent() : 0; }
int64_t Engine::ep_bytes_sent() const { return impl_->etp_ep_comm ? impl_->etp_ep_comm->bytes_sent() : 0; }
int64_t Engine::edp_bytes_sent() const { return impl_->edp_comm ? impl_->edp_comm->bytes_sent() : 0; }

int64_t Engine::flat_numel() const {
  int64_t n = 0;
  for (const Impl::Chunk& ch : impl_->chunks) n += ch.model->flat_numel() + ch.model->expert_registry().total_numel();
  return n;
}

std::vector<float> Engine::gather_parameters() {
  Impl& m = *impl_;
  const std::vector<float> whole = m.gather_whole(Impl::Buffer::kParams);
  std::vector<float> out;
  out.reserve(static_cast<size_t>(m.whole_reg.num_parameters()));
  for (const model::ParamInfo& p : m.whole_reg.params())
    out.insert(out.end(), whole.begin() + p.offset, whole.begin() + p.offset + p.numel);
  return out;
}

std::vector<float> Engine::gather_tensor(const std::string& name, bool gradient) {
  Impl& m = *impl_;
  const int i = m.whole_reg.find(name);
  MPT_CHECK(i >= 0, Status::kInvalidArgument, "gather_tensor: the model has no parameter named '", name, "'");
  const std::vector<float> whole = m.gather_whole(gradient ? Impl::Buffer::kGrads : Impl::Buffer::kParams);
  const model::ParamInfo& p = m.whole_reg.at(i);
  return std::vector<float>(whole.begin() + p.offset, whole.begin() + p.offset + p.numel);
}

std::vector<int64_t> Engine::tensor_shape(const std::string& name) const {
  const int i = impl_->whole_reg.find(name);
  MPT_CHECK(i >= 0, Status::kInvalidArgument, "tensor_shape: the model has no parameter named '", name, "'");
  return impl_->whole_reg.at(i).global_shape;
}

}  // namespace mpt::train
