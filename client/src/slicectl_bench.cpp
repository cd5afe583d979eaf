// slicectl bench: a perf_analyzer-like load generator through the client library.
//
// --concurrency C: C closed-loop requests in flight (C threads, each waiting for its answer before
//   sending the next; spread over as many Clients as the lanes' slots need).
// --rate R: open loop, R requests per second at constant (or, with --poisson, exponential)
//   intervals through infer_async; latency counts from the scheduled send time, so a client that
//   falls behind shows up in the latency instead of silently lowering the rate.
//
// Reported: requests sent, errors by code, throughput (successful completions inside the
// measurement window / window length), and latency percentiles over all successful requests.

#include <fmt/core.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "slicectl.h"
#include "sliceserve/client/client.h"
#include "sliceserve/shm/futex.h"

namespace sliceserve::slicectl {
namespace {

using client::Client;
using client::InferResult;
using client::Tensor;
using shm::DataType;

// ---- input data: deterministic random values of the spec's dtypes ----

template <typename T, typename Gen>
void fill(std::vector<std::byte>& bytes, Gen&& gen) {
  for (size_t i = 0; i + sizeof(T) <= bytes.size(); i += sizeof(T)) {
    const T v = gen();
    std::memcpy(bytes.data() + i, &v, sizeof(T));
  }
}

std::vector<std::byte> random_tensor(const shm::TensorSpec& spec, std::mt19937_64& rng) {
  std::vector<std::byte> bytes(spec.byte_size());
  std::uniform_real_distribution<double> real(-1.0, 1.0);
  std::uniform_int_distribution<int> small(0, 127);
  auto integer = [&] { return small(rng); };
  switch (spec.dtype) {
    case DataType::kFp32:
      fill<float>(bytes, [&] { return float(real(rng)); });
      break;
    case DataType::kFp64:
      fill<double>(bytes, [&] { return real(rng); });
      break;
    case DataType::kFp16:
      // Finite halves in +-[2^-14, 1): random sign, exponent 1..14, mantissa.
      fill<uint16_t>(bytes, [&] {
        const uint64_t r = rng();
        return uint16_t(((r & 1) << 15) | ((1 + (r >> 1) % 14) << 10) | ((r >> 8) & 0x3ff));
      });
      break;
    case DataType::kBool:
      fill<uint8_t>(bytes, [&] { return uint8_t(rng() & 1); });
      break;
    case DataType::kUint8:
      fill<uint8_t>(bytes, [&] { return uint8_t(integer()); });
      break;
    case DataType::kInt8:
      fill<int8_t>(bytes, [&] { return int8_t(integer()); });
      break;
    case DataType::kUint16:
      fill<uint16_t>(bytes, [&] { return uint16_t(integer()); });
      break;
    case DataType::kInt16:
      fill<int16_t>(bytes, [&] { return int16_t(integer()); });
      break;
    case DataType::kUint32:
      fill<uint32_t>(bytes, [&] { return uint32_t(integer()); });
      break;
    case DataType::kInt32:
      fill<int32_t>(bytes, [&] { return int32_t(integer()); });
      break;
    case DataType::kUint64:
      fill<uint64_t>(bytes, [&] { return uint64_t(integer()); });
      break;
    case DataType::kInt64:
      fill<int64_t>(bytes, [&] { return int64_t(integer()); });
      break;
    case DataType::kInvalid:
      break;
  }
  return bytes;
}

struct Inputs {
  std::vector<std::vector<std::byte>> buffers;
  std::vector<Tensor> tensors;  // views of buffers, shared read-only by every request
};

Inputs make_inputs(const shm::ModelSpec& spec, uint64_t seed) {
  Inputs in;
  std::mt19937_64 rng(seed);
  for (const shm::TensorSpec& t : spec.input_specs()) in.buffers.push_back(random_tensor(t, rng));
  for (uint32_t i = 0; i < spec.n_inputs; ++i) {
    const shm::TensorSpec& t = spec.inputs[i];
    in.tensors.push_back(Tensor{std::string(t.name_view()), t.dtype,
                                std::vector<int64_t>(t.dims, t.dims + t.ndims), in.buffers[i]});
  }
  return in;
}

// ---- results ----

double percentile_ms(const std::vector<uint64_t>& sorted_ns, double q) {
  if (sorted_ns.empty()) return 0;
  size_t rank = size_t(std::ceil(q * double(sorted_ns.size())));
  rank = std::clamp<size_t>(rank, 1, sorted_ns.size());
  return double(sorted_ns[rank - 1]) / 1e6;
}

class Recorder {
 public:
  void sent() {
    std::lock_guard lock(mu_);
    ++sent_;
  }
  void record(uint64_t latency_ns, const Status& status) {
    const uint64_t now = shm::monotonic_ns();
    {
      std::lock_guard lock(mu_);
      ++finished_;
      if (status.is_ok()) {
        latencies_.push_back(latency_ns);
        window_.push_back(latency_ns);
        if (now <= window_end_) ++ok_in_window_;
      } else {
        ++errors_[status.code()];
        if (status.code() == ErrorCode::kServerGone) server_gone_ = true;
        if (first_error_.empty()) first_error_ = status.message();
      }
    }
    drained_.notify_all();
  }
  void set_window_end(uint64_t end_ns) {
    std::lock_guard lock(mu_);
    window_end_ = end_ns;
  }
  bool server_gone() {
    std::lock_guard lock(mu_);
    return server_gone_;
  }
  // Waits until every sent request finished, at most until deadline_ns.
  bool drain(uint64_t deadline_ns) {
    std::unique_lock lock(mu_);
    for (;;) {
      if (finished_ >= sent_) return true;
      const uint64_t now = shm::monotonic_ns();
      if (now >= deadline_ns) return false;
      drained_.wait_for(
          lock, std::chrono::nanoseconds(std::min<uint64_t>(deadline_ns - now, 100'000'000)));
    }
  }
  // One line per second for --progress: what completed since the last call.
  void print_progress(double elapsed_s) {
    std::lock_guard lock(mu_);
    std::sort(window_.begin(), window_.end());
    uint64_t errors = 0;
    for (const auto& [code, n] : errors_) errors += n;
    fmt::print(stderr, "[{:6.1f}s] requests {:>9}  rate {:>9.1f}/s  p99 {:>8.2f} ms  errors {}\n",
               elapsed_s, sent_, double(window_.size()) / progress_interval_s(),
               percentile_ms(window_, 0.99), errors);
    std::fflush(stderr);
    window_.clear();
  }

  struct Summary {
    uint64_t requests = 0;
    uint64_t errors = 0;
    uint64_t ok_in_window = 0;
    std::map<ErrorCode, uint64_t> errors_by_code;
    std::string first_error;
    double p50 = 0, p90 = 0, p99 = 0, max = 0;
  };
  Summary summary() {
    std::lock_guard lock(mu_);
    Summary s;
    s.requests = sent_;
    s.errors_by_code = errors_;
    for (const auto& [code, n] : errors_) s.errors += n;
    s.ok_in_window = ok_in_window_;
    s.first_error = first_error_;
    std::sort(latencies_.begin(), latencies_.end());
    s.p50 = percentile_ms(latencies_, 0.50);
    s.p90 = percentile_ms(latencies_, 0.90);
    s.p99 = percentile_ms(latencies_, 0.99);
    s.max = latencies_.empty() ? 0 : double(latencies_.back()) / 1e6;
    return s;
  }

  static double progress_interval_s() { return 1.0; }

 private:
  std::mutex mu_;
  std::condition_variable drained_;
  uint64_t sent_ = 0;
  uint64_t finished_ = 0;
  uint64_t ok_in_window_ = 0;
  uint64_t window_end_ = UINT64_MAX;
  std::vector<uint64_t> latencies_;
  std::vector<uint64_t> window_;
  std::map<ErrorCode, uint64_t> errors_;
  std::string first_error_;
  bool server_gone_ = false;
};

// Prints a progress line every second until stopped.
class ProgressPrinter {
 public:
  ProgressPrinter(Recorder& recorder, uint64_t start_ns, bool enabled) {
    if (!enabled) return;
    thread_ = std::thread([this, &recorder, start_ns] {
      std::unique_lock lock(mu_);
      auto next = std::chrono::steady_clock::now() + std::chrono::seconds(1);
      while (!stop_) {
        if (cv_.wait_until(lock, next, [this] { return stop_; })) break;
        recorder.print_progress(double(shm::monotonic_ns() - start_ns) / 1e9);
        next += std::chrono::seconds(1);
      }
    });
  }
  ~ProgressPrinter() {
    {
      std::lock_guard lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    if (thread_.joinable()) thread_.join();
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;
  std::thread thread_;
};

// ---- load ----

// Connects `n` clients (at least one); fails if the first cannot connect, or if `need_all`.
Result<std::vector<Client>> connect_clients(const BenchOptions& o, uint32_t n, bool need_all,
                                            const client::ConnectOptions& options) {
  const std::string& model = o.model;
  std::vector<Client> clients;
  for (uint32_t i = 0; i < n; ++i) {
    auto c = connect_over(o.model, o.transport, options);
    if (!c.is_ok()) {
      if (clients.empty()) return c.status();
      if (need_all) {
        return Status(c.status().code(),
                      fmt::format("the load needs {} client lanes of model '{}', only {} could be "
                                  "had: {}",
                                  n, model, clients.size(), c.status().message()));
      }
      break;
    }
    clients.push_back(std::move(c).value());
  }
  return clients;
}

void run_concurrency(std::vector<Client>& clients, const Inputs& inputs, uint32_t concurrency,
                     uint64_t end_ns, std::chrono::milliseconds timeout, Recorder& recorder) {
  std::atomic<bool> stop{false};
  std::vector<std::thread> threads;
  for (uint32_t t = 0; t < concurrency; ++t) {
    threads.emplace_back([&, t] {
      Client& c = clients[t % clients.size()];
      while (!stop.load(std::memory_order_relaxed) && shm::monotonic_ns() < end_ns) {
        recorder.sent();
        const uint64_t start = shm::monotonic_ns();
        Result<InferResult> r = c.infer(inputs.tensors, timeout);
        recorder.record(shm::monotonic_ns() - start, r.status());
        if (!r.is_ok() && r.status().code() == ErrorCode::kServerGone) stop.store(true);
      }
    });
  }
  for (auto& th : threads) th.join();
}

void run_rate(std::vector<Client>& clients, const Inputs& inputs, double rate, bool poisson,
              uint64_t seed, uint64_t start_ns, uint64_t end_ns, std::chrono::milliseconds timeout,
              Recorder& recorder) {
  std::mt19937_64 rng(seed ^ 0x9e3779b97f4a7c15ULL);
  std::exponential_distribution<double> exponential(rate);
  const double period_ns = 1e9 / rate;
  double next = double(start_ns);
  for (uint64_t k = 0;; ++k) {
    next += poisson ? exponential(rng) * 1e9 : period_ns;
    const uint64_t scheduled = uint64_t(next);
    if (scheduled >= end_ns) break;
    const uint64_t now = shm::monotonic_ns();
    if (scheduled > now) {
      std::this_thread::sleep_for(std::chrono::nanoseconds(scheduled - now));
    }
    if (recorder.server_gone()) break;
    recorder.sent();
    clients[k % clients.size()].infer_async(
        inputs.tensors,
        [&recorder, scheduled](Result<InferResult> r) {
          recorder.record(shm::monotonic_ns() - scheduled, r.status());
        },
        timeout);
  }
}

// "server gone" -> "server_gone", for JSON keys.
std::string code_name(ErrorCode code) {
  std::string name(error_code_name(code));
  std::replace(name.begin(), name.end(), ' ', '_');
  return name;
}

}  // namespace

int run_bench(const std::string& instance, const BenchOptions& o) {
  const bool rate_mode = o.rate.has_value();
  const std::chrono::milliseconds timeout(o.timeout_ms);
  client::ConnectOptions connect;
  connect.instance = instance;
  connect.default_timeout = timeout;
  const uint32_t concurrency = rate_mode ? 0 : *o.concurrency;
  // Spinning pays off with one request in flight; with more, it steals the worker's cores.
  connect.spin = std::chrono::microseconds(o.spin_us.value_or(concurrency == 1 ? 20 : 0));

  auto first = connect_over(o.model, o.transport, connect);
  if (!first.is_ok()) {
    fmt::print(stderr, "slicectl: {}\n", first.status().message());
    return kExitFailure;
  }
  const uint32_t per_client = first->max_in_flight();
  uint32_t wanted = o.clients;
  if (wanted == 0) {
    wanted = rate_mode ? 2 : (concurrency + per_client - 1) / per_client;
  }
  if (!rate_mode) wanted = std::min(wanted, concurrency);
  std::vector<Client> clients;
  clients.push_back(std::move(first).value());
  if (wanted > 1) {
    auto more = connect_clients(o, wanted - 1, !rate_mode && o.clients == 0, connect);
    if (!more.is_ok() && !rate_mode) {
      fmt::print(stderr, "slicectl: {}\n", more.status().message());
      return kExitFailure;
    }
    if (more.is_ok()) {
      for (Client& c : *more) clients.push_back(std::move(c));
    }
  }
  if (!rate_mode && uint64_t(clients.size()) * per_client < concurrency) {
    fmt::print(stderr,
               "slicectl: concurrency {} needs {} request slots, {} client lanes of model '{}' "
               "give {}\n",
               concurrency, concurrency, clients.size(), o.model, clients.size() * per_client);
    return kExitFailure;
  }
  const Inputs inputs = make_inputs(clients.front().spec(), o.seed);

  Recorder recorder;
  const uint64_t start = shm::monotonic_ns();
  const uint64_t end = start + uint64_t(o.duration_s * 1e9);
  recorder.set_window_end(end);
  {
    ProgressPrinter progress(recorder, start, o.progress);
    if (rate_mode) {
      run_rate(clients, inputs, *o.rate, o.poisson, o.seed, start, end, timeout, recorder);
      // Answers (or timeouts) of what was sent; each request gives up by its own timeout.
      recorder.drain(shm::monotonic_ns() + uint64_t(o.timeout_ms) * 1'000'000 + 1'000'000'000);
    } else {
      run_concurrency(clients, inputs, concurrency, end, timeout, recorder);
    }
  }
  const double window_s = double(std::min(shm::monotonic_ns(), end) - start) / 1e9;
  const size_t lanes = clients.size();
  clients.clear();  // waits for whatever is still in flight

  const Recorder::Summary s = recorder.summary();
  const double throughput = window_s > 0 ? double(s.ok_in_window) / window_s : 0;
  // JSON: the concurrency as an integer, the rate as given.
  const nlohmann::json target = rate_mode ? nlohmann::json(*o.rate) : nlohmann::json(concurrency);
  if (o.json) {
    nlohmann::json j = {{"bench", "slicectl"},
                        {"model", o.model},
                        {"mode", rate_mode ? "rate" : "concurrency"},
                        {"target", target},
                        {"duration_s", o.duration_s},
                        {"requests", s.requests},
                        {"errors", s.errors},
                        {"throughput_rps", throughput},
                        {"p50_ms", s.p50},
                        {"p90_ms", s.p90},
                        {"p99_ms", s.p99},
                        {"max_ms", s.max}};
    nlohmann::json by_code = nlohmann::json::object();
    for (const auto& [code, n] : s.errors_by_code) by_code[code_name(code)] = n;
    j["errors_by_code"] = by_code;
    if (rate_mode) j["poisson"] = o.poisson;
    fmt::print("{}\n", j.dump());
  } else {
    fmt::print("slicectl bench: model {}, {} {}{}, {:.1f} s, {} client lane(s)\n", o.model,
               rate_mode ? "rate" : "concurrency", target.dump(),
               rate_mode ? (o.poisson ? "/s poisson" : "/s") : "", o.duration_s, lanes);
    fmt::print("  requests    {}\n", s.requests);
    fmt::print("  throughput  {:.1f} infer/s\n", throughput);
    fmt::print("  latency     p50 {:.3f} ms  p90 {:.3f} ms  p99 {:.3f} ms  max {:.3f} ms\n", s.p50,
               s.p90, s.p99, s.max);
    std::string errors;
    for (const auto& [code, n] : s.errors_by_code) {
      errors += fmt::format("{}{} {}", errors.empty() ? "" : ", ", code_name(code), n);
    }
    fmt::print("  errors      {}{}\n", s.errors, errors.empty() ? "" : " (" + errors + ")");
  }
  if (s.errors > 0) fmt::print(stderr, "slicectl bench: first error: {}\n", s.first_error);
  if (s.requests == s.errors) {
    fmt::print(stderr, "slicectl bench: no request succeeded\n");
    return kExitFailure;
  }
  return kExitOk;
}

}  // namespace sliceserve::slicectl
