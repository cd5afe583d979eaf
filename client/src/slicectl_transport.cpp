// slicectl bench and infer: a client of the model over the chosen transport.

#include "slicectl.h"
#include "sliceserve/controller/listen_address.h"

namespace sliceserve::slicectl {

Result<client::Client> connect_over(const std::string& model, const Transport& transport,
                                    const client::ConnectOptions& options) {
  if (transport.name != "tcp" && transport.name != "http") {
    return client::Client::connect(model, options);
  }
  const bool http = transport.name == "http";
  const std::string address =
      !transport.address.empty() ? transport.address : (http ? "127.0.0.1:8000" : "127.0.0.1:8700");
  // The daemon's own reading of host:port ([::1]:8000 too); port 0 is no server's.
  auto host_port = controller::split_address(address);
  if (!host_port.is_ok() || host_port->second == 0) {
    return Status(ErrorCode::kInvalidArgument, "--address must be host:port, not " + address);
  }
  const auto& [host, port] = *host_port;
  return http ? client::Client::connect_http(model, host, port, options)
              : client::Client::connect_tcp(model, host, port, options);
}

}  // namespace sliceserve::slicectl
