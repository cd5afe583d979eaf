#pragma once
// sliceserved's TCP front-end (docs/protocol.md): an Asio server on its own I/O threads that
// forwards each request into its model's shared-memory ring through the client library. The
// tensor bytes go from the socket straight into the request's slot, and the reply goes to the
// socket straight from it: no copy of tensor data in between.
//
// Each I/O thread has its own io_context, its own connections and its own shm Client per model
// (one lane each), so nothing on the request path is shared between I/O threads.

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "sliceserve/shm/status.h"

namespace sliceserve::controller {

struct TcpServerOptions {
  std::string address = "127.0.0.1:8700";  // host:port; port 0 picks a free one (tests)
  std::string token;                       // empty: no token asked (loopback only)
  std::string instance = "default";        // whose model segments to serve
  std::vector<std::string> models;
  unsigned io_threads = 1;
  uint32_t max_connections = 256;
  uint32_t idle_timeout_ms = 30000;  // no complete frame and nothing in flight for this long
  uint32_t max_in_flight = 64;       // per connection; beyond it the server stops reading
  uint32_t max_header_bytes = 64 * 1024;
  uint32_t default_timeout_ms = 10000;  // for requests that name none
  // How long an I/O thread with requests at the workers keeps looking for their answers itself
  // after its last event, before it sleeps (0: never; the completion threads wake it).
  uint32_t poll_us = 50;
};

class TcpServer {
 public:
  // Binds and starts serving. kInvalidArgument for a host beyond loopback without a token (or a
  // token under kMinTokenBytes), kUnavailable when the address cannot be bound, and what
  // Client::connect returns for a model.
  static Result<std::unique_ptr<TcpServer>> start(const TcpServerOptions& options);
  TcpServer(const TcpServer&) = delete;
  TcpServer& operator=(const TcpServer&) = delete;
  // Closes every connection and stops the I/O threads; requests in flight are dropped.
  ~TcpServer();

  uint16_t port() const;

  // Thread-safe. Serves a model loaded at run time: connects one client per I/O thread (what
  // Client::connect returns on error, nothing changed), which each thread takes on at once.
  Status add_model(const std::string& name);
  // Thread-safe. New requests for the model get kUnknownModel; the ones in flight end as its
  // segment lets them (an unload closes it: kServerGone). Its clients are released once nothing
  // uses them.
  void remove_model(const std::string& name);

  struct Impl;

 private:
  explicit TcpServer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace sliceserve::controller
