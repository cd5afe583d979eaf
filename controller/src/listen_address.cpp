#include "sliceserve/controller/listen_address.h"

#include <algorithm>
#include <asio/ip/address.hpp>
#include <charconv>

#include "sliceserve/controller/config.h"

namespace sliceserve::controller {

Result<std::pair<std::string, uint16_t>> split_address(std::string_view address) {
  const size_t colon = address.rfind(':');
  if (colon == std::string_view::npos || colon == 0) {
    return Status(ErrorCode::kInvalidArgument, "'" + std::string(address) + "' is not host:port");
  }
  const std::string_view port = address.substr(colon + 1);
  unsigned value = 0;
  const auto [end, ec] = std::from_chars(port.data(), port.data() + port.size(), value);
  if (port.empty() || ec != std::errc() || end != port.data() + port.size() || value > 65535) {
    return Status(ErrorCode::kInvalidArgument, "'" + std::string(address) + "' has no valid port");
  }
  std::string host(address.substr(0, colon));
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  return std::pair{host, uint16_t(value)};
}

bool is_loopback_host(std::string_view host) {
  if (host == "localhost") return true;
  asio::error_code ec;
  const asio::ip::address a = asio::ip::make_address(std::string(host), ec);
  return !ec && a.is_loopback();
}

Result<std::pair<std::string, uint16_t>> checked_listen_address(std::string_view address,
                                                                std::string_view token) {
  ASSIGN_OR_RETURN(auto host_port, split_address(address));
  if (!is_loopback_host(host_port.first) && token.empty()) {
    return Status(ErrorCode::kInvalidArgument,
                  "refusing to listen on " + std::string(address) +
                      " without a token: set [server] token or SLICESERVE_TOKEN (at least " +
                      std::to_string(kMinTokenBytes) + " characters), or listen on loopback");
  }
  if (!token.empty() && token.size() < kMinTokenBytes) {
    return Status(ErrorCode::kInvalidArgument,
                  "the token must have at least " + std::to_string(kMinTokenBytes) + " characters");
  }
  return host_port;
}

bool same_token(std::string_view given, std::string_view expected) {
  unsigned char diff = given.size() == expected.size() ? 0 : 1;
  for (size_t i = 0; i < given.size(); ++i) {
    diff |=
        static_cast<unsigned char>(given[i] ^ expected[i % std::max<size_t>(expected.size(), 1)]);
  }
  return diff == 0;
}

}  // namespace sliceserve::controller
