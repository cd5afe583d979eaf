#pragma once
// Private to the cuda wing: the driver functions CudaDriver resolved, and the checked-call
// macro. Members are named as the driver's functions so that a failed call's text reads as the
// call ("cuGreenCtxCreate(&context, desc, device, CU_GREEN_CTX_DEFAULT_STREAM)"). Their types
// come from cuda.h's declarations, whose #defines pick the versioned ABI (cuStreamDestroy is
// cuStreamDestroy_v2): the resolver looks up the same exported names.

#include <cuda.h>

#include "sliceserve/backends/cuda/cuda_driver.h"
#include "sliceserve/shm/status.h"

namespace sliceserve::backends {

struct CudaDriverApi {
  decltype(&::cuInit) cuInit = nullptr;
  decltype(&::cuDriverGetVersion) cuDriverGetVersion = nullptr;
  decltype(&::cuGetErrorName) cuGetErrorName = nullptr;
  decltype(&::cuGetErrorString) cuGetErrorString = nullptr;
  decltype(&::cuDeviceGetCount) cuDeviceGetCount = nullptr;
  decltype(&::cuDeviceGet) cuDeviceGet = nullptr;
  decltype(&::cuDeviceGetAttribute) cuDeviceGetAttribute = nullptr;
  decltype(&::cuDeviceGetName) cuDeviceGetName = nullptr;
  decltype(&::cuDeviceGetDevResource) cuDeviceGetDevResource = nullptr;
  decltype(&::cuDevSmResourceSplitByCount) cuDevSmResourceSplitByCount = nullptr;
  decltype(&::cuDevResourceGenerateDesc) cuDevResourceGenerateDesc = nullptr;
  decltype(&::cuGreenCtxCreate) cuGreenCtxCreate = nullptr;
  decltype(&::cuGreenCtxDestroy) cuGreenCtxDestroy = nullptr;
  decltype(&::cuGreenCtxStreamCreate) cuGreenCtxStreamCreate = nullptr;
  decltype(&::cuStreamDestroy) cuStreamDestroy = nullptr;
  decltype(&::cuCtxFromGreenCtx) cuCtxFromGreenCtx = nullptr;
};

// "<call>: CUDA_ERROR_xxx: <driver's description> at file:line", kInternal. `call` is the
// call's source text; a leading "api." / "api_->" is dropped. The error's name and text come from
// cuGetErrorName / cuGetErrorString (a numeric "CUresult <n>" where the driver has none).
Status cuda_error(const CudaDriverApi& api, CUresult result, const char* call, const char* file,
                  int line, ErrorCode code = ErrorCode::kInternal);

}  // namespace sliceserve::backends

// Evaluates a driver call; returns a Status from the enclosing function when it fails.
#define SS_CU_CHECK(api, call)                                                                    \
  do {                                                                                            \
    const CUresult ss_cu_result_ = (call);                                                        \
    if (ss_cu_result_ != CUDA_SUCCESS) {                                                          \
      return ::sliceserve::backends::cuda_error((api), ss_cu_result_, #call, __FILE__, __LINE__); \
    }                                                                                             \
  } while (0)
