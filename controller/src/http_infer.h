#pragma once
// The KServe v2 infer request and reply as pure functions of bytes (docs/http.md, "Infer"): the
// HTTP front-end calls them with a request's JSON header and the size of the binary part that
// follows it (the binary tensor data extension), and tests/fuzz/http_infer_fuzz.cpp calls them
// without a socket. A request of batch B becomes B items, one shm slot each.

#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "sliceserve/shm/status.h"
#include "sliceserve/shm/tensor_spec.h"

namespace sliceserve::controller::http_infer {

struct Input {
  uint32_t model_index = 0;  // into spec.inputs
  bool binary = false;       // its bytes are in the binary part (parameters.binary_data_size)
  uint64_t binary_offset = 0;   // where in the binary part, when binary
  std::vector<std::byte> data;  // JSON data in the model's dtype, the batch's items in a row
};

struct Output {
  uint32_t model_index = 0;  // into spec.outputs
  bool binary = false;       // parameters.binary_data (or the request's binary_data_output)
};

struct Request {
  std::optional<std::string> id;
  uint32_t batch = 0;                  // the first dimension every input shares
  std::vector<Input> inputs;           // in the request's order, which is the binary part's
  std::vector<Output> outputs;         // in the reply's order: the request's, else the model's
  std::optional<uint64_t> timeout_us;  // parameters.timeout (Triton's name and unit)
};

// Parses and checks `header` (the JSON part) against the model: every input named once with the
// model's datatype and shape [B, per-item dims...], 1 <= B <= max_batch, JSON data converted to
// the datatype (flat or nested row-major, each number in the datatype's range), binary sizes
// that add up to `binary_bytes` (unknown for a chunked body: the reader checks as it goes),
// requested outputs the model has. Every error is kInvalidArgument with a message that names the
// tensor.
Result<Request> parse_request(std::string_view header, std::optional<uint64_t> binary_bytes,
                              const shm::ModelSpec& spec, std::string_view model,
                              uint32_t max_batch);

// One piece of the binary part: `bytes` bytes of item `item` of request input `input`. The
// pieces in order tile the binary part: each binary input's items, input after input.
struct Piece {
  uint32_t input = 0;  // index into Request::inputs
  uint32_t item = 0;
  uint64_t bytes = 0;
};
std::vector<Piece> binary_pieces(const Request& request, const shm::ModelSpec& spec);

// The reply's body: the JSON header, then the binary outputs' bytes in the order of
// Request::outputs. `header_bytes` is the Inference-Header-Content-Length when `binary`.
struct Reply {
  std::string body;
  size_t header_bytes = 0;
  bool binary = false;
};
// items[b][k]: item b's bytes of the model's output k (spec.outputs[k].byte_size() each).
using ItemOutputs = std::array<std::span<const std::byte>, shm::kMaxTensors>;
Reply build_reply(const Request& request, const shm::ModelSpec& spec, std::string_view model,
                  std::span<const ItemOutputs> items);

}  // namespace sliceserve::controller::http_infer
