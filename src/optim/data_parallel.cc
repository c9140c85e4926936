#include "optim/data_parallel.h"

#include <algorithm>
#include <cstring>
#include <deque>

#include "core/error.h"

namespace mpt::optim {

Sharding parse_sharding(const std::string& name) {
  if (name == "no_shard") return Sharding::kNoShard;
  if (name == "optim") return Sharding::kOptim;
  if (name == "optim_grads") return Sharding::kOptimGrads;
  if (name == "optim_grads_params") return Sharding::kOptimGradsParams;
  fail(Status::kInvalidConfig, "ddp.data_parallel_sharding_strategy: unknown strategy '", name,
       "' (no_shard, optim, optim_grads, optim_grads_params)");
}

const char* sharding_name(Sharding s) {
  switch (s) {
    case Sharding::kNoShard: return "no_shard";
    case Sharding::kOptim: return "optim";
    case Sharding::kOptimGrads: return "optim_grads";
    case Sharding::kOptimGradsParams: return "optim_grads_params";
  }
  return "?";
}

namespace {

struct Bucket {
  int64_t begin = 0, end = 0;  // flat range: whole units
  int first_unit = 0, last_unit = 0;
  int64_t shard_offset = 0;    // where this rank's shard sits in the compact owned buffers
  int remaining = 0;           // units whose gradients are not final yet this step
  std::shared_ptr<dist::Work> work;
  int64_t numel() const { return end - begin; }
};

// A collective's name on the timeline, and the name of the compute thread's wait for it.
struct CommName {
  const char* op;
  const char* wait;
};
constexpr CommName kGradAllReduce{"grad all-reduce", "wait grad all-reduce"};
constexpr CommName kGradReduceScatter{"grad reduce-scatter", "wait grad reduce-scatter"};
constexpr CommName kParamAllGather{"param all-gather", "wait param all-gather"};

// A unit's reduce-scatter in flight (optim_grads, optim_grads_params).
struct PendingGrad {
  int unit = 0, slot = 0;
  std::shared_ptr<dist::Work> work;
};

}  // namespace

struct DataParallel::Impl {
  const model::ParamRegistry& reg;
  const std::vector<model::ParamUnit>& units;
  backend::Ops& ops;
  dist::Communicator& comm;
  DataParallelConfig cfg;
  int64_t dp = 1, rank = 0, total = 0, max_unit = 0, owned_numel = 0;
  std::vector<Bucket> buckets;   // ascending by begin
  std::vector<int> unit_bucket;  // unit -> bucket
  model::Pass pass = model::Pass::kForward;
  Timeline* timeline = nullptr;  // null: not profiled
  const char* lane = "";

  Arena arena;
  float* params_full = nullptr;  // no_shard, optim, optim_grads
  float* grads_full = nullptr;   // no_shard, optim
  float* grad_shard = nullptr;   // sharded strategies: this rank's averaged gradient shards
  float* param_shard = nullptr;  // optim_grads_params

  // optim_grads_params: gathered units.
  std::vector<float*> param_slot;
  std::vector<int> param_slot_unit;                  // -1: free
  std::vector<std::shared_ptr<dist::Work>> gathers;  // per slot, pending all-gather
  std::vector<int> unit_param_slot;                  // unit -> slot or -1
  // optim_grads(_params): unit gradient buffers and reduce-scatter outputs.
  std::vector<float*> grad_slot, grad_rs;
  std::vector<int> grad_slot_unit;
  std::vector<int> unit_grad_slot;
  std::deque<PendingGrad> pending;

  Impl(const model::ParamRegistry& r, const std::vector<model::ParamUnit>& u, backend::Ops& o, dist::Communicator& c,
       const DataParallelConfig& config)
      : reg(r), units(u), ops(o), comm(c), cfg(config), arena(&o) {}

  // Waits for `w` and drops it. While the timeline records, adds the collective as the
  // transport ran it and the time this thread waited for it.
  void finish(std::shared_ptr<dist::Work>& w, const CommName& what, const char* index_name, int index) {
    if (!w) return;
    if (timeline == nullptr || !timeline->recording()) {
      w->wait();
      w.reset();
      return;
    }
    Span s;
    s.start = std::chrono::steady_clock::now();
    w->wait();
    s.end = std::chrono::steady_clock::now();
    s.name = what.wait;
    s.lane = "compute";
    s.kind = SpanKind::kWait;
    s.index = index;
    s.index_name = index_name;
    timeline->add(s);
    s.name = what.op;
    s.lane = lane;
    s.kind = SpanKind::kComm;
    w->times(s.start, s.end);  // else what this thread saw
    timeline->add(s);
    w.reset();
  }

  bool shards_grads() const { return cfg.sharding == Sharding::kOptimGrads || cfg.sharding == Sharding::kOptimGradsParams; }
  bool shards_params() const { return cfg.sharding == Sharding::kOptimGradsParams; }
  bool resident_grads() const { return cfg.sharding == Sharding::kNoShard || cfg.sharding == Sharding::kOptim; }

  const Bucket& unit_as_bucket(int u) const { return buckets[static_cast<size_t>(unit_bucket[static_cast<size_t>(u)])]; }
  int64_t shard_begin(const Bucket& b) const { return b.begin + rank * (b.numel() / dp); }

  // --- parameters of optim_grads_params -------------------------------------------------
  int free_param_slot() const {
    for (size_t s = 0; s < param_slot_unit.size(); ++s)
      if (param_slot_unit[s] < 0) return static_cast<int>(s);
    return -1;
  }

  void start_gather(int u, int slot) {
    const Bucket& b = unit_as_bucket(u);
    param_slot_unit[static_cast<size_t>(slot)] = u;
    unit_param_slot[static_cast<size_t>(u)] = slot;
    gathers[static_cast<size_t>(slot)] = comm.all_gather_async(param_shard + b.shard_offset, param_slot[static_cast<size_t>(slot)],
                                                               b.numel() / dp, DType::kF32);
  }

  float* gathered(int u) {
    int slot = unit_param_slot[static_cast<size_t>(u)];
    if (slot < 0) {
      slot = free_param_slot();
      MPT_CHECK(slot >= 0, Status::kInternal, "FSDP: no free parameter slot for unit ", units[static_cast<size_t>(u)].name,
                " (", cfg.param_slots, " slots)");
      start_gather(u, slot);
    }
    finish(gathers[static_cast<size_t>(slot)], kParamAllGather, "unit", u);
    // Prefetch the unit the pass needs next.
    const int next = pass == model::Pass::kBackward ? u - 1 : u + 1;
    if (next >= 0 && next < static_cast<int>(units.size()) && unit_param_slot[static_cast<size_t>(next)] < 0) {
      const int s = free_param_slot();
      if (s >= 0) start_gather(next, s);
    }
    return param_slot[static_cast<size_t>(slot)];
  }

  void release_params(int u) {
    const int slot = unit_param_slot[static_cast<size_t>(u)];
    if (slot < 0) return;
    finish(gathers[static_cast<size_t>(slot)], kParamAllGather, "unit", u);
    param_slot_unit[static_cast<size_t>(slot)] = -1;
    unit_param_slot[static_cast<size_t>(u)] = -1;
  }

  // --- gradients of optim_grads(_params) -------------------------------------------------
  void complete_oldest() {
    PendingGrad p = std::move(pending.front());
    pending.pop_front();
    finish(p.work, kGradReduceScatter, "unit", p.unit);
    const Bucket& b = unit_as_bucket(p.unit);
    const int64_t n = b.numel() / dp;
    ops.add_inplace(Tensor::f32(grad_shard + b.shard_offset, {n}), Tensor::f32(grad_rs[static_cast<size_t>(p.slot)], {n}));
    grad_slot_unit[static_cast<size_t>(p.slot)] = -1;
  }

  float* unit_grad_area(int u) {
    int slot = unit_grad_slot[static_cast<size_t>(u)];
    if (slot >= 0) return grad_slot[static_cast<size_t>(slot)];
    while (true) {
      for (size_t s = 0; s < grad_slot_unit.size(); ++s)
        if (grad_slot_unit[s] < 0) {
          slot = static_cast<int>(s);
          break;
        }
      if (slot >= 0) break;
      MPT_CHECK(!pending.empty(), Status::kInternal, "data parallel: no free gradient slot for unit ",
                units[static_cast<size_t>(u)].name, " (", cfg.grad_slots, " slots)");
      complete_oldest();
    }
    grad_slot_unit[static_cast<size_t>(slot)] = u;
    unit_grad_slot[static_cast<size_t>(u)] = slot;
    float* area = grad_slot[static_cast<size_t>(slot)];
    ops.fill(Tensor::f32(area, {units[static_cast<size_t>(u)].numel()}), 0.0f);
    return area;
  }

  // A unit's gradients since its last reduction go to their reduce-scatter. The output
  // layer's gradients come in forward (model/gpt_model.h): with several of the head's
  // micro-batches in flight, one reduction may carry the gradients of a later micro-batch
  // too, and that micro-batch's own grads_done then finds nothing left to reduce.
  void reduce_unit_grads(int u) {
    const int slot = unit_grad_slot[static_cast<size_t>(u)];
    if (slot < 0) return;
    unit_grad_slot[static_cast<size_t>(u)] = -1;
    const Bucket& b = unit_as_bucket(u);
    PendingGrad p;
    p.unit = u;
    p.slot = slot;
    p.work = comm.reduce_scatter_async(grad_slot[static_cast<size_t>(slot)], grad_rs[static_cast<size_t>(slot)],
                                       b.numel() / dp, DType::kF32, dist::ReduceOp::kAvg);
    pending.push_back(std::move(p));
    if (!cfg.overlap_grad_reduce) complete_oldest();
  }

  // --- buckets of no_shard / optim ---------------------------------------------------------
  void launch(Bucket& b) {
    if (cfg.sharding == Sharding::kNoShard)
      b.work = comm.all_reduce_async(grads_full + b.begin, b.numel(), DType::kF32, dist::ReduceOp::kAvg);
    else
      b.work = comm.reduce_scatter_async(grads_full + b.begin, grad_shard + b.shard_offset, b.numel() / dp,
                                         DType::kF32, dist::ReduceOp::kAvg);
  }
};

DataParallel::DataParallel(const model::ParamRegistry& registry, const std::vector<model::ParamUnit>& units,
                           backend::Ops& ops, dist::Communicator& comm, const DataParallelConfig& config)
    : impl_(std::make_unique<Impl>(registry, units, ops, comm, config)), comm_(comm), cfg_(config) {
  Impl& m = *impl_;
  m.dp = comm.size();
  m.rank = comm.rank();
  m.total = registry.total_numel();
  MPT_CHECK(!units.empty() && units.back().end == m.total, Status::kInternal, "data parallel: units do not cover the layout");
  for (const model::ParamUnit& u : units) {
    MPT_CHECK(u.numel() % m.dp == 0, Status::kInternal, "data parallel: unit ", u.name, " has ", u.numel(),
              " elements, not a multiple of the group size ", m.dp);
    m.max_unit = std::max(m.max_unit, u.numel());
  }

  // Buckets: whole units, built from the last unit (whose gradients finish first).
  const int nu = static_cast<int>(units.size());
  m.unit_bucket.assign(static_cast<size_t>(nu), -1);
  std::vector<Bucket> reversed;
  for (int u = nu - 1; u >= 0; --u) {
    const bool extend = !reversed.empty() && !m.shards_grads() && reversed.back().numel() < cfg_.bucket_numel;
    if (extend) {
      reversed.back().begin = units[static_cast<size_t>(u)].begin;
      reversed.back().first_unit = u;
    } else {
      Bucket b;
      b.begin = units[static_cast<size_t>(u)].begin;
      b.end = units[static_cast<size_t>(u)].end;
      b.first_unit = b.last_unit = u;
      reversed.push_back(b);
    }
  }
  m.buckets.assign(reversed.rbegin(), reversed.rend());
  for (size_t i = 0; i < m.buckets.size(); ++i) {
    Bucket& b = m.buckets[i];
    for (int u = b.first_unit; u <= b.last_unit; ++u) m.unit_bucket[static_cast<size_t>(u)] = static_cast<int>(i);
  }

  // What this rank owns and updates.
  if (config.sharding == Sharding::kNoShard) {
    owned_.push_back(FlatRange{0, m.total});
  } else {
    for (Bucket& b : m.buckets) {
      b.shard_offset = m.owned_numel;
      const int64_t s = m.shard_begin(b);
      owned_.push_back(FlatRange{s, s + b.numel() / m.dp});
      m.owned_numel += b.numel() / m.dp;
    }
  }

  // Memory, planned then allocated once.
  const size_t f = sizeof(float);
  const bool fsdp = m.shards_params();
  size_t o_params = 0, o_grads = 0, o_gshard = 0, o_pshard = 0;
  std::vector<size_t> o_pslot, o_gslot, o_rs;
  if (!fsdp) o_params = m.arena.reserve(static_cast<size_t>(m.total) * f);
  if (m.resident_grads()) o_grads = m.arena.reserve(static_cast<size_t>(m.total) * f);
  if (config.sharding != Sharding::kNoShard) o_gshard = m.arena.reserve(static_cast<size_t>(m.owned_numel) * f);
  if (fsdp) {
    o_pshard = m.arena.reserve(static_cast<size_t>(m.owned_numel) * f);
    for (int64_t s = 0; s < cfg_.param_slots; ++s) o_pslot.push_back(m.arena.reserve(static_cast<size_t>(m.max_unit) * f));
  }
  if (m.shards_grads()) {
    for (int64_t s = 0; s < cfg_.grad_slots; ++s) {
      o_gslot.push_back(m.arena.reserve(static_cast<size_t>(m.max_unit) * f));
      o_rs.push_back(m.arena.reserve(static_cast<size_t>(m.max_unit / m.dp) * f));
    }
  }
  m.arena.allocate();
  if (!fsdp) m.params_full = m.arena.at<float>(o_params);
  if (m.resident_grads()) m.grads_full = m.arena.at<float>(o_grads);
  if (config.sharding != Sharding::kNoShard) m.grad_shard = m.arena.at<float>(o_gshard);
  if (fsdp) {
    m.param_shard = m.arena.at<float>(o_pshard);
    for (size_t o : o_pslot) m.param_slot.push_back(m.arena.at<float>(o));
    m.param_slot_unit.assign(m.param_slot.size(), -1);
    m.gathers.resize(m.param_slot.size());
  }
  m.unit_param_slot.assign(static_cast<size_t>(nu), -1);
  for (size_t i = 0; i < o_gslot.size(); ++i) {
    m.grad_slot.push_back(m.arena.at<float>(o_gslot[i]));
    m.grad_rs.push_back(m.arena.at<float>(o_rs[i]));
  }
  m.grad_slot_unit.assign(m.grad_slot.size(), -1);
  m.unit_grad_slot.assign(static_cast<size_t>(nu), -1);

  for (size_t k = 0; k < owned_.size(); ++k) {
    const FlatRange& r = owned_[k];
    const int64_t compact = config.sharding == Sharding::kNoShard ? 0 : m.buckets[k].shard_offset;
    owned_params_.push_back(fsdp ? m.param_shard + compact : m.params_full + r.begin);
    owned_grads_.push_back(config.sharding == Sharding::kNoShard ? m.grads_full + r.begin : m.grad_shard + compact);
  }
  for (Bucket& b : m.buckets) b.remaining = b.last_unit - b.first_unit + 1;
}

DataParallel::~DataParallel() {
  // Let queued communication finish before the buffers go away; errors are already reported.
  Impl& m = *impl_;
  auto quiet_wait = [](std::shared_ptr<dist::Work>& w) {
    if (!w) return;
    try {
      w->wait();
    } catch (...) {
    }
    w.reset();
  };
  for (Bucket& b : m.buckets) quiet_wait(b.work);
  for (auto& w : m.gathers) quiet_wait(w);
  for (PendingGrad& p : m.pending) quiet_wait(p.work);
}

void DataParallel::begin_pass(model::Pass pass) {
  Impl& m = *impl_;
  m.pass = pass;
  // A unit prefetched for a pass that did not use it (the embedding after backward) may
  // predate an optimizer step: a new pass starts from no gathered units.
  if (m.shards_params())
    for (int u = 0; u < static_cast<int>(m.units.size()); ++u) m.release_params(u);
}

float* DataParallel::unit_params(int u) {
  Impl& m = *impl_;
  if (!m.shards_params()) return m.params_full + m.units[static_cast<size_t>(u)].begin;
  return m.gathered(u);
}

void DataParallel::params_done(int u) {
  if (impl_->shards_params()) impl_->release_params(u);
}

float* DataParallel::unit_grads(int u) {
  Impl& m = *impl_;
  if (m.resident_grads()) return m.grads_full + m.units[static_cast<size_t>(u)].begin;
  return m.unit_grad_area(u);
}

void DataParallel::grads_done(int u) {
  Impl& m = *impl_;
  if (m.shards_grads()) {
    m.reduce_unit_grads(u);
    return;
  }
  if (!last_microbatch_) return;
  Bucket& b = m.buckets[static_cast<size_t>(m.unit_bucket[static_cast<size_t>(u)])];
  if (--b.remaining == 0 && cfg_.overlap_grad_reduce) m.launch(b);
}

void DataParallel::finish_grad_sync() {
  Impl& m = *impl_;
  if (m.shards_grads()) {
    while (!m.pending.empty()) m.complete_oldest();
    return;
  }
  for (Bucket& b : m.buckets) {
    MPT_CHECK(b.remaining == 0, Status::kInternal, "data parallel: bucket [", b.begin, ", ", b.end,
              ") still waits for gradients at the end of the step");
    if (!b.work) m.launch(b);
  }
  const CommName& op = cfg_.sharding == Sharding::kNoShard ? kGradAllReduce : kGradReduceScatter;
  for (size_t i = 0; i < m.buckets.size(); ++i) {
    Bucket& b = m.buckets[i];
    m.finish(b.work, op, "bucket", static_cast<int>(i));
    b.remaining = b.last_unit - b.first_unit + 1;
  }
}

void DataParallel::zero_grads() {
  Impl& m = *impl_;
  if (m.grads_full) m.ops.fill(Tensor::f32(m.grads_full, {m.total}), 0.0f);
  if (m.grad_shard) m.ops.fill(Tensor::f32(m.grad_shard, {m.owned_numel}), 0.0f);
}

float* DataParallel::full_params() { return impl_->params_full; }
float* DataParallel::full_grads() { return cfg_.sharding == Sharding::kNoShard ? impl_->grads_full : nullptr; }

int64_t DataParallel::params_bytes() const {
  const Impl& m = *impl_;
  if (!m.shards_params()) return m.total * 4;
  return (m.owned_numel + static_cast<int64_t>(m.param_slot.size()) * m.max_unit) * 4;
}

int64_t DataParallel::grads_bytes() const {
  const Impl& m = *impl_;
  int64_t n = 0;
  if (m.grads_full) n += m.total;
  if (m.grad_shard) n += m.owned_numel;
  n += static_cast<int64_t>(m.grad_slot.size()) * (m.max_unit + m.max_unit / m.dp);
  return n * 4;
}

void DataParallel::set_timeline(Timeline* timeline, const char* lane) {
  impl_->timeline = timeline;
  impl_->lane = lane;
}

int64_t DataParallel::num_buckets() const { return static_cast<int64_t>(impl_->buckets.size()); }

void DataParallel::init_parameters(uint64_t seed) {
  Impl& m = *impl_;
  // Drawn on the host, then copied into the backend's memory.
  if (!m.shards_params()) {
    std::vector<float> host(static_cast<size_t>(m.total));
    m.reg.initialize(host.data(), seed);
    m.ops.to_device(m.params_full, host.data(), host.size() * sizeof(float));
    return;
  }
  for (size_t k = 0; k < owned_.size(); ++k) {
    std::vector<float> host(static_cast<size_t>(owned_[k].end - owned_[k].begin));
    m.reg.initialize_range(host.data(), owned_[k].begin, owned_[k].end, seed);
    m.ops.to_device(owned_params_[k], host.data(), host.size() * sizeof(float));
  }
}

double DataParallel::grad_sum_squares(const AdamW& optimizer) {
  double sq = optimizer.grad_sum_squares(owned_grads_);
  if (cfg_.sharding != Sharding::kNoShard) comm_.all_reduce(&sq, 1, DType::kF64, dist::ReduceOp::kSum);
  return sq;
}

void DataParallel::finish_step() {
  Impl& m = *impl_;
  if (cfg_.sharding != Sharding::kOptim && cfg_.sharding != Sharding::kOptimGrads) return;
  for (Bucket& b : m.buckets)
    b.work = comm_.all_gather_async(m.params_full + m.shard_begin(b), m.params_full + b.begin, b.numel() / m.dp,
                                    DType::kF32);
  for (size_t i = 0; i < m.buckets.size(); ++i)
    m.finish(m.buckets[i].work, kParamAllGather, "bucket", static_cast<int>(i));
}

void DataParallel::gather_owned(const float* owned_compact, float* whole) {
  Impl& m = *impl_;
  if (cfg_.sharding == Sharding::kNoShard) {
    m.ops.to_host(whole, owned_compact, static_cast<size_t>(m.total) * sizeof(float));
    return;
  }
  for (const Bucket& b : m.buckets)
    comm_.all_gather(owned_compact + b.shard_offset, whole + b.begin, b.numel() / m.dp, DType::kF32);
}

void DataParallel::scatter_owned(const float* whole, float* owned_compact) const {
  const Impl& m = *impl_;
  if (cfg_.sharding == Sharding::kNoShard) {
    m.ops.to_device(owned_compact, whole, static_cast<size_t>(m.total) * sizeof(float));
    return;
  }
  for (const Bucket& b : m.buckets)
    m.ops.to_device(owned_compact + b.shard_offset, whole + m.shard_begin(b),
                    static_cast<size_t>(b.numel() / m.dp) * sizeof(float));
}

void DataParallel::load_params(const float* whole) {
  Impl& m = *impl_;
  if (m.shards_params())
    scatter_owned(whole, m.param_shard);
  else
    m.ops.to_device(m.params_full, whole, static_cast<size_t>(m.total) * sizeof(float));
}

void DataParallel::gather_params(float* whole) {
  Impl& m = *impl_;
  if (m.shards_params())
    gather_owned(m.param_shard, whole);
  else
    m.ops.to_host(whole, m.params_full, static_cast<size_t>(m.total) * sizeof(float));
}

void DataParallel::gather_grads(float* whole) {
  Impl& m = *impl_;
  if (cfg_.sharding == Sharding::kNoShard)
    m.ops.to_host(whole, m.grads_full, static_cast<size_t>(m.total) * sizeof(float));
  else
    gather_owned(m.grad_shard, whole);
}

std::vector<float> DataParallel::gather_grad_range(int64_t begin, int64_t end) {
  Impl& m = *impl_;
  MPT_ASSERT(0 <= begin && begin <= end && end <= m.total);
  if (cfg_.sharding == Sharding::kNoShard) {
    std::vector<float> out(static_cast<size_t>(end - begin));
    m.ops.to_host(out.data(), m.grads_full + begin, out.size() * sizeof(float));
    return out;
  }
  for (const Bucket& b : m.buckets) {
    if (begin < b.begin || end > b.end) continue;
    std::vector<float> whole(static_cast<size_t>(b.numel()));
    comm_.all_gather(m.grad_shard + b.shard_offset, whole.data(), b.numel() / m.dp, DType::kF32);
    return std::vector<float>(whole.begin() + (begin - b.begin), whole.begin() + (end - b.begin));
  }
  fail(Status::kInternal, "gradient range [", begin, ", ", end, ") spans more than one bucket");
}

void DataParallel::store_grad_range(int64_t begin, int64_t end, const float* values) {
  Impl& m = *impl_;
  if (cfg_.sharding == Sharding::kNoShard) {
    m.ops.to_device(m.grads_full + begin, values, static_cast<size_t>(end - begin) * sizeof(float));
    return;
  }
  for (const Bucket& b : m.buckets) {
    const int64_t s = m.shard_begin(b), e = s + b.numel() / m.dp;
    const int64_t lo = std::max(begin, s), hi = std::min(end, e);
    if (lo < hi)
      m.ops.to_device(m.grad_shard + b.shard_offset + (lo - s), values + (lo - begin),
                      static_cast<size_t>(hi - lo) * sizeof(float));
  }
}

}  // namespace mpt::optim
