#pragma once
// The control side of the mps backend: starting or attaching to an NVIDIA MPS control daemon
// (nvidia-cuda-mps-control), talking to it through the control binary's stdin, the environment a
// worker needs to become an MPS client with its slice, and the policy when MPS is unavailable.
// Nothing here touches the CUDA driver: it runs (and reports "not found") on any machine.

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "sliceserve/shm/status.h"

namespace sliceserve::backends {

// NVIDIA's defaults when CUDA_MPS_PIPE_DIRECTORY / CUDA_MPS_LOG_DIRECTORY are unset.
inline constexpr std::string_view kMpsDefaultPipeDir = "/tmp/nvidia-mps";
inline constexpr std::string_view kMpsDefaultLogDir = "/var/log/nvidia-mps";

struct MpsOptions {
  enum class Mode {
    kStart,   // run our own daemon (`nvidia-cuda-mps-control -d`) with pipe_dir and log_dir
    kAttach,  // use a daemon someone else started at pipe_dir; never stop it
  };
  Mode mode = Mode::kStart;
  // A bare name is searched on PATH; a name with a '/' is used as is.
  std::string control_binary = "nvidia-cuda-mps-control";
  // kStart: required, normally under the controller's runtime directory (see
  // mps_start_options); created 0700 when missing. kAttach: empty means NVIDIA's defaults.
  std::string pipe_dir;
  std::string log_dir;
  // Bound on each run of the control binary (`-d` returning, one command) and on stop().
  std::chrono::milliseconds timeout{5000};
};

// kStart options with the pipe and log directories under the controller's runtime directory:
// <runtime_dir>/mps/pipe and <runtime_dir>/mps/log.
MpsOptions mps_start_options(std::string_view runtime_dir);

// What a worker needs to reach the daemon.
struct MpsControlInfo {
  std::string pipe_dir;
  std::string log_dir;
  bool started = false;  // this controller started the daemon (and will quit it)
};

// A started or attached MPS control daemon. Each command runs the control binary once, with
// CUDA_MPS_PIPE_DIRECTORY / CUDA_MPS_LOG_DIRECTORY set, writes the command line on its stdin and
// reads its stdout until it exits, bounded by the timeout. A run that hangs is killed (its whole
// process group) and reported as kTimeout; a non-zero exit is kUnavailable with its stderr text.
// send() and server_list() may be called from several threads; stop() from one.
class MpsControl {
 public:
  // Resolves the control binary (kUnavailable naming the PATH searched when it is missing),
  // starts the daemon in kStart mode, then checks that the daemon answers `get_server_list`.
  // In kStart mode a daemon still answering in pipe_dir (left by a crashed controller: the
  // directory is this controller's own) is quit first, so that `-d` starts a fresh one.
  // Every failure to start or reach the daemon (a hang included) is kUnavailable, so that
  // decide_mps can fall back; a bad option is kInvalidArgument. A daemon started here that does
  // not answer is quit again before the error is returned.
  static Result<std::unique_ptr<MpsControl>> start_or_attach(const MpsOptions& options);

  MpsControl(const MpsControl&) = delete;
  MpsControl& operator=(const MpsControl&) = delete;
  ~MpsControl();  // stop(), errors ignored: a started daemon is asked to quit, bounded

  // Sends one command line (no newline inside); its stdout, when reply is given.
  Status send(std::string_view command, std::string* reply = nullptr) const;
  // The pids of the running MPS servers (`get_server_list`), in the daemon's order.
  Result<std::vector<pid_t>> server_list() const;
  // A daemon this object started: sends `quit` and waits until the control pipe
  // (<pipe_dir>/control) is gone or `get_server_list` fails, all within one timeout (kTimeout
  // when the daemon still answers after it). An attached daemon is left alone. Idempotent.
  Status stop();

  const MpsControlInfo& info() const { return info_; }
  const std::string& binary() const { return binary_; }

 private:
  MpsControl(std::string binary, MpsControlInfo info, std::chrono::milliseconds timeout)
      : binary_(std::move(binary)), info_(std::move(info)), timeout_(timeout) {}
  Status run_command(std::string_view command, std::string* reply,
                     std::chrono::milliseconds timeout) const;

  std::string binary_;
  MpsControlInfo info_;
  std::chrono::milliseconds timeout_;
  bool stopped_ = false;
};

// The environment entries ("NAME=value") that make a worker an MPS client of the daemon with
// its slice: CUDA_MPS_PIPE_DIRECTORY, CUDA_MPS_LOG_DIRECTORY, CUDA_MPS_ACTIVE_THREAD_PERCENTAGE
// and, when given, CUDA_MPS_PINNED_DEVICE_MEM_LIMIT="<device>=<MiB>M".
// The percentage must be in (0, 100]. MPS takes an integer and rounds down to what the hardware
// supports, so it is written rounded down (50.7 -> "50"), but never below 1 (0.4 -> "1"): a slice
// always gets some threads. A tiny tolerance keeps 29.999999999 (from 0.3 * 100) at "30".
// The memory limit is written in whole MiB, rounded down (a limit only tightens); under 1 MiB is
// kInvalidArgument. `device` is the client's device ordinal (after CUDA_VISIBLE_DEVICES).
Result<std::vector<std::string>> mps_worker_environment(const MpsControlInfo& info,
                                                        double slice_percent,
                                                        std::optional<uint64_t> pinned_mem_limit,
                                                        int device = 0);

// What the controller does when MPS cannot be used.
enum class MpsFallback {
  kError,      // the MPS failure is the controller's failure
  kTimeshare,  // run the workers as plain CUDA clients, time-shared, and say so
};

struct MpsDecision {
  enum class Sharing { kMps, kTimeShared };
  Sharing sharing = Sharing::kMps;
  // Non-empty for kTimeShared; the caller must log it (slices are not enforced then).
  std::string warning;
};

// Given how start_or_attach went: MPS when it succeeded; with kError the failure as is; with
// kTimeshare, an unavailable MPS (kUnavailable, kTimeout) becomes a time-shared decision with the
// warning "MPS unavailable (<why>): running time-shared; slices are not enforced". Other
// failures (a bad configuration) are returned as is under either policy.
Result<MpsDecision> decide_mps(const Status& start_result, MpsFallback fallback);

// Green contexts under MPS need the active thread percentage unset or 100: kInvalidArgument
// for anything below.
Status check_greenctx_with_mps(double mps_percent);

}  // namespace sliceserve::backends
