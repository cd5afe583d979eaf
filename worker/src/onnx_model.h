#pragma once
// Kind "onnx": an ONNX file run by the engine (engine/engine.h) on the worker's device. The spec's
// tensors are one item each: the model's inputs and outputs without their batch dimension, in
// the model's order, with its names, dtypes and shapes. A batch of n requests runs as one
// engine batch of n (plans exist for 1..max_batch), gathered from and scattered to the slots.

#include <memory>

#include "sliceserve/backends/weight_store.h"
#include "sliceserve/shm/status.h"
#include "sliceserve/shm/tensor_spec.h"
#include "sliceserve/worker/model.h"

namespace sliceserve::worker {

// kNotFound for a missing file; kInvalidArgument for an invalid or unsupported model, or a spec
// that differs from the model's (the message names the tensor and both declarations).
Result<std::unique_ptr<Model>> create_onnx_model(const ModelOptions& options,
                                                 const shm::ModelSpec& spec,
                                                 backends::WeightStore* weights);

}  // namespace sliceserve::worker
