// ring_bench: see ring_bench.h. Prints one JSON line per transport on stdout,
//   {"bench":"ring_rtt","transport":"shm","p50_ns":N,"p99_ns":N,"round_trips":N}
// and progress on stderr.

#include "ring_bench.h"

#include <sched.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>

#include <algorithm>
#include <charconv>
#include <cinttypes>
#include <cstdlib>
#include <cstring>
#include <string_view>

#include "bench_args.h"

namespace sliceserve::bench {

uint64_t now_ns() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return uint64_t(ts.tv_sec) * 1'000'000'000ULL + uint64_t(ts.tv_nsec);
}

// The sequence goes into the first and (inverted) the last 8 bytes, so a reply that is not a
// full copy of this round trip's request is caught.
void stamp_message(std::byte* message, uint64_t sequence) {
  const uint64_t inverted = ~sequence;
  std::memcpy(message, &sequence, sizeof sequence);
  std::memcpy(message + kMessageBytes - sizeof inverted, &inverted, sizeof inverted);
}

bool check_echo(const std::byte* reply, uint64_t sequence) {
  uint64_t first = 0;
  uint64_t last = 0;
  std::memcpy(&first, reply, sizeof first);
  std::memcpy(&last, reply + kMessageBytes - sizeof last, sizeof last);
  return first == sequence && last == ~sequence;
}

void pin_to_cpu(int cpu, const char* who) {
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  if (sched_setaffinity(0, sizeof set, &set) == -1) {
    std::fprintf(stderr, "ring_bench: warning: cannot pin the %s to cpu %d: %s; running unpinned\n",
                 who, cpu, std::strerror(errno));
  }
}

Status reap_server(pid_t pid, int64_t timeout_ns) {
  const uint64_t deadline = now_ns() + uint64_t(timeout_ns);
  int status = 0;
  for (;;) {
    const pid_t got = waitpid(pid, &status, WNOHANG);
    if (got == -1) return errno_status("waitpid()", errno, __FILE__, __LINE__);
    if (got == pid) break;
    if (now_ns() >= deadline) {
      kill(pid, SIGKILL);
      if (waitpid(pid, &status, 0) == -1) {
        return errno_status("waitpid()", errno, __FILE__, __LINE__);
      }
      return Status(ErrorCode::kTimeout,
                    "server process " + std::to_string(pid) + " did not exit; killed");
    }
    timespec pause{0, 1'000'000};
    nanosleep(&pause, nullptr);
  }
  if (WIFEXITED(status) && WEXITSTATUS(status) == 0) return Status::ok();
  if (WIFSIGNALED(status)) {
    return Status(ErrorCode::kInternal,
                  "server process killed by signal " + std::to_string(WTERMSIG(status)));
  }
  return Status(ErrorCode::kInternal,
                "server process exited with " + std::to_string(WEXITSTATUS(status)));
}

namespace {

// Fixed storage the signal handler can read without allocating.
constexpr size_t kMaxTrackedNames = 2;
constexpr size_t kMaxTrackedLength = 128;
char g_tracked[kMaxTrackedNames][kMaxTrackedLength];
volatile std::sig_atomic_t g_tracked_count = 0;

void cleanup_and_reraise(int sig) {
  for (std::sig_atomic_t i = 0; i < g_tracked_count; ++i) shm_unlink(g_tracked[i]);
  std::signal(sig, SIG_DFL);
  std::raise(sig);
}

}  // namespace

void track_shm_name(const std::string& name) {
  const std::sig_atomic_t n = g_tracked_count;
  SS_CHECK(size_t(n) < kMaxTrackedNames && name.size() < kMaxTrackedLength, name);
  std::memcpy(g_tracked[n], name.c_str(), name.size() + 1);
  g_tracked_count = n + 1;
}

void untrack_shm_names() { g_tracked_count = 0; }

void install_cleanup_handlers() {
  for (int sig : {SIGINT, SIGTERM, SIGHUP}) {
    struct sigaction action {};
    action.sa_handler = &cleanup_and_reraise;
    sigemptyset(&action.sa_mask);
    sigaction(sig, &action, nullptr);
  }
}

namespace {

struct Transport {
  std::string_view name;
  Result<Samples> (*run)(const BenchConfig&);
};

// cacheline is the hardware floor, not a transport: not in the default list.
constexpr Transport kTransports[] = {
    {"shm", &run_shm}, {"boost_mq", &run_boost_mq},   {"uds", &run_uds},
    {"tcp", &run_tcp}, {"cacheline", &run_cacheline},
};

// Nearest-rank percentile of sorted samples.
uint64_t percentile(const Samples& sorted, unsigned percent) {
  if (sorted.empty()) return 0;
  size_t rank = (sorted.size() * percent + 99) / 100;  // ceil(n * p / 100)
  rank = std::clamp<size_t>(rank, 1, sorted.size());
  return sorted[rank - 1];
}

void print_usage(std::FILE* out) {
  std::fprintf(out,
               "usage: ring_bench [options]\n"
               "Round trip of an empty %zu-byte request: our shm rings (client -> ring -> null-"
               "model worker\n-> client) against a Boost.Interprocess message_queue, a Unix "
               "domain socket and TCP\nloopback ping-pong. Client and server are two processes "
               "pinned to different cores.\n"
               "One JSON line per transport on stdout, progress on stderr.\n\n"
               "options:\n"
               "  --transport LIST   comma-separated list of shm,boost_mq,uds,tcp (the default)\n"
               "                     and cacheline: one cache line bounced between the two\n"
               "                     cores by spinning processes, the floor under all of them\n"
               "  --round-trips N    measured round trips per transport (default 100000)\n"
               "  --warmup N         unmeasured round trips before them (default 10000)\n"
               "  --client-cpu C     core of the client process (default 0)\n"
               "  --server-cpu C     core of the server / worker process (default 1)\n"
               "  --spin-ns N        shm: how long each side polls before it futex-waits "
               "(default 20000)\n"
               "  --help             this text\n",
               kMessageBytes);
}

struct Options {
  BenchConfig config;
  std::vector<const Transport*> transports;
};

Result<Options> parse_options(int argc, char** argv) {
  Options options;
  std::string_view transport_list = "shm,boost_mq,uds,tcp";
  bench::ArgReader args(argc, argv);
  while (args.next()) {
    const std::string_view arg = args.name();
    BenchConfig& c = options.config;
    bool ok = true;
    if (arg == "--help" || arg == "-h") {
      print_usage(stdout);
      std::exit(0);
    } else if (arg == "--transport") {
      const auto value = args.value();
      if (!value) return args.bad("needs a value");
      transport_list = *value;
    } else if (arg == "--round-trips") {
      ok = args.number(c.round_trips) && c.round_trips > 0;
    } else if (arg == "--warmup") {
      ok = args.number(c.warmup);
    } else if (arg == "--client-cpu") {
      ok = args.number(c.client_cpu) && c.client_cpu >= 0;
    } else if (arg == "--server-cpu") {
      ok = args.number(c.server_cpu) && c.server_cpu >= 0;
    } else if (arg == "--spin-ns") {
      ok = args.number(c.spin_ns) && c.spin_ns >= 0;
    } else {
      return args.unknown();
    }
    if (!ok) return args.bad("needs a valid number");
  }

  while (!transport_list.empty()) {
    const size_t comma = transport_list.find(',');
    const std::string_view name = transport_list.substr(0, comma);
    transport_list =
        comma == std::string_view::npos ? std::string_view() : transport_list.substr(comma + 1);
    const auto it = std::find_if(std::begin(kTransports), std::end(kTransports),
                                 [&](const Transport& t) { return t.name == name; });
    if (it == std::end(kTransports)) {
      return Status(ErrorCode::kInvalidArgument, "unknown transport '" + std::string(name) +
                                                     "' (shm, boost_mq, uds, tcp, cacheline)");
    }
    if (std::find(options.transports.begin(), options.transports.end(), it) ==
        options.transports.end()) {
      options.transports.push_back(it);
    }
  }
  if (options.transports.empty()) {
    return Status(ErrorCode::kInvalidArgument, "--transport: empty list");
  }
  if (options.config.client_cpu == options.config.server_cpu) {
    std::fprintf(stderr, "ring_bench: warning: client and server share cpu %d\n",
                 options.config.client_cpu);
  }
  return options;
}

}  // namespace
}  // namespace sliceserve::bench

int main(int argc, char** argv) {
  using namespace sliceserve::bench;
  auto options = parse_options(argc, argv);
  if (!options) {
    std::fprintf(stderr, "ring_bench: %s\n", options.status().to_string().c_str());
    print_usage(stderr);
    return 2;
  }
  const BenchConfig& config = options->config;
  std::fprintf(stderr,
               "ring_bench: %zu-byte ping-pong, %" PRIu64 " warm-up + %" PRIu64
               " measured round trips, client on cpu %d, server on cpu %d\n",
               kMessageBytes, config.warmup, config.round_trips, config.client_cpu,
               config.server_cpu);

  install_cleanup_handlers();
  int rc = 0;
  for (const Transport* transport : options->transports) {
    pin_to_cpu(config.client_cpu, "client");
    std::fprintf(stderr, "ring_bench: %.*s ...\n", int(transport->name.size()),
                 transport->name.data());
    auto samples = transport->run(config);
    untrack_shm_names();
    if (!samples) {
      std::fprintf(stderr, "ring_bench: %.*s failed: %s\n", int(transport->name.size()),
                   transport->name.data(), samples.status().to_string().c_str());
      rc = 1;
      continue;
    }
    Samples& sorted = *samples;
    std::sort(sorted.begin(), sorted.end());
    const uint64_t p50 = percentile(sorted, 50);
    const uint64_t p99 = percentile(sorted, 99);
    std::fprintf(stderr,
                 "ring_bench: %.*s: p50 %" PRIu64 " ns, p99 %" PRIu64 " ns, min %" PRIu64
                 " ns, max %" PRIu64 " ns\n",
                 int(transport->name.size()), transport->name.data(), p50, p99, sorted.front(),
                 sorted.back());
    std::printf("{\"bench\":\"ring_rtt\",\"transport\":\"%.*s\",\"p50_ns\":%" PRIu64
                ",\"p99_ns\":%" PRIu64 ",\"round_trips\":%zu}\n",
                int(transport->name.size()), transport->name.data(), p50, p99, sorted.size());
    std::fflush(stdout);
  }
  return rc;
}
