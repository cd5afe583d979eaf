// libFuzzer entry point for the .npy reader: any bytes give an array or an error, never a crash
// or an allocation beyond the input's size; an array that parses formats back to bytes that
// parse to the same array.

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <span>

#include "sliceserve/client/npy.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using sliceserve::client::format_npy;
  using sliceserve::client::parse_npy;
  auto array = parse_npy(std::as_bytes(std::span<const uint8_t>(data, size)));
  if (array.is_ok()) {
    if (array->data.size() > size) std::abort();
    auto again = parse_npy(format_npy(*array));
    if (!again.is_ok() || again->dtype != array->dtype || again->shape != array->shape ||
        again->data != array->data) {
      std::abort();
    }
  }
  return 0;
}
