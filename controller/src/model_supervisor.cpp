#include "sliceserve/controller/model_supervisor.h"

#include <signal.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "sliceserve/shm/futex.h"
#include "sliceserve/shm/segment_control.h"

namespace sliceserve::controller {
namespace {

constexpr uint64_t kMs = 1'000'000;
constexpr uint64_t kSweepPeriodNs = 100 * kMs;
constexpr uint64_t kStableServingNs = 10'000 * kMs;  // a worker this old resets the backoff
constexpr uint64_t kStatsWindowNs = 5'000 * kMs;

std::string format_number(double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.17g", v);
  return buf;
}

}  // namespace

Result<shm::ModelSpec> model_spec(const ModelConfig& model) {
  shm::ModelSpec spec;
  auto fill = [](const std::vector<TensorConfig>& tensors, shm::TensorSpec* out,
                 uint32_t& count) -> Status {
    if (tensors.empty() || tensors.size() > shm::kMaxTensors) {
      return Status(ErrorCode::kInvalidArgument, "a model needs 1 to 8 inputs and outputs");
    }
    for (size_t i = 0; i < tensors.size(); ++i) {
      ASSIGN_OR_RETURN(out[i],
                       shm::make_tensor_spec(tensors[i].name, tensors[i].dtype, tensors[i].shape));
    }
    count = uint32_t(tensors.size());
    return Status::ok();
  };
  RETURN_IF_ERROR(fill(model.inputs, spec.inputs, spec.n_inputs));
  RETURN_IF_ERROR(fill(model.outputs, spec.outputs, spec.n_outputs));
  return spec;
}

std::vector<std::string> worker_arguments(const Config& config, const ModelConfig& model,
                                          const std::string& segment, uint64_t epoch,
                                          const Placement& placement) {
  std::vector<std::string> args = {
      "--segment",
      segment,
      "--epoch",
      std::to_string(epoch),
      "--backend",
      config.server.backend,
      "--cpu-mode",
      std::string(cpu_mode_name(config.cpu.mode)),
      "--slice",
      format_number(model.slice),
      "--cores",
      std::to_string(placement.machine_cores),
      "--first-core",
      std::to_string(placement.first_core),
      "--max-batch",
      std::to_string(model.max_batch),
      "--max-queue-delay-us",
      std::to_string(model.max_queue_delay_us),
      "--model-kind",
      model.kind,
      "--flops-per-item",
      format_number(model.flops_per_item),
      "--working-set-kb",
      std::to_string(model.working_set_kb),
      "--log-level",
      config.server.log_level,
  };
  if (!model.path.empty()) {
    args.push_back("--model-path");
    args.push_back(model.path);
  }
  return args;
}

Result<std::unique_ptr<ModelSupervisor>> ModelSupervisor::create(const Config& config,
                                                                 const ModelConfig& model,
                                                                 const std::string& worker_binary,
                                                                 const Placement& placement) {
  ASSIGN_OR_RETURN(shm::ModelSpec spec, model_spec(model));
  ASSIGN_OR_RETURN(std::string name, shm::segment_name(config.server.instance, model.name));
  shm::SegmentOptions options;
  options.name = name;
  options.model_name = model.name;
  options.spec = spec;
  options.lanes = model.lanes;
  options.slots_per_lane = model.slots_per_lane;
  auto segment = shm::Segment::create(options);
  if (!segment.is_ok()) return segment.status().with_context("model '" + model.name + "'");
  return std::unique_ptr<ModelSupervisor>(
      new ModelSupervisor(config, model, worker_binary, placement, std::move(segment).value()));
}

ModelSupervisor::ModelSupervisor(const Config& config, const ModelConfig& model,
                                 std::string worker_binary, const Placement& placement,
                                 shm::Segment segment)
    : config_(config),
      model_(model),
      worker_binary_(std::move(worker_binary)),
      placement_(placement),
      segment_(std::move(segment)),
      window_(kStatsWindowNs) {
  shm::ControllerSummary& s = segment_.header().summary;
  s.slice_percent.store(uint32_t(std::lround(model.slice)), std::memory_order_relaxed);
  s.slo_ms.store(uint32_t(std::lround(model.slo_ms)), std::memory_order_relaxed);
  s.max_batch.store(model.max_batch, std::memory_order_relaxed);
}

void ModelSupervisor::start_worker(uint64_t now_ns) {
  ++epoch_;
  auto args = worker_arguments(config_, model_, segment_.name(), epoch_, placement_);
  auto process = WorkerProcess::spawn(worker_binary_, args);
  if (!process.is_ok()) {
    spdlog::error("model {}: cannot start worker: {}", model_.name, process.status().to_string());
    on_worker_exit(ExitInfo{}, now_ns);
    return;
  }
  worker_.emplace(std::move(process).value());
  // The previous owner is dead (reaped) or there was none: the ring is the new epoch's. It
  // claims nothing before it is READY, so requests keep waiting in the ring until then.
  shm::set_owner_epoch(segment_, epoch_);
  segment_.header().summary.worker_pid.store(worker_->pid(), std::memory_order_relaxed);
  state_ = State::kStarting;
  started_ns_ = now_ns;
  spdlog::info("model {}: started worker pid {} epoch {} (slice {}%, {} backend)", model_.name,
               worker_->pid(), epoch_, model_.slice, config_.server.backend);
}

void ModelSupervisor::on_worker_exit(const ExitInfo& info, uint64_t now_ns) {
  const shm::WorkerStats& st = segment_.stats_block(epoch_);
  std::string reason;
  if (st.epoch.load(std::memory_order_acquire) == epoch_ && st.message[0] != '\0') {
    reason = std::string(": ") + std::string(st.message, strnlen(st.message, sizeof st.message));
  }
  worker_.reset();
  ++consecutive_failures_;
  ++restarts_;
  segment_.header().summary.restarts.store(restarts_, std::memory_order_relaxed);
  uint64_t delay_ms = config_.server.restart_backoff_min_ms;
  for (uint32_t i = 1;
       i < consecutive_failures_ && delay_ms < config_.server.restart_backoff_max_ms; ++i) {
    delay_ms *= 2;
  }
  delay_ms = std::min<uint64_t>(delay_ms, config_.server.restart_backoff_max_ms);
  restart_at_ns_ = now_ns + delay_ms * kMs;
  state_ = State::kBackoff;
  spdlog::warn("model {}: worker epoch {} died ({}){}; restart {} in {} ms", model_.name, epoch_,
               info.describe(), reason, restarts_, delay_ms);
}

void ModelSupervisor::tick(uint64_t now_ns) {
  if (state_ == State::kStopping) return;
  if (worker_) {
    if (auto exit = worker_->try_reap()) {
      on_worker_exit(*exit, now_ns);
    }
  }
  switch (state_) {
    case State::kBackoff:
      if (now_ns >= restart_at_ns_) start_worker(now_ns);
      break;
    case State::kStarting: {
      const shm::WorkerStats& st = segment_.stats_block(epoch_);
      uint32_t ws = st.state.load(std::memory_order_acquire);
      bool ours = st.epoch.load(std::memory_order_acquire) == epoch_;
      if (ours && (ws == uint32_t(shm::WorkerState::kServing) ||
                   ws == uint32_t(shm::WorkerState::kReady))) {
        state_ = State::kServing;
        serving_since_ns_ = now_ns;
        spdlog::info("model {}: worker epoch {} is {}", model_.name, epoch_,
                     shm::worker_state_name(ws));
      } else if (now_ns - started_ns_ > uint64_t(config_.server.worker_ready_timeout_ms) * kMs) {
        spdlog::error("model {}: worker epoch {} not ready after {} ms; killing it", model_.name,
                      epoch_, config_.server.worker_ready_timeout_ms);
        worker_->signal(SIGKILL);
      }
      break;
    }
    case State::kServing:
      if (consecutive_failures_ > 0 && now_ns - serving_since_ns_ > kStableServingNs) {
        consecutive_failures_ = 0;
      }
      break;
    case State::kStopping:
      break;
  }
  if (now_ns - last_sweep_ns_ > kSweepPeriodNs) {
    last_sweep_ns_ = now_ns;
    shm::ReclaimReport r = shm::reclaim_dead_lanes(segment_);
    if (r.lanes_released > 0 || r.slots_freed > 0) {
      spdlog::info("model {}: reclaimed {} slots and {} lanes of dead clients", model_.name,
                   r.slots_freed, r.lanes_released);
    }
  }
}

void ModelSupervisor::publish_summary(uint64_t now_ns) {
  window_.add(read_sample(segment_, epoch_, now_ns));
  ModelRates r = window_.rates();
  shm::ControllerSummary& s = segment_.header().summary;
  s.arrival_milli_rps.store(uint64_t(r.arrival_rps * 1000), std::memory_order_relaxed);
  s.completion_milli_rps.store(uint64_t(r.completion_rps * 1000), std::memory_order_relaxed);
  s.p50_us.store(r.p50_us, std::memory_order_relaxed);
  s.p99_us.store(r.p99_us, std::memory_order_relaxed);
  s.updated_ns.store(now_ns, std::memory_order_release);
}

void ModelSupervisor::begin_stop() {
  state_ = State::kStopping;
  shm::close_segment(segment_);
  if (worker_) worker_->signal(SIGTERM);
}

bool ModelSupervisor::finish_stop(uint64_t now_ns, uint64_t force_after_ns) {
  if (!worker_) return true;
  if (auto exit = worker_->try_reap()) {
    spdlog::info("model {}: worker epoch {} stopped ({})", model_.name, epoch_, exit->describe());
    worker_.reset();
    return true;
  }
  if (now_ns >= force_after_ns) {
    spdlog::warn("model {}: worker epoch {} ignored SIGTERM; killing it", model_.name, epoch_);
    worker_->signal(SIGKILL);
    worker_->reap();
    worker_.reset();
    return true;
  }
  return false;
}

}  // namespace sliceserve::controller
