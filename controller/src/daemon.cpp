#include "sliceserve/controller/daemon.h"

#include <spdlog/spdlog.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <thread>

#include <fmt/format.h>

#include "sliceserve/shm/futex.h"

namespace sliceserve::controller {
namespace {

constexpr auto kTick = std::chrono::milliseconds(10);
constexpr auto kResizeTick = std::chrono::milliseconds(1);

// What a decision does to its model, for the decision counters in the segment.
shm::PolicyAction policy_action(const Decision& d, const ModelObservation& observed) {
  if (d.slice_changed) {
    return d.slice > observed.slice ? shm::PolicyAction::kGrow : shm::PolicyAction::kShrink;
  }
  return d.batch_changed ? shm::PolicyAction::kBatch : shm::PolicyAction::kHold;
}

// An admin error reply; "code" tells the HTTP front-end its status (http_admin.cpp).
nlohmann::json admin_error(ErrorCode code, const std::string& message) {
  return {{"ok", false}, {"error", message}, {"code", admin_error_code(code)}};
}
nlohmann::json admin_error(const Status& status) {
  return admin_error(status.code(), status.message());
}

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
  // The workers inherit the controller's environment, MPS percentage included.
  RETURN_IF_ERROR(check_greenctx_environment(c, std::getenv("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE")));
  auto admin = AdminServer::start(c.server.instance);
  if (!admin.is_ok()) return admin.status().with_context("admin socket");
  daemon->admin_ = std::move(admin).value();
  if (c.needs_mps_control()) {
    auto session = MpsSession::open(c, instance_runtime_dir(c.server.instance));
    if (!session.is_ok()) return session.status().with_context("MPS");
    daemon->mps_session_ = std::move(session).value();
    daemon->mps_state_ = daemon->mps_session_->state();
  }
  const unsigned cores = c.cpu.cores ? c.cpu.cores : online_cores();
  daemon->worker_binary_ = binary;
  daemon->cores_ = cores;
  std::vector<Placement> placements = place_models(c, cores);
  for (size_t i = 0; i < c.models.size(); ++i) {
    auto supervisor =
        ModelSupervisor::create(c, c.models[i], binary, placements[i], daemon->mps_state_);
    if (!supervisor.is_ok()) return supervisor.status();  // earlier segments unlink themselves
    daemon->models_.push_back(std::move(supervisor).value());
  }
  std::string token = c.server.token;
  if (const char* env = std::getenv("SLICESERVE_TOKEN"); token.empty() && env != nullptr) {
    token = env;
  }
  if (!c.server.tcp.empty()) {
    TcpServerOptions tcp;
    tcp.address = c.server.tcp;
    tcp.token = token;
    tcp.instance = c.server.instance;
    for (const ModelConfig& m : c.models) tcp.models.push_back(m.name);
    // By default one I/O thread per two cores, at most two: the workers need the rest.
    tcp.io_threads =
        c.server.tcp_io_threads > 0 ? c.server.tcp_io_threads : std::clamp(cores / 2, 1u, 2u);
    tcp.poll_us = c.server.io_poll_us;
    tcp.max_connections = c.server.tcp_max_connections;
    tcp.idle_timeout_ms = c.server.tcp_idle_timeout_ms;
    auto server = TcpServer::start(tcp);
    if (server.is_ok()) {
      daemon->tcp_ = std::move(server).value();
    } else if (server.status().code() == ErrorCode::kUnavailable && !c.server.tcp_configured) {
      spdlog::warn(
          "no TCP front-end: {} (set [server] tcp to another address, or \"\" to "
          "turn it off)",
          server.status().message());
    } else {
      return server.status().with_context("[server] tcp");
    }
  }
  if (!c.server.http.empty()) {
    HttpServerOptions http;
    http.address = c.server.http;
    // The admin routes take the admin socket's queue, answered on the daemon's loop.
    http.admin = [admin = daemon->admin_.get()](nlohmann::json request,
                                                AdminServer::Reply done) {
      admin->submit(std::move(request), std::move(done));
    };
    http.token = token;
    http.instance = c.server.instance;
    http.max_infer_body_bytes = uint64_t{c.server.http_max_body_mb} << 20;
    http.poll_us = c.server.io_poll_us;
    for (const auto& m : daemon->models_) {
      http.models.push_back({m->name(), m->model().kind, m->model().inputs, m->model().outputs});
    }
    auto server = HttpServer::start(http);
    if (server.is_ok()) {
      daemon->http_ = std::move(server).value();
    } else if (server.status().code() == ErrorCode::kUnavailable && !c.server.http_configured) {
      spdlog::warn(
          "no HTTP front-end: {} (set [server] http to another address, or \"\" to "
          "turn it off)",
          server.status().message());
    } else {
      return server.status().with_context("[server] http");
    }
  }
  spdlog::info("instance {}: {} models on {} cores, worker {}", c.server.instance, c.models.size(),
               cores, binary);
  return daemon;
}

ModelSupervisor* Daemon::find(std::string_view model) {
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
    if (!unloading_.empty()) finish_unloads(now, false);
    if (now >= next_summary) {
      for (auto& m : models_) m->publish_summary(now);
      run_policy(now);
      next_summary = now + interval_ns;
    }
    if (!wanted_.empty()) apply_wanted_slices(now);
    admin_->serve_pending([this](const nlohmann::json& r) { return handle_admin(r); });
    // While a resize runs, look again soon: its steps (ack, READY, swap) take microseconds.
    bool resizing = false;
    for (auto& m : models_) resizing = resizing || m->resize_in_progress();
    admin_->wait_for_request(resizing ? kResizeTick : kTick);
  }
  shutdown();
  return Status::ok();
}

void Daemon::run_policy(uint64_t now_ns) {
  if (!config_->policy.enabled) return;
  std::vector<ModelObservation> observations;
  for (auto& m : models_) observations.push_back(m->observe());
  last_policy_ = decide(config_->policy.tuning, observations, policy_memory_);

  wanted_.clear();
  for (size_t i = 0; i < models_.size(); ++i) {
    ModelSupervisor& m = *models_[i];
    const Decision& d = last_policy_.decisions[i];
    m.record_decision(policy_action(d, observations[i]), d.reason);
    if (!m.policy_on() || !d.slice_changed) continue;
    // Whole percents: the in-place path and the status speak in them.
    const double target = std::clamp(std::round(d.slice), 1.0, 100.0);
    if (target == m.committed_slice()) continue;
    if (m.resize_in_progress() || m.in_resize_backoff(now_ns)) {
      spdlog::debug("policy {}: {} (deferred: a resize runs or failed recently)", m.name(),
                    d.reason);
      continue;
    }
    spdlog::info("policy {}: {}", m.name(), d.reason);
    wanted_[m.name()] = target;
  }
  apply_wanted_slices(now_ns);
  for (size_t i = 0; i < models_.size(); ++i) {
    ModelSupervisor& m = *models_[i];
    const Decision& d = last_policy_.decisions[i];
    if (!m.policy_on() || !d.batch_changed || m.resize_in_progress()) continue;
    spdlog::info("policy {}: {}", m.name(), d.reason);
    Status s = m.set_max_batch(d.max_batch);
    if (!s.is_ok()) spdlog::debug("policy {}: batch not changed: {}", m.name(), s.message());
  }
  if (last_policy_.shortfall > 0) {
    std::string names;
    for (const auto& n : last_policy_.short_models) names += (names.empty() ? "" : ", ") + n;
    spdlog::warn("policy: the device is {:.1f}% short; below their need: {}",
                 last_policy_.shortfall, names);
  }
}

void Daemon::apply_wanted_slices(uint64_t now_ns) {
  // Shrinks first, then grows, and a grow only once the device has room for it: slices change
  // one model at a time, so starting every change at once could briefly hand out more than the
  // device. A deferred grow is retried every tick, so it follows a shrink's ack at once rather
  // than a policy interval later.
  double committed = 0;
  for (auto& m : models_) committed += m->committed_slice();
  for (const bool growing : {false, true}) {
    for (auto& model : models_) {
      ModelSupervisor& m = *model;
      const auto wanted = wanted_.find(m.name());
      if (wanted == wanted_.end()) continue;
      const double target = wanted->second;
      const double current = m.committed_slice();
      if ((target > current) != growing || m.resize_in_progress()) continue;
      if (growing && committed - current + target > config_->policy.tuning.device_capacity) {
        continue;
      }
      wanted_.erase(wanted);
      if (target == current) continue;
      Status s = m.resize(target, "policy", now_ns);
      if (!s.is_ok()) {
        spdlog::warn("policy {}: resize not started: {}", m.name(), s.message());
        continue;
      }
      if (growing) committed += target - current;  // a shrink frees the device only once done
    }
  }
}

nlohmann::json Daemon::status_json() const {
  nlohmann::json models = nlohmann::json::array();
  for (const auto& m : models_) {
    const shm::ControllerSummary& sum = m->segment().header().summary;
    models.push_back({{"model", m->name()},
                      {"serving", m->serving()},
                      {"slice", m->model().slice},
                      {"slo_ms", m->model().slo_ms},
                      {"arrival_rps", double(sum.arrival_milli_rps.load(std::memory_order_relaxed)) / 1000},
                      {"completion_rps",
                       double(sum.completion_milli_rps.load(std::memory_order_relaxed)) / 1000},
                      {"p50_ms", double(sum.p50_us.load(std::memory_order_relaxed)) / 1000},
                      {"p99_ms", double(sum.p99_us.load(std::memory_order_relaxed)) / 1000},
                      {"last_decision", shm::load_text(sum.last_decision)},
                      {"max_batch", m->model().max_batch},
                      {"backend", backend_display(*config_, m->backend(), mps_state_)},
                      {"policy", m->policy_on()},
                      {"epoch", m->epoch()},
                      {"pid", m->worker_pid()},
                      {"resizing", m->resize_in_progress()},
                      {"resizes", m->resizes()},
                      {"failed_resizes", m->failed_resizes()},
                      {"last_resize", m->last_resize()},
                      {"restarts", m->restarts()},
                      {"completed_total", m->completed_total()},
                      {"shadow_pid", m->shadow_pid()},
                      {"last_error", m->last_error()}});
  }
  nlohmann::json mps = {{"sharing", sharing_name(mps_state_.sharing)}};
  if (mps_state_.sharing == MpsState::Sharing::kMps) {
    mps["pipe_dir"] = mps_state_.pipe_dir;
    mps["log_dir"] = mps_state_.log_dir;
    mps["started"] = mps_state_.started;
  }
  if (!mps_state_.warning.empty()) mps["warning"] = mps_state_.warning;
  nlohmann::json unloading = nlohmann::json::array();
  for (const Unloading& u : unloading_) unloading.push_back(u.model->name());
  return {{"ok", true},
          {"unloading", unloading},
          {"instance", config_->server.instance},
          {"policy_enabled", config_->policy.enabled},
          {"shortfall", last_policy_.shortfall},
          {"short_models", last_policy_.short_models},
          {"mps", mps},
          {"models", models}};
}

nlohmann::json Daemon::handle_admin(const nlohmann::json& request) {
  const std::string cmd = request.value("cmd", "");
  if (cmd == "status") return status_json();
  if (cmd == "load") return load_model(request);
  if (!request.contains("model") || !request["model"].is_string()) {
    return admin_error(ErrorCode::kInvalidArgument, "'" + cmd + "' needs a string \"model\"");
  }
  const std::string name = request["model"];
  ModelSupervisor* m = find(name);
  if (!m) return admin_error(ErrorCode::kNotFound, "unknown model '" + name + "'");
  const uint64_t now = shm::monotonic_ns();
  if (cmd == "unload") return unload_model(name);
  if (cmd == "resize") {
    if (!request.contains("slice") || !request["slice"].is_number()) {
      return admin_error(ErrorCode::kInvalidArgument, "'resize' needs a number \"slice\"");
    }
    Status s = m->resize(request["slice"].get<double>(), "manual", now);
    if (!s.is_ok()) return admin_error(s);
    std::string note;
    if (m->policy_on()) {
      m->set_policy(false);  // otherwise the policy would undo the operator's choice
      note = "; policy now off for " + name + " (slicectl policy " + name + " on hands it back)";
    }
    return {{"ok", true}, {"message", "resizing " + name + note}};
  }
  if (cmd == "policy") {
    if (!request.contains("on") || !request["on"].is_boolean()) {
      return admin_error(ErrorCode::kInvalidArgument, "'policy' needs a boolean \"on\"");
    }
    m->set_policy(request["on"].get<bool>());
    return {{"ok", true},
            {"message", "policy " + std::string(m->policy_on() ? "on" : "off") + " for " + name}};
  }
  if (cmd == "backend") {
    if (!request.contains("backend") || !request["backend"].is_string()) {
      return admin_error(ErrorCode::kInvalidArgument, "'backend' needs a string \"backend\"");
    }
    Result<Backend> backend = parse_backend_name(request["backend"].get<std::string>());
    if (!backend.is_ok()) return admin_error(backend.status());
    Status s = m->switch_backend(*backend, now);
    if (!s.is_ok()) return admin_error(s);
    return {{"ok", true}, {"message", "switching " + name + " to " + backend_name(*backend)}};
  }
  return admin_error(ErrorCode::kInvalidArgument,
                     "unknown command '" + cmd +
                         "' (status, resize, policy, backend, load, unload)");
}

nlohmann::json Daemon::load_model(const nlohmann::json& request) {
  const bool has_model = request.contains("model");
  const bool has_toml = request.contains("toml");
  if (has_model == has_toml) {
    return admin_error(ErrorCode::kInvalidArgument,
                       "'load' needs either \"model\" (an object of [[model]] keys) or \"toml\" "
                       "(text with one [[model]] table)");
  }
  Result<ModelConfig> parsed = Status(ErrorCode::kInvalidArgument, "\"toml\" must be a string");
  if (has_model) {
    parsed = parse_model_json(*config_, request["model"], "load request");
  } else if (request["toml"].is_string()) {
    parsed = parse_model_toml(*config_, request["toml"].get<std::string>(), "load request");
  }
  if (!parsed.is_ok()) return admin_error(parsed.status());
  ModelConfig model = std::move(parsed).value();
  if (find(model.name) != nullptr) {
    return admin_error(ErrorCode::kAlreadyExists, "model '" + model.name + "' is already served");
  }
  for (const Unloading& u : unloading_) {
    if (u.model->name() == model.name) {
      return admin_error(ErrorCode::kAlreadyExists,
                         "model '" + model.name + "' is still unloading; load it again once it is gone");
    }
  }
  double committed = 0;
  for (auto& m : models_) committed += m->committed_slice();
  for (const Unloading& u : unloading_) committed += u.model->committed_slice();
  const double capacity = config_->policy.tuning.device_capacity;
  if (committed + model.slice > capacity + 1e-9) {
    return admin_error(ErrorCode::kBusy,
                       fmt::format("no room for slice {}%: the models hold {}% of the device's {}%",
                                   model.slice, committed, capacity));
  }
  const Backend backend = config_->backend_of(model);
  if (config_->wants_mps(backend) && mps_state_.sharing == MpsState::Sharing::kNone) {
    return admin_error(ErrorCode::kUnavailable,
                       "model '" + model.name + "' runs on " + backend_name(backend) +
                           ", which needs the MPS control daemon; this daemon started none (no "
                           "model wanted it at start)");
  }
  Config alone = *config_;
  alone.models = {model};
  Status greenctx =
      check_greenctx_environment(alone, std::getenv("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"));
  if (!greenctx.is_ok()) return admin_error(greenctx);

  // Its threads start after the cores the other models' shares cover, as at start.
  Placement placement{cores_, unsigned(std::floor(committed / 100.0 * cores_ + 1e-9)) % cores_};
  auto supervisor =
      ModelSupervisor::create(*config_, model, worker_binary_, placement, mps_state_);
  if (!supervisor.is_ok()) return admin_error(supervisor.status());
  // The front-ends attach to the segment the supervisor just created; if one cannot, the other
  // lets go again and the supervisor's destruction removes the segment.
  if (tcp_) {
    Status served = tcp_->add_model(model.name);
    if (!served.is_ok()) return admin_error(served);
  }
  if (http_) {
    Status served = http_->add_model({model.name, model.kind, model.inputs, model.outputs});
    if (!served.is_ok()) {
      if (tcp_) tcp_->remove_model(model.name);
      return admin_error(served);
    }
  }
  config_->models.push_back(model);
  models_.push_back(std::move(supervisor).value());
  spdlog::info("model {}: loaded (slice {}%, {}); its worker starts now", model.name, model.slice,
               backend_name(backend));
  return {{"ok", true}, {"message", "loading " + model.name}};
}

nlohmann::json Daemon::unload_model(const std::string& name) {
  auto it = std::find_if(models_.begin(), models_.end(),
                         [&](const auto& m) { return m->name() == name; });
  ModelSupervisor& m = **it;
  if (m.resize_in_progress()) {
    return admin_error(ErrorCode::kBusy,
                       "model '" + name + "' is resizing; unload it once the resize is over");
  }
  // New requests first get "unknown model"; then the closed segment fails the ones still
  // queued at once (kServerGone), while the worker finishes the batch it holds and exits.
  if (tcp_) tcp_->remove_model(name);
  if (http_) http_->remove_model(name);
  m.begin_stop();
  const uint64_t grace_ns = uint64_t(config_->server.shutdown_grace_ms) * 1'000'000;
  unloading_.push_back({std::move(*it), shm::monotonic_ns() + grace_ns});
  models_.erase(it);
  std::erase_if(config_->models, [&](const ModelConfig& c) { return c.name == name; });
  wanted_.erase(name);
  policy_memory_.models.erase(name);  // a model loaded again under the name learns afresh
  spdlog::info("model {}: unloading", name);
  return {{"ok", true}, {"message", "unloading " + name}};
}

void Daemon::finish_unloads(uint64_t now_ns, bool force) {
  std::erase_if(unloading_, [&](Unloading& u) {
    if (!u.model->finish_stop(now_ns, force ? now_ns : u.force_at_ns)) return false;
    spdlog::info("model {}: unloaded; its segment is gone", u.model->name());
    return true;  // destroying the supervisor unlinks the segment
  });
}

void Daemon::shutdown() {
  spdlog::info("stopping {} models", models_.size());
  admin_->stop_accepting();  // its HTTP replies go out while the HTTP front-end is still there
  http_.reset();
  tcp_.reset();  // no new requests; the ones in flight are dropped with their connections
  for (auto& m : models_) m->begin_stop();
  const uint64_t force_at =
      shm::monotonic_ns() + uint64_t(config_->server.shutdown_grace_ms) * 1'000'000;
  for (;;) {
    bool all = true;
    for (auto& m : models_) all = m->finish_stop(shm::monotonic_ns(), force_at) && all;
    const uint64_t now = shm::monotonic_ns();
    finish_unloads(now, now >= force_at);
    if (all && unloading_.empty()) break;
    std::this_thread::sleep_for(kTick);
  }
  models_.clear();  // unlinks every segment
  if (mps_session_) {
    Status stopped = mps_session_->stop();  // no worker is left to use the daemon
    if (!stopped.is_ok()) spdlog::error("MPS: {}", stopped.to_string());
    mps_session_.reset();
  }
  admin_.reset();  // removes the socket
  spdlog::info("stopped; no worker or segment left");
}

}  // namespace sliceserve::controller
