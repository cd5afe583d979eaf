// slicectl bench and infer: a client of the model over the chosen transport.

#include <cstdlib>

#include "slicectl.h"

namespace sliceserve::slicectl {

Result<client::Client> connect_over(const std::string& model, const Transport& transport,
                                    const client::ConnectOptions& options) {
  if (transport.name != "tcp" && transport.name != "http") {
    return client::Client::connect(model, options);
  }
  const bool http = transport.name == "http";
  const std::string address =
      !transport.address.empty() ? transport.address : (http ? "127.0.0.1:8000" : "127.0.0.1:8700");
  const size_t colon = address.rfind(':');
  std::string host = address.substr(0, colon);
  if (host.size() >= 2 && host.front() == '[') host = host.substr(1, host.size() - 2);
  const int port = colon == std::string::npos ? 0 : std::atoi(address.c_str() + colon + 1);
  if (port <= 0 || port > 65535) {
    return Status(ErrorCode::kInvalidArgument, "--address must be host:port, not " + address);
  }
  return http ? client::Client::connect_http(model, host, uint16_t(port), options)
              : client::Client::connect_tcp(model, host, uint16_t(port), options);
}

}  // namespace sliceserve::slicectl
