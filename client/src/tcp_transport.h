#pragma once
// The client library's TCP transport (docs/protocol.md): one connection per Client, requests
// pipelined on it. Callers' threads send (one gathered write per request, the tensor bytes
// straight from the caller's buffers); one reader thread receives replies in completion order,
// matches them to requests by id, and expires requests past their deadline.

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>

#include "sliceserve/client/client.h"
#include "sliceserve/client/wire.h"

namespace sliceserve::client {

struct Client::TcpState {
  static Result<std::unique_ptr<TcpState>> connect(std::string_view model, std::string_view host,
                                                   uint16_t port, const ConnectOptions& options);
  TcpState(const TcpState&) = delete;
  TcpState& operator=(const TcpState&) = delete;
  // Closes the connection; requests still in flight get kTimeout.
  ~TcpState();

  const shm::ModelSpec& spec() const { return spec_; }
  const std::string& model() const { return model_; }
  const std::string& address() const { return address_; }
  uint32_t max_in_flight() const { return hello_.max_in_flight; }
  std::chrono::milliseconds default_timeout() const { return default_timeout_; }

  Result<InferResult> infer(std::span<const Tensor> inputs, std::chrono::milliseconds timeout);
  void infer_async(std::span<const Tensor> inputs, Callback done,
                   std::chrono::milliseconds timeout);

 private:
  struct Pending {
    Callback done;
    uint64_t deadline_ns = 0;
  };
  TcpState(int fd, std::string model, std::string address, std::chrono::milliseconds timeout);

  // Blocking, for the handshake before the reader runs.
  Status handshake(const std::string& token);
  Status send_all(std::span<const std::span<const std::byte>> parts);
  // Reads exactly `out.size()` bytes, waiting at most until deadline_ns (0: no deadline).
  Status recv_all(std::span<std::byte> out, uint64_t deadline_ns);
  Result<wire::FrameHeader> recv_frame(std::vector<std::byte>& meta, uint64_t deadline_ns);

  void run_reader();
  // Reads one reply's body and completes its request.
  Status dispatch(const wire::FrameHeader& header);
  // Fails every pending request (the connection is gone); `reason` for their callbacks.
  void fail_all(const Status& reason);

  int fd_;
  const std::string model_;
  const std::string address_;
  const std::chrono::milliseconds default_timeout_;
  shm::ModelSpec spec_;
  wire::HelloOk hello_;
  wire::Limits limits_;  // what this side accepts from the server

  std::mutex send_mu_;            // one frame at a time on the socket
  std::mutex mu_;                 // guards what follows
  std::condition_variable room_;  // a request finished: one more may go in flight
  std::map<uint64_t, Pending> pending_;
  uint64_t next_id_ = 1;
  Status broken_;  // set once the connection failed: new requests fail at once
  bool stop_ = false;
  std::thread reader_;
};

}  // namespace sliceserve::client
