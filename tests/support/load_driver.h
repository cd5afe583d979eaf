#pragma once
// Continuous, checked load on a model for integration tests: client threads send requests back
// to back through libsliceserve_client and verify every answer (the synthetic kind's
// y = 2x + 1, or the null kind's echo).

#include <algorithm>
#include <atomic>
#include <limits>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "sliceserve/client/client.h"
#include "sliceserve/shm/futex.h"

namespace sliceserve::testing {

class LoadDriver {
 public:
  // `synthetic`: check y = 2x + 1 on FP32 [16] -> [16]; else the echo of a null model.
  LoadDriver(std::string instance, std::string model, int threads, bool synthetic = true)
      : instance_(std::move(instance)), model_(std::move(model)), synthetic_(synthetic) {
    for (int t = 0; t < threads; ++t) threads_.emplace_back([this, t] { run(t); });
  }
  ~LoadDriver() { stop(); }
  void stop() {
    stop_.store(true);
    for (auto& t : threads_) {
      if (t.joinable()) t.join();
    }
  }
  uint64_t ok() const { return ok_.load(); }
  uint64_t errors() const { return errors_.load(); }
  uint64_t wrong() const { return wrong_.load(); }
  std::string first_error() const {
    std::lock_guard lock(mutex_);
    return first_error_;
  }

 private:
  void run(int thread) {
    auto client = client::Client::connect(model_, {.instance = instance_});
    if (!client.is_ok()) {
      note_error(client.status().to_string());
      return;
    }
    std::vector<float> x(16);
    for (uint64_t i = 0; !stop_.load(); ++i) {
      for (int k = 0; k < 16; ++k) x[size_t(k)] = float(thread * 100000 + int(i % 50000) + k);
      client::Tensor input{"x", shm::DataType::kFp32, {16}, std::as_bytes(std::span(x))};
      auto r = client->infer(std::span(&input, 1), std::chrono::seconds(20));
      if (!r.is_ok()) {
        note_error(r.status().to_string());
        continue;
      }
      auto y = r->outputs.at(0).as<float>();
      bool right = y.size() == 16;
      for (size_t k = 0; right && k < 16; ++k) {
        right = y[k] == (synthetic_ ? 2 * x[k] + 1 : x[k]);
      }
      (right ? ok_ : wrong_).fetch_add(1);
    }
  }
  void note_error(const std::string& e) {
    errors_.fetch_add(1);
    std::lock_guard lock(mutex_);
    if (first_error_.empty()) first_error_ = e;
  }

  std::string instance_, model_;
  bool synthetic_;
  std::atomic<bool> stop_{false};
  std::atomic<uint64_t> ok_{0}, errors_{0}, wrong_{0};
  mutable std::mutex mutex_;
  std::string first_error_;
  std::vector<std::thread> threads_;
};

}  // namespace sliceserve::testing

namespace sliceserve::testing {

// Open-loop load at a rate that can change while it runs (the arrival process a policy has to
// follow), recording every request's send time and latency.
class OpenLoopDriver {
 public:
  struct Sample {
    uint64_t sent_ns;
    uint64_t latency_ns;  // 0: failed
  };

  OpenLoopDriver(std::string instance, std::string model, double rate)
      : rate_(rate), thread_([this, instance, model] { run(instance, model); }) {}
  ~OpenLoopDriver() { stop(); }
  void set_rate(double rate) { rate_.store(rate); }
  void stop() {
    stop_.store(true);
    if (thread_.joinable()) thread_.join();
  }
  // The requests sent in [from_ns, to_ns) (monotonic).
  std::vector<Sample> samples(uint64_t from_ns, uint64_t to_ns) const {
    std::lock_guard lock(mutex_);
    std::vector<Sample> out;
    for (const Sample& s : samples_) {
      if (s.sent_ns >= from_ns && s.sent_ns < to_ns) out.push_back(s);
    }
    return out;
  }
  uint64_t failures() const { return failures_.load(); }

 private:
  void run(const std::string& instance, const std::string& model) {
    auto client = client::Client::connect(model, {.instance = instance});
    if (!client.is_ok()) {
      failures_.fetch_add(1);
      return;
    }
    std::vector<float> x(16, 1.0f);
    client::Tensor input{"x", shm::DataType::kFp32, {16}, std::as_bytes(std::span(x))};
    uint64_t next = shm::monotonic_ns();
    while (!stop_.load()) {
      const uint64_t now = shm::monotonic_ns();
      if (now < next) {
        std::this_thread::sleep_for(
            std::chrono::nanoseconds(std::min<uint64_t>(next - now, 1'000'000)));
        continue;
      }
      const uint64_t sent = next;
      next += uint64_t(1e9 / rate_.load());
      client->infer_async(
          std::span(&input, 1),
          [this, sent](Result<client::InferResult> r) {
            const uint64_t latency = r.is_ok() ? shm::monotonic_ns() - sent : 0;
            if (!r.is_ok()) failures_.fetch_add(1);
            std::lock_guard lock(mutex_);
            samples_.push_back({sent, latency});
          },
          std::chrono::seconds(10));
    }
  }

  std::atomic<double> rate_;
  std::atomic<bool> stop_{false};
  std::atomic<uint64_t> failures_{0};
  mutable std::mutex mutex_;
  std::vector<Sample> samples_;
  std::thread thread_;
};

// p99 latency in ms of the successful samples; infinity when none came back (a sender blocked
// on a full lane sends nothing: that is the worst latency, not the best).
inline double p99_ms(std::vector<OpenLoopDriver::Sample> samples) {
  std::vector<uint64_t> lat;
  for (const auto& s : samples) {
    if (s.latency_ns) lat.push_back(s.latency_ns);
  }
  if (lat.empty()) return std::numeric_limits<double>::infinity();
  std::sort(lat.begin(), lat.end());
  return double(lat[std::min(lat.size() - 1, size_t(double(lat.size()) * 0.99))]) / 1e6;
}

}  // namespace sliceserve::testing
