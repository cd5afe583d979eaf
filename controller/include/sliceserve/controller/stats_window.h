#pragma once
// Turns the cumulative counters of a model segment (lane arrival counters, the owning worker's
// stats block) into rates and percentiles over a sliding window. Counters restart with every
// worker epoch; the window stitches epochs together so rates never go negative.

#include <cstdint>
#include <deque>

#include "sliceserve/shm/latency_histogram.h"
#include "sliceserve/shm/segment.h"

namespace sliceserve::controller {

struct StatsSample {
  uint64_t time_ns = 0;
  uint64_t epoch = 0;
  uint64_t arrivals = 0;   // requests ever submitted (all lanes)
  uint64_t completed = 0;  // of this epoch
  uint64_t failed = 0;
  uint64_t batches = 0;
  uint64_t busy_ns = 0;
  shm::LatencyCounts latency{};
};

// Reads the counters of the worker of `epoch` (zeros if its stats block is not its own yet).
StatsSample read_sample(const shm::Segment& segment, uint64_t epoch, uint64_t now_ns);

struct ModelRates {
  double arrival_rps = 0;
  double completion_rps = 0;
  double failure_rps = 0;
  uint64_t p50_us = 0;
  uint64_t p99_us = 0;
  double mean_batch = 0;
  double busy_fraction = 0;  // share of wall time the worker spent running batches
  uint64_t completed = 0;    // in the window
  shm::LatencyCounts latency{};  // the window's completions by latency bucket
};

class StatsWindow {
 public:
  explicit StatsWindow(uint64_t window_ns) : window_ns_(window_ns) {}
  void add(const StatsSample& sample);
  // Over the whole window (for status) and over the last interval only (for the policy, which
  // must see the effect of its last change, not an average that still holds the old slice).
  ModelRates rates() const;
  ModelRates latest() const;
  // Every completion seen so far (all epochs) by latency bucket.
  shm::LatencyCounts total_latency() const {
    return history_.empty() ? shm::LatencyCounts{} : history_.back().latency;
  }

 private:
  // Cumulative over all epochs: the finished epochs' totals plus the current one's.
  struct Totals {
    uint64_t time_ns = 0, arrivals = 0, completed = 0, failed = 0, batches = 0, busy_ns = 0;
    shm::LatencyCounts latency{};
  };
  uint64_t window_ns_;
  std::deque<Totals> history_;
  static ModelRates between(const Totals& a, const Totals& b);
  Totals base_;         // sum of finished epochs
  StatsSample last_{};  // last raw sample, to close an epoch
};

}  // namespace sliceserve::controller
