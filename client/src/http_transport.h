#pragma once
// The client library's HTTP transport (docs/http.md): KServe v2 infer requests with the binary
// tensor data extension over HTTP/1.1 keep-alive connections. The server answers the requests of
// one connection one after another, so a Client keeps a pool of up to max_in_flight()
// connections: a synchronous infer() takes an idle one (or dials one), sends the JSON header and
// the tensors' bytes in one gathered write and reads the reply; infer_async() encodes the request
// before it returns and hands it to one of max_in_flight() sender threads.

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "sliceserve/client/client.h"

namespace sliceserve::client {

struct Client::HttpState {
  static Result<std::unique_ptr<HttpState>> connect(std::string_view model, std::string_view host,
                                                    uint16_t port, const ConnectOptions& options);
  HttpState(const HttpState&) = delete;
  HttpState& operator=(const HttpState&) = delete;
  // Requests queued for the sender threads get kTimeout; the connections close.
  ~HttpState();

  const shm::ModelSpec& spec() const { return spec_; }
  const std::string& model() const { return model_; }
  const std::string& address() const { return address_; }
  uint32_t max_in_flight() const { return kMaxConnections; }
  std::chrono::milliseconds default_timeout() const { return default_timeout_; }

  Result<InferResult> infer(std::span<const Tensor> inputs, std::chrono::milliseconds timeout);
  void infer_async(std::span<const Tensor> inputs, Callback done,
                   std::chrono::milliseconds timeout);

  // Connections (and so requests in flight) per Client.
  static constexpr uint32_t kMaxConnections = 16;

 private:
  // One encoded request: the HTTP head and JSON header, then the tensors (views, or `owned`).
  struct Encoded {
    std::string head;
    std::vector<std::span<const std::byte>> tensors;
    std::vector<std::byte> owned;  // infer_async's copy of the caller's bytes
  };
  struct Job {
    Encoded request;
    uint64_t deadline_ns = 0;
    Callback done;
  };

  HttpState(std::string model, std::string host, uint16_t port, std::string token,
            std::chrono::milliseconds timeout);

  Result<Encoded> encode(std::span<const Tensor> inputs, std::chrono::milliseconds timeout) const;
  // Sends on a pooled connection and reads the reply; a connection that fails is closed, and a
  // request that found a stale keep-alive connection is sent once more on a fresh one.
  Result<InferResult> round_trip(const Encoded& request, uint64_t deadline_ns);
  Result<int> take_connection(bool fresh);
  void give_back(int fd);
  void run_sender();

  const std::string model_;
  const std::string host_;
  const uint16_t port_;
  const std::string address_;
  const std::string token_;
  const std::chrono::milliseconds default_timeout_;
  shm::ModelSpec spec_;

  std::mutex mu_;  // guards what follows
  std::condition_variable cv_;
  std::vector<int> idle_;  // keep-alive connections nobody uses now
  std::deque<Job> jobs_;
  std::vector<std::thread> senders_;  // started as infer_async needs them
  uint32_t busy_senders_ = 0;
  bool stop_ = false;
};

}  // namespace sliceserve::client
