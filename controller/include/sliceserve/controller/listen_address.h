#pragma once
// Where a network front-end (TCP, HTTP) listens, and whether it may: both take "host:port" from
// the config, and both refuse to listen beyond loopback without a token.

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

}  // namespace sliceserve::controller
