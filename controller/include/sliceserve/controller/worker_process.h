#pragma once
// A spawned sliceserve-worker process: posix_spawn, signals, non-blocking reap.

#include <sys/types.h>

#include <optional>
#include <string>
#include <vector>

#include "sliceserve/shm/status.h"

namespace sliceserve::controller {

struct ExitInfo {
  int exit_code = -1;            // when it exited
  int signal = 0;                // when a signal killed it
  std::string describe() const;  // "exit code 2" / "killed by SIGKILL"
};

// The environment a worker is spawned with: `base` (a null-terminated "NAME=value" array, the
// controller's own environ) with each entry of `extra` replacing the base's entry of the same
// name, or appended when the base has none. Pure, for tests.
std::vector<std::string> spawn_environment(const char* const* base,
                                           const std::vector<std::string>& extra);

class WorkerProcess {
 public:
  // Runs `binary` with `args` and the controller's environment plus `extra_env` (see
  // spawn_environment).
  static Result<WorkerProcess> spawn(const std::string& binary,
                                     const std::vector<std::string>& args,
                                     const std::vector<std::string>& extra_env = {});

  WorkerProcess(WorkerProcess&& other) noexcept;
  WorkerProcess& operator=(WorkerProcess&& other) noexcept;
  WorkerProcess(const WorkerProcess&) = delete;
  ~WorkerProcess();  // kills (SIGKILL) and reaps a process still running: never leaves one behind

  pid_t pid() const { return pid_; }
  bool running() const { return pid_ > 0; }
  void signal(int sig) const;
  // Reaps without blocking; returns how it ended once it has.
  std::optional<ExitInfo> try_reap();
  // Blocks until it ends (after sending nothing); returns how it ended.
  ExitInfo reap();

 private:
  explicit WorkerProcess(pid_t pid) : pid_(pid) {}
  pid_t pid_ = -1;
};

}  // namespace sliceserve::controller
