#pragma once
// Element-wise access to tensors of any shm::DataType through a double, with the conversion
// rules documented for the synthetic model in sliceserve/worker/model.h.

#include <cstddef>
#include <cstdint>

#include "sliceserve/shm/tensor_spec.h"

namespace sliceserve::worker {

// Element `index` of a tensor of `dtype` starting at `base` (any alignment), as a double.
double load_element(shm::DataType dtype, const std::byte* base, size_t index);

// Stores `value` converted to `dtype`: floats convert (FP16 via float), integers saturate then
// truncate toward zero with NaN -> 0, BOOL is 1 for non-zero and 0 for zero or NaN.
void store_element(shm::DataType dtype, std::byte* base, size_t index, double value);

}  // namespace sliceserve::worker
