#pragma once
// Loads an ONNX model (protobuf ModelProto) into the engine's graph IR: initializers and Constant
// values converted to Tensors, nodes sorted topologically. Errors, never exceptions or crashes.

#include <cstddef>
#include <span>
#include <string>

#include "sliceserve/shm/status.h"
#include "sliceserve/worker/engine/graph.h"

namespace sliceserve::worker::engine {

// kNotFound when the file is missing, kInvalidArgument when it is not a valid model.
Result<Graph> load_onnx_file(const std::string& path);
Result<Graph> load_onnx_bytes(std::span<const std::byte> bytes);
// One serialized TensorProto (the input_*.pb / output_*.pb files of ONNX's test data).
Result<Tensor> load_onnx_tensor(std::span<const std::byte> bytes);

}  // namespace sliceserve::worker::engine
