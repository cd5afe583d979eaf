// libFuzzer entry point for the ONNX loader: any bytes give a graph or an error, never a crash;
// a graph that loads also goes through shape inference at two batch sizes, and one whose shapes
// are known goes on through fusion and lowering to a plan.

#include <cstddef>
#include <cstdint>
#include <deque>
#include <span>

#include "sliceserve/worker/engine/fusion.h"
#include "sliceserve/worker/engine/lowering.h"
#include "sliceserve/worker/engine/onnx_loader.h"
#include "sliceserve/worker/engine/shape_inference.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace sliceserve::worker::engine;
  auto graph = load_onnx_bytes(std::as_bytes(std::span<const uint8_t>(data, size)));
  if (!graph.is_ok()) return 0;
  (void)infer_shapes(*graph, 3);
  if (!infer_shapes(*graph, 0).is_ok()) return 0;
  if (!fuse(*graph).is_ok() || !infer_shapes(*graph, 0).is_ok()) return 0;
  std::deque<Tensor> storage;
  (void)lower(*graph, 0, storage);
  return 0;
}
