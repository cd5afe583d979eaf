// handover_bench: see handover_bench.h. Prints one JSON line per mode on stdout,
//   {"bench":"handover","mode":"shadow","resizes":N,"requests":N,"lost":N,"duplicated":N,
//    "swap_gap_p99_us":X,"resize_effect_p99_us":X,"throughput_dip_pct":X,"extra_rss_mb":X,
//    "target_rate":R}
// progress on stderr, and writes handover-<mode>.csv/.png (and the daemon's log) to --out.

#include "handover_bench.h"

#include <sched.h>
#include <time.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <string_view>

namespace sliceserve::bench {
namespace {

constexpr uint64_t kResizeTimeoutNs = 60'000 * kMs;

void sleep_ns(uint64_t ns) {
  timespec t{time_t(ns / 1'000'000'000ULL), long(ns % 1'000'000'000ULL)};
  nanosleep(&t, nullptr);
}

void sleep_until(uint64_t t_ns) {
  const uint64_t now = now_ns();
  if (t_ns > now) sleep_ns(t_ns - now);
}

double mb(uint64_t bytes) { return double(bytes) / double(1 << 20); }

// Pins the calling thread (and so the threads it starts later: the load's sender, the clients'
// completion threads, the status poller) to one cpu, and restores the previous affinity when
// destroyed, so that the next daemon, forked by this thread, is not confined.
class CpuPin {
 public:
  explicit CpuPin(int cpu) {
    if (cpu < 0) return;
    if (sched_getaffinity(0, sizeof saved_, &saved_) != 0) return;
    cpu_set_t one;
    CPU_ZERO(&one);
    CPU_SET(cpu, &one);
    if (sched_setaffinity(0, sizeof one, &one) != 0) {
      std::fprintf(stderr, "handover_bench: warning: cannot pin to cpu %d: %s; not pinned\n", cpu,
                   std::strerror(errno));
      return;
    }
    pinned_ = true;
  }
  ~CpuPin() {
    if (pinned_) sched_setaffinity(0, sizeof saved_, &saved_);
  }
  CpuPin(const CpuPin&) = delete;
  CpuPin& operator=(const CpuPin&) = delete;

 private:
  cpu_set_t saved_{};
  bool pinned_ = false;
};

int default_client_cpu() {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof set, &set) != 0 || CPU_COUNT(&set) < 2) return -1;
  int last = -1;
  for (int c = 0; c < CPU_SETSIZE; ++c) {
    if (CPU_ISSET(c, &set)) last = c;
  }
  return last;
}

void usage(FILE* out) {
  std::fprintf(
      out,
      "usage: handover_bench [options]\n"
      "\n"
      "Drives a constant request rate at one synthetic model served by a real sliceserved and\n"
      "resizes it many times (slice 30%% <-> 60%%), once with shadow resizes (cpu mode=process)\n"
      "and once with instant ones (cpu mode=affinity). One JSON line per mode on stdout; a CSV\n"
      "and a PNG (gnuplot) of throughput and p99 over time per mode in --out.\n"
      "\n"
      "  --mode M          shadow, instant or both (default both)\n"
      "  --resizes N       resizes per mode (default 25 shadow, 200 instant)\n"
      "  --rate R          requests per second, open loop (default 1500)\n"
      "  --warmup S        seconds of load before the first resize (default 2)\n"
      "  --spacing-ms MS   pause after each resize finished (default 100)\n"
      "  --clients N       client connections (lanes) the requests rotate over (default 2)\n"
      "  --client-cpu C    cpu of the bench's own threads (default: the last one; the workers\n"
      "                    start at cpu 0); -1: not pinned\n"
      "  --weights-mb MB   model weights (default 64)\n"
      "  --load-delay-ms MS  extra load time of each worker (default 300)\n"
      "  --out DIR         output folder (default build/bench)\n"
      "  --dump-requests F  write every request (send, answer, queue, compute) to the CSV F\n"
      "                    (with --mode both: F-shadow and F-instant)\n"
      "  --bin-dir DIR     where sliceserved and sliceserve-worker are (default: next to this\n"
      "                    program)\n"
      "  --backends B      cpu (default: shadow on cpu:process, instant on cpu:affinity, the\n"
      "                    synthetic model) or gpu (shadow on mps, instant on greenctx; needs\n"
      "                    --onnx; default resizes 8 shadow, 100 instant)\n"
      "  --onnx PATH       serve this ONNX model (kind onnx) instead of the synthetic one; each\n"
      "                    answer is checked against the first answer to the same input\n"
      "  --max-batch N     the model's max_batch (default 4)\n"
      "  --slots-per-lane N  (default 256; 16 with --onnx: a 224x224 image slot is ~600 KB)\n"
      "  --device N        gpu: the CUDA ordinal (default 0)\n"
      "  --mps-control C   gpu: [backend.mps] control, start (default) or attach\n"
      "  --help            this text\n");
}

template <typename T>
bool parse_number(std::string_view s, T* out) {
  if constexpr (std::is_floating_point_v<T>) {
    try {
      size_t used = 0;
      const double v = std::stod(std::string(s), &used);
      if (used != s.size()) return false;
      *out = T(v);
      return true;
    } catch (...) {
      return false;
    }
  } else {
    auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), *out);
    return ec == std::errc() && p == s.data() + s.size();
  }
}

Result<Options> parse_options(int argc, char** argv) {
  Options o;
  bool slots_given = false;
  for (int i = 1; i < argc; ++i) {
    std::string_view arg = argv[i];
    std::string_view value;
    bool has_value = false;
    if (const size_t eq = arg.find('='); arg.starts_with("--") && eq != std::string_view::npos) {
      value = arg.substr(eq + 1);
      arg = arg.substr(0, eq);
      has_value = true;
    }
    auto need = [&]() -> Result<std::string_view> {
      if (has_value) return value;
      if (i + 1 >= argc) {
        return Status(ErrorCode::kInvalidArgument, std::string(arg) + " needs a value");
      }
      return std::string_view(argv[++i]);
    };
    auto bad = [&](std::string_view v) {
      return Status(ErrorCode::kInvalidArgument,
                    std::string(arg) + ": invalid value '" + std::string(v) + "'");
    };
    if (arg == "--help" || arg == "-h") {
      usage(stdout);
      std::exit(0);
    }
    if (arg == "--mode") {
      ASSIGN_OR_RETURN(std::string_view v, need());
      if (v == "shadow") {
        o.modes = {Mode::kShadow};
      } else if (v == "instant") {
        o.modes = {Mode::kInstant};
      } else if (v == "both") {
        o.modes = {Mode::kShadow, Mode::kInstant};
      } else {
        return bad(v);
      }
    } else if (arg == "--resizes") {
      ASSIGN_OR_RETURN(std::string_view v, need());
      if (!parse_number(v, &o.resizes) || o.resizes < 1) return bad(v);
    } else if (arg == "--rate") {
      ASSIGN_OR_RETURN(std::string_view v, need());
      if (!parse_number(v, &o.rate) || !(o.rate >= 10 && o.rate <= 1e6)) return bad(v);
    } else if (arg == "--warmup") {
      ASSIGN_OR_RETURN(std::string_view v, need());
      if (!parse_number(v, &o.warmup_s) || !(o.warmup_s >= 0.5 && o.warmup_s <= 600)) {
        return bad(v);
      }
    } else if (arg == "--spacing-ms") {
      ASSIGN_OR_RETURN(std::string_view v, need());
      if (!parse_number(v, &o.spacing_ms) || o.spacing_ms > 60'000) return bad(v);
    } else if (arg == "--clients") {
      ASSIGN_OR_RETURN(std::string_view v, need());
      if (!parse_number(v, &o.clients) || o.clients < 1 || o.clients > 32) return bad(v);
    } else if (arg == "--client-cpu") {
      ASSIGN_OR_RETURN(std::string_view v, need());
      if (!parse_number(v, &o.client_cpu) || o.client_cpu < -1 || o.client_cpu >= CPU_SETSIZE) {
        return bad(v);
      }
    } else if (arg == "--weights-mb") {
      ASSIGN_OR_RETURN(std::string_view v, need());
      if (!parse_number(v, &o.weights_mb) || o.weights_mb > 65536) return bad(v);
    } else if (arg == "--load-delay-ms") {
      ASSIGN_OR_RETURN(std::string_view v, need());
      if (!parse_number(v, &o.load_delay_ms) || o.load_delay_ms > 600'000) return bad(v);
    } else if (arg == "--out") {
      ASSIGN_OR_RETURN(std::string_view v, need());
      o.out_dir = std::string(v);
    } else if (arg == "--dump-requests") {
      ASSIGN_OR_RETURN(std::string_view v, need());
      o.dump_requests = std::string(v);
    } else if (arg == "--bin-dir") {
      ASSIGN_OR_RETURN(std::string_view v, need());
      o.bin_dir = std::string(v);
    } else if (arg == "--backends") {
      ASSIGN_OR_RETURN(std::string_view v, need());
      if (v == "cpu") {
        o.backends = BackendSet::kCpu;
      } else if (v == "gpu") {
        o.backends = BackendSet::kGpu;
      } else {
        return bad(v);
      }
    } else if (arg == "--onnx") {
      ASSIGN_OR_RETURN(std::string_view v, need());
      std::error_code ec;
      const std::filesystem::path path = std::filesystem::absolute(std::string(v), ec);
      if (ec || !std::filesystem::is_regular_file(path)) {
        return Status(ErrorCode::kNotFound, "--onnx: no file '" + std::string(v) + "'");
      }
      o.onnx_path = path.string();
    } else if (arg == "--max-batch") {
      ASSIGN_OR_RETURN(std::string_view v, need());
      if (!parse_number(v, &o.max_batch) || o.max_batch < 1 || o.max_batch > 256) return bad(v);
    } else if (arg == "--slots-per-lane") {
      ASSIGN_OR_RETURN(std::string_view v, need());
      if (!parse_number(v, &o.slots_per_lane) || o.slots_per_lane < 1 ||
          o.slots_per_lane > 1024) {
        return bad(v);
      }
      slots_given = true;
    } else if (arg == "--device") {
      ASSIGN_OR_RETURN(std::string_view v, need());
      if (!parse_number(v, &o.device) || o.device < 0 || o.device > 1023) return bad(v);
    } else if (arg == "--mps-control") {
      ASSIGN_OR_RETURN(std::string_view v, need());
      if (v != "start" && v != "attach") return bad(v);
      o.mps_control = std::string(v);
    } else {
      return Status(ErrorCode::kInvalidArgument, "unknown option '" + std::string(arg) + "'");
    }
  }
  if (o.backends == BackendSet::kGpu && !o.onnx()) {
    return Status(ErrorCode::kInvalidArgument,
                  "--backends gpu needs --onnx MODEL: the synthetic kind runs on the cpu "
                  "backend only");
  }
  if (o.onnx() && !slots_given) o.slots_per_lane = 16;
  if (o.bin_dir.empty()) o.bin_dir = self_dir();
  if (o.client_cpu == -2) o.client_cpu = default_client_cpu();
  if (o.out_dir.empty()) {
    // <build>/<preset>/bin/handover_bench -> <build>/bench
    o.out_dir = (std::filesystem::path(self_dir()) / ".." / ".." / "bench").lexically_normal();
  }
  return o;
}

// Runs one mode: daemon up, warm-up, the resizes, drain, daemon down.
Result<RunData> run_mode(const Options& o, Mode mode) {
  const char* name = mode_name(mode);
  const bool gpu = o.backends == BackendSet::kGpu;
  const int resizes =
      o.resizes > 0 ? o.resizes : (mode == Mode::kShadow ? (gpu ? 8 : 25) : (gpu ? 100 : 200));
  const std::string log_path = o.out_dir + "/handover-" + name + ".daemon.log";
  std::fprintf(stderr, "handover[%s]: starting sliceserved (log %s)\n", name, log_path.c_str());
  ASSIGN_OR_RETURN(std::unique_ptr<Daemon> daemon, Daemon::start(o, mode, log_path));
  shm::Segment& seg = daemon->segment();
  ASSIGN_OR_RETURN(nlohmann::json first, daemon->model_status());
  std::fprintf(stderr, "handover[%s]: instance %s serving (backend %s, worker pid %d)\n", name,
               daemon->instance().c_str(), first.value("backend", "?").c_str(),
               first.value("pid", -1));

  // From here on this thread and every thread it starts run on the client cpu.
  CpuPin pin(o.client_cpu);
  ASSIGN_OR_RETURN(std::unique_ptr<Load> load,
                   Load::connect(daemon->instance(), o.clients, o.onnx()));
  RunData run;
  run.mode = mode;
  run.backend = backend_name(o, mode);
  run.model = o.onnx() ? std::filesystem::path(o.onnx_path).stem().string() : "synthetic";
  run.rate = o.rate;
  run.weights_mb = o.weights_mb;
  std::optional<StatusPoller> poller(std::in_place, *daemon);
  load->start(o.rate);
  run.load_start_ns = load->started_ns();
  std::fprintf(stderr,
               "handover[%s]: %.0f req/s over %d clients (bench threads on cpu %d), %.1f s "
               "warm-up, then %d resizes\n",
               name, o.rate, o.clients, o.client_cpu, o.warmup_s, resizes);
  sleep_until(run.load_start_ns + uint64_t(o.warmup_s * 1e9));

  // The live worker's private memory before any resize (instant: its growth is the extra).
  const pid_t first_pid = first.value("pid", -1);
  const std::optional<uint64_t> live_private_start = private_bytes(first_pid);
  uint64_t live_private_max = live_private_start.value_or(0);
  if (live_private_start) {
    std::fprintf(stderr,
                 "handover[%s]: live worker: %.1f MB private in smaps (the %u MB weights count "
                 "as private while no other process maps them)\n",
                 name, mb(*live_private_start), o.weights_mb);
  }

  run.resize_phase_ns = now_ns();
  double slice = o.slice_low;
  uint64_t failures = 0;
  for (int r = 0; r < resizes; ++r) {
    ResizeEvent e;
    e.from = slice;
    e.to = slice == o.slice_low ? o.slice_high : o.slice_low;
    Result<nlohmann::json> before = daemon->model_status();
    if (!before.is_ok()) return before.status().with_context("status before resize");
    const uint64_t live_epoch = before->value("epoch", uint64_t{0});
    const uint64_t resizes_before = before->value("resizes", uint64_t{0});
    const uint64_t failed_before = before->value("failed_resizes", uint64_t{0});
    // What the live worker maps: the shadow's mappings of the same objects add no memory.
    const std::vector<std::string> live_objects = mode == Mode::kShadow
                                                      ? mapped_objects(before->value("pid", -1))
                                                      : std::vector<std::string>();

    e.command_ns = now_ns();
    Result<nlohmann::json> reply =
        daemon->call({{"cmd", "resize"}, {"model", kModel}, {"slice", e.to}});
    const uint64_t replied_ns = now_ns();
    e.replied_ns = replied_ns;
    if (!reply.is_ok() || !reply->value("ok", false)) {
      e.note = reply.is_ok() ? reply->value("error", reply->dump()) : reply.status().to_string();
      std::fprintf(stderr, "handover[%s]: resize %d not started: %s\n", name, r + 1,
                   e.note.c_str());
      ++failures;
      run.resizes.push_back(e);
      sleep_ns(o.spacing_ms * kMs);
      continue;
    }

    // Until the daemon says the resize is over, watch the shadow (if any) in shared memory and
    // sample its memory: every 20 ms while it loads, at every poll once it is READY (the swap
    // follows within about a millisecond).
    uint64_t shadow_extra = 0;
    uint64_t shadow_private_raw = 0;
    pid_t shadow_pid = -1;
    bool ready_sampled = false;
    bool swap_sampled = false;
    uint64_t last_sample_ns = 0;
    nlohmann::json after;
    for (;;) {
      const uint64_t now = now_ns();
      if (mode == Mode::kShadow) {
        for (uint64_t b = 0; b < shm::kStatsBlocks; ++b) {
          const shm::WorkerStats& st = seg.stats_block(b);
          const uint64_t epoch = st.epoch.load(std::memory_order_acquire);
          const uint32_t state = st.state.load(std::memory_order_acquire);
          const bool loading = state == uint32_t(shm::WorkerState::kLoading);
          const bool ready = state == uint32_t(shm::WorkerState::kReady);
          // READY lasts about a millisecond; a shadow that swapped before a READY sample is
          // sampled once right after the swap (the old worker still finishing its batch).
          const bool just_swapped =
              state == uint32_t(shm::WorkerState::kServing) && !ready_sampled && !swap_sampled;
          if (epoch <= live_epoch || !(loading || ready || just_swapped)) continue;
          if (loading && now - last_sample_ns < 20 * kMs) continue;
          const pid_t pid = st.pid.load(std::memory_order_relaxed);
          if (pid <= 0) continue;
          std::optional<uint64_t> extra = extra_bytes(pid, live_objects);
          std::optional<uint64_t> raw = private_bytes(pid);
          if (extra && raw) {
            shadow_extra = std::max(shadow_extra, *extra);
            shadow_private_raw = std::max(shadow_private_raw, *raw);
            shadow_pid = pid;
            last_sample_ns = now;
            ready_sampled = ready_sampled || ready;
            swap_sampled = swap_sampled || just_swapped;
          }
        }
      }
      if (std::optional<StatusPoller::Snapshot> s = poller->latest(replied_ns)) {
        const nlohmann::json& m = s->model;
        if (!m.value("resizing", true)) {
          after = m;
          break;
        }
      }
      if (now - e.command_ns > kResizeTimeoutNs) {
        return Status(ErrorCode::kTimeout,
                      "resize " + std::to_string(r + 1) + " still running after 60 s");
      }
      sleep_ns(kMs);
    }
    e.done_ns = now_ns();
    const uint64_t resizes_after = after.value("resizes", uint64_t{0});
    const uint64_t failed_after = after.value("failed_resizes", uint64_t{0});
    e.ok = resizes_after > resizes_before && failed_after == failed_before;
    if (!e.ok) {
      e.note = after.value("last_resize", std::string("?"));
      std::fprintf(stderr, "handover[%s]: resize %d failed: %s\n", name, r + 1, e.note.c_str());
      ++failures;
    } else {
      slice = e.to;
      // The epoch that serves now: when its slice took effect and its first batch there.
      const uint64_t epoch = after.value("epoch", uint64_t{0});
      const shm::WorkerStats& st = seg.stats_block(epoch);
      const uint64_t wait_until = now_ns() + 2000 * kMs;
      for (;;) {
        if (st.epoch.load(std::memory_order_acquire) == epoch) {
          // Acquire pairs with the worker's release of slice_changed_ns, which it stores after
          // clearing first_batch_at_slice_ns.
          const uint64_t changed = st.slice_changed_ns.load(std::memory_order_acquire);
          const uint64_t first_batch = st.first_batch_at_slice_ns.load(std::memory_order_relaxed);
          if (changed >= e.command_ns && first_batch != 0) {
            e.swap_ns = changed;
            e.first_batch_ns = first_batch;
            break;
          }
        }
        if (now_ns() > wait_until) {
          std::fprintf(stderr,
                       "handover[%s]: resize %d: no first batch at the new slice within 2 s of "
                       "its end\n",
                       name, r + 1);
          break;
        }
        sleep_ns(100'000);
      }
      if (mode == Mode::kShadow) {
        e.shadow_private_mb = shadow_pid > 0 ? mb(shadow_extra) : -1;
        e.shadow_private_raw_mb = shadow_pid > 0 ? mb(shadow_private_raw) : -1;
        e.ready_sampled = ready_sampled || swap_sampled;
        run.extra_rss_mb = std::max(run.extra_rss_mb, e.shadow_private_mb);
      } else if (std::optional<uint64_t> p = private_bytes(after.value("pid", -1))) {
        live_private_max = std::max(live_private_max, *p);
      }
    }
    const bool verbose = mode == Mode::kShadow || (r + 1) % 20 == 0 || r == 0 || !e.ok;
    if (verbose && e.ok) {
      std::fprintf(stderr,
                   "handover[%s]: resize %3d/%d %.0f%% -> %.0f%%: in force after %.3f ms, first "
                   "batch +%.3f ms",
                   name, r + 1, resizes, e.from, e.to,
                   e.swap_ns ? double(e.swap_ns - e.command_ns) / 1e6 : -1.0,
                   e.first_batch_ns ? double(e.first_batch_ns - e.swap_ns) / 1e6 : -1.0);
      if (mode == Mode::kShadow) {
        std::fprintf(stderr, ", shadow adds %.1f MB (smaps private %.1f MB%s)", e.shadow_private_mb,
                     e.shadow_private_raw_mb,
                     ready_sampled  ? ""
                     : swap_sampled ? ", sampled at the swap"
                                    : ", sampled while loading only");
      }
      std::fprintf(stderr, "\n");
    }
    run.resizes.push_back(e);
    sleep_until(e.done_ns + o.spacing_ms * kMs);
  }
  if (mode == Mode::kShadow) {
    int caught = 0, ok = 0;
    double raw_max = 0;
    for (const ResizeEvent& e : run.resizes) {
      ok += e.ok;
      caught += e.ok && e.ready_sampled;
      raw_max = std::max(raw_max, e.shadow_private_raw_mb);
    }
    std::fprintf(stderr,
                 "handover[%s]: shadow memory: at most %.1f MB beyond the live worker's "
                 "(smaps_rollup Private_* at most %.1f MB); sampled when READY or at the swap in "
                 "%d of %d resizes\n",
                 name, run.extra_rss_mb, raw_max, caught, ok);
  }
  if (mode == Mode::kInstant && live_private_start) {
    run.extra_rss_mb = std::max(0.0, mb(live_private_max) - mb(*live_private_start));
    std::fprintf(stderr,
                 "handover[%s]: live worker private memory %.1f MB at start, at most %.1f MB "
                 "after a resize\n",
                 name, mb(*live_private_start), mb(live_private_max));
  }

  sleep_ns(uint64_t(o.tail_s * 1e9));
  load->stop_sending();
  run.load_end_ns = now_ns();
  std::fprintf(stderr, "handover[%s]: load stopped after %zu requests; draining\n", name,
               load->sent());
  if (!load->drain(15000)) {
    std::fprintf(stderr, "handover[%s]: %llu of %zu requests unanswered after 15 s\n", name,
                 static_cast<unsigned long long>(load->sent() - load->answered()), load->sent());
  }
  for (const std::string& err : load->first_errors()) {
    std::fprintf(stderr, "handover[%s]: request error: %s\n", name, err.c_str());
  }

  // completed_total once nothing runs any more (no resize, no retiring worker) and it is stable.
  uint64_t completed = 0;
  for (int tries = 0; tries < 200; ++tries) {
    Result<nlohmann::json> m = daemon->model_status();
    if (!m.is_ok()) return m.status().with_context("final status");
    const uint64_t c = m->value("completed_total", uint64_t{0});
    if (!m->value("resizing", true) && c == completed && tries > 0) break;
    completed = c;
    sleep_ns(20 * kMs);
  }
  run.completed_total = completed;

  const size_t n = load->sent();
  run.send_ns.resize(n);
  run.done_ns.resize(n);
  run.outcome.resize(n);
  run.server_done_ns.resize(n);
  run.queue_us.resize(n);
  run.compute_us.resize(n);
  for (size_t i = 0; i < n; ++i) {
    const Request& q = load->request(i);
    run.outcome[i] = Outcome(q.outcome.load(std::memory_order_acquire));
    run.send_ns[i] = q.send_ns;
    run.done_ns[i] = q.done_ns.load(std::memory_order_relaxed);
    const uint64_t queue = q.queue_ns.load(std::memory_order_relaxed);
    const uint64_t compute = q.compute_ns.load(std::memory_order_relaxed);
    run.server_done_ns[i] = q.send_ns + queue + compute;
    run.queue_us[i] = uint32_t(std::min<uint64_t>(queue / 1000, UINT32_MAX));
    run.compute_us[i] = uint32_t(std::min<uint64_t>(compute / 1000, UINT32_MAX));
  }
  load->disconnect();
  // No admin request may be in flight at SIGTERM: sliceserved answers them from its main loop,
  // which is gone once it stops (its admin thread would wait for that answer).
  poller.reset();
  if (failures > 0) {
    std::fprintf(stderr, "handover[%s]: %llu of %d resizes failed\n", name,
                 static_cast<unsigned long long>(failures), resizes);
  }
  Status stopped = daemon->stop();
  if (!stopped.is_ok()) return stopped.with_context("stopping sliceserved");
  std::fprintf(stderr, "handover[%s]: sliceserved stopped cleanly (exit 0)\n", name);
  return run;
}

}  // namespace
}  // namespace sliceserve::bench

int main(int argc, char** argv) {
  using namespace sliceserve::bench;
  auto options = parse_options(argc, argv);
  if (!options.is_ok()) {
    std::fprintf(stderr, "handover_bench: %s\n", options.status().message().c_str());
    usage(stderr);
    return 2;
  }
  const Options& o = *options;
  std::error_code ec;
  std::filesystem::create_directories(o.out_dir, ec);
  if (ec) {
    std::fprintf(stderr, "handover_bench: cannot create %s: %s\n", o.out_dir.c_str(),
                 ec.message().c_str());
    return 1;
  }
  int rc = 0;
  for (Mode mode : o.modes) {
    const char* name = mode_name(mode);
    auto run = run_mode(o, mode);
    if (!run.is_ok()) {
      std::fprintf(stderr, "handover[%s]: %s\n", name, run.status().to_string().c_str());
      rc = 1;
      continue;
    }
    const Metrics m = compute_metrics(*run);
    if (!o.dump_requests.empty()) {
      const std::string path = o.modes.size() > 1 ? o.dump_requests + "-" + name : o.dump_requests;
      sliceserve::Status dumped = dump_requests(*run, path);
      if (!dumped.is_ok())
        std::fprintf(stderr, "handover[%s]: %s\n", name, dumped.to_string().c_str());
    }
    const std::string base = o.out_dir + "/handover-" + name;
    sliceserve::Status csv = write_csv(*run, base + ".csv");
    if (csv.is_ok()) csv = write_resizes_csv(*run, m, base + "-resizes.csv");
    if (!csv.is_ok()) {
      std::fprintf(stderr, "handover[%s]: %s\n", name, csv.to_string().c_str());
      rc = 1;
    } else if (plot_png(*run, m, base + ".csv", base + ".png")) {
      std::fprintf(stderr, "handover[%s]: wrote %s.csv, %s-resizes.csv and %s.png\n", name,
                   base.c_str(), base.c_str(), base.c_str());
    }
    std::fprintf(
        stderr,
        "handover[%s]: %llu resizes, %llu requests, lost %llu (wrong outputs %llu), "
        "duplicated %lld (completed_total %llu)\n",
        name, static_cast<unsigned long long>(m.resizes_ok),
        static_cast<unsigned long long>(m.requests), static_cast<unsigned long long>(m.lost),
        static_cast<unsigned long long>(m.wrong_outputs), static_cast<long long>(m.duplicated),
        static_cast<unsigned long long>(run->completed_total));
    auto gap_line = [&](const char* what, const Gap& g) {
      std::fprintf(stderr,
                   "handover[%s]:   %-44s p50 %7.1f p99 %7.1f us  (warm-up, no resize: p50 %7.1f "
                   "p99 %7.1f us)\n",
                   name, what, g.p50_us, g.p99_us, g.steady_p50_us, g.steady_p99_us);
    };
    std::fprintf(stderr,
                 "handover[%s]: pauses (longest stall with requests waiting, per resize):\n", name);
    gap_line("swap gap, client clock, command-5ms..swap+50ms", m.swap_gap);
    gap_line("same, worker clock", m.swap_gap_server);
    gap_line("swap-5ms..swap+50ms, client clock", m.swap_only);
    gap_line("swap-5ms..swap+50ms, worker clock", m.swap_only_server);
    gap_line("raw longest interval between completions", m.raw);
    std::fprintf(stderr,
                 "handover[%s]: resize effect p50 %.1f us p99 %.1f us (without the wait for a "
                 "request to arrive: p50 %.1f us p99 %.1f us); command -> slice in force "
                 "p50 %.1f us p99 %.1f us (admin call round trip p50 %.1f us p99 %.1f us); -> "
                 "first batch p50 %.1f us p99 %.1f us\n"
                 "handover[%s]: throughput steady %.0f/s, worst 100 ms window during resizes "
                 "%.0f/s (dip %.1f%%); latency p50 %.3f ms p99 %.3f ms; extra RSS %.1f MB\n",
                 name, m.resize_effect_p50_us, m.resize_effect_p99_us, m.effect_busy_p50_us,
                 m.effect_busy_p99_us, m.apply_p50_us, m.apply_p99_us, m.admin_p50_us,
                 m.admin_p99_us, m.first_batch_p50_us, m.first_batch_p99_us, name, m.steady_rps,
                 m.worst_rps, m.throughput_dip_pct, m.latency_p50_ms, m.latency_p99_ms,
                 run->extra_rss_mb);
    std::printf("%s\n", json_line(*run, m).c_str());
    std::fflush(stdout);
    if (m.lost != 0 || m.duplicated != 0 || m.resizes_ok != run->resizes.size()) rc = 1;
  }
  return rc;
}
