// Engine::Impl's pipeline executor: micro-batch inputs, the host-batch agreement, pipeline
// messages, each action's forward and backward, and evaluation.
#include "train/engine_impl.h"

namespace mpt::train {

void Engine::Impl::load_microbatch(model::GPTModel& m, int64_t slot, int64_t mb, const data::RankBatch& batch) {
  const int64_t B = dims.micro_batch, S = dims.local_seq(), T = B * S;
  MPT_ASSERT(batch.cols == S);
  in_ids.resize(static_cast<size_t>(T));
  in_labels.resize(static_cast<size_t>(T));
  in_mask.resize(static_cast<size_t>(T));
  for (int64_t b = 0; b < B; ++b) {
    const size_t row = static_cast<size_t>((mb * B + b) * S);
    for (int64_t s = 0; s < S; ++s) {
      const size_t t = static_cast<size_t>(s * B + b);
      const float mask = batch.loss_mask[row + static_cast<size_t>(s)];
      in_ids[t] = batch.tokens[row + static_cast<size_t>(s)];
      in_labels[t] = mask == 0.0f ? 0 : batch.labels[row + static_cast<size_t>(s)];  // masked targets may hold any value
      in_mask[t] = mask;
    }
  }
  m.load_input(slot, model::MicroBatchInput{in_ids.data(), in_labels.data(), in_mask.data()});
}

void Engine::Impl::agree_on_batch(const HostBatch& b, std::exception_ptr invalid) {
  uint64_t h = 0;  // a rejected batch is not read
  if (!invalid) {
    h = 1469598103934665603ull;
    auto mix = [&](const void* p, int64_t count, size_t size) {
      if (p == nullptr) return;
      const auto* c = static_cast<const unsigned char*>(p);
      for (size_t i = 0; i < static_cast<size_t>(count) * size; ++i) h = (h ^ c[i]) * 1099511628211ull;
    };
    const int64_t n = b.rows * dims.seq;
    mix(b.tokens, b.rows * b.cols, sizeof(int32_t));
    mix(b.labels, n, sizeof(int32_t));
    mix(b.loss_mask, n, sizeof(float));
  }
  std::string problem;
  for (dist::Communicator* c : {tp_comm.get(), cp_comm.get(), pp_comm.get()}) {
    if (c == nullptr || c->size() == 1) continue;
    std::vector<int64_t> all(static_cast<size_t>(c->size()));
    const int64_t mine = static_cast<int64_t>(h);
    c->all_gather(&mine, all.data(), 1, DType::kI64);
    for (int64_t r = 0; r < c->size() && problem.empty(); ++r)
      if (all[static_cast<size_t>(r)] != all[0])
        problem = str("rank ", place.rank, ": the batch passed to this step differs between ",
                      c == tp_comm.get() ? "tensor" : c == cp_comm.get() ? "context" : "pipeline",
                      "-parallel ranks (group ", c->name(), ": group rank ", r,
                      " differs from group rank 0, or was rejected there)");
  }
  const bool any = any_rank(invalid != nullptr || !problem.empty());
  if (invalid) std::rethrow_exception(invalid);
  const char* rule = "; every rank of a tensor- or context-parallel group and every pipeline stage must pass the "
                     "same batch, its data-parallel rank's share of whole sequences";
  MPT_CHECK(problem.empty(), Status::kInvalidArgument, problem, rule);
  MPT_CHECK(!any, Status::kInvalidArgument, "rank ", place.rank,
            ": the batch passed to this step differs between the ranks of another group, or was rejected on "
            "another rank (see its error)", rule);
}

void Engine::Impl::post_recv(int64_t index, const parallel::PipelineAction& a) {
  PostedRecv& p = posted[index % 2];
  MPT_ASSERT(!p.work);
  p.index = index;
  p.work = pp_comm->recv_async(recv_stage[index % 2], dims.rows() * dims.hidden, dims.compute,
                               a.forward ? prev_stage() : next_stage(), tag(a.forward, a.chunk, a.microbatch));
}

void* Engine::Impl::take_recv(int64_t index, const parallel::PipelineAction& a) {
  PostedRecv& p = posted[index % 2];
  if (p.index != index || !p.work) post_recv(index, a);
  p.work->wait();
  p.work.reset();
  p.index = -1;
  return recv_stage[index % 2];
}

void Engine::Impl::run_forward(const parallel::PipelineAction& a, int64_t index, const data::RankBatch& batch,
                               bool training) {
  Chunk& ch = chunks[static_cast<size_t>(a.chunk)];
  model::GPTModel& m = *ch.model;
  MPT_ASSERT(!ch.free_slots.empty());
  const int64_t slot = ch.free_slots.back();
  ch.free_slots.pop_back();
  ch.slot_of[static_cast<size_t>(a.microbatch)] = slot;
  load_microbatch(m, slot, a.microbatch, batch);
  if (!m.chunk().pre_process) {
    const Tensor in = m.chunk_input(slot);
    const void* msg = take_recv(index, a);
    ops->device_copy(in.data, msg, in.bytes());
  }
  const uint64_t key = training ? seed_dropout(a.microbatch) : 0;
  model::LossWeights weights;
  if (m.chunk().post_process) {
    // Megatron: per-micro-batch token mean, averaged over micro-batches. Under context
    // parallelism the mean is over the whole sequence: the mask sums add over the group
    // (host values: no device read).
    double denom = m.mask_sum(slot);
    if (cp.size() > 1) cp_comm->all_reduce(&denom, 1, DType::kF64, dist::ReduceOp::kSum);
    denom = denom > 0 ? denom : 1.0;
    weights.loss = 1.0 / denom;
    // Gradients are averaged over dp-cp ranks, but context-parallel ranks hold parts of one
    // sequence's gradient, which add: their loss is scaled by the CP size, as Megatron does.
    if (training)
      weights.grad = static_cast<float>(static_cast<double>(cp.size()) / (denom * static_cast<double>(num_microbatches)));
  }
  m.prepare_forward(slot, weights);
  model::GPTModel::LossSums s;
  if (training)
    run_graphed(graphs.forward, "forward", [&] { s = m.forward_prepared(key, true, slot); },
                [&] { m.forward_replayed(slot); });
  else
    s = m.forward_prepared(key, false, slot);
  moe_sums.aux += s.moe_aux_loss;
  moe_sums.z += s.moe_z_loss;
  moe_sums.spread += s.moe_spread;
  moe_sums.layers += static_cast<double>(s.moe_layers);
  if (!m.chunk().post_process) {
    const Tensor out = m.chunk_output(slot);
    const int64_t to_chunk = pp_rank == pp_size - 1 ? a.chunk + 1 : a.chunk;
    ch.out_send[static_cast<size_t>(slot)] =
        pp_comm->send_async(out.data, out.numel(), out.dtype, next_stage(), tag(true, to_chunk, a.microbatch));
  }
}

double Engine::Impl::take_loss() {
  double loss = 0;
  for (Chunk& ch : chunks) loss += ch.model->take_loss();
  if (cp.size() > 1) cp_comm->all_reduce(&loss, 1, DType::kF64, dist::ReduceOp::kSum);
  return loss;
}

void Engine::Impl::run_backward(const parallel::PipelineAction& a, int64_t index) {
  Chunk& ch = chunks[static_cast<size_t>(a.chunk)];
  model::GPTModel& m = *ch.model;
  const int64_t slot = ch.slot_of[static_cast<size_t>(a.microbatch)];
  for (Part* part : {&ch.dense, &ch.experts})
    if (part->dp) part->dp->set_last_microbatch(index == ch.last_backward);
  Tensor dout;
  if (!m.chunk().post_process) dout = Tensor(take_recv(index, a), dims.compute, {dims.rows(), dims.hidden});
  const uint64_t key = seed_dropout(a.microbatch);
  // The router's losses weigh 1 / micro-batches (Megatron's MoEAuxLossAutoScaler), times
  // CP for the same reason.
  const double aux_scale = static_cast<double>(cp.size()) / static_cast<double>(num_microbatches);
  // The last backward of a data-parallel step hands each unit's gradients to the reduction
  // (host bookkeeping and, with overlap_grad_reduce, collectives): it runs eagerly.
  const bool graphable = !(ch.dense.dp && index == ch.last_backward);
  run_graphed(graphs.backward, "backward", [&] { m.backward(key, slot, dout, static_cast<float>(aux_scale)); },
              [&] { m.backward_replayed(slot); }, graphable);
  const size_t s = static_cast<size_t>(slot);
  if (!m.chunk().pre_process) {
    if (ch.grad_send[s]) ch.grad_send[s]->wait();
    const Tensor din = m.input_grad();
    ops->device_copy(ch.grad_buf[s], din.data, din.bytes());
    const int64_t to_chunk = pp_rank == 0 ? a.chunk - 1 : a.chunk;
    ch.grad_send[s] = pp_comm->send_async(ch.grad_buf[s], din.numel(), din.dtype, prev_stage(),
                                          tag(false, to_chunk, a.microbatch));
  }
  if (ch.out_send[s]) {
    ch.out_send[s]->wait();
    ch.out_send[s].reset();
  }
  ch.free_slots.push_back(slot);
}

void Engine::Impl::reset_slots() {
  for (Chunk& ch : chunks) {
    ch.free_slots.clear();
    for (int64_t s = ch.model->slots() - 1; s >= 0; --s) ch.free_slots.push_back(s);
    ch.slot_of.assign(static_cast<size_t>(num_microbatches), -1);
  }
}

void Engine::Impl::wait_sends() {
  for (Chunk& ch : chunks)
    for (auto* works : {&ch.out_send, &ch.grad_send})
      for (auto& w : *works)
        if (w) {
          w->wait();
          w.reset();
        }
}

double Engine::Impl::evaluate() {
  MPT_CHECK(valid_loader != nullptr, Status::kInvalidConfig,
            "validation needs validation.eval_interval set when the engine is built");
  const int64_t iters = recipe.validation.eval_iters;
  for (Chunk& ch : chunks) {
    ch.model->params_changed();
    ch.model->reset_loss();
  }
  if (valid_loader->position() != consumed_valid_samples) valid_loader->seek(consumed_valid_samples);
  for (int64_t i = 0; i < iters; ++i) {
    const data::RankBatch& vb = valid_loader->next();
    consumed_valid_samples += valid_loader->global_batch();
    reset_slots();
    for (int64_t mb = 0; mb < num_microbatches; ++mb)
      for (int64_t c = 0; c < vpp; ++c) {
        Chunk& ch = chunks[static_cast<size_t>(c)];
        run_forward(parallel::PipelineAction{true, mb, c}, mb * vpp + c, vb, false);
        const int64_t slot = ch.slot_of[static_cast<size_t>(mb)];
        if (ch.out_send[static_cast<size_t>(slot)]) {
          ch.out_send[static_cast<size_t>(slot)]->wait();
          ch.out_send[static_cast<size_t>(slot)].reset();
        }
        ch.free_slots.push_back(slot);
      }
  }
  return dp_average(pp_sum(take_loss()) / static_cast<double>(iters * num_microbatches));
}

}  // namespace mpt::train
