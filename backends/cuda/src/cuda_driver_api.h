#pragma once
// Private to the cuda wing: the driver functions CudaDriver resolved, and the checked-call
// macro. Members are named as the driver's functions so that a failed call's text reads as the
// call ("cuGreenCtxCreate(&context, desc, device, CU_GREEN_CTX_DEFAULT_STREAM)"). Their types
// come from cuda.h's declarations, whose #defines pick the versioned ABI (cuStreamDestroy is
// cuStreamDestroy_v2): the resolver looks up the same exported names.

#include <cuda.h>

#include <string>
#include <string_view>

#include "sliceserve/backends/cuda/cuda_driver.h"
#include "sliceserve/backends/vendor_library.h"
#include "sliceserve/shm/status.h"

namespace sliceserve::backends {

// Every driver function the cuda wing calls, resolved together at load: a driver that lacks one
// is "too old" for the whole wing. X(name) for each.
// clang-format off
#define SS_CUDA_DRIVER_FUNCTIONS(X) \
  /* errors, devices */ \
  X(cuGetErrorName) \
  X(cuGetErrorString) \
  X(cuInit) \
  X(cuDriverGetVersion) \
  X(cuDeviceGetCount) \
  X(cuDeviceGet) \
  X(cuDeviceGetAttribute) \
  X(cuDeviceGetName) \
  X(cuMemGetInfo) \
  /* contexts, streams, events */ \
  X(cuDevicePrimaryCtxRetain) \
  X(cuDevicePrimaryCtxRelease) \
  X(cuCtxSetCurrent) \
  X(cuCtxGetCurrent) \
  X(cuCtxSynchronize) \
  X(cuStreamCreate) \
  X(cuStreamDestroy) \
  X(cuStreamSynchronize) \
  X(cuStreamWaitEvent) \
  X(cuEventCreate) \
  X(cuEventDestroy) \
  X(cuEventRecord) \
  X(cuEventSynchronize) \
  X(cuEventElapsedTime) \
  /* green contexts */ \
  X(cuDeviceGetDevResource) \
  X(cuDevSmResourceSplitByCount) \
  X(cuDevResourceGenerateDesc) \
  X(cuGreenCtxCreate) \
  X(cuGreenCtxDestroy) \
  X(cuGreenCtxStreamCreate) \
  X(cuCtxFromGreenCtx) \
  /* memory: device, pinned host, copies */ \
  X(cuMemAlloc) \
  X(cuMemFree) \
  X(cuMemHostRegister) \
  X(cuMemHostUnregister) \
  X(cuMemcpyHtoDAsync) \
  X(cuMemcpyDtoHAsync) \
  X(cuMemcpyDtoDAsync) \
  X(cuMemsetD8Async) \
  /* virtual memory management (weights shared between processes as POSIX fds) */ \
  X(cuMemCreate) \
  X(cuMemRelease) \
  X(cuMemExportToShareableHandle) \
  X(cuMemImportFromShareableHandle) \
  X(cuMemGetAllocationGranularity) \
  X(cuMemAddressReserve) \
  X(cuMemAddressFree) \
  X(cuMemMap) \
  X(cuMemUnmap) \
  X(cuMemSetAccess) \
  /* modules, launches, graphs */ \
  X(cuLibraryLoadData) \
  X(cuLibraryUnload) \
  X(cuLibraryGetKernel) \
  X(cuLaunchKernel) \
  X(cuStreamBeginCapture) \
  X(cuStreamEndCapture) \
  X(cuGraphInstantiate) \
  X(cuGraphLaunch) \
  X(cuGraphDestroy) \
  X(cuGraphExecDestroy)
// clang-format on

struct CudaDriverApi {
#define SS_CU_MEMBER(name) decltype(&::name) name = nullptr;
  SS_CUDA_DRIVER_FUNCTIONS(SS_CU_MEMBER)
#undef SS_CU_MEMBER
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
