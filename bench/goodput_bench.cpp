// goodput_bench: goodput at SLO of several models sharing one device, under several setups of
// one sliceserved config each (docs/BENCHMARKS.md, "Goodput at SLO").
//
// Each model has an SLO and an open-loop Poisson arrival rate. A request is good when its
// answer arrives within the SLO of its *arrival* (its scheduled send time, so a sender that
// falls behind is charged for it); goodput = good requests per second, summed over the models.
// The rates are a fraction (--load) of each model's solo throughput, which the bench measures
// first (one daemon per model, alone on the device, closed loop), unless --rate gives them.
//
// Setups (--setups):
//   timeshare        backend mps, [backend.mps] control = "off": plain CUDA processes that
//                    time-share the GPU; policy off
//   mps-full         MPS, thread_percentage = "full" (every worker at 100%), policy off
//   policy-mps       MPS slices (thread_percentage = "slice"), SliceServe's policy on
//   policy-greenctx  green contexts as MPS clients ([backend.greenctx] mps = true), policy on
//   cpu-static       cpu:process, the slices fixed at the initial split, policy off
//   cpu-process      cpu:process (shadow resizes), policy on
//   cpu-affinity     cpu:affinity (instant resizes), policy on
// With --onnx-dir the models are DIR/{resnet50,resnet18,mobilenet_v2}.onnx and the setups
// default to the four GPU ones; without it three synthetic models and the three cpu setups (a
// smoke test that runs anywhere).
//
// Output: one JSON line per setup and a final comparison line on stdout, progress on stderr.

#include <sys/prctl.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <charconv>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "handover_bench.h"  // Daemon, now_ns, self_dir, kMs
#include "sliceserve/client/client.h"

namespace sliceserve::bench {
namespace {

using Json = nlohmann::ordered_json;

struct Setup {
  const char* name;
  const char* backend;  // the models' backend
  bool policy;
  bool gpu;
  const char* mps_control;  // gpu: [backend.mps] control
  const char* thread_percentage;
  bool greenctx_mps;
  const char* what;
};

constexpr Setup kSetups[] = {
    {"timeshare", "mps", false, true, "off", "slice", false,
     "one process per model without MPS: the GPU time-shares; policy off"},
    {"mps-full", "mps", false, true, "start", "full", false,
     "MPS, every worker at 100% (thread_percentage full); policy off"},
    {"policy-mps", "mps", true, true, "start", "slice", false,
     "SliceServe's policy on MPS slices (shadow resizes)"},
    {"policy-greenctx", "greenctx", true, true, "start", "slice", true,
     "SliceServe's policy on green contexts, workers MPS clients at 100% (instant resizes)"},
    {"cpu-static", "cpu:process", false, false, "", "", false,
     "cpu slices fixed at the initial split; policy off"},
    {"cpu-process", "cpu:process", true, false, "", "", false,
     "SliceServe's policy on cpu slices, shadow resizes"},
    {"cpu-affinity", "cpu:affinity", true, false, "", "", false,
     "SliceServe's policy on cpu slices, instant resizes"},
};

const Setup* find_setup(std::string_view name) {
  for (const Setup& s : kSetups) {
    if (name == s.name) return &s;
  }
  return nullptr;
}

struct ModelDef {
  std::string name;
  std::string path;          // ONNX file; empty: synthetic
  double flops = 0;          // synthetic
  double slo_ms = 0;         // 0: the default, scaled to the solo latency
  double default_slo_ms = 0;
  double rate = 0;           // requests/s; 0: --load x solo throughput
  double solo_rps = 0;
  double solo_p50_ms = 0;
  std::string slo_source;
};

struct GoodputOptions {
  std::vector<std::string> setups;  // empty: the defaults for the model kind
  std::string onnx_dir;
  std::vector<std::string> model_names;  // --models
  std::map<std::string, double> slo_ms;  // --slo NAME=MS
  std::map<std::string, double> rate;    // --rate NAME=R
  double load = 0.4;                     // fraction of solo throughput per model
  double duration_s = 10;
  double warmup_s = 3;
  double solo_s = 2;
  int max_batch = 8;
  uint32_t max_queue_delay_us = 2000;
  int clients = 2;  // per model
  int slots_per_lane = 0;  // 0: 16 for onnx, 64 synthetic
  uint32_t policy_interval_ms = 200;
  int device = 0;
  double start_timeout_s = 120;
  std::string bin_dir;
  std::string out_dir;
};

void usage(FILE* out) {
  std::fprintf(
      out,
      "usage: goodput_bench [options]\n"
      "Goodput at SLO (requests answered within their model's SLO per second, summed) of\n"
      "several models with open-loop Poisson arrivals, under several sliceserved setups.\n"
      "One JSON line per setup and a comparison line on stdout.\n\n"
      "  --onnx-dir DIR     models DIR/NAME.onnx (scripts/gpu_models.py); default: synthetic\n"
      "  --models LIST      comma-separated (default resnet50,resnet18,mobilenet_v2 with\n"
      "                     --onnx-dir; syn-large,syn-mid,syn-small otherwise)\n"
      "  --setups LIST      of timeshare, mps-full, policy-mps, policy-greenctx, cpu-static,\n"
      "                     cpu-process, cpu-affinity (default: the four GPU ones with\n"
      "                     --onnx-dir, the three cpu ones otherwise)\n"
      "  --slo NAME=MS      a model's SLO (default: the model's default, raised to 2x its solo\n"
      "                     latency when that is higher); repeatable\n"
      "  --rate NAME=R      a model's arrival rate, requests/s (default: --load x its solo\n"
      "                     throughput, measured first); repeatable\n"
      "  --load F           fraction of solo throughput per model (default 0.4)\n"
      "  --duration S       measured seconds per setup (default 10)\n"
      "  --warmup S         load before the measurement, per setup (default 3)\n"
      "  --solo S           seconds of the solo throughput measurement per model (default 2)\n"
      "  --max-batch N      every model's max_batch (default 8)\n"
      "  --max-queue-delay-us US  (default 2000)\n"
      "  --clients N        client lanes per model (default 2)\n"
      "  --slots-per-lane N (default 16 for ONNX models, 64 synthetic)\n"
      "  --policy-interval-ms MS  (default 200)\n"
      "  --device N         the CUDA ordinal (default 0)\n"
      "  --start-timeout-s S  a setup's daemon must serve every model by then (default 120)\n"
      "  --bin-dir DIR      sliceserved and sliceserve-worker (default: next to this program)\n"
      "  --out DIR          the daemons' logs (default build/bench)\n"
      "  --help\n");
}

std::vector<std::string> split(std::string_view list) {
  std::vector<std::string> out;
  while (!list.empty()) {
    const size_t comma = list.find(',');
    if (comma != 0) out.emplace_back(list.substr(0, comma));
    if (comma == std::string_view::npos) break;
    list.remove_prefix(comma + 1);
  }
  return out;
}

bool to_double(std::string_view s, double& out) {
  try {
    size_t used = 0;
    out = std::stod(std::string(s), &used);
    return used == s.size() && std::isfinite(out);
  } catch (...) {
    return false;
  }
}

template <typename T>
bool to_int(std::string_view s, T& out) {
  const auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), out);
  return ec == std::errc() && p == s.data() + s.size();
}

Result<GoodputOptions> parse_options(int argc, char** argv) {
  GoodputOptions o;
  for (int i = 1; i < argc; ++i) {
    std::string_view arg = argv[i];
    std::string_view value;
    bool inline_value = false;
    if (const size_t eq = arg.find('='); arg.starts_with("--") && eq != std::string_view::npos) {
      value = arg.substr(eq + 1);
      arg = arg.substr(0, eq);
      inline_value = true;
    }
    if (arg == "--help" || arg == "-h") {
      usage(stdout);
      std::exit(0);
    }
    if (!inline_value) {
      if (i + 1 >= argc) {
        return Status(ErrorCode::kInvalidArgument, std::string(arg) + " needs a value");
      }
      value = argv[++i];
    }
    auto bad = [&] {
      return Status(ErrorCode::kInvalidArgument,
                    std::string(arg) + ": invalid value '" + std::string(value) + "'");
    };
    auto pair = [&](std::map<std::string, double>& into) -> bool {
      const size_t eq = value.find('=');
      double v = 0;
      if (eq == 0 || eq == std::string_view::npos || !to_double(value.substr(eq + 1), v) ||
          v <= 0) {
        return false;
      }
      into[std::string(value.substr(0, eq))] = v;
      return true;
    };
    bool ok = true;
    if (arg == "--onnx-dir") {
      o.onnx_dir = std::string(value);
    } else if (arg == "--models") {
      o.model_names = split(value);
      ok = !o.model_names.empty();
    } else if (arg == "--setups") {
      o.setups = split(value);
      for (const std::string& s : o.setups) {
        if (find_setup(s) == nullptr) {
          return Status(ErrorCode::kInvalidArgument, "--setups: unknown setup '" + s + "'");
        }
      }
      ok = !o.setups.empty();
    } else if (arg == "--slo") {
      ok = pair(o.slo_ms);
    } else if (arg == "--rate") {
      ok = pair(o.rate);
    } else if (arg == "--load") {
      ok = to_double(value, o.load) && o.load > 0 && o.load <= 10;
    } else if (arg == "--duration") {
      ok = to_double(value, o.duration_s) && o.duration_s >= 0.5 && o.duration_s <= 3600;
    } else if (arg == "--warmup") {
      ok = to_double(value, o.warmup_s) && o.warmup_s >= 0 && o.warmup_s <= 600;
    } else if (arg == "--solo") {
      ok = to_double(value, o.solo_s) && o.solo_s >= 0.2 && o.solo_s <= 600;
    } else if (arg == "--max-batch") {
      ok = to_int(value, o.max_batch) && o.max_batch >= 1 && o.max_batch <= 256;
    } else if (arg == "--max-queue-delay-us") {
      ok = to_int(value, o.max_queue_delay_us);
    } else if (arg == "--clients") {
      ok = to_int(value, o.clients) && o.clients >= 1 && o.clients <= 16;
    } else if (arg == "--slots-per-lane") {
      ok = to_int(value, o.slots_per_lane) && o.slots_per_lane >= 1 && o.slots_per_lane <= 1024;
    } else if (arg == "--policy-interval-ms") {
      ok = to_int(value, o.policy_interval_ms) && o.policy_interval_ms >= 10;
    } else if (arg == "--device") {
      ok = to_int(value, o.device) && o.device >= 0 && o.device <= 1023;
    } else if (arg == "--start-timeout-s") {
      ok = to_double(value, o.start_timeout_s) && o.start_timeout_s >= 1;
    } else if (arg == "--bin-dir") {
      o.bin_dir = std::string(value);
    } else if (arg == "--out") {
      o.out_dir = std::string(value);
    } else {
      return Status(ErrorCode::kInvalidArgument, "unknown option '" + std::string(arg) + "'");
    }
    if (!ok) return bad();
  }
  const bool onnx = !o.onnx_dir.empty();
  if (o.setups.empty()) {
    o.setups = onnx ? std::vector<std::string>{"timeshare", "mps-full", "policy-mps",
                                               "policy-greenctx"}
                    : std::vector<std::string>{"cpu-static", "cpu-process", "cpu-affinity"};
  }
  for (const std::string& s : o.setups) {
    if (find_setup(s)->gpu && !onnx) {
      return Status(ErrorCode::kInvalidArgument,
                    "setup " + s + " runs on the GPU, which serves ONNX models only: give "
                    "--onnx-dir (the synthetic kind runs on the cpu backend only)");
    }
  }
  if (o.slots_per_lane == 0) o.slots_per_lane = onnx ? 16 : 64;
  if (o.bin_dir.empty()) o.bin_dir = self_dir();
  if (o.out_dir.empty()) {
    o.out_dir = (std::filesystem::path(self_dir()) / ".." / ".." / "bench").lexically_normal();
  }
  return o;
}

Result<std::vector<ModelDef>> model_defs(const GoodputOptions& o) {
  struct Known {
    const char* name;
    double flops;
    double slo_ms;
  };
  // Default SLOs: GPU models a few batch times of an H100-class GPU; synthetic ones a few
  // batch times of one core. Either is raised to 2x the solo latency when that is higher.
  static constexpr Known kOnnx[] = {
      {"resnet50", 0, 40}, {"resnet18", 0, 20}, {"mobilenet_v2", 0, 20}};
  static constexpr Known kSynthetic[] = {
      {"syn-large", 4e6, 40}, {"syn-mid", 2e6, 20}, {"syn-small", 1e6, 10}};
  const bool onnx = !o.onnx_dir.empty();
  std::vector<std::string> names = o.model_names;
  if (names.empty()) {
    for (const Known& k : onnx ? std::span<const Known>(kOnnx) : std::span<const Known>(kSynthetic)) {
      names.emplace_back(k.name);
    }
  }
  if (names.size() < 1 || names.size() > 8) {
    return Status(ErrorCode::kInvalidArgument, "--models: 1 to 8 models");
  }
  std::vector<ModelDef> defs;
  for (const std::string& n : names) {
    ModelDef d;
    d.name = n;
    d.default_slo_ms = onnx ? 30 : 20;
    for (const Known& k : onnx ? std::span<const Known>(kOnnx) : std::span<const Known>(kSynthetic)) {
      if (n == k.name) {
        d.default_slo_ms = k.slo_ms;
        d.flops = k.flops;
      }
    }
    if (onnx) {
      d.path = (std::filesystem::absolute(o.onnx_dir) / (n + ".onnx")).string();
      if (!std::filesystem::is_regular_file(d.path)) {
        return Status(ErrorCode::kNotFound,
                      d.path + " not found (scripts/gpu_models.py --out " + o.onnx_dir + ")");
      }
    } else if (d.flops == 0) {
      return Status(ErrorCode::kInvalidArgument,
                    "synthetic models are syn-large, syn-mid and syn-small; '" + n +
                        "' needs --onnx-dir");
    }
    if (auto it = o.slo_ms.find(n); it != o.slo_ms.end()) {
      d.slo_ms = it->second;
      d.slo_source = "given";
    }
    if (auto it = o.rate.find(n); it != o.rate.end()) d.rate = it->second;
    defs.push_back(d);
  }
  for (const auto* map : {&o.slo_ms, &o.rate}) {
    for (const auto& [name, v] : *map) {
      if (std::none_of(defs.begin(), defs.end(), [&](const ModelDef& d) { return d.name == name; })) {
        return Status(ErrorCode::kInvalidArgument, "--slo/--rate: no model '" + name + "'");
      }
    }
  }
  return defs;
}

// ---- config ----

std::string config_text(const GoodputOptions& o, const Setup& setup, const std::string& instance,
                        const std::vector<const ModelDef*>& models, double slice, bool policy) {
  std::ostringstream c;
  c << "# written by goodput_bench, setup " << setup.name << "\n"
    << "[server]\n"
    << "instance = \"" << instance << "\"\n"
    << "policy_interval_ms = " << o.policy_interval_ms << "\n"
    << "log_level = \"info\"\n"
    << "worker_ready_timeout_ms = " << uint64_t(o.start_timeout_s * 1000) << "\n"
    << "shutdown_grace_ms = 3000\n\n"
    << "[policy]\n"
    << "enabled = " << (policy ? "true" : "false") << "\n"
    // The greenctx pool: shares 10, 20, ..., 100.
    << "min_slice = 10\n"
    << "min_step = 10\n"
    << "resize_timeout_ms = 60000\n";
  if (setup.gpu) {
    c << "\n[backend.mps]\n"
      << "control = \"" << setup.mps_control << "\"\n"
      << "fallback = \"error\"\n"
      << "device = " << o.device << "\n";
    if (std::string_view(setup.mps_control) != "off") {
      c << "thread_percentage = \"" << setup.thread_percentage << "\"\n";
    }
    if (std::string_view(setup.backend) == "greenctx") {
      c << "\n[backend.greenctx]\n"
        << "device = " << o.device << "\n"
        << "mps = " << (setup.greenctx_mps ? "true" : "false") << "\n";
    }
  }
  for (const ModelDef* m : models) {
    c << "\n[[model]]\n"
      << "name = \"" << m->name << "\"\n"
      << "backend = \"" << setup.backend << "\"\n"
      << "slice = " << slice << "\n"
      << "slo_ms = " << (m->slo_ms > 0 ? m->slo_ms : m->default_slo_ms) << "\n"
      << "max_batch = " << o.max_batch << "\n"
      << "max_queue_delay_us = " << o.max_queue_delay_us << "\n"
      << "lanes = " << o.clients + 1 << "\n"
      << "slots_per_lane = " << o.slots_per_lane << "\n";
    if (!m->path.empty()) {
      c << "kind = \"onnx\"\n"
        << "path = \"" << m->path << "\"\n";
    } else {
      c << "kind = \"synthetic\"\n"
        << "flops_per_item = " << m->flops << "\n"
        << "inputs = [ { name = \"x\", dtype = \"FP32\", shape = [16] } ]\n"
        << "outputs = [ { name = \"y\", dtype = \"FP32\", shape = [16] } ]\n";
    }
  }
  return c.str();
}

// ---- load ----

struct Record {
  uint64_t due_ns = 0;  // arrival: the scheduled send time
  std::atomic<uint64_t> done_ns{0};
  std::atomic<uint8_t> state{0};  // 0 pending, 1 ok, 2 error, 3 dropped (never sent)
};

// One model's clients and input; requests rotate over the clients.
class ModelLoad {
 public:
  static Result<std::unique_ptr<ModelLoad>> connect(const std::string& instance,
                                                    const ModelDef& def, int clients,
                                                    std::chrono::milliseconds timeout) {
    auto l = std::unique_ptr<ModelLoad>(new ModelLoad());
    l->def_ = &def;
    l->timeout_ = timeout;
    client::ConnectOptions options;
    options.instance = instance;
    options.default_timeout = timeout;
    options.spin = std::chrono::microseconds(0);
    for (int i = 0; i < clients; ++i) {
      Result<client::Client> c = client::Client::connect(def.name, options);
      if (!c.is_ok()) return c.status().with_context(def.name + ": client " + std::to_string(i));
      l->clients_.push_back(std::make_unique<client::Client>(std::move(c).value()));
    }
    const shm::ModelSpec& spec = l->clients_.front()->spec();
    std::mt19937 rng(11);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    for (const auto& t : spec.input_specs()) {
      std::vector<std::byte> bytes(t.byte_size());
      if (t.dtype == shm::DataType::kFp32) {
        for (size_t k = 0; k + 4 <= bytes.size(); k += 4) {
          const float v = normal(rng);
          std::memcpy(bytes.data() + k, &v, 4);
        }
      }
      l->names_.emplace_back(t.name_view());
      l->shapes_.emplace_back(t.shape().begin(), t.shape().end());
      l->dtypes_.push_back(t.dtype);
      l->inputs_.push_back(std::move(bytes));
    }
    return l;
  }

  ~ModelLoad() {
    stop();
    clients_.clear();
  }

  // Closed loop: `concurrency` requests always in flight for `seconds` after `warmup`;
  // returns (completions/s, p50 latency ms) over the measured part.
  Result<std::pair<double, double>> closed_loop(int concurrency, double warmup, double seconds) {
    std::mutex mu;
    std::condition_variable cv;
    int in_flight = 0;
    std::vector<double> latencies;
    uint64_t errors = 0;
    std::string first_error;
    const uint64_t start = now_ns();
    const uint64_t measure_from = start + uint64_t(warmup * 1e9);
    const uint64_t measure_to = measure_from + uint64_t(seconds * 1e9);
    uint64_t done_in_window = 0;
    const std::vector<client::Tensor> tensors = tensors_view();
    for (size_t i = 0; now_ns() < measure_to; ++i) {
      {
        std::unique_lock lock(mu);
        cv.wait(lock, [&] { return in_flight < concurrency; });
        ++in_flight;
      }
      const uint64_t sent = now_ns();
      clients_[i % clients_.size()]->infer_async(
          tensors,
          [&, sent](Result<client::InferResult> r) {
            const uint64_t t = now_ns();
            std::lock_guard lock(mu);
            --in_flight;
            if (!r.is_ok()) {
              if (errors++ == 0) first_error = r.status().to_string();
            } else if (sent >= measure_from && t <= measure_to) {
              ++done_in_window;
              latencies.push_back(double(t - sent) / 1e6);
            }
            cv.notify_all();
          },
          timeout_);
    }
    {
      std::unique_lock lock(mu);
      cv.wait_for(lock, std::chrono::seconds(30), [&] { return in_flight == 0; });
      if (in_flight != 0) {
        lock.unlock();
        clients_.clear();  // withdraws what is left before the callbacks' state goes
        return Status(ErrorCode::kTimeout, def_->name + ": solo requests still unanswered");
      }
    }
    if (errors > 0) {
      return Status(ErrorCode::kInternal, def_->name + ": " + std::to_string(errors) +
                                              " solo requests failed, the first: " + first_error);
    }
    if (latencies.empty()) {
      return Status(ErrorCode::kInternal, def_->name + ": no answer in the solo measurement");
    }
    std::sort(latencies.begin(), latencies.end());
    return std::pair(double(done_in_window) / seconds, latencies[latencies.size() / 2]);
  }

  // Open loop: Poisson arrivals at `rate` from `start_ns` for `seconds`, on a thread.
  void start(double rate, uint64_t start_ns, double seconds, uint64_t seed) {
    const size_t capacity = size_t(rate * seconds * 1.5) + 1000;
    records_ = std::make_unique<Record[]>(capacity);
    capacity_ = capacity;
    sender_ = std::thread([this, rate, start_ns, seconds, seed] {
      prctl(PR_SET_TIMERSLACK, 1UL);
      std::mt19937_64 rng(seed);
      std::exponential_distribution<double> gap(rate);
      const std::vector<client::Tensor> tensors = tensors_view();
      const uint64_t end_ns = start_ns + uint64_t(seconds * 1e9);
      const uint64_t slo_ns = uint64_t(def_->slo_ms * 1e6);
      double due = double(start_ns);
      for (size_t i = 0; i < capacity_ && !stop_.load(std::memory_order_relaxed); ++i) {
        due += gap(rng) * 1e9;
        if (due >= double(end_ns)) break;
        Record& r = records_[i];
        r.due_ns = uint64_t(due);
        sent_.store(i + 1, std::memory_order_release);
        const uint64_t now = now_ns();
        if (now < r.due_ns) {
          timespec ts{time_t(r.due_ns / 1'000'000'000ULL), long(r.due_ns % 1'000'000'000ULL)};
          while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, nullptr) == EINTR) {
          }
        } else if (now - r.due_ns > slo_ns) {
          // The sender is behind by more than the SLO (every slot was taken): this arrival
          // cannot be good any more; it is counted, not sent.
          r.state.store(3, std::memory_order_release);
          answered_.fetch_add(1, std::memory_order_acq_rel);
          continue;
        }
        clients_[i % clients_.size()]->infer_async(
            tensors,
            [this, i](Result<client::InferResult> res) {
              Record& rec = records_[i];
              rec.done_ns.store(now_ns(), std::memory_order_relaxed);
              rec.state.store(res.is_ok() ? 1 : 2, std::memory_order_release);
              if (!res.is_ok()) {
                std::lock_guard lock(error_mu_);
                if (first_error_.empty()) first_error_ = res.status().to_string();
              }
              answered_.fetch_add(1, std::memory_order_acq_rel);
            },
            timeout_);
      }
    });
  }

  void stop() {
    stop_.store(true);
    if (sender_.joinable()) sender_.join();
  }
  void join() {
    if (sender_.joinable()) sender_.join();
  }
  bool drain(uint64_t timeout_ms) {
    const uint64_t deadline = now_ns() + timeout_ms * kMs;
    while (answered_.load() < sent_.load()) {
      if (now_ns() > deadline) return false;
      timespec t{0, 5'000'000};
      nanosleep(&t, nullptr);
    }
    return true;
  }
  void disconnect() { clients_.clear(); }

  size_t sent() const { return sent_.load(std::memory_order_acquire); }
  const Record& record(size_t i) const { return records_[i]; }
  std::string first_error() const {
    std::lock_guard lock(error_mu_);
    return first_error_;
  }

 private:
  ModelLoad() = default;
  std::vector<client::Tensor> tensors_view() const {
    std::vector<client::Tensor> t;
    for (size_t i = 0; i < inputs_.size(); ++i) {
      t.push_back({names_[i], dtypes_[i], shapes_[i], std::span<const std::byte>(inputs_[i])});
    }
    return t;
  }

  const ModelDef* def_ = nullptr;
  std::chrono::milliseconds timeout_{10000};
  std::vector<std::unique_ptr<client::Client>> clients_;
  std::vector<std::string> names_;
  std::vector<std::vector<int64_t>> shapes_;
  std::vector<shm::DataType> dtypes_;
  std::vector<std::vector<std::byte>> inputs_;
  std::unique_ptr<Record[]> records_;
  size_t capacity_ = 0;
  std::thread sender_;
  std::atomic<bool> stop_{false};
  std::atomic<size_t> sent_{0};
  std::atomic<size_t> answered_{0};
  mutable std::mutex error_mu_;
  std::string first_error_;
};

std::chrono::milliseconds request_timeout(const ModelDef& m) {
  return std::chrono::milliseconds(int64_t(std::clamp(m.slo_ms * 20, 2000.0, 10000.0)));
}

double round_to(double v, int digits) {
  const double s = std::pow(10.0, digits);
  return std::round(v * s) / s;
}

double percentile(std::vector<double>& v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  size_t rank = size_t(std::ceil(double(v.size()) * p / 100.0));
  rank = std::clamp<size_t>(rank, 1, v.size());
  return v[rank - 1];
}

std::string log_path(const GoodputOptions& o, const std::string& what) {
  return o.out_dir + "/goodput-" + what + ".daemon.log";
}

// ---- solo throughput ----

Status measure_solo(const GoodputOptions& o, std::vector<ModelDef>& models) {
  const Setup& solo_setup = *find_setup(models.front().path.empty() ? "cpu-static" : "timeshare");
  for (ModelDef& m : models) {
    const bool need_rate = m.rate == 0;
    const bool need_slo = m.slo_ms == 0;
    if (!need_rate && !need_slo) continue;
    const std::string instance = "gp" + std::to_string(getpid()) + "-solo-" + m.name;
    std::fprintf(stderr, "goodput: solo %s: starting sliceserved (%s, slice 100, policy off)\n",
                 m.name.c_str(), solo_setup.backend);
    ModelDef as_configured = m;
    if (need_slo) as_configured.slo_ms = m.default_slo_ms;
    ASSIGN_OR_RETURN(std::unique_ptr<Daemon> daemon,
                     Daemon::launch(config_text(o, solo_setup, instance, {&as_configured}, 100,
                                                false),
                                    instance, {m.name}, o.bin_dir, log_path(o, "solo-" + m.name),
                                    solo_setup.gpu, uint64_t(o.start_timeout_s * 1000)));
    double rps = 0, p50 = 0;
    {
      ASSIGN_OR_RETURN(std::unique_ptr<ModelLoad> load,
                       ModelLoad::connect(instance, m, o.clients, request_timeout(as_configured)));
      ASSIGN_OR_RETURN(auto measured, load->closed_loop(2 * o.max_batch, 0.5, o.solo_s));
      rps = measured.first;
      p50 = measured.second;
    }
    RETURN_IF_ERROR(daemon->stop().with_context("stopping the solo daemon of " + m.name));
    m.solo_rps = rps;
    m.solo_p50_ms = p50;
    if (need_slo) {
      m.slo_ms = std::max(m.default_slo_ms, 2.0 * p50);
      m.slo_source = m.slo_ms > m.default_slo_ms ? "2x solo latency" : "default";
    }
    if (need_rate) m.rate = o.load * rps;
    std::fprintf(stderr,
                 "goodput: solo %s: %.1f requests/s closed loop (%d in flight), p50 %.2f ms -> "
                 "SLO %.1f ms (%s), rate %.1f/s\n",
                 m.name.c_str(), rps, 2 * o.max_batch, p50, m.slo_ms, m.slo_source.c_str(),
                 m.rate);
  }
  return Status::ok();
}

// ---- one setup ----

Result<Json> run_setup(const GoodputOptions& o, const Setup& setup,
                       const std::vector<ModelDef>& models) {
  const std::string instance = "gp" + std::to_string(getpid()) + "-" + setup.name;
  std::vector<const ModelDef*> ptrs;
  std::vector<std::string> names;
  for (const ModelDef& m : models) {
    ptrs.push_back(&m);
    names.push_back(m.name);
  }
  const double slice = std::floor(100.0 / double(models.size()));
  std::fprintf(stderr, "goodput[%s]: %s; starting sliceserved (slices %.0f%%)\n", setup.name,
               setup.what, slice);
  const uint64_t t_start = now_ns();
  ASSIGN_OR_RETURN(std::unique_ptr<Daemon> daemon,
                   Daemon::launch(config_text(o, setup, instance, ptrs, slice, setup.policy),
                                  instance, names, o.bin_dir, log_path(o, setup.name), setup.gpu,
                                  uint64_t(o.start_timeout_s * 1000)));
  const double start_s = double(now_ns() - t_start) / 1e9;
  std::vector<std::unique_ptr<ModelLoad>> loads;
  for (const ModelDef& m : models) {
    ASSIGN_OR_RETURN(std::unique_ptr<ModelLoad> l,
                     ModelLoad::connect(instance, m, o.clients, request_timeout(m)));
    loads.push_back(std::move(l));
  }
  const double total_s = o.warmup_s + o.duration_s;
  const uint64_t load_start = now_ns() + 20 * kMs;
  for (size_t i = 0; i < models.size(); ++i) {
    loads[i]->start(models[i].rate, load_start, total_s, 1000 + i);
  }
  std::fprintf(stderr, "goodput[%s]: serving after %.1f s; %.0f s of load (%.0f s warm-up)\n",
               setup.name, start_s, total_s, o.warmup_s);
  for (auto& l : loads) l->join();
  for (size_t i = 0; i < loads.size(); ++i) {
    if (!loads[i]->drain(uint64_t(request_timeout(models[i]).count()) + 2000)) {
      std::fprintf(stderr, "goodput[%s]: %s: requests left unanswered\n", setup.name,
                   models[i].name.c_str());
    }
  }
  const uint64_t from = load_start + uint64_t(o.warmup_s * 1e9);
  const uint64_t to = load_start + uint64_t(total_s * 1e9);

  Json per_model = Json::array();
  double goodput = 0, offered = 0;
  for (size_t i = 0; i < models.size(); ++i) {
    const ModelDef& m = models[i];
    const ModelLoad& l = *loads[i];
    const uint64_t slo_ns = uint64_t(m.slo_ms * 1e6);
    uint64_t arrivals = 0, good = 0, completed = 0, errors = 0, dropped = 0, late = 0;
    std::vector<double> latencies;
    for (size_t k = 0; k < l.sent(); ++k) {
      const Record& r = l.record(k);
      if (r.due_ns < from || r.due_ns >= to) continue;
      ++arrivals;
      const uint8_t state = r.state.load(std::memory_order_acquire);
      if (state == 3) {
        ++dropped;
      } else if (state == 2) {
        ++errors;
      } else if (state == 1) {
        ++completed;
        const uint64_t latency = r.done_ns.load(std::memory_order_relaxed) - r.due_ns;
        latencies.push_back(double(latency) / 1e6);
        if (latency <= slo_ns) {
          ++good;
        } else {
          ++late;
        }
      }
    }
    Result<nlohmann::json> st = daemon->model_status(m.name, 2000);
    const double g = double(good) / o.duration_s;
    goodput += g;
    offered += m.rate;
    Json j;
    j["model"] = m.name;
    j["slo_ms"] = round_to(m.slo_ms, 2);
    j["rate"] = round_to(m.rate, 1);
    j["arrivals"] = arrivals;
    j["completed"] = completed;
    j["good"] = good;
    j["late"] = late;
    j["dropped"] = dropped;
    j["errors"] = errors;
    j["unanswered"] = arrivals - completed - errors - dropped;
    j["goodput_rps"] = round_to(g, 1);
    j["p50_ms"] = round_to(percentile(latencies, 50), 2);
    j["p99_ms"] = round_to(percentile(latencies, 99), 2);
    if (st.is_ok()) {
      j["slice_end"] = (*st)["slice"];
      j["resizes"] = (*st)["resizes"];
      j["failed_resizes"] = (*st)["failed_resizes"];
    }
    if (errors > 0) j["first_error"] = l.first_error();
    std::fprintf(stderr,
                 "goodput[%s]:   %-14s rate %7.1f/s  good %7.1f/s  (%llu of %llu within %.1f ms; "
                 "late %llu, dropped %llu, errors %llu)  p50 %.2f ms p99 %.2f ms\n",
                 setup.name, m.name.c_str(), m.rate, g, static_cast<unsigned long long>(good),
                 static_cast<unsigned long long>(arrivals), m.slo_ms,
                 static_cast<unsigned long long>(late), static_cast<unsigned long long>(dropped),
                 static_cast<unsigned long long>(errors), j["p50_ms"].get<double>(),
                 j["p99_ms"].get<double>());
    per_model.push_back(std::move(j));
  }
  Result<nlohmann::json> all = daemon->call({{"cmd", "status"}}, 2000);
  for (auto& l : loads) l->disconnect();
  loads.clear();
  Status stopped = daemon->stop();
  if (!stopped.is_ok()) return stopped.with_context("stopping sliceserved");

  Json line;
  line["bench"] = "goodput";
  line["setup"] = setup.name;
  line["backend"] = setup.backend;
  line["policy"] = setup.policy;
  if (setup.gpu) {
    line["mps_control"] = setup.mps_control;
    line["sharing"] = all.is_ok() && all->contains("mps") ? (*all)["mps"].value("sharing", "?")
                                                          : std::string("?");
  }
  line["duration_s"] = o.duration_s;
  line["goodput_rps"] = round_to(goodput, 1);
  line["offered_rps"] = round_to(offered, 1);
  line["goodput_fraction"] = offered > 0 ? round_to(goodput / offered, 3) : 0.0;
  line["start_s"] = round_to(start_s, 2);
  line["models"] = std::move(per_model);
  return line;
}

int run(const GoodputOptions& o) {
  std::error_code ec;
  std::filesystem::create_directories(o.out_dir, ec);
  if (ec) {
    std::fprintf(stderr, "goodput_bench: cannot create %s: %s\n", o.out_dir.c_str(),
                 ec.message().c_str());
    return 1;
  }
  auto defs = model_defs(o);
  if (!defs.is_ok()) {
    std::fprintf(stderr, "goodput_bench: %s\n", defs.status().to_string().c_str());
    return 2;
  }
  std::vector<ModelDef>& models = *defs;
  if (Status s = measure_solo(o, models); !s.is_ok()) {
    std::fprintf(stderr, "goodput_bench: solo throughput: %s\n", s.to_string().c_str());
    return 1;
  }
  {
    Json j;
    j["bench"] = "goodput";
    j["phase"] = "solo";
    Json list = Json::array();
    for (const ModelDef& m : models) {
      list.push_back({{"model", m.name},
                      {"solo_rps", round_to(m.solo_rps, 1)},
                      {"solo_p50_ms", round_to(m.solo_p50_ms, 2)},
                      {"slo_ms", round_to(m.slo_ms, 2)},
                      {"slo_source", m.slo_source.empty() ? "given" : m.slo_source},
                      {"rate", round_to(m.rate, 1)}});
    }
    j["load_fraction"] = o.load;
    j["models"] = std::move(list);
    std::printf("%s\n", j.dump().c_str());
    std::fflush(stdout);
  }
  int rc = 0;
  std::map<std::string, double> results;
  for (const std::string& name : o.setups) {
    const Setup& setup = *find_setup(name);
    auto line = run_setup(o, setup, models);
    if (!line.is_ok()) {
      std::fprintf(stderr, "goodput[%s]: %s\n", name.c_str(), line.status().to_string().c_str());
      Json j;
      j["bench"] = "goodput";
      j["setup"] = name;
      j["error"] = line.status().to_string().substr(0, 400);
      std::printf("%s\n", j.dump().c_str());
      std::fflush(stdout);
      rc = 1;
      continue;
    }
    results[name] = (*line)["goodput_rps"].get<double>();
    std::fprintf(stderr, "goodput[%s]: goodput %.1f/s of %.1f/s offered\n", name.c_str(),
                 results[name], (*line)["offered_rps"].get<double>());
    std::printf("%s\n", line->dump().c_str());
    std::fflush(stdout);
  }

  // The comparison: every policy setup against every baseline that ran.
  Json cmp;
  cmp["bench"] = "goodput";
  cmp["comparison"] = true;
  Json values;
  for (const auto& [name, g] : results) values[name] = g;
  cmp["goodput_rps"] = values;
  Json ratios, targets;
  for (const auto& [p, gp] : results) {
    if (!find_setup(p)->policy) continue;
    for (const auto& [b, gb] : results) {
      if (find_setup(b)->policy) continue;
      const std::string key = p + "_vs_" + b;
      ratios[key] = gb > 0 ? Json(round_to(gp / gb, 3)) : Json(nullptr);
      if (b == "timeshare") targets[p + ">=2x_timeshare"] = gp >= 2 * gb;
      if (b == "mps-full") targets[p + ">mps-full"] = gp > gb;
      if (b == "cpu-static") targets[p + ">cpu-static"] = gp > gb;
    }
  }
  cmp["ratios"] = ratios;
  cmp["targets"] = targets;
  std::printf("%s\n", cmp.dump().c_str());
  std::fflush(stdout);
  return rc;
}

}  // namespace
}  // namespace sliceserve::bench

int main(int argc, char** argv) {
  using namespace sliceserve::bench;
  auto options = parse_options(argc, argv);
  if (!options.is_ok()) {
    std::fprintf(stderr, "goodput_bench: %s\n", options.status().message().c_str());
    usage(stderr);
    return 2;
  }
  return run(*options);
}
