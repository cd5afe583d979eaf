#pragma once
// A client socket to sliceserved's front-ends (TCP and HTTP transports).

#include <cstdint>
#include <string>

#include "sliceserve/shm/status.h"

namespace sliceserve::client {

// kServerGone for the daemon at `address` ("host:port", for messages) with `why`.
Status gone(const std::string& address, const std::string& why);

// Connected, with TCP_NODELAY (requests are small and latency-bound), or the last error:
// kInvalidArgument when the host does not resolve, kServerGone when nothing accepts.
Result<int> dial(const std::string& host, uint16_t port, const std::string& address);

}  // namespace sliceserve::client
