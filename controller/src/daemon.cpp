#include "sliceserve/controller/daemon.h"

#include <spdlog/spdlog.h>
#include <unistd.h>

#include <cmath>
#include <thread>

#include "sliceserve/shm/futex.h"

namespace sliceserve::controller {
namespace {

constexpr auto kTick = std::chrono::milliseconds(10);

unsigned online_cores() {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof set, &set) != 0) return 1;
  return std::max(1, CPU_COUNT(&set));
}

}  // namespace

std::string default_worker_binary() {
  char buf[4096];
  ssize_t n = readlink("/proc/self/exe", buf, sizeof buf - 1);
  if (n <= 0) return "sliceserve-worker";
  std::string self(buf, size_t(n));
  return self.substr(0, self.rfind('/') + 1) + "sliceserve-worker";
}

std::vector<Placement> place_models(const Config& config, unsigned machine_cores) {
  std::vector<Placement> out;
  double used_cores = 0;
  for (const ModelConfig& m : config.models) {
    out.push_back({machine_cores, unsigned(std::floor(used_cores + 1e-9)) % machine_cores});
    used_cores += m.slice / 100.0 * machine_cores;
  }
  return out;
}

Result<std::unique_ptr<Daemon>> Daemon::create(Config config) {
  auto daemon = std::unique_ptr<Daemon>(new Daemon(std::make_unique<Config>(std::move(config))));
  const Config& c = *daemon->config_;
  const std::string binary =
      c.server.worker_binary.empty() ? default_worker_binary() : c.server.worker_binary;
  if (access(binary.c_str(), X_OK) != 0) {
    return Status(ErrorCode::kNotFound, "worker binary " + binary + " is not executable");
  }
  const unsigned cores = c.cpu.cores ? c.cpu.cores : online_cores();
  std::vector<Placement> placements = place_models(c, cores);
  for (size_t i = 0; i < c.models.size(); ++i) {
    auto supervisor = ModelSupervisor::create(c, c.models[i], binary, placements[i]);
    if (!supervisor.is_ok()) return supervisor.status();  // earlier segments unlink themselves
    daemon->models_.push_back(std::move(supervisor).value());
  }
  spdlog::info("instance {}: {} models on {} cores, worker {}", c.server.instance, c.models.size(),
               cores, binary);
  return daemon;
}

ModelSupervisor* Daemon::find(const std::string& model) {
  for (auto& m : models_) {
    if (m->name() == model) return m.get();
  }
  return nullptr;
}

Status Daemon::run() {
  const uint64_t interval_ns = uint64_t(config_->server.policy_interval_ms) * 1'000'000;
  uint64_t next_summary = 0;
  while (!stop_.load(std::memory_order_relaxed)) {
    const uint64_t now = shm::monotonic_ns();
    for (auto& m : models_) m->tick(now);
    if (now >= next_summary) {
      for (auto& m : models_) m->publish_summary(now);
      next_summary = now + interval_ns;
    }
    std::this_thread::sleep_for(kTick);
  }
  shutdown();
  return Status::ok();
}

void Daemon::shutdown() {
  spdlog::info("stopping {} models", models_.size());
  for (auto& m : models_) m->begin_stop();
  const uint64_t force_at =
      shm::monotonic_ns() + uint64_t(config_->server.shutdown_grace_ms) * 1'000'000;
  for (;;) {
    bool all = true;
    for (auto& m : models_) all = m->finish_stop(shm::monotonic_ns(), force_at) && all;
    if (all) break;
    std::this_thread::sleep_for(kTick);
  }
  models_.clear();  // unlinks every segment
  spdlog::info("stopped; no worker or segment left");
}

}  // namespace sliceserve::controller
