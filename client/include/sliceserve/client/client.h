#pragma once
// libsliceserve_client: inference requests to a model served by sliceserved on this host, over
// the model's shared-memory segment (see docs/protocol.md, "Shared-memory protocol").
//
//   auto client = sliceserve::client::Client::connect("resnet50");
//   if (!client.is_ok()) ... client.status().to_string() ...
//   std::vector<float> image(3 * 224 * 224);
//   sliceserve::client::Tensor x{"input", shm::DataType::kFp32, {3, 224, 224},
//                                std::as_bytes(std::span(image))};
//   auto result = client->infer(std::span(&x, 1));
//   std::span<const float> logits = result->outputs[0].as<float>();
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
};

class Client {
 public:
  // kUnknownModel if the instance serves no model of that name (the message lists the served
  // ones); kServerGone if its controller stopped; kBusy if every client lane is taken.
  static Result<Client> connect(std::string_view model, const ConnectOptions& options = {});

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

  struct State;  // implementation, defined in client.cpp

 private:
  explicit Client(std::unique_ptr<State> state);
  std::unique_ptr<State> state_;
};

}  // namespace sliceserve::client
