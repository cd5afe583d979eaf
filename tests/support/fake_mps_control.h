#pragma once
// A fake nvidia-cuda-mps-control for the MPS tests (the control's unit test and the daemon's
// integration test), and a scoped environment variable to put it on PATH.

#include <stdlib.h>
#include <sys/stat.h>

#include <filesystem>
#include <fstream>
#include <optional>
#include <string>

namespace sliceserve::testing {

// A stand-in for nvidia-cuda-mps-control. With -d it logs its argv and MPS directories, creates
// <pipe>/control (the daemon's pipe) and exits, as the real one returns once it has daemonized.
// Without -d it reads commands from stdin, logs each, answers get_server_list from the file
// `servers` and removes the pipe on quit; like the real one it fails without a pipe. Files in
// its directory change its behaviour: daemon_mode / mode = hang (sleeps, recording the sleeping
// pid in hang.pid) or fail (exit 1 with a message on stderr); ignore_quit keeps the pipe.
inline constexpr const char* kFakeMpsControlScript = R"sh(#!/bin/sh
dir='@DIR@'
if [ "$1" = "-d" ]; then
  echo "daemon args=$* pipe=$CUDA_MPS_PIPE_DIRECTORY log=$CUDA_MPS_LOG_DIRECTORY" >> "$dir/calls.log"
  case "$(cat "$dir/daemon_mode" 2>/dev/null)" in
    fail) echo "An instance of this daemon is already running" >&2; exit 1 ;;
    hang) sleep 30 & echo $! > "$dir/hang.pid"; wait; exit 0 ;;
  esac
  : > "$CUDA_MPS_PIPE_DIRECTORY/control"
  exit 0
fi
while IFS= read -r line; do
  echo "command $line pipe=$CUDA_MPS_PIPE_DIRECTORY" >> "$dir/calls.log"
  case "$(cat "$dir/mode" 2>/dev/null)" in
    fail) echo "Cannot find MPS control daemon process (fake)" >&2; exit 1 ;;
    hang) sleep 30 & echo $! > "$dir/hang.pid"; wait ;;
  esac
  if [ ! -e "$CUDA_MPS_PIPE_DIRECTORY/control" ]; then
    echo "Cannot find MPS control daemon process" >&2; exit 1
  fi
  case "$line" in
    get_server_list) cat "$dir/servers" 2>/dev/null ;;
    quit) [ -e "$dir/ignore_quit" ] || rm -f "$CUDA_MPS_PIPE_DIRECTORY/control" ;;
  esac
done
exit 0
)sh";

// Writes the fake as <dir>/bin/nvidia-cuda-mps-control (its state files live in `dir`); returns
// its path, or "" when it could not be made executable.
inline std::string write_fake_mps_control(const std::string& dir) {
  std::filesystem::create_directories(dir + "/bin");
  std::string script = kFakeMpsControlScript;
  script.replace(script.find("@DIR@"), 5, dir);
  const std::string path = dir + "/bin/nvidia-cuda-mps-control";
  std::ofstream(path) << script;
  return chmod(path.c_str(), 0755) == 0 ? path : "";
}

// Sets (or unsets, with nullopt) an environment variable for a scope.
class ScopedEnv {
 public:
  ScopedEnv(const char* name, std::optional<std::string> value) : name_(name) {
    if (const char* old = getenv(name)) old_ = old;
    if (value) {
      setenv(name, value->c_str(), 1);
    } else {
      unsetenv(name);
    }
  }
  ~ScopedEnv() {
    if (old_) {
      setenv(name_.c_str(), old_->c_str(), 1);
    } else {
      unsetenv(name_.c_str());
    }
  }
  ScopedEnv(const ScopedEnv&) = delete;
  ScopedEnv& operator=(const ScopedEnv&) = delete;

 private:
  std::string name_;
  std::optional<std::string> old_;
};

}  // namespace sliceserve::testing
