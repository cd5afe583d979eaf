#pragma once
// Helpers shared by the shm tests: unique segment names, a small spec, a forked child with a
// timeout.

#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <functional>
#include <string>
#include <thread>

#include "sliceserve/shm/segment.h"

namespace sliceserve::testing {

inline std::string unique_segment_name(const std::string& tag) {
  static std::atomic<int> counter{0};
  return "/sliceserve.test" + std::to_string(getpid()) + "x" + std::to_string(counter++) + "." +
         tag;
}

// One FP32 input "x" [n] and one FP32 output "y" [n].
inline shm::ModelSpec float_spec(int64_t n) {
  shm::ModelSpec spec;
  int64_t dims[] = {n};
  spec.n_inputs = 1;
  spec.n_outputs = 1;
  spec.inputs[0] = shm::make_tensor_spec("x", shm::DataType::kFp32, dims).value();
  spec.outputs[0] = shm::make_tensor_spec("y", shm::DataType::kFp32, dims).value();
  return spec;
}

inline shm::SegmentOptions test_segment_options(const std::string& tag, uint32_t lanes = 4,
                                                uint32_t slots_per_lane = 8) {
  shm::SegmentOptions o;
  o.name = unique_segment_name(tag);
  o.model_name = tag;
  o.spec = float_spec(16);
  o.lanes = lanes;
  o.slots_per_lane = slots_per_lane;
  return o;
}

// Forks; the child runs fn and exits with its return value (never returns to gtest).
inline pid_t fork_child(const std::function<int()>& fn) {
  pid_t pid = fork();
  if (pid == 0) {
    int rc = 1;
    rc = fn();
    _exit(rc);
  }
  return pid;
}

// Waits for a child; returns its exit status, or -signal if it was killed, or -1000 on timeout
// (the child is then killed).
inline int wait_child(pid_t pid, std::chrono::milliseconds timeout) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    int status = 0;
    pid_t r = waitpid(pid, &status, WNOHANG);
    if (r == pid) return WIFEXITED(status) ? WEXITSTATUS(status) : -WTERMSIG(status);
    if (std::chrono::steady_clock::now() > deadline) {
      kill(pid, SIGKILL);
      waitpid(pid, &status, 0);
      return -1000;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
}

}  // namespace sliceserve::testing
