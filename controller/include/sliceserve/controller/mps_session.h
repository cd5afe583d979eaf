#pragma once
// sliceserved's side of NVIDIA MPS: at load, when some model's worker must be an MPS client
// (Config::needs_mps_control), the daemon starts its own `nvidia-cuda-mps-control` or attaches to
// one ([backend.mps] control), applies the fallback when MPS is unavailable, and hands the
// outcome (MpsState) to every model supervisor, which builds its workers' environment from it.
// A control daemon this controller started is quit when the session ends.

#include <memory>
#include <string>
#include <string_view>

#include "sliceserve/controller/config.h"
#include "sliceserve/shm/status.h"

namespace sliceserve::controller {

// What the workers of this controller get from MPS.
struct MpsState {
  enum class Sharing {
    kNone,        // no model needed MPS at load, or [backend.mps] control = "off"
    kMps,         // a control daemon answers: mps (and greenctx, mps = true) workers are clients
    kTimeShared,  // MPS was needed but is unavailable (fallback = "timeshare"): not enforced
  };
  Sharing sharing = Sharing::kNone;
  std::string pipe_dir;  // kMps: where the workers reach the daemon
  std::string log_dir;
  bool started = false;  // kMps: this controller started the daemon (and quits it)
  std::string warning;   // kTimeShared: why, for the log and the status
};

// "none", "mps", "time-shared".
std::string_view sharing_name(MpsState::Sharing sharing);

// The backend as the status shows it: backend_name(), plus " (time-shared)" where the model
// wanted MPS and has none (fallback) or MPS is off for an mps model.
std::string backend_display(const Config& config, Backend backend, const MpsState& mps);

class MpsSession {
 public:
  // Starts (control = "start": pipe and log dirs from the config, else <runtime_dir>/mps/pipe and
  // .../log) or attaches to (control = "attach") the control daemon and checks that it answers.
  // When that fails: fallback = "error" returns the failure (kUnavailable, naming the control
  // binary and what was tried); fallback = "timeshare" logs a warning and gives a kTimeShared
  // state. Never called with control = "off". Without the cuda wing: kUnavailable.
  static Result<std::unique_ptr<MpsSession>> open(const Config& config,
                                                  const std::string& runtime_dir);
  ~MpsSession();  // stop(), errors logged
  MpsSession(const MpsSession&) = delete;
  MpsSession& operator=(const MpsSession&) = delete;

  const MpsState& state() const { return state_; }
  // Quits a daemon this session started (bounded by the control's timeout); an attached one is
  // left running. Idempotent.
  Status stop();

 private:
  struct Control;  // the cuda wing's MpsControl, where it is built
  MpsSession(MpsState state, std::unique_ptr<Control> control);

  MpsState state_;
  std::unique_ptr<Control> control_;
};

}  // namespace sliceserve::controller
