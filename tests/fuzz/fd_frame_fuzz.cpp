// libFuzzer entry point for the fd broker's frame parser: any bytes give a frame or an error,
// never a crash; the size read from the header and the frame agree; a frame that parses encodes
// back to exactly the bytes it came from (the format has one encoding per frame).

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <span>

#include "sliceserve/shm/fd_broker.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace sliceserve::shm;
  const auto bytes = std::as_bytes(std::span<const uint8_t>(data, size));
  auto frame_size = fd_frame_size(bytes);
  auto frame = decode_fd_frame(bytes);
  if (frame.is_ok()) {
    if (!frame_size.is_ok() || *frame_size != size || size > kMaxFdFrameBytes) std::abort();
    if (frame->key.size() > kMaxFdKeyBytes || frame->meta.size() > kMaxFdMetaBytes) std::abort();
    auto again = encode_fd_frame(*frame);
    if (!again.is_ok() || again->size() != size ||
        std::memcmp(again->data(), data, size) != 0) {
      std::abort();
    }
  } else if (frame_size.is_ok() && *frame_size > kMaxFdFrameBytes) {
    std::abort();
  }
  return 0;
}
