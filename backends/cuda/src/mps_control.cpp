#include "sliceserve/backends/cuda/mps_control.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <thread>
#include <utility>

#include "sliceserve/shm/check.h"
#include "sliceserve/shm/spawn_attributes.h"

extern char** environ;

namespace sliceserve::backends {
namespace {

using Clock = std::chrono::steady_clock;

constexpr std::string_view kPipeVar = "CUDA_MPS_PIPE_DIRECTORY";
constexpr std::string_view kLogVar = "CUDA_MPS_LOG_DIRECTORY";
// Where `-d` writes its stdout/stderr: a file, not a pipe, so that a daemon that keeps the
// descriptors never writes into a pipe nobody reads.
constexpr std::string_view kStartLog = "sliceserve_control_start.log";
// The most of a control run's stderr/stdout quoted in an error.
constexpr size_t kMaxQuoted = 2000;

// An open file descriptor, closed on scope exit.
class Fd {
 public:
  explicit Fd(int fd = -1) : fd_(fd) {}
  ~Fd() { reset(); }
  Fd(Fd&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
  Fd& operator=(Fd&& other) noexcept {
    if (this != &other) {
      reset();
      fd_ = std::exchange(other.fd_, -1);
    }
    return *this;
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  int get() const { return fd_; }
  bool valid() const { return fd_ >= 0; }
  void reset() {
    if (fd_ >= 0) close(fd_);
    fd_ = -1;
  }

 private:
  int fd_;
};

std::string format_number(double value) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%g", value);
  return buf;
}

std::string trimmed(std::string_view text) {
  const auto is_space = [](char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; };
  while (!text.empty() && is_space(text.front())) text.remove_prefix(1);
  while (!text.empty() && is_space(text.back())) text.remove_suffix(1);
  if (text.size() > kMaxQuoted) return std::string(text.substr(0, kMaxQuoted)) + "...";
  return std::string(text);
}

bool is_executable_file(const std::string& path) {
  struct stat st {};
  return stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode) && access(path.c_str(), X_OK) == 0;
}

// execvp's rules: a name with a '/' is a path; otherwise each PATH entry (empty = ".") in turn.
Result<std::string> resolve_binary(const std::string& name) {
  if (name.empty()) return Status(ErrorCode::kInvalidArgument, "empty MPS control binary name");
  if (name.find('/') != std::string::npos) {
    if (is_executable_file(name)) return name;
    return Status(ErrorCode::kUnavailable, name + " is not an executable file");
  }
  const char* env_path = std::getenv("PATH");
  const std::string path = env_path != nullptr && *env_path != '\0' ? env_path : "/usr/bin:/bin";
  size_t begin = 0;
  for (;;) {
    const size_t end = std::min(path.find(':', begin), path.size());
    std::string dir = path.substr(begin, end - begin);
    if (dir.empty()) dir = ".";
    std::string candidate = dir + "/" + name;
    if (is_executable_file(candidate)) return candidate;
    if (end == path.size()) break;
    begin = end + 1;
  }
  return Status(ErrorCode::kUnavailable, name + " not found on PATH (" + path + ")");
}

// Creates `path` and its missing parents 0700 (exactly: not filtered by the umask); an existing
// directory is left as it is.
Status ensure_private_dir(const std::string& path) {
  if (path.empty()) return Status(ErrorCode::kInvalidArgument, "empty MPS directory");
  size_t pos = 0;
  while (pos != std::string::npos) {
    pos = path.find('/', pos + 1);
    const std::string prefix = path.substr(0, pos);
    if (prefix.empty()) continue;
    struct stat st {};
    if (stat(prefix.c_str(), &st) == 0) {
      if (!S_ISDIR(st.st_mode)) {
        return Status(ErrorCode::kInvalidArgument, prefix + " exists and is not a directory");
      }
      continue;
    }
    if (errno != ENOENT)
      return errno_status(("stat(" + prefix + ")").c_str(), errno, __FILE__, __LINE__);
    if (mkdir(prefix.c_str(), 0700) != 0) {
      if (errno != EEXIST) {
        return errno_status(("mkdir(" + prefix + ")").c_str(), errno, __FILE__, __LINE__);
      }
      continue;  // created by someone else meanwhile
    }
    if (chmod(prefix.c_str(), 0700) != 0) {
      return errno_status(("chmod(" + prefix + ")").c_str(), errno, __FILE__, __LINE__);
    }
  }
  return Status::ok();
}

// The current environment with the MPS directories replaced by the daemon's.
std::vector<std::string> control_environment(const MpsControlInfo& info) {
  std::vector<std::string> env;
  const auto has_name = [](std::string_view entry, std::string_view name) {
    return entry.size() > name.size() && entry.substr(0, name.size()) == name &&
           entry[name.size()] == '=';
  };
  for (char** e = environ; e != nullptr && *e != nullptr; ++e) {
    std::string_view entry(*e);
    if (has_name(entry, kPipeVar) || has_name(entry, kLogVar)) continue;
    env.emplace_back(entry);
  }
  env.push_back(std::string(kPipeVar) + "=" + info.pipe_dir);
  env.push_back(std::string(kLogVar) + "=" + info.log_dir);
  return env;
}

struct RunOutput {
  int exit_code = -1;  // when it exited
  int signal = 0;      // when a signal killed it
  std::string out;
  std::string err;
  bool succeeded() const { return signal == 0 && exit_code == 0; }
  std::string describe_exit() const {
    if (signal != 0) return std::string("killed by SIG") + sigabbrev_np(signal);
    return "exit code " + std::to_string(exit_code);
  }
};

struct RunSpec {
  std::string binary;
  std::vector<std::string> args;
  std::vector<std::string> env;
  std::optional<std::string> input;  // written on stdin, then EOF; stdin is /dev/null without
  std::string output_file;           // when set, stdout and stderr go there instead of pipes
  std::chrono::milliseconds timeout{0};
  std::string what;  // "`nvidia-cuda-mps-control -d`", for errors
};

// Appends what `fd` has now to `sink`; returns false at EOF (or a read error).
bool drain(int fd, std::string& sink) {
  char buf[4096];
  for (;;) {
    ssize_t n = read(fd, buf, sizeof(buf));
    if (n > 0) {
      sink.append(buf, size_t(n));
      continue;
    }
    if (n == -1 && errno == EINTR) continue;
    return n == -1 && (errno == EAGAIN || errno == EWOULDBLOCK);
  }
}

Status spawn_failed(const char* call, int err, const RunSpec& spec) {
  return errno_status(call, err, __FILE__, __LINE__).with_context("running " + spec.what);
}

// Runs the control binary once, in its own process group, bounded by spec.timeout: on timeout
// the whole group is killed and reaped, and the result is kTimeout.
Result<RunOutput> run_control(const RunSpec& spec) {
  Fd child_in, parent_in, out_read, out_write, err_read, err_write;
  if (spec.input) {
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) {
      return spawn_failed("socketpair", errno, spec);
    }
    // A socket, not a pipe: send(MSG_NOSIGNAL) to a child that already exited is EPIPE, not a
    // SIGPIPE for the controller.
    parent_in = Fd(sv[0]);
    child_in = Fd(sv[1]);
  } else {
    child_in = Fd(open("/dev/null", O_RDONLY | O_CLOEXEC));
    if (!child_in.valid()) return spawn_failed("open(/dev/null)", errno, spec);
  }
  if (!spec.output_file.empty()) {
    out_write = Fd(open(spec.output_file.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
    if (!out_write.valid()) {
      return spawn_failed(("open(" + spec.output_file + ")").c_str(), errno, spec);
    }
  } else {
    int p[2];
    if (pipe2(p, O_CLOEXEC | O_NONBLOCK) != 0) return spawn_failed("pipe2", errno, spec);
    out_read = Fd(p[0]);
    out_write = Fd(p[1]);
    if (pipe2(p, O_CLOEXEC | O_NONBLOCK) != 0) return spawn_failed("pipe2", errno, spec);
    err_read = Fd(p[0]);
    err_write = Fd(p[1]);
    // The child's ends block, as a program expects of its stdout/stderr.
    if (fcntl(out_write.get(), F_SETFL, 0) != 0 || fcntl(err_write.get(), F_SETFL, 0) != 0) {
      return spawn_failed("fcntl(F_SETFL)", errno, spec);
    }
  }
  const int child_err = err_write.valid() ? err_write.get() : out_write.get();

  std::vector<char*> argv;
  argv.push_back(const_cast<char*>(spec.binary.c_str()));
  for (const auto& a : spec.args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  std::vector<char*> envp;
  for (const auto& e : spec.env) envp.push_back(const_cast<char*>(e.c_str()));
  envp.push_back(nullptr);

  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, child_in.get(), STDIN_FILENO);
  posix_spawn_file_actions_adddup2(&actions, out_write.get(), STDOUT_FILENO);
  posix_spawn_file_actions_adddup2(&actions, child_err, STDERR_FILENO);
  // Its own process group, so that a hung run is killed with everything it started.
  const shm::CleanSpawnAttributes attr(/*own_process_group=*/true);
  pid_t pid = -1;
  const int rc =
      posix_spawn(&pid, spec.binary.c_str(), &actions, attr.get(), argv.data(), envp.data());
  posix_spawn_file_actions_destroy(&actions);
  if (rc != 0) return spawn_failed(("posix_spawn(" + spec.binary + ")").c_str(), rc, spec);
  child_in.reset();
  out_write.reset();
  err_write.reset();

  const auto deadline = Clock::now() + spec.timeout;
  if (spec.input) {
    // Small (one command line): fits the socket buffer, so this does not block on the child.
    std::string line = *spec.input + "\n";
    size_t sent = 0;
    while (sent < line.size()) {
      ssize_t n = send(parent_in.get(), line.data() + sent, line.size() - sent, MSG_NOSIGNAL);
      if (n == -1 && errno == EINTR) continue;
      if (n == -1) break;  // the child is gone or closed stdin: its exit status tells
      sent += size_t(n);
    }
    parent_in.reset();  // EOF: the control binary exits after the last command
  }

  RunOutput output;
  bool out_open = out_read.valid(), err_open = err_read.valid();
  for (;;) {
    int status = 0;
    const pid_t r = waitpid(pid, &status, WNOHANG);
    if (r == pid) {
      if (WIFEXITED(status)) output.exit_code = WEXITSTATUS(status);
      if (WIFSIGNALED(status)) output.signal = WTERMSIG(status);
      break;
    }
    if (r == -1 && errno != EINTR) {
      const int err = errno;
      kill(-pid, SIGKILL);
      return spawn_failed("waitpid", err, spec);
    }
    const auto now = Clock::now();
    if (now >= deadline) {
      // The group first (what the run started), then the child itself should its setpgid
      // have been undone; then reap, so that no zombie is left.
      kill(-pid, SIGKILL);
      kill(pid, SIGKILL);
      while (waitpid(pid, &status, 0) == -1 && errno == EINTR) {
      }
      std::string err_text;
      if (err_open) drain(err_read.get(), err_text);
      std::string message = spec.what + " did not finish within " +
                            std::to_string(spec.timeout.count()) + " ms (killed)";
      if (!trimmed(err_text).empty()) message += "; stderr: " + trimmed(err_text);
      return Status(ErrorCode::kTimeout, message);
    }
    // Wake for output (so that a chatty child never blocks on a full pipe) or every few ms to
    // look for its exit.
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - now);
    const int wait_ms = int(std::min<int64_t>(std::max<int64_t>(left.count(), 1), 5));
    pollfd fds[2];
    nfds_t nfds = 0;
    if (out_open) fds[nfds++] = {out_read.get(), POLLIN, 0};
    if (err_open) fds[nfds++] = {err_read.get(), POLLIN, 0};
    if (nfds == 0) {
      std::this_thread::sleep_for(std::chrono::milliseconds(wait_ms));
      continue;
    }
    if (poll(fds, nfds, wait_ms) == -1 && errno != EINTR) {
      const int err = errno;
      kill(-pid, SIGKILL);
      kill(pid, SIGKILL);
      while (waitpid(pid, &status, 0) == -1 && errno == EINTR) {
      }
      return spawn_failed("poll", err, spec);
    }
    if (out_open) out_open = drain(out_read.get(), output.out);
    if (err_open) err_open = drain(err_read.get(), output.err);
  }
  // It exited: what is left in the pipes is read without waiting for EOF (a process it left
  // behind may hold them open).
  if (out_open) drain(out_read.get(), output.out);
  if (err_open) drain(err_read.get(), output.err);
  if (!spec.output_file.empty()) {
    Fd file(open(spec.output_file.c_str(), O_RDONLY | O_CLOEXEC));
    if (file.valid()) {
      // A regular file: drain reads to EOF.
      drain(file.get(), output.err);
    }
  }
  return output;
}

Status run_failed(const RunSpec& spec, const RunOutput& output) {
  std::string message = spec.what + " failed: " + output.describe_exit();
  const std::string err = trimmed(output.err);
  if (!err.empty()) message += "; stderr: " + err;
  const std::string out = trimmed(output.out);
  if (!out.empty()) message += "; stdout: " + out;
  return Status(ErrorCode::kUnavailable, message);
}

// For start_or_attach: a daemon that cannot be started or reached, for whatever reason (a hang,
// a failed spawn, a reply that makes no sense), is an unavailable MPS.
Status as_unavailable(const Status& status) {
  if (status.is_ok() || status.code() == ErrorCode::kInvalidArgument) return status;
  return Status(ErrorCode::kUnavailable, status.message());
}

Result<std::vector<pid_t>> parse_server_list(std::string_view reply) {
  std::vector<pid_t> pids;
  size_t pos = 0;
  while (pos < reply.size()) {
    while (pos < reply.size() && std::strchr(" \t\r\n", reply[pos]) != nullptr) ++pos;
    if (pos == reply.size()) break;
    const size_t start = pos;
    long long value = 0;
    bool digits = true;
    while (pos < reply.size() && std::strchr(" \t\r\n", reply[pos]) == nullptr) {
      const char c = reply[pos];
      digits = digits && c >= '0' && c <= '9' && value <= (1LL << 31);
      if (digits) value = value * 10 + (c - '0');
      ++pos;
    }
    if (!digits || value <= 0 || value > (1LL << 31) - 1) {
      return Status(ErrorCode::kInternal,
                    "unexpected get_server_list reply \"" + trimmed(reply) + "\" (token \"" +
                        std::string(reply.substr(start, pos - start)) + "\" is not a pid)");
    }
    pids.push_back(pid_t(value));
  }
  return pids;
}

}  // namespace

MpsOptions mps_start_options(std::string_view runtime_dir) {
  MpsOptions options;
  options.mode = MpsOptions::Mode::kStart;
  std::string base(runtime_dir);
  while (base.size() > 1 && base.back() == '/') base.pop_back();
  options.pipe_dir = base + "/mps/pipe";
  options.log_dir = base + "/mps/log";
  return options;
}

Result<std::unique_ptr<MpsControl>> MpsControl::start_or_attach(const MpsOptions& options) {
  if (options.timeout.count() <= 0) {
    return Status(ErrorCode::kInvalidArgument, "MPS control timeout must be positive");
  }
  MpsControlInfo info;
  info.pipe_dir = options.pipe_dir;
  info.log_dir = options.log_dir;
  const bool start = options.mode == MpsOptions::Mode::kStart;
  if (start && (info.pipe_dir.empty() || info.log_dir.empty())) {
    return Status(ErrorCode::kInvalidArgument,
                  "starting an MPS control daemon needs its pipe and log directories "
                  "(see mps_start_options)");
  }
  if (info.pipe_dir.empty()) info.pipe_dir = kMpsDefaultPipeDir;
  if (info.log_dir.empty()) info.log_dir = kMpsDefaultLogDir;
  ASSIGN_OR_RETURN(std::string binary, resolve_binary(options.control_binary));

  if (start) {
    RETURN_IF_ERROR(ensure_private_dir(info.pipe_dir));
    RETURN_IF_ERROR(ensure_private_dir(info.log_dir));
    // A daemon already answering in our private pipe directory was left by an earlier run of
    // this controller (one that crashed): quit it, so that `-d` starts a fresh one with today's
    // settings instead of failing with "already running".
    struct stat st {};
    if (stat((info.pipe_dir + "/control").c_str(), &st) == 0) {
      MpsControlInfo stale_info = info;
      stale_info.started = true;
      MpsControl stale(binary, std::move(stale_info), options.timeout);
      if (stale.server_list().is_ok()) {
        RETURN_IF_ERROR(
            as_unavailable(stale.stop())
                .with_context("quitting the MPS control daemon left in " + info.pipe_dir));
      } else {
        stale.stopped_ = true;  // nothing answers: a stale pipe, `-d` replaces it
      }
    }
    RunSpec spec;
    spec.binary = binary;
    spec.args = {"-d"};
    spec.env = control_environment(info);
    spec.output_file = info.log_dir + "/" + std::string(kStartLog);
    spec.timeout = options.timeout;
    spec.what = "`" + binary + " -d` (" + std::string(kPipeVar) + "=" + info.pipe_dir + ")";
    Result<RunOutput> output = run_control(spec);
    if (!output.is_ok()) return as_unavailable(output.status());
    if (!output->succeeded()) return run_failed(spec, *output);
    info.started = true;
  }
  // From here a started daemon is quit by the destructor should the check fail.
  std::unique_ptr<MpsControl> control(new MpsControl(binary, std::move(info), options.timeout));
  Result<std::vector<pid_t>> servers = control->server_list();
  if (!servers.is_ok()) {
    return as_unavailable(servers.status())
        .with_context(control->info_.started
                          ? "the MPS control daemon just started does not answer"
                          : "no MPS control daemon answers at " + control->info_.pipe_dir);
  }
  return control;
}

MpsControl::~MpsControl() { (void)stop(); }

Status MpsControl::send(std::string_view command, std::string* reply) const {
  return run_command(command, reply, timeout_);
}

Status MpsControl::run_command(std::string_view command, std::string* reply,
                               std::chrono::milliseconds timeout) const {
  if (command.empty() || command.find_first_of("\r\n") != std::string_view::npos) {
    return Status(
        ErrorCode::kInvalidArgument,
        "an MPS control command is one non-empty line, got \"" + std::string(command) + "\"");
  }
  RunSpec spec;
  spec.binary = binary_;
  spec.env = control_environment(info_);
  spec.input = std::string(command);
  spec.timeout = timeout;
  spec.what = "MPS control command `" + std::string(command) + "` (" + binary_ + ", " +
              std::string(kPipeVar) + "=" + info_.pipe_dir + ")";
  ASSIGN_OR_RETURN(RunOutput output, run_control(spec));
  if (!output.succeeded()) return run_failed(spec, output);
  if (reply != nullptr) *reply = std::move(output.out);
  return Status::ok();
}

Result<std::vector<pid_t>> MpsControl::server_list() const {
  std::string reply;
  RETURN_IF_ERROR(send("get_server_list", &reply));
  return parse_server_list(reply);
}

Status MpsControl::stop() {
  if (!info_.started || stopped_) return Status::ok();
  stopped_ = true;
  const auto deadline = Clock::now() + timeout_;
  RETURN_IF_ERROR(send("quit").with_context("stopping the MPS control daemon"));
  const std::string control_pipe = info_.pipe_dir + "/control";
  for (;;) {
    struct stat st {};
    if (stat(control_pipe.c_str(), &st) != 0 && errno == ENOENT) return Status::ok();
    const auto left =
        std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
    if (left.count() <= 0) break;
    // A probe that fails says the daemon is gone; one that hangs says nothing.
    const Status probe = run_command("get_server_list", nullptr, left);
    if (!probe.is_ok() && probe.code() != ErrorCode::kTimeout) return Status::ok();
    std::this_thread::sleep_for(std::min(left, std::chrono::milliseconds(20)));
  }
  return Status(ErrorCode::kTimeout, "the MPS control daemon at " + info_.pipe_dir +
                                         " still answers " + std::to_string(timeout_.count()) +
                                         " ms after `quit`");
}

Result<std::vector<std::string>> mps_worker_environment(const MpsControlInfo& info,
                                                        double slice_percent,
                                                        std::optional<uint64_t> pinned_mem_limit,
                                                        int device) {
  // Written so that NaN fails too.
  if (!(slice_percent > 0.0 && slice_percent <= 100.0)) {
    return Status(ErrorCode::kInvalidArgument,
                  "MPS slice percentage must be in (0, 100], got " + format_number(slice_percent));
  }
  if (info.pipe_dir.empty()) {
    return Status(ErrorCode::kInvalidArgument, "MPS worker environment without a pipe directory");
  }
  // Rounded down as MPS does, with a tolerance for binary fractions (0.3 * 100), never below 1.
  const int percent = std::clamp(int(std::floor(slice_percent + 1e-9)), 1, 100);
  std::vector<std::string> env;
  env.push_back(std::string(kPipeVar) + "=" + info.pipe_dir);
  if (!info.log_dir.empty()) env.push_back(std::string(kLogVar) + "=" + info.log_dir);
  env.push_back("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=" + std::to_string(percent));
  if (pinned_mem_limit) {
    if (device < 0) {
      return Status(ErrorCode::kInvalidArgument,
                    "MPS pinned memory limit for device " + std::to_string(device));
    }
    const uint64_t mib = *pinned_mem_limit >> 20;
    if (mib == 0) {
      return Status(ErrorCode::kInvalidArgument, "MPS pinned device memory limit under 1 MiB (" +
                                                     std::to_string(*pinned_mem_limit) + " bytes)");
    }
    env.push_back("CUDA_MPS_PINNED_DEVICE_MEM_LIMIT=" + std::to_string(device) + "=" +
                  std::to_string(mib) + "M");
  }
  return env;
}

Result<MpsDecision> decide_mps(const Status& start_result, MpsFallback fallback) {
  if (start_result.is_ok()) return MpsDecision{};
  const bool unavailable =
      start_result.code() == ErrorCode::kUnavailable || start_result.code() == ErrorCode::kTimeout;
  if (fallback == MpsFallback::kError || !unavailable) return start_result;
  MpsDecision decision;
  decision.sharing = MpsDecision::Sharing::kTimeShared;
  decision.warning = "MPS unavailable (" + start_result.message() +
                     "): running time-shared; slices are not enforced";
  return decision;
}

Status check_greenctx_with_mps(double mps_percent) {
  if (mps_percent >= 100.0) return Status::ok();
  return Status(ErrorCode::kInvalidArgument,
                "green contexts under MPS need CUDA_MPS_ACTIVE_THREAD_PERCENTAGE unset or 100, "
                "got " +
                    format_number(mps_percent) +
                    "%: use either MPS percentages or green-context SM slices, not both");
}

}  // namespace sliceserve::backends
