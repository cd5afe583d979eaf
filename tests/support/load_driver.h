#pragma once
// Continuous, checked load on a model for integration tests: client threads send requests back
// to back through libsliceserve_client and verify every answer (the synthetic kind's
// y = 2x + 1, or the null kind's echo).

#include <atomic>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "sliceserve/client/client.h"

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
