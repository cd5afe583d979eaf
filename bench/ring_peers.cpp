// The three peers of the shm ring, each a plain echo server in a forked process using the
// transport's normal blocking API: Boost.Interprocess message_queue (two queues), a Unix domain
// socketpair and TCP over 127.0.0.1 with TCP_NODELAY on both ends. Plus, on request only, the
// hardware floor: two spinning processes bouncing one cache line each way ("cacheline").

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <boost/interprocess/ipc/message_queue.hpp>
#include <cstring>
#include <exception>
#include <limits>
#include <new>
#include <string>

#include "ring_bench.h"
#include "sliceserve/shm/unique_fd.h"

namespace sliceserve::bench {
namespace {

namespace bip = boost::interprocess;
using shm::UniqueFd;

constexpr int64_t kReapTimeoutNs = 5'000'000'000;

// Writes all of `bytes` (MSG_NOSIGNAL: a dead peer is an error, not a SIGPIPE).
Status send_all(int fd, const std::byte* data, size_t bytes) {
  while (bytes > 0) {
    const ssize_t sent = send(fd, data, bytes, MSG_NOSIGNAL);
    if (sent == -1) {
      if (errno == EINTR) continue;
      return errno_status("send()", errno, __FILE__, __LINE__);
    }
    data += sent;
    bytes -= size_t(sent);
  }
  return Status::ok();
}

// Reads exactly `bytes`. kNotFound at a clean end of stream before the first byte.
Status recv_all(int fd, std::byte* data, size_t bytes) {
  size_t got = 0;
  while (got < bytes) {
    const ssize_t n = recv(fd, data + got, bytes - got, 0);
    if (n == -1) {
      if (errno == EINTR) continue;
      return errno_status("recv()", errno, __FILE__, __LINE__);
    }
    if (n == 0) {
      return Status(got == 0 ? ErrorCode::kNotFound : ErrorCode::kInternal,
                    "peer closed the connection");
    }
    got += size_t(n);
  }
  return Status::ok();
}

// Echoes kMessageBytes messages until the client closes its end. Exit status for the child.
int echo_stream(int fd, const char* transport) {
  alignas(64) std::byte buffer[kMessageBytes];
  for (;;) {
    const Status received = recv_all(fd, buffer, sizeof buffer);
    if (received.code() == ErrorCode::kNotFound) return 0;  // client done
    Status status = received.is_ok() ? send_all(fd, buffer, sizeof buffer) : received;
    if (!status.is_ok()) {
      std::fprintf(stderr, "ring_bench: %s server: %s\n", transport, status.to_string().c_str());
      return 1;
    }
  }
}

Status set_nodelay(int fd) {
  const int one = 1;
  SS_SYSCALL(setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one));
  return Status::ok();
}

// The client half for a connected stream socket; closes it (the server sees end of stream) and
// reaps the server.
Result<Samples> stream_client(const BenchConfig& config, UniqueFd fd, pid_t server) {
  Result<Samples> samples = measure(config, [&](const std::byte* request, std::byte* reply) {
    RETURN_IF_ERROR(send_all(fd.get(), request, kMessageBytes));
    return recv_all(fd.get(), reply, kMessageBytes);
  });
  fd.reset();
  const Status reaped = reap_server(server, kReapTimeoutNs);
  if (!samples) return samples;
  RETURN_IF_ERROR(reaped);
  return samples;
}

// Removes the named queues on scope exit (the mappings stay valid while objects are open).
struct QueueNames {
  std::string request;
  std::string reply;
  ~QueueNames() {
    bip::message_queue::remove(request.c_str());
    bip::message_queue::remove(reply.c_str());
  }
};

// Two counters on their own cache lines in a MAP_SHARED mapping: the client writes `ping`, the
// server spins until it sees it and writes `pong`.
struct PingPongLines {
  alignas(64) std::atomic<uint64_t> ping{0};
  alignas(64) std::atomic<uint64_t> pong{0};
};
static_assert(std::atomic<uint64_t>::is_always_lock_free);
constexpr uint64_t kStopPing = std::numeric_limits<uint64_t>::max();

}  // namespace

Result<Samples> run_cacheline(const BenchConfig& config) {
  void* memory = mmap(nullptr, sizeof(PingPongLines), PROT_READ | PROT_WRITE,
                      MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (memory == MAP_FAILED) return errno_status("mmap()", errno, __FILE__, __LINE__);
  auto* lines = new (memory) PingPongLines();
  auto server = [lines]() -> int {
    for (uint64_t seen = 0;;) {
      uint64_t ping = 0;
      // Acquire/release are not needed for the payload-free bounce itself; they keep it the
      // same pattern as a real handoff.
      while ((ping = lines->ping.load(std::memory_order_acquire)) == seen) cpu_relax();
      if (ping == kStopPing) return 0;
      seen = ping;
      lines->pong.store(ping, std::memory_order_release);
    }
  };
  Result<pid_t> pid = fork_server(config, server);
  if (!pid) {
    munmap(memory, sizeof(PingPongLines));
    return pid.status();
  }
  uint64_t sequence = 0;
  Result<Samples> samples = measure(config, [&](const std::byte* request, std::byte* reply) {
    lines->ping.store(++sequence, std::memory_order_release);
    while (lines->pong.load(std::memory_order_acquire) != sequence) cpu_relax();
    std::memcpy(reply, request, kMessageBytes);  // no payload travels: this is the floor
    return Status::ok();
  });
  lines->ping.store(kStopPing, std::memory_order_release);
  const Status reaped = reap_server(*pid, kReapTimeoutNs);
  munmap(memory, sizeof(PingPongLines));
  if (!samples) return samples;
  RETURN_IF_ERROR(reaped);
  return samples;
}

Result<Samples> run_boost_mq(const BenchConfig& config) {
  const std::string base = "sliceserve_bench" + std::to_string(getpid());
  QueueNames names{base + "_request", base + "_reply"};
  track_shm_name("/" + names.request);  // Boost maps a queue to shm_open("/" + name)
  track_shm_name("/" + names.reply);
  try {
    bip::message_queue::remove(names.request.c_str());
    bip::message_queue::remove(names.reply.c_str());
    // One message in flight each way is all a ping-pong needs.
    bip::message_queue requests(bip::create_only, names.request.c_str(), 1, kMessageBytes);
    bip::message_queue replies(bip::create_only, names.reply.c_str(), 1, kMessageBytes);

    // A message shorter than kMessageBytes tells the server to exit.
    auto server = [&names]() -> int {
      try {
        bip::message_queue in(bip::open_only, names.request.c_str());
        bip::message_queue out(bip::open_only, names.reply.c_str());
        alignas(64) std::byte buffer[kMessageBytes];
        for (;;) {
          size_t got = 0;
          unsigned priority = 0;
          in.receive(buffer, sizeof buffer, got, priority);
          if (got != kMessageBytes) return 0;
          out.send(buffer, got, 0);
        }
      } catch (const std::exception& e) {
        std::fprintf(stderr, "ring_bench: boost_mq server: %s\n", e.what());
        return 1;
      }
    };
    ASSIGN_OR_RETURN(const pid_t pid, fork_server(config, server));

    Result<Samples> samples = measure(config, [&](const std::byte* request, std::byte* reply) {
      requests.send(request, kMessageBytes, 0);
      size_t got = 0;
      unsigned priority = 0;
      replies.receive(reply, kMessageBytes, got, priority);
      if (got != kMessageBytes) {
        return Status(ErrorCode::kInternal, "short reply of " + std::to_string(got) + " bytes");
      }
      return Status::ok();
    });
    const std::byte stop{0};
    const bool stop_sent = requests.try_send(&stop, sizeof stop, 0);
    const Status reaped = reap_server(pid, stop_sent ? kReapTimeoutNs : 0);
    if (!samples) return samples;
    RETURN_IF_ERROR(reaped);
    return samples;
  } catch (const std::exception& e) {
    // Only the client's own exceptions land here: the child never returns from fork_server.
    return Status(ErrorCode::kInternal, std::string("boost::interprocess: ") + e.what());
  }
}

Result<Samples> run_uds(const BenchConfig& config) {
  int pair[2];
  SS_SYSCALL(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair));
  UniqueFd client(pair[0]);
  UniqueFd server_end(pair[1]);
  auto server = [&]() -> int {
    client.reset();  // so the server sees end of stream once the parent closes its end
    return echo_stream(server_end.get(), "uds");
  };
  ASSIGN_OR_RETURN(const pid_t pid, fork_server(config, server));
  server_end.reset();
  return stream_client(config, std::move(client), pid);
}

Result<Samples> run_tcp(const BenchConfig& config) {
  UniqueFd listener(socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (listener.get() == -1) return errno_status("socket()", errno, __FILE__, __LINE__);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  address.sin_port = 0;  // ephemeral
  socklen_t length = sizeof address;
  // sockaddr_in -> sockaddr is how the socket API is used; no way around the cast.
  auto* generic = reinterpret_cast<sockaddr*>(&address);
  SS_SYSCALL(bind(listener.get(), generic, sizeof address));
  SS_SYSCALL(listen(listener.get(), 1));
  SS_SYSCALL(getsockname(listener.get(), generic, &length));

  auto server = [&]() -> int {
    UniqueFd connection(accept4(listener.get(), nullptr, nullptr, SOCK_CLOEXEC));
    listener.reset();
    Status status = connection.get() == -1 ? errno_status("accept4()", errno, __FILE__, __LINE__)
                                           : set_nodelay(connection.get());
    if (!status.is_ok()) {
      std::fprintf(stderr, "ring_bench: tcp server: %s\n", status.to_string().c_str());
      return 1;
    }
    return echo_stream(connection.get(), "tcp");
  };
  ASSIGN_OR_RETURN(const pid_t pid, fork_server(config, server));
  listener.reset();

  UniqueFd client(socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  Status status = client.get() == -1 ? errno_status("socket()", errno, __FILE__, __LINE__)
                  : connect(client.get(), generic, sizeof address) == -1
                      ? errno_status("connect()", errno, __FILE__, __LINE__)
                      : set_nodelay(client.get());
  if (!status.is_ok()) {
    client.reset();
    (void)reap_server(pid, 0);
    return status;
  }
  return stream_client(config, std::move(client), pid);
}

}  // namespace sliceserve::bench
