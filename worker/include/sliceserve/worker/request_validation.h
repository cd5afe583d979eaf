#pragma once
// Checks a request in a slot against the model's declaration, on every request: what a client
// wrote into shared memory is untrusted input.

#include "sliceserve/shm/layout.h"
#include "sliceserve/shm/status.h"

namespace sliceserve::worker {

// kUnknownTensor, kWrongDtype, kWrongShape or kTensorTooLarge with a message naming the tensor.
Status validate_request(const shm::ModelSpec& spec, const shm::SlotHeader& slot);

}  // namespace sliceserve::worker
