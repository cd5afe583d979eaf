#pragma once
// slicectl's subcommands, shared by slicectl_main.cpp and the slicectl_*.cpp that implement them.

#include <cstdint>
#include <optional>
#include <string>

namespace sliceserve::slicectl {

// Exit codes: 0 success, 1 failure (its reason on stderr). CLI11 reports usage errors itself.
inline constexpr int kExitOk = 0;
inline constexpr int kExitFailure = 1;

struct StatusOptions {
  bool json = false;
};
int run_status(const std::string& instance, const StatusOptions& options);

struct BenchOptions {
  std::string model;
  std::optional<double> rate;           // open loop, requests per second
  std::optional<uint32_t> concurrency;  // closed loop, requests in flight
  double duration_s = 10;
  uint32_t timeout_ms = 10000;
  bool poisson = false;  // rate mode: exponential inter-arrival times
  bool json = false;
  bool progress = false;            // one line per second on stderr
  uint32_t clients = 0;             // client lanes to use, 0: automatic
  std::optional<uint32_t> spin_us;  // sync spin before sleeping, default: automatic
  uint64_t seed = 1;                // input data
};
int run_bench(const std::string& instance, const BenchOptions& options);

// resize / policy / backend, through sliceserved's admin socket.
struct ControlOptions {
  std::string command;  // "resize" | "policy" | "backend"
  std::string model;
  double slice = 0;       // resize
  bool policy_on = true;  // policy
  std::string backend;    // backend, e.g. "cpu:affinity"
  bool wait = true;       // resize/backend: wait until the swap is done or failed
  uint32_t wait_timeout_ms = 60000;
};
int run_control(const std::string& instance, const ControlOptions& options);

}  // namespace sliceserve::slicectl
