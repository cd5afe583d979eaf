#include "sliceserve/backends/cuda/cuda_driver.h"

#include <dlfcn.h>

#include <cstring>
#include <string>
#include <utility>

#include "cuda_driver_api.h"
#include "sliceserve/backends/vendor_library.h"

namespace sliceserve::backends {
namespace {

// The exported name cuda.h maps a function to (cuStreamDestroy -> "cuStreamDestroy_v2").
#define SS_CU_EXPORTED_NAME_INNER(name) #name
#define SS_CU_EXPORTED_NAME(name) SS_CU_EXPORTED_NAME_INNER(name)

constexpr const char* kDriverLibrary = "libcuda.so.1";

Status no_device(const std::string& why) {
  return Status(ErrorCode::kUnavailable, "no CUDA device: " + why);
}

Status resolve_all(void* handle, const std::string& library, CudaDriverApi* api) {
#define SS_CU_RESOLVE(name)                                                                  \
  if (!resolve_symbol(handle, SS_CU_EXPORTED_NAME(name), &api->name)) {                      \
    return no_device(library + " has no " + SS_CU_EXPORTED_NAME(name) +                      \
                     " (driver too old: the cuda backends need the CUDA 12.4 driver API or " \
                     "newer)");                                                              \
  }
  SS_CUDA_DRIVER_FUNCTIONS(SS_CU_RESOLVE)
#undef SS_CU_RESOLVE
  return Status::ok();
}

// Names for the errors a driver that cannot describe them (the toolkit's stub, a broken install)
// fails with; cuGetErrorName is asked first.
const char* known_error_name(CUresult result) {
  switch (result) {
    case CUDA_ERROR_INVALID_VALUE:
      return "CUDA_ERROR_INVALID_VALUE";
    case CUDA_ERROR_OUT_OF_MEMORY:
      return "CUDA_ERROR_OUT_OF_MEMORY";
    case CUDA_ERROR_NOT_INITIALIZED:
      return "CUDA_ERROR_NOT_INITIALIZED";
    case CUDA_ERROR_STUB_LIBRARY:
      return "CUDA_ERROR_STUB_LIBRARY";
    case CUDA_ERROR_DEVICE_UNAVAILABLE:
      return "CUDA_ERROR_DEVICE_UNAVAILABLE";
    case CUDA_ERROR_SYSTEM_DRIVER_MISMATCH:
      return "CUDA_ERROR_SYSTEM_DRIVER_MISMATCH";
    case CUDA_ERROR_NO_DEVICE:
      return "CUDA_ERROR_NO_DEVICE";
    case CUDA_ERROR_INVALID_DEVICE:
      return "CUDA_ERROR_INVALID_DEVICE";
    case CUDA_ERROR_NOT_SUPPORTED:
      return "CUDA_ERROR_NOT_SUPPORTED";
    default:
      return nullptr;
  }
}

}  // namespace

Status cuda_error(const CudaDriverApi& api, CUresult result, const char* call, const char* file,
                  int line, ErrorCode code) {
  const char* name = nullptr;
  const char* text = nullptr;
  if (api.cuGetErrorName == nullptr || api.cuGetErrorName(result, &name) != CUDA_SUCCESS) {
    name = known_error_name(result);
  }
  if (api.cuGetErrorString == nullptr || api.cuGetErrorString(result, &text) != CUDA_SUCCESS) {
    text = nullptr;
  }
  std::string error =
      name != nullptr ? std::string(name) : "CUresult " + std::to_string(int(result));
  error += ": ";
  error += text != nullptr ? text : "(the driver has no description)";
  return Status(code, call_failure(call, error, file, line));
}

CudaDriver::CudaDriver(std::string library, void* handle, std::unique_ptr<CudaDriverApi> api)
    : library_(std::move(library)), handle_(handle), api_(std::move(api)) {}

CudaDriver::~CudaDriver() {
  if (handle_ != nullptr) dlclose(handle_);
}

Result<std::unique_ptr<CudaDriver>> CudaDriver::open(const std::string& library) {
  dlerror();
  void* handle = dlopen(library.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (handle == nullptr) {
    const char* why = dlerror();
    return no_device(library + " not found (" + (why != nullptr ? why : "dlopen failed") + ")");
  }
  // Owns the handle from here: an early return closes the library.
  std::unique_ptr<CudaDriver> driver(
      new CudaDriver(library, handle, std::make_unique<CudaDriverApi>()));
  CudaDriverApi& api = *driver->api_;
  RETURN_IF_ERROR(resolve_all(handle, library, &api));
  auto checked = [&](CUresult result, const char* call, int line) {
    return result == CUDA_SUCCESS
               ? Status::ok()
               : no_device(cuda_error(api, result, call, __FILE__, line).message());
  };
  RETURN_IF_ERROR(checked(api.cuInit(0), "cuInit(0)", __LINE__));
  int version = 0;
  if (api.cuDriverGetVersion(&version) == CUDA_SUCCESS) driver->driver_version_ = version;
  int count = 0;
  RETURN_IF_ERROR(checked(api.cuDeviceGetCount(&count), "cuDeviceGetCount(&count)", __LINE__));
  if (count <= 0) return no_device("cuDeviceGetCount reports 0 devices");
  driver->device_count_ = count;
  return driver;
}

Result<CudaDeviceInfo> CudaDriver::device_info(int index) const {
  if (index < 0 || index >= device_count_) {
    return Status(ErrorCode::kInvalidArgument, "no CUDA device " + std::to_string(index) +
                                                   " (there are " + std::to_string(device_count_) +
                                                   ")");
  }
  const CudaDriverApi& api = *api_;
  CUdevice device = 0;
  SS_CU_CHECK(api, api.cuDeviceGet(&device, index));
  char name[256] = {};
  SS_CU_CHECK(api, api.cuDeviceGetName(name, int(sizeof name) - 1, device));
  int sms = 0;
  int major = 0;
  int minor = 0;
  SS_CU_CHECK(api,
              api.cuDeviceGetAttribute(&sms, CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, device));
  SS_CU_CHECK(
      api, api.cuDeviceGetAttribute(&major, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, device));
  SS_CU_CHECK(
      api, api.cuDeviceGetAttribute(&minor, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, device));
  CudaDeviceInfo info;
  info.index = index;
  info.name = name;
  info.sm_count = sms > 0 ? unsigned(sms) : 0;
  info.cc_major = major;
  info.cc_minor = minor;
  return info;
}

Result<const CudaDriver*> load_cuda_driver() {
  // A function-local static: initialized once, thread-safe (C++11 magic statics).
  static const Result<std::unique_ptr<CudaDriver>>* const loaded =
      new Result<std::unique_ptr<CudaDriver>>(CudaDriver::open(kDriverLibrary));
  if (!loaded->is_ok()) return loaded->status();
  return static_cast<const CudaDriver*>(loaded->value().get());
}

}  // namespace sliceserve::backends
