// sliceserve-worker: serves one model from its shared-memory segment. Spawned and supervised by
// sliceserved; see docs/architecture.md for the life cycle (LOADING -> READY -> SERVING).

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <sched.h>
#include <signal.h>
#include <spdlog/spdlog.h>
#include <sys/prctl.h>

#include <CLI/CLI.hpp>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "sliceserve/backends/cpu/cpu_slice.h"
#ifdef SLICESERVE_HAVE_CUDA
#include "sliceserve/backends/cuda/cuda_device_slice.h"
#include "sliceserve/backends/cuda/cuda_driver.h"
#include "sliceserve/backends/cuda/cuda_weight_store.h"
#include "sliceserve/backends/cuda/green_context_slice.h"
#include "sliceserve/backends/cuda/mps_control.h"
#endif
#ifdef SLICESERVE_HAVE_HIP
#include "sliceserve/backends/hip/cu_mask_slice.h"
#include "sliceserve/backends/layer_profile.h"
#endif
#include "sliceserve/backends/weight_store.h"
#include "sliceserve/shm/futex.h"
#include "sliceserve/shm/segment.h"
#include "sliceserve/shm/worker_port.h"
#include "sliceserve/worker/model.h"
#include "sliceserve/worker/serve_loop.h"

namespace {

std::atomic<bool> g_stop{false};
static_assert(std::atomic<bool>::is_always_lock_free, "used from a signal handler");

void on_signal(int) { g_stop.store(true, std::memory_order_relaxed); }

struct Args {
  std::string segment;
  uint64_t epoch = 0;
  std::string backend = "cpu";
  std::string cpu_mode = "process";
  int device = 0;  // mps, greenctx: CUDA device ordinal; cumask: HIP device ordinal
  std::string cu_policy = "spread";  // cumask: spread | pack
  unsigned shader_engines = 0;       // cumask: 0 = from the device's architecture
  std::string wgp = "auto";    // cumask: CU pairs: auto (from the architecture) | true | false
  std::vector<double> cu_shares;  // cumask: the device's models' initial shares (placement)
  size_t cu_index = 0;            // cumask: this model's among them
  std::string profile;            // cumask: layer profile for right-sizing
  bool right_size = false;        // cumask: launch each layer on its right-sized CUs
  std::string weights_broker;  // mps, greenctx: the model's fd broker (empty: private weights)
  double slice = 100;
  unsigned cores = 0;
  unsigned first_core = 0;
  uint32_t max_batch = 8;
  uint32_t max_queue_delay_us = 1000;
  std::vector<double> slice_pool;
  sliceserve::worker::ModelOptions model;
  std::string log_level = "info";
};

enum ExitCode { kExitOk = 0, kExitUsage = 1, kExitLoad = 2 };

// The slice of the worker's backend at its initial share.
sliceserve::Result<std::unique_ptr<sliceserve::backends::Slice>> create_slice(const Args& args) {
  using namespace sliceserve;
  if (args.backend == "cpu") {
    return backends::create_cpu_slice({.percent = args.slice,
                                       .mode = args.cpu_mode,
                                       .machine_cores = args.cores,
                                       .first_core = args.first_core});
  }
#ifdef SLICESERVE_HAVE_HIP
  if (args.backend == "cumask") {
    ASSIGN_OR_RETURN(backends::CuMaskPolicy policy, backends::parse_cu_mask_policy(args.cu_policy));
    backends::CuLayoutConfig layout{.shader_engines = args.shader_engines, .wgp = std::nullopt};
    if (args.wgp != "auto") layout.wgp = args.wgp == "true";
    backends::CuSliceSetup setup{.placement = {.shares = args.cu_shares, .index = args.cu_index},
                                 .layers = {}};
    if (args.right_size) {
      // The profile must be this model's: sizes measured on another would starve its layers.
      ASSIGN_OR_RETURN(backends::LayerProfile profile, backends::read_layer_profile(args.profile));
      Status same = backends::check_layer_profile_model(profile, args.model.path);
      if (!same.is_ok()) return same.with_context("right_size");
      ASSIGN_OR_RETURN(setup.layers, backends::right_sizes(profile));
      spdlog::info("right-sizing {} layers from {} (batch {}, counts {})", setup.layers.size(),
                   args.profile, profile.batch, fmt::join(profile.units, ","));
    }
    ASSIGN_OR_RETURN(std::unique_ptr<backends::Slice> slice,
                     backends::create_cu_mask_slice({.device = args.device,
                                                     .percent = args.slice,
                                                     .policy = policy,
                                                     .layout = layout,
                                                     .setup = std::move(setup)}));
    const auto& cumask = static_cast<const backends::CuMaskSlice&>(*slice);
    for (const auto& [model, cus] : cumask.overlaps()) {
      spdlog::warn(
          "cumask: this slice shares {} CUs with cumask model {}'s: the shares, rounded to the "
          "policy's granularity, take more CUs than the device has",
          cus, model);
    }
    return slice;
  }
#endif
#ifdef SLICESERVE_HAVE_CUDA
  // The MPS percentage this process was started with (the controller's or an operator's).
  ASSIGN_OR_RETURN(
      std::optional<double> mps_percent,
      backends::parse_mps_thread_percentage(std::getenv("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE")));
  if (args.backend == "greenctx") {
    RETURN_IF_ERROR(backends::check_greenctx_with_mps(mps_percent.value_or(100.0)));
    return backends::create_green_context_slice({.device = args.device, .percent = args.slice});
  }
  if (args.backend == "mps") {
    return backends::create_cuda_device_slice({.device = args.device, .mps_percent = mps_percent});
  }
#endif
  return Status(ErrorCode::kUnavailable,
                "backend '" + args.backend + "' is not available in this build");
}

// Host memory for the cpu backend; on a GPU backend device memory the model's fd broker shares
// between its workers (a private copy, reported, without a broker or where sharing fails).
sliceserve::Result<std::unique_ptr<sliceserve::backends::WeightStore>> open_weight_store(
    const Args& args) {
  using namespace sliceserve;
  if (args.backend == "cpu") return backends::open_host_weight_store(args.segment);
  // No HIP weight store yet (it comes with the HIP executor): nothing to share.
  if (args.backend == "cumask") return std::unique_ptr<backends::WeightStore>();
#ifdef SLICESERVE_HAVE_CUDA
  ASSIGN_OR_RETURN(const backends::CudaDriver* driver, backends::load_cuda_driver());
  return backends::open_cuda_weight_store(
      *driver, args.device, args.weights_broker,
      [](const std::string& line) { spdlog::warn("{}", line); });
#else
  return Status(ErrorCode::kUnavailable,
                "backend '" + args.backend + "' is not available in this build");
#endif
}

int serve(const Args& args) {
  using namespace sliceserve;
  auto segment = shm::Segment::attach(args.segment);
  if (!segment.is_ok()) {
    spdlog::error("cannot attach {}: {}", args.segment, segment.status().to_string());
    return kExitLoad;
  }
  // From here on the log names the model rather than the segment path.
  const shm::SegmentHeader& header = segment->header();
  std::string model_name;
  for (size_t i = 0; i < sizeof header.model_name && header.model_name[i] != '\0'; ++i) {
    if (header.model_name[i] == '%') model_name += '%';  // literal in a spdlog pattern
    model_name += header.model_name[i];
  }
  spdlog::set_pattern(
      fmt::format("%Y-%m-%d %H:%M:%S.%e [worker {} e{} pid %P] [%l] %v", model_name, args.epoch));
  shm::WorkerPort port(*segment, args.epoch);
  port.publish_state(shm::WorkerState::kLoading);
  auto fail = [&](const Status& s, const char* what) {
    spdlog::error("{}: {}", what, s.to_string());
    port.publish_failure(s.with_context(what));
    return kExitLoad;
  };

  const bool on_gpu = args.backend != "cpu";
  if (on_gpu && args.model.kind != "onnx") {
    // The synthetic kind burns host cpu, the null kind computes nothing: neither uses a GPU slice.
    return fail(Status(ErrorCode::kInvalidArgument,
                       "model kind '" + args.model.kind + "' runs on the cpu backend only"),
                "backend");
  }
  auto slice = create_slice(args);
  if (!slice.is_ok()) return fail(slice.status(), "slice");
  if ((*slice)->resizes_in_place()) {
    // The shares the controller may switch to later, built now so a switch creates nothing.
    for (double percent : args.slice_pool) {
      auto index = (*slice)->prepare(percent);
      if (!index.is_ok()) return fail(index.status(), "slice pool");
    }
  } else if (!args.slice_pool.empty()) {
    spdlog::info("--slice-pool ignored: this slice changes its share by shadow resize");
  }
  // Weights are shared with the model's other workers (a shadow maps the live worker's copy).
  auto weights = open_weight_store(args);
  if (!weights.is_ok()) return fail(weights.status(), "weights");
  worker::ModelOptions model_options = args.model;
  model_options.stop = &g_stop;
  model_options.max_batch = args.max_batch;
  model_options.threads = (*slice)->concurrency();
  if (on_gpu) {
    model_options.device =
        (args.backend == "cumask" ? "hip:" : "cuda:") + std::to_string(args.device);
    model_options.io_memory = segment->slot_data_area();  // pinned: items go by DMA
  }
  const uint64_t load_start = shm::monotonic_ns();
  auto model = worker::create_model(model_options, segment->spec(), weights->get());
  if (!model.is_ok()) {
    if (g_stop.load()) return kExitOk;  // told to stop while loading
    return fail(model.status(), "model");
  }
  const worker::WeightUsage usage = (*model)->weights();
  spdlog::info("model loaded in {} ms, weights {} MiB ({} MiB private)",
               (shm::monotonic_ns() - load_start) / 1'000'000, usage.bytes >> 20,
               usage.private_bytes >> 20);
  Status warm = (*model)->warm_up(**slice);
  if (!warm.is_ok()) return fail(warm, "warm-up");
  if ((*slice)->resizes_in_place() && (*slice)->pool().size() > 1) {
    // Warm every prepared share too, so that the first batch after a switch finds its threads'
    // state in place; then back to the initial share.
    auto initial = (*slice)->prepare((*slice)->info().percent);
    if (!initial.is_ok()) return fail(initial.status(), "slice pool");
    for (size_t i = 0; i < (*slice)->pool().size(); ++i) {
      if (i == *initial) continue;
      Status selected = (*slice)->select(i);
      if (selected.is_ok()) selected = (*model)->warm_up(**slice);
      if (!selected.is_ok()) return fail(selected, "warm-up of the slice pool");
    }
    Status back = (*slice)->select(*initial);
    if (!back.is_ok()) return fail(back, "slice pool");
  }

  worker::ServeLoop loop(
      *segment, port, **model, **slice,
      {.max_batch = args.max_batch, .max_queue_delay_us = args.max_queue_delay_us});
  port.publish_state(shm::WorkerState::kReady);
  spdlog::info("ready: {}%, {} compute threads, {}; slice pool {}", (*slice)->info().percent,
               (*slice)->info().threads, (*slice)->info().placement,
               fmt::join((*slice)->pool(), ","));
  // The controller gives us the ring (first start, restart, or a handover to this shadow).
  while (!port.wait_for_ownership(1'000'000'000, &g_stop)) {
    if (g_stop.load()) return kExitOk;
    port.publish_state(shm::WorkerState::kReady);  // heartbeat while waiting
  }
  port.publish_state(shm::WorkerState::kServing);
  spdlog::info("serving");
  worker::ServeExit exit = loop.run(g_stop);
  if (exit == worker::ServeExit::kHandedOver) {
    // Our last batch is done; the new owner now serves, likely on the same cores. Tearing this
    // process down (unmapping weights and thread stacks) must not delay its batches.
    sched_param idle{};
    if (sched_setscheduler(0, SCHED_IDLE, &idle) != 0) {
      spdlog::debug("SCHED_IDLE refused: {}", std::strerror(errno));
    }
  }
  port.publish_state(shm::WorkerState::kExited);
  spdlog::info("exit: {}", worker::serve_exit_name(exit));
  return kExitOk;
}

}  // namespace

int main(int argc, char** argv) {
  Args args;
  CLI::App app{"sliceserve-worker: serves one model from its shared-memory segment"};
  app.add_option("--segment", args.segment, "Shared-memory segment name")->required();
  app.add_option("--epoch", args.epoch, "Ownership epoch of this worker")
      ->required()
      ->check(CLI::PositiveNumber);
  app.add_option("--backend", args.backend, "Backend: cpu | mps | greenctx | cumask");
  app.add_option("--device", args.device,
                 "mps, greenctx: CUDA device ordinal; cumask: HIP device ordinal")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--cu-policy", args.cu_policy, "cumask: where the CUs sit: spread | pack")
      ->check(CLI::IsMember({"spread", "pack"}));
  app.add_option("--shader-engines", args.shader_engines,
                 "cumask: shader engines of the device (0: from its architecture)");
  app.add_option("--wgp", args.wgp, "cumask: CUs in pairs (gfx10+): auto | true | false")
      ->check(CLI::IsMember({"auto", "true", "false"}));
  app.add_option("--cu-shares", args.cu_shares,
                 "cumask: initial shares of the device's cumask models, in placement order (the "
                 "slice starts after the CUs of those before --cu-index)")
      ->delimiter(',')
      ->check(CLI::Range(0.001, 100.0));
  app.add_option("--cu-index", args.cu_index, "cumask: this model's index in --cu-shares");
  auto* profile = app.add_option("--profile", args.profile,
                                 "cumask: layer profile of the model (slicectl profile)");
  app.add_flag("--right-size", args.right_size,
               "cumask: launch each profiled layer on the CUs of its right size")
      ->needs(profile);
  app.add_option("--weights-broker", args.weights_broker,
                 "mps, greenctx: the model's weight fd broker socket (sliceserved's; none: the "
                 "worker keeps a private copy of the weights)");
  app.add_option("--cpu-mode", args.cpu_mode, "cpu backend mode")
      ->check(CLI::IsMember({"process", "affinity"}));
  app.add_option("--slice", args.slice, "Share of the device, percent")
      ->check(CLI::Range(0.001, 100.0));
  app.add_option("--cores", args.cores, "Machine cores to slice (0: all online)");
  app.add_option("--first-core", args.first_core, "First core of this worker's placement");
  app.add_option("--max-batch", args.max_batch, "Largest batch")->check(CLI::Range(1, 256));
  app.add_option("--max-queue-delay-us", args.max_queue_delay_us,
                 "How long a partial batch waits for more requests");
  app.add_option("--model-kind", args.model.kind, "Model kind: synthetic | null | onnx")
      ->required();
  app.add_option("--model-path", args.model.path, "Model file");
  app.add_option("--flops-per-item", args.model.flops_per_item, "synthetic: flops per item");
  app.add_option("--working-set-kb", args.model.working_set_kb, "synthetic: working set");
  app.add_option("--weights-mb", args.model.weights_mb,
                 "synthetic: MiB of weights, shared with the model's other workers");
  app.add_option("--load-delay-ms", args.model.load_delay_ms,
                 "synthetic: simulated extra model load time");
  app.add_option("--slice-pool", args.slice_pool,
                 "Shares (percent) to prepare for instant resize, e.g. 5,10,...,100 (cpu "
                 "mode=affinity, greenctx, cumask; ignored by slices that resize by shadow)")
      ->delimiter(',')
      ->check(CLI::Range(0.001, 100.0));
  app.add_option("--log-level", args.log_level, "trace|debug|info|warn|error|off");
  CLI11_PARSE(app, argc, argv);

  // Die with the controller that spawned us, even if it is SIGKILLed.
  prctl(PR_SET_PDEATHSIG, SIGTERM);
  struct sigaction sa {};
  sa.sa_handler = on_signal;
  sigaction(SIGTERM, &sa, nullptr);
  sigaction(SIGINT, &sa, nullptr);

  spdlog::set_level(spdlog::level::from_str(args.log_level));
  spdlog::set_pattern(
      fmt::format("%Y-%m-%d %H:%M:%S.%e [worker {} e{} pid %P] [%l] %v", args.segment, args.epoch));
  return serve(args);
}
