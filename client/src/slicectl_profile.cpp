// slicectl profile: each layer's latency at a range of unit counts, for per-layer right-sizing
// (KRISP, docs/amd.md).
//
// The model runs through the engine on this machine (no daemon), on random inputs of the given
// batch, once per unit count: on hip:N the CU counts of a cumask slice, on cuda:N the SM counts of
// a greenctx slice (one pool entry per count, switched as the worker switches them), on cpu the
// thread counts of a cpu affinity slice. At each count one warm-up run, then --repeats runs timed
// op by op (Executor::profile_run); the file holds each layer's median and its right size (the
// fewest units within 5% of the largest count's latency). Progress goes to stderr, one line per
// count. A cuda profile is a measurement: no worker launches layers by it yet (docs/nvidia.md).

#include <fmt/core.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <fstream>
#include <iterator>
#include <map>
#include <random>
#include <string>
#include <string_view>
#include <vector>

#include "slicectl.h"
#include "sliceserve/backends/cpu/cpu_slice.h"
#include "sliceserve/backends/cpu/cpu_topology.h"
#include "sliceserve/backends/layer_profile.h"
#ifdef SLICESERVE_HAVE_HIP
#include "sliceserve/backends/hip/cu_mask_slice.h"
#endif
#ifdef SLICESERVE_HAVE_CUDA
#include "sliceserve/backends/cuda/green_context_slice.h"
#endif
#include "sliceserve/worker/engine/engine.h"
#include "sliceserve/worker/engine/onnx_loader.h"

namespace sliceserve::slicectl {
namespace {

using Clock = std::chrono::steady_clock;

int fail(int code, std::string_view message) {
  fmt::print(stderr, "slicectl profile: {}\n", message);
  return code;
}

// At most this many counts by default: a device of 120 CUs in pack has 120.
constexpr size_t kDefaultCounts = 16;

// All of `sizes` (increasing, the full count last), or kDefaultCounts of them evenly spread (the
// full count always last).
std::vector<unsigned> spread_units(const std::vector<unsigned>& sizes) {
  if (sizes.size() <= kDefaultCounts) return sizes;
  std::vector<unsigned> units;
  for (size_t i = 1; i <= kDefaultCounts; ++i) {
    const size_t k = (sizes.size() * i + kDefaultCounts - 1) / kDefaultCounts;  // 1-based
    if (units.empty() || sizes[k - 1] > units.back()) units.push_back(sizes[k - 1]);
  }
  return units;
}

// Every multiple of `granule` up to `full` (a multiple of it), spread as spread_units does.
std::vector<unsigned> default_units(unsigned granule, unsigned full) {
  std::vector<unsigned> sizes;
  for (unsigned m = 1; m * granule <= full; ++m) sizes.push_back(m * granule);
  return spread_units(sizes);
}

// Strictly increasing, each in 1..full and a multiple of granule; `unit` names them.
Status check_units(const std::vector<unsigned>& units, unsigned granule, unsigned full,
                   std::string_view unit, std::string_view why_granule) {
  for (size_t i = 0; i < units.size(); ++i) {
    if (units[i] == 0 || units[i] > full) {
      return Status(ErrorCode::kInvalidArgument,
                    fmt::format("--units: {} {} is outside 1..{}", units[i], unit, full));
    }
    if (units[i] % granule != 0) {
      return Status(ErrorCode::kInvalidArgument,
                    fmt::format("--units: {} {} is not a multiple of {} ({})", units[i], unit,
                                granule, why_granule));
    }
    if (i > 0 && units[i] <= units[i - 1]) {
      return Status(ErrorCode::kInvalidArgument,
                    fmt::format("--units must increase: {} follows {}", units[i], units[i - 1]));
    }
  }
  return Status::ok();
}

// The slice the model runs in, one pool entry per unit count, and how to select a count.
struct ProfileSlice {
  std::unique_ptr<backends::Slice> slice;
  std::vector<size_t> entries;  // per unit count, its pool index
  std::string kind;             // "cpu" | "hip" | "cuda"
  std::string unit;             // "threads" | "CUs" | "SMs"
};

Result<ProfileSlice> cpu_slice(std::vector<unsigned>& units) {
  ASSIGN_OR_RETURN(std::vector<unsigned> cpus, backends::process_cpus());
  if (cpus.empty()) return Status(ErrorCode::kUnavailable, "this process may run on no cpu");
  const auto cores = unsigned(cpus.size());
  if (units.empty()) units = default_units(1, cores);
  RETURN_IF_ERROR(check_units(units, 1, cores, "threads", ""));
  ProfileSlice out;
  out.kind = "cpu";
  out.unit = "threads";
  ASSIGN_OR_RETURN(out.slice, backends::create_cpu_slice({.percent = 100.0 * units.back() / cores,
                                                          .mode = "affinity",
                                                          .machine_cores = cores,
                                                          .first_core = 0}));
  for (unsigned n : units) {
    ASSIGN_OR_RETURN(size_t index, out.slice->prepare(100.0 * n / cores));
    out.entries.push_back(index);
  }
  return out;
}

Result<ProfileSlice> hip_slice([[maybe_unused]] const ProfileOptions& o,
                               [[maybe_unused]] int ordinal,
                               [[maybe_unused]] std::vector<unsigned>& units) {
#ifdef SLICESERVE_HAVE_HIP
  ASSIGN_OR_RETURN(backends::CuMaskPolicy policy, backends::parse_cu_mask_policy(o.cu_policy));
  backends::CuMaskSliceOptions options;
  options.device = ordinal;
  options.percent = 100;
  options.policy = policy;
  options.layout.shader_engines = o.shader_engines;
  if (o.wgp != "auto") options.layout.wgp = o.wgp == "true";
  ASSIGN_OR_RETURN(std::unique_ptr<backends::Slice> slice,
                   backends::create_cu_mask_slice(options));
  const auto& cumask = static_cast<const backends::CuMaskSlice&>(*slice);
  const backends::CuLayout layout = cumask.layout();
  const unsigned granule = backends::cu_granule(layout, policy);
  if (units.empty()) units = default_units(granule, layout.cu_count);
  RETURN_IF_ERROR(check_units(
      units, granule, layout.cu_count, "CUs",
      fmt::format("the {} policy's granularity on {} CUs in {} engines", o.cu_policy,
                  layout.cu_count, layout.shader_engines)));
  ProfileSlice out;
  out.kind = "hip";
  out.unit = "CUs";
  out.slice = std::move(slice);
  for (unsigned n : units) {
    ASSIGN_OR_RETURN(size_t index,
                     out.slice->prepare(backends::percent_for_cu_count(n, layout)));
    out.entries.push_back(index);
  }
  return out;
#else
  return Status(ErrorCode::kUnavailable, "no HIP device: this build has no hip wing (cumask)");
#endif
}

Result<ProfileSlice> cuda_slice([[maybe_unused]] int ordinal,
                                [[maybe_unused]] std::vector<unsigned>& units) {
#ifdef SLICESERVE_HAVE_CUDA
  ASSIGN_OR_RETURN(std::unique_ptr<backends::Slice> slice,
                   backends::create_green_context_slice({.device = ordinal, .percent = 100}));
  auto& green = static_cast<backends::GreenContextSlice&>(*slice);
  const backends::SmGranularity g = green.granularity();
  ASSIGN_OR_RETURN(const std::vector<unsigned> sizes, backends::green_context_sizes(g));
  if (units.empty()) units = spread_units(sizes);
  RETURN_IF_ERROR(check_units(units, 1, g.sm_count, "SMs", ""));
  for (unsigned n : units) {
    if (std::find(sizes.begin(), sizes.end(), n) == sizes.end()) {
      return Status(ErrorCode::kInvalidArgument,
                    fmt::format("--units: {} SMs is no green-context size on this device "
                                "(multiples of {} from {}, or all {})",
                                n, g.alignment, sizes.front(), g.sm_count));
    }
  }
  ProfileSlice out;
  out.kind = "cuda";
  out.unit = "SMs";
  for (unsigned n : units) {
    ASSIGN_OR_RETURN(size_t index, green.prepare(backends::percent_for_sm_count(n, g)));
    RETURN_IF_ERROR(green.select(index));
    // The driver may hand out a group of another size; the profile would then count wrongly.
    if (green.active_sm_count() != n) {
      return Status(ErrorCode::kUnavailable,
                    fmt::format("the driver gave a green context of {} SMs for {}",
                                green.active_sm_count(), n));
    }
    out.entries.push_back(index);
  }
  out.slice = std::move(slice);
  return out;
#else
  return Status(ErrorCode::kUnavailable, "no CUDA device: this build has no cuda wing (greenctx)");
#endif
}

// Random inputs at `batch`: every open first dimension becomes the batch.
Status fix_inputs(worker::engine::Graph& graph, int64_t batch) {
  for (auto& info : graph.inputs) {
    if (!info.has_shape || info.shape.empty()) {
      return Status(ErrorCode::kInvalidArgument,
                    fmt::format("input '{}' has no shape to profile at", info.name));
    }
    for (size_t d = 0; d < info.shape.size(); ++d) {
      if (info.shape[d] >= 0) continue;
      if (d != 0) {
        return Status(ErrorCode::kInvalidArgument,
                      fmt::format("input '{}': dimension {} is open; only the batch (the first) "
                                  "may be",
                                  info.name, d));
      }
      info.shape[0] = batch;
    }
    if (info.shape[0] != batch) {
      return Status(ErrorCode::kInvalidArgument,
                    fmt::format("input '{}' has a fixed batch of {}: give --batch {}", info.name,
                                info.shape[0], info.shape[0]));
    }
  }
  return Status::ok();
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 == 1 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

// Timings of one run merged by label (ops lowered from one node share it), in first-seen order.
void merge(const std::vector<backends::Executor::OpTiming>& timings,
           std::vector<std::string>& order, std::map<std::string, double>& ms) {
  for (const auto& t : timings) {
    auto [it, inserted] = ms.emplace(t.label, 0.0);
    if (inserted) order.push_back(t.label);
    it->second += t.ms;
  }
}

std::string default_output(const std::string& model_path, std::string_view kind) {
  std::string stem = model_path;
  if (stem.size() > 5 && stem.compare(stem.size() - 5, 5, ".onnx") == 0) {
    stem.resize(stem.size() - 5);
  }
  return fmt::format("{}.{}.profile.json", stem, kind);
}

}  // namespace

int run_profile(const ProfileOptions& o) {
  // The device first: a bad --device or --units is a usage error before any loading.
  int ordinal = -1;
  const std::string_view device = o.device;
  const std::string_view kind = device.substr(0, device.find(':'));
  if (o.device != "cpu") {
    const std::string digits(device.substr(std::min(device.size(), kind.size() + 1)));
    if ((kind == "hip" || kind == "cuda") && kind.size() < device.size() && !digits.empty() &&
        digits.size() < 5 &&
        std::all_of(digits.begin(), digits.end(), [](char c) { return c >= '0' && c <= '9'; })) {
      ordinal = int(std::strtol(digits.c_str(), nullptr, 10));
    } else {
      return fail(
          kExitBadInput,
          fmt::format("--device {}: give cpu, hip:N or cuda:N (N the device ordinal)", o.device));
    }
  }
  std::vector<unsigned> units = o.units;
  Result<ProfileSlice> made = ordinal < 0     ? cpu_slice(units)
                              : kind == "hip" ? hip_slice(o, ordinal, units)
                                              : cuda_slice(ordinal, units);
  if (!made.is_ok()) {
    return fail(made.status().code() == ErrorCode::kInvalidArgument ? kExitBadInput
                                                                    : kExitFailure,
                made.status().message());
  }
  ProfileSlice& ps = *made;

  std::ifstream file(o.model_path, std::ios::binary);
  if (!file) return fail(kExitBadInput, fmt::format("{}: {}", o.model_path, std::strerror(errno)));
  const std::string bytes((std::istreambuf_iterator<char>(file)), std::istreambuf_iterator<char>());
  auto graph = worker::engine::load_onnx_file(o.model_path);
  if (!graph.is_ok()) return fail(kExitFailure, graph.status().message());
  Status fixed = fix_inputs(*graph, int64_t(o.batch));
  if (!fixed.is_ok()) return fail(kExitBadInput, fixed.message());

  worker::engine::EngineOptions engine_options;
  engine_options.max_batch = 0;  // one plan, at the batch's shapes
  engine_options.device = o.device;
  engine_options.threads = ps.slice->concurrency();
  auto engine = worker::engine::Engine::load_graph(std::move(graph).value(), engine_options);
  if (!engine.is_ok()) {
    return fail(kExitFailure,
                engine.status()
                    .with_context(fmt::format("model '{}' on {}", o.model_path, o.device))
                    .message());
  }
  worker::engine::Engine& e = **engine;

  std::mt19937 rng(1);
  std::uniform_real_distribution<float> dist(-1.0F, 1.0F);
  std::vector<std::vector<std::byte>> inputs(e.inputs().size());
  std::vector<std::vector<std::byte>> outputs(e.outputs().size());
  std::vector<const std::byte*> input_ptrs;
  std::vector<std::byte*> output_ptrs;
  auto elements = [](const std::vector<int64_t>& shape) {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    return size_t(n);
  };
  for (size_t i = 0; i < inputs.size(); ++i) {
    const size_t n = elements(e.input_shape(i, 0));
    inputs[i].resize(n * shm::data_type_size(e.inputs()[i].dtype));
    if (e.inputs()[i].dtype == shm::DataType::kFp32) {
      for (size_t k = 0; k < n; ++k) {
        const float v = dist(rng);
        std::memcpy(inputs[i].data() + k * sizeof v, &v, sizeof v);
      }
    }
    input_ptrs.push_back(inputs[i].data());
  }
  for (size_t i = 0; i < outputs.size(); ++i) {
    outputs[i].resize(elements(e.output_shape(i, 0)) * shm::data_type_size(e.outputs()[i].dtype));
    output_ptrs.push_back(outputs[i].data());
  }

  // medians[label][k]: the layer's median at units[k].
  std::vector<std::string> order;
  std::map<std::string, std::vector<double>> medians;
  const Clock::time_point start = Clock::now();
  for (size_t k = 0; k < units.size(); ++k) {
    Status selected = ps.slice->select(ps.entries[k]);
    if (!selected.is_ok()) return fail(kExitFailure, selected.message());
    std::vector<std::string> run_order;
    std::map<std::string, std::vector<double>> samples;
    const Clock::time_point count_start = Clock::now();
    for (unsigned r = 0; r <= o.repeats; ++r) {  // run 0 warms up
      ps.slice->begin_batch();
      auto timed = e.profile_run(0, input_ptrs, output_ptrs, *ps.slice);
      ps.slice->end_batch();
      if (!timed.is_ok()) {
        return fail(kExitFailure,
                    timed.status()
                        .with_context(fmt::format("model '{}' on {} at {} {}", o.model_path,
                                                  o.device, units[k], ps.unit))
                        .message());
      }
      if (r == 0) continue;
      std::vector<std::string> labels;
      std::map<std::string, double> ms;
      merge(*timed, labels, ms);
      if (run_order.empty()) run_order = labels;
      if (labels != run_order || (k > 0 && labels != order)) {
        return fail(kExitFailure, "the executor timed different layers in two runs of one plan");
      }
      for (const auto& [label, t] : ms) samples[label].push_back(t);
    }
    if (k == 0) order = run_order;
    double total = 0;
    for (const std::string& label : order) {
      const double m = median(samples[label]);
      medians[label].push_back(m);
      total += m;
    }
    fmt::print(stderr, "profile: {} {} ({}/{}): {} layers, {:.3f} ms per run (median sum), {:.1f} s\n",
               units[k], ps.unit, k + 1, units.size(), order.size(), total,
               std::chrono::duration<double>(Clock::now() - count_start).count());
  }

  backends::LayerProfile profile;
  const size_t slash = o.model_path.find_last_of('/');
  profile.model = slash == std::string::npos ? o.model_path : o.model_path.substr(slash + 1);
  profile.model_sha256 = backends::sha256_hex(std::as_bytes(std::span<const char>(bytes)));
  profile.device = ps.kind;
  profile.batch = int64_t(o.batch);
  profile.repeats = o.repeats;
  profile.units = units;
  size_t below = 0;
  for (const std::string& label : order) {
    backends::LayerProfileEntry layer;
    layer.label = label;
    layer.ms = medians[label];
    auto right = backends::select_right_size(profile.units, layer.ms);
    if (!right.is_ok()) return fail(kExitFailure, right.status().with_context(label).message());
    layer.right_size = *right;
    if (layer.right_size < units.back()) ++below;
    profile.layers.push_back(std::move(layer));
  }
  const std::string output = o.output.empty() ? default_output(o.model_path, ps.kind) : o.output;
  Status wrote = backends::write_layer_profile(output, profile);
  if (!wrote.is_ok()) return fail(kExitFailure, wrote.message());
  fmt::print(stderr,
             "profile {}: {} layers at {} {} (batch {}, median of {}) in {:.1f} s -> {}; {} "
             "right-sized below {} {}\n",
             o.model_path, profile.layers.size(), fmt::join(units, ","), ps.unit, o.batch,
             o.repeats, std::chrono::duration<double>(Clock::now() - start).count(), output, below,
             units.back(), ps.unit);
  return kExitOk;
}

}  // namespace sliceserve::slicectl
