// The fd broker: frame codec, client calls and the server's poll loop (see fd_broker.h).
//
// The server is one thread polling an eventfd (stop), the listening socket and every open
// connection, all non-blocking, so a client that sends half a frame and stalls holds only its
// own connection (until request_timeout_ms), never the others. A connection reads exactly one
// frame: the header first (so a bad one is refused before its body is awaited), then the rest.
// Descriptors arrive as SCM_RIGHTS with whichever read returns the bytes they were sent with;
// they are collected per connection and owned from the moment they arrive.

#include "sliceserve/shm/fd_broker.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <system_error>
#include <utility>

#include "sliceserve/shm/check.h"
#include "sliceserve/shm/futex.h"

namespace sliceserve::shm {
namespace {

constexpr uint8_t kMagic[4] = {'S', 'S', 'F', 'B'};
// A message carrying more descriptors than this is truncated by the kernel (MSG_CTRUNC, the
// extra ones closed) and refused; a valid request carries at most one.
constexpr size_t kMaxFdsPerMessage = 4;
constexpr int kListenBacklog = 64;

void put_le(std::byte* out, uint64_t value, size_t size) {
  for (size_t i = 0; i < size; ++i) out[i] = std::byte(uint8_t(value >> (8 * i)));
}

uint64_t get_le(const std::byte* in, size_t size) {
  uint64_t value = 0;
  for (size_t i = 0; i < size; ++i) value |= uint64_t(uint8_t(in[i])) << (8 * i);
  return value;
}

bool is_request(FdOp op) { return op == FdOp::kPublish || op == FdOp::kFetch; }

bool is_known_op(uint16_t op) {
  switch (FdOp(op)) {
    case FdOp::kPublish:
    case FdOp::kFetch:
    case FdOp::kOk:
    case FdOp::kNotFound:
    case FdOp::kExists:
    case FdOp::kRefused:
      return true;
  }
  return false;
}

Status invalid(std::string message) {
  return Status(ErrorCode::kInvalidArgument, std::move(message));
}

Status check_text(std::string_view what, std::string_view text, char lowest, size_t limit) {
  if (text.size() > limit) {
    return invalid("fd broker " + std::string(what) + " has " + std::to_string(text.size()) +
                   " bytes, more than " + std::to_string(limit));
  }
  for (char c : text) {
    if (c < lowest || c > '~') {
      return invalid("fd broker " + std::string(what) + " has a byte outside printable ASCII (" +
                     std::to_string(int(uint8_t(c))) + ")");
    }
  }
  return Status::ok();
}

Status check_fields(FdOp op, std::string_view key, std::string_view meta) {
  if (is_request(op) && key.empty()) return invalid("fd broker key is empty");
  RETURN_IF_ERROR(check_text("key", key, '!', kMaxFdKeyBytes));
  return check_text("meta", meta, ' ', kMaxFdMetaBytes);
}

// Sends a whole frame, `fd` (if >= 0) as SCM_RIGHTS with its first bytes. A peer that does not
// take the bytes within the socket's send timeout (or at once, with MSG_DONTWAIT) is kTimeout.
Status send_frame(int socket_fd, const FdFrame& frame, int fd, int flags) {
  ASSIGN_OR_RETURN(std::vector<std::byte> bytes, encode_fd_frame(frame));
  size_t sent = 0;
  while (sent < bytes.size()) {
    iovec iov{bytes.data() + sent, bytes.size() - sent};
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))] = {};
    if (sent == 0 && fd >= 0) {
      msg.msg_control = control;
      msg.msg_controllen = sizeof control;
      cmsghdr* cmsg = CMSG_FIRSTHDR(&msg);
      cmsg->cmsg_level = SOL_SOCKET;
      cmsg->cmsg_type = SCM_RIGHTS;
      cmsg->cmsg_len = CMSG_LEN(sizeof(int));
      std::memcpy(CMSG_DATA(cmsg), &fd, sizeof(int));
    }
    const ssize_t n = sendmsg(socket_fd, &msg, flags | MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) {
        return Status(ErrorCode::kTimeout, "fd broker peer did not take the frame in time");
      }
      if (errno == EPIPE || errno == ECONNRESET) {
        return Status(ErrorCode::kServerGone, "fd broker peer closed the connection");
      }
      return errno_status("sendmsg", errno, __FILE__, __LINE__);
    }
    sent += size_t(n);
  }
  return Status::ok();
}

// Moves the descriptors of an SCM_RIGHTS message into `fds`.
void take_fds(msghdr& msg, std::vector<UniqueFd>& fds) {
  for (cmsghdr* cmsg = CMSG_FIRSTHDR(&msg); cmsg != nullptr; cmsg = CMSG_NXTHDR(&msg, cmsg)) {
    if (cmsg->cmsg_level != SOL_SOCKET || cmsg->cmsg_type != SCM_RIGHTS) continue;
    const size_t count = (cmsg->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (size_t i = 0; i < count; ++i) {
      int fd = -1;
      std::memcpy(&fd, CMSG_DATA(cmsg) + i * sizeof(int), sizeof(int));
      fds.emplace_back(fd);
    }
  }
}

// One recvmsg into `out`: bytes read (0: the peer closed), descriptors appended to `fds`.
Result<size_t> receive_some(int socket_fd, std::span<std::byte> out, std::vector<UniqueFd>& fds,
                            int flags) {
  for (;;) {
    iovec iov{out.data(), out.size()};
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * kMaxFdsPerMessage)];
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control;
    msg.msg_controllen = sizeof control;
    const ssize_t n = recvmsg(socket_fd, &msg, flags | MSG_CMSG_CLOEXEC);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) {
        return Status(ErrorCode::kTimeout, "nothing to read");
      }
      if (errno == ECONNRESET) return size_t{0};
      return errno_status("recvmsg", errno, __FILE__, __LINE__);
    }
    take_fds(msg, fds);
    if ((msg.msg_flags & MSG_CTRUNC) != 0) {
      return invalid("a message carried more than " + std::to_string(kMaxFdsPerMessage) +
                     " descriptors");
    }
    return size_t(n);
  }
}

Result<sockaddr_un> socket_address(const std::string& path) {
  sockaddr_un addr{};
  if (path.empty() || path.size() >= sizeof addr.sun_path) {
    return invalid("fd broker socket path must have 1.." +
                   std::to_string(sizeof addr.sun_path - 1) + " bytes, got \"" + path + "\"");
  }
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, path.data(), path.size());
  return addr;
}

Status check_peer_uid(int socket_fd, const std::string& path) {
  ucred cred{};
  socklen_t length = sizeof cred;
  SS_SYSCALL(getsockopt(socket_fd, SOL_SOCKET, SO_PEERCRED, &cred, &length));
  if (cred.uid != geteuid()) {
    return Status(ErrorCode::kUnavailable, "fd broker at " + path + " runs as uid " +
                                               std::to_string(cred.uid) + ", not ours (" +
                                               std::to_string(geteuid()) + ")");
  }
  return Status::ok();
}

Result<UniqueFd> connect_broker(const std::string& path, int timeout_ms) {
  ASSIGN_OR_RETURN(const sockaddr_un addr, socket_address(path));
  UniqueFd fd(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd.valid()) return errno_status("socket(AF_UNIX, SOCK_STREAM)", errno, __FILE__, __LINE__);
  const timeval timeout{timeout_ms / 1000, (timeout_ms % 1000) * 1000};
  SS_SYSCALL(setsockopt(fd.get(), SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout));
  SS_SYSCALL(setsockopt(fd.get(), SOL_SOCKET, SO_SNDTIMEO, &timeout, sizeof timeout));
  while (connect(fd.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof addr) != 0) {
    if (errno == EINTR) continue;
    if (errno == ENOENT || errno == ECONNREFUSED) {
      return Status(ErrorCode::kServerGone, "no fd broker listens at " + path);
    }
    if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINPROGRESS) {
      return Status(ErrorCode::kTimeout, "fd broker at " + path + " accepts no connection");
    }
    return errno_status(("connect " + path).c_str(), errno, __FILE__, __LINE__);
  }
  RETURN_IF_ERROR(check_peer_uid(fd.get(), path));
  return fd;
}

struct Reply {
  FdFrame frame;
  std::vector<UniqueFd> fds;
};

// Sends `request` (with `fd`) and reads the one reply frame.
Result<Reply> call(const std::string& path, const FdFrame& request, int fd, int timeout_ms) {
  if (timeout_ms <= 0) return invalid("fd broker timeout must be positive");
  ASSIGN_OR_RETURN(UniqueFd socket_fd, connect_broker(path, timeout_ms));
  Status sent = send_frame(socket_fd.get(), request, fd, 0);
  if (!sent.is_ok()) return sent.with_context("fd broker at " + path);
  Reply reply;
  std::vector<std::byte> bytes(kFdFrameHeaderBytes);
  size_t have = 0;
  size_t want = kFdFrameHeaderBytes;
  while (have < want) {
    Result<size_t> n =
        receive_some(socket_fd.get(), std::span(bytes).subspan(have, want - have), reply.fds, 0);
    if (!n.is_ok()) {
      if (n.status().code() == ErrorCode::kTimeout) {
        return Status(ErrorCode::kTimeout, "fd broker at " + path + " did not answer within " +
                                               std::to_string(timeout_ms) + " ms");
      }
      return n.status().with_context("fd broker at " + path);
    }
    if (*n == 0) {
      return Status(ErrorCode::kServerGone,
                    "fd broker at " + path + " closed the connection before answering");
    }
    have += *n;
    if (have == kFdFrameHeaderBytes && want == kFdFrameHeaderBytes) {
      Result<size_t> size = fd_frame_size(bytes);
      if (!size.is_ok()) return size.status().with_context("reply of the fd broker at " + path);
      want = *size;
      bytes.resize(want);
    }
  }
  Result<FdFrame> frame = decode_fd_frame(bytes);
  if (!frame.is_ok()) return frame.status().with_context("reply of the fd broker at " + path);
  reply.frame = std::move(frame).value();
  return reply;
}

// The reply's error as a Status for the caller, or ok for kOk.
Status reply_status(const Reply& reply, const std::string& path, std::string_view key) {
  const std::string where = "fd broker at " + path + ", key \"" + std::string(key) + "\": ";
  switch (reply.frame.op) {
    case FdOp::kOk:
      return Status::ok();
    case FdOp::kNotFound:
      return Status(ErrorCode::kNotFound, where + "nothing published");
    case FdOp::kExists:
      return Status(ErrorCode::kAlreadyExists, where + reply.frame.meta);
    case FdOp::kRefused:
      return invalid(where + "refused: " + reply.frame.meta);
    case FdOp::kPublish:
    case FdOp::kFetch:
      break;
  }
  return Status(ErrorCode::kIncompatible, where + "answered with a request frame");
}

}  // namespace

Result<std::vector<std::byte>> encode_fd_frame(const FdFrame& frame) {
  if (!is_known_op(uint16_t(frame.op))) return invalid("unknown fd broker op");
  RETURN_IF_ERROR(check_fields(frame.op, frame.key, frame.meta));
  std::vector<std::byte> out(kFdFrameHeaderBytes + frame.key.size() + frame.meta.size());
  std::memcpy(out.data(), kMagic, sizeof kMagic);
  put_le(&out[4], kFdFrameVersion, 2);
  put_le(&out[6], uint16_t(frame.op), 2);
  put_le(&out[8], frame.key.size(), 4);
  put_le(&out[12], frame.meta.size(), 4);
  put_le(&out[16], frame.bytes, 8);
  std::memcpy(&out[kFdFrameHeaderBytes], frame.key.data(), frame.key.size());
  std::memcpy(&out[kFdFrameHeaderBytes + frame.key.size()], frame.meta.data(), frame.meta.size());
  return out;
}

Result<size_t> fd_frame_size(std::span<const std::byte> header) {
  if (header.size() < kFdFrameHeaderBytes) {
    return invalid("fd broker frame header has " + std::to_string(header.size()) +
                   " bytes, needs " + std::to_string(kFdFrameHeaderBytes));
  }
  if (std::memcmp(header.data(), kMagic, sizeof kMagic) != 0) {
    return Status(ErrorCode::kIncompatible, "not an fd broker frame (bad magic)");
  }
  const uint64_t version = get_le(&header[4], 2);
  if (version != kFdFrameVersion) {
    return Status(ErrorCode::kIncompatible, "fd broker frame version " + std::to_string(version) +
                                                ", this build speaks " +
                                                std::to_string(kFdFrameVersion));
  }
  const uint64_t op = get_le(&header[6], 2);
  if (!is_known_op(uint16_t(op))) return invalid("unknown fd broker op " + std::to_string(op));
  const uint64_t key_length = get_le(&header[8], 4);
  const uint64_t meta_length = get_le(&header[12], 4);
  if (key_length > kMaxFdKeyBytes || meta_length > kMaxFdMetaBytes) {
    return invalid("fd broker frame announces a " + std::to_string(key_length) + "-byte key and " +
                   std::to_string(meta_length) + "-byte meta (limits " +
                   std::to_string(kMaxFdKeyBytes) + ", " + std::to_string(kMaxFdMetaBytes) + ")");
  }
  if (is_request(FdOp(op)) && key_length == 0) return invalid("fd broker key is empty");
  return kFdFrameHeaderBytes + size_t(key_length) + size_t(meta_length);
}

Result<FdFrame> decode_fd_frame(std::span<const std::byte> bytes) {
  ASSIGN_OR_RETURN(const size_t size, fd_frame_size(bytes));
  if (bytes.size() != size) {
    return invalid("fd broker frame is " + std::to_string(size) + " bytes, got " +
                   std::to_string(bytes.size()));
  }
  FdFrame frame;
  frame.op = FdOp(get_le(&bytes[6], 2));
  const size_t key_length = size_t(get_le(&bytes[8], 4));
  frame.bytes = get_le(&bytes[16], 8);
  const auto* text = reinterpret_cast<const char*>(bytes.data()) + kFdFrameHeaderBytes;
  frame.key.assign(text, key_length);
  frame.meta.assign(text + key_length, size - kFdFrameHeaderBytes - key_length);
  RETURN_IF_ERROR(check_fields(frame.op, frame.key, frame.meta));
  return frame;
}

Status publish_fd(const std::string& socket_path, std::string_view key, uint64_t bytes,
                  std::string_view meta, int fd, int timeout_ms) {
  if (fd < 0) return invalid("publish_fd needs an open descriptor");
  if (bytes == 0) return invalid("publish_fd needs the size of the memory behind the fd");
  FdFrame request{FdOp::kPublish, bytes, std::string(key), std::string(meta)};
  ASSIGN_OR_RETURN(Reply reply, call(socket_path, request, fd, timeout_ms));
  return reply_status(reply, socket_path, key);
}

Result<FetchedFd> fetch_fd(const std::string& socket_path, std::string_view key, int timeout_ms) {
  FdFrame request{FdOp::kFetch, 0, std::string(key), {}};
  ASSIGN_OR_RETURN(Reply reply, call(socket_path, request, -1, timeout_ms));
  RETURN_IF_ERROR(reply_status(reply, socket_path, key));
  if (reply.fds.size() != 1) {
    return Status(ErrorCode::kIncompatible,
                  "fd broker at " + socket_path + " answered FETCH \"" + std::string(key) +
                      "\" with " + std::to_string(reply.fds.size()) + " descriptors, not 1");
  }
  return FetchedFd{std::move(reply.fds[0]), reply.frame.bytes, std::move(reply.frame.meta)};
}

// ---- server ----

struct FdBroker::Connection {
  UniqueFd fd;
  std::vector<std::byte> buffer;  // the frame's bytes so far
  size_t frame_size = 0;          // 0 until the header is in
  std::vector<UniqueFd> fds;      // received with the frame
  uint64_t deadline_ns = 0;
};

Result<std::unique_ptr<FdBroker>> FdBroker::start(std::string socket_path,
                                                  FdBrokerOptions options) {
  ASSIGN_OR_RETURN(const sockaddr_un addr, socket_address(socket_path));
  if (options.request_timeout_ms <= 0 || options.max_connections == 0) {
    return invalid("fd broker needs a positive request timeout and connection limit");
  }
  struct stat existing {};
  if (lstat(socket_path.c_str(), &existing) == 0) {
    if (!S_ISSOCK(existing.st_mode)) {
      return Status(ErrorCode::kAlreadyExists, socket_path + " exists and is not a socket");
    }
    // A socket someone still accepts on is a live broker; one nobody listens on was left by a
    // controller that crashed.
    UniqueFd probe(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
    if (!probe.valid()) return errno_status("socket(AF_UNIX)", errno, __FILE__, __LINE__);
    if (connect(probe.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof addr) == 0 ||
        errno == EAGAIN) {
      return Status(ErrorCode::kAlreadyExists, "an fd broker already answers at " + socket_path);
    }
    if (unlink(socket_path.c_str()) != 0 && errno != ENOENT) {
      return errno_status(("unlink " + socket_path).c_str(), errno, __FILE__, __LINE__);
    }
  } else if (errno != ENOENT) {
    return errno_status(("lstat " + socket_path).c_str(), errno, __FILE__, __LINE__);
  }

  UniqueFd listen_fd(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!listen_fd.valid()) return errno_status("socket(AF_UNIX)", errno, __FILE__, __LINE__);
  if (bind(listen_fd.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof addr) != 0) {
    return errno_status(("bind " + socket_path).c_str(), errno, __FILE__, __LINE__);
  }
  auto fail = [&](const char* call) {
    Status status = errno_status(call, errno, __FILE__, __LINE__);
    unlink(socket_path.c_str());
    return status.with_context("fd broker at " + socket_path);
  };
  // bind() applies the umask; the mode is set before listen(), so nobody connects earlier.
  if (chmod(socket_path.c_str(), 0600) != 0) return fail("chmod 0600");
  struct stat bound {};
  if (stat(socket_path.c_str(), &bound) != 0) return fail("stat");
  if (listen(listen_fd.get(), kListenBacklog) != 0) return fail("listen");
  UniqueFd wake_fd(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!wake_fd.valid()) return fail("eventfd");
  std::unique_ptr<FdBroker> broker(new FdBroker(std::move(socket_path), options,
                                                std::move(listen_fd), std::move(wake_fd),
                                                uint64_t(bound.st_ino)));
  try {
    broker->thread_ = std::thread(&FdBroker::serve, broker.get());
  } catch (const std::system_error& e) {
    return Status(ErrorCode::kInternal, std::string("fd broker thread: ") + e.what());
  }
  return broker;
}

FdBroker::FdBroker(std::string path, FdBrokerOptions options, UniqueFd listen_fd, UniqueFd wake_fd,
                   uint64_t socket_inode)
    : path_(std::move(path)),
      options_(options),
      listen_fd_(std::move(listen_fd)),
      wake_fd_(std::move(wake_fd)),
      socket_inode_(socket_inode) {}

FdBroker::~FdBroker() {
  if (thread_.joinable()) {
    const uint64_t one = 1;
    // An eventfd write fails only when the counter would overflow, which it cannot here.
    SS_CHECK(write(wake_fd_.get(), &one, sizeof one) == ssize_t(sizeof one),
             "waking the fd broker's thread");
    thread_.join();
  }
  // Only our own socket: a later broker may have replaced it at the same path.
  struct stat named {};
  if (stat(path_.c_str(), &named) == 0 && uint64_t(named.st_ino) == socket_inode_) {
    unlink(path_.c_str());
  }
}

size_t FdBroker::size() const {
  std::lock_guard lock(mutex_);
  return entries_.size();
}

std::vector<std::string> FdBroker::keys() const {
  std::lock_guard lock(mutex_);
  std::vector<std::string> keys;
  for (const auto& [key, entry] : entries_) keys.push_back(key);
  return keys;
}

void FdBroker::remove_all() {
  std::lock_guard lock(mutex_);
  entries_.clear();
}

FdBrokerStats FdBroker::stats() const {
  std::lock_guard lock(mutex_);
  return stats_;
}

void FdBroker::serve() {
  std::vector<Connection> connections;
  std::vector<pollfd> polls;
  for (;;) {
    polls.clear();
    polls.push_back({wake_fd_.get(), POLLIN, 0});
    polls.push_back({listen_fd_.get(), POLLIN, 0});
    uint64_t now = monotonic_ns();
    int timeout_ms = -1;
    for (const Connection& c : connections) {
      polls.push_back({c.fd.get(), POLLIN, 0});
      const uint64_t left_ms =
          c.deadline_ns > now ? (c.deadline_ns - now + 999'999) / 1'000'000 : 0;
      timeout_ms = timeout_ms < 0 ? int(left_ms) : std::min(timeout_ms, int(left_ms));
    }
    if (poll(polls.data(), polls.size(), timeout_ms) < 0) {
      // EINTR is a signal; ENOMEM passes; anything else is a bug in the poll set.
      SS_CHECK(errno == EINTR || errno == ENOMEM, std::string("poll: ") + std::strerror(errno));
      if (errno == ENOMEM) std::this_thread::sleep_for(std::chrono::milliseconds(10));
      continue;
    }
    if (polls[0].revents != 0) return;
    now = monotonic_ns();
    std::vector<Connection> open;
    for (size_t i = 0; i < connections.size(); ++i) {
      Connection& c = connections[i];
      bool keep = polls[i + 2].revents == 0 || read_from(c);
      if (keep && now >= c.deadline_ns) {
        refuse(c, "the frame did not arrive within " + std::to_string(options_.request_timeout_ms) +
                      " ms");
        keep = false;
      }
      if (keep) open.push_back(std::move(c));
    }
    connections = std::move(open);
    if (polls[1].revents != 0) accept_connections(connections);
  }
}

void FdBroker::accept_connections(std::vector<Connection>& connections) {
  for (;;) {
    UniqueFd fd(accept4(listen_fd_.get(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC));
    if (!fd.valid()) {
      if (errno == EINTR || errno == ECONNABORTED) continue;
      // Out of descriptors: the pending connections wait in the backlog; pause instead of
      // spinning on a listening socket that stays readable.
      if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
      }
      return;  // EAGAIN: all taken
    }
    ucred cred{};
    socklen_t length = sizeof cred;
    const bool same_user =
        getsockopt(fd.get(), SOL_SOCKET, SO_PEERCRED, &cred, &length) == 0 && cred.uid == geteuid();
    if (!same_user || connections.size() >= options_.max_connections) {
      std::lock_guard lock(mutex_);
      ++stats_.rejected_peers;
      continue;  // closed unanswered
    }
    const uint64_t timeout_ns = uint64_t(options_.request_timeout_ms) * 1'000'000;
    connections.push_back({std::move(fd), {}, 0, {}, monotonic_ns() + timeout_ns});
  }
}

bool FdBroker::read_from(Connection& c) {
  for (;;) {
    const size_t want = c.frame_size != 0 ? c.frame_size : kFdFrameHeaderBytes;
    const size_t have = c.buffer.size();
    c.buffer.resize(want);
    Result<size_t> n = receive_some(c.fd.get(), std::span(c.buffer).subspan(have, want - have),
                                    c.fds, MSG_DONTWAIT);
    c.buffer.resize(have + (n.is_ok() ? *n : 0));
    if (!n.is_ok()) {
      if (n.status().code() == ErrorCode::kTimeout) return true;  // the rest comes later
      refuse(c, n.status().message());
      return false;
    }
    if (*n == 0) {  // the peer closed before a whole frame: nobody to answer
      std::lock_guard lock(mutex_);
      ++stats_.bad_requests;
      return false;
    }
    if (c.frame_size == 0 && c.buffer.size() == kFdFrameHeaderBytes) {
      Result<size_t> size = fd_frame_size(c.buffer);
      if (!size.is_ok()) {
        refuse(c, size.status().message());
        return false;
      }
      c.frame_size = *size;
    }
    if (c.buffer.size() == c.frame_size) {
      Result<FdFrame> request = decode_fd_frame(c.buffer);
      if (!request.is_ok()) {
        refuse(c, request.status().message());
      } else {
        answer(c, *request);
      }
      return false;
    }
  }
}

void FdBroker::answer(Connection& c, const FdFrame& request) {
  FdFrame reply{FdOp::kOk, 0, request.key, {}};
  UniqueFd passed;  // our copy of a stored fd, for a FETCH
  if (request.op == FdOp::kPublish) {
    if (c.fds.size() != 1 || request.bytes == 0) {
      refuse(c, "PUBLISH carries one fd and a size, got " + std::to_string(c.fds.size()) +
                    " fds and " + std::to_string(request.bytes) + " bytes");
      return;
    }
    std::lock_guard lock(mutex_);
    auto [it, inserted] =
        entries_.try_emplace(request.key, Entry{std::move(c.fds[0]), request.bytes, request.meta});
    reply.bytes = it->second.bytes;
    if (inserted) {
      ++stats_.published;
    } else {
      reply.op = FdOp::kExists;
      reply.meta = "already published (first publisher wins): fetch the stored fd";
      ++stats_.duplicates;
    }
  } else if (request.op == FdOp::kFetch) {
    if (!c.fds.empty()) {
      refuse(c, "FETCH carries no fd");
      return;
    }
    std::lock_guard lock(mutex_);
    auto it = entries_.find(request.key);
    if (it == entries_.end()) {
      reply.op = FdOp::kNotFound;
      ++stats_.not_found;
    } else {
      // A copy, so that remove_all() may close the stored fd while the reply is on its way.
      passed.reset(fcntl(it->second.fd.get(), F_DUPFD_CLOEXEC, 0));
      if (!passed.valid()) {
        reply = {FdOp::kRefused,
                 0,
                 {},
                 errno_status("fcntl(F_DUPFD_CLOEXEC)", errno, __FILE__, __LINE__).message()};
        ++stats_.bad_requests;
      } else {
        reply.bytes = it->second.bytes;
        reply.meta = it->second.meta;
        ++stats_.fetched;
      }
    }
  } else {
    refuse(c, "op " + std::to_string(uint16_t(request.op)) + " is not a request");
    return;
  }
  // Best effort: a client gone or not reading loses only its own answer (the reply fits the
  // socket's buffer, so MSG_DONTWAIT fails only for a peer that is gone).
  (void)send_frame(c.fd.get(), reply, passed.get(), MSG_DONTWAIT);
}

void FdBroker::refuse(Connection& c, const std::string& why) {
  {
    std::lock_guard lock(mutex_);
    ++stats_.bad_requests;
  }
  FdFrame reply{FdOp::kRefused, 0, {}, why.substr(0, kMaxFdMetaBytes)};
  // The reason comes from our own messages, but stay within the frame's alphabet regardless.
  for (char& ch : reply.meta) {
    if (ch < ' ' || ch > '~') ch = '?';
  }
  (void)send_frame(c.fd.get(), reply, -1, MSG_DONTWAIT);
}

}  // namespace sliceserve::shm
