#pragma once
// Private to the hip wing: the HIP runtime functions HipRuntime resolved, and the checked-call
// macro. Members are named as the runtime's functions so that a failed call's text reads as the
// call ("hipExtStreamCreateWithCUMask(&stream, words, mask)"). Their types come from the HIP
// headers (libamdhip64-dev), so a signature that changes there fails to compile here.

#ifndef __HIP_PLATFORM_AMD__
#define __HIP_PLATFORM_AMD__ 1  // the headers' host-only AMD path; no device compiler involved
#endif
#include <hip/hip_runtime_api.h>

#include <string>
#include <string_view>

#include "sliceserve/backends/hip/hip_runtime.h"
#include "sliceserve/shm/status.h"

namespace sliceserve::backends {

// Every runtime function the hip wing calls, resolved together at load: a runtime that lacks one
// is too old for the whole wing. X(name) for each.
// clang-format off
#define SS_HIP_RUNTIME_FUNCTIONS(X) \
  X(hipGetErrorName) \
  X(hipGetErrorString) \
  X(hipRuntimeGetVersion) \
  X(hipGetDeviceCount) \
  X(hipSetDevice) \
  X(hipDeviceGetName) \
  X(hipDeviceGetAttribute) \
  X(hipExtStreamCreateWithCUMask) \
  X(hipExtStreamGetCUMask) \
  X(hipStreamSynchronize) \
  X(hipStreamDestroy) \
  X(hipStreamCreateWithFlags) \
  X(hipStreamWaitEvent) \
  X(hipEventCreateWithFlags) \
  X(hipEventDestroy) \
  X(hipEventRecord) \
  X(hipEventElapsedTime) \
  X(hipFree) \
  X(hipMemcpyAsync) \
  X(hipHostRegister) \
  X(hipHostUnregister) \
  X(hipModuleLoadData) \
  X(hipModuleUnload) \
  X(hipModuleGetFunction) \
  X(hipModuleLaunchKernel)
// Functions the headers overload for C++ (hipMalloc has a T** template): typed explicitly.
// X(name, pointer type) for each.
#define SS_HIP_TYPED_RUNTIME_FUNCTIONS(X) \
  X(hipMalloc, HipMallocFunction)
// clang-format on

using HipMallocFunction = hipError_t (*)(void**, size_t);

struct HipRuntimeApi {
#define SS_HIP_MEMBER(name) decltype(&::name) name = nullptr;
  SS_HIP_RUNTIME_FUNCTIONS(SS_HIP_MEMBER)
#undef SS_HIP_MEMBER
#define SS_HIP_TYPED_MEMBER(name, type) type name = nullptr;
  SS_HIP_TYPED_RUNTIME_FUNCTIONS(SS_HIP_TYPED_MEMBER)
#undef SS_HIP_TYPED_MEMBER
};

// "<call>: hipErrorXxx: <runtime's description> at file:line" with `code` (kInternal by
// default). `call` is the call's source text; a leading "api." / "api_." is dropped.
Status hip_error(const HipRuntimeApi& api, hipError_t result, const char* call, const char* file,
                 int line, ErrorCode code = ErrorCode::kInternal);

}  // namespace sliceserve::backends

// Evaluates a runtime call; returns a Status from the enclosing function when it fails.
#define SS_HIP_CHECK(api, call)                                                                   \
  do {                                                                                            \
    const hipError_t ss_hip_result_ = (call);                                                     \
    if (ss_hip_result_ != hipSuccess) {                                                           \
      return ::sliceserve::backends::hip_error((api), ss_hip_result_, #call, __FILE__, __LINE__); \
    }                                                                                             \
  } while (0)
