#include "sliceserve/controller/worker_process.h"

#include <signal.h>
#include <spawn.h>
#include <string.h>
#include <sys/wait.h>

#include <algorithm>
#include <string_view>
#include <utility>

#include "sliceserve/shm/check.h"
#include "sliceserve/shm/spawn_attributes.h"

extern char** environ;

namespace sliceserve::controller {
namespace {

ExitInfo decode(int status) {
  ExitInfo info;
  if (WIFEXITED(status)) info.exit_code = WEXITSTATUS(status);
  if (WIFSIGNALED(status)) info.signal = WTERMSIG(status);
  return info;
}

std::string_view variable_name(std::string_view entry) { return entry.substr(0, entry.find('=')); }

}  // namespace

std::vector<std::string> spawn_environment(const char* const* base,
                                           const std::vector<std::string>& extra) {
  std::vector<std::string> env;
  for (const char* const* e = base; e != nullptr && *e != nullptr; ++e) {
    const std::string_view name = variable_name(*e);
    const bool replaced = std::any_of(extra.begin(), extra.end(), [name](const std::string& x) {
      return variable_name(x) == name;
    });
    if (!replaced) env.emplace_back(*e);
  }
  env.insert(env.end(), extra.begin(), extra.end());
  return env;
}

std::string ExitInfo::describe() const {
  if (signal != 0) return std::string("killed by SIG") + sigabbrev_np(signal);
  return "exit code " + std::to_string(exit_code);
}

Result<WorkerProcess> WorkerProcess::spawn(const std::string& binary,
                                           const std::vector<std::string>& args,
                                           const std::vector<std::string>& extra_env) {
  std::vector<char*> argv;
  argv.push_back(const_cast<char*>(binary.c_str()));
  for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  const std::vector<std::string> env = spawn_environment(environ, extra_env);
  std::vector<char*> envp;
  for (const auto& e : env) envp.push_back(const_cast<char*>(e.c_str()));
  envp.push_back(nullptr);
  const shm::CleanSpawnAttributes attr;
  pid_t pid = -1;
  int rc = posix_spawn(&pid, binary.c_str(), nullptr, attr.get(), argv.data(), envp.data());
  if (rc != 0) {
    return errno_status(("posix_spawn(" + binary + ")").c_str(), rc, __FILE__, __LINE__);
  }
  return WorkerProcess(pid);
}

WorkerProcess::WorkerProcess(WorkerProcess&& other) noexcept
    : pid_(std::exchange(other.pid_, -1)) {}

WorkerProcess& WorkerProcess::operator=(WorkerProcess&& other) noexcept {
  if (this != &other) {
    if (running()) {
      signal(SIGKILL);
      reap();
    }
    pid_ = std::exchange(other.pid_, -1);
  }
  return *this;
}

WorkerProcess::~WorkerProcess() {
  if (running()) {
    signal(SIGKILL);
    reap();
  }
}

void WorkerProcess::signal(int sig) const {
  if (running()) kill(pid_, sig);
}

std::optional<ExitInfo> WorkerProcess::try_reap() {
  if (!running()) return std::nullopt;
  int status = 0;
  pid_t r = waitpid(pid_, &status, WNOHANG);
  if (r != pid_) return std::nullopt;
  pid_ = -1;
  return decode(status);
}

ExitInfo WorkerProcess::reap() {
  int status = 0;
  pid_t r;
  do {
    r = waitpid(pid_, &status, 0);
  } while (r == -1 && errno == EINTR);
  pid_ = -1;
  return decode(status);
}

}  // namespace sliceserve::controller
