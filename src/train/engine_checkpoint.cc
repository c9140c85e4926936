// Engine::Impl's checkpoint work: what a rank holds as host copies, snapshots, sharded
// saves (synchronous or in the background) and whole-tensor gathers.
#include "train/engine_impl.h"

namespace mpt::train {

std::vector<float> Engine::Impl::local_flat(Part& p, Buffer which) {
  const size_t n = static_cast<size_t>(p.reg->total_numel());
  std::vector<float> flat(n, 0.0f);
  if (!p.dp) {
    const float* src = which == Buffer::kParams   ? p.storage->full_params()
                       : which == Buffer::kGrads  ? p.storage->full_grads()
                       : which == Buffer::kExpAvg ? p.optimizer->exp_avg()
                                                  : p.optimizer->exp_avg_sq();
    ops->to_host(flat.data(), src, n * sizeof(float));
  } else if (which == Buffer::kParams) {
    p.dp->gather_params(flat.data());
  } else if (which == Buffer::kGrads) {
    p.dp->gather_grads(flat.data());
  } else {
    p.dp->gather_owned(which == Buffer::kExpAvg ? p.optimizer->exp_avg() : p.optimizer->exp_avg_sq(), flat.data());
  }
  return flat;
}

std::vector<int> Engine::Impl::whole_expert_params() const {
  std::vector<int> out;
  for (int i = 0; i < static_cast<int>(whole_reg.params().size()); ++i)
    if (whole_reg.at(i).name.find(".mlp.experts.") != std::string::npos) out.push_back(i);
  return out;
}

std::vector<float> Engine::Impl::gather_whole(Buffer which) {
  std::vector<float> whole(static_cast<size_t>(whole_reg.total_numel()), 0.0f);
  for (Chunk& ch : chunks)
    for (Part* part : {&ch.dense, &ch.experts}) {
      if (!part->reg) continue;
      const std::vector<float> flat = local_flat(*part, which);
      const model::ParamRegistry& reg = *part->reg;
      for (int i = 0; i < static_cast<int>(reg.params().size()); ++i) {
        const std::vector<float> w = parallel::gather_whole_param(reg, i, flat.data(), part->slices);
        if (reg.at(i).pipeline_copy) continue;  // the first stage's original is the one kept
        std::copy(w.begin(), w.end(), whole.begin() + whole_reg.at(whole_reg.find(reg.at(i).name)).offset);
      }
    }
  if (ep_comm && ep_comm->size() > 1) {
    const std::vector<int> experts = whole_expert_params();
    std::vector<float> packed;
    for (int i : experts) {
      const model::ParamInfo& p = whole_reg.at(i);
      packed.insert(packed.end(), whole.begin() + p.offset, whole.begin() + p.offset + p.numel);
    }
    ep_comm->all_reduce(packed.data(), static_cast<int64_t>(packed.size()), DType::kF32, dist::ReduceOp::kSum);
    auto at = packed.begin();
    for (int i : experts) {
      const model::ParamInfo& p = whole_reg.at(i);
      std::copy(at, at + p.numel, whole.begin() + p.offset);
      at += p.numel;
    }
  }
  if (pp_size > 1)
    pp_comm->all_reduce(whole.data(), static_cast<int64_t>(whole.size()), DType::kF32, dist::ReduceOp::kSum);
  return whole;
}

std::vector<Engine::Impl::LocalCopy> Engine::Impl::local_copies(bool moments, bool writes) {
  std::vector<LocalCopy> out;
  for (Chunk& ch : chunks)
    for (Part* part : {&ch.dense, &ch.experts}) {
      if (!part->reg) continue;
      LocalCopy c;
      c.part = part;
      c.params = local_flat(*part, Buffer::kParams);
      if (moments) {
        c.exp_avg = local_flat(*part, Buffer::kExpAvg);
        c.exp_avg_sq = local_flat(*part, Buffer::kExpAvgSq);
      }
      if (writes) {
        dist::Communicator* replicas = part == &ch.experts ? edp_comm.get() : dp_comm.get();
        const int64_t n = replicas ? replicas->size() : 1, r = replicas ? replicas->rank() : 0;
        const std::vector<model::ParamInfo>& params = part->reg->params();
        c.writes.resize(params.size());
        for (size_t i = 0; i < params.size(); ++i)
          c.writes[i] = params[i].counted_in_norm() && static_cast<int64_t>(i) % n == r;
      }
      out.push_back(std::move(c));
    }
  return out;
}

std::vector<LocalBuffers> Engine::Impl::buffers(std::vector<LocalCopy>& copies) {
  std::vector<LocalBuffers> out;
  for (LocalCopy& c : copies)
    out.push_back(LocalBuffers{c.part->reg, c.params.data(), c.exp_avg.empty() ? nullptr : c.exp_avg.data(),
                               c.exp_avg_sq.empty() ? nullptr : c.exp_avg_sq.data(), c.writes});
  return out;
}

void Engine::Impl::store_local_copies(std::vector<LocalCopy>& copies) {
  for (LocalCopy& c : copies) {
    Part& p = *c.part;
    if (p.dp) {
      p.dp->load_params(c.params.data());
      p.dp->scatter_owned(c.exp_avg.data(), p.optimizer->exp_avg());
      p.dp->scatter_owned(c.exp_avg_sq.data(), p.optimizer->exp_avg_sq());
    } else {
      ops->to_device(p.storage->full_params(), c.params.data(), c.params.size() * sizeof(float));
      ops->to_device(p.optimizer->exp_avg(), c.exp_avg.data(), c.exp_avg.size() * sizeof(float));
      ops->to_device(p.optimizer->exp_avg_sq(), c.exp_avg_sq.data(), c.exp_avg_sq.size() * sizeof(float));
    }
  }
}

Engine::Impl::SaveJob Engine::Impl::snapshot(const std::string& save_dir) {
  SaveJob job;
  job.copies = local_copies(recipe.checkpoint.save_optim, true);
  job.state.iteration = iteration;
  job.state.consumed_samples = consumed_samples;
  job.state.consumed_valid_samples = consumed_valid_samples;
  job.state.optimizer_steps = chunks[0].dense.optimizer->step_count();
  job.save_dir = save_dir;
  job.key = str("engine/checkpoint/", saves++, "/");
  return job;
}

std::string Engine::Impl::write_checkpoint(SaveJob& job) {
  const std::string& key = job.key;
  std::string staging, dir, failure;
  if (rank0) {
    try {
      staging = ckpt::begin_checkpoint(job.save_dir, job.state.iteration);
    } catch (const Error& e) {
      failure = e.what();
    }
    if (store) store->set(key + "staging", staging);
  } else {
    staging = store->get(key + "staging");
  }
  std::string part;
  if (!staging.empty()) {
    try {
      part = write_rank_shard(staging, place.rank, recipe, buffers(job.copies)).dump();
    } catch (const Error& e) {
      failure = e.what();
    }
  }
  std::string outcome;  // rank 0's verdict: "ok" or what failed
  if (!rank0) {
    store->set(str(key, "part/", place.rank), part);
    outcome = store->get(key + "outcome");
  } else {
    if (!staging.empty()) {
      std::vector<nlohmann::json> parts;
      bool all = !part.empty();
      if (all) parts.push_back(nlohmann::json::parse(part));
      for (int64_t r = 1; r < place.world_size; ++r) {
        const std::string text = store->get(str(key, "part/", r));
        if (text.empty()) all = false;
        else parts.push_back(nlohmann::json::parse(text));
      }
      try {
        MPT_CHECK(all, Status::kIoError, "a rank failed to write its shard into '", staging, "' (see its error)");
        dir = commit_model_checkpoint(job.save_dir, recipe, staging, parts, job.state);
      } catch (const Error& e) {
        if (failure.empty()) failure = e.what();
        ckpt::discard_checkpoint(staging);
      }
      // checkpoint.most_recent_k: older ones go only once this one is complete. A failed
      // removal loses nothing; training goes on.
      if (failure.empty() && recipe.checkpoint.most_recent_k > 0) {
        try {
          ckpt::prune_checkpoints(job.save_dir, recipe.checkpoint.most_recent_k);
        } catch (const Error& e) {
          log.warn(str("mptrain: checkpoint ", dir, " was saved, but removing older checkpoints failed: ", e.what()));
        }
      }
    }
    outcome = failure.empty() ? "ok" : failure;
    if (store) store->set(key + "outcome", outcome);
  }
  MPT_CHECK(failure.empty(), Status::kIoError, "rank ", place.rank, ": saving the checkpoint of iteration ",
            job.state.iteration, " in '", job.save_dir, "' failed: ", failure);
  MPT_CHECK(outcome == "ok", Status::kIoError, "rank ", place.rank, ": saving the checkpoint of iteration ",
            job.state.iteration, " in '", job.save_dir, "' failed on another rank (", outcome,
            "); the previous checkpoint is kept");
  return dir;
}

void Engine::Impl::finish_pending_save() {
  if (!pending_save.valid()) return;
  const auto t0 = Clock::now();
  const std::string dir = pending_save.get();
  log.info(str("mptrain: saved checkpoint ", rank0 ? dir : str("of iteration ", pending_iteration),
               " (in the background; waited ", seconds_since(t0), " s for it)"));
}

std::string Engine::Impl::save(const std::string& save_dir, bool async) {
  finish_pending_save();
  SaveJob job = snapshot(save_dir);
  if (async) {
    pending_iteration = job.state.iteration;
    pending_save = std::async(std::launch::async, [this, j = std::move(job)]() mutable { return write_checkpoint(j); });
    return std::string();
  }
  const std::string dir = write_checkpoint(job);
  log.info(str("mptrain: saved checkpoint ", rank0 ? dir : save_dir));
  return dir;
}

}  // namespace mpt::train
