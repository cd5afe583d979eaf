#pragma once
// Where slicectl's admin requests go: the local admin socket of an instance, or, with
// --server http://host:port, sliceserved's HTTP front-end (/v2/admin routes, docs/http.md), so an
// operator on another host steers the daemon the same way.

#include <nlohmann/json.hpp>
#include <string>

#include "slicectl.h"
#include "sliceserve/shm/status.h"

namespace sliceserve::slicectl {

struct AdminTarget {
  std::string instance;  // the admin socket's, when `server` is empty
  std::string server;    // "http://host:port" (or "host:port"); empty: the local socket
  std::string token;     // Authorization: Bearer for the server; empty: none
};

// One admin request ({"cmd":...}, as admin_socket.h) and its reply ({"ok":...}), whichever the
// way. Errors: kServerGone when nothing answers, kInvalidArgument for a malformed --server,
// kInternal for a reply that is not JSON.
Result<nlohmann::json> admin_request(const AdminTarget& target, const nlohmann::json& request,
                                     int timeout_ms = 10000);

// resize / policy / backend / unload.
int run_control(const AdminTarget& target, const ControlOptions& options);

// load: a model into the running daemon, from a TOML file with one [[model]] table (sent as its
// text) or from flags; waits until its worker serves unless `wait` is false.
struct LoadOptions {
  std::string file;  // FILE.toml
  // Or the keys of an ONNX model (its tensors come from the file):
  std::string name, kind = "onnx", path, backend;
  double slice = 0;
  double slo_ms = 0;       // 0: the config's default
  uint32_t max_batch = 0;  // 0: the config's default
  bool wait = true;
  uint32_t wait_timeout_ms = 60000;
};
int run_load(const AdminTarget& target, const LoadOptions& options);

// status --server: the daemon's own status (GET /v2/admin/status) as a table or JSON.
int run_remote_status(const AdminTarget& target, const StatusOptions& options);

}  // namespace sliceserve::slicectl
