#pragma once
// sliceserved's configuration: the TOML file, parsed and validated. Every key is documented in
// docs/config.md. Errors name the file, the line and the key.

#include <cstdint>
#include <map>
#include <nlohmann/json_fwd.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "sliceserve/controller/policy.h"
#include "sliceserve/shm/status.h"
#include "sliceserve/shm/tensor_spec.h"

namespace sliceserve::controller {

// [backend.cpu] mode: how a cpu slice is resized.
enum class CpuMode { kProcess, kAffinity };

// A model's backend, as `backend = "..."` and `slicectl backend` name it: "cpu:process",
// "cpu:affinity", "mps", "greenctx", "cumask".
enum class Backend { kCpuProcess, kCpuAffinity, kMps, kGreenctx, kCumask };

// [backend.mps] control: who runs the MPS control daemon.
enum class MpsControlMode {
  kStart,   // the controller starts its own (pipe and log dirs under its runtime dir by default)
  kAttach,  // one someone else started, at pipe_dir
  kOff,     // no MPS: the workers time-share the GPU (the baseline a benchmark compares against)
};
// [backend.mps] fallback: what happens when MPS cannot be started or reached.
enum class MpsFallbackMode { kError, kTimeshare };
// [backend.mps] thread_percentage: each mps worker's CUDA_MPS_ACTIVE_THREAD_PERCENTAGE.
enum class MpsThreads {
  kSlice,  // the model's slice
  kFull,   // 100 for every worker, MPS's default; slices then only feed the policy
};

struct TensorConfig {
  std::string name;
  shm::DataType dtype = shm::DataType::kFp32;
  std::vector<int64_t> shape;  // per item, without the batch dimension
};

struct ModelConfig {
  std::string name;                    // [A-Za-z0-9_-]{1,48}, unique
  std::string kind = "synthetic";      // "synthetic" | "null" | "onnx"
  std::string path;                    // model file, for kinds that load one (resolved against the
                                       // config file's folder); must exist when given
  double slo_ms = 100;                 // p99 latency objective, > 0
  double slice = 0;                    // initial share, percent of the device, (0, 100]
  uint32_t max_batch = 8;              // 1..shm::kMaxBatch
  uint32_t max_queue_delay_us = 1000;  // how long a partial batch waits for more requests
  double flops_per_item = 1e6;         // synthetic kind: arithmetic per item (FMA = 2 flops), >= 0
  uint32_t working_set_kb = 256;       // synthetic kind: per-thread working set, >= 1
  uint32_t weights_mb = 0;             // synthetic kind: weights shared by live and shadow workers
  uint32_t load_delay_ms = 0;      // synthetic kind: extra load time (emulates a slow model load)
  std::optional<Backend> backend;  // `backend = "..."`; unset: from [server] backend
  std::optional<uint32_t> device_mem_mb;  // mps: CUDA_MPS_PINNED_DEVICE_MEM_LIMIT, MiB
  bool policy = true;                     // false: the policy never changes this model
  // cumask: a layer profile of this model (slicectl profile; resolved like path, parsed and
  // checked against the model file at load) and whether its workers launch each layer on the
  // CUs of its right size (KRISP, docs/amd.md). right_size needs the cumask backend and a profile
  // measured on hip.
  std::string profile;
  bool right_size = false;
  std::vector<TensorConfig> inputs;   // at least one, at most shm::kMaxTensors (onnx: from the file
                                      // when the config leaves them out)
  std::vector<TensorConfig> outputs;  // at least one, at most shm::kMaxTensors
  uint32_t lanes = 16;                // client lanes in the segment, 1..shm::kMaxLanes
  uint32_t slots_per_lane = 16;  // in-flight requests per client lane, 1..shm::kMaxSlotsPerLane
  uint32_t source_line = 0;      // line of the [[model]] table, for later error messages
};

struct ServerConfig {
  std::string instance = "default";     // namespaces the segments: /sliceserve.<instance>.<model>
  std::string backend = "cpu";          // "cpu" | "mps" | "greenctx" (with the cuda wing) |
                                        // "cumask" (with the hip wing)
  uint32_t policy_interval_ms = 500;    // > 0
  std::string log_level = "info";       // trace|debug|info|warn|error|off
  std::string tcp = "127.0.0.1:8700";   // the TCP front-end (docs/protocol.md); empty: off
  // The file names `tcp`: failing to bind it stops the daemon. The default address taken (by a
  // second instance on the host) only costs that daemon its TCP front-end, with a warning.
  bool tcp_configured = false;
  std::string http = "127.0.0.1:8000";  // the HTTP front-end (docs/http.md); empty: off
  // As tcp_configured, for `http`.
  bool http_configured = false;
  uint32_t http_max_body_mb = 64;  // an HTTP infer request's body, JSON and binary; beyond: 413
  // The front-ends' shared secret; empty: $SLICESERVE_TOKEN, read at start. Required when a
  // front-end listens beyond loopback.
  std::string token;
  uint32_t tcp_max_connections = 256;    // more are told "busy" and closed
  uint32_t tcp_idle_timeout_ms = 30000;  // a TCP client idle this long is cut off
  uint32_t tcp_io_threads = 0;           // 0: one per two cores, at most two
  uint32_t io_poll_us = 50;              // the front-ends' poll_us (TcpServerOptions)
  std::string worker_binary;                 // empty: sliceserve-worker next to sliceserved
  uint32_t restart_backoff_min_ms = 200;     // first restart delay after a worker death
  uint32_t restart_backoff_max_ms = 10000;   // doubling stops here
  uint32_t worker_ready_timeout_ms = 30000;  // a worker that is not READY by then is killed
  uint32_t shutdown_grace_ms = 3000;         // SIGTERM -> SIGKILL delay for workers at stop
};

// [server] token: at least this long, so that it cannot be guessed over a network.
inline constexpr size_t kMinTokenBytes = 16;

struct CpuBackendConfig {
  CpuMode mode = CpuMode::kProcess;
  uint32_t cores = 0;  // 0: all online cores of the machine
};

struct MpsBackendConfig {
  MpsControlMode control = MpsControlMode::kStart;
  // kStart: empty means <runtime dir>/mps/pipe and .../log; kAttach: empty means NVIDIA's
  // defaults (/tmp/nvidia-mps, /var/log/nvidia-mps).
  std::string pipe_dir;
  std::string log_dir;
  MpsFallbackMode fallback = MpsFallbackMode::kError;
  MpsThreads thread_percentage = MpsThreads::kSlice;
  uint32_t device = 0;  // CUDA device ordinal the workers use (after CUDA_VISIBLE_DEVICES)
};

struct GreenctxBackendConfig {
  uint32_t device = 0;  // CUDA device ordinal
  bool mps = false;     // workers are MPS clients at 100%, so several processes run at once
};

// [backend.cumask] policy: where a slice's CUs sit (docs/amd.md shows the bit layouts).
enum class CumaskPolicy {
  kSpread,  // the lowest CUs, balanced over the shader engines
  kPack,    // one shader engine filled before the next
};

struct CumaskBackendConfig {
  uint32_t device = 0;  // HIP device ordinal (after HIP_VISIBLE_DEVICES)
  CumaskPolicy policy = CumaskPolicy::kSpread;
  uint32_t shader_engines = 0;  // 0: from the device's architecture (HIP does not report it)
  std::optional<bool> wgp;      // CU pairs (gfx10+); unset: from the architecture
};

// [policy]: the SLO controller. Its tuning knobs are PolicyConfig (policy.h).
struct PolicySection {
  bool enabled = true;  // false: slices and batches stay as configured
  PolicyConfig tuning;
  uint32_t resize_timeout_ms = 30000;  // a shadow not READY by then fails the resize
  uint32_t failed_resize_backoff_ms =
      5000;  // no new resize of a model for this long after one failed
};

struct Config {
  std::string source_path;  // the file it came from (empty when parsed from text)
  ServerConfig server;
  CpuBackendConfig cpu;
  MpsBackendConfig mps;
  GreenctxBackendConfig greenctx;
  CumaskBackendConfig cumask;
  PolicySection policy;
  std::vector<ModelConfig> models;  // at least one

  const ModelConfig* find_model(std::string_view name) const;
  // The model's own `backend`, else [server] backend (cpu: in [backend.cpu] mode).
  Backend backend_of(const ModelConfig& model) const;
  // The model's backend makes its worker an MPS client: mps, or greenctx with
  // [backend.greenctx] mps = true; never with [backend.mps] control = "off".
  bool wants_mps(Backend backend) const;
  // Some model wants MPS at load, so the controller starts or attaches to the control daemon.
  bool needs_mps_control() const;
};

// "cpu:process", "cpu:affinity", "mps", "greenctx", "cumask": the names `slicectl backend` and
// the model key use.
std::string backend_name(Backend backend);
// Parses a backend name ("cpu" is cpu:process); kUnavailable for backends this build does not
// have (mps and greenctx without the cuda wing, cumask without the hip wing), kInvalidArgument
// for unknown names.
Result<Backend> parse_backend_name(std::string_view name);
// The worker's --backend: "cpu", "mps", "greenctx" or "cumask".
std::string_view backend_family(Backend backend);
// cpu:affinity, greenctx and cumask switch slices inside the live worker; the others by shadow
// worker.
bool resizes_in_place(Backend backend);
bool is_gpu_backend(Backend backend);
// Whether the model's kind can run on the backend: kInvalidArgument "model kind 'synthetic'
// runs on the cpu backend only" for synthetic and null models on a GPU backend.
Status check_kind_on_backend(const ModelConfig& model, Backend backend);
// greenctx under MPS needs the active thread percentage unset or 100. `active_thread_percentage`
// is sliceserved's own CUDA_MPS_ACTIVE_THREAD_PERCENTAGE (nullptr when unset), which its workers
// inherit: kInvalidArgument "greenctx must not be combined with an MPS thread percentage below
// 100: ..." when a model uses greenctx and it is below 100 (or not a percentage).
Status check_greenctx_environment(const Config& config, const char* active_thread_percentage);

// Reads and validates a config file. Errors: "FILE:LINE: key 'model[1].slice': must be ..."
Result<Config> load_config(const std::string& path);
// Same, from text; `source_name` stands for the file in messages and relative paths.
Result<Config> parse_config(std::string_view text, const std::string& source_name);

// A model loaded into a running daemon (docs/http.md, "Admin"), checked by the same rules as a
// [[model]] table of a file, on the backends `base` configures. From TOML text holding exactly
// one [[model]] table, or from a JSON object with the same keys. Relative paths resolve against
// the folder of base's file. Errors as load_config's ("SOURCE:LINE: key 'model.slice': ...";
// no line for JSON). Names already served and the device's room are the daemon's to check.
Result<ModelConfig> parse_model_toml(const Config& base, std::string_view text,
                                     const std::string& source_name);
Result<ModelConfig> parse_model_json(const Config& base, const nlohmann::json& model,
                                     const std::string& source_name);

std::string_view cpu_mode_name(CpuMode mode);
// "spread" / "pack", as [backend.cumask] policy and the worker's --cu-policy spell them.
std::string_view cumask_policy_name(CumaskPolicy policy);

}  // namespace sliceserve::controller
