#pragma once
// libsliceserve_client: inference requests to a model served by sliceserved on this host, over
// the model's shared-memory segment (docs/architecture.md), or over its TCP front-end.
//
//   auto client = sliceserve::client::Client::connect("resnet50");
//   if (!client.is_ok()) ... client.status().to_string() ...
//   std::vector<float> image(3 * 224 * 224);
//   sliceserve::client::Tensor x{"input", shm::DataType::kFp32, {3, 224, 224},
//                                std::as_bytes(std::span(image))};
//   auto result = client->infer(std::span(&x, 1));
//   std::span<const float> logits = result->outputs[0].as<float>();
//
// Over TCP (sliceserved's front-end, docs/protocol.md) the calling code stays the same:
//
//   auto client = sliceserve::client::Client::connect_tcp("resnet50", "10.0.0.5", 8700, options);
//
// and over HTTP (KServe v2 with the binary tensor data extension, docs/http.md):
//
//   auto client = sliceserve::client::Client::connect_http("resnet50", "10.0.0.5", 8000, options);
//
// A Client owns one client lane of the model's segment (lanes x slots_per_lane in flight for
// the whole model, slots_per_lane per Client). All member functions are thread-safe; the lane
// itself is serialised by a mutex that is held only around slot bookkeeping, never while
// waiting. Errors are values (Result/Status); nothing throws.

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <future>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "sliceserve/shm/status.h"
#include "sliceserve/shm/tensor_spec.h"

namespace sliceserve::client {

// An input: a view; the caller keeps the bytes alive until infer()/infer_async() returns (the
// bytes are copied into shared memory before either returns).
// `shape` is the model's per-item shape; a leading batch dimension of 1 is accepted too.
struct Tensor {
  std::string name;
  shm::DataType dtype = shm::DataType::kInvalid;
  std::vector<int64_t> shape;
  std::span<const std::byte> data;
};

struct OutputTensor {
  std::string name;
  shm::DataType dtype = shm::DataType::kInvalid;
  std::vector<int64_t> shape;   // the model's per-item shape
  std::vector<std::byte> data;  // copied out of shared memory

  // The elements as T. Empty when sizeof(T) is not the dtype's element size.
  template <typename T>
  std::span<const T> as() const {
    if (sizeof(T) != shm::data_type_size(dtype)) return {};
    return {reinterpret_cast<const T*>(data.data()), data.size() / sizeof(T)};
  }
};

struct InferResult {
  std::vector<OutputTensor> outputs;  // in the model's declaration order
  uint64_t request_id = 0;
  uint32_t batch_size = 0;  // size of the batch the request ran in
  uint64_t queue_ns = 0;    // enqueued -> claimed by a worker
  uint64_t compute_ns = 0;  // claimed -> done (includes the batch's run)
};

struct ConnectOptions {
  std::string instance = "default";
  std::chrono::milliseconds default_timeout{10000};
  // How long a synchronous infer() spins on its slot before sleeping on the completion bell.
  // Spinning saves a futex wake-up (a few microseconds) per request; set 0 when there are more
  // waiting threads than cores.
  std::chrono::microseconds spin{20};
  // TCP only: the server's token (docs/protocol.md, "Tokens"); empty: $SLICESERVE_TOKEN.
  std::string token{};
};

// An input declared before its bytes exist: the zero-copy path below.
struct TensorInfo {
  std::string name;
  shm::DataType dtype = shm::DataType::kInvalid;
  std::vector<int64_t> shape;
  uint64_t bytes = 0;
};

class PreparedRequest;
class SlotResult;
// Which slot a PreparedRequest or SlotResult holds (an shm::SlotTicket, without its header).
struct SlotHandle {
  uint32_t slot = 0;
  uint32_t generation = 0;
};

class Client {
 public:
  // kUnknownModel if the instance serves no model of that name (the message lists the served
  // ones); kServerGone if its controller stopped; kBusy if every client lane is taken.
  static Result<Client> connect(std::string_view model, const ConnectOptions& options = {});
  // The same API over sliceserved's TCP front-end: connects, says hello (options.token) and reads
  // the model's tensors. kServerGone if nothing listens; the server's errors as it sent them
  // (kUnknownModel, kInvalidArgument "unauthenticated: ...", kIncompatible). options.instance is
  // unused: the address names the daemon.
  static Result<Client> connect_tcp(std::string_view model, std::string_view host, uint16_t port,
                                    const ConnectOptions& options = {});
  // The same API over sliceserved's HTTP front-end: reads the model's tensors from
  // GET /v2/models/{m} (options.token as 'Authorization: Bearer'; empty: $SLICESERVE_TOKEN), then
  // sends each request as POST .../infer with binary tensors, on a pool of up to max_in_flight()
  // keep-alive connections. Errors as the server sent them (kUnknownModel for 404,
  // kInvalidArgument "unauthenticated: ..." for 401, kTimeout for an expired timeout).
  static Result<Client> connect_http(std::string_view model, std::string_view host, uint16_t port,
                                     const ConnectOptions& options = {});

  Client(Client&& other) noexcept;
  Client& operator=(Client&& other) noexcept;
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;
  // Withdraws the requests no worker holds yet (their futures/callbacks get kTimeout), waits for
  // the ones a worker holds (each at most until its own deadline), then releases the lane.
  ~Client();

  const shm::ModelSpec& spec() const;
  const std::string& model() const;
  const std::string& instance() const;
  // In-flight requests this client may have at once (the lane's slots).
  uint32_t max_in_flight() const;

  // Inputs in any order, mapped by name to the model's declaration. Errors: kUnknownTensor
  // (undeclared name, duplicate or missing input), kWrongDtype, kWrongShape, kTensorTooLarge
  // (byte count differs from the declaration, or too many tensors), kTimeout (also while waiting
  // for a free slot), kServerGone, and whatever the worker reported (kModelError, ...) with its
  // text. The default timeout is ConnectOptions::default_timeout.
  Result<InferResult> infer(std::span<const Tensor> inputs,
                            std::optional<std::chrono::milliseconds> timeout = {});

  // Returns once the request is submitted (waiting for a free slot at most until the timeout);
  // the future resolves on completion, error or timeout. Validation errors resolve at once.
  std::future<Result<InferResult>> infer_async(
      std::vector<Tensor> inputs, std::optional<std::chrono::milliseconds> timeout = {});

  // Same, with a callback instead of a future. `done` runs exactly once, on the client's
  // completion thread (or on the calling thread when the request fails before submission); keep
  // it short and do not call back into this Client from it.
  using Callback = std::function<void(Result<InferResult>)>;
  void infer_async(std::span<const Tensor> inputs, Callback done,
                   std::optional<std::chrono::milliseconds> timeout = {});

  // Zero-copy requests (shm transport only; kUnavailable over TCP and HTTP): validates the inputs as
  // infer() does and takes a slot, waiting for one at most `wait` (0: not at all, kBusy at once).
  Result<PreparedRequest> prepare(std::span<const TensorInfo> inputs,
                                  std::chrono::milliseconds wait);
  // Submits a prepared request; `done` runs exactly once, on the completion thread (or on the
  // calling thread when submission fails), with the slot still held by the SlotResult.
  using SlotCallback = std::function<void(Result<SlotResult>)>;
  void submit(PreparedRequest request, SlotCallback done,
              std::optional<std::chrono::milliseconds> timeout = {});

  // For an owner that runs its own event loop and would rather look for answers itself than be
  // woken by the completion thread (sliceserved's TCP front-end while its requests are short;
  // shm transport only). While polling is on, the completion thread stands aside and
  // poll_completions() calls back, on the calling thread, the requests that are done, failed or
  // past their deadline, returning how many. set_polling(false) hands the rest back to the
  // completion thread. Only one thread should poll at a time.
  void set_polling(bool on);
  size_t poll_completions();

  struct State;     // the shm transport, defined in client.cpp
  struct TcpState;  // the TCP transport, defined in tcp_transport.cpp
  struct HttpState;  // the HTTP transport, defined in http_transport.cpp

 private:
  explicit Client(std::unique_ptr<State> state);
  explicit Client(std::unique_ptr<TcpState> tcp);
  explicit Client(std::unique_ptr<HttpState> http);
  std::unique_ptr<State> state_;
  std::unique_ptr<TcpState> tcp_;    // set instead of state_ for a TCP client
  std::unique_ptr<HttpState> http_;  // set instead of state_ for an HTTP client
};

// A request whose slot is taken and whose input bytes are written straight into shared memory
// by the caller (a socket read, a decoder) before Client::submit(). Destroying it unsubmitted
// gives the slot back. It must not outlive its Client.
class PreparedRequest {
 public:
  PreparedRequest(PreparedRequest&& other) noexcept;
  PreparedRequest& operator=(PreparedRequest&&) = delete;
  PreparedRequest(const PreparedRequest&) = delete;
  ~PreparedRequest();

  // The slot's bytes of the i-th input as given to prepare() (that order, not the model's).
  std::span<std::byte> input(size_t i) const;
  size_t input_count() const { return n_inputs_; }

 private:
  friend class Client;
  friend struct Client::State;
  PreparedRequest(Client::State* state, SlotHandle slot, std::span<const uint8_t> model_index);
  Client::State* state_;
  SlotHandle slot_;
  uint8_t model_index_[shm::kMaxTensors] = {};
  size_t n_inputs_ = 0;
};

// A completed request still in its slot: the outputs are views of shared memory, valid until this
// is destroyed, which frees the slot. It must not outlive its Client.
class SlotResult {
 public:
  SlotResult(SlotResult&& other) noexcept;
  SlotResult& operator=(SlotResult&&) = delete;
  SlotResult(const SlotResult&) = delete;
  ~SlotResult();

  // The model's outputs in declaration order (spec().outputs).
  std::span<const std::byte> output(size_t i) const;
  const shm::ModelSpec& spec() const;
  uint64_t request_id() const { return request_id_; }
  uint32_t batch_size() const;
  uint64_t queue_ns() const;
  uint64_t compute_ns() const;

 private:
  friend class Client;
  friend struct Client::State;
  SlotResult(Client::State* state, SlotHandle slot, uint64_t request_id);
  Client::State* state_;
  SlotHandle slot_;
  uint64_t request_id_;
};

}  // namespace sliceserve::client
