#pragma once
// The admin API over HTTP (docs/http.md, "Admin"): /v2/admin routes translated to the admin
// socket's JSON requests (admin_socket.h) and their replies back to HTTP statuses. Pure
// functions; http_server.cpp carries the requests to the daemon's loop and the replies back.

#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>

namespace sliceserve::controller {

inline constexpr std::string_view kAdminPrefix = "/v2/admin/";

// What a /v2/admin route asks: an admin request for the daemon, or an HTTP error to answer at
// once (status, message and, for 405, the methods the route takes).
struct AdminRoute {
  std::optional<nlohmann::json> request;
  unsigned status = 200;
  std::string error;
  std::string allow;
};

// `path` without its query. GET /v2/admin/status; POST /v2/admin/models/load {"model":{...}} or
// {"toml":"..."}; POST /v2/admin/models/{m}/resize {"slice":40}, .../policy {"on":false},
// .../backend {"backend":"cpu:affinity"}, .../unload (no body). A body must be a JSON object;
// the daemon checks its fields.
AdminRoute admin_route(std::string_view method, std::string_view path, std::string_view body);

// The HTTP status of an admin reply: 200 for {"ok":true}, else by its "code" (bad_request 400,
// not_found 404, conflict 409, unavailable 503, timeout 504, anything else 500).
unsigned admin_reply_status(const nlohmann::json& reply);

}  // namespace sliceserve::controller
