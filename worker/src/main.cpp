// sliceserve-worker: serves one model from its shared-memory segment. Spawned and supervised by
// sliceserved; see docs/architecture.md for the life cycle (LOADING -> READY -> SERVING).

#include <signal.h>
#include <spdlog/spdlog.h>
#include <sys/prctl.h>

#include <CLI/CLI.hpp>
#include <atomic>

#include "sliceserve/backends/cpu/cpu_slice.h"
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
  double slice = 100;
  unsigned cores = 0;
  unsigned first_core = 0;
  uint32_t max_batch = 8;
  uint32_t max_queue_delay_us = 1000;
  sliceserve::worker::ModelOptions model;
  std::string log_level = "info";
};

enum ExitCode { kExitOk = 0, kExitUsage = 1, kExitLoad = 2 };

int serve(const Args& args) {
  using namespace sliceserve;
  auto segment = shm::Segment::attach(args.segment);
  if (!segment.is_ok()) {
    spdlog::error("cannot attach {}: {}", args.segment, segment.status().to_string());
    return kExitLoad;
  }
  shm::WorkerPort port(*segment, args.epoch);
  port.publish_state(shm::WorkerState::kLoading);
  auto fail = [&](const Status& s, const char* what) {
    spdlog::error("{}: {}", what, s.to_string());
    port.publish_failure(s.with_context(what));
    return kExitLoad;
  };

  if (args.backend != "cpu") {
    return fail(Status(ErrorCode::kUnavailable,
                       "backend '" + args.backend + "' is not available in this build"),
                "backend");
  }
  auto slice = backends::create_cpu_slice({.percent = args.slice,
                                           .mode = args.cpu_mode,
                                           .machine_cores = args.cores,
                                           .first_core = args.first_core});
  if (!slice.is_ok()) return fail(slice.status(), "slice");
  auto model = worker::create_model(args.model, segment->spec());
  if (!model.is_ok()) return fail(model.status(), "model");
  Status warm = (*model)->warm_up(**slice);
  if (!warm.is_ok()) return fail(warm, "warm-up");

  worker::ServeLoop loop(
      *segment, port, **model, **slice,
      {.max_batch = args.max_batch, .max_queue_delay_us = args.max_queue_delay_us});
  port.publish_state(shm::WorkerState::kReady);
  spdlog::info("ready: {} threads, {}", (*slice)->info().threads, (*slice)->info().placement);
  // The controller gives us the ring (first start, restart, or a handover to this shadow).
  while (!port.wait_for_ownership(1'000'000'000, &g_stop)) {
    if (g_stop.load()) return kExitOk;
    port.publish_state(shm::WorkerState::kReady);  // heartbeat while waiting
  }
  port.publish_state(shm::WorkerState::kServing);
  spdlog::info("serving");
  worker::ServeExit exit = loop.run(g_stop);
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
  app.add_option("--backend", args.backend, "Backend (cpu)");
  app.add_option("--cpu-mode", args.cpu_mode, "cpu backend mode")
      ->check(CLI::IsMember({"process", "affinity"}));
  app.add_option("--slice", args.slice, "Share of the device, percent")
      ->check(CLI::Range(0.001, 100.0));
  app.add_option("--cores", args.cores, "Machine cores to slice (0: all online)");
  app.add_option("--first-core", args.first_core, "First core of this worker's placement");
  app.add_option("--max-batch", args.max_batch, "Largest batch")->check(CLI::Range(1, 256));
  app.add_option("--max-queue-delay-us", args.max_queue_delay_us,
                 "How long a partial batch waits for more requests");
  app.add_option("--model-kind", args.model.kind, "Model kind: synthetic | null")->required();
  app.add_option("--model-path", args.model.path, "Model file");
  app.add_option("--flops-per-item", args.model.flops_per_item, "synthetic: flops per item");
  app.add_option("--working-set-kb", args.model.working_set_kb, "synthetic: working set");
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
