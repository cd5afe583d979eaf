#include "sliceserve/controller/admin_socket.h"

#include <fcntl.h>
#include <poll.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <chrono>
#include <cstring>

#include "sliceserve/shm/check.h"

namespace sliceserve::controller {
namespace {

constexpr int kIdleTimeoutMs = 10'000;  // a silent admin connection is closed after this
constexpr auto kReplyTimeout = std::chrono::seconds(30);

std::string socket_dir() {
  const char* runtime = std::getenv("XDG_RUNTIME_DIR");
  std::string base = runtime && *runtime ? runtime : "/tmp";
  return base + "/sliceserve-" + std::to_string(getuid());
}

Result<sockaddr_un> make_address(const std::string& path) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.size() >= sizeof addr.sun_path) {
    return Status(ErrorCode::kInvalidArgument, "admin socket path too long: " + path);
  }
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  return addr;
}

Result<int> connect_to(const std::string& path) {
  ASSIGN_OR_RETURN(sockaddr_un addr, make_address(path));
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return errno_status("socket", errno, __FILE__, __LINE__);
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    int err = errno;
    close(fd);
    return Status(ErrorCode::kServerGone,
                  "no sliceserved answers on " + path + " (" + std::strerror(err) + ")");
  }
  return fd;
}

bool write_all(int fd, std::string_view data) {
  while (!data.empty()) {
    ssize_t n = send(fd, data.data(), data.size(), MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    data.remove_prefix(size_t(n));
  }
  return true;
}

// Reads one line (without the newline) within timeout_ms; false on EOF, timeout, error or a
// line over kMaxAdminRequestBytes.
bool read_line(int fd, std::string& buffer, std::string& line, int timeout_ms) {
  for (;;) {
    size_t nl = buffer.find('\n');
    if (nl != std::string::npos) {
      line = buffer.substr(0, nl);
      buffer.erase(0, nl + 1);
      return true;
    }
    if (buffer.size() > kMaxAdminRequestBytes) return false;
    pollfd p{fd, POLLIN, 0};
    int r = poll(&p, 1, timeout_ms);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return false;
    char chunk[4096];
    ssize_t n = recv(fd, chunk, sizeof chunk, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    buffer.append(chunk, size_t(n));
  }
}

nlohmann::json error_reply_with_code(ErrorCode code, const std::string& message) {
  return {{"ok", false}, {"error", message}, {"code", admin_error_code(code)}};
}

}  // namespace

std::string_view admin_error_code(ErrorCode code) {
  switch (code) {
    case ErrorCode::kInvalidArgument:
    case ErrorCode::kWrongShape:
    case ErrorCode::kWrongDtype:
    case ErrorCode::kUnknownTensor:
    case ErrorCode::kTensorTooLarge:
    case ErrorCode::kIncompatible:
      return "bad_request";
    case ErrorCode::kNotFound:
    case ErrorCode::kUnknownModel:
      return "not_found";
    case ErrorCode::kBusy:
    case ErrorCode::kAlreadyExists:
      return "conflict";
    case ErrorCode::kUnavailable:
    case ErrorCode::kServerGone:
      return "unavailable";
    case ErrorCode::kTimeout:
      return "timeout";
    default:
      return "internal";
  }
}

std::string admin_socket_path(std::string_view instance) {
  return socket_dir() + "/" + std::string(instance) + ".sock";
}

std::string instance_runtime_dir(std::string_view instance) {
  return socket_dir() + "/" + std::string(instance);
}

Result<nlohmann::json> admin_call(std::string_view instance, const nlohmann::json& request,
                                  int timeout_ms) {
  const std::string path = admin_socket_path(instance);
  ASSIGN_OR_RETURN(int fd, connect_to(path));
  std::string buffer, line;
  bool ok = write_all(fd, request.dump() + "\n") && read_line(fd, buffer, line, timeout_ms);
  close(fd);
  if (!ok) return Status(ErrorCode::kTimeout, "no reply from sliceserved on " + path);
  auto reply = nlohmann::json::parse(line, nullptr, false);
  if (reply.is_discarded() || !reply.is_object()) {
    return Status(ErrorCode::kInternal, "malformed reply from sliceserved: " + line);
  }
  return reply;
}

Result<std::unique_ptr<AdminServer>> AdminServer::start(std::string_view instance) {
  const std::string dir = socket_dir();
  if (mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST) {
    return errno_status(("mkdir " + dir).c_str(), errno, __FILE__, __LINE__);
  }
  struct stat st {};
  if (stat(dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode) || st.st_uid != getuid() ||
      (st.st_mode & 077) != 0) {
    return Status(ErrorCode::kInvalidArgument,
                  dir + " must be a directory of this user with mode 0700");
  }
  const std::string path = admin_socket_path(instance);
  if (auto probe = connect_to(path); probe.is_ok()) {
    close(*probe);
    return Status(ErrorCode::kAlreadyExists, "a sliceserved already answers on " + path);
  }
  unlink(path.c_str());  // a stale socket of a crashed daemon
  ASSIGN_OR_RETURN(sockaddr_un addr, make_address(path));
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return errno_status("socket", errno, __FILE__, __LINE__);
  if (bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 || listen(fd, 16) != 0) {
    Status s = errno_status(("bind/listen " + path).c_str(), errno, __FILE__, __LINE__);
    close(fd);
    return s;
  }
  return std::unique_ptr<AdminServer>(new AdminServer(path, fd));
}

AdminServer::AdminServer(std::string path, int listen_fd)
    : path_(std::move(path)), listen_fd_(listen_fd) {
  if (pipe2(wake_fd_, O_CLOEXEC) != 0) SS_CHECK(false, "pipe2 for the admin server failed");
  thread_ = std::thread([this] { io_loop(); });
}

AdminServer::~AdminServer() {
  // Answer what waits first: the I/O thread may be blocked on one of these replies, and nobody
  // else will give it one now.
  stop_accepting();
  char c = 'x';
  if (write(wake_fd_[1], &c, 1) != 1) {
    // The pipe is ours and empty; a failed write leaves the thread to notice stop_ on its poll.
  }
  thread_.join();
  close(listen_fd_);
  close(wake_fd_[0]);
  close(wake_fd_[1]);
  unlink(path_.c_str());
}

void AdminServer::stop_accepting() {
  std::lock_guard lock(mutex_);
  stop_.store(true);
  for (auto& p : queue_) {
    p->done(error_reply_with_code(ErrorCode::kUnavailable, "sliceserved is stopping"));
  }
  queue_.clear();
}

void AdminServer::io_loop() {
  while (!stop_.load()) {
    pollfd fds[2] = {{listen_fd_, POLLIN, 0}, {wake_fd_[0], POLLIN, 0}};
    if (poll(fds, 2, -1) < 0) continue;
    if (fds[1].revents) break;
    if (!(fds[0].revents & POLLIN)) continue;
    int fd = accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (fd < 0) continue;
    serve_connection(fd);
    close(fd);
  }
}

void AdminServer::serve_connection(int fd) {
  std::string buffer, line;
  while (!stop_.load() && read_line(fd, buffer, line, kIdleTimeoutMs)) {
    auto request = nlohmann::json::parse(line, nullptr, false);
    nlohmann::json reply;
    if (request.is_discarded() || !request.is_object() || !request.contains("cmd") ||
        !request["cmd"].is_string()) {
      reply = error_reply_with_code(ErrorCode::kInvalidArgument,
                                    "a request is one JSON object per line with a string \"cmd\"");
    } else {
      reply = call(std::move(request));
    }
    if (!write_all(fd, reply.dump() + "\n")) return;
  }
}

void AdminServer::submit(nlohmann::json request, Reply done) {
  auto pending = std::make_unique<Pending>(Pending{std::move(request), std::move(done)});
  {
    std::lock_guard lock(mutex_);
    // Checked under the lock the destructor takes to fail the queue: nothing enqueued after.
    if (!stop_.load()) {
      queue_.push_back(std::move(pending));
      pending.reset();
    }
  }
  if (pending) {
    pending->done(error_reply_with_code(ErrorCode::kUnavailable, "sliceserved is stopping"));
    return;
  }
  arrived_.notify_one();
}

nlohmann::json AdminServer::call(nlohmann::json request) {
  auto reply = std::make_shared<std::promise<nlohmann::json>>();
  std::future<nlohmann::json> answered = reply->get_future();
  submit(std::move(request), [reply](nlohmann::json r) { reply->set_value(std::move(r)); });
  if (answered.wait_for(kReplyTimeout) != std::future_status::ready) {
    return error_reply_with_code(ErrorCode::kTimeout, "sliceserved did not answer in time");
  }
  return answered.get();
}

void AdminServer::wait_for_request(std::chrono::milliseconds timeout) {
  std::unique_lock lock(mutex_);
  arrived_.wait_for(lock, timeout, [this] { return !queue_.empty(); });
}

void AdminServer::serve_pending(const Handler& handler) {
  std::deque<std::unique_ptr<Pending>> batch;
  {
    std::lock_guard lock(mutex_);
    batch.swap(queue_);
  }
  for (auto& p : batch) p->done(handler(p->request));
}

}  // namespace sliceserve::controller
