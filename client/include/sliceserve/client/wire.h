#pragma once
// The TCP binary protocol's frame codec (docs/protocol.md): the fixed frame header and the
// metadata section of every frame type, encoded and decoded without any I/O, so that the client
// transport, the server and the fuzz target share one parser. Decoding never trusts a length:
// every count and size is checked against the bytes present and against the limits first.

#include <array>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "sliceserve/shm/status.h"
#include "sliceserve/shm/tensor_spec.h"

namespace sliceserve::client::wire {

inline constexpr uint32_t kMagic = 0x56525353;  // "SSRV" as little-endian bytes
inline constexpr uint8_t kVersion = 1;
inline constexpr size_t kHeaderBytes = 24;
inline constexpr size_t kMaxModelName = 64;
inline constexpr size_t kMaxToken = 256;
inline constexpr size_t kMaxMessage = 4096;

enum class FrameType : uint8_t {
  kHello = 1,        // client -> server, first frame of a connection
  kHelloOk = 2,      // server -> client: the server's limits
  kModelInfo = 3,    // client -> server: a model's tensors
  kModelInfoOk = 4,  // server -> client
  kInfer = 5,        // client -> server: one request, tensors in the data section
  kInferOk = 6,      // server -> client: the outputs in the data section
  kError = 7,        // server -> client: a request failed, or (kFlagFatal) the connection
};

// kError flag: the server closes the connection after this frame.
inline constexpr uint16_t kFlagFatal = 1;

// Error codes on the wire: SliceServe's ErrorCode values (fixed by the protocol, see the
// static_asserts in wire.cpp) plus the protocol's own.
inline constexpr uint16_t kErrorUnauthenticated = 64;

struct FrameHeader {
  uint8_t version = kVersion;
  FrameType type = FrameType::kError;
  uint16_t flags = 0;
  uint64_t request_id = 0;
  uint32_t header_len = 0;  // metadata bytes after the fixed header
  uint32_t data_len = 0;    // raw tensor bytes after the metadata
};

// What a peer accepts; a frame beyond them is refused before its body is read.
struct Limits {
  uint32_t max_header_bytes = 64 * 1024;
  uint32_t max_data_bytes = 64 * 1024 * 1024;
};

std::array<std::byte, kHeaderBytes> encode_header(const FrameHeader& header);
// kIncompatible: magic or version; kInvalidArgument: unknown type or flags; kTensorTooLarge: a
// length beyond the limits.
Result<FrameHeader> decode_header(std::span<const std::byte> bytes, const Limits& limits);

struct TensorDesc {
  std::string name;
  shm::DataType dtype = shm::DataType::kInvalid;
  std::vector<int64_t> shape;
  uint64_t bytes = 0;  // this tensor's share of the data section
};

struct Hello {
  std::string token;
  std::string client;  // free text for the server's log
};

struct HelloOk {
  Limits limits;
  uint32_t max_in_flight = 0;  // per connection; more waits in the socket
  uint32_t idle_timeout_ms = 0;
};

struct ModelInfoRequest {
  std::string model;
};

struct ModelInfo {
  std::string model;
  std::vector<TensorDesc> inputs;
  std::vector<TensorDesc> outputs;
};

struct InferRequest {
  std::string model;
  uint32_t timeout_ms = 0;  // 0: the server's default
  std::vector<TensorDesc> inputs;
};

struct InferReply {
  uint32_t batch_size = 0;
  uint64_t queue_ns = 0;
  uint64_t compute_ns = 0;
  std::vector<TensorDesc> outputs;
};

struct ErrorReply {
  uint16_t code = 0;  // an ErrorCode value or kErrorUnauthenticated
  std::string message;
};

std::vector<std::byte> encode(const Hello& m);
std::vector<std::byte> encode(const HelloOk& m);
std::vector<std::byte> encode(const ModelInfoRequest& m);
std::vector<std::byte> encode(const ModelInfo& m);
std::vector<std::byte> encode(const InferRequest& m);
std::vector<std::byte> encode(const InferReply& m);
std::vector<std::byte> encode(const ErrorReply& m);

// Each kInvalidArgument on truncated, trailing or out-of-range metadata.
Result<Hello> decode_hello(std::span<const std::byte> meta);
Result<HelloOk> decode_hello_ok(std::span<const std::byte> meta);
Result<ModelInfoRequest> decode_model_info_request(std::span<const std::byte> meta);
Result<ModelInfo> decode_model_info(std::span<const std::byte> meta);
Result<InferRequest> decode_infer_request(std::span<const std::byte> meta);
Result<InferReply> decode_infer_reply(std::span<const std::byte> meta);
Result<ErrorReply> decode_error(std::span<const std::byte> meta);

// The sum of the tensors' byte counts must be the frame's data_len: kInvalidArgument otherwise.
Status check_data_len(std::span<const TensorDesc> tensors, uint32_t data_len);

// The fixed header followed by `meta`, ready to send (the data section, if any, follows).
std::vector<std::byte> frame(FrameType type, uint64_t request_id, std::span<const std::byte> meta,
                             uint32_t data_len = 0, uint16_t flags = 0);

// An ErrorReply's code as a Status on the client side: protocol codes become kInvalidArgument.
Status error_status(const ErrorReply& reply);
uint16_t wire_code(ErrorCode code);

}  // namespace sliceserve::client::wire
