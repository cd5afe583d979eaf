#include "sliceserve/worker/request_validation.h"

#include <string>

namespace sliceserve::worker {

Status validate_request(const shm::ModelSpec& spec, const shm::SlotHeader& slot) {
  if (slot.n_inputs != spec.n_inputs) {
    return Status(ErrorCode::kUnknownTensor, "request carries " + std::to_string(slot.n_inputs) +
                                                 " inputs, the model declares " +
                                                 std::to_string(spec.n_inputs));
  }
  for (uint32_t i = 0; i < spec.n_inputs; ++i) {
    const shm::TensorSpec& want = spec.inputs[i];
    const shm::RequestTensor& got = slot.inputs[i];
    const std::string name(want.name_view());
    if (got.dtype != want.dtype) {
      return Status(ErrorCode::kWrongDtype, "input '" + name + "' has dtype " +
                                                std::string(shm::data_type_name(got.dtype)) +
                                                ", expected " +
                                                std::string(shm::data_type_name(want.dtype)));
    }
    bool same_shape = got.ndims == want.ndims;
    for (uint8_t d = 0; same_shape && d < want.ndims; ++d) same_shape = got.dims[d] == want.dims[d];
    if (!same_shape) {
      size_t n = std::min<size_t>(got.ndims, shm::kMaxDims);
      return Status(ErrorCode::kWrongShape, "input '" + name + "' has shape " +
                                                shm::shape_to_string({got.dims, n}) +
                                                ", expected " + shm::shape_to_string(want.shape()));
    }
    if (got.bytes != want.byte_size()) {
      return Status(ErrorCode::kTensorTooLarge,
                    "input '" + name + "' carries " + std::to_string(got.bytes) +
                        " bytes, expected " + std::to_string(want.byte_size()));
    }
  }
  return Status::ok();
}

}  // namespace sliceserve::worker
