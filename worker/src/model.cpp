#include "sliceserve/worker/model.h"

#include <string>

#include "null_model.h"
#include "onnx_model.h"
#include "synthetic_model.h"

namespace sliceserve::worker {
namespace {

Status check_spec(const shm::ModelSpec& spec) {
  if (spec.n_inputs > shm::kMaxTensors || spec.n_outputs > shm::kMaxTensors) {
    return Status(
        ErrorCode::kInvalidArgument,
        "model spec declares more than " + std::to_string(shm::kMaxTensors) + " inputs or outputs");
  }
  for (const shm::TensorSpec& tensor : spec.input_specs()) {
    if (tensor.dtype == shm::DataType::kInvalid || tensor.element_count() == 0) {
      return Status(ErrorCode::kInvalidArgument,
                    "model input \"" + std::string(tensor.name_view()) + "\" is not declared");
    }
  }
  for (const shm::TensorSpec& tensor : spec.output_specs()) {
    if (tensor.dtype == shm::DataType::kInvalid || tensor.element_count() == 0) {
      return Status(ErrorCode::kInvalidArgument,
                    "model output \"" + std::string(tensor.name_view()) + "\" is not declared");
    }
  }
  return Status::ok();
}

}  // namespace

Result<std::unique_ptr<Model>> create_model(const ModelOptions& options, const shm::ModelSpec& spec,
                                            backends::WeightStore* weights) {
  RETURN_IF_ERROR(check_spec(spec));
  if (options.kind == "null") return create_null_model(spec);
  if (options.kind == "synthetic") return create_synthetic_model(options, spec, weights);
  if (options.kind == "onnx") {
    if (options.path.empty()) {
      return Status(ErrorCode::kInvalidArgument, "model kind \"onnx\" needs a path");
    }
    return create_onnx_model(options, spec, weights);
  }
  return Status(ErrorCode::kInvalidArgument,
                "unknown model kind \"" + options.kind + "\" (null|synthetic|onnx)");
}

}  // namespace sliceserve::worker
