#pragma once
// A small deterministic discrete-time model of SliceServe workers, for testing the SLO policy
// without processes. Each model is one batch server: requests arrive as a Poisson process (seeded
// RNG); when the server is free it takes up to max_batch queued requests, waiting for a partial
// batch until its oldest request has queued `queue_delay_ms` (the worker's max_queue_delay); a
// batch of n takes (base_ms + per_item_ms * n) / (slice / 100) ms, jittered uniformly by
// +-noise. Every interval it reports what the controller would measure (arrival and completion
// rates, p99 of the requests completed in the interval, busy fraction, mean execution time by
// batch size), and decisions are applied at the interval boundary (an instant resize).

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <deque>
#include <map>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "sliceserve/controller/policy.h"

namespace sliceserve::testing {

struct SimModelSpec {
  std::string name;
  double slo_ms = 50;
  double slice = 30;
  uint32_t max_batch = 1;
  uint32_t max_batch_cap = 16;
  bool pinned = false;
  double arrival_rps = 300;
  double base_ms = 2;        // a: per-batch cost at 100% of the device
  double per_item_ms = 0.5;  // c: per-item cost at 100% of the device
  double noise = 0.1;        // execution time jitter, uniform in [-noise, +noise]
  double queue_delay_ms = 1;
};

struct SimInterval {
  std::vector<controller::ModelObservation> observations;
  std::vector<uint64_t> completed;  // requests completed in the interval, per model
};

class PolicySimulator {
 public:
  PolicySimulator(std::vector<SimModelSpec> specs, double interval_ms, uint64_t seed)
      : interval_ms_(interval_ms) {
    for (size_t i = 0; i < specs.size(); ++i) {
      Server s;
      s.spec = std::move(specs[i]);
      s.rng.seed(seed * 1000003 + i * 7919 + 1);
      s.next_arrival = draw_gap(s);
      servers_.push_back(std::move(s));
    }
  }

  const SimModelSpec& spec(size_t i) const { return servers_[i].spec; }
  size_t size() const { return servers_.size(); }
  double now_ms() const { return now_ms_; }

  // A new arrival rate from now on (Poisson arrivals are memoryless: redraw the next one).
  void set_arrival_rps(size_t i, double rps) {
    Server& s = servers_[i];
    s.spec.arrival_rps = rps;
    s.next_arrival = now_ms_ + draw_gap(s);
  }

  SimInterval run_interval() {
    const double t0 = now_ms_;
    const double t1 = now_ms_ + interval_ms_;
    SimInterval out;
    for (Server& s : servers_) {
      uint64_t arrivals = 0;
      while (s.next_arrival < t1) {
        s.queue.push_back(s.next_arrival);
        ++arrivals;
        s.next_arrival += draw_gap(s);
      }
      std::vector<double> latencies;
      std::map<uint32_t, std::pair<double, uint32_t>> exec;  // size -> (sum ms, count)
      double busy = 0;
      if (s.in_flight) busy += std::min(s.flight_end, t1) - t0;
      for (;;) {
        if (s.in_flight) {
          if (s.flight_end > t1) break;  // completes in a later interval
          for (double a : s.flight) latencies.push_back(s.flight_end - a);
          s.free_at = s.flight_end;
          s.in_flight = false;
          s.flight.clear();
        }
        if (s.queue.empty()) break;
        const size_t b = std::max<uint32_t>(s.spec.max_batch, 1);
        double ready = s.queue.front() + s.spec.queue_delay_ms;
        if (s.queue.size() >= b) ready = std::min(ready, s.queue[b - 1]);
        const double start = std::max(s.free_at, ready);
        if (start >= t1) break;  // later arrivals could still fill it: decide next interval
        size_t n = 0;
        while (n < b && n < s.queue.size() && s.queue[n] <= start) ++n;
        const double jitter = 1 + s.spec.noise * (2 * uniform(s) - 1);
        const double ms =
            (s.spec.base_ms + s.spec.per_item_ms * double(n)) / (s.spec.slice / 100) * jitter;
        auto& e = exec[uint32_t(n)];
        e.first += ms;
        ++e.second;
        s.flight.assign(s.queue.begin(), s.queue.begin() + long(n));
        s.queue.erase(s.queue.begin(), s.queue.begin() + long(n));
        s.in_flight = true;
        s.flight_end = start + ms;
        busy += std::min(s.flight_end, t1) - start;
      }

      controller::ModelObservation obs;
      obs.name = s.spec.name;
      obs.slo_ms = s.spec.slo_ms;
      obs.slice = s.spec.slice;
      obs.max_batch = s.spec.max_batch;
      obs.max_batch_cap = s.spec.max_batch_cap;
      obs.pinned = s.spec.pinned;
      obs.arrival_rps = double(arrivals) * 1000 / interval_ms_;
      obs.completion_rps = double(latencies.size()) * 1000 / interval_ms_;
      obs.busy_fraction = busy / interval_ms_;
      obs.max_queue_delay_ms = s.spec.queue_delay_ms;
      if (!latencies.empty()) {
        std::sort(latencies.begin(), latencies.end());
        const size_t k = size_t(std::ceil(0.99 * double(latencies.size()))) - 1;
        obs.p99_ms = latencies[std::min(k, latencies.size() - 1)];
      }
      for (const auto& [size, e] : exec) obs.exec_ms_by_batch[size] = e.first / e.second;
      out.observations.push_back(std::move(obs));
      out.completed.push_back(latencies.size());
    }
    now_ms_ = t1;
    return out;
  }

  void apply(const controller::PolicyResult& result) {
    for (size_t i = 0; i < servers_.size() && i < result.decisions.size(); ++i) {
      servers_[i].spec.slice = result.decisions[i].slice;
      servers_[i].spec.max_batch = result.decisions[i].max_batch;
    }
  }

 private:
  struct Server {
    SimModelSpec spec;
    std::mt19937_64 rng;
    std::deque<double> queue;  // arrival times waiting for a batch
    double next_arrival = 0;
    double free_at = 0;
    bool in_flight = false;
    double flight_end = 0;
    std::vector<double> flight;  // arrival times of the batch in progress
  };

  static double uniform(Server& s) { return double(s.rng() >> 11) * 0x1.0p-53; }
  double draw_gap(Server& s) {
    if (s.spec.arrival_rps <= 0) return 1e18;
    return -std::log(1 - uniform(s)) * 1000 / s.spec.arrival_rps;
  }

  double interval_ms_;
  double now_ms_ = 0;
  std::vector<Server> servers_;
};

}  // namespace sliceserve::testing
