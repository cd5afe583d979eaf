#pragma once
// Private to the hip wing: the real CU-mask device over a given runtime table, so that a slice
// runs in tests over the same emulated runtime as the HIP executor (a right-sized run end to end);
// hip_cu_mask_device(index) in cu_mask_slice.h passes the loaded runtime.

#include <memory>

#include "hip_runtime_api.h"
#include "sliceserve/backends/hip/cu_mask_slice.h"
#include "sliceserve/backends/hip/hip_runtime.h"

namespace sliceserve::backends {

// hipExtStreamCreateWithCUMask / hipExtStreamGetCUMask / hipStreamDestroy through `api`, for the
// device `info` describes (already the calling thread's current one). `api` must outlive it.
std::unique_ptr<CuMaskDevice> hip_cu_mask_device(const HipRuntimeApi& api, HipDeviceInfo info);

}  // namespace sliceserve::backends
