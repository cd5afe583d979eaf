// slicectl resize / policy / backend / load / unload, and status --server: requests to
// sliceserved's admin API, over its local socket or its HTTP front-end (slicectl_admin.h).

#include <fmt/core.h>

#include <chrono>
#include <fstream>
#include <sstream>
#include <thread>

#include "slicectl.h"
#include "slicectl_admin.h"

namespace sliceserve::slicectl {
namespace {

constexpr auto kPollPeriod = std::chrono::milliseconds(50);

// Sends one request; prints the error of a refused one. nullopt on failure.
std::optional<nlohmann::json> call(const AdminTarget& target, const nlohmann::json& request) {
  auto reply = admin_request(target, request);
  if (!reply.is_ok()) {
    fmt::print(stderr, "slicectl: {}\n", reply.status().message());
    return std::nullopt;
  }
  if (!reply->value("ok", false)) {
    fmt::print(stderr, "slicectl: {}\n", reply->value("error", std::string("request refused")));
    return std::nullopt;
  }
  return *reply;
}

std::optional<nlohmann::json> status(const AdminTarget& target) {
  return call(target, {{"cmd", "status"}});
}

// The model's row of the status; nullopt when the daemon does not answer. `found` says whether
// the daemon serves it.
std::optional<nlohmann::json> model_status(const AdminTarget& target, const std::string& model,
                                           bool* unloading = nullptr) {
  auto s = status(target);
  if (!s) return std::nullopt;
  if (unloading) {
    *unloading = false;
    for (const auto& u : (*s)["unloading"]) *unloading = *unloading || u == model;
  }
  for (const auto& m : (*s)["models"]) {
    if (m.value("model", "") == model) return m;
  }
  return nlohmann::json();  // null: not served
}

// Waits until the model's resize (or backend switch) is over; reports how it ended.
int wait_for_resize(const AdminTarget& target, const ControlOptions& options,
                    uint32_t resizes_before, uint32_t failed_before) {
  const auto deadline =
      std::chrono::steady_clock::now() + std::chrono::milliseconds(options.wait_timeout_ms);
  while (std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(kPollPeriod);
    auto m = model_status(target, options.model);
    if (!m) return kExitFailure;
    if (m->is_null()) {
      fmt::print(stderr, "slicectl: {}: no longer served\n", options.model);
      return kExitFailure;
    }
    if ((*m)["resizing"].get<bool>()) continue;
    if ((*m)["failed_resizes"].get<uint32_t>() > failed_before) {
      fmt::print(stderr, "slicectl: {}: {}\n", options.model,
                 (*m)["last_resize"].get<std::string>());
      return kExitFailure;
    }
    if ((*m)["resizes"].get<uint32_t>() > resizes_before) {
      fmt::print("{}: {}\n", options.model, (*m)["last_resize"].get<std::string>());
      return kExitOk;
    }
  }
  fmt::print(stderr, "slicectl: {}: still resizing after {} ms\n", options.model,
             options.wait_timeout_ms);
  return kExitFailure;
}

// Polls the status until `done(row, unloading)` holds; false on timeout or a lost daemon.
template <typename Done>
bool wait_until(const AdminTarget& target, const std::string& model, uint32_t timeout_ms,
                Done done) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  while (std::chrono::steady_clock::now() < deadline) {
    bool unloading = false;
    auto m = model_status(target, model, &unloading);
    if (!m) return false;
    if (done(*m, unloading)) return true;
    std::this_thread::sleep_for(kPollPeriod);
  }
  return false;
}

}  // namespace

int run_control(const AdminTarget& target, const ControlOptions& options) {
  nlohmann::json request = {{"cmd", options.command}, {"model", options.model}};
  if (options.command == "resize") request["slice"] = options.slice;
  if (options.command == "policy") request["on"] = options.policy_on;
  if (options.command == "backend") request["backend"] = options.backend;
  const bool changes_workers = options.command == "resize" || options.command == "backend";

  uint32_t resizes_before = 0, failed_before = 0;
  if (changes_workers && options.wait) {
    auto m = model_status(target, options.model);
    if (!m) return kExitFailure;
    if (m->is_null()) {
      fmt::print(stderr, "slicectl: unknown model '{}'\n", options.model);
      return kExitFailure;
    }
    resizes_before = (*m)["resizes"].get<uint32_t>();
    failed_before = (*m)["failed_resizes"].get<uint32_t>();
  }
  auto reply = call(target, request);
  if (!reply) return kExitFailure;
  fmt::print("{}\n", reply->value("message", std::string("ok")));
  if (options.command == "unload" && options.wait) {
    // Gone once its workers have stopped and its segment is removed.
    const bool gone = wait_until(target, options.model, options.wait_timeout_ms,
                                 [](const nlohmann::json& m, bool unloading) {
                                   return m.is_null() && !unloading;
                                 });
    if (!gone) {
      fmt::print(stderr, "slicectl: {}: still unloading after {} ms\n", options.model,
                 options.wait_timeout_ms);
      return kExitFailure;
    }
    fmt::print("{}: unloaded\n", options.model);
    return kExitOk;
  }
  if (!changes_workers || !options.wait) return kExitOk;
  return wait_for_resize(target, options, resizes_before, failed_before);
}

int run_load(const AdminTarget& target, const LoadOptions& options) {
  nlohmann::json request = {{"cmd", "load"}};
  std::string name = options.name;
  if (!options.file.empty()) {
    std::ifstream in(options.file);
    if (!in) {
      fmt::print(stderr, "slicectl: cannot read {}\n", options.file);
      return kExitBadInput;
    }
    std::stringstream text;
    text << in.rdbuf();
    request["toml"] = text.str();
  } else {
    nlohmann::json model = {{"name", options.name}, {"kind", options.kind}, {"slice", options.slice}};
    if (!options.path.empty()) model["path"] = options.path;
    if (!options.backend.empty()) model["backend"] = options.backend;
    if (options.slo_ms > 0) model["slo_ms"] = options.slo_ms;
    if (options.max_batch > 0) model["max_batch"] = options.max_batch;
    request["model"] = model;
  }
  auto reply = call(target, request);
  if (!reply) return kExitFailure;
  const std::string message = reply->value("message", std::string("ok"));
  fmt::print("{}\n", message);
  if (!options.wait) return kExitOk;
  constexpr std::string_view kLoading = "loading ";
  if (name.empty() && message.substr(0, kLoading.size()) == kLoading) {
    name = message.substr(kLoading.size());
  }
  const bool serving = wait_until(
      target, name, options.wait_timeout_ms, [](const nlohmann::json& m, bool) {
        return !m.is_null() && m.value("serving", false);
      });
  if (!serving) {
    auto m = model_status(target, name);
    const std::string why = m && !m->is_null() ? m->value("last_error", std::string()) : "";
    fmt::print(stderr, "slicectl: {}: not serving after {} ms{}{}\n", name,
               options.wait_timeout_ms, why.empty() ? "" : ": ", why);
    return kExitFailure;
  }
  fmt::print("{}: serving\n", name);
  return kExitOk;
}

int run_remote_status(const AdminTarget& target, const StatusOptions& options) {
  auto s = status(target);
  if (!s) return kExitFailure;
  s->erase("ok");
  if (options.json) {
    fmt::print("{}\n", s->dump());
    return kExitOk;
  }
  fmt::print("instance {} ({})\n", s->value("instance", std::string("?")), target.server);
  fmt::print("{:<20} {:>6} {:>8} {:>6} {:<8} {:>10} {:>10} {:>8} {:>8} {:>6} {:>5} {:>8}  {}\n",
             "MODEL", "SLICE%", "PID", "EPOCH", "STATE", "ARRIVAL/s", "DONE/s", "P50ms", "P99ms",
             "SLOms", "MAXB", "RESTARTS", "BACKEND/POLICY");
  for (const auto& m : (*s)["models"]) {
    const int pid = m.value("pid", -1);
    fmt::print(
        "{:<20} {:>6} {:>8} {:>6} {:<8} {:>10.1f} {:>10.1f} {:>8.2f} {:>8.2f} {:>6} {:>5} "
        "{:>8}  {} {}\n",
        m.value("model", std::string()), m.value("slice", 0.0),
        pid > 0 ? std::to_string(pid) : "-", m.value("epoch", uint64_t{0}),
        m.value("resizing", false) ? "resizing" : (m.value("serving", false) ? "serving" : "starting"),
        m.value("arrival_rps", 0.0), m.value("completion_rps", 0.0), m.value("p50_ms", 0.0),
        m.value("p99_ms", 0.0), m.value("slo_ms", 0.0), m.value("max_batch", 0u),
        m.value("restarts", 0u), m.value("backend", std::string()),
        m.value("policy", true) ? "on" : "pinned");
    const std::string decision = m.value("last_decision", std::string());
    if (!decision.empty()) fmt::print("    policy: {}\n", decision);
    const std::string error = m.value("last_error", std::string());
    if (!error.empty()) fmt::print("    worker failed: {}\n", error);
  }
  for (const auto& u : (*s)["unloading"]) fmt::print("{:<20} unloading\n", u.get<std::string>());
  return kExitOk;
}

}  // namespace sliceserve::slicectl
