#include "sliceserve/controller/stats_window.h"

namespace sliceserve::controller {

StatsSample read_sample(const shm::Segment& segment, uint64_t epoch, uint64_t now_ns) {
  StatsSample s;
  s.time_ns = now_ns;
  s.epoch = epoch;
  for (uint32_t l = 0; l < segment.geometry().lanes; ++l) {
    s.arrivals += segment.lane(l).submitted.load(std::memory_order_relaxed);
  }
  const shm::WorkerStats& st = segment.stats_block(epoch);
  if (epoch == 0 || st.epoch.load(std::memory_order_acquire) != epoch) return s;
  s.completed = st.completed.load(std::memory_order_relaxed);
  s.failed = st.failed.load(std::memory_order_relaxed);
  s.batches = st.batches.load(std::memory_order_relaxed);
  s.busy_ns = st.busy_ns.load(std::memory_order_relaxed);
  s.latency = shm::snapshot(st.latency_hist);
  return s;
}

void StatsWindow::add(const StatsSample& sample) {
  if (!history_.empty() && sample.epoch != last_.epoch) {
    // The previous epoch is over: fold its final counters into the base.
    base_.completed += last_.completed;
    base_.failed += last_.failed;
    base_.batches += last_.batches;
    base_.busy_ns += last_.busy_ns;
    for (size_t i = 0; i < base_.latency.size(); ++i) base_.latency[i] += last_.latency[i];
  }
  last_ = sample;
  Totals t = base_;
  t.time_ns = sample.time_ns;
  t.arrivals = sample.arrivals;
  t.completed += sample.completed;
  t.failed += sample.failed;
  t.batches += sample.batches;
  t.busy_ns += sample.busy_ns;
  for (size_t i = 0; i < t.latency.size(); ++i) t.latency[i] += sample.latency[i];
  history_.push_back(t);
  // Keep one sample older than the window as its left edge.
  while (history_.size() > 2 && sample.time_ns - history_[1].time_ns >= window_ns_) {
    history_.pop_front();
  }
}

ModelRates StatsWindow::rates() const {
  if (history_.size() < 2) return {};
  return between(history_.front(), history_.back());
}

ModelRates StatsWindow::latest() const {
  if (history_.size() < 2) return {};
  return between(history_[history_.size() - 2], history_.back());
}

ModelRates StatsWindow::between(const Totals& a, const Totals& b) {
  ModelRates r;
  double seconds = double(b.time_ns - a.time_ns) / 1e9;
  if (seconds <= 0) return r;
  auto delta = [](uint64_t after, uint64_t before) { return after > before ? after - before : 0; };
  r.arrival_rps = double(delta(b.arrivals, a.arrivals)) / seconds;
  r.completed = delta(b.completed, a.completed);
  r.completion_rps = double(r.completed) / seconds;
  r.failure_rps = double(delta(b.failed, a.failed)) / seconds;
  uint64_t batches = delta(b.batches, a.batches);
  r.mean_batch = batches ? double(r.completed + delta(b.failed, a.failed)) / double(batches) : 0;
  r.busy_fraction = double(delta(b.busy_ns, a.busy_ns)) / 1e9 / seconds;
  r.latency = shm::difference(b.latency, a.latency);
  r.p50_us = shm::percentile_us(r.latency, 0.50);
  r.p99_us = shm::percentile_us(r.latency, 0.99);
  return r;
}

}  // namespace sliceserve::controller
