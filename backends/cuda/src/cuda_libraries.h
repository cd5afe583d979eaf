#pragma once
// Private to the cuda wing: cuDNN and cuBLAS, reached like the driver through dlopen, so that no
// binary needs them to start. load_cuda_libraries() opens libcudnn.so.9 and libcublas (soname 13,
// else 12: their legacy APIs used here are the same) once per process and resolves the functions
// the executor calls; the outcome (libraries or error) is kept. A missing library is
// kUnavailable, naming what was tried and the dlerror text: on the GPU machines they ship with
// PyTorch (site-packages/nvidia/{cudnn,cublas}/lib), so LD_LIBRARY_PATH must name them.

#include <cublas_v2.h>
#include <cudnn.h>

#include <string>

#include "sliceserve/shm/status.h"

namespace sliceserve::backends {

// clang-format off
#define SS_CUDNN_FUNCTIONS(X) \
  X(cudnnGetErrorString) \
  X(cudnnGetVersion) \
  X(cudnnCreate) \
  X(cudnnDestroy) \
  X(cudnnSetStream) \
  X(cudnnCreateTensorDescriptor) \
  X(cudnnSetTensorNdDescriptor) \
  X(cudnnDestroyTensorDescriptor) \
  X(cudnnCreateFilterDescriptor) \
  X(cudnnSetFilterNdDescriptor) \
  X(cudnnDestroyFilterDescriptor) \
  X(cudnnCreateConvolutionDescriptor) \
  X(cudnnSetConvolutionNdDescriptor) \
  X(cudnnSetConvolutionGroupCount) \
  X(cudnnSetConvolutionMathType) \
  X(cudnnDestroyConvolutionDescriptor) \
  X(cudnnGetConvolutionNdForwardOutputDim) \
  X(cudnnFindConvolutionForwardAlgorithm) \
  X(cudnnGetConvolutionForwardWorkspaceSize) \
  X(cudnnConvolutionForward) \
  X(cudnnConvolutionBiasActivationForward) \
  X(cudnnCreateActivationDescriptor) \
  X(cudnnSetActivationDescriptor) \
  X(cudnnDestroyActivationDescriptor)

#define SS_CUBLAS_FUNCTIONS(X) \
  X(cublasGetStatusString) \
  X(cublasCreate) \
  X(cublasDestroy) \
  X(cublasSetStream) \
  X(cublasSetWorkspace) \
  X(cublasSetMathMode) \
  X(cublasSgemm) \
  X(cublasSgemmStridedBatched)
// clang-format on

struct CudnnApi {
#define SS_CUDNN_MEMBER(name) decltype(&::name) name = nullptr;
  SS_CUDNN_FUNCTIONS(SS_CUDNN_MEMBER)
#undef SS_CUDNN_MEMBER
};

struct CublasApi {
#define SS_CUBLAS_MEMBER(name) decltype(&::name) name = nullptr;
  SS_CUBLAS_FUNCTIONS(SS_CUBLAS_MEMBER)
#undef SS_CUBLAS_MEMBER
};

struct CudaLibraries {
  CudnnApi cudnn;
  CublasApi cublas;
  std::string cudnn_library;  // the sonames that were opened
  std::string cublas_library;
  size_t cudnn_version = 0;  // cudnnGetVersion(): 91900 = 9.19.0
};

// The process-wide libraries (never unloaded); kUnavailable when one is missing or lacks a
// function.
Result<const CudaLibraries*> load_cuda_libraries();

// "<call>: <library's status name and text> at file:line", kInternal.
Status cudnn_error(const CudnnApi& api, cudnnStatus_t status, const char* call, const char* file,
                   int line);
Status cublas_error(const CublasApi& api, cublasStatus_t status, const char* call, const char* file,
                    int line);

}  // namespace sliceserve::backends

#define SS_CUDNN_CHECK(api, call)                                                          \
  do {                                                                                     \
    const cudnnStatus_t ss_cudnn_status_ = (call);                                         \
    if (ss_cudnn_status_ != CUDNN_STATUS_SUCCESS) {                                        \
      return ::sliceserve::backends::cudnn_error((api), ss_cudnn_status_, #call, __FILE__, \
                                                 __LINE__);                                \
    }                                                                                      \
  } while (0)

#define SS_CUBLAS_CHECK(api, call)                                                           \
  do {                                                                                       \
    const cublasStatus_t ss_cublas_status_ = (call);                                         \
    if (ss_cublas_status_ != CUBLAS_STATUS_SUCCESS) {                                        \
      return ::sliceserve::backends::cublas_error((api), ss_cublas_status_, #call, __FILE__, \
                                                  __LINE__);                                 \
    }                                                                                        \
  } while (0)
