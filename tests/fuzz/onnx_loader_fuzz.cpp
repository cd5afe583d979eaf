// libFuzzer entry point for the ONNX loader: any bytes give a graph or an error, never a crash;
// a graph that loads also goes through shape inference at two batch sizes.

#include <cstddef>
#include <cstdint>
#include <span>

#include "sliceserve/worker/engine/onnx_loader.h"
#include "sliceserve/worker/engine/shape_inference.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using sliceserve::worker::engine::infer_shapes;
  using sliceserve::worker::engine::load_onnx_bytes;
  auto graph = load_onnx_bytes(std::as_bytes(std::span<const uint8_t>(data, size)));
  if (graph.is_ok()) {
    (void)infer_shapes(*graph, 0);
    (void)infer_shapes(*graph, 3);
  }
  return 0;
}
