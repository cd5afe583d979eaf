#pragma once
// Where a network front-end (TCP, HTTP) listens, and whether it may: both take "host:port" from
// the config, both refuse to listen beyond loopback without a token, and both check tokens and
// open their listening socket the same way.

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>

#include "sliceserve/shm/status.h"

namespace sliceserve::controller {

// "host:port", the host in brackets for IPv6 ("[::1]:8700"); kInvalidArgument otherwise.
Result<std::pair<std::string, uint16_t>> split_address(std::string_view address);

// 127.0.0.0/8, ::1 and "localhost".
bool is_loopback_host(std::string_view host);

// The host and port to listen on for `address`. kInvalidArgument for a host beyond loopback
// without a token, or a token under kMinTokenBytes (config.h).
Result<std::pair<std::string, uint16_t>> checked_listen_address(std::string_view address,
                                                                std::string_view token);

// Whether a client's token is the server's. Compares without an early exit, so the time taken
// says nothing about where a guess is wrong.
bool same_token(std::string_view given, std::string_view expected);

// Resolves host:port, then opens, binds (SO_REUSEADDR: a restarted daemon binds again at once,
// past the old connections' TIME_WAIT) and listens `acceptor` on the first address found.
// kUnavailable naming `front_end`, the step and `address`. For standalone Asio's and
// Boost.Asio's acceptors alike: Error is the library's error_code.
template <typename Error, typename Acceptor>
Status listen_on(Acceptor& acceptor, const std::string& host, uint16_t port,
                 std::string_view address, std::string_view front_end) {
  const auto failed = [&](std::string_view step, const Error& ec) {
    return Status(ErrorCode::kUnavailable, std::string(front_end) + ": " + std::string(step) + " " +
                                               std::string(address) + ": " + ec.message());
  };
  Error ec;
  typename Acceptor::protocol_type::resolver resolver(acceptor.get_executor());
  const auto found = resolver.resolve(host, std::to_string(port), ec);
  if (ec || found.empty()) return failed("resolving", ec);
  const auto endpoint = found.begin()->endpoint();
  if (acceptor.open(endpoint.protocol(), ec); ec) return failed("opening a socket for", ec);
  if (acceptor.set_option(typename Acceptor::reuse_address(true), ec); ec) {
    return failed("setting SO_REUSEADDR for", ec);
  }
  if (acceptor.bind(endpoint, ec); ec) return failed("binding", ec);
  if (acceptor.listen(Acceptor::max_listen_connections, ec); ec) {
    return failed("listening on", ec);
  }
  return Status::ok();
}

}  // namespace sliceserve::controller
