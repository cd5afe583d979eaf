#include "hip_kernels.h"

#include <string>

namespace sliceserve::backends {

#ifdef SLICESERVE_HIP_KERNELS_MISSING
// hipcc could not build the kernels (CMake said why): no code object, and the reason.
std::span<const unsigned char> hip_kernels_code_object() { return {}; }
const char* hip_kernels_archs() { return ""; }
const char* hip_kernels_missing() { return SLICESERVE_HIP_KERNELS_MISSING; }
#else
const char* hip_kernels_missing() { return ""; }
#endif

namespace {

Status load_module(const HipRuntimeApi& api, const void* image, hipModule_t* module) {
  SS_HIP_CHECK(api, api.hipModuleLoadData(module, image));
  return Status::ok();
}

Status get_function(const HipRuntimeApi& api, hipModule_t module, const char* name,
                    hipFunction_t* function) {
  SS_HIP_CHECK(api, api.hipModuleGetFunction(function, module, name));
  return Status::ok();
}

Status launch_function(const HipRuntimeApi& api, hipFunction_t function, unsigned blocks,
                       hipStream_t stream, void** args) {
  SS_HIP_CHECK(api, api.hipModuleLaunchKernel(function, blocks, 1, 1, kernels::kThreadsPerBlock, 1,
                                              1, 0, stream, args, nullptr));
  return Status::ok();
}

}  // namespace

Result<std::unique_ptr<HipKernels>> HipKernels::load(const HipRuntimeApi& api,
                                                     std::span<const unsigned char> code_object) {
  if (code_object.empty()) {
    return Status(ErrorCode::kUnavailable,
                  std::string("this build has no HIP kernels: ") + hip_kernels_missing());
  }
  hipModule_t module = nullptr;
  RETURN_IF_ERROR(load_module(api, code_object.data(), &module)
                      .with_context(std::string("the HIP kernels' code object (for ") +
                                    hip_kernels_archs() + ")"));
  // Owned from here: a failure below unloads the module.
  std::unique_ptr<HipKernels> loaded(new HipKernels(api, module));
  for (size_t i = 0; i < kDeviceKernelCount; ++i) {
    const char* name = device_kernel_name(DeviceKernel(i));
    RETURN_IF_ERROR(get_function(api, module, name, &loaded->functions_[i])
                        .with_context(std::string("HIP kernel ") + name));
  }
  return loaded;
}

HipKernels::~HipKernels() {
  // A destructor cannot report; the runtime frees the module at exit in any case.
  if (module_ != nullptr) (void)api_.hipModuleUnload(module_);
}

Status HipKernels::launch_params(hipStream_t stream, DeviceKernel kernel, unsigned blocks,
                                 void* params) const {
  void* args[] = {params};
  const Status launched = launch_function(api_, functions_[size_t(kernel)], blocks, stream, args);
  if (launched.is_ok()) return launched;
  return launched.with_context(std::string("HIP kernel ") + device_kernel_name(kernel));
}

}  // namespace sliceserve::backends
