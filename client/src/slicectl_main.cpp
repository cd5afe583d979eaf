// slicectl: command-line control of a running sliceserved instance.
//
//   slicectl status [--json] [--instance NAME | --config FILE]
//   slicectl bench MODEL (--rate R | --concurrency C) [--duration S] ... [--instance NAME]
//   slicectl resize MODEL SLICE [--no-wait]
//   slicectl policy MODEL on|off
//   slicectl backend MODEL NAME [--no-wait]
//   slicectl load FILE.toml | --name M --path F.onnx --slice S [...] [--no-wait]
//   slicectl unload MODEL [--no-wait]
//   status, resize, policy, backend, load, unload take --server http://host:port (the daemon's
//   HTTP admin routes; --token or $SLICESERVE_TOKEN) instead of the local admin socket.
//   slicectl run-model FILE.onnx --input IN.npy --output OUT.npy [--threads N] [--device cuda:N]
//                      [--runs N]   (no daemon)
//   slicectl infer MODEL --input IN.npy --output OUT.npy [--timeout-ms T]
//   slicectl profile FILE.onnx [--device cpu|hip:N|cuda:N] [--units LIST] [--batch B] [--repeats R]
//                    [--output FILE]   (no daemon)
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
#include "slicectl_admin.h"
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

// --transport and --address of bench and infer.
void add_transport(CLI::App* cmd, slicectl::Transport& transport) {
  cmd->add_option("--transport", transport.name,
                  "shm (same host, default), tcp (the daemon's TCP front-end) or http (its "
                  "KServe v2 front-end, binary tensors); token from $SLICESERVE_TOKEN")
      ->check(CLI::IsMember({"shm", "tcp", "http"}));
  cmd->add_option("--address", transport.address,
                  "With --transport tcp or http: host:port (default 127.0.0.1:8700 for tcp, "
                  "127.0.0.1:8000 for http)");
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"slicectl: status, control, load generation and .npy inference for SliceServe"};
  app.require_subcommand(1);
  // Global options may also follow the subcommand: `slicectl status --instance demo`.
  app.fallthrough();
  GlobalOptions global;
  auto* instance_opt = app.add_option("--instance", global.instance,
                                      "Instance name (default: $SLICESERVE_INSTANCE or 'default')");
  app.add_option("--config", global.config, "Take the instance from this sliceserved config file")
      ->check(CLI::ExistingFile)
      ->excludes(instance_opt);
  slicectl::AdminTarget admin;
  app.add_option("--server", admin.server,
                 "status/resize/policy/backend/load/unload through this daemon's HTTP front-end, "
                 "http://host:port, instead of the local admin socket");
  app.add_option("--token", admin.token, "The HTTP front-end's token (default $SLICESERVE_TOKEN)");

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
  add_transport(bench_cmd, bench.transport);

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
      "Move a model to another backend by a shadow handover (cpu:process, cpu:affinity, mps, "
      "greenctx)");
  backend_cmd->add_option("model", control.model, "Model")->required();
  backend_cmd->add_option("name", control.backend, "Backend name")->required();
  backend_cmd->add_flag("--no-wait", no_wait, "Return once the switch has started");
  slicectl::LoadOptions load;
  auto* load_cmd = app.add_subcommand(
      "load", "Load a model into the running daemon: FILE.toml with one [[model]] table, or flags");
  load_cmd->add_option("file", load.file, "TOML file with one [[model]] table")
      ->check(CLI::ExistingFile);
  auto* load_name = load_cmd->add_option("--name", load.name, "Model name (instead of a file)");
  load_cmd->add_option("--kind", load.kind, "Model kind (default onnx)")->needs(load_name);
  load_cmd->add_option("--path", load.path, "Model file, as the daemon's host sees it")
      ->needs(load_name);
  load_cmd->add_option("--slice", load.slice, "Initial slice, percent")->needs(load_name);
  load_cmd->add_option("--slo-ms", load.slo_ms, "p99 objective, ms")->needs(load_name);
  load_cmd->add_option("--max-batch", load.max_batch, "Batch limit")->needs(load_name);
  load_cmd->add_option("--backend", load.backend, "Backend, e.g. cpu:affinity")->needs(load_name);
  load_cmd->add_flag("--no-wait", no_wait, "Return once the daemon has taken the model");
  auto* unload_cmd = app.add_subcommand(
      "unload", "Stop serving a model: its workers stop and its segment is removed");
  unload_cmd->add_option("model", control.model, "Model")->required();
  unload_cmd->add_flag("--no-wait", no_wait, "Return once the unload has started");

  // run-model / infer: .npy files for the model's inputs and outputs; each option once per file.
  auto add_tensor_files = [](CLI::App* cmd, slicectl::TensorFiles& files) {
    cmd->add_option("--input", files.inputs,
                    "Input .npy file; repeat for several inputs, in the model's order")
        ->allow_extra_args(false);
    cmd->add_option("--input-name", files.named_inputs, "NAME=FILE: the .npy file of input NAME")
        ->allow_extra_args(false);
    cmd->add_option("--output", files.outputs,
                    "Output .npy file; repeat for several outputs, in the model's order")
        ->allow_extra_args(false);
    cmd->add_option("--output-name", files.named_outputs, "NAME=FILE: where to write output NAME")
        ->allow_extra_args(false);
  };
  slicectl::RunModelOptions run_model;
  auto* run_model_cmd = app.add_subcommand(
      "run-model", "Run an ONNX model once on .npy inputs on this machine (engine, no daemon)");
  run_model_cmd->add_option("model", run_model.model_path, "ONNX file")->required();
  add_tensor_files(run_model_cmd, run_model.files);
  run_model_cmd
      ->add_option("--threads", run_model.threads,
                   "Compute threads (default: every cpu this process may use; cuda: 1)")
      ->check(CLI::Range(1u, 4096u));
  run_model_cmd->add_option("--device", run_model.device,
                            "The engine's device: cpu (default), cuda, cuda:N (builds with the "
                            "cuda wing)");
  run_model_cmd
      ->add_option("--runs", run_model.runs,
                   "Run the inputs N times (default 1): the summary gives the first and the "
                   "fastest run; the outputs are the last run's")
      ->check(CLI::Range(1u, 100000u));
  slicectl::InferOptions infer;
  auto* infer_cmd = app.add_subcommand(
      "infer", "Send .npy inputs to a served model; a leading N beyond its shape is N requests");
  infer_cmd->add_option("model", infer.model, "Model")->required();
  add_tensor_files(infer_cmd, infer.files);
  infer_cmd->add_option("--timeout-ms", infer.timeout_ms, "Per-request timeout (default 10000)")
      ->check(CLI::Range(1u, 3'600'000u));
  add_transport(infer_cmd, infer.transport);

  slicectl::ProfileOptions profile;
  auto* profile_cmd = app.add_subcommand(
      "profile",
      "Time each layer of an ONNX model at a range of CU (hip), SM (cuda) or thread (cpu) counts "
      "and write a layer profile for right_size (engine, no daemon)");
  profile_cmd->add_option("model", profile.model_path, "ONNX file")->required();
  profile_cmd->add_option("--device", profile.device,
                          "cpu (default: thread counts), hip:N (CU counts of a cumask slice) or "
                          "cuda:N (SM counts of a greenctx slice; a measurement only)");
  profile_cmd
      ->add_option("--units", profile.units,
                   "Counts to measure, increasing, e.g. 8,16,32,60 (default: every granule "
                   "multiple up to the device, at most 16 of them)")
      ->delimiter(',');
  profile_cmd->add_option("--batch", profile.batch, "Batch size (default 1)")
      ->check(CLI::Range(1u, 4096u));
  profile_cmd->add_option("--repeats", profile.repeats, "Timed runs per count (default 5)")
      ->check(CLI::Range(1u, 100000u));
  profile_cmd->add_option("--output", profile.output,
                          "Profile file (default: MODEL.<cpu|hip|cuda>.profile.json)");
  profile_cmd->add_option("--cu-policy", profile.cu_policy, "hip: spread (default) | pack")
      ->check(CLI::IsMember({"spread", "pack"}));
  profile_cmd->add_option("--shader-engines", profile.shader_engines,
                          "hip: shader engines of the device (0: from its architecture)");
  profile_cmd->add_option("--wgp", profile.wgp, "hip: CUs in pairs: auto | true | false")
      ->check(CLI::IsMember({"auto", "true", "false"}));

  CLI11_PARSE(app, argc, argv);

  if (run_model_cmd->parsed()) return slicectl::run_model(run_model);
  if (profile_cmd->parsed()) return slicectl::run_profile(profile);

  if (bench_cmd->parsed() && !bench.rate && !bench.concurrency) {
    fmt::print(stderr, "slicectl bench: give --rate R or --concurrency C\n");
    return slicectl::kExitFailure;
  }
  std::optional<std::string> instance = resolve_instance(global);
  if (!instance) return slicectl::kExitFailure;
  admin.instance = *instance;
  if (const char* env = std::getenv("SLICESERVE_TOKEN"); admin.token.empty() && env != nullptr) {
    admin.token = env;
  }
  if (status_cmd->parsed() && !admin.server.empty()) {
    return slicectl::run_remote_status(admin, status);
  }
  if (status_cmd->parsed()) return slicectl::run_status(*instance, status);
  if (load_cmd->parsed()) {
    if (load.file.empty() == load.name.empty()) {
      fmt::print(stderr, "slicectl load: give FILE.toml or --name ... (not both)\n");
      return slicectl::kExitFailure;
    }
    load.wait = !no_wait;
    return slicectl::run_load(admin, load);
  }
  if (infer_cmd->parsed()) return slicectl::run_infer(*instance, infer);
  for (auto* cmd : {resize_cmd, policy_cmd, backend_cmd, unload_cmd}) {
    if (!cmd->parsed()) continue;
    control.command = cmd->get_name();
    control.policy_on = policy_state == "on";
    control.wait = !no_wait;
    return slicectl::run_control(admin, control);
  }
  return slicectl::run_bench(*instance, bench);
}
