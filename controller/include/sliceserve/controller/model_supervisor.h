#pragma once
// One served model: its segment and its workers. The supervisor
//  - keeps a live worker: a dead or hung one is replaced with exponential backoff; requests
//    wait in the ring meanwhile and the next owner re-runs the orphans;
//  - resizes: in place through the mailbox when the backend can (cpu:affinity, greenctx),
//    otherwise by a shadow worker that loads at the new slice and takes the ring over
//    (cpu:process, mps, and every backend switch). A failed shadow leaves the live worker serving;
//  - sweeps dead clients' lanes and publishes the model's rates for slicectl status;
//  - on a GPU backend, keeps the model's device weights alive: its fd broker holds the VMM fds
//    the first worker published, for every later worker (shadow, restart) to map, for as long as
//    the model is served.
// Not thread-safe: the daemon calls it from its one loop thread.

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "sliceserve/controller/config.h"
#include "sliceserve/controller/mps_session.h"
#include "sliceserve/controller/policy.h"
#include "sliceserve/controller/stats_window.h"
#include "sliceserve/controller/worker_process.h"
#include "sliceserve/shm/fd_broker.h"
#include "sliceserve/shm/segment.h"

namespace sliceserve::controller {

struct Placement {
  unsigned machine_cores = 0;  // cores the cpu backend slices
  unsigned first_core = 0;     // where this model's threads start
};

// Where the cumask slice of model `name` sits on the device (backends::cu_placement): the initial
// shares of the config's cumask models in config order and its index among them, so each model
// gets its own CUs and a resize keeps its start. No shares for a model not configured on cumask
// (one moved there later starts at CU 0). Pure, for tests.
struct CumaskPlacement {
  std::vector<double> shares;
  size_t index = 0;
};
CumaskPlacement cumask_placement(const Config& config, const std::string& name);

// The command line of a worker for `model` as configured (slice, backend); pure, for tests.
std::vector<std::string> worker_arguments(const Config& config, const ModelConfig& model,
                                          const std::string& segment, uint64_t epoch,
                                          const Placement& placement);

// The entries a worker of `model` gets on top of the controller's environment; pure, for tests.
// Under a running MPS daemon an mps worker gets mps_worker_environment (the percentage of its
// slice, or 100 with thread_percentage = "full"; device_mem_mb as its pinned memory limit) and a
// greenctx worker (mps = true) the daemon's pipe and log dirs only. Nothing else does: cpu
// workers, control = "off", a time-shared fallback.
Result<std::vector<std::string>> worker_environment(const Config& config, const ModelConfig& model,
                                                    const MpsState& mps);

// The shares an in-place resizable worker prepares at load: min_slice, then every min_step.
std::vector<double> slice_pool(const PolicyConfig& policy);

// Builds the segment spec from the model's declared tensors.
Result<shm::ModelSpec> model_spec(const ModelConfig& model);

class ModelSupervisor {
 public:
  // `mps` must outlive the supervisor.
  static Result<std::unique_ptr<ModelSupervisor>> create(const Config& config,
                                                         const ModelConfig& model,
                                                         const std::string& worker_binary,
                                                         const Placement& placement,
                                                         const MpsState& mps);
  ~ModelSupervisor();

  const std::string& name() const { return model_.name; }
  const ModelConfig& model() const { return model_; }  // slice and backend as currently in force
  Backend backend() const { return config_.backend_of(model_); }
  // Why the last worker died (its own message, else how it ended); empty while none has.
  const std::string& last_error() const { return last_error_; }
  shm::Segment& segment() { return segment_; }
  uint64_t epoch() const { return epoch_; }
  pid_t worker_pid() const { return worker_ ? worker_->pid() : -1; }
  pid_t shadow_pid() const { return shadow_ ? shadow_->process.pid() : -1; }
  uint32_t restarts() const { return restarts_; }
  bool serving() const { return state_ == State::kServing; }
  // A shadow loads, an in-place resize awaits its ack, or a replaced worker still finishes its
  // last batch (the next resize waits for it, so epochs never outrun their stats blocks).
  bool resize_in_progress() const {
    return shadow_.has_value() || pending_.has_value() || !retired_.empty();
  }
  // The larger of the slice in force and the one a resize in progress moves to: what the model
  // may hold of the device until the resize is over.
  double committed_slice() const;
  // Requests completed over every epoch of this model so far.
  uint64_t completed_total() const;
  bool policy_on() const { return policy_on_; }
  uint32_t resizes() const { return resizes_; }
  uint32_t failed_resizes() const { return failed_resizes_; }
  const std::string& last_resize() const { return last_resize_; }

  // Supervision step: reap, restart after backoff, enforce the READY timeout, drive a resize in
  // progress, sweep lanes.
  void tick(uint64_t now_ns);
  // Samples the counters; publishes rates and percentiles for slicectl status.
  void publish_summary(uint64_t now_ns);
  // The policy's input for the interval since the previous call.
  ModelObservation observe();

  // Starts a resize to `slice` percent (in place or by shadow, as the backend allows).
  // kBusy while another resize runs, kInvalidArgument for a slice outside (0, 100].
  Status resize(double slice, const std::string& why, uint64_t now_ns);
  // Moves the model to another backend by a shadow handover at its current slice.
  // kInvalidArgument for a backend its kind cannot run on, kUnavailable for one that needs MPS
  // when no control daemon was started at load.
  Status switch_backend(Backend backend, uint64_t now_ns);
  // Changes the batch limit of the live worker (1..max_batch of the config).
  Status set_max_batch(uint32_t max_batch);
  void set_policy(bool on);
  // True while a failed resize keeps the policy from trying again.
  bool in_resize_backoff(uint64_t now_ns) const { return now_ns < resize_backoff_until_ns_; }
  // Counts the policy's decision for this model and shows its reason in the status.
  void record_decision(shm::PolicyAction action, const std::string& text);

  // Shutdown: close the segment (clients fail fast) and ask every worker to stop.
  void begin_stop();
  // True once no worker process is left; SIGKILLs workers still there after force_after_ns.
  bool finish_stop(uint64_t now_ns, uint64_t force_after_ns);

 private:
  enum class State { kBackoff, kStarting, kServing, kStopping };
  struct Shadow {
    WorkerProcess process;
    uint64_t epoch = 0;
    ModelConfig target;  // the model as it will be after the swap
    uint64_t started_ns = 0;
    bool handover_asked = false;
    std::string why;
  };
  struct PendingCommand {  // an in-place resize or batch change awaiting the worker's ack
    uint64_t seq = 0;
    uint64_t sent_ns = 0;
    double slice = 0;  // 0: a batch change
    uint32_t max_batch = 0;
    std::string why;
  };

  ModelSupervisor(const Config& config, const ModelConfig& model, std::string worker_binary,
                  const Placement& placement, const MpsState& mps, shm::Segment segment);
  // Spawns a worker of `target` at `epoch` with its arguments and environment.
  Result<WorkerProcess> spawn_worker(const ModelConfig& target, uint64_t epoch);
  // The weight broker's socket for a worker on `backend` (started on first use), or empty for
  // the cpu backend or when it cannot start (the worker then keeps, and reports, its own copy).
  std::string weights_broker(Backend backend);
  void start_worker(uint64_t now_ns);
  // kBusy while a resize runs, kUnavailable without a serving worker.
  Status check_can_resize() const;
  // Spawns a worker for `target` that takes the ring over once READY (drive_shadow).
  Status start_shadow(const ModelConfig& target, const std::string& why, uint64_t now_ns);
  void on_worker_exit(const ExitInfo& info, uint64_t now_ns);
  void drive_shadow(uint64_t now_ns);
  void drive_pending(uint64_t now_ns);
  void fail_resize(const std::string& why, uint64_t now_ns);
  void finish_resize(const std::string& what);
  void reap_retired(uint64_t now_ns);
  // Adds a finished epoch's completions to the running total.
  void retire_epoch_counters(uint64_t epoch);
  std::string failure_message(uint64_t epoch) const;
  void publish_model_fields();
  // Age of the oldest request queued or running, 0 when none.
  double oldest_waiting_ms(uint64_t now_ns) const;

  const Config& config_;
  ModelConfig model_;
  std::string worker_binary_;
  Placement placement_;
  const MpsState& mps_;
  shm::Segment segment_;
  std::unique_ptr<shm::FdBroker> weight_broker_;
  State state_ = State::kBackoff;
  std::optional<WorkerProcess> worker_;
  std::optional<Shadow> shadow_;
  std::optional<PendingCommand> pending_;
  struct Retired {  // handed over; finishing the batch it held
    uint64_t epoch = 0;
    WorkerProcess process;
    uint64_t since_ns = 0;
  };
  std::vector<Retired> retired_;
  uint64_t epoch_ = 0;  // the live worker's
  uint64_t next_epoch_ = 1;
  uint64_t started_ns_ = 0;  // spawn time of the live worker
  uint64_t serving_since_ns_ = 0;
  uint64_t restart_at_ns_ = 0;
  uint32_t consecutive_failures_ = 0;
  uint32_t restarts_ = 0;
  uint32_t resizes_ = 0;
  uint32_t failed_resizes_ = 0;
  uint64_t resize_backoff_until_ns_ = 0;
  uint64_t completed_retired_ = 0;  // completions of epochs that are over
  std::string last_resize_;
  std::string last_error_;
  bool policy_on_ = true;
  uint64_t last_sweep_ns_ = 0;
  StatsWindow window_;
  // Per batch size (count, exec ns) of the live epoch at the previous observe().
  uint64_t observed_epoch_ = 0;
  std::map<uint32_t, std::pair<uint64_t, uint64_t>> observed_batches_;
};

}  // namespace sliceserve::controller
