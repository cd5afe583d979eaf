// engine_bench: an ONNX CNN (ResNet-50 by default) through the SliceServe engine and through
// PyTorch's frozen TorchScript (bench/engine_pytorch.py, a child process), one side after the
// other, with the same thread count, the same cpus and the same random input. Also measures the
// machine's FP32 FMA peak (AVX2) on those cpus and counts the model's FLOPs from its graph.
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

// Percent of the machine's CPU time between two samples that was not this process's.
double other_cpu_pct(const CpuSample& a, const CpuSample& b) {
  const double total = b.total_s - a.total_s;
  if (!a.ok || !b.ok || total <= 0) return -1;
  const double others = (b.busy_s - a.busy_s) - (b.self_s - a.self_s);
  return std::clamp(100.0 * others / total, 0.0, 100.0);
}

// ---- options ----

struct Options {
  std::string model_path = SLICESERVE_SOURCE_DIR "/models/resnet50.onnx";
  std::string model_name;  // torchvision name; default: the file name up to '-' or '.'
  std::vector<int64_t> batches{1, 8};
  unsigned threads = 0;  // 0: every cpu this process may run on
  int warmup = 5;
  int iters = 0;  // 0: at least 20 (batch 1) / 10, extended to --min-time
  double min_time_s = 3.0;
  int64_t engine_max_batch = 0;  // 0: one engine per batch, built with max_batch = batch
  bool pytorch = true;
  std::string python = "/usr/bin/python3";
  std::string pytorch_script = SLICESERVE_SOURCE_DIR "/bench/engine_pytorch.py";
};

void print_usage(std::FILE* out) {
  std::fprintf(
      out,
      "usage: engine_bench [options]\n"
      "An ONNX CNN (default ResNet-50) through the SliceServe engine (oneDNN executor, a cpu\n"
      "slice of --threads cores) and through PyTorch's frozen TorchScript (torch.jit.trace +\n"
      "torch.jit.freeze, bench/engine_pytorch.py under /usr/bin/python3), one after the other,\n"
      "same threads, same cpus, same random input; plus the machine's AVX2 FMA peak on those\n"
      "cpus. One JSON line per batch on stdout, progress on stderr.\n\n"
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
      "  --engine-max-batch N  build one engine with max_batch N for all batches (default: one\n"
      "                        engine per batch, max_batch = the batch)\n"
      "  --no-pytorch          SliceServe side only (pytorch fields are null)\n"
      "  --python PATH         the interpreter for the PyTorch side (default /usr/bin/python3)\n"
      "  --pytorch-script PATH (default bench/engine_pytorch.py of the source tree)\n"
      "  --help                this text\n");
}

template <typename T>
bool parse_number(std::string_view text, T& out) {
  const char* end = text.data() + text.size();
  const auto [ptr, ec] = std::from_chars(text.data(), end, out);
  return ec == std::errc() && ptr == end;
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
  for (int i = 1; i < argc; ++i) {
    std::string_view arg = argv[i];
    std::string_view value;
    bool has_value = false;
    if (const size_t eq = arg.find('='); arg.starts_with("--") && eq != std::string_view::npos) {
      value = arg.substr(eq + 1);
      arg = arg.substr(0, eq);
      has_value = true;
    }
    auto next_value = [&]() -> bool {
      if (has_value) return true;
      if (i + 1 >= argc) return false;
      value = argv[++i];
      return true;
    };
    auto bad = [&](std::string_view why) {
      return Status(ErrorCode::kInvalidArgument, std::string(arg) + ": " + std::string(why));
    };
    bool ok = true;
    if (arg == "--help" || arg == "-h") {
      print_usage(stdout);
      std::exit(0);
    } else if (arg == "--model" || arg == "--name" || arg == "--python" ||
               arg == "--pytorch-script" || arg == "--batches") {
      if (!next_value() || value.empty()) return bad("needs a value");
      if (arg == "--model") o.model_path = value;
      if (arg == "--name") o.model_name = value;
      if (arg == "--python") o.python = value;
      if (arg == "--pytorch-script") o.pytorch_script = value;
      if (arg == "--batches") {
        ASSIGN_OR_RETURN(o.batches, parse_batches(value));
      }
    } else if (arg == "--threads") {
      ok = next_value() && parse_number(value, o.threads) && o.threads > 0;
    } else if (arg == "--warmup") {
      ok = next_value() && parse_number(value, o.warmup) && o.warmup >= 0;
    } else if (arg == "--iters") {
      ok = next_value() && parse_number(value, o.iters) && o.iters > 0;
    } else if (arg == "--min-time") {
      ok = next_value() && parse_number(value, o.min_time_s) && o.min_time_s >= 0;
    } else if (arg == "--engine-max-batch") {
      ok = next_value() && parse_number(value, o.engine_max_batch) && o.engine_max_batch > 0 &&
           o.engine_max_batch <= 4096;
    } else if (arg == "--no-pytorch") {
      o.pytorch = false;
    } else {
      return Status(ErrorCode::kInvalidArgument, "unknown option " + std::string(arg));
    }
    if (!ok) return bad("needs a valid number");
  }
  if (o.engine_max_batch > 0 &&
      *std::max_element(o.batches.begin(), o.batches.end()) > o.engine_max_batch) {
    return Status(ErrorCode::kInvalidArgument, "--engine-max-batch is below the largest batch");
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

// The best of `trials` runs of about 0.25 s each.
Result<double> fma_peak(const std::vector<unsigned>& cpus, int trials) {
  const uint64_t probe = 2'000'000;
  ASSIGN_OR_RETURN(double probe_gflops, fma_gflops({cpus[0]}, probe));
  const double per_iteration_ns = kFlopsPerIteration / probe_gflops;
  const auto iterations = uint64_t(0.25e9 / per_iteration_ns);
  double best = 0;
  for (int i = 0; i < trials; ++i) {
    ASSIGN_OR_RETURN(double gflops, fma_gflops(cpus, iterations));
    best = std::max(best, gflops);
  }
  return best;
}

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
  const int floor = batch == 1 ? 20 : 10;
  const double fill = warm_ms > 0 ? std::ceil(o.min_time_s * 1000.0 / warm_ms) : 0;
  return std::max(floor, int(std::min(fill, 100000.0)));
}

Result<Timing> time_engine(engine::Engine& eng, backends::Slice& slice, int64_t batch,
                           const std::vector<float>& input, std::vector<float>& output,
                           const Options& o) {
  const std::byte* in[] = {reinterpret_cast<const std::byte*>(input.data())};
  std::byte* out[] = {reinterpret_cast<std::byte*>(output.data())};
  auto run_once = [&]() -> Result<double> {
    const uint64_t t0 = now_ns();
    slice.begin_batch();
    Status status = eng.run(batch, in, out, slice);
    slice.end_batch();
    const uint64_t t1 = now_ns();
    RETURN_IF_ERROR(status);
    return double(t1 - t0) / 1e6;
  };
  std::vector<double> warm;
  for (int i = 0; i < o.warmup; ++i) {
    ASSIGN_OR_RETURN(double ms, run_once());
    warm.push_back(ms);
  }
  if (warm.empty()) {
    ASSIGN_OR_RETURN(double ms, run_once());  // one untimed run to size --min-time
    warm.push_back(ms);
  }
  const double warm_ms = summarize(warm).p50_ms;
  const int iters = default_iters(batch, warm_ms, o);
  std::fprintf(stderr,
               "engine_bench: sliceserve batch %" PRId64
               ": warm-up %.2f ms (p50 of %zu), %d timed runs\n",
               batch, warm_ms, warm.size(), iters);
  std::vector<double> samples;
  samples.reserve(size_t(iters));
  const CpuSample before = sample_cpu();
  for (int i = 0; i < iters; ++i) {
    ASSIGN_OR_RETURN(double ms, run_once());
    samples.push_back(ms);
  }
  Timing timing = summarize(std::move(samples));
  timing.other_cpu_pct = other_cpu_pct(before, sample_cpu());
  return timing;
}

// One batch through the engine: loads it (max_batch = batch, or --engine-max-batch once into
// `shared`), times it, and writes its output for the PyTorch side to compare.
Result<Timing> run_sliceserve(const Options& o, int64_t batch, const std::vector<float>& input,
                              const FlopCount& model, backends::Slice& slice,
                              std::unique_ptr<engine::Engine>& shared, const std::string& dir) {
  std::unique_ptr<engine::Engine> own;
  engine::Engine* eng = shared.get();
  if (eng == nullptr) {
    const int64_t max_batch = o.engine_max_batch > 0 ? o.engine_max_batch : batch;
    const uint64_t t0 = now_ns();
    ASSIGN_OR_RETURN(own, engine::Engine::load_file(o.model_path, {.max_batch = max_batch}));
    std::fprintf(stderr, "engine_bench: engine loaded with max_batch %" PRId64 " in %.1f s\n",
                 max_batch, double(now_ns() - t0) / 1e9);
    eng = own.get();
    if (o.engine_max_batch > 0) shared = std::move(own);
  }
  const int64_t in_elements = product(model.input_shape) * batch;
  const int64_t out_elements = product(model.output_shape) * batch;
  if (product(eng->input_shape(0, batch)) != in_elements ||
      product(eng->output_shape(0, batch)) != out_elements || int64_t(input.size()) < in_elements) {
    return Status(ErrorCode::kInvalidArgument, "the engine's shapes are not the graph's");
  }
  std::vector<float> output(static_cast<size_t>(out_elements));
  ASSIGN_OR_RETURN(Timing timing, time_engine(*eng, slice, batch, input, output, o));
  std::fprintf(stderr,
               "engine_bench: sliceserve batch %" PRId64
               ": p50 %.2f ms, min %.2f ms; other processes used %.1f%% of the machine meanwhile\n",
               batch, timing.p50_ms, timing.min_ms, timing.other_cpu_pct);
  RETURN_IF_ERROR(write_npy_f32(dir + "/output-" + std::to_string(batch) + ".npy",
                                eng->output_shape(0, batch), output));
  return timing;
}

// ---- the PyTorch side: a child process, one JSON line per batch on its stdout ----

Result<std::vector<Json>> run_pytorch(const Options& o, int64_t batch, int iters, bool count_flops,
                                      const std::vector<unsigned>& cpus, const std::string& dir,
                                      const cpu_set_t& process_mask) {
  const std::string runs = std::to_string(batch) + ":" + std::to_string(iters);
  std::string cpu_list, places;
  for (unsigned cpu : cpus) {
    cpu_list += (cpu_list.empty() ? "" : ",") + std::to_string(cpu);
    places += (places.empty() ? "{" : ",{") + std::to_string(cpu) + "}";
  }
  std::vector<std::string> args = {o.python,    o.pytorch_script,
                                   "--model",   o.model_name,
                                   "--input",   dir + "/input.npy",
                                   "--runs",    runs,
                                   "--warmup",  std::to_string(o.warmup),
                                   "--threads", std::to_string(cpus.size()),
                                   "--cpus",    cpu_list,
                                   "--compare", dir};
  if (count_flops) {
    args.push_back("--onnx");
    args.push_back(o.model_path);
  }
  // Debian's torch, not the user's: no user site-packages, no PYTHONPATH. The OpenMP team is
  // pinned one thread per cpu, as the engine's is.
  std::vector<std::string> env;
  for (char** e = environ; *e != nullptr; ++e) {
    const std::string_view entry = *e;
    const std::string_view key = entry.substr(0, entry.find('='));
    if (key == "PYTHONPATH" || key == "PYTHONHOME" || key == "PYTHONNOUSERSITE" ||
        key == "OMP_PLACES" || key == "OMP_PROC_BIND" || key == "GOMP_CPU_AFFINITY") {
      continue;
    }
    env.emplace_back(entry);
  }
  env.push_back("PYTHONNOUSERSITE=1");
  env.push_back("OMP_PROC_BIND=close");
  env.push_back("OMP_PLACES=" + places);
  std::vector<char*> argv_c, env_c;
  for (std::string& s : args) argv_c.push_back(s.data());
  argv_c.push_back(nullptr);
  for (std::string& s : env) env_c.push_back(s.data());
  env_c.push_back(nullptr);

  int fds[2];
  SS_SYSCALL(pipe2(fds, O_CLOEXEC));
  const pid_t pid = fork();
  if (pid == -1) {
    const int err = errno;
    close(fds[0]);
    close(fds[1]);
    return errno_status("fork()", err, __FILE__, __LINE__);
  }
  if (pid == 0) {
    // Only async-signal-safe calls between fork and exec.
    dup2(fds[1], STDOUT_FILENO);
    sched_setaffinity(0, sizeof process_mask, &process_mask);
    execve(argv_c[0], argv_c.data(), env_c.data());
    _exit(127);
  }
  close(fds[1]);
  std::string text;
  char buffer[4096];
  for (;;) {
    const ssize_t n = read(fds[0], buffer, sizeof buffer);
    if (n > 0) {
      text.append(buffer, size_t(n));
    } else if (n == 0 || errno != EINTR) {
      break;
    }
  }
  close(fds[0]);
  int status = 0;
  SS_SYSCALL(waitpid(pid, &status, 0));
  std::vector<Json> lines;
  size_t start = 0;
  while (start < text.size()) {
    size_t end = text.find('\n', start);
    if (end == std::string::npos) end = text.size();
    const std::string line = text.substr(start, end - start);
    start = end + 1;
    if (line.empty()) continue;
    Json parsed = Json::parse(line, nullptr, /*allow_exceptions=*/false);
    // oneDNN's verbose mode (ONEDNN_VERBOSE=1) prints to the same stdout: pass it on.
    if (parsed.is_discarded() || !parsed.is_object()) {
      std::fprintf(stderr, "%s\n", line.c_str());
      continue;
    }
    lines.push_back(std::move(parsed));
  }
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    const int code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    std::string why = o.python + " " + o.pytorch_script + " failed with " + std::to_string(code);
    if (code == 127) why += " (cannot execute " + o.python + ")";
    if (code == 3) why += " (torch, torchvision or numpy missing: run scripts/install-deps)";
    return Status(ErrorCode::kUnavailable, why);
  }
  return lines;
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

std::optional<Timing> timing_from(const Json& line) {
  if (!line.contains("p50_ms") || !line.contains("iters")) return std::nullopt;
  Timing t;
  t.iters = line.value("iters", 0);
  t.p50_ms = line.value("p50_ms", 0.0);
  t.p99_ms = line.value("p99_ms", 0.0);
  t.min_ms = line.value("min_ms", 0.0);
  t.mean_ms = line.value("mean_ms", 0.0);
  t.other_cpu_pct = line.value("other_cpu_pct", -1.0);
  return t;
}

int run(const Options& o) {
  auto machine = backends::process_cpus();
  if (!machine) {
    std::fprintf(stderr, "engine_bench: %s\n", machine.status().to_string().c_str());
    return 1;
  }
  cpu_set_t process_mask;
  CPU_ZERO(&process_mask);
  for (unsigned cpu : *machine) CPU_SET(cpu, &process_mask);
  const auto cores = unsigned(machine->size());
  const unsigned threads = o.threads > 0 ? o.threads : cores;
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
  std::fprintf(stderr, ", %u of %u cpus, load average %s\n", threads, cores,
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

  double peak = 0;
  double peak_one = 0;
  if (cpu_has_avx2_fma()) {
    auto one = fma_peak({cpus[0]}, 3);
    auto all = fma_peak(cpus, 5);
    if (one && all) {
      peak_one = *one;
      peak = *all;
      std::fprintf(stderr,
                   "engine_bench: FMA peak (AVX2, %d chains/thread): %.1f GFLOP/s on 1 thread "
                   "(%.2f GHz x 32 FLOP/cycle if 2 FMA pipes), %.1f GFLOP/s on %u\n",
                   kChains, peak_one, peak_one / 32.0, peak, threads);
    } else {
      std::fprintf(stderr, "engine_bench: FMA peak not measured: %s\n",
                   (one ? all.status() : one.status()).to_string().c_str());
    }
  } else {
    std::fprintf(stderr,
                 "engine_bench: this cpu has no AVX2+FMA: FMA peak not measured, "
                 "fma_peak_gflops and the fractions are null\n");
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

  // Batch by batch, each side in turn, so that the two sides of a line are measured close
  // together in time.
  int rc = 0;
  std::unique_ptr<engine::Engine> shared;
  bool flops_checked = false;
  for (int64_t batch : o.batches) {
    auto ours = run_sliceserve(o, batch, input, *flops, **slice, shared, dir);
    if (!ours) {
      std::fprintf(stderr, "engine_bench: sliceserve batch %" PRId64 ": %s\n", batch,
                   ours.status().to_string().c_str());
      return 1;
    }
    std::vector<Json> theirs;
    if (o.pytorch) {
      std::fprintf(stderr, "engine_bench: pytorch batch %" PRId64 " (%s %s), load average %s\n",
                   batch, o.python.c_str(), o.pytorch_script.c_str(), load_average().c_str());
      auto lines = run_pytorch(o, batch, ours->iters, !flops_checked, cpus, dir, process_mask);
      if (lines) {
        theirs = std::move(*lines);
      } else {
        std::fprintf(stderr, "engine_bench: pytorch: %s\n", lines.status().to_string().c_str());
        rc = 1;
      }
    }
    std::optional<Timing> py;
    std::optional<double> max_abs_diff;
    std::optional<double> ref_absmax;
    for (const Json& line : theirs) {
      const std::string side = line.value("side", "");
      if (side == "onnx") {
        flops_checked = true;
        const double onnx = line.value("gflop_per_image", 0.0) * 1e9;
        const double diff = std::abs(onnx - flops->per_image) / flops->per_image;
        std::fprintf(
            stderr, "engine_bench: FLOPs from onnx shape inference: %.3f GFLOP per image (%s)\n",
            onnx / 1e9, diff < 1e-6 ? "the same" : "DIFFERENT from the engine graph's count");
      } else if (side == "pytorch" && line.value("batch", int64_t{0}) == batch) {
        py = timing_from(line);
        if (line.contains("max_abs_diff")) max_abs_diff = line["max_abs_diff"].get<double>();
        if (line.contains("ref_absmax")) ref_absmax = line["ref_absmax"].get<double>();
      }
    }
    const double gflop = flops->per_image * double(batch) / 1e9;
    Json j;
    j["bench"] = "engine";
    j["model"] = o.model_name;
    j["batch"] = batch;
    j["threads"] = threads;
    j["sliceserve_ms"] = round_to(ours->p50_ms, 3);
    j["pytorch_ms"] = py ? Json(round_to(py->p50_ms, 3)) : Json(nullptr);
    j["iters"] = ours->iters;
    j.update(side_fields("sliceserve", *ours, batch, gflop));
    j.update(side_fields("pytorch", py, batch, gflop));
    j["gflop"] = round_to(gflop, 3);
    j["fma_peak_gflops"] = peak > 0 ? Json(round_to(peak, 1)) : Json(nullptr);
    j["fma_peak_fraction"] =
        peak > 0 ? Json(round_to(gflop / (ours->p50_ms / 1000.0) / peak, 3)) : Json(nullptr);
    j["pytorch_fma_peak_fraction"] =
        peak > 0 && py ? Json(round_to(gflop / (py->p50_ms / 1000.0) / peak, 3)) : Json(nullptr);
    j["max_abs_diff"] = max_abs_diff ? Json(*max_abs_diff) : Json(nullptr);
    std::printf("%s\n", j.dump().c_str());
    std::fflush(stdout);
    if (max_abs_diff && ref_absmax && *max_abs_diff > 1e-3 * std::max(1.0, *ref_absmax)) {
      std::fprintf(stderr,
                   "engine_bench: batch %" PRId64
                   ": the outputs differ by %g (|max| %g): the two sides do not compute the "
                   "same function\n",
                   batch, *max_abs_diff, *ref_absmax);
      rc = 1;
    }
    if (o.pytorch && !py) rc = 1;
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
