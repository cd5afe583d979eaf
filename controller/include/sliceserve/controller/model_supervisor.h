#pragma once
// One served model: its segment and its worker, kept alive. A dead or hung worker is replaced
// with exponential backoff; requests wait in the ring meanwhile and orphans are re-run by the
// next worker. The supervisor also sweeps dead clients' lanes and publishes the model's rates.

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "sliceserve/controller/config.h"
#include "sliceserve/controller/stats_window.h"
#include "sliceserve/controller/worker_process.h"
#include "sliceserve/shm/segment.h"

namespace sliceserve::controller {

struct Placement {
  unsigned machine_cores = 0;  // cores the cpu backend slices
  unsigned first_core = 0;     // where this model's threads start
};

// The command line of a worker; pure, for tests.
std::vector<std::string> worker_arguments(const Config& config, const ModelConfig& model,
                                          const std::string& segment, uint64_t epoch,
                                          const Placement& placement);

// Builds the segment spec from the model's declared tensors.
Result<shm::ModelSpec> model_spec(const ModelConfig& model);

class ModelSupervisor {
 public:
  static Result<std::unique_ptr<ModelSupervisor>> create(const Config& config,
                                                         const ModelConfig& model,
                                                         const std::string& worker_binary,
                                                         const Placement& placement);

  const std::string& name() const { return model_.name; }
  shm::Segment& segment() { return segment_; }
  uint64_t epoch() const { return epoch_; }
  pid_t worker_pid() const { return worker_ ? worker_->pid() : -1; }
  uint32_t restarts() const { return restarts_; }
  bool serving() const { return state_ == State::kServing; }

  // Supervision step: reap, restart after backoff, enforce the READY timeout, sweep lanes.
  void tick(uint64_t now_ns);
  // Samples the counters and publishes rates and percentiles for slicectl status.
  void publish_summary(uint64_t now_ns);

  // Shutdown: close the segment (clients fail fast) and ask the worker to stop.
  void begin_stop();
  // True once no worker process is left; SIGKILLs a worker still there after force_after_ns.
  bool finish_stop(uint64_t now_ns, uint64_t force_after_ns);

 private:
  enum class State { kBackoff, kStarting, kServing, kStopping };

  ModelSupervisor(const Config& config, const ModelConfig& model, std::string worker_binary,
                  const Placement& placement, shm::Segment segment);
  void start_worker(uint64_t now_ns);
  void on_worker_exit(const ExitInfo& info, uint64_t now_ns);

  const Config& config_;
  ModelConfig model_;
  std::string worker_binary_;
  Placement placement_;
  shm::Segment segment_;
  State state_ = State::kBackoff;
  std::optional<WorkerProcess> worker_;
  uint64_t epoch_ = 0;
  uint64_t started_ns_ = 0;  // spawn time of the current worker
  uint64_t serving_since_ns_ = 0;
  uint64_t restart_at_ns_ = 0;
  uint32_t consecutive_failures_ = 0;
  uint32_t restarts_ = 0;
  uint64_t last_sweep_ns_ = 0;
  StatsWindow window_;
};

}  // namespace sliceserve::controller
