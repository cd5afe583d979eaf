#pragma once
// ring_bench: round trip of an empty request over our shm rings and over three peers (Boost
// message_queue, Unix domain socket, TCP loopback). Each transport runs as two processes: the
// parent is the client (pinned to client_cpu) and a forked child is the server (server_cpu).

#include <sys/prctl.h>
#include <sys/types.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <string>
#include <utility>
#include <vector>

#include "sliceserve/shm/check.h"
#include "sliceserve/shm/status.h"

namespace sliceserve::bench {

inline constexpr size_t kMessageBytes = 64;  // the request and the reply (16 x FP32)

struct BenchConfig {
  uint64_t round_trips = 100000;
  uint64_t warmup = 10000;
  int client_cpu = 0;
  int server_cpu = 1;
  int64_t spin_ns = 20000;  // shm only: how long each side polls before it futex-waits
};

// A pause hint for spin loops.
inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  __asm__ __volatile__("yield" ::: "memory");
#endif
}

// Round-trip times in nanoseconds, one per measured round trip (warm-up excluded).
using Samples = std::vector<uint64_t>;

uint64_t now_ns();  // CLOCK_MONOTONIC

// Writes the sequence number into the first bytes of a message / checks the echo.
void stamp_message(std::byte* message, uint64_t sequence);
bool check_echo(const std::byte* reply, uint64_t sequence);

// Runs config.warmup + config.round_trips round trips; times each measured one. `round_trip`
// is `Status(const std::byte* request, std::byte* reply)`: sends kMessageBytes and fills
// `reply` with the server's echo of them.
template <typename RoundTrip>
Result<Samples> measure(const BenchConfig& config, RoundTrip&& round_trip) {
  Samples samples(config.round_trips);
  alignas(64) std::byte request[kMessageBytes] = {};
  alignas(64) std::byte reply[kMessageBytes] = {};
  const uint64_t total = config.warmup + config.round_trips;
  for (uint64_t i = 0; i < total; ++i) {
    stamp_message(request, i);
    const uint64_t start = now_ns();
    RETURN_IF_ERROR(round_trip(request, reply));
    const uint64_t end = now_ns();
    if (!check_echo(reply, i)) {
      return Status(ErrorCode::kInternal, "reply " + std::to_string(i) + " is not the echo");
    }
    if (i >= config.warmup) samples[i - config.warmup] = end - start;
  }
  return samples;
}

// Pins the calling process to `cpu`; a warning on stderr (not an error) where the CPU is not
// available to us, so the bench still runs in a restricted cpuset.
void pin_to_cpu(int cpu, const char* who);

// fork(): the child pins itself to config.server_cpu, dies with its parent (PR_SET_PDEATHSIG),
// runs `server` and _exit()s with its return value (never returns to the caller's stack, so no
// destructor of the parent's objects runs twice). The parent gets the child's pid.
template <typename Server>
Result<pid_t> fork_server(const BenchConfig& config, Server&& server) {
  std::fflush(nullptr);  // or the child's exit could repeat the parent's buffered output
  const pid_t parent = getpid();
  const pid_t pid = fork();
  if (pid == -1) return errno_status("fork()", errno, __FILE__, __LINE__);
  if (pid > 0) return pid;
  if (prctl(PR_SET_PDEATHSIG, SIGKILL) == -1 || getppid() != parent) _exit(90);
  pin_to_cpu(config.server_cpu, "server");
  const int rc = std::forward<Server>(server)();
  _exit(rc);
}

// Names of POSIX shared-memory objects the running transport created ("/name"): if SIGINT or
// SIGTERM ends the bench early, they are shm_unlink()ed instead of staying in /dev/shm.
void track_shm_name(const std::string& name);
void untrack_shm_names();
void install_cleanup_handlers();

// Waits up to timeout_ns for the child to exit, then SIGKILLs it. Error if it did not exit 0.
Status reap_server(pid_t pid, int64_t timeout_ns);

Result<Samples> run_shm(const BenchConfig& config);
Result<Samples> run_boost_mq(const BenchConfig& config);
Result<Samples> run_uds(const BenchConfig& config);
Result<Samples> run_tcp(const BenchConfig& config);
// Not a transport: the floor under all of them, one cache line bounced each way between the
// two cores by spinning processes. Only with --transport cacheline.
Result<Samples> run_cacheline(const BenchConfig& config);

}  // namespace sliceserve::bench
