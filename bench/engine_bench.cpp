// engine_bench: an ONNX CNN (ResNet-50 by default) through the SliceServe engine and through
// PyTorch's frozen TorchScript (bench/engine_pytorch.py, a child process that waits for
// commands), with the same thread count, the same cpus and the same random input. With
// --device cuda:N the engine runs on that GPU (the CUDA executor, from a host slice of one
// thread: it launches on a stream of its own) and the PyTorch side runs eager mode on the same
// GPU with cuDNN (torch.backends.cudnn.benchmark, no TorchScript; --pytorch-device cuda). The two sides
// never run at the same time: per batch size they take turns, --rounds times, so that both are
// sampled across the same stretch of time on a shared machine. Also measures the machine's FP32
// FMA peak (AVX2) on those cpus and counts the model's FLOPs from its graph.
// Prints one JSON line per batch on stdout,
//   {"bench":"engine","model":"resnet50","batch":1,"threads":2,"sliceserve_ms":X,
//    "pytorch_ms":Y,...,"gflop":G,"fma_peak_gflops":P,"fma_peak_fraction":F,...}
// and progress on stderr. See docs/BENCHMARKS.md.

#include <fcntl.h>
#include <sched.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <charconv>
#include <cinttypes>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <random>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define SS_HAVE_X86 1
#endif

#include "bench_args.h"
#include "sliceserve/backends/cpu/cpu_slice.h"
#include "sliceserve/backends/cpu/cpu_topology.h"
#include "sliceserve/shm/check.h"
#include "sliceserve/shm/status.h"
#include "sliceserve/worker/engine/engine.h"
#include "sliceserve/worker/engine/onnx_loader.h"
#include "sliceserve/worker/engine/shape_inference.h"

extern char** environ;

namespace sliceserve::bench {
namespace {

using Json = nlohmann::ordered_json;
namespace engine = worker::engine;

uint64_t now_ns() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return uint64_t(ts.tv_sec) * 1'000'000'000ULL + uint64_t(ts.tv_nsec);
}

double round_to(double value, int digits) {
  const double scale = std::pow(10.0, digits);
  return std::round(value * scale) / scale;
}

std::string load_average() {
  std::ifstream in("/proc/loadavg");
  std::string one, five;
  in >> one >> five;
  return one + " " + five;
}

// What the whole machine and this process have run so far, to tell how much of the machine
// other processes (and the hypervisor: steal time) took while a side was timed.
struct CpuSample {
  double busy_s = 0;   // all cpus: user, nice, system, irq, softirq, steal
  double total_s = 0;  // the same plus idle and iowait
  double self_s = 0;   // this process, all threads, user + system
  bool ok = false;
};

CpuSample sample_cpu() {
  CpuSample s;
  std::ifstream in("/proc/stat");
  std::string cpu;
  uint64_t user = 0, nice = 0, system = 0, idle = 0, iowait = 0, irq = 0, softirq = 0, steal = 0;
  in >> cpu >> user >> nice >> system >> idle >> iowait >> irq >> softirq >> steal;
  const double tick = 1.0 / double(sysconf(_SC_CLK_TCK));
  rusage self{};
  if (!in || cpu != "cpu" || getrusage(RUSAGE_SELF, &self) != 0) return s;
  s.busy_s = double(user + nice + system + irq + softirq + steal) * tick;
  s.total_s = s.busy_s + double(idle + iowait) * tick;
  s.self_s = double(self.ru_utime.tv_sec + self.ru_stime.tv_sec) +
             double(self.ru_utime.tv_usec + self.ru_stime.tv_usec) / 1e6;
  s.ok = true;
  return s;
}

// The timed runs of one side, over all rounds, and how busy the rest of the machine was meanwhile.
struct SideSamples {
  std::vector<double> ms;
  double other_cpu_s = 0;    // CPU time of other processes (and steal) during the timed runs
  double machine_cpu_s = 0;  // the machine's CPU time in those intervals: cpus x wall
  bool cpu_known = true;

  void add_interval(const CpuSample& a, const CpuSample& b) {
    if (!a.ok || !b.ok) {
      cpu_known = false;
      return;
    }
    other_cpu_s += std::max(0.0, (b.busy_s - a.busy_s) - (b.self_s - a.self_s));
    machine_cpu_s += b.total_s - a.total_s;
  }
  // -1 when unknown.
  double other_cpu_pct() const {
    if (!cpu_known || machine_cpu_s <= 0) return -1;
    return std::min(100.0, 100.0 * other_cpu_s / machine_cpu_s);
  }
};

// ---- options ----

struct Options {
  std::string model_path = SLICESERVE_SOURCE_DIR "/models/resnet50.onnx";
  std::string model_name;  // torchvision name; default: the file name up to '-' or '.'
  std::vector<int64_t> batches{1, 8};
  unsigned threads = 0;  // 0: every cpu this process may run on
  int warmup = 5;
  int iters = 0;  // 0: at least 20 (batch 1) / 10, extended to --min-time
  double min_time_s = 3.0;
  int rounds = 3;  // turns each side takes per batch; the timed runs are split among them
  int64_t engine_max_batch = 0;  // 0: one engine per batch, built with max_batch = batch
  bool pytorch = true;
  bool peak_only = false;
  std::string python = "/usr/bin/python3";
  std::string pytorch_script = SLICESERVE_SOURCE_DIR "/bench/engine_pytorch.py";
  bool inherit_python_env = false;  // keep PYTHONPATH and the user's site-packages
  std::string device = "cpu";          // the engine's: cpu, cuda, cuda:<ordinal>
  std::string pytorch_device;          // cpu | cuda; empty: the engine's kind
  std::string pytorch_builder = "torchvision";  // | gpu_models (scripts/gpu_models.py)

  bool on_gpu() const { return device != "cpu"; }
};

void print_usage(std::FILE* out) {
  std::fprintf(
      out,
      "usage: engine_bench [options]\n"
      "An ONNX CNN (default ResNet-50) through the SliceServe engine (oneDNN executor, a cpu\n"
      "slice of --threads cores) and through PyTorch's frozen TorchScript (torch.jit.trace +\n"
      "torch.jit.freeze, bench/engine_pytorch.py under /usr/bin/python3), taking turns (never\n"
      "at the same time), same threads, same cpus, same random input; plus the machine's AVX2\n"
      "FMA peak on those cpus. One JSON line per batch on stdout, progress on stderr.\n\n"
      "options:\n"
      "  --model PATH          ONNX file (default models/resnet50.onnx; scripts/models builds "
      "it)\n"
      "  --name NAME           torchvision model for the PyTorch side (default: the file name\n"
      "                        up to the first '-' or '.', e.g. resnet50)\n"
      "  --batches LIST        comma-separated batch sizes (default 1,8)\n"
      "  --threads T           threads on both sides, pinned to the first T cpus (default: all)\n"
      "  --warmup N            untimed runs before each batch, each side (default 5)\n"
      "  --iters N             timed runs per batch, each side (default: at least 20 for batch\n"
      "                        1 and 10 for larger batches, more to fill --min-time)\n"
      "  --min-time S          seconds of timed runs per batch and side to aim for (default 3)\n"
      "  --rounds R            per batch, the sides take turns R times, each running its share\n"
      "                        of the timed runs (default 3)\n"
      "  --engine-max-batch N  build one engine with max_batch N for all batches (default: one\n"
      "                        engine per batch, max_batch = the batch)\n"
      "  --no-pytorch          SliceServe side only (pytorch fields are null)\n"
      "  --peak-only           measure the FMA peak on the --threads cpus, print it, exit\n"
      "  --python PATH         the interpreter for the PyTorch side (default /usr/bin/python3)\n"
      "  --pytorch-script PATH (default bench/engine_pytorch.py of the source tree)\n"
      "  --inherit-python-env  keep PYTHONPATH and user site-packages for the PyTorch side\n"
      "                        (default: removed, so Debian's torch is the one imported)\n"
      "  --device DEV          the engine's device: cpu (default), cuda, cuda:N. On a GPU the\n"
      "                        engine runs from a host slice of 1 thread, FMA peak fields are\n"
      "                        null, and outputs must agree to 1e-2 of |max| (TF32)\n"
      "  --pytorch-device D    cpu or cuda (default: the engine's kind). cuda: eager mode,\n"
      "                        torch.backends.cudnn.benchmark = True, synchronized timing\n"
      "  --pytorch-builder B   torchvision (default: torchvision.models.NAME, seed 0, as\n"
      "                        scripts/models) or gpu_models (scripts/gpu_models.py's\n"
      "                        build_model, for the files it exports)\n"
      "  --help                this text\n");
}

Result<std::vector<int64_t>> parse_batches(std::string_view list) {
  std::vector<int64_t> batches;
  while (!list.empty()) {
    const size_t comma = list.find(',');
    const std::string_view item = list.substr(0, comma);
    list = comma == std::string_view::npos ? std::string_view() : list.substr(comma + 1);
    int64_t batch = 0;
    if (!parse_number(item, batch) || batch < 1 || batch > 4096) {
      return Status(ErrorCode::kInvalidArgument,
                    "--batches: '" + std::string(item) + "' is not a batch size in [1, 4096]");
    }
    if (std::find(batches.begin(), batches.end(), batch) == batches.end()) {
      batches.push_back(batch);
    }
  }
  if (batches.empty()) return Status(ErrorCode::kInvalidArgument, "--batches: empty list");
  return batches;
}

Result<Options> parse_options(int argc, char** argv) {
  Options o;
  bench::ArgReader args(argc, argv);
  while (args.next()) {
    const std::string_view arg = args.name();
    bool ok = true;
    if (arg == "--help" || arg == "-h") {
      print_usage(stdout);
      std::exit(0);
    } else if (arg == "--model" || arg == "--name" || arg == "--python" ||
               arg == "--pytorch-script" || arg == "--batches" || arg == "--device" ||
               arg == "--pytorch-device" || arg == "--pytorch-builder") {
      const auto value = args.value();
      if (!value || value->empty()) return args.bad("needs a value");
      if (arg == "--model") o.model_path = *value;
      if (arg == "--name") o.model_name = *value;
      if (arg == "--python") o.python = *value;
      if (arg == "--pytorch-script") o.pytorch_script = *value;
      if (arg == "--device") o.device = *value;
      if (arg == "--pytorch-device") {
        if (*value != "cpu" && *value != "cuda") return args.bad("cpu or cuda");
        o.pytorch_device = *value;
      }
      if (arg == "--pytorch-builder") {
        if (*value != "torchvision" && *value != "gpu_models") {
          return args.bad("torchvision or gpu_models");
        }
        o.pytorch_builder = *value;
      }
      if (arg == "--batches") {
        ASSIGN_OR_RETURN(o.batches, parse_batches(*value));
      }
    } else if (arg == "--threads") {
      ok = args.number(o.threads) && o.threads > 0;
    } else if (arg == "--warmup") {
      ok = args.number(o.warmup) && o.warmup >= 0;
    } else if (arg == "--iters") {
      ok = args.number(o.iters) && o.iters > 0;
    } else if (arg == "--rounds") {
      ok = args.number(o.rounds) && o.rounds > 0 && o.rounds <= 1000;
    } else if (arg == "--min-time") {
      ok = args.number(o.min_time_s) && o.min_time_s >= 0;
    } else if (arg == "--engine-max-batch") {
      ok = args.number(o.engine_max_batch) && o.engine_max_batch > 0 && o.engine_max_batch <= 4096;
    } else if (arg == "--no-pytorch") {
      o.pytorch = false;
    } else if (arg == "--peak-only") {
      o.peak_only = true;
    } else if (arg == "--inherit-python-env") {
      o.inherit_python_env = true;
    } else {
      return args.unknown();
    }
    if (!ok) return args.bad("needs a valid number");
  }
  if (o.engine_max_batch > 0 &&
      *std::max_element(o.batches.begin(), o.batches.end()) > o.engine_max_batch) {
    return Status(ErrorCode::kInvalidArgument, "--engine-max-batch is below the largest batch");
  }
  if (o.device != "cpu" && o.device != "cuda" && !o.device.starts_with("cuda:")) {
    return Status(ErrorCode::kInvalidArgument,
                  "--device: '" + o.device + "' is not cpu, cuda or cuda:<ordinal>");
  }
  if (o.pytorch_device.empty()) o.pytorch_device = o.on_gpu() ? "cuda" : "cpu";
  if (o.peak_only && o.on_gpu()) {
    return Status(ErrorCode::kInvalidArgument, "--peak-only measures the cpus: not with --device");
  }
  if (o.model_name.empty()) {
    const std::string file = std::filesystem::path(o.model_path).filename().string();
    o.model_name = file.substr(0, file.find_first_of("-."));
  }
  return o;
}

// ---- timing statistics ----

struct Timing {
  int iters = 0;
  double p50_ms = 0, p99_ms = 0, min_ms = 0, mean_ms = 0;
  double other_cpu_pct = -1;  // the machine's CPU time others used meanwhile; -1: unknown
};

// Nearest-rank percentile of sorted samples.
double percentile(const std::vector<double>& sorted, unsigned percent) {
  if (sorted.empty()) return 0;
  size_t rank = (sorted.size() * percent + 99) / 100;  // ceil(n * p / 100)
  rank = std::clamp<size_t>(rank, 1, sorted.size());
  return sorted[rank - 1];
}

Timing summarize(std::vector<double> ms) {
  std::sort(ms.begin(), ms.end());
  Timing t;
  t.iters = int(ms.size());
  if (ms.empty()) return t;
  t.p50_ms = percentile(ms, 50);
  t.p99_ms = percentile(ms, 99);
  t.min_ms = ms.front();
  double sum = 0;
  for (double v : ms) sum += v;
  t.mean_ms = sum / double(ms.size());
  return t;
}

// ---- FMA peak ----
//
// Each thread runs kChains independent chains of 8-wide FP32 FMAs (acc = acc * a + b): enough in
// flight to cover an FMA's latency on every pipe of current x86 cores (Zen 3 and Skylake: 2
// pipes x 4 cycles = 8 chains). 10 chains x 8 lanes x 2 FLOPs = 160 FLOPs per loop iteration.

constexpr int kChains = 10;
constexpr double kFlopsPerIteration = kChains * 8 * 2;

bool cpu_has_avx2_fma() {
#if SS_HAVE_X86
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
  return false;
#endif
}

#if SS_HAVE_X86
__attribute__((target("avx2,fma"))) float fma_chains(uint64_t iterations) {
  // a < 1 and b small: every chain converges to b / (1 - a) = 1, never to inf or a denormal.
  const __m256 a = _mm256_set1_ps(0.999F);
  const __m256 b = _mm256_set1_ps(0.001F);
  __m256 c0 = _mm256_set1_ps(1.0F), c1 = _mm256_set1_ps(1.1F), c2 = _mm256_set1_ps(1.2F);
  __m256 c3 = _mm256_set1_ps(1.3F), c4 = _mm256_set1_ps(1.4F), c5 = _mm256_set1_ps(1.5F);
  __m256 c6 = _mm256_set1_ps(1.6F), c7 = _mm256_set1_ps(1.7F), c8 = _mm256_set1_ps(1.8F);
  __m256 c9 = _mm256_set1_ps(1.9F);
  for (uint64_t i = 0; i < iterations; ++i) {
    c0 = _mm256_fmadd_ps(c0, a, b);
    c1 = _mm256_fmadd_ps(c1, a, b);
    c2 = _mm256_fmadd_ps(c2, a, b);
    c3 = _mm256_fmadd_ps(c3, a, b);
    c4 = _mm256_fmadd_ps(c4, a, b);
    c5 = _mm256_fmadd_ps(c5, a, b);
    c6 = _mm256_fmadd_ps(c6, a, b);
    c7 = _mm256_fmadd_ps(c7, a, b);
    c8 = _mm256_fmadd_ps(c8, a, b);
    c9 = _mm256_fmadd_ps(c9, a, b);
  }
  const __m256 sum =
      _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(_mm256_add_ps(c0, c1), _mm256_add_ps(c2, c3)),
                                  _mm256_add_ps(_mm256_add_ps(c4, c5), _mm256_add_ps(c6, c7))),
                    _mm256_add_ps(c8, c9));
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, sum);
  float total = 0;
  for (float lane : lanes) total += lane;
  return total;
}
#else
float fma_chains(uint64_t /*iterations*/) { return 0; }
#endif

std::atomic<float> g_fma_sink{0};  // keeps the chains' results alive

// GFLOP/s of one thread per cpu, all running at once: total FLOPs / wall time from the common
// start to the last thread's end.
Result<double> fma_gflops(const std::vector<unsigned>& cpus, uint64_t iterations) {
  std::atomic<bool> go{false};
  std::atomic<unsigned> ready{0};
  std::vector<uint64_t> end_ns(cpus.size(), 0);
  std::vector<Status> pinned(cpus.size());
  std::vector<std::thread> threads;
  for (size_t t = 0; t < cpus.size(); ++t) {
    threads.emplace_back([&, t] {
      pinned[t] = backends::pin_thread(pthread_self(), cpus[t]);
      ready.fetch_add(1);
      while (!go.load(std::memory_order_acquire)) std::this_thread::yield();
      g_fma_sink.store(fma_chains(iterations), std::memory_order_relaxed);
      end_ns[t] = now_ns();
    });
  }
  while (ready.load() < cpus.size()) std::this_thread::yield();
  const uint64_t start = now_ns();
  go.store(true, std::memory_order_release);
  for (std::thread& thread : threads) thread.join();
  for (const Status& s : pinned) RETURN_IF_ERROR(s);
  const uint64_t end = *std::max_element(end_ns.begin(), end_ns.end());
  const double flops = double(cpus.size()) * double(iterations) * kFlopsPerIteration;
  return flops / double(end - start);  // FLOP/ns = GFLOP/s
}

// The best of `trials` runs of about 0.1 s each.
Result<double> fma_best(const std::vector<unsigned>& cpus, int trials) {
  const uint64_t probe = 1'000'000;
  ASSIGN_OR_RETURN(double probe_gflops, fma_gflops({cpus[0]}, probe));
  const double per_iteration_ns = kFlopsPerIteration / probe_gflops;
  const auto iterations = uint64_t(0.1e9 / per_iteration_ns);
  double best = 0;
  for (int i = 0; i < trials; ++i) {
    ASSIGN_OR_RETURN(double gflops, fma_gflops(cpus, iterations));
    best = std::max(best, gflops);
  }
  return best;
}

// The peak is measured again after every batch: on a shared VM host the cores behind the vCPUs
// are not always fully ours (another guest on a core's other hardware thread is invisible to
// steal time), so T threads sometimes reach well under T times one thread's rate. The fractions
// use the best measurement of the run; the worst one is reported too.
class FmaPeak {
 public:
  explicit FmaPeak(std::vector<unsigned> cpus)
      : cpus_(std::move(cpus)), supported_(cpu_has_avx2_fma()) {
    if (!supported_) {
      std::fprintf(stderr,
                   "engine_bench: this cpu has no AVX2+FMA: FMA peak not measured, "
                   "fma_peak_gflops and the fractions are null\n");
    }
  }

  void measure(const char* when) {
    if (!supported_) return;
    auto one = fma_best({cpus_[0]}, 3);
    auto all = fma_best(cpus_, 5);
    if (!one || !all) {
      std::fprintf(stderr, "engine_bench: FMA peak not measured: %s\n",
                   (one ? all.status() : one.status()).to_string().c_str());
      return;
    }
    best_ = std::max(best_, *all);
    worst_ = worst_ > 0 ? std::min(worst_, *all) : *all;
    const double scaling = *all / *one;
    std::fprintf(stderr,
                 "engine_bench: FMA peak %s (AVX2, %d chains/thread): %.1f GFLOP/s on 1 thread "
                 "(%.2f GHz x 32 FLOP/cycle if 2 FMA pipes), %.1f GFLOP/s on %zu (x%.2f)%s\n",
                 when, kChains, *one, *one / 32.0, *all, cpus_.size(), scaling,
                 cpus_.size() > 1 && scaling < 0.75 * double(cpus_.size())
                     ? ": under 75% of linear scaling, the host is not giving us whole cores "
                       "right now"
                     : "");
  }

  double best() const { return best_; }    // 0: not measured
  double worst() const { return worst_; }  // 0: not measured

 private:
  std::vector<unsigned> cpus_;
  bool supported_;
  double best_ = 0;
  double worst_ = 0;
};

// ---- FLOPs of the model ----

struct FlopCount {
  double per_image = 0;  // FLOPs at batch 1
  int convs = 0;
  int gemms = 0;
  std::vector<int64_t> input_shape;   // at batch 1
  std::vector<int64_t> output_shape;  // at batch 1
};

int64_t product(std::span<const int64_t> dims) {
  int64_t p = 1;
  for (int64_t d : dims) p *= d;
  return p;
}

// Conv: 2 * N * Cout * Hout * Wout * (Cin / group) * kh * kw, i.e. 2 * |Y| * |W| / Cout;
// Gemm: 2 * M * N * K. Shapes from the engine's own loader and shape inference at batch 1.
Result<FlopCount> count_flops(const std::string& path) {
  ASSIGN_OR_RETURN(engine::Graph graph, engine::load_onnx_file(path));
  RETURN_IF_ERROR(engine::infer_shapes(graph, 1).with_context(path));
  if (graph.inputs.size() != 1 || graph.inputs[0].dtype != shm::DataType::kFp32 ||
      graph.outputs.size() != 1 || graph.outputs[0].dtype != shm::DataType::kFp32) {
    return Status(ErrorCode::kInvalidArgument, path + ": want one FP32 input and one FP32 output");
  }
  FlopCount count;
  count.input_shape = graph.inputs[0].shape;
  count.output_shape = graph.outputs[0].shape;
  auto shape = [&](const std::string& name) -> Result<std::vector<int64_t>> {
    const engine::ValueInfo* info = graph.find_value(name);
    if (info == nullptr || !info->has_shape) {
      return Status(ErrorCode::kInvalidArgument, "no shape for '" + name + "'");
    }
    return info->shape;
  };
  for (const engine::Node& node : graph.nodes) {
    if (node.op_type == "Conv") {
      ASSIGN_OR_RETURN(std::vector<int64_t> w, shape(node.inputs.at(1)));
      ASSIGN_OR_RETURN(std::vector<int64_t> y, shape(node.outputs.at(0)));
      if (w.size() < 3) return node.error("weights of rank < 3");
      count.per_image += 2.0 * double(product(y)) * double(product(std::span(w).subspan(1)));
      ++count.convs;
    } else if (node.op_type == "Gemm") {
      ASSIGN_OR_RETURN(std::vector<int64_t> a, shape(node.inputs.at(0)));
      ASSIGN_OR_RETURN(std::vector<int64_t> b, shape(node.inputs.at(1)));
      ASSIGN_OR_RETURN(int64_t trans_a, node.int_attr("transA", 0));
      ASSIGN_OR_RETURN(int64_t trans_b, node.int_attr("transB", 0));
      if (a.size() != 2 || b.size() != 2) return node.error("operands of rank != 2");
      const int64_t m = trans_a != 0 ? a[1] : a[0];
      const int64_t k = trans_a != 0 ? a[0] : a[1];
      const int64_t n = trans_b != 0 ? b[0] : b[1];
      count.per_image += 2.0 * double(m) * double(n) * double(k);
      ++count.gemms;
    }
  }
  return count;
}

// ---- the input and the outputs, as .npy files the PyTorch side reads ----

Status write_npy_f32(const std::string& path, std::span<const int64_t> shape,
                     std::span<const float> data) {
  std::string header = "{'descr': '<f4', 'fortran_order': False, 'shape': (";
  for (int64_t d : shape) header += std::to_string(d) + ", ";
  header += "), }";
  // Version 1.0: magic, version, uint16 header length; the header ends in '\n', padded with
  // spaces so that the data starts at a multiple of 64.
  const size_t prefix = 10;
  header.append((64 - (prefix + header.size() + 1) % 64) % 64, ' ');
  header += '\n';
  std::ofstream out(path, std::ios::binary);
  const char magic[] = {'\x93', 'N', 'U', 'M', 'P', 'Y', 1, 0};
  const auto length = uint16_t(header.size());
  const char length_bytes[2] = {char(length & 0xff), char(length >> 8)};
  out.write(magic, sizeof magic);
  out.write(length_bytes, 2);
  out.write(header.data(), std::streamsize(header.size()));
  out.write(reinterpret_cast<const char*>(data.data()), std::streamsize(data.size_bytes()));
  out.close();
  if (!out) return Status(ErrorCode::kInternal, "cannot write " + path);
  return Status::ok();
}

// Standard normal, seeded: the same input every run.
std::vector<float> random_input(size_t elements) {
  std::mt19937_64 rng(1);
  std::normal_distribution<float> normal(0.0F, 1.0F);
  std::vector<float> data(elements);
  for (float& v : data) v = normal(rng);
  return data;
}

// ---- the SliceServe side ----

int default_iters(int64_t batch, double warm_ms, const Options& o) {
  if (o.iters > 0) return o.iters;
  const int floor = batch == 1 || o.on_gpu() ? 20 : 10;
  const double fill = warm_ms > 0 ? std::ceil(o.min_time_s * 1000.0 / warm_ms) : 0;
  return std::max(floor, int(std::min(fill, 100000.0)));
}

std::string fmt_ms(double ms) {
  char text[32];
  std::snprintf(text, sizeof text, "%.2f ms", ms);
  return text;
}

std::string fmt_pct(double pct) {
  if (pct < 0) return "?";
  char text[32];
  std::snprintf(text, sizeof text, "%.1f%%", pct);
  return text;
}

void sleep_ms(int ms) {
  timespec t{time_t(ms / 1000), long(ms % 1000) * 1'000'000L};
  nanosleep(&t, nullptr);
}

// One batch size of the engine on the slice: the engine, the input and the output buffers.
class EngineSide {
 public:
  EngineSide(engine::Engine& eng, backends::Slice& slice, int64_t batch,
             const std::vector<float>& input, size_t output_elements)
      : eng_(eng), slice_(slice), batch_(batch), input_(input), output_(output_elements) {}

  Result<double> run_once() {
    const std::byte* in[] = {reinterpret_cast<const std::byte*>(input_.data())};
    std::byte* out[] = {reinterpret_cast<std::byte*>(output_.data())};
    const uint64_t t0 = now_ns();
    slice_.begin_batch();
    Status status = eng_.run(batch_, in, out, slice_);
    slice_.end_batch();
    const uint64_t t1 = now_ns();
    RETURN_IF_ERROR(status);
    return double(t1 - t0) / 1e6;
  }

  // As the PyTorch side does a round: a pause (the other side's OpenMP threads stop spinning),
  // one untimed run, then `iters` timed ones.
  Status round(int iters, SideSamples& into) {
    sleep_ms(50);
    RETURN_IF_ERROR(run_once().status());
    const CpuSample before = sample_cpu();
    for (int i = 0; i < iters; ++i) {
      ASSIGN_OR_RETURN(double ms, run_once());
      into.ms.push_back(ms);
    }
    into.add_interval(before, sample_cpu());
    return Status::ok();
  }

  const std::vector<float>& output() const { return output_; }

 private:
  engine::Engine& eng_;
  backends::Slice& slice_;
  int64_t batch_;
  const std::vector<float>& input_;
  std::vector<float> output_;
};

// ---- the PyTorch side: a child process answering "run B N" with one JSON line ----

class PytorchPeer {
 public:
  // Starts bench/engine_pytorch.py and waits until it has built the model (its start-up must
  // not overlap our timed runs). Lines it prints before that (the ONNX FLOP count) go to
  // `early`.
  static Result<std::unique_ptr<PytorchPeer>> start(const Options& o,
                                                    const std::vector<unsigned>& cpus,
                                                    const std::string& dir,
                                                    const cpu_set_t& process_mask,
                                                    std::vector<Json>& early);
  ~PytorchPeer();
  PytorchPeer(const PytorchPeer&) = delete;
  PytorchPeer& operator=(const PytorchPeer&) = delete;

  Result<Json> run(int64_t batch, int iters);
  // "quit", then its exit status.
  Status finish();

 private:
  PytorchPeer() = default;
  // The next JSON object line; other lines (oneDNN's verbose output) are passed to stderr.
  Result<Json> next_json();
  Status exited(const char* when);

  std::string what_;  // "python3 script", for errors
  pid_t pid_ = -1;
  int to_child_ = -1;
  int from_child_ = -1;
  std::string pending_;  // read, not yet consumed
};

Result<std::unique_ptr<PytorchPeer>> PytorchPeer::start(const Options& o,
                                                        const std::vector<unsigned>& cpus,
                                                        const std::string& dir,
                                                        const cpu_set_t& process_mask,
                                                        std::vector<Json>& early) {
  std::string cpu_list, places;
  for (unsigned cpu : cpus) {
    cpu_list += (cpu_list.empty() ? "" : ",") + std::to_string(cpu);
    places += (places.empty() ? "{" : ",{") + std::to_string(cpu) + "}";
  }
  std::vector<std::string> args = {o.python,    o.pytorch_script,
                                   "--model",   o.model_name,
                                   "--input",   dir + "/input.npy",
                                   "--warmup",  std::to_string(o.warmup),
                                   "--threads", std::to_string(cpus.size()),
                                   "--cpus",    cpu_list,
                                   "--compare", dir,
                                   "--onnx",    o.model_path,
                                   "--device",  o.pytorch_device,
                                   "--builder", o.pytorch_builder};
  // Debian's torch, not the user's: no user site-packages, no PYTHONPATH. The OpenMP team is
  // pinned one thread per cpu, as the engine's is.
  std::vector<std::string> env;
  for (char** e = environ; *e != nullptr; ++e) {
    const std::string_view entry = *e;
    const std::string_view key = entry.substr(0, entry.find('='));
    const bool python_key =
        key == "PYTHONPATH" || key == "PYTHONHOME" || key == "PYTHONNOUSERSITE";
    if ((python_key && !o.inherit_python_env) || key == "OMP_PLACES" || key == "OMP_PROC_BIND" ||
        key == "GOMP_CPU_AFFINITY") {
      continue;
    }
    env.emplace_back(entry);
  }
  if (!o.inherit_python_env) env.push_back("PYTHONNOUSERSITE=1");
  env.push_back("OMP_PROC_BIND=close");
  env.push_back("OMP_PLACES=" + places);
  std::vector<char*> argv_c, env_c;
  for (std::string& s : args) argv_c.push_back(s.data());
  argv_c.push_back(nullptr);
  for (std::string& s : env) env_c.push_back(s.data());
  env_c.push_back(nullptr);

  std::unique_ptr<PytorchPeer> peer(new PytorchPeer());
  peer->what_ = o.python + " " + o.pytorch_script;
  int in[2];
  int out[2];
  SS_SYSCALL(pipe2(in, O_CLOEXEC));
  if (pipe2(out, O_CLOEXEC) == -1) {
    const int err = errno;
    close(in[0]);
    close(in[1]);
    return errno_status("pipe2()", err, __FILE__, __LINE__);
  }
  const pid_t pid = fork();
  if (pid == 0) {
    // Only async-signal-safe calls between fork and exec. dup2 clears O_CLOEXEC on 0 and 1.
    dup2(in[0], STDIN_FILENO);
    dup2(out[1], STDOUT_FILENO);
    sched_setaffinity(0, sizeof process_mask, &process_mask);
    execve(argv_c[0], argv_c.data(), env_c.data());
    _exit(127);
  }
  const int fork_errno = errno;
  close(in[0]);
  close(out[1]);
  peer->to_child_ = in[1];
  peer->from_child_ = out[0];
  if (pid == -1) return errno_status("fork()", fork_errno, __FILE__, __LINE__);
  peer->pid_ = pid;
  for (;;) {
    ASSIGN_OR_RETURN(Json line, peer->next_json());
    if (line.value("side", "") == "ready") break;
    early.push_back(std::move(line));
  }
  return peer;
}

PytorchPeer::~PytorchPeer() {
  if (to_child_ >= 0) close(to_child_);
  if (from_child_ >= 0) close(from_child_);
  if (pid_ > 0) {
    // Its stdin is closed: it exits on its own; a hung one is stopped.
    for (int i = 0; i < 100 && waitpid(pid_, nullptr, WNOHANG) == 0; ++i) sleep_ms(20);
    if (waitpid(pid_, nullptr, WNOHANG) == 0) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
  }
}

Status PytorchPeer::exited(const char* when) {
  int status = 0;
  if (pid_ > 0 && waitpid(pid_, &status, 0) == pid_) pid_ = -1;
  const int code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  std::string why = what_ + " " + when + ", exit status " + std::to_string(code);
  if (code == 127) why += " (cannot execute it)";
  if (code == 3) why += " (torch, torchvision or numpy missing: run scripts/install-deps)";
  if (code == 4) why += " (PyTorch sees no CUDA device)";
  return Status(ErrorCode::kUnavailable, why);
}

Result<Json> PytorchPeer::next_json() {
  for (;;) {
    const size_t newline = pending_.find('\n');
    if (newline != std::string::npos) {
      const std::string line = pending_.substr(0, newline);
      pending_.erase(0, newline + 1);
      Json parsed = Json::parse(line, nullptr, /*allow_exceptions=*/false);
      if (!parsed.is_discarded() && parsed.is_object()) return parsed;
      if (!line.empty()) std::fprintf(stderr, "%s\n", line.c_str());
      continue;
    }
    char buffer[4096];
    const ssize_t n = read(from_child_, buffer, sizeof buffer);
    if (n > 0) {
      pending_.append(buffer, size_t(n));
    } else if (n == 0) {
      return exited("stopped early");
    } else if (errno != EINTR) {
      return errno_status("read()", errno, __FILE__, __LINE__);
    }
  }
}

Result<Json> PytorchPeer::run(int64_t batch, int iters) {
  const std::string command = "run " + std::to_string(batch) + " " + std::to_string(iters) + "\n";
  if (write(to_child_, command.data(), command.size()) != ssize_t(command.size())) {
    return exited("does not take commands");
  }
  for (;;) {
    ASSIGN_OR_RETURN(Json line, next_json());
    if (line.value("side", "") == "pytorch" && line.value("batch", int64_t{0}) == batch &&
        line.contains("samples_ms")) {
      return line;
    }
  }
}

Status PytorchPeer::finish() {
  static constexpr char kQuit[] = "quit\n";
  if (write(to_child_, kQuit, sizeof kQuit - 1) < 0) {
    // It may be gone already; its exit status tells.
  }
  close(to_child_);
  to_child_ = -1;
  int status = 0;
  SS_SYSCALL(waitpid(pid_, &status, 0));
  pid_ = -1;
  if (WIFEXITED(status) && WEXITSTATUS(status) == 0) return Status::ok();
  const int code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  return Status(ErrorCode::kInternal, what_ + " exited with " + std::to_string(code));
}

// ---- one batch size, both sides ----

struct BatchResult {
  Timing ours;
  std::optional<Timing> theirs;
  std::optional<Timing> theirs_device_only;  // PyTorch on a GPU, input already there
  std::optional<double> max_abs_diff;
  std::optional<double> ref_absmax;
};

Timing timing_of(const SideSamples& side) {
  Timing t = summarize(side.ms);
  t.other_cpu_pct = side.other_cpu_pct();
  return t;
}

Result<BatchResult> run_batch(const Options& o, int64_t batch, const std::vector<float>& input,
                              const FlopCount& model, backends::Slice& slice,
                              std::unique_ptr<engine::Engine>& shared, PytorchPeer* peer,
                              const std::string& dir) {
  std::unique_ptr<engine::Engine> own;
  engine::Engine* eng = shared.get();
  // The batch index run() takes: 0 for an engine built at one fixed batch (below).
  int64_t run_index = batch;
  if (eng == nullptr) {
    const int64_t max_batch = o.engine_max_batch > 0 ? o.engine_max_batch : batch;
    const uint64_t t0 = now_ns();
    if (o.on_gpu() && o.engine_max_batch == 0) {
      // On a GPU one plan at exactly this batch: the CUDA executor runs cuDNN's algorithm search
      // for every convolution of every plan at load, so plans for 1..B would cost B searches.
      ASSIGN_OR_RETURN(engine::Graph graph, engine::load_onnx_file(o.model_path));
      for (engine::ValueInfo& in : graph.inputs) {
        if (!in.has_shape || in.shape.empty()) {
          return Status(ErrorCode::kInvalidArgument, "input '" + in.name + "' has no shape");
        }
        in.shape[0] = batch;
      }
      ASSIGN_OR_RETURN(own, engine::Engine::load_graph(std::move(graph),
                                                       {.max_batch = 0,
                                                        .device = o.device,
                                                        .threads = slice.concurrency()}));
      run_index = 0;
    } else {
      ASSIGN_OR_RETURN(own, engine::Engine::load_file(
                                o.model_path, {.max_batch = max_batch,
                                               .device = o.device,
                                               .threads = slice.concurrency()}));
    }
    std::fprintf(stderr,
                 "engine_bench: engine loaded on %s with %s %" PRId64 " in %.1f s\n",
                 o.device.c_str(), run_index == 0 ? "one plan at batch" : "max_batch",
                 run_index == 0 ? batch : max_batch, double(now_ns() - t0) / 1e9);
    eng = own.get();
    if (o.engine_max_batch > 0) shared = std::move(own);
  }
  const int64_t in_elements = product(model.input_shape) * batch;
  const int64_t out_elements = product(model.output_shape) * batch;
  if (product(eng->input_shape(0, run_index)) != in_elements ||
      product(eng->output_shape(0, run_index)) != out_elements ||
      int64_t(input.size()) < in_elements) {
    return Status(ErrorCode::kInvalidArgument, "the engine's shapes are not the graph's");
  }
  EngineSide side(*eng, slice, run_index, input, size_t(out_elements));

  // Warm-up; its median sizes the timed runs (--min-time) for both sides.
  std::vector<double> warm;
  for (int i = 0; i < std::max(1, o.warmup); ++i) {
    ASSIGN_OR_RETURN(double ms, side.run_once());
    warm.push_back(ms);
  }
  const double warm_ms = summarize(warm).p50_ms;
  RETURN_IF_ERROR(write_npy_f32(dir + "/output-" + std::to_string(batch) + ".npy",
                                eng->output_shape(0, run_index), side.output()));
  const int iters = default_iters(batch, warm_ms, o);
  const int per_round = (iters + o.rounds - 1) / o.rounds;
  std::fprintf(stderr,
               "engine_bench: batch %" PRId64
               ": sliceserve warm-up %.2f ms (p50 of %zu); %d rounds of %d timed runs per side\n",
               batch, warm_ms, warm.size(), o.rounds, per_round);

  SideSamples ours, theirs, theirs_device_only;
  BatchResult result;
  for (int r = 0; r < o.rounds; ++r) {
    RETURN_IF_ERROR(side.round(per_round, ours));
    if (peer == nullptr) continue;
    ASSIGN_OR_RETURN(Json line, peer->run(batch, per_round));
    for (const Json& ms : line["samples_ms"]) theirs.ms.push_back(ms.get<double>());
    if (line.contains("device_only_samples_ms")) {
      for (const Json& ms : line["device_only_samples_ms"]) {
        theirs_device_only.ms.push_back(ms.get<double>());
      }
    }
    theirs.other_cpu_s += line.value("other_cpu_s", 0.0);
    theirs.machine_cpu_s += line.value("machine_cpu_s", 0.0);
    if (line.contains("max_abs_diff")) result.max_abs_diff = line["max_abs_diff"].get<double>();
    if (line.contains("ref_absmax")) result.ref_absmax = line["ref_absmax"].get<double>();
  }
  result.ours = timing_of(ours);
  if (peer != nullptr) result.theirs = timing_of(theirs);
  if (!theirs_device_only.ms.empty()) result.theirs_device_only = timing_of(theirs_device_only);
  std::string line = "engine_bench: batch " + std::to_string(batch) + ": sliceserve p50 " +
                     fmt_ms(result.ours.p50_ms) + " (min " + fmt_ms(result.ours.min_ms) + ")";
  if (result.theirs) {
    line += ", pytorch p50 " + fmt_ms(result.theirs->p50_ms) + " (min " +
            fmt_ms(result.theirs->min_ms) + ")";
  }
  line += "; other processes used " + fmt_pct(result.ours.other_cpu_pct);
  if (result.theirs) line += " / " + fmt_pct(result.theirs->other_cpu_pct);
  std::fprintf(stderr, "%s of the machine meanwhile\n", line.c_str());
  return result;
}

// ---- report ----

Json side_fields(const char* side, const std::optional<Timing>& t, int64_t batch, double gflop) {
  Json j;
  const std::string s = side;
  if (!t) {
    j[s + "_images_per_s"] = nullptr;
    return j;
  }
  j[s + "_images_per_s"] = round_to(double(batch) * 1000.0 / t->mean_ms, 2);
  j[s + "_p99_ms"] = round_to(t->p99_ms, 3);
  j[s + "_min_ms"] = round_to(t->min_ms, 3);
  j[s + "_mean_ms"] = round_to(t->mean_ms, 3);
  j[s + "_gflops"] = round_to(gflop / (t->p50_ms / 1000.0), 2);
  j[s + "_other_cpu_pct"] =
      t->other_cpu_pct >= 0 ? Json(round_to(t->other_cpu_pct, 1)) : Json(nullptr);
  return j;
}

int run(const Options& o) {
  std::signal(SIGPIPE, SIG_IGN);  // a PyTorch side that died is seen by its exit status
  auto machine = backends::process_cpus();
  if (!machine) {
    std::fprintf(stderr, "engine_bench: %s\n", machine.status().to_string().c_str());
    return 1;
  }
  cpu_set_t process_mask;
  CPU_ZERO(&process_mask);
  for (unsigned cpu : *machine) CPU_SET(cpu, &process_mask);
  const auto cores = unsigned(machine->size());
  // On a GPU the engine's host side is one thread (the CUDA executor launches from it).
  const unsigned threads = o.threads > 0 ? o.threads : o.on_gpu() ? 1 : cores;
  if (threads > cores) {
    std::fprintf(stderr, "engine_bench: --threads %u: this process may run on %u cpus only\n",
                 threads, cores);
    return 2;
  }
  if (!std::filesystem::exists(o.model_path)) {
    std::fprintf(stderr,
                 "engine_bench: %s not found (scripts/models %s builds torchvision models)\n",
                 o.model_path.c_str(), o.model_name.c_str());
    return 2;
  }
  std::fprintf(stderr, "engine_bench: %s (%s), batches", o.model_path.c_str(),
               o.model_name.c_str());
  for (int64_t b : o.batches) std::fprintf(stderr, " %" PRId64, b);
  std::fprintf(stderr, ", %u of %u cpus, engine on %s, PyTorch on %s, load average %s\n",
               threads, cores, o.device.c_str(), o.pytorch_device.c_str(),
               load_average().c_str());

  // The slice first: its cpus are the ones the FMA peak, the engine and PyTorch use.
  auto slice = backends::create_cpu_slice({.percent = 100.0 * threads / cores});
  if (!slice) {
    std::fprintf(stderr, "engine_bench: cpu slice: %s\n", slice.status().to_string().c_str());
    return 1;
  }
  const std::vector<unsigned> cpus = (*slice)->host_cpus();
  if ((*slice)->concurrency() != threads || (*slice)->info().duty != 1.0) {
    std::fprintf(stderr, "engine_bench: the slice has %u threads at duty %.2f, not %u at 1\n",
                 (*slice)->concurrency(), (*slice)->info().duty, threads);
    return 1;
  }
  std::fprintf(stderr, "engine_bench: slice %s\n", (*slice)->info().placement.c_str());

  // The FMA peak is the cpus'; on a GPU it says nothing about the engine.
  std::optional<FmaPeak> peak_of_cpus;
  if (!o.on_gpu()) peak_of_cpus.emplace(cpus);
  FmaPeak* measured = peak_of_cpus ? &*peak_of_cpus : nullptr;
  auto measure_peak = [&](const char* when) {
    if (measured != nullptr) measured->measure(when);
  };
  auto best_peak = [&] { return measured != nullptr ? measured->best() : 0.0; };
  auto worst_peak = [&] { return measured != nullptr ? measured->worst() : 0.0; };
  measure_peak("at start");
  if (o.peak_only) {
    Json j;
    j["bench"] = "fma_peak";
    j["threads"] = threads;
    j["fma_peak_gflops"] = best_peak() > 0 ? Json(round_to(best_peak(), 1)) : Json(nullptr);
    std::printf("%s\n", j.dump().c_str());
    return best_peak() > 0 ? 0 : 1;
  }

  auto flops = count_flops(o.model_path);
  if (!flops) {
    std::fprintf(stderr, "engine_bench: %s\n", flops.status().to_string().c_str());
    return 1;
  }
  std::fprintf(stderr, "engine_bench: %.3f GFLOP per image (%d Conv, %d Gemm), input [",
               flops->per_image / 1e9, flops->convs, flops->gemms);
  for (size_t i = 0; i < flops->input_shape.size(); ++i) {
    std::fprintf(stderr, "%s%" PRId64, i == 0 ? "" : ",", flops->input_shape[i]);
  }
  std::fprintf(stderr, "]\n");

  char dir_template[] = "/tmp/engine_bench.XXXXXX";
  if (mkdtemp(dir_template) == nullptr) {
    std::fprintf(stderr, "engine_bench: mkdtemp: %s\n", std::strerror(errno));
    return 1;
  }
  const std::string dir = dir_template;
  struct RemoveDir {
    std::string path;
    ~RemoveDir() {
      std::error_code ec;
      std::filesystem::remove_all(path, ec);
    }
  } remove_dir{dir};

  const int64_t max_batch = *std::max_element(o.batches.begin(), o.batches.end());
  std::vector<int64_t> input_shape = flops->input_shape;
  const auto item_elements = size_t(product(input_shape));
  input_shape[0] = max_batch;
  const std::vector<float> input = random_input(item_elements * size_t(max_batch));
  if (Status s = write_npy_f32(dir + "/input.npy", input_shape, input); !s) {
    std::fprintf(stderr, "engine_bench: %s\n", s.to_string().c_str());
    return 1;
  }

  int rc = 0;
  std::unique_ptr<PytorchPeer> peer;
  if (o.pytorch) {
    std::fprintf(stderr, "engine_bench: starting the PyTorch side (%s %s)\n", o.python.c_str(),
                 o.pytorch_script.c_str());
    std::vector<Json> early;
    auto started = PytorchPeer::start(o, cpus, dir, process_mask, early);
    if (!started) {
      std::fprintf(stderr, "engine_bench: pytorch: %s\n", started.status().to_string().c_str());
      return 1;
    }
    peer = std::move(*started);
    for (const Json& line : early) {
      if (line.value("side", "") != "onnx") continue;
      const double onnx = line.value("gflop_per_image", 0.0) * 1e9;
      const bool same = std::abs(onnx - flops->per_image) <= 1e-6 * flops->per_image;
      std::fprintf(stderr,
                   "engine_bench: FLOPs from onnx shape inference: %.3f GFLOP per image (%s)\n",
                   onnx / 1e9, same ? "the same" : "DIFFERENT from the engine graph's count");
    }
  }

  std::unique_ptr<engine::Engine> shared;
  for (int64_t batch : o.batches) {
    auto result = run_batch(o, batch, input, *flops, **slice, shared, peer.get(), dir);
    if (!result) {
      std::fprintf(stderr, "engine_bench: batch %" PRId64 ": %s\n", batch,
                   result.status().to_string().c_str());
      return 1;
    }
    measure_peak(("after batch " + std::to_string(batch)).c_str());
    const Timing& ours = result->ours;
    const std::optional<Timing>& theirs = result->theirs;
    const double gflop = flops->per_image * double(batch) / 1e9;
    auto fraction = [&](const Timing& t) {
      return round_to(gflop / (t.p50_ms / 1000.0) / best_peak(), 3);
    };
    const bool has_peak = best_peak() > 0;
    Json j;
    j["bench"] = "engine";
    j["model"] = o.model_name;
    j["batch"] = batch;
    j["threads"] = threads;
    j["device"] = o.device;
    j["pytorch_device"] = o.pytorch_device;
    j["pytorch_mode"] = o.pytorch_device == "cuda" ? "eager+cudnn.benchmark" : "torchscript-frozen";
    j["sliceserve_ms"] = round_to(ours.p50_ms, 3);
    j["pytorch_ms"] = theirs ? Json(round_to(theirs->p50_ms, 3)) : Json(nullptr);
    j["iters"] = ours.iters;
    j["rounds"] = o.rounds;
    j.update(side_fields("sliceserve", ours, batch, gflop));
    j.update(side_fields("pytorch", theirs, batch, gflop));
    j["gflop"] = round_to(gflop, 3);
    j["fma_peak_gflops"] = has_peak ? Json(round_to(best_peak(), 1)) : Json(nullptr);
    j["fma_peak_gflops_min"] = has_peak ? Json(round_to(worst_peak(), 1)) : Json(nullptr);
    j["fma_peak_fraction"] = has_peak ? Json(fraction(ours)) : Json(nullptr);
    j["pytorch_fma_peak_fraction"] = has_peak && theirs ? Json(fraction(*theirs)) : Json(nullptr);
    j["max_abs_diff"] = result->max_abs_diff ? Json(*result->max_abs_diff) : Json(nullptr);
    if (result->theirs && result->theirs_device_only) {
      // PyTorch with its input already on the GPU and no copy back: the model alone.
      j["pytorch_device_only_ms"] = round_to(result->theirs_device_only->p50_ms, 3);
      j["pytorch_device_only_images_per_s"] =
          round_to(double(batch) * 1000.0 / result->theirs_device_only->mean_ms, 2);
    }
    if (result->theirs) {
      j["speedup_vs_pytorch"] = round_to(result->theirs->p50_ms / ours.p50_ms, 3);
    }
    std::printf("%s\n", j.dump().c_str());
    std::fflush(stdout);
    // On a GPU both sides may use TF32 in cuDNN: 1e-2 of the largest output, else 1e-3.
    const double tolerance = o.on_gpu() || o.pytorch_device == "cuda" ? 1e-2 : 1e-3;
    if (result->max_abs_diff && result->ref_absmax &&
        *result->max_abs_diff > tolerance * std::max(1.0, *result->ref_absmax)) {
      std::fprintf(stderr,
                   "engine_bench: batch %" PRId64
                   ": the outputs differ by %g (|max| %g): the two sides do not compute the "
                   "same function\n",
                   batch, *result->max_abs_diff, *result->ref_absmax);
      rc = 1;
    }
  }
  if (peer) {
    if (Status s = peer->finish(); !s) {
      std::fprintf(stderr, "engine_bench: pytorch: %s\n", s.to_string().c_str());
      rc = 1;
    }
  }
  std::fprintf(stderr, "engine_bench: done, load average %s\n", load_average().c_str());
  return rc;
}

}  // namespace
}  // namespace sliceserve::bench

int main(int argc, char** argv) {
  using namespace sliceserve::bench;
  auto options = parse_options(argc, argv);
  if (!options) {
    std::fprintf(stderr, "engine_bench: %s\n", options.status().to_string().c_str());
    print_usage(stderr);
    return 2;
  }
  return run(*options);
}
