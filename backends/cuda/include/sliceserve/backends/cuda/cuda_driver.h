#pragma once
// The CUDA driver, reached at run time: dlopen("libcuda.so.1"), never linked, so that every
// binary starts on a machine without a driver and says "no CUDA device" (kUnavailable).
//
// load_cuda_driver() opens the library once per process (thread-safe; the outcome, success or
// failure, is kept), resolves the driver functions the cuda wing calls, runs cuInit(0) and
// requires at least one device. Failures, all kUnavailable and starting "no CUDA device: ":
//   - the library is missing:  "... libcuda.so.1 not found (<dlerror text>)";
//   - a function is missing:   "... <library> has no <symbol> (driver too old: the cuda
//                               backends need the CUDA 12.4 driver API or newer)";
//   - cuInit fails / 0 devices: "... cuInit(0): CUDA_ERROR_NO_DEVICE: <driver's text> at
//   file:line".
// The function table itself (vendor types) stays private to backends/cuda/src.

#include <memory>
#include <string>

#include "sliceserve/shm/status.h"

namespace sliceserve::backends {

struct CudaDriverApi;  // the resolved driver functions: backends/cuda/src/cuda_driver_api.h

struct CudaDeviceInfo {
  int index = 0;
  std::string name;       // "NVIDIA H200"
  unsigned sm_count = 0;  // CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT
  int cc_major = 0;       // compute capability
  int cc_minor = 0;
};

class CudaDriver {
 public:
  ~CudaDriver();
  CudaDriver(const CudaDriver&) = delete;
  CudaDriver& operator=(const CudaDriver&) = delete;

  const std::string& library() const { return library_; }  // what dlopen was given
  int driver_version() const { return driver_version_; }   // 12040 = 12.4; 0 if not known
  int device_count() const { return device_count_; }       // > 0
  // Name, SM count and compute capability of device `index`; kInvalidArgument out of range.
  Result<CudaDeviceInfo> device_info(int index) const;

  // For the cuda wing's own sources (vendor types): the resolved functions.
  const CudaDriverApi& api() const { return *api_; }

  // Opens `library` (not cached: load_cuda_driver() is the process-wide one), for tests that
  // point it at a missing library, one without the driver's symbols, or the toolkit's stub.
  static Result<std::unique_ptr<CudaDriver>> open(const std::string& library);

 private:
  CudaDriver(std::string library, void* handle, std::unique_ptr<CudaDriverApi> api);

  std::string library_;
  void* handle_ = nullptr;  // dlopen handle, dlclose'd on destruction
  std::unique_ptr<CudaDriverApi> api_;
  int driver_version_ = 0;
  int device_count_ = 0;
};

// The process-wide driver: CudaDriver::open("libcuda.so.1") on the first call, the same answer
// (the driver or the error) on every later one. The driver is never unloaded.
Result<const CudaDriver*> load_cuda_driver();

}  // namespace sliceserve::backends
