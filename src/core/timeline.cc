#include "core/timeline.h"

#include <algorithm>
#include <nlohmann/json.hpp>
#include <utility>

namespace mpt {
namespace {

// Sets of time as sorted, disjoint [begin, end) intervals in seconds.
using Intervals = std::vector<std::pair<double, double>>;

Intervals unite(Intervals v) {
  std::sort(v.begin(), v.end());
  Intervals out;
  for (const auto& iv : v) {
    if (!out.empty() && iv.first <= out.back().second) out.back().second = std::max(out.back().second, iv.second);
    else out.push_back(iv);
  }
  return out;
}

Intervals intersect(const Intervals& a, const Intervals& b) {
  Intervals out;
  for (size_t i = 0, j = 0; i < a.size() && j < b.size();) {
    const double lo = std::max(a[i].first, b[j].first), hi = std::min(a[i].second, b[j].second);
    if (lo < hi) out.emplace_back(lo, hi);
    if (a[i].second < b[j].second) ++i;
    else ++j;
  }
  return out;
}

double measure(const Intervals& v) {
  double s = 0;
  for (const auto& iv : v) s += iv.second - iv.first;
  return s;
}

double seconds(TimePoint t) { return std::chrono::duration<double>(t.time_since_epoch()).count(); }

const char* kind_name(SpanKind k) {
  switch (k) {
    case SpanKind::kCompute: return "compute";
    case SpanKind::kComm: return "comm";
    case SpanKind::kWait: return "wait";
  }
  return "?";
}

}  // namespace

Timeline::Timeline(size_t reserve) { spans_.reserve(reserve); }

void Timeline::begin_step(int64_t step) {
  step_.store(step, std::memory_order_relaxed);
  recording_.store(true, std::memory_order_release);
}

Timeline::Point Timeline::now() const {
  Point p;
  if (device_) p.mark = device_->mark();
  else p.host = std::chrono::steady_clock::now();
  return p;
}

void Timeline::add(Span span) {
  span.step = step_.load(std::memory_order_relaxed);
  std::lock_guard<std::mutex> lock(mu_);
  spans_.push_back(span);
}

void Timeline::add_compute(const char* name, Point start, Point end, int32_t microbatch, int32_t chunk) {
  Span s;
  s.name = name;
  s.lane = "compute";
  s.kind = SpanKind::kCompute;
  s.start = start.host;
  s.end = end.host;
  s.start_mark = start.mark;
  s.end_mark = end.mark;
  s.microbatch = microbatch;
  s.chunk = chunk;
  add(s);
}

void Timeline::resolve() {
  if (!device_) return;
  std::lock_guard<std::mutex> lock(mu_);
  for (Span& s : spans_) {
    if (s.start_mark >= 0) s.start = device_->time_of(s.start_mark);
    if (s.end_mark >= 0) s.end = device_->time_of(s.end_mark);
    s.start_mark = s.end_mark = -1;
  }
  device_->reset();
}

std::vector<Span> Timeline::spans() const {
  std::lock_guard<std::mutex> lock(mu_);
  return spans_;
}

size_t Timeline::capacity() const {
  std::lock_guard<std::mutex> lock(mu_);
  return spans_.capacity();
}

void Timeline::clear() {
  std::lock_guard<std::mutex> lock(mu_);
  spans_.clear();
}

StepSummary Timeline::summarize(int64_t step) const {
  Intervals compute, comm, wait;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (const Span& s : spans_) {
      if (s.step != step) continue;
      Intervals& into = s.kind == SpanKind::kCompute ? compute : s.kind == SpanKind::kComm ? comm : wait;
      into.emplace_back(seconds(s.start), seconds(s.end));
    }
  }
  const Intervals c = unite(std::move(compute)), m = unite(std::move(comm)), w = unite(std::move(wait));
  // Waiting inside a compute span is not compute: a forward that waits for a gather hides
  // nothing of it.
  const Intervals mc = intersect(m, c);
  StepSummary r;
  r.step = step;
  r.compute_s = measure(c) - measure(intersect(c, w));
  r.comm_s = measure(m);
  r.hidden_s = measure(mc) - measure(intersect(mc, w));
  return r;
}

std::string Timeline::chrome_trace(int64_t rank) const {
  const std::vector<Span> all = spans();
  // Lanes become threads: compute first, the others as they first appear.
  std::vector<std::string> lanes = {"compute"};
  auto thread_of = [&](const char* lane) {
    for (size_t i = 0; i < lanes.size(); ++i)
      if (lanes[i] == lane) return static_cast<int64_t>(i);
    lanes.emplace_back(lane);
    return static_cast<int64_t>(lanes.size() - 1);
  };
  nlohmann::json events = nlohmann::json::array();
  auto metadata = [&](const char* name, int64_t tid, nlohmann::json args) {
    nlohmann::json e = {{"name", name}, {"ph", "M"}, {"pid", rank}, {"args", std::move(args)}};
    if (tid >= 0) e["tid"] = tid;
    events.push_back(std::move(e));
  };
  metadata("process_name", -1, {{"name", "rank " + std::to_string(rank)}});
  metadata("process_sort_index", -1, {{"sort_index", rank}});
  for (const Span& s : all) {
    nlohmann::json args = {{"step", s.step}};
    if (s.microbatch >= 0) args["microbatch"] = s.microbatch;
    if (s.chunk >= 0) args["chunk"] = s.chunk;
    if (s.index >= 0) args[s.index_name ? s.index_name : "index"] = s.index;
    using Micros = std::chrono::duration<double, std::micro>;
    const double ts = Micros(s.start.time_since_epoch()).count();
    const double dur = std::max(0.0, Micros(s.end - s.start).count());
    events.push_back({{"name", s.name}, {"cat", kind_name(s.kind)}, {"ph", "X"}, {"ts", ts}, {"dur", dur},
                      {"pid", rank}, {"tid", thread_of(s.lane)}, {"args", std::move(args)}});
  }
  for (size_t i = 0; i < lanes.size(); ++i) {
    const int64_t tid = static_cast<int64_t>(i);
    metadata("thread_name", tid, {{"name", lanes[i]}});
    metadata("thread_sort_index", tid, {{"sort_index", tid}});
  }
  nlohmann::json trace = {{"traceEvents", std::move(events)}, {"displayTimeUnit", "ms"}};
  return trace.dump(1);
}

}  // namespace mpt
