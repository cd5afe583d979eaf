#pragma once
// Runs a real sliceserved (the built binary) as a child process for integration tests, with a
// config written to a temporary folder and a unique instance name.

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>

#include "sliceserve/shm/futex.h"
#include "sliceserve/shm/segment.h"
#include "support/shm_test_util.h"

namespace sliceserve::testing {

inline std::string unique_instance(const std::string& tag) {
  static int counter = 0;
  return tag + std::to_string(getpid()) + "n" + std::to_string(counter++);
}

class TempDir {
 public:
  TempDir() {
    char tmpl[] = "/tmp/sliceserve-test-XXXXXX";
    path_ = mkdtemp(tmpl);
  }
  ~TempDir() { std::filesystem::remove_all(path_); }
  const std::string& path() const { return path_; }
  std::string write(const std::string& name, const std::string& text) const {
    std::string p = path_ + "/" + name;
    std::ofstream(p) << text;
    return p;
  }

 private:
  std::string path_;
};

inline std::string read_file(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

// A sliceserved child process; killed (SIGKILL) if still running when destroyed.
class DaemonProcess {
 public:
  DaemonProcess(const std::string& config_path, const std::string& log_path) {
    pid_ = fork();
    if (pid_ == 0) {
      int fd = open(log_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      dup2(fd, 1);
      dup2(fd, 2);
      std::string bin = std::string(SLICESERVE_BIN_DIR) + "/sliceserved";
      execl(bin.c_str(), bin.c_str(), "--config", config_path.c_str(), nullptr);
      _exit(127);
    }
  }
  ~DaemonProcess() {
    if (pid_ > 0) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
  }
  pid_t pid() const { return pid_; }
  // Exit status (or -signal, or -1000 on timeout, after which the daemon is killed).
  int wait(std::chrono::milliseconds timeout) {
    int rc = wait_child(pid_, timeout);
    pid_ = -1;
    return rc;
  }
  int stop(std::chrono::milliseconds timeout = std::chrono::seconds(15)) {
    kill(pid_, SIGTERM);
    return wait(timeout);
  }

 private:
  pid_t pid_ = -1;
};

// Waits until the model's segment exists and its current worker is SERVING. Returns the
// worker's epoch, or 0 on timeout.
inline uint64_t wait_serving(const std::string& instance, const std::string& model,
                             std::chrono::milliseconds timeout, uint64_t after_epoch = 0) {
  const uint64_t deadline = shm::monotonic_ns() + uint64_t(timeout.count()) * 1'000'000;
  std::string name = shm::segment_name(instance, model).value();
  while (shm::monotonic_ns() < deadline) {
    auto seg = shm::Segment::attach(name);
    if (seg.is_ok()) {
      uint64_t epoch = seg->header().owner_epoch.load();
      const shm::WorkerStats& st = seg->stats_block(epoch);
      if (epoch > after_epoch && st.epoch.load() == epoch &&
          st.state.load() == uint32_t(shm::WorkerState::kServing)) {
        return epoch;
      }
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return 0;
}

inline bool any_segment_of(const std::string& instance) {
  return !shm::list_segment_models(instance).empty();
}

}  // namespace sliceserve::testing
