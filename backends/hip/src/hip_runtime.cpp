#include "sliceserve/backends/hip/hip_runtime.h"

#include <dlfcn.h>

#include <cstring>
#include <string>
#include <utility>

#include "hip_runtime_api.h"
#include "sliceserve/backends/vendor_library.h"

namespace sliceserve::backends {
namespace {

#define SS_HIP_NAME_INNER(name) #name
#define SS_HIP_NAME(name) SS_HIP_NAME_INNER(name)

Status no_device(const std::string& why) {
  return Status(ErrorCode::kUnavailable, "no HIP device: " + why);
}

template <typename Fn>
Status resolve(void* handle, const std::string& library, const char* symbol, Fn* fn) {
  if (!resolve_symbol(handle, symbol, fn)) {
    return no_device(library + " has no " + symbol +
                     " (HIP runtime too old: the cumask backend needs ROCm 4.0 or newer)");
  }
  return Status::ok();
}

Status resolve_all(void* handle, const std::string& library, HipRuntimeApi* api) {
#define SS_HIP_RESOLVE(name) \
  RETURN_IF_ERROR(resolve(handle, library, SS_HIP_NAME(name), &api->name));
  SS_HIP_RUNTIME_FUNCTIONS(SS_HIP_RESOLVE)
#undef SS_HIP_RESOLVE
#define SS_HIP_RESOLVE_TYPED(name, type) \
  RETURN_IF_ERROR(resolve(handle, library, SS_HIP_NAME(name), &api->name));
  SS_HIP_TYPED_RUNTIME_FUNCTIONS(SS_HIP_RESOLVE_TYPED)
#undef SS_HIP_RESOLVE_TYPED
  return Status::ok();
}

}  // namespace

Status hip_error(const HipRuntimeApi& api, hipError_t result, const char* call, const char* file,
                 int line, ErrorCode code) {
  const char* name = api.hipGetErrorName != nullptr ? api.hipGetErrorName(result) : nullptr;
  const char* what = api.hipGetErrorString != nullptr ? api.hipGetErrorString(result) : nullptr;
  std::string error = name != nullptr ? name : "hipError_t " + std::to_string(int(result));
  // Some runtimes (ROCm 5.2) describe an error by its name: say it once.
  if (what == nullptr) {
    error += ": (the runtime has no description)";
  } else if (name == nullptr || std::strcmp(what, name) != 0) {
    error += ": " + std::string(what);
  }
  return Status(code, call_failure(call, error, file, line));
}

HipRuntime::HipRuntime(std::string library, void* handle, std::unique_ptr<HipRuntimeApi> api)
    : library_(std::move(library)), handle_(handle), api_(std::move(api)) {}

HipRuntime::~HipRuntime() {
  if (handle_ != nullptr) dlclose(handle_);
}

Result<std::unique_ptr<HipRuntime>> HipRuntime::open(const std::vector<std::string>& libraries) {
  void* handle = nullptr;
  std::string library;
  std::string missing;
  for (const std::string& candidate : libraries) {
    dlerror();
    handle = dlopen(candidate.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (handle != nullptr) {
      library = candidate;
      break;
    }
    const char* why = dlerror();
    missing += (missing.empty() ? "" : "; ") + candidate + " not found (" +
               (why != nullptr ? why : "dlopen failed") + ")";
  }
  if (handle == nullptr) {
    return no_device(missing.empty() ? "no HIP runtime library to try" : missing);
  }
  // Owns the handle from here: an early return closes the library.
  std::unique_ptr<HipRuntime> runtime(
      new HipRuntime(library, handle, std::make_unique<HipRuntimeApi>()));
  HipRuntimeApi& api = *runtime->api_;
  RETURN_IF_ERROR(resolve_all(handle, library, &api));
  int version = 0;
  if (api.hipRuntimeGetVersion(&version) == hipSuccess) runtime->runtime_version_ = version;
  int count = 0;
  const hipError_t counted = api.hipGetDeviceCount(&count);
  if (counted != hipSuccess) {
    return no_device(
        hip_error(api, counted, "hipGetDeviceCount(&count)", __FILE__, __LINE__).message());
  }
  if (count <= 0) return no_device("hipGetDeviceCount reports 0 devices");
  runtime->device_count_ = count;
  return runtime;
}

Result<HipDeviceInfo> HipRuntime::device_info(int index) const {
  if (index < 0 || index >= device_count_) {
    return Status(ErrorCode::kInvalidArgument, "no HIP device " + std::to_string(index) +
                                                   " (there are " + std::to_string(device_count_) +
                                                   ")");
  }
  const HipRuntimeApi& api = *api_;
  char name[256] = {};
  SS_HIP_CHECK(api, api.hipDeviceGetName(name, int(sizeof name) - 1, index));
  int cus = 0;
  SS_HIP_CHECK(api, api.hipDeviceGetAttribute(&cus, hipDeviceAttributeMultiprocessorCount, index));
  HipDeviceInfo info;
  info.index = index;
  info.name = name;
  info.cu_count = cus > 0 ? unsigned(cus) : 0;
  // Deprecated (ROCm 6 keeps its number unused), so a refusal only means "not reported": the
  // architecture then comes from [backend.cumask] (shader_engines, wgp).
  int arch = 0;
  if (api.hipDeviceGetAttribute(&arch, hipDeviceAttributeGcnArch, index) == hipSuccess) {
    info.gcn_arch = arch > 0 ? arch : 0;
  }
  return info;
}

std::vector<std::string> hip_runtime_libraries() { return {"libamdhip64.so.5", "libamdhip64.so"}; }

Result<const HipRuntime*> load_hip_runtime() {
  // A function-local static: initialized once, thread-safe (C++11 magic statics).
  static const Result<std::unique_ptr<HipRuntime>>* const loaded =
      new Result<std::unique_ptr<HipRuntime>>(HipRuntime::open(hip_runtime_libraries()));
  if (!loaded->is_ok()) return loaded->status();
  return static_cast<const HipRuntime*>(loaded->value().get());
}

}  // namespace sliceserve::backends
