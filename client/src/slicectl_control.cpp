// slicectl resize / policy / backend: requests to sliceserved's admin socket.

#include <fmt/core.h>

#include <chrono>
#include <thread>

#include "slicectl.h"
#include "sliceserve/controller/admin_socket.h"

namespace sliceserve::slicectl {
namespace {

constexpr auto kPollPeriod = std::chrono::milliseconds(50);

// Sends one request; prints the reply's message or error. nullopt on failure.
std::optional<nlohmann::json> call(const std::string& instance, const nlohmann::json& request) {
  auto reply = controller::admin_call(instance, request);
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

std::optional<nlohmann::json> model_status(const std::string& instance, const std::string& model) {
  auto status = call(instance, {{"cmd", "status"}});
  if (!status) return std::nullopt;
  for (const auto& m : (*status)["models"]) {
    if (m.value("model", "") == model) return m;
  }
  return std::nullopt;
}

// Waits until the model's resize (or backend switch) is over; reports how it ended.
int wait_for_resize(const std::string& instance, const ControlOptions& options,
                    uint32_t resizes_before, uint32_t failed_before) {
  const auto deadline =
      std::chrono::steady_clock::now() + std::chrono::milliseconds(options.wait_timeout_ms);
  while (std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(kPollPeriod);
    auto m = model_status(instance, options.model);
    if (!m) return kExitFailure;
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

}  // namespace

int run_control(const std::string& instance, const ControlOptions& options) {
  nlohmann::json request = {{"cmd", options.command}, {"model", options.model}};
  if (options.command == "resize") request["slice"] = options.slice;
  if (options.command == "policy") request["on"] = options.policy_on;
  if (options.command == "backend") request["backend"] = options.backend;
  const bool changes_workers = options.command == "resize" || options.command == "backend";

  uint32_t resizes_before = 0, failed_before = 0;
  if (changes_workers && options.wait) {
    auto m = model_status(instance, options.model);
    if (!m) {
      fmt::print(stderr, "slicectl: unknown model '{}'\n", options.model);
      return kExitFailure;
    }
    resizes_before = (*m)["resizes"].get<uint32_t>();
    failed_before = (*m)["failed_resizes"].get<uint32_t>();
  }
  auto reply = call(instance, request);
  if (!reply) return kExitFailure;
  fmt::print("{}\n", reply->value("message", std::string("ok")));
  if (!changes_workers || !options.wait) return kExitOk;
  return wait_for_resize(instance, options, resizes_before, failed_before);
}

}  // namespace sliceserve::slicectl
