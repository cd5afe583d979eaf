#include "cuda_libraries.h"

#include <dlfcn.h>

#include <initializer_list>
#include <string>

#include "cuda_driver_api.h"

namespace sliceserve::backends {
namespace {

#define SS_LIB_EXPORTED_NAME_INNER(name) #name
#define SS_LIB_EXPORTED_NAME(name) SS_LIB_EXPORTED_NAME_INNER(name)

Status unavailable(const std::string& why) {
  return {ErrorCode::kUnavailable,
          why + " (the CUDA executor needs cuDNN 9 and cuBLAS 12 or 13 on the library path)"};
}

// The first of `sonames` that opens; the error lists every one tried.
Result<void*> open_first(std::initializer_list<const char*> sonames, std::string* opened) {
  std::string tried;
  for (const char* soname : sonames) {
    dlerror();
    if (void* handle = dlopen(soname, RTLD_NOW | RTLD_LOCAL)) {
      *opened = soname;
      return handle;
    }
    const char* why = dlerror();
    if (!tried.empty()) tried += "; ";
    tried += why != nullptr ? why : soname;
  }
  return unavailable("cannot open " + std::string(*sonames.begin()) + " (" + tried + ")");
}

template <typename Fn>
Status resolve(void* handle, const std::string& library, const char* symbol, Fn* fn) {
  if (!resolve_symbol(handle, symbol, fn)) return unavailable(library + " has no " + symbol);
  return Status::ok();
}

Result<CudaLibraries> open_libraries() {
  CudaLibraries libs;
  ASSIGN_OR_RETURN(void* cudnn, open_first({"libcudnn.so.9"}, &libs.cudnn_library));
  ASSIGN_OR_RETURN(void* cublas,
                   open_first({"libcublas.so.13", "libcublas.so.12"}, &libs.cublas_library));
#define SS_CUDNN_RESOLVE(name) \
  RETURN_IF_ERROR(resolve(cudnn, libs.cudnn_library, SS_LIB_EXPORTED_NAME(name), &libs.cudnn.name));
  SS_CUDNN_FUNCTIONS(SS_CUDNN_RESOLVE)
#undef SS_CUDNN_RESOLVE
#define SS_CUBLAS_RESOLVE(name) \
  RETURN_IF_ERROR(              \
      resolve(cublas, libs.cublas_library, SS_LIB_EXPORTED_NAME(name), &libs.cublas.name));
  SS_CUBLAS_FUNCTIONS(SS_CUBLAS_RESOLVE)
#undef SS_CUBLAS_RESOLVE
  libs.cudnn_version = libs.cudnn.cudnnGetVersion();
  if (libs.cudnn_version < 90000) {
    return unavailable(libs.cudnn_library + " reports version " +
                       std::to_string(libs.cudnn_version) + ", 9.0 or newer is needed");
  }
  return libs;
}

}  // namespace

Result<const CudaLibraries*> load_cuda_libraries() {
  // Opened once, kept for the process (thread-safe static initialisation).
  static const Result<CudaLibraries>* const loaded = new Result<CudaLibraries>(open_libraries());
  if (!loaded->is_ok()) return loaded->status();
  return &loaded->value();
}

Status cudnn_error(const CudnnApi& api, cudnnStatus_t status, const char* call, const char* file,
                   int line) {
  const char* text = api.cudnnGetErrorString != nullptr ? api.cudnnGetErrorString(status) : nullptr;
  const std::string error =
      text != nullptr ? std::string(text) : "cudnnStatus_t " + std::to_string(int(status));
  return {ErrorCode::kInternal, call_failure(call, error, file, line)};
}

Status cublas_error(const CublasApi& api, cublasStatus_t status, const char* call, const char* file,
                    int line) {
  const char* text =
      api.cublasGetStatusString != nullptr ? api.cublasGetStatusString(status) : nullptr;
  const std::string error =
      text != nullptr ? std::string(text) : "cublasStatus_t " + std::to_string(int(status));
  return {ErrorCode::kInternal, call_failure(call, error, file, line)};
}

}  // namespace sliceserve::backends
