#pragma once
// Kind "null": no compute, input 0 copied to output 0 (see sliceserve/worker/model.h).

#include <memory>

#include "sliceserve/shm/status.h"
#include "sliceserve/shm/tensor_spec.h"
#include "sliceserve/worker/model.h"

namespace sliceserve::worker {

Result<std::unique_ptr<Model>> create_null_model(const shm::ModelSpec& spec);

}  // namespace sliceserve::worker
