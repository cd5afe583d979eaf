// handover_bench: the daemon child process, its config, admin calls and status polls.

#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "handover_bench.h"
#include "sliceserve/controller/admin_socket.h"

namespace sliceserve::bench {
namespace {

void sleep_ms(int ms) {
  timespec t{ms / 1000, long(ms % 1000) * 1'000'000L};
  nanosleep(&t, nullptr);
}

std::string config_text(const Options& o, Mode mode, const std::string& instance) {
  std::ostringstream c;
  c << "# written by handover_bench\n"
    << "[server]\n"
    << "instance = \"" << instance << "\"\n"
    << "policy_interval_ms = 100\n"
    << "log_level = \"info\"\n"
    << "worker_ready_timeout_ms = 60000\n"
    << "shutdown_grace_ms = 3000\n\n"
    << "[policy]\n"
    << "enabled = false\n";
  if (o.backends == BackendSet::kGpu) {
    // The greenctx pool holds the two slices the bench alternates between (and 100): min_slice
    // and min_step are its spacing. A shadow mps worker loads the ONNX model anew.
    c << "min_slice = " << o.slice_low << "\n"
      << "min_step = " << (o.slice_high - o.slice_low) << "\n"
      << "resize_timeout_ms = 60000\n\n"
      << "[backend.mps]\n"
      << "control = \"" << o.mps_control << "\"\n"
      << "fallback = \"error\"\n"
      << "device = " << o.device << "\n\n"
      << "[backend.greenctx]\n"
      << "device = " << o.device << "\n"
      << "mps = false\n";
  }
  c << "\n[[model]]\n"
    << "name = \"" << kModel << "\"\n"
    << "kind = \"" << (o.onnx() ? "onnx" : "synthetic") << "\"\n"
    << "backend = \"" << backend_name(o, mode) << "\"\n"
    << "policy = false\n"
    << "slice = " << o.slice_low << "\n"
    << "max_batch = " << o.max_batch << "\n"
    // A partial batch does not wait for company: every pause in completions while requests
    // wait is then the server's, not the batcher's.
    << "max_queue_delay_us = 0\n"
    << "lanes = " << std::max(4, o.clients + 2) << "\n"
    << "slots_per_lane = " << o.slots_per_lane << "\n";
  if (o.onnx()) {
    // The tensors come from the file.
    c << "path = \"" << o.onnx_path << "\"\n";
  } else {
    c << "flops_per_item = " << o.flops_per_item << "\n"
      << "weights_mb = " << o.weights_mb << "\n"
      << "load_delay_ms = " << o.load_delay_ms << "\n"
      << "inputs = [ { name = \"x\", dtype = \"FP32\", shape = [" << kTensorElements << "] } ]\n"
      << "outputs = [ { name = \"y\", dtype = \"FP32\", shape = [" << kTensorElements
      << "] } ]\n";
  }
  return c.str();
}

std::string log_tail(const std::string& path, size_t max_bytes = 2000) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  std::string s = ss.str();
  if (s.size() > max_bytes) s = "..." + s.substr(s.size() - max_bytes);
  return s;
}

Status errno_status(const std::string& what) {
  return Status(ErrorCode::kInternal, what + ": " + std::strerror(errno));
}

}  // namespace

const char* mode_name(Mode mode) { return mode == Mode::kShadow ? "shadow" : "instant"; }

const char* backend_name(const Options& options, Mode mode) {
  if (options.backends == BackendSet::kGpu) return mode == Mode::kShadow ? "mps" : "greenctx";
  return mode == Mode::kShadow ? "cpu:process" : "cpu:affinity";
}

uint64_t now_ns() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return uint64_t(ts.tv_sec) * 1'000'000'000ULL + uint64_t(ts.tv_nsec);
}

std::string self_dir() {
  std::error_code ec;
  std::filesystem::path self = std::filesystem::read_symlink("/proc/self/exe", ec);
  if (ec) return ".";
  return self.parent_path().string();
}

std::optional<uint64_t> private_bytes(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/smaps_rollup");
  if (!in) return std::nullopt;
  std::string line;
  uint64_t kb = 0;
  bool seen = false;
  while (std::getline(in, line)) {
    if (line.rfind("Private_Clean:", 0) == 0 || line.rfind("Private_Dirty:", 0) == 0) {
      kb += std::strtoull(line.c_str() + line.find(':') + 1, nullptr, 10);
      seen = true;
    }
  }
  if (!seen) return std::nullopt;
  return kb * 1024;
}

std::vector<std::string> mapped_objects(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/maps");
  std::vector<std::string> out;
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream f(line);
    std::string range, perms, offset, dev, inode;
    f >> range >> perms >> offset >> dev >> inode;
    if (!inode.empty() && inode != "0") out.push_back(dev + " " + inode);
  }
  std::sort(out.begin(), out.end());
  out.erase(std::unique(out.begin(), out.end()), out.end());
  return out;
}

std::optional<uint64_t> extra_bytes(pid_t pid, const std::vector<std::string>& other) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/smaps");
  if (!in) return std::nullopt;
  uint64_t total_kb = 0;
  bool seen = false;
  bool shared = false;
  bool known = false;  // the other process maps the same object
  uint64_t clean_kb = 0, dirty_kb = 0;
  auto flush = [&] {
    if (!(shared && known)) total_kb += dirty_kb + (known ? 0 : clean_kb);
    clean_kb = dirty_kb = 0;
  };
  std::string line;
  while (std::getline(in, line)) {
    const size_t colon = line.find(':');
    const size_t space = line.find(' ');
    if (space != std::string::npos && line.find('-') < space &&
        (colon == std::string::npos || colon > space)) {
      // A mapping's header: "start-end perms offset dev inode [path]".
      flush();
      seen = true;
      std::istringstream f(line);
      std::string range, perms, offset, dev, inode;
      f >> range >> perms >> offset >> dev >> inode;
      shared = perms.size() > 3 && perms[3] == 's';
      known = !inode.empty() && inode != "0" &&
              std::binary_search(other.begin(), other.end(), dev + " " + inode);
    } else if (line.rfind("Private_Clean:", 0) == 0) {
      clean_kb += std::strtoull(line.c_str() + colon + 1, nullptr, 10);
    } else if (line.rfind("Private_Dirty:", 0) == 0) {
      dirty_kb += std::strtoull(line.c_str() + colon + 1, nullptr, 10);
    }
  }
  flush();
  if (!seen) return std::nullopt;
  return total_kb * 1024;
}

Result<std::unique_ptr<Daemon>> Daemon::start(const Options& options, Mode mode,
                                              const std::string& log_path) {
  const std::string instance = "hb" + std::to_string(getpid()) + "-" + mode_name(mode);
  return launch(config_text(options, mode, instance), instance, {kModel}, options.bin_dir,
                log_path, options.backends == BackendSet::kGpu);
}

Result<std::unique_ptr<Daemon>> Daemon::launch(const std::string& config,
                                               const std::string& instance,
                                               std::vector<std::string> models,
                                               const std::string& bin_dir,
                                               const std::string& log_path,
                                               bool fail_on_worker_error, uint64_t timeout_ms) {
  auto d = std::unique_ptr<Daemon>(new Daemon());
  d->instance_ = instance;
  d->log_path_ = log_path;
  d->models_ = std::move(models);
  const std::string daemon_bin = bin_dir + "/sliceserved";
  if (access(daemon_bin.c_str(), X_OK) != 0) {
    return Status(ErrorCode::kNotFound, daemon_bin + " is not executable (build sliceserved)");
  }
  const std::string worker_bin = bin_dir + "/sliceserve-worker";
  if (access(worker_bin.c_str(), X_OK) != 0) {
    return Status(ErrorCode::kNotFound,
                  worker_bin + " is not executable (build sliceserve-worker)");
  }

  char dir_template[] = "/tmp/sliceserve-handover-XXXXXX";
  if (mkdtemp(dir_template) == nullptr) return errno_status("mkdtemp()");
  d->dir_ = dir_template;
  const std::string config_path = d->dir_ + "/sliceserve.toml";
  {
    std::ofstream out(config_path);
    out << config;
    if (!out) return Status(ErrorCode::kInternal, "cannot write " + config_path);
  }

  const int log_fd = open(log_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (log_fd < 0) return errno_status("open(" + log_path + ")");
  const pid_t parent = getpid();
  const pid_t pid = fork();
  if (pid < 0) {
    close(log_fd);
    return errno_status("fork()");
  }
  if (pid == 0) {
    // The daemon must not outlive the bench (it would hold its instance name and the cores).
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (getppid() != parent) _exit(126);
    dup2(log_fd, STDOUT_FILENO);
    dup2(log_fd, STDERR_FILENO);
    const char* argv[] = {daemon_bin.c_str(), "-c", config_path.c_str(), nullptr};
    execv(daemon_bin.c_str(), const_cast<char* const*>(argv));
    std::fprintf(stderr, "handover_bench: execv(%s): %s\n", daemon_bin.c_str(),
                 std::strerror(errno));
    _exit(127);
  }
  close(log_fd);
  d->pid_ = pid;

  // Ready: the admin socket answers, and every model's worker epoch is SERVING.
  const uint64_t deadline = now_ns() + timeout_ms * kMs;
  std::string last_problem = "no answer yet";
  for (size_t next = 0; next < d->models_.size();) {
    const std::string& model = d->models_[next];
    int wstatus = 0;
    if (waitpid(pid, &wstatus, WNOHANG) == pid) {
      d->pid_ = -1;
      return Status(ErrorCode::kInternal, "sliceserved exited during start-up; its log (" +
                                              log_path + "):\n" + log_tail(log_path));
    }
    if (now_ns() > deadline) {
      return Status(ErrorCode::kTimeout,
                    "sliceserved not serving after " + std::to_string(timeout_ms / 1000) +
                        " s (" + last_problem + "); its log (" + log_path + "):\n" +
                        log_tail(log_path));
    }
    sleep_ms(20);
    if (d->segments_.size() == next) {
      Result<std::string> name = shm::segment_name(d->instance_, model);
      if (!name.is_ok()) return name.status();
      Result<shm::Segment> seg = shm::Segment::attach(*name);
      if (!seg.is_ok()) {
        last_problem = model + ": " + seg.status().to_string();
        continue;
      }
      d->segments_.push_back(std::move(seg).value());
    }
    Result<nlohmann::json> m = d->model_status(model, 1000);
    if (!m.is_ok()) {
      last_problem = m.status().to_string();
      continue;
    }
    // A GPU worker that cannot load (no device, no cuDNN) is restarted with backoff for ever;
    // its first error is the answer.
    if (fail_on_worker_error && m->contains("last_error") && (*m)["last_error"].is_string() &&
        !(*m)["last_error"].get<std::string>().empty()) {
      return Status(ErrorCode::kUnavailable,
                    "model " + model + ": the worker failed: " +
                        (*m)["last_error"].get<std::string>() + "; sliceserved's log (" +
                        log_path + "):\n" + log_tail(log_path, 1200));
    }
    const uint64_t epoch = m->value("epoch", uint64_t{0});
    const shm::WorkerStats& st = d->segments_[next].stats_block(epoch);
    if (epoch != 0 && st.epoch.load() == epoch &&
        st.state.load() == uint32_t(shm::WorkerState::kServing)) {
      ++next;
      continue;
    }
    last_problem = model + ": worker epoch " + std::to_string(epoch) + " not serving yet";
  }
  return d;
}

Daemon::~Daemon() {
  segments_.clear();
  if (pid_ > 0) {
    kill(pid_, SIGKILL);
    int wstatus = 0;
    waitpid(pid_, &wstatus, 0);
  }
  if (!dir_.empty()) {
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }
}

Status Daemon::stop(int timeout_ms) {
  if (pid_ <= 0) return Status(ErrorCode::kInternal, "sliceserved is not running");
  segments_.clear();
  if (kill(pid_, SIGTERM) != 0) return errno_status("kill(SIGTERM)");
  const uint64_t deadline = now_ns() + uint64_t(timeout_ms) * kMs;
  int wstatus = 0;
  for (;;) {
    const pid_t got = waitpid(pid_, &wstatus, WNOHANG);
    if (got == pid_) break;
    if (got < 0) return errno_status("waitpid()");
    if (now_ns() > deadline) {
      kill(pid_, SIGKILL);
      waitpid(pid_, &wstatus, 0);
      pid_ = -1;
      return Status(ErrorCode::kTimeout, "sliceserved did not stop within " +
                                             std::to_string(timeout_ms) + " ms of SIGTERM");
    }
    sleep_ms(5);
  }
  pid_ = -1;
  if (WIFEXITED(wstatus) && WEXITSTATUS(wstatus) == 0) return Status::ok();
  const std::string how = WIFSIGNALED(wstatus)
                              ? "was killed by signal " + std::to_string(WTERMSIG(wstatus))
                              : "exited with " + std::to_string(WEXITSTATUS(wstatus));
  return Status(ErrorCode::kInternal, "sliceserved " + how + " after SIGTERM; its log (" +
                                          log_path_ + "):\n" + log_tail(log_path_));
}

Result<nlohmann::json> Daemon::call(const nlohmann::json& request, int timeout_ms) const {
  return controller::admin_call(instance_, request, timeout_ms);
}

Result<nlohmann::json> Daemon::model_status(int timeout_ms) const {
  return model_status(models_.empty() ? std::string(kModel) : models_.front(), timeout_ms);
}

Result<nlohmann::json> Daemon::model_status(const std::string& model, int timeout_ms) const {
  Result<nlohmann::json> reply = call({{"cmd", "status"}}, timeout_ms);
  if (!reply.is_ok()) return reply.status();
  if (!reply->value("ok", false) || !reply->contains("models")) {
    return Status(ErrorCode::kInternal, "status: " + reply->dump());
  }
  for (const auto& m : (*reply)["models"]) {
    if (m.value("model", "") == model) return m;
  }
  return Status(ErrorCode::kUnknownModel, "status lists no model '" + model + "'");
}

StatusPoller::StatusPoller(const Daemon& daemon) : daemon_(daemon) {
  thread_ = std::thread([this] {
    // The daemon answers at once, so without a pause this would be a busy loop of admin calls
    // competing with the model for the cores.
    while (!stop_.load(std::memory_order_relaxed)) {
      const uint64_t asked = now_ns();
      Result<nlohmann::json> m = daemon_.model_status(2000);
      if (m.is_ok()) {
        std::lock_guard lock(mu_);
        latest_ = {asked, std::move(m).value()};
      }
      sleep_ms(2);
    }
  });
}

StatusPoller::~StatusPoller() {
  stop_.store(true);
  thread_.join();
}

std::optional<StatusPoller::Snapshot> StatusPoller::latest(uint64_t since_ns) const {
  std::lock_guard lock(mu_);
  if (latest_.asked_ns == 0 || latest_.asked_ns < since_ns) return std::nullopt;
  return latest_;
}

}  // namespace sliceserve::bench
