#pragma once
// sliceserved's core, independent of signals and argv so tests can run it in-process: creates
// one segment and supervisor per model, ticks them, runs the SLO policy, answers the admin
// socket, and stops cleanly.

#include <atomic>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "sliceserve/controller/admin_socket.h"
#include "sliceserve/controller/config.h"
#include "sliceserve/controller/http_server.h"
#include "sliceserve/controller/model_supervisor.h"
#include "sliceserve/controller/mps_session.h"
#include "sliceserve/controller/policy.h"
#include "sliceserve/controller/tcp_server.h"

namespace sliceserve::controller {

// sliceserve-worker next to the running executable, unless the config names one.
std::string default_worker_binary();

// Where each model's threads start: shares are laid out one after another over the cores.
std::vector<Placement> place_models(const Config& config, unsigned machine_cores);

class Daemon {
 public:
  // Creates every segment and the admin socket (refusing to start if either belongs to a
  // running daemon), starts the TCP and HTTP front-ends (refusing an address beyond loopback
  // without a token) and, when a model needs it, starts or attaches to the MPS control daemon, but
  // starts no worker yet. On error nothing is left behind (a control daemon started here is quit
  // again).
  static Result<std::unique_ptr<Daemon>> create(Config config);

  // Starts the workers and supervises them until request_stop(); then stops every worker
  // (SIGTERM, SIGKILL after shutdown_grace_ms) and removes every segment.
  Status run();
  // Thread- and signal-safe.
  void request_stop() { stop_.store(true, std::memory_order_relaxed); }

  const Config& config() const { return *config_; }
  const MpsState& mps() const { return mps_state_; }
  ModelSupervisor* find(std::string_view model);

  // One admin request (see admin_socket.h); runs on the daemon's loop thread.
  nlohmann::json handle_admin(const nlohmann::json& request);
  // The HTTP front-end's port (0 without one), for tests that let it pick a free one.
  uint16_t http_port() const { return http_ ? http_->port() : 0; }
  uint16_t tcp_port() const { return tcp_ ? tcp_->port() : 0; }

 private:
  explicit Daemon(std::unique_ptr<Config> config) : config_(std::move(config)) {}
  void run_policy(uint64_t now_ns);
  // Starts the resizes in wanted_ that the device has room for now.
  void apply_wanted_slices(uint64_t now_ns);
  nlohmann::json status_json() const;
  // {"cmd":"load"}: validates the model, creates its segment and supervisor (its worker starts
  // on the next tick) and serves it on the front-ends; on error nothing changes.
  nlohmann::json load_model(const nlohmann::json& request);
  // {"cmd":"unload"}: takes the model off the front-ends, closes its segment (clients fail fast)
  // and stops its workers; finish_unloads removes the segment once they are gone.
  nlohmann::json unload_model(const std::string& name);
  void finish_unloads(uint64_t now_ns, bool force);
  void shutdown();

  std::unique_ptr<Config> config_;  // stable address: supervisors keep a reference
  // Before models_: destroyed after them, so the control daemon quits once no worker is left.
  std::unique_ptr<MpsSession> mps_session_;
  MpsState mps_state_;  // supervisors keep a reference
  std::vector<std::unique_ptr<ModelSupervisor>> models_;
  std::unique_ptr<AdminServer> admin_;
  // After models_: stopped first, while the segments it writes into still exist.
  std::unique_ptr<TcpServer> tcp_;
  std::unique_ptr<HttpServer> http_;  // reads the segments: stopped before they go, too
  struct Unloading {
    std::unique_ptr<ModelSupervisor> model;
    uint64_t force_at_ns = 0;  // SIGKILL for workers still there then
  };
  std::vector<Unloading> unloading_;  // their names stay taken until their segments are gone
  std::string worker_binary_;
  unsigned cores_ = 1;
  PolicyMemory policy_memory_;
  PolicyResult last_policy_;
  // Per model: the slice the policy asked for and that has not been started yet.
  std::map<std::string, double, std::less<>> wanted_;
  std::atomic<bool> stop_{false};
  static_assert(std::atomic<bool>::is_always_lock_free, "set from a signal handler");
};

}  // namespace sliceserve::controller
