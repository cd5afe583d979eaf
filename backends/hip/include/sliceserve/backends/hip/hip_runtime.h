#pragma once
// The HIP runtime, reached at run time: dlopen("libamdhip64.so.5", then the unversioned
// "libamdhip64.so"), never linked, so that every binary starts on a machine without ROCm and says
// "no HIP device" (kUnavailable).
//
// load_hip_runtime() opens the library once per process (thread-safe; the outcome, success or
// failure, is kept), resolves the runtime functions the hip wing calls and requires at least one
// device. Failures, all kUnavailable and starting "no HIP device: ":
//   - no library:            "... libamdhip64.so.5 not found (<dlerror>); libamdhip64.so not
//                             found (<dlerror>)";
//   - a function is missing: "... <library> has no <symbol> (HIP runtime too old: ...)";
//   - no device:             "... hipGetDeviceCount(&count): hipErrorNoDevice: <runtime's text>
//                             at hip_runtime.cpp:N" (ROCm installed, no GPU or no /dev/kfd).
// The function table itself (HIP types) stays private to backends/hip/src.

#include <memory>
#include <string>
#include <vector>

#include "sliceserve/shm/status.h"

namespace sliceserve::backends {

struct HipRuntimeApi;  // the resolved runtime functions: backends/hip/src/hip_runtime_api.h

struct HipDeviceInfo {
  int index = 0;
  std::string name;       // "AMD Instinct MI210"
  unsigned cu_count = 0;  // hipDeviceAttributeMultiprocessorCount: CUs the runtime may use
  int gcn_arch = 0;       // 906 for gfx906, 910 for gfx90a, 1030 for gfx1030; 0: not reported
};

class HipRuntime {
 public:
  ~HipRuntime();
  HipRuntime(const HipRuntime&) = delete;
  HipRuntime& operator=(const HipRuntime&) = delete;

  const std::string& library() const { return library_; }   // what dlopen succeeded with
  int runtime_version() const { return runtime_version_; }  // HIP_VERSION encoding; 0 unknown
  int device_count() const { return device_count_; }        // > 0
  // Name, CU count and architecture of device `index`; kInvalidArgument out of range.
  Result<HipDeviceInfo> device_info(int index) const;

  // For the hip wing's own sources (HIP types): the resolved functions.
  const HipRuntimeApi& api() const { return *api_; }

  // Opens the first of `libraries` that dlopen finds (not cached: load_hip_runtime() is the
  // process-wide one), for tests that point it at a missing library or one without HIP's
  // symbols.
  static Result<std::unique_ptr<HipRuntime>> open(const std::vector<std::string>& libraries);

 private:
  HipRuntime(std::string library, void* handle, std::unique_ptr<HipRuntimeApi> api);

  std::string library_;
  void* handle_ = nullptr;  // dlopen handle, dlclose'd on destruction
  std::unique_ptr<HipRuntimeApi> api_;
  int runtime_version_ = 0;
  int device_count_ = 0;
};

// The sonames tried, in order: ROCm 5's, then the development symlink (another ROCm major).
std::vector<std::string> hip_runtime_libraries();

// The process-wide runtime: HipRuntime::open(hip_runtime_libraries()) on the first call, the
// same answer (the runtime or the error) on every later one. The runtime is never unloaded.
Result<const HipRuntime*> load_hip_runtime();

}  // namespace sliceserve::backends
