#pragma once
// The local admin API of sliceserved: one JSON request per line, one JSON reply per line, over
// a Unix socket in a directory only the user can enter ($XDG_RUNTIME_DIR or /tmp, then
// sliceserve-<uid>/<instance>.sock). slicectl resize/policy/backend/load/unload use it; the HTTP
// front-end's /v2/admin routes (http_admin.cpp) put the same requests on the same queue.
//
//   {"cmd":"status"}                                  -> {"ok":true,"models":[...],...}
//   {"cmd":"resize","model":"m","slice":40}           -> {"ok":true,"message":"..."}
//   {"cmd":"policy","model":"m","on":false}
//   {"cmd":"backend","model":"m","backend":"cpu:affinity"}
//   {"cmd":"load","model":{...keys of a [[model]] table...}}
//   {"cmd":"load","toml":"[[model]]\nname = ..."}
//   {"cmd":"unload","model":"m"}
//   errors                                 -> {"ok":false,"error":"...","code":"conflict"}

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <future>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <thread>

#include "sliceserve/shm/status.h"

namespace sliceserve::controller {

inline constexpr size_t kMaxAdminRequestBytes = 64 * 1024;

// The "code" of an error reply: "bad_request", "not_found", "conflict" (busy, a resize runs, the
// name is taken), "unavailable", "timeout" or "internal".
std::string_view admin_error_code(ErrorCode code);

std::string admin_socket_path(std::string_view instance);
// A private directory of the instance beside its socket (<dir>/<instance>), for the files the
// daemon keeps while it runs (the MPS control daemon's pipe and log dirs).
std::string instance_runtime_dir(std::string_view instance);

// One request and its reply, for clients (slicectl). kServerGone when nothing listens.
Result<nlohmann::json> admin_call(std::string_view instance, const nlohmann::json& request,
                                  int timeout_ms = 10000);

class AdminServer {
 public:
  using Handler = std::function<nlohmann::json(const nlohmann::json& request)>;
  using Reply = std::function<void(nlohmann::json reply)>;

  // Binds the socket (replacing a stale one; refusing one a live server answers on).
  static Result<std::unique_ptr<AdminServer>> start(std::string_view instance);
  ~AdminServer();  // stops the I/O thread and removes the socket

  // Answers the requests that arrived since the last call, on the caller's thread.
  void serve_pending(const Handler& handler);
  // Sleeps up to `timeout`, less if a request arrives: the daemon's loop idles here so an
  // admin request is answered at once rather than at its next tick.
  void wait_for_request(std::chrono::milliseconds timeout);
  const std::string& path() const { return path_; }

  // Thread-safe, never blocks: queues a request for the next serve_pending, which calls `done`
  // with the reply on its thread (the daemon's loop). A callback rather than a future, so the
  // HTTP front-end's I/O thread is told instead of waiting. Once the server stops, `done` gets
  // {"ok":false,...} at once, or at destruction for requests still queued.
  void submit(nlohmann::json request, Reply done);
  // Answers the queued requests with {"ok":false,...} and every later one at once: the daemon
  // calls it before it stops the HTTP front-end, whose replies could not be delivered after.
  void stop_accepting();

 private:
  struct Pending {
    nlohmann::json request;
    Reply done;
  };
  AdminServer(std::string path, int listen_fd);
  void io_loop();
  void serve_connection(int fd);
  // The socket's requests: queued as submit() does, waited for here on the I/O thread.
  nlohmann::json call(nlohmann::json request);

  std::string path_;
  int listen_fd_ = -1;
  int wake_fd_[2] = {-1, -1};  // a pipe that stops the I/O thread's poll
  std::atomic<bool> stop_{false};
  std::mutex mutex_;
  std::condition_variable arrived_;
  std::deque<std::unique_ptr<Pending>> queue_;
  std::thread thread_;
};

}  // namespace sliceserve::controller
