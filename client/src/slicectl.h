#pragma once
// slicectl's subcommands, shared by slicectl_main.cpp and the slicectl_*.cpp that implement them.

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "sliceserve/client/client.h"

namespace sliceserve::slicectl {

// Exit codes: 0 success, 1 failure (its reason on stderr). CLI11 reports usage errors itself
// (with its own codes, 105 and up). run-model and infer answer 2 when the files named on the
// command line are wrong: missing, malformed, not matching the model's tensors or their shapes.
inline constexpr int kExitOk = 0;
inline constexpr int kExitFailure = 1;
inline constexpr int kExitBadInput = 2;

struct StatusOptions {
  bool json = false;
};
int run_status(const std::string& instance, const StatusOptions& options);

// How bench and infer reach the model: a lane of its shared-memory segment (same host), the
// daemon's TCP front-end, or its KServe v2 HTTP front-end (binary tensors). The TCP and HTTP
// token comes from $SLICESERVE_TOKEN.
struct Transport {
  std::string name = "shm";  // "shm" | "tcp" | "http"
  std::string address;       // tcp/http: host:port; empty: 127.0.0.1:8700 / :8000
};
Result<client::Client> connect_over(const std::string& model, const Transport& transport,
                                    const client::ConnectOptions& options);

struct BenchOptions {
  std::string model;
  std::optional<double> rate;           // open loop, requests per second
  std::optional<uint32_t> concurrency;  // closed loop, requests in flight
  double duration_s = 10;
  uint32_t timeout_ms = 10000;
  bool poisson = false;  // rate mode: exponential inter-arrival times
  bool json = false;
  bool progress = false;                   // one line per second on stderr
  uint32_t clients = 0;                    // client lanes to use, 0: automatic
  std::optional<uint32_t> spin_us;         // sync spin before sleeping, default: automatic
  uint64_t seed = 1;                       // input data
  Transport transport;
};
int run_bench(const std::string& instance, const BenchOptions& options);

// resize / policy / backend, through sliceserved's admin socket.
struct ControlOptions {
  std::string command;  // "resize" | "policy" | "backend" | "unload"
  std::string model;
  double slice = 0;       // resize
  bool policy_on = true;  // policy
  std::string backend;    // backend, e.g. "cpu:affinity"
  bool wait = true;       // resize/backend: wait until the swap is done or failed
  uint32_t wait_timeout_ms = 60000;
};
// run_control(AdminTarget, ControlOptions): slicectl_admin.h.

// run-model / infer: .npy files bound to a model's inputs and outputs. Plain files fill the
// tensors that no NAME=FILE pair names, in the model's declaration order. Every input needs a
// file; outputs without one are not written.
struct TensorFiles {
  std::vector<std::string> inputs;         // --input FILE
  std::vector<std::string> named_inputs;   // --input-name NAME=FILE
  std::vector<std::string> outputs;        // --output FILE
  std::vector<std::string> named_outputs;  // --output-name NAME=FILE
};

// run-model: an ONNX file run once on this machine through the engine, no daemon.
struct RunModelOptions {
  std::string model_path;
  TensorFiles files;
  unsigned threads = 0;        // compute threads, 0: every cpu this process may use (cuda: 1)
  std::string device = "cpu";  // the engine's device: cpu, cuda, cuda:<ordinal>
  unsigned runs = 1;           // runs of the same inputs; the outputs are the last run's
};
int run_model(const RunModelOptions& options);

// profile: each layer's latency at a range of unit counts, written as a layer profile
// (backends/layer_profile.h) for per-layer right-sizing; no daemon. Exit 2 for a bad device,
// unit list or model shape.
struct ProfileOptions {
  std::string model_path;
  std::string device = "cpu";        // cpu (thread counts) | hip:N (CU counts) | cuda:N (SMs)
  std::vector<unsigned> units;       // counts to measure, increasing; empty: a default range
  unsigned batch = 1;
  unsigned repeats = 5;              // timed runs per count (after one warm-up); the median counts
  std::string output;                // empty: MODEL.<cpu|hip|cuda>.profile.json beside the model
  std::string cu_policy = "spread";  // hip: spread | pack, as the workers' [backend.cumask]
  unsigned shader_engines = 0;       // hip: 0 = from the architecture
  std::string wgp = "auto";          // hip: auto | true | false
};
int run_profile(const ProfileOptions& options);

// infer: the same through a running sliceserved; a leading dimension of N items beyond the
// model's per-item shape sends N requests, all in flight, and stacks their outputs.
struct InferOptions {
  std::string model;
  TensorFiles files;
  uint32_t timeout_ms = 10000;  // per request
  Transport transport;
};
int run_infer(const std::string& instance, const InferOptions& options);

}  // namespace sliceserve::slicectl
