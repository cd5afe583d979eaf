// slicectl's admin requests over the local socket or sliceserved's HTTP admin routes.

#include "slicectl_admin.h"

#include <boost/asio.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <chrono>

#include "sliceserve/controller/admin_socket.h"
#include "sliceserve/controller/listen_address.h"

namespace sliceserve::slicectl {
namespace {

namespace beast = boost::beast;
namespace http = beast::http;
using tcp = boost::asio::ip::tcp;

struct Route {
  http::verb method = http::verb::get;
  std::string target;
  nlohmann::json body;  // null: none
};

// The /v2/admin route of an admin request (http_admin.h has the other direction).
Result<Route> route_of(const nlohmann::json& request) {
  const std::string cmd = request.value("cmd", "");
  Route r;
  if (cmd == "status") {
    r.target = "/v2/admin/status";
    return r;
  }
  r.method = http::verb::post;
  r.body = request;
  r.body.erase("cmd");
  if (cmd == "load") {
    r.target = "/v2/admin/models/load";
    return r;
  }
  if (cmd == "resize" || cmd == "policy" || cmd == "backend" || cmd == "unload") {
    r.target = "/v2/admin/models/" + request.value("model", "") + "/" + cmd;
    r.body.erase("model");
    return r;
  }
  return Status(ErrorCode::kInvalidArgument, "no HTTP admin route for '" + cmd + "'");
}

Result<nlohmann::json> http_request(const AdminTarget& target, const nlohmann::json& request,
                                    int timeout_ms) {
  std::string_view address = target.server;
  constexpr std::string_view kScheme = "http://";
  if (address.substr(0, kScheme.size()) == kScheme) address.remove_prefix(kScheme.size());
  while (!address.empty() && address.back() == '/') address.remove_suffix(1);
  auto host_port = controller::split_address(address);
  if (!host_port.is_ok()) {
    return Status(ErrorCode::kInvalidArgument,
                  "--server " + target.server + ": " + host_port.status().message() +
                      " (give http://host:port)");
  }
  const auto& [host, port] = *host_port;
  ASSIGN_OR_RETURN(Route route, route_of(request));

  boost::asio::io_context ioc;
  beast::tcp_stream stream(ioc);
  beast::error_code ec;
  tcp::resolver resolver(ioc);
  const auto found = resolver.resolve(host, std::to_string(port), ec);
  if (ec) {
    return Status(ErrorCode::kServerGone, "cannot resolve " + host + ": " + ec.message());
  }
  stream.expires_after(std::chrono::milliseconds(timeout_ms));
  stream.connect(found, ec);
  if (ec) {
    return Status(ErrorCode::kServerGone,
                  "no sliceserved answers on " + target.server + " (" + ec.message() + ")");
  }
  http::request<http::string_body> req{route.method, route.target, 11};
  req.set(http::field::host, host);
  req.set(http::field::user_agent, "slicectl");
  if (!target.token.empty()) req.set(http::field::authorization, "Bearer " + target.token);
  if (!route.body.is_null()) {
    req.set(http::field::content_type, "application/json");
    req.body() = route.body.dump();
  }
  req.keep_alive(false);
  req.prepare_payload();
  http::write(stream, req, ec);
  beast::flat_buffer buffer;
  http::response<http::string_body> res;
  if (!ec) http::read(stream, buffer, res, ec);
  if (ec) {
    return Status(ErrorCode::kTimeout,
                  "no reply from sliceserved on " + target.server + " (" + ec.message() + ")");
  }
  auto body = nlohmann::json::parse(res.body(), nullptr, false);
  if (body.is_discarded() || !body.is_object()) {
    return Status(ErrorCode::kInternal, "HTTP " + std::to_string(res.result_int()) +
                                            " from sliceserved, not JSON: " + res.body());
  }
  // The same shape as the socket's replies.
  body["ok"] = res.result() == http::status::ok;
  if (res.result() != http::status::ok && !body.contains("error")) {
    body["error"] = "HTTP " + std::to_string(res.result_int());
  }
  return body;
}

}  // namespace

Result<nlohmann::json> admin_request(const AdminTarget& target, const nlohmann::json& request,
                                     int timeout_ms) {
  if (target.server.empty()) return controller::admin_call(target.instance, request, timeout_ms);
  return http_request(target, request, timeout_ms);
}

}  // namespace sliceserve::slicectl
