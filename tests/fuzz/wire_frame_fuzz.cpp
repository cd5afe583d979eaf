// libFuzzer entry point for the TCP protocol's frame parser (client/src/wire.cpp), which the
// server runs on every byte a client sends: any bytes give a frame or an error, never a crash or
// an allocation beyond the input's size; what decodes encodes back to the same bytes.
// Input: a frame (header, metadata); the header's type picks the metadata decoder.

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <span>

#include "sliceserve/client/wire.h"

namespace {

namespace wire = sliceserve::client::wire;

template <typename Decode>
void round_trip(std::span<const std::byte> meta, Decode decode) {
  auto message = decode(meta);
  if (!message.is_ok()) return;
  const std::vector<std::byte> again = wire::encode(*message);
  if (again.size() != meta.size() || !std::equal(again.begin(), again.end(), meta.begin())) {
    std::abort();
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto bytes = std::as_bytes(std::span<const uint8_t>(data, size));
  const wire::Limits limits{4096, 1 << 20};
  auto header = wire::decode_header(bytes, limits);
  if (!header.is_ok()) return 0;
  const auto encoded = wire::encode_header(*header);
  if (!std::equal(encoded.begin(), encoded.end(), bytes.begin())) std::abort();
  const auto rest = bytes.subspan(wire::kHeaderBytes);
  const auto meta = rest.first(std::min<size_t>(rest.size(), header->header_len));
  switch (header->type) {
    case wire::FrameType::kHello:
      round_trip(meta, wire::decode_hello);
      break;
    case wire::FrameType::kHelloOk:
      round_trip(meta, wire::decode_hello_ok);
      break;
    case wire::FrameType::kModelInfo:
      round_trip(meta, wire::decode_model_info_request);
      break;
    case wire::FrameType::kModelInfoOk:
      round_trip(meta, wire::decode_model_info);
      break;
    case wire::FrameType::kInfer: {
      round_trip(meta, wire::decode_infer_request);
      auto request = wire::decode_infer_request(meta);
      if (request.is_ok()) (void)wire::check_data_len(request->inputs, header->data_len);
      break;
    }
    case wire::FrameType::kInferOk:
      round_trip(meta, wire::decode_infer_reply);
      break;
    case wire::FrameType::kError:
      round_trip(meta, wire::decode_error);
      break;
  }
  return 0;
}
