#pragma once
// sliceserved's HTTP front-end (docs/http.md): KServe v2 health, metadata and inference (JSON
// and binary tensors) and Prometheus metrics, on Boost.Beast with its own I/O thread. It reads
// what it reports straight from the model segments (the controller's summary block and the
// workers' stats blocks), as `slicectl status` does, so nothing it does waits on the daemon's
// loop. Inference goes through one shm client per model (as the TCP front-end does): a binary
// tensor goes from the socket's read buffer straight into its slot, and completions come back to
// the I/O thread, which never waits on a model.

#include <cstdint>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "sliceserve/controller/config.h"
#include "sliceserve/shm/status.h"

namespace sliceserve::controller {

struct HttpModel {
  std::string name;
  std::string kind;  // "onnx", "null", "synthetic": the KServe platform
  std::vector<TensorConfig> inputs;
  std::vector<TensorConfig> outputs;  // shapes per item: the batch dimension is added as -1
};

struct HttpServerOptions {
  std::string address = "127.0.0.1:8000";  // host:port; port 0 picks a free one
  std::string token;                       // empty: no token asked (loopback only)
  std::string instance = "default";        // whose model segments to report
  std::vector<HttpModel> models;
  uint32_t max_connections = 256;     // more get 503 and are closed
  uint32_t idle_timeout_ms = 30000;   // a connection with no complete request this long is closed
  uint32_t max_header_bytes = 16384;  // request line and headers; beyond: 431
  uint32_t max_body_bytes = 4096;     // bodies of endpoints other than infer; beyond: 413
  uint64_t max_infer_body_bytes = uint64_t{64} << 20;  // an infer body (JSON and binary); 413
  uint32_t default_timeout_ms = 10000;  // infer requests without parameters.timeout
  uint32_t poll_us = 50;                // as TcpServerOptions::poll_us
  // The admin routes (/v2/admin/..., http_admin.h): hands a request to the daemon's loop, which
  // calls the reply back on its own thread (AdminServer::submit). Unset: the routes answer 503.
  std::function<void(nlohmann::json request, std::function<void(nlohmann::json reply)> done)>
      admin;
};

class HttpServer {
 public:
  // Binds and starts serving. kInvalidArgument for a host beyond loopback without a token (or a
  // token under kMinTokenBytes), kUnavailable when the address cannot be bound, and what
  // attaching a model's segment returns.
  static Result<std::unique_ptr<HttpServer>> start(const HttpServerOptions& options);
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;
  // Closes every connection and stops the I/O thread.
  ~HttpServer();

  uint16_t port() const;

  // Thread-safe. Serves a model loaded at run time (its segment attached here, the model taken
  // on by the I/O thread at once); errors as start()'s for a model.
  Status add_model(const HttpModel& model);
  // Thread-safe. Requests for the model get 404 from the I/O thread's next turn on; ones in
  // flight end as the model's segment lets them (an unload closes it: 503). The model's lane and
  // mapping are kept until the server stops, since a request in flight may still point at them.
  void remove_model(const std::string& name);

  struct Impl;

 private:
  explicit HttpServer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace sliceserve::controller
