// slicectl: command-line control of a running sliceserved instance.
//
//   slicectl status [--json] [--instance NAME | --config FILE]
//   slicectl bench MODEL (--rate R | --concurrency C) [--duration S] ... [--instance NAME]
//   slicectl resize MODEL SLICE [--no-wait]
//   slicectl policy MODEL on|off
//   slicectl backend MODEL NAME [--no-wait]
//
// The global options (--instance, --config) go before or after the subcommand.
//
// The instance comes from --instance, else from --config's [server] instance, else from the
// SLICESERVE_INSTANCE environment variable, else "default".

#include <fmt/core.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "slicectl.h"
#include "sliceserve/controller/config.h"

namespace {

using namespace sliceserve;

struct GlobalOptions {
  std::string instance;
  std::string config;
};

// Empty optional on error (already reported).
std::optional<std::string> resolve_instance(const GlobalOptions& g) {
  if (!g.instance.empty()) return g.instance;
  if (!g.config.empty()) {
    auto config = controller::load_config(g.config);
    if (!config.is_ok()) {
      fmt::print(stderr, "slicectl: {}\n", config.status().message());
      return std::nullopt;
    }
    return config->server.instance;
  }
  if (const char* env = std::getenv("SLICESERVE_INSTANCE"); env != nullptr && *env != '\0') {
    return std::string(env);
  }
  return std::string("default");
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"slicectl: status, control and load generation for a SliceServe instance"};
  app.require_subcommand(1);
  // Global options may also follow the subcommand: `slicectl status --instance demo`.
  app.fallthrough();
  GlobalOptions global;
  auto* instance_opt = app.add_option("--instance", global.instance,
                                      "Instance name (default: $SLICESERVE_INSTANCE or 'default')");
  app.add_option("--config", global.config, "Take the instance from this sliceserved config file")
      ->check(CLI::ExistingFile)
      ->excludes(instance_opt);

  slicectl::StatusOptions status;
  auto* status_cmd = app.add_subcommand("status",
                                        "One row per served model: slice, worker, "
                                        "rates, latency percentiles, SLO");
  status_cmd->add_flag("--json", status.json, "Print one JSON document");

  slicectl::BenchOptions bench;
  auto* bench_cmd = app.add_subcommand(
      "bench", "Load generator: closed loop (--concurrency) or open loop (--rate)");
  bench_cmd->add_option("model", bench.model, "Model to load")->required();
  auto* rate = bench_cmd->add_option("--rate", bench.rate, "Open loop: requests per second")
                   ->check(CLI::PositiveNumber);
  auto* conc =
      bench_cmd->add_option("--concurrency", bench.concurrency, "Closed loop: requests in flight")
          ->check(CLI::Range(1, 4096));
  rate->excludes(conc);
  bench_cmd->add_option("--duration", bench.duration_s, "Seconds of load (default 10)")
      ->check(CLI::Range(0.001, 86400.0));
  bench_cmd->add_option("--timeout-ms", bench.timeout_ms, "Per-request timeout (default 10000)")
      ->check(CLI::Range(1u, 3'600'000u));
  bench_cmd->add_flag("--poisson", bench.poisson, "With --rate: exponential inter-arrival times")
      ->needs(rate);
  bench_cmd->add_flag("--json", bench.json, "Print the summary as one JSON line");
  bench_cmd->add_flag("--progress", bench.progress, "One progress line per second on stderr");
  bench_cmd
      ->add_option("--clients", bench.clients,
                   "Client lanes to use (default: as many as the load needs)")
      ->check(CLI::Range(1u, 64u));
  bench_cmd->add_option("--spin-us", bench.spin_us,
                        "Microseconds a waiting request spins before sleeping (default: 20 "
                        "with one request in flight, else 0)");
  bench_cmd->add_option("--seed", bench.seed, "Seed of the random input data");

  slicectl::ControlOptions control;
  bool no_wait = false;
  auto* resize_cmd = app.add_subcommand(
      "resize", "Resize a model's slice now (in place or by shadow worker); pins its policy");
  resize_cmd->add_option("model", control.model, "Model")->required();
  resize_cmd->add_option("slice", control.slice, "New slice, percent of the device")
      ->required()
      ->check(CLI::Range(0.001, 100.0));
  resize_cmd->add_flag("--no-wait", no_wait, "Return once the resize has started");
  std::string policy_state;
  auto* policy_cmd = app.add_subcommand("policy", "Let the SLO policy manage a model, or pin it");
  policy_cmd->add_option("model", control.model, "Model")->required();
  policy_cmd->add_option("state", policy_state, "on | off")
      ->required()
      ->check(CLI::IsMember({"on", "off"}));
  auto* backend_cmd = app.add_subcommand(
      "backend",
      "Move a model to another backend by a shadow handover (cpu:process, cpu:affinity)");
  backend_cmd->add_option("model", control.model, "Model")->required();
  backend_cmd->add_option("name", control.backend, "Backend name")->required();
  backend_cmd->add_flag("--no-wait", no_wait, "Return once the switch has started");

  CLI11_PARSE(app, argc, argv);

  if (bench_cmd->parsed() && !bench.rate && !bench.concurrency) {
    fmt::print(stderr, "slicectl bench: give --rate R or --concurrency C\n");
    return slicectl::kExitFailure;
  }
  std::optional<std::string> instance = resolve_instance(global);
  if (!instance) return slicectl::kExitFailure;
  if (status_cmd->parsed()) return slicectl::run_status(*instance, status);
  for (auto* cmd : {resize_cmd, policy_cmd, backend_cmd}) {
    if (!cmd->parsed()) continue;
    control.command = cmd->get_name();
    control.policy_on = policy_state == "on";
    control.wait = !no_wait;
    return slicectl::run_control(*instance, control);
  }
  return slicectl::run_bench(*instance, bench);
}
