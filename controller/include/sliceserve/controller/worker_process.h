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

class WorkerProcess {
 public:
  static Result<WorkerProcess> spawn(const std::string& binary,
                                     const std::vector<std::string>& args);

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
