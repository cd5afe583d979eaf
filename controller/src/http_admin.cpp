#include "sliceserve/controller/http_admin.h"

namespace sliceserve::controller {
namespace {

AdminRoute refuse(unsigned status, std::string message, std::string allow = "") {
  AdminRoute r;
  r.status = status;
  r.error = std::move(message);
  r.allow = std::move(allow);
  return r;
}

AdminRoute wrong_method(std::string_view allowed) {
  return refuse(405, "method not allowed; this endpoint takes " + std::string(allowed),
                std::string(allowed));
}

// The body as a JSON object; an empty body is an empty object.
std::optional<nlohmann::json> body_object(std::string_view body) {
  if (body.find_first_not_of(" \t\r\n") == std::string_view::npos) return nlohmann::json::object();
  auto parsed = nlohmann::json::parse(body, nullptr, false);
  if (parsed.is_discarded() || !parsed.is_object()) return std::nullopt;
  return parsed;
}

}  // namespace

AdminRoute admin_route(std::string_view method, std::string_view path, std::string_view body) {
  const std::string_view route = path.substr(kAdminPrefix.size());
  if (route == "status") {
    if (method != "GET") return wrong_method("GET");
    AdminRoute r;
    r.request = nlohmann::json{{"cmd", "status"}};
    return r;
  }
  constexpr std::string_view kModels = "models/";
  if (route.substr(0, kModels.size()) != kModels) {
    return refuse(404, "no endpoint " + std::string(path));
  }
  const std::string_view rest = route.substr(kModels.size());
  std::string cmd, model;
  if (rest == "load") {
    cmd = "load";
  } else {
    const size_t slash = rest.find('/');
    if (slash == std::string_view::npos || slash == 0) {
      return refuse(404, "no endpoint " + std::string(path));
    }
    model = std::string(rest.substr(0, slash));
    cmd = std::string(rest.substr(slash + 1));
    if (cmd != "resize" && cmd != "policy" && cmd != "backend" && cmd != "unload") {
      return refuse(404, "no endpoint " + std::string(path) +
                             " (a model takes resize, policy, backend, unload)");
    }
  }
  if (method != "POST") return wrong_method("POST");
  std::optional<nlohmann::json> request = body_object(body);
  if (!request) return refuse(400, "the body must be a JSON object");
  // The route names the command and the model, whatever the body says.
  (*request)["cmd"] = cmd;
  if (cmd == "load") {
    if (!request->contains("model") && !request->contains("toml")) {
      return refuse(400,
                    "the body needs \"model\" (an object of [[model]] keys) or \"toml\" (text "
                    "with one [[model]] table)");
    }
  } else {
    (*request)["model"] = model;
  }
  AdminRoute r;
  r.request = std::move(request);
  return r;
}

unsigned admin_reply_status(const nlohmann::json& reply) {
  if (reply.value("ok", false)) return 200;
  const std::string code = reply.value("code", "");
  if (code == "bad_request") return 400;
  if (code == "not_found") return 404;
  if (code == "conflict") return 409;
  if (code == "unavailable") return 503;
  if (code == "timeout") return 504;
  return 500;
}

}  // namespace sliceserve::controller
