#include "sliceserve/controller/mps_session.h"

#include <spdlog/spdlog.h>

#include <utility>

#ifdef SLICESERVE_HAVE_CUDA
#include "sliceserve/backends/cuda/mps_control.h"
#endif

namespace sliceserve::controller {

#ifdef SLICESERVE_HAVE_CUDA
struct MpsSession::Control {
  std::unique_ptr<backends::MpsControl> control;
};
#else
struct MpsSession::Control {};
#endif

std::string_view sharing_name(MpsState::Sharing sharing) {
  switch (sharing) {
    case MpsState::Sharing::kNone:
      return "none";
    case MpsState::Sharing::kMps:
      return "mps";
    case MpsState::Sharing::kTimeShared:
      return "time-shared";
  }
  return "unknown";
}

std::string backend_display(const Config& config, Backend backend, const MpsState& mps) {
  std::string name = backend_name(backend);
  const bool fell_back = config.wants_mps(backend) && mps.sharing == MpsState::Sharing::kTimeShared;
  const bool mps_off = backend == Backend::kMps && config.mps.control == MpsControlMode::kOff;
  if (fell_back || mps_off) name += " (time-shared)";
  return name;
}

MpsSession::MpsSession(MpsState state, std::unique_ptr<Control> control)
    : state_(std::move(state)), control_(std::move(control)) {}

MpsSession::~MpsSession() {
  Status stopped = stop();
  if (!stopped.is_ok()) spdlog::error("MPS: {}", stopped.to_string());
}

#ifdef SLICESERVE_HAVE_CUDA

Result<std::unique_ptr<MpsSession>> MpsSession::open(const Config& config,
                                                     const std::string& runtime_dir) {
  const MpsBackendConfig& c = config.mps;
  if (c.control == MpsControlMode::kOff) {
    return Status(ErrorCode::kInvalidArgument, "MPS session opened with control = \"off\"");
  }
  backends::MpsOptions options;
  std::string what;
  if (c.control == MpsControlMode::kStart) {
    options = backends::mps_start_options(runtime_dir);
    if (!c.pipe_dir.empty()) options.pipe_dir = c.pipe_dir;
    if (!c.log_dir.empty()) options.log_dir = c.log_dir;
    what = "starting an MPS control daemon (pipe dir " + options.pipe_dir + ")";
  } else {
    options.mode = backends::MpsOptions::Mode::kAttach;
    options.pipe_dir = c.pipe_dir;
    options.log_dir = c.log_dir;
    what = "attaching to the MPS control daemon at " +
           (c.pipe_dir.empty() ? std::string(backends::kMpsDefaultPipeDir) : c.pipe_dir);
  }
  auto started = backends::MpsControl::start_or_attach(options);
  const backends::MpsFallback fallback = c.fallback == MpsFallbackMode::kTimeshare
                                             ? backends::MpsFallback::kTimeshare
                                             : backends::MpsFallback::kError;
  Result<backends::MpsDecision> decision = decide_mps(started.status(), fallback);
  if (!decision.is_ok()) {
    return decision.status().with_context(
        what + " for [backend.mps] control = \"" +
        (c.control == MpsControlMode::kStart ? "start" : "attach") + "\"");
  }
  MpsState state;
  auto control = std::make_unique<Control>();
  if (decision->sharing == backends::MpsDecision::Sharing::kTimeShared) {
    state.sharing = MpsState::Sharing::kTimeShared;
    state.warning = decision->warning;
    // Loud on purpose: every slice of an MPS model is unenforced from here on.
    spdlog::error("**** {} ****", state.warning);
    spdlog::error("**** while {} ****", what);
  } else {
    control->control = std::move(started).value();
    const backends::MpsControlInfo& info = control->control->info();
    state.sharing = MpsState::Sharing::kMps;
    state.pipe_dir = info.pipe_dir;
    state.log_dir = info.log_dir;
    state.started = info.started;
    spdlog::info("MPS: {} control daemon, pipe dir {}, log dir {}",
                 info.started ? "started a" : "attached to the", info.pipe_dir, info.log_dir);
  }
  return std::unique_ptr<MpsSession>(new MpsSession(std::move(state), std::move(control)));
}

Status MpsSession::stop() {
  if (!control_ || !control_->control) return Status::ok();
  Status stopped = control_->control->stop();
  if (stopped.is_ok() && state_.started) spdlog::info("MPS: control daemon quit");
  control_->control.reset();  // stop() is done either way: it never sends `quit` twice
  return stopped;
}

#else

Result<std::unique_ptr<MpsSession>> MpsSession::open(const Config&, const std::string&) {
  return Status(ErrorCode::kUnavailable, "MPS is not available in this build (no cuda wing)");
}

Status MpsSession::stop() { return Status::ok(); }

#endif

}  // namespace sliceserve::controller
