#pragma once
// handover_bench: a constant request rate at one model while it is resized many times, once with
// shadow resizes (cpu mode=process) and once with instant ones (cpu mode=affinity); with
// --backends gpu and an ONNX model (--onnx), shadow resizes on `mps` and instant ones on
// `greenctx` (the synthetic kind runs on the cpu backend only). The real
// sliceserved and sliceserve-worker run as child processes; the bench is their client and
// operator (admin socket), and reads the workers' timing from the model's segment.
//
//   handover_daemon.cpp  the daemon child process, its config, the admin socket, status polls
//   handover_load.cpp    the open-loop load generator (one record per request)
//   handover_report.cpp  the metrics, the CSV and the gnuplot figure

#include <sys/types.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "sliceserve/client/client.h"
#include "sliceserve/shm/segment.h"
#include "sliceserve/shm/status.h"

namespace sliceserve::bench {

inline constexpr const char* kModel = "bench";
inline constexpr int kTensorElements = 16;  // FP32 [16] -> [16]
inline constexpr uint64_t kMs = 1'000'000;

enum class Mode { kShadow, kInstant };
const char* mode_name(Mode mode);  // "shadow" | "instant"

// Which backends the modes run on: cpu (shadow cpu:process, instant cpu:affinity, the synthetic
// model) or gpu (shadow mps, instant greenctx, an ONNX model).
enum class BackendSet { kCpu, kGpu };

struct Options {
  std::vector<Mode> modes{Mode::kShadow, Mode::kInstant};
  int resizes = -1;  // -1: 25 for shadow, 200 for instant
  double rate = 1500;
  double warmup_s = 2.0;
  double tail_s = 0.5;  // load after the last resize
  uint64_t spacing_ms = 100;
  int clients = 2;
  int client_cpu = -2;  // the bench's own threads (sender, completions, polls); -2: the last
                        // online cpu when there are several, -1: not pinned
  double slice_low = 30;
  double slice_high = 60;
  uint32_t weights_mb = 64;
  uint32_t load_delay_ms = 300;
  double flops_per_item = 2e5;
  std::string out_dir;        // default: build/bench next to the build tree
  std::string dump_requests;  // a CSV of every request, for diagnosis
  std::string bin_dir;        // default: the folder of this executable
  BackendSet backends = BackendSet::kCpu;
  std::string onnx_path;  // kind = "onnx" from this file (absolute); empty: synthetic
  int max_batch = 4;
  int slots_per_lane = 256;  // onnx: 16 by default (an image slot is ~600 KB of shared memory)
  int device = 0;            // gpu: the CUDA ordinal of [backend.mps] / [backend.greenctx]
  std::string mps_control = "start";  // gpu: [backend.mps] control (start | attach | off)

  bool onnx() const { return !onnx_path.empty(); }
};
// The backend name a mode's model gets in the config ("cpu:process", "mps", ...).
const char* backend_name(const Options& options, Mode mode);

uint64_t now_ns();  // CLOCK_MONOTONIC, the clock the workers stamp with
std::string self_dir();

// ---- daemon (handover_daemon.cpp) ----

class Daemon {
 public:
  // Writes a config for `mode` into a private temporary folder, starts sliceserved with its
  // output in `log_path`, and waits until the model's worker serves.
  static Result<std::unique_ptr<Daemon>> start(const Options& options, Mode mode,
                                               const std::string& log_path);
  // The same for any config (goodput_bench): `config` names `instance` and serves `models`;
  // sliceserved and sliceserve-worker are in `bin_dir`. Waits until every model's worker
  // serves, at most `timeout_ms`; `fail_on_worker_error`: a model's last_error ends the wait
  // (a GPU worker that cannot load is restarted for ever).
  static Result<std::unique_ptr<Daemon>> launch(const std::string& config,
                                                const std::string& instance,
                                                std::vector<std::string> models,
                                                const std::string& bin_dir,
                                                const std::string& log_path,
                                                bool fail_on_worker_error,
                                                uint64_t timeout_ms = 60'000);
  ~Daemon();  // kills a daemon that was not stopped, removes the temporary folder

  const std::string& instance() const { return instance_; }
  shm::Segment& segment() { return segments_.front(); }  // the first model's
  pid_t pid() const { return pid_; }
  // SIGTERM, then waits (up to `timeout_ms`) for an exit status of 0.
  Status stop(int timeout_ms = 15000);

  Result<nlohmann::json> call(const nlohmann::json& request, int timeout_ms = 5000) const;
  // The status entry of the model (default: the first one).
  Result<nlohmann::json> model_status(int timeout_ms = 5000) const;
  Result<nlohmann::json> model_status(const std::string& model, int timeout_ms) const;

 private:
  Daemon() = default;
  std::string instance_;
  std::string dir_;
  std::string log_path_;
  pid_t pid_ = -1;
  std::vector<std::string> models_;
  std::vector<shm::Segment> segments_;  // attached in models_' order
};

// Keeps the latest status of the model fresh on its own thread, one admin call every 2 ms, so
// the caller can poll shared memory meanwhile.
class StatusPoller {
 public:
  struct Snapshot {
    uint64_t asked_ns = 0;  // when the request that produced it was sent
    nlohmann::json model;   // the model's entry
  };
  explicit StatusPoller(const Daemon& daemon);
  ~StatusPoller();
  // The latest snapshot asked for at or after `since_ns`, if any yet.
  std::optional<Snapshot> latest(uint64_t since_ns) const;

 private:
  const Daemon& daemon_;
  mutable std::mutex mu_;
  Snapshot latest_;
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

// Private_Clean + Private_Dirty of a process from /proc/<pid>/smaps_rollup, bytes; nullopt when
// it is gone.
std::optional<uint64_t> private_bytes(pid_t pid);

// The objects ("dev inode") a process maps, from /proc/<pid>/maps.
std::vector<std::string> mapped_objects(pid_t pid);

// Memory a process holds beyond `other`'s (sorted mapped_objects of another process), from
// /proc/<pid>/smaps, bytes. smaps calls a page "private" when only this process maps it, so a
// shared-memory page that the other process simply has not touched yet would count; here a
// shared mapping of an object the other process maps counts nothing, a private mapping of one
// (a library) only its copied-on-write pages (Private_Dirty), and everything else
// Private_Clean + Private_Dirty. nullopt when the process is gone.
std::optional<uint64_t> extra_bytes(pid_t pid, const std::vector<std::string>& other);

// ---- load (handover_load.cpp) ----

enum class Outcome : uint8_t { kPending = 0, kOk = 1, kError = 2, kWrongOutput = 3 };

struct Request {
  uint64_t send_ns = 0;
  std::atomic<uint64_t> done_ns{0};     // the answer reached the client (completion callback)
  std::atomic<uint64_t> queue_ns{0};    // enqueued -> claimed by a worker
  std::atomic<uint64_t> compute_ns{0};  // claimed -> DONE
  std::atomic<uint8_t> outcome{0};
};

class Load {
 public:
  // Connects `clients` clients to the daemon's model. `onnx`: the model's one FP32 input is
  // filled from the request's variant (kVariants seeded patterns) and each answer is checked
  // against the first answer to the same variant (1e-2 of its largest |element|: another worker
  // or slice may pick other cuDNN algorithms); otherwise the synthetic y = 2x + 1, exactly.
  static Result<std::unique_ptr<Load>> connect(const std::string& instance, int clients,
                                               bool onnx = false);
  ~Load();

  void start(double rate);  // the sender thread, open loop from now on
  void stop_sending();
  // Waits until every sent request is answered or `timeout_ms` passes; true if all were.
  bool drain(int timeout_ms);
  void disconnect();  // destroys the clients

  uint64_t started_ns() const { return started_ns_; }
  size_t sent() const { return sent_.load(std::memory_order_acquire); }
  uint64_t answered() const { return answered_.load(std::memory_order_acquire); }
  // After drain(): the records of every sent request.
  const Request& request(size_t i) const { return chunks_[i >> kChunkBits][i & kChunkMask]; }
  std::vector<std::string> first_errors() const;

 private:
  static constexpr size_t kChunkBits = 16;
  static constexpr size_t kChunkMask = (size_t{1} << kChunkBits) - 1;
  static constexpr size_t kMaxChunks = 4096;  // 268M requests

  Load() = default;
  void send_loop(double rate);
  void on_done(size_t index, Result<client::InferResult> result);
  // The onnx check of one answer; "" when it is right.
  std::string check_onnx(size_t index, std::span<const float> y);

  static constexpr size_t kVariants = 4;
  bool onnx_ = false;
  std::string input_name_ = "x";
  std::vector<int64_t> input_shape_{kTensorElements};
  size_t output_elements_ = kTensorElements;
  std::vector<std::vector<float>> variants_;  // onnx: the inputs
  std::mutex reference_mu_;
  std::vector<std::vector<float>> references_;  // onnx: the first answer per variant

  std::vector<std::unique_ptr<client::Client>> clients_;
  std::vector<std::unique_ptr<Request[]>> chunks_;  // kMaxChunks slots, filled by the sender
  std::thread sender_;
  std::atomic<bool> stop_{false};
  std::atomic<size_t> sent_{0};
  std::atomic<uint64_t> answered_{0};
  uint64_t started_ns_ = 0;
  mutable std::mutex errors_mu_;
  std::vector<std::string> errors_;
};

// Input element k of request i and the output the synthetic model must return (y = 2x + 1);
// both exact in FP32.
inline float input_value(size_t request, int k) {
  return float((request * kTensorElements + size_t(k)) % 4096) * 0.25f;
}

// ---- report (handover_report.cpp) ----

struct ResizeEvent {
  double from = 0;
  double to = 0;
  bool ok = false;
  uint64_t command_ns = 0;        // just before the admin call
  uint64_t replied_ns = 0;        // its reply arrived (the daemon answers once it started it)
  uint64_t done_ns = 0;           // the bench saw "resizing": false
  uint64_t swap_ns = 0;           // slice_changed_ns of the epoch that serves afterwards
  uint64_t first_batch_ns = 0;    // first_batch_at_slice_ns of that epoch
  double shadow_private_mb = -1;  // shadow only: most memory it added (extra_bytes) before the swap
  double shadow_private_raw_mb = -1;  // the same from smaps_rollup Private_* (over-counts)
  bool ready_sampled = false;         // a sample was taken while it was READY
  std::string note;                   // failure text
};

struct RunData {
  Mode mode = Mode::kShadow;
  std::string backend;  // the config's backend name
  std::string model;    // "synthetic" or the ONNX file's stem
  double rate = 0;
  uint64_t load_start_ns = 0;
  uint64_t resize_phase_ns = 0;  // first resize command
  uint64_t load_end_ns = 0;      // sender stopped
  std::vector<uint64_t> send_ns;
  std::vector<uint64_t> done_ns;  // 0: no answer
  // When the worker completed it: send + (DONE - enqueued). The client stamps enqueued right
  // after send_ns, so this is the worker's completion time give or take the submit call.
  std::vector<uint64_t> server_done_ns;
  std::vector<uint32_t> queue_us, compute_us;  // per request, as the worker stamped them
  std::vector<Outcome> outcome;
  std::vector<ResizeEvent> resizes;
  uint64_t completed_total = 0;  // workers, all epochs
  double extra_rss_mb = 0;
  uint32_t weights_mb = 0;
};

// One pause metric over the resizes and, for comparison, over windows of the same length in the
// warm-up (no resize).
struct Gap {
  double p50_us = 0;
  double p99_us = 0;
  double steady_p50_us = 0;
  double steady_p99_us = 0;
};

// Per resize (the successful ones), microseconds.
struct ResizeRow {
  size_t index = 0;            // in RunData::resizes
  double stall_us = 0;         // swap gap (client clock), window command-5ms .. swap+50ms
  double stall_server_us = 0;  // the same, worker clock
  double swap_only_us = 0;     // window swap-5ms .. swap+50ms, client clock
  double swap_only_server_us = 0;
  double raw_us = 0;           // longest interval between completions in the first window
  double effect_us = 0;        // command -> first batch at the new slice
  double apply_us = 0;         // command -> slice in force (instant) / new worker serving (shadow)
  double first_batch_us = 0;   // slice in force -> first batch
  double request_wait_us = 0;  // of which no request was there to run (none waiting at the swap)
  double admin_us = 0;         // the admin call's round trip
};

struct Metrics {
  std::vector<ResizeRow> rows;
  uint64_t requests = 0;
  uint64_t lost = 0;
  int64_t duplicated = 0;
  uint64_t wrong_outputs = 0;
  uint64_t resizes_ok = 0;
  // Stall: the longest time within the window during which a request was waiting and none
  // completed (a pause in completions, the idle time between requests left out), by the client's
  // clock of the answers. The window is [command - 5 ms, swap + 50 ms].
  Gap swap_gap;
  Gap swap_gap_server;  // the same by the worker's completion times
  Gap swap_only;        // window [swap - 5 ms, swap + 50 ms]: the handover without the load
  Gap swap_only_server;
  Gap raw;  // the longest interval between two completions, idle time included
  double resize_effect_p50_us = 0;
  double resize_effect_p99_us = 0;  // command -> first batch at the new slice
  double apply_p50_us = 0;          // command -> slice in force
  double apply_p99_us = 0;
  double first_batch_p50_us = 0;  // slice in force -> first batch
  double first_batch_p99_us = 0;
  double effect_busy_p50_us = 0;  // resize effect without the wait for a request to arrive
  double effect_busy_p99_us = 0;
  double admin_p50_us = 0;  // the resize admin call's round trip
  double admin_p99_us = 0;
  double steady_rps = 0;
  double worst_rps = 0;
  double throughput_dip_pct = 0;
  double latency_p50_ms = 0;  // whole run
  double latency_p99_ms = 0;
};

Metrics compute_metrics(const RunData& run);
// Writes the CSV (t_ms, completions_per_s, p99_ms, resize): 100 ms windows.
Status write_csv(const RunData& run, const std::string& path);
// Every request: times relative to the load start, us; outcome as Outcome.
Status dump_requests(const RunData& run, const std::string& path);
// One row per resize (the ResizeRow fields).
Status write_resizes_csv(const RunData& run, const Metrics& metrics, const std::string& path);
// false (with a warning on stderr) when gnuplot is missing or fails.
bool plot_png(const RunData& run, const Metrics& metrics, const std::string& csv_path,
              const std::string& png_path);
std::string json_line(const RunData& run, const Metrics& metrics);

}  // namespace sliceserve::bench
