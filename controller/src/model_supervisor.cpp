#include "sliceserve/controller/model_supervisor.h"

#include <signal.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>

#include "sliceserve/backends/weight_store.h"
#include "sliceserve/controller/admin_socket.h"
#include "sliceserve/shm/futex.h"
#include "sliceserve/shm/segment_control.h"

#ifdef SLICESERVE_HAVE_CUDA
#include "sliceserve/backends/cuda/mps_control.h"
#endif

namespace sliceserve::controller {
namespace {

constexpr uint64_t kMs = 1'000'000;
constexpr uint64_t kSweepPeriodNs = 100 * kMs;
constexpr uint64_t kStableServingNs = 10'000 * kMs;  // a worker this old resets the backoff
constexpr uint64_t kStatsWindowNs = 5'000 * kMs;
constexpr uint64_t kCommandTimeoutNs = 2'000 * kMs;  // an in-place resize answers within this
constexpr uint64_t kRetireGraceNs = 5'000 * kMs;     // a handed-over worker exits within this

std::string format_number(double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.17g", v);
  return buf;
}

std::string format_slice(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%g", v);
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

std::vector<double> slice_pool(const PolicyConfig& policy) {
  std::vector<double> pool;
  for (double s = policy.min_slice; s < 100 + 1e-9; s += policy.min_step) pool.push_back(s);
  if (pool.empty() || pool.back() < 100 - 1e-9) pool.push_back(100);
  return pool;
}

CumaskPlacement cumask_placement(const Config& config, const std::string& name) {
  CumaskPlacement placement;
  bool found = false;
  for (const ModelConfig& m : config.models) {
    if (config.backend_of(m) != Backend::kCumask) continue;
    if (m.name == name) {
      placement.index = placement.shares.size();
      found = true;
    }
    placement.shares.push_back(m.slice);
  }
  if (!found) placement.shares.clear();
  return placement;
}

std::vector<std::string> worker_arguments(const Config& config, const ModelConfig& model,
                                          const std::string& segment, uint64_t epoch,
                                          const Placement& placement) {
  const Backend backend = config.backend_of(model);
  // clang-format off: flag and value side by side
  std::vector<std::string> args = {
      "--segment",
      segment,
      "--epoch",
      std::to_string(epoch),
      "--backend",
      std::string(backend_family(backend)),
      "--slice",
      format_number(model.slice),
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
      "--weights-mb",
      std::to_string(model.weights_mb),
      "--load-delay-ms",
      std::to_string(model.load_delay_ms),
      "--log-level",
      config.server.log_level,
  };
  // clang-format on
  switch (backend) {
    case Backend::kCpuProcess:
    case Backend::kCpuAffinity:
      args.insert(args.end(),
                  {"--cpu-mode",
                   std::string(cpu_mode_name(backend == Backend::kCpuAffinity ? CpuMode::kAffinity
                                                                              : CpuMode::kProcess)),
                   "--cores", std::to_string(placement.machine_cores), "--first-core",
                   std::to_string(placement.first_core)});
      break;
    case Backend::kMps:
      args.insert(args.end(), {"--device", std::to_string(config.mps.device)});
      break;
    case Backend::kGreenctx:
      args.insert(args.end(), {"--device", std::to_string(config.greenctx.device)});
      break;
    case Backend::kCumask:
      args.insert(args.end(),
                  {"--device", std::to_string(config.cumask.device), "--cu-policy",
                   std::string(cumask_policy_name(config.cumask.policy)), "--shader-engines",
                   std::to_string(config.cumask.shader_engines), "--wgp",
                   config.cumask.wgp ? (*config.cumask.wgp ? "true" : "false") : "auto"});
      // The config's shares, not the model's current one: a restart after a resize keeps its start.
      if (const CumaskPlacement placed = cumask_placement(config, model.name);
          !placed.shares.empty()) {
        std::string shares;
        for (double share : placed.shares) {
          shares += (shares.empty() ? "" : ",") + format_number(share);
        }
        args.insert(args.end(),
                    {"--cu-shares", shares, "--cu-index", std::to_string(placed.index)});
      }
      if (model.right_size) args.insert(args.end(), {"--profile", model.profile, "--right-size"});
      break;
  }
  if (resizes_in_place(backend)) {
    std::string pool;
    for (double s : slice_pool(config.policy.tuning)) {
      pool += (pool.empty() ? "" : ",") + format_slice(s);
    }
    args.push_back("--slice-pool");
    args.push_back(pool);
  }
  if (!model.path.empty()) {
    args.push_back("--model-path");
    args.push_back(model.path);
  }
  return args;
}

Result<std::vector<std::string>> worker_environment(const Config& config, const ModelConfig& model,
                                                    const MpsState& mps) {
  const Backend backend = config.backend_of(model);
  if (!config.wants_mps(backend) || mps.sharing != MpsState::Sharing::kMps) {
    return std::vector<std::string>{};
  }
#ifdef SLICESERVE_HAVE_CUDA
  const backends::MpsControlInfo info{mps.pipe_dir, mps.log_dir, mps.started};
  if (backend == Backend::kGreenctx) {
    // A green context needs the percentage unset (100): only the way to the daemon.
    return std::vector<std::string>{"CUDA_MPS_PIPE_DIRECTORY=" + info.pipe_dir,
                                    "CUDA_MPS_LOG_DIRECTORY=" + info.log_dir};
  }
  const double percent = config.mps.thread_percentage == MpsThreads::kFull ? 100.0 : model.slice;
  std::optional<uint64_t> mem_limit;
  if (model.device_mem_mb) mem_limit = uint64_t{*model.device_mem_mb} << 20;
  return backends::mps_worker_environment(info, percent, mem_limit, int(config.mps.device));
#else
  return Status(ErrorCode::kUnavailable, "MPS is not available in this build (no cuda wing)");
#endif
}

Result<std::unique_ptr<ModelSupervisor>> ModelSupervisor::create(const Config& config,
                                                                 const ModelConfig& model,
                                                                 const std::string& worker_binary,
                                                                 const Placement& placement,
                                                                 const MpsState& mps) {
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
  // Weights of a crashed run of this model are stale: the first worker publishes them anew.
  backends::remove_host_weights(name);
  return std::unique_ptr<ModelSupervisor>(new ModelSupervisor(
      config, model, worker_binary, placement, mps, std::move(segment).value()));
}

ModelSupervisor::ModelSupervisor(const Config& config, const ModelConfig& model,
                                 std::string worker_binary, const Placement& placement,
                                 const MpsState& mps, shm::Segment segment)
    : config_(config),
      model_(model),
      worker_binary_(std::move(worker_binary)),
      placement_(placement),
      mps_(mps),
      segment_(std::move(segment)),
      policy_on_(model.policy && config.policy.enabled),
      window_(kStatsWindowNs) {
  shm::ControllerSummary& s = segment_.header().summary;
  s.slo_ms.store(uint32_t(std::lround(model.slo_ms)), std::memory_order_relaxed);
  publish_model_fields();
}

ModelSupervisor::~ModelSupervisor() { backends::remove_host_weights(segment_.name()); }

void ModelSupervisor::publish_model_fields() {
  shm::ControllerSummary& s = segment_.header().summary;
  s.slice_percent.store(uint32_t(std::lround(model_.slice)), std::memory_order_relaxed);
  s.max_batch.store(model_.max_batch, std::memory_order_relaxed);
  s.policy_on.store(policy_on_ ? 1 : 0, std::memory_order_relaxed);
  s.resizes.store(resizes_, std::memory_order_relaxed);
  s.failed_resizes.store(failed_resizes_, std::memory_order_relaxed);
  s.restarts.store(restarts_, std::memory_order_relaxed);
  s.worker_pid.store(worker_ ? worker_->pid() : 0, std::memory_order_relaxed);
  s.shadow_epoch.store(shadow_ ? shadow_->epoch : 0, std::memory_order_relaxed);
  s.shadow_pid.store(shadow_ ? shadow_->process.pid() : 0, std::memory_order_relaxed);
  shm::store_text(s.backend, backend_display(config_, backend(), mps_));
}

std::string ModelSupervisor::weights_broker(Backend backend) {
  // The broker shares CUDA weights; cumask has no device weight store yet.
  if (!is_gpu_backend(backend) || backend == Backend::kCumask) return "";
  if (!weight_broker_) {
    const std::string dir = instance_runtime_dir(config_.server.instance);
    if (mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST) {
      spdlog::error("model {}: mkdir {}: {}: workers keep their own weights", model_.name, dir,
                    std::strerror(errno));
      return "";
    }
    auto broker = shm::FdBroker::start(dir + "/" + model_.name + ".weights.sock");
    if (!broker.is_ok()) {
      spdlog::error("model {}: weight broker: {}: workers keep their own weights", model_.name,
                    broker.status().to_string());
      return "";
    }
    weight_broker_ = std::move(broker).value();
  }
  return weight_broker_->path();
}

Result<WorkerProcess> ModelSupervisor::spawn_worker(const ModelConfig& target, uint64_t epoch) {
  ASSIGN_OR_RETURN(std::vector<std::string> env, worker_environment(config_, target, mps_));
  std::vector<std::string> args =
      worker_arguments(config_, target, segment_.name(), epoch, placement_);
  if (const std::string broker = weights_broker(config_.backend_of(target)); !broker.empty()) {
    args.insert(args.end(), {"--weights-broker", broker});
  }
  return WorkerProcess::spawn(worker_binary_, args, env);
}

void ModelSupervisor::start_worker(uint64_t now_ns) {
  const uint64_t epoch = next_epoch_++;
  auto process = spawn_worker(model_, epoch);
  epoch_ = epoch;
  if (!process.is_ok()) {
    spdlog::error("model {}: cannot start worker: {}", model_.name, process.status().to_string());
    on_worker_exit(ExitInfo{}, now_ns);
    last_error_ = "cannot start worker: " + process.status().to_string();
    return;
  }
  worker_.emplace(std::move(process).value());
  // The previous owner is dead (reaped) or there was none: the ring is the new epoch's. It
  // claims nothing before it is READY, so requests keep waiting in the ring until then.
  shm::set_owner_epoch(segment_, epoch_);
  state_ = State::kStarting;
  started_ns_ = now_ns;
  publish_model_fields();
  spdlog::info("model {}: started worker pid {} epoch {} (slice {}%, {})", model_.name,
               worker_->pid(), epoch_, model_.slice, backend_display(config_, backend(), mps_));
}

std::string ModelSupervisor::failure_message(uint64_t epoch) const {
  const shm::WorkerStats& st = segment_.stats_block(epoch);
  if (st.epoch.load(std::memory_order_acquire) != epoch || st.message[0] == '\0') return "";
  return std::string(st.message, strnlen(st.message, sizeof st.message));
}

void ModelSupervisor::retire_epoch_counters(uint64_t epoch) {
  const shm::WorkerStats& st = segment_.stats_block(epoch);
  if (st.epoch.load(std::memory_order_acquire) == epoch) {
    completed_retired_ += st.completed.load(std::memory_order_relaxed);
  }
}

void ModelSupervisor::on_worker_exit(const ExitInfo& info, uint64_t now_ns) {
  retire_epoch_counters(epoch_);
  const bool handed_over =
      shadow_ && segment_.header().owner_epoch.load(std::memory_order_acquire) == shadow_->epoch;
  if (handed_over && info.exit_code == 0) {
    // It passed the ring on and finished before the shadow was promoted: a retirement.
    worker_.reset();
    return;
  }
  std::string reason = failure_message(epoch_);
  last_error_ =
      reason.empty() ? "worker epoch " + std::to_string(epoch_) + " " + info.describe() : reason;
  worker_.reset();
  ++restarts_;
  if (shadow_) {
    // The shadow takes the ring as soon as it is READY; no restart in between.
    spdlog::warn("model {}: worker epoch {} died ({}){}{}; shadow epoch {} takes over", model_.name,
                 epoch_, info.describe(), reason.empty() ? "" : ": ", reason, shadow_->epoch);
    state_ = State::kBackoff;
    restart_at_ns_ = UINT64_MAX;
    publish_model_fields();
    return;
  }
  ++consecutive_failures_;
  uint64_t delay_ms = config_.server.restart_backoff_min_ms;
  for (uint32_t i = 1;
       i < consecutive_failures_ && delay_ms < config_.server.restart_backoff_max_ms; ++i) {
    delay_ms *= 2;
  }
  delay_ms = std::min<uint64_t>(delay_ms, config_.server.restart_backoff_max_ms);
  restart_at_ns_ = now_ns + delay_ms * kMs;
  state_ = State::kBackoff;
  publish_model_fields();
  spdlog::warn("model {}: worker epoch {} died ({}){}{}; restart {} in {} ms", model_.name, epoch_,
               info.describe(), reason.empty() ? "" : ": ", reason, restarts_, delay_ms);
}

void ModelSupervisor::tick(uint64_t now_ns) {
  if (state_ == State::kStopping) return;
  // The shadow first: once it owns the ring the old worker is retired, so its exit below is
  // usually not seen here at all (on_worker_exit tells a retirement from a death anyway).
  if (shadow_) drive_shadow(now_ns);
  if (worker_) {
    if (auto exit = worker_->try_reap()) on_worker_exit(*exit, now_ns);
  }
  if (pending_) drive_pending(now_ns);
  reap_retired(now_ns);
  switch (state_) {
    case State::kBackoff:
      if (!shadow_ && now_ns >= restart_at_ns_) start_worker(now_ns);
      break;
    case State::kStarting: {
      const shm::WorkerStats& st = segment_.stats_block(epoch_);
      const uint32_t ws = st.state.load(std::memory_order_acquire);
      if (st.epoch.load(std::memory_order_acquire) == epoch_ &&
          (ws == uint32_t(shm::WorkerState::kServing) ||
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

Status ModelSupervisor::check_can_resize() const {
  if (resize_in_progress()) {
    return Status(ErrorCode::kBusy, "model " + model_.name + " is already being resized");
  }
  if (state_ != State::kServing || !worker_) {
    return Status(ErrorCode::kUnavailable, "model " + model_.name + " has no serving worker");
  }
  return Status::ok();
}

Status ModelSupervisor::start_shadow(const ModelConfig& target, const std::string& why,
                                     uint64_t now_ns) {
  const uint64_t epoch = next_epoch_++;
  auto process = spawn_worker(target, epoch);
  if (!process.is_ok()) return process.status().with_context("shadow worker");
  shadow_ = Shadow{std::move(process).value(), epoch, target, now_ns, false, why};
  publish_model_fields();
  spdlog::info("model {}: {}: shadow pid {} epoch {} loading", model_.name, why,
               shadow_->process.pid(), epoch);
  return Status::ok();
}

Status ModelSupervisor::resize(double slice, const std::string& why, uint64_t now_ns) {
  if (!(slice > 0 && slice <= 100)) {
    return Status(ErrorCode::kInvalidArgument,
                  "slice must be in (0, 100], got " + format_slice(slice));
  }
  RETURN_IF_ERROR(check_can_resize());
  if (std::abs(slice - model_.slice) < 1e-9) {
    return Status(ErrorCode::kInvalidArgument,
                  "model " + model_.name + " already has slice " + format_slice(slice));
  }
  if (resizes_in_place(backend())) {
    auto seq =
        shm::post_command(segment_, epoch_, shm::Command::kSetSlice, int64_t(std::lround(slice)));
    if (!seq.is_ok()) return seq.status();
    pending_ = PendingCommand{*seq, now_ns, slice, 0, why};
    spdlog::info("model {}: resizing in place {}% -> {}% ({})", model_.name,
                 format_slice(model_.slice), format_slice(slice), why);
    return Status::ok();
  }
  ModelConfig target = model_;
  target.slice = slice;
  return start_shadow(target,
                      "shadow resize " + format_slice(model_.slice) + "% -> " +
                          format_slice(slice) + "% (" + why + ")",
                      now_ns);
}

Status ModelSupervisor::switch_backend(Backend to, uint64_t now_ns) {
  if (backend() == to) {
    return Status(ErrorCode::kInvalidArgument,
                  "model " + model_.name + " already runs on " + backend_name(to));
  }
  RETURN_IF_ERROR(check_kind_on_backend(model_, to).with_context("model " + model_.name));
  if (config_.wants_mps(to) && mps_.sharing == MpsState::Sharing::kNone) {
    // The control daemon is started at load only when a configured model needs it.
    return Status(ErrorCode::kUnavailable,
                  backend_name(to) +
                      " needs MPS, and no MPS control daemon was started: no model "
                      "of the config used MPS at load");
  }
  RETURN_IF_ERROR(check_can_resize());
  ModelConfig target = model_;
  target.backend = to;
  return start_shadow(target, "backend " + backend_name(backend()) + " -> " + backend_name(to),
                      now_ns);
}

Status ModelSupervisor::set_max_batch(uint32_t max_batch) {
  if (max_batch < 1 || max_batch > shm::kMaxBatch) {
    return Status(ErrorCode::kInvalidArgument,
                  "max_batch must be in 1.." + std::to_string(shm::kMaxBatch));
  }
  if (pending_ || !worker_ || state_ != State::kServing) {
    return Status(ErrorCode::kBusy, "model " + model_.name + " cannot take a command now");
  }
  auto seq = shm::post_command(segment_, epoch_, shm::Command::kSetMaxBatch, max_batch);
  if (!seq.is_ok()) return seq.status();
  pending_ = PendingCommand{*seq, shm::monotonic_ns(), 0, max_batch, "batch"};
  return Status::ok();
}

void ModelSupervisor::set_policy(bool on) {
  policy_on_ = on;
  publish_model_fields();
  spdlog::info("model {}: policy {}", model_.name, on ? "on" : "off (pinned)");
}

void ModelSupervisor::record_decision(shm::PolicyAction action, const std::string& text) {
  shm::ControllerSummary& s = segment_.header().summary;
  // Single writer (the daemon's loop): a plain read-add-store, relaxed like the other fields.
  s.decisions[uint32_t(action)].fetch_add(1, std::memory_order_relaxed);
  shm::store_text(s.last_decision, text);
}

void ModelSupervisor::drive_pending(uint64_t now_ns) {
  auto answer = shm::poll_command(segment_, pending_->seq);
  if (!answer) {
    if (worker_ && now_ns - pending_->sent_ns < kCommandTimeoutNs) return;
    shm::abandon_command(segment_, pending_->seq);
    answer =
        Result<std::string>(Status(ErrorCode::kTimeout, "the worker did not answer within 2 s"));
  }
  PendingCommand done = *pending_;
  pending_.reset();
  if (done.slice == 0) {  // a batch change
    if (answer->is_ok()) {
      model_.max_batch = done.max_batch;
      publish_model_fields();
    } else {
      spdlog::warn("model {}: batch change failed: {}", model_.name, answer->status().to_string());
    }
    return;
  }
  if (!answer->is_ok()) {
    fail_resize("in-place resize failed: " + answer->status().to_string(), now_ns);
    return;
  }
  const double from = model_.slice;
  model_.slice = done.slice;
  finish_resize("in place " + format_slice(from) + "% -> " + format_slice(done.slice) + "% in " +
                std::to_string((now_ns - done.sent_ns) / 1000) + " us (" + done.why + ")");
}

void ModelSupervisor::drive_shadow(uint64_t now_ns) {
  Shadow& sh = *shadow_;
  if (auto exit = sh.process.try_reap()) {
    std::string reason = failure_message(sh.epoch);
    retire_epoch_counters(sh.epoch);
    if (segment_.header().owner_epoch.load(std::memory_order_acquire) == sh.epoch) {
      // It died right after taking the ring: the old worker is retiring, so a new one starts.
      if (worker_) retired_.push_back({epoch_, std::move(*worker_), now_ns});
      worker_.reset();
      epoch_ = sh.epoch;
      shadow_.reset();
      fail_resize("the new worker died after the swap (" + exit->describe() + ")", now_ns);
      return;
    }
    shadow_.reset();
    fail_resize("shadow " + exit->describe() + (reason.empty() ? "" : ": " + reason), now_ns);
    return;
  }
  const uint64_t owner = segment_.header().owner_epoch.load(std::memory_order_acquire);
  if (owner == sh.epoch) {
    // Swapped: the old worker finishes the batch it held and exits on its own.
    if (worker_) retired_.push_back({epoch_, std::move(*worker_), now_ns});
    worker_.emplace(std::move(sh.process));
    const std::string what = sh.why;
    const uint64_t took_ms = (now_ns - sh.started_ns) / kMs;
    model_ = sh.target;
    epoch_ = sh.epoch;
    shadow_.reset();
    state_ = State::kServing;
    serving_since_ns_ = now_ns;
    finish_resize(what + ", " + std::to_string(took_ms) + " ms from spawn to swap");
    return;
  }
  const shm::WorkerStats& st = segment_.stats_block(sh.epoch);
  const bool ready = st.epoch.load(std::memory_order_acquire) == sh.epoch &&
                     st.state.load(std::memory_order_acquire) == uint32_t(shm::WorkerState::kReady);
  if (ready && !sh.handover_asked) {
    sh.handover_asked = true;
    if (worker_ && state_ == State::kServing) {
      shm::request_handover(segment_, sh.epoch);  // the live worker passes the ring on
      return;
    }
  }
  if (sh.handover_asked && !worker_) {
    // No live worker (or it died before passing the ring on): the shadow takes it directly.
    shm::set_owner_epoch(segment_, sh.epoch);
    return;
  }
  if (!sh.handover_asked &&
      now_ns - sh.started_ns > uint64_t(config_.policy.resize_timeout_ms) * kMs) {
    sh.process.signal(SIGKILL);
    sh.process.reap();
    shadow_.reset();
    fail_resize(
        "shadow not ready after " + std::to_string(config_.policy.resize_timeout_ms) + " ms",
        now_ns);
    return;
  }
  if (sh.handover_asked && worker_ && state_ == State::kServing &&
      now_ns - sh.started_ns > uint64_t(config_.policy.resize_timeout_ms) * kMs) {
    // The live worker does not hand over (hung?): give the ring to the shadow directly once the
    // live worker is gone.
    spdlog::warn("model {}: live worker epoch {} did not hand over; killing it", model_.name,
                 epoch_);
    worker_->signal(SIGKILL);
  }
}

void ModelSupervisor::fail_resize(const std::string& why, uint64_t now_ns) {
  if (!worker_ && state_ != State::kStopping) {  // the live worker died meanwhile: restart it
    state_ = State::kBackoff;
    restart_at_ns_ = std::min(restart_at_ns_, now_ns);
  }
  ++failed_resizes_;
  resize_backoff_until_ns_ = now_ns + uint64_t(config_.policy.failed_resize_backoff_ms) * kMs;
  last_resize_ = "failed: " + why;
  shm::store_text(segment_.header().summary.last_resize, last_resize_);
  publish_model_fields();
  spdlog::error("model {}: resize failed: {}; the live worker keeps serving at {}%", model_.name,
                why, format_slice(model_.slice));
}

void ModelSupervisor::finish_resize(const std::string& what) {
  ++resizes_;
  last_resize_ = what;
  shm::store_text(segment_.header().summary.last_resize, what);
  publish_model_fields();
  spdlog::info("model {}: resized: {}", model_.name, what);
}

void ModelSupervisor::reap_retired(uint64_t now_ns) {
  for (auto it = retired_.begin(); it != retired_.end();) {
    std::optional<ExitInfo> exit = it->process.try_reap();
    if (!exit && now_ns - it->since_ns > kRetireGraceNs) {
      spdlog::warn("model {}: retired worker epoch {} did not exit; killing it", model_.name,
                   it->epoch);
      it->process.signal(SIGKILL);
      exit = it->process.reap();
    }
    if (!exit) {
      ++it;
      continue;
    }
    retire_epoch_counters(it->epoch);
    it = retired_.erase(it);
  }
}

double ModelSupervisor::oldest_waiting_ms(uint64_t now_ns) const {
  uint64_t oldest = now_ns;
  for (uint32_t i = 0; i < segment_.slot_count(); ++i) {
    const shm::SlotHeader& slot = segment_.slot(i);
    const shm::SlotState st = shm::slot_state(slot.state.load(std::memory_order_acquire));
    if (st != shm::SlotState::kQueued && st != shm::SlotState::kClaimed) continue;
    // Written by the client before QUEUED (release); a reused slot only makes it younger.
    const uint64_t enqueued = slot.enqueue_ns;
    if (enqueued != 0 && enqueued < oldest) oldest = enqueued;
  }
  return double(now_ns - oldest) / 1e6;
}

ModelObservation ModelSupervisor::observe() {
  ModelObservation o;
  o.name = model_.name;
  o.slo_ms = model_.slo_ms;
  o.slice = model_.slice;
  o.max_batch = model_.max_batch;
  o.max_batch_cap = config_.find_model(model_.name)->max_batch;
  o.pinned = !policy_on_;
  o.max_queue_delay_ms = model_.max_queue_delay_us / 1000.0;
  ModelRates r = window_.latest();
  o.arrival_rps = r.arrival_rps;
  o.completion_rps = r.completion_rps;
  o.p99_ms = double(r.p99_us) / 1000.0;
  // Requests still waiting count too: a model so starved that nothing completes in an interval
  // (and whose clients cannot submit more, their lanes full) must not look idle. Its p99 is at
  // least the age of its oldest waiting request.
  o.p99_ms = std::max(o.p99_ms, oldest_waiting_ms(shm::monotonic_ns()));
  o.busy_fraction = r.busy_fraction;
  const shm::WorkerStats& st = segment_.stats_block(epoch_);
  if (st.epoch.load(std::memory_order_acquire) != epoch_) return o;
  if (observed_epoch_ != epoch_) observed_batches_.clear();
  observed_epoch_ = epoch_;
  for (uint32_t b = 1; b <= shm::kMaxBatch; ++b) {
    uint64_t count = st.batch_hist[b].load(std::memory_order_relaxed);
    uint64_t exec = st.batch_exec_ns[b].load(std::memory_order_relaxed);
    auto& [last_count, last_exec] = observed_batches_[b];
    if (count > last_count && exec > last_exec) {
      o.exec_ms_by_batch[b] = double(exec - last_exec) / double(count - last_count) / 1e6;
    }
    last_count = count;
    last_exec = exec;
  }
  return o;
}

void ModelSupervisor::publish_summary(uint64_t now_ns) {
  window_.add(read_sample(segment_, epoch_, now_ns));
  ModelRates r = window_.rates();
  shm::ControllerSummary& s = segment_.header().summary;
  s.arrival_milli_rps.store(uint64_t(r.arrival_rps * 1000), std::memory_order_relaxed);
  s.completion_milli_rps.store(uint64_t(r.completion_rps * 1000), std::memory_order_relaxed);
  s.p50_us.store(r.p50_us, std::memory_order_relaxed);
  s.p99_us.store(r.p99_us, std::memory_order_relaxed);
  s.completed_total.store(completed_total(), std::memory_order_relaxed);
  const auto slo_us = uint64_t(model_.slo_ms * 1000);
  const shm::LatencyCounts all = window_.total_latency();
  uint64_t all_count = 0, window_count = 0;
  for (uint64_t c : all) all_count += c;
  for (uint64_t c : r.latency) window_count += c;
  const uint64_t met = shm::count_within_us(all, slo_us);
  s.slo_met_total.store(met, std::memory_order_relaxed);
  s.slo_missed_total.store(all_count - met, std::memory_order_relaxed);
  s.slo_attainment_ppm.store(
      window_count == 0
          ? shm::kNoSloAttainment
          : uint32_t(shm::count_within_us(r.latency, slo_us) * 1'000'000 / window_count),
      std::memory_order_relaxed);
  s.updated_ns.store(now_ns, std::memory_order_release);
}

double ModelSupervisor::committed_slice() const {
  double slice = model_.slice;
  if (shadow_) slice = std::max(slice, shadow_->target.slice);
  if (pending_ && pending_->slice > 0) slice = std::max(slice, pending_->slice);
  return slice;
}

uint64_t ModelSupervisor::completed_total() const {
  auto completed_of = [this](uint64_t epoch) -> uint64_t {
    const shm::WorkerStats& st = segment_.stats_block(epoch);
    if (st.epoch.load(std::memory_order_acquire) != epoch) return 0;
    return st.completed.load(std::memory_order_relaxed);
  };
  uint64_t total = completed_retired_;
  if (worker_) total += completed_of(epoch_);
  for (const Retired& old : retired_) total += completed_of(old.epoch);
  return total;
}

void ModelSupervisor::begin_stop() {
  state_ = State::kStopping;
  shm::close_segment(segment_);
  if (worker_) worker_->signal(SIGTERM);
  if (shadow_) shadow_->process.signal(SIGTERM);
  for (Retired& r : retired_) r.process.signal(SIGTERM);
}

bool ModelSupervisor::finish_stop(uint64_t now_ns, uint64_t force_after_ns) {
  auto settle = [&](WorkerProcess& p, uint64_t epoch) {
    if (!p.running()) return true;
    if (auto exit = p.try_reap()) {
      spdlog::info("model {}: worker epoch {} stopped ({})", model_.name, epoch, exit->describe());
      return true;
    }
    if (now_ns < force_after_ns) return false;
    spdlog::warn("model {}: worker epoch {} ignored SIGTERM; killing it", model_.name, epoch);
    p.signal(SIGKILL);
    p.reap();
    return true;
  };
  bool done = true;
  if (worker_ && settle(*worker_, epoch_)) worker_.reset();
  if (shadow_ && settle(shadow_->process, shadow_->epoch)) shadow_.reset();
  std::erase_if(retired_, [&](Retired& r) { return settle(r.process, r.epoch); });
  done = !worker_ && !shadow_ && retired_.empty();
  return done;
}

}  // namespace sliceserve::controller
