#pragma once
// An emulated HIP runtime for the hip wing's tests (the executor's, and a CU-masked slice's
// right-sized run through it): a recording fake of HipRuntimeApi whose "device" is host memory.
// Module launches run the kernels' own bodies on the host by name (device_host_kernels.h), copies
// are memcpy, events and streams are handles whose use is recorded, and a CU-masked stream keeps
// its mask for hipExtStreamGetCUMask to read back. Work runs when it is enqueued (the host is one
// in-order "device"), so what tests assert is which stream and event each call named, and in what
// order (EmulatedHip::calls).

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <map>
#include <set>
#include <utility>
#include <vector>

#include "device_kernels.h"
#include "hip_runtime_api.h"
#include "support/device_host_kernels.h"

namespace sliceserve::testing {

using backends::DeviceKernel;
using backends::HipRuntimeApi;

struct HipCopy {
  hipMemcpyKind kind = hipMemcpyDefault;
  const void* src = nullptr;
  size_t bytes = 0;
  hipStream_t stream = nullptr;
};

// One stream-ordered call, in the order the runtime received it.
struct HipCall {
  enum class Kind { kLaunch, kCopy, kRecord, kWait, kSynchronize };
  Kind kind = Kind::kLaunch;
  hipStream_t stream = nullptr;
  hipEvent_t event = nullptr;  // kRecord, kWait
};

// What the fake saw, and the knobs the tests turn.
struct EmulatedHip {
  std::map<hipFunction_t, DeviceKernel> functions;
  std::vector<int> devices_set;
  const void* image = nullptr;
  std::vector<hipStream_t> launch_streams;  // per kernel launch
  std::vector<DeviceKernel> launched;
  std::vector<HipCopy> copies;
  std::vector<hipStream_t> synchronized;
  std::vector<std::pair<hipEvent_t, hipStream_t>> records;  // hipEventRecord(event, stream)
  std::vector<std::pair<hipStream_t, hipEvent_t>> waits;    // hipStreamWaitEvent(stream, event)
  std::vector<HipCall> calls;                               // all of the above, in order
  std::map<hipEvent_t, unsigned> event_flags;               // live events
  int events_created = 0;
  std::set<hipStream_t> live_streams;                     // created and not yet destroyed
  std::map<hipStream_t, std::vector<uint32_t>> cu_masks;  // per CU-masked stream ever created
  int allocations = 0;
  int modules = 0;
  std::vector<std::pair<void*, size_t>> registered;
  int unregistered = 0;
  hipError_t fail_malloc = hipSuccess;
  bool unknown_kernel = false;  // hipModuleGetFunction fails for ss_gemm
};

inline EmulatedHip& hip_device() {
  static EmulatedHip d;
  return d;
}

namespace emulated_hip {

template <typename T>
T handle(uintptr_t value) {
  return reinterpret_cast<T>(value);
}

// Stream handles never repeat in a process (a test's own fixed handles sit far below them).
inline hipStream_t next_stream() {
  static uintptr_t next = 0x100000;
  const auto stream = handle<hipStream_t>(next++);
  hip_device().live_streams.insert(stream);
  return stream;
}

inline const char* error_name(hipError_t error) {
  return error == hipErrorOutOfMemory ? "hipErrorOutOfMemory" : "hipErrorFake";
}
inline const char* error_string(hipError_t error) {
  return error == hipErrorOutOfMemory ? "out of memory" : "fake failure";
}
inline hipError_t set_device(int d) {
  hip_device().devices_set.push_back(d);
  return hipSuccess;
}
inline hipError_t stream_create(hipStream_t* stream, unsigned) {
  *stream = next_stream();
  return hipSuccess;
}
inline hipError_t cu_mask_stream_create(hipStream_t* stream, uint32_t words, const uint32_t* mask) {
  *stream = next_stream();
  hip_device().cu_masks[*stream].assign(mask, mask + words);
  return hipSuccess;
}
inline hipError_t cu_mask_get(hipStream_t stream, uint32_t words, uint32_t* mask) {
  const auto found = hip_device().cu_masks.find(stream);
  if (found == hip_device().cu_masks.end() || found->second.size() != words) {
    return hipErrorInvalidValue;
  }
  std::copy(found->second.begin(), found->second.end(), mask);
  return hipSuccess;
}
inline hipError_t stream_destroy(hipStream_t stream) {
  hip_device().live_streams.erase(stream);
  return hipSuccess;
}
inline hipError_t stream_sync(hipStream_t stream) {
  hip_device().synchronized.push_back(stream);
  hip_device().calls.push_back({HipCall::Kind::kSynchronize, stream, nullptr});
  return hipSuccess;
}
inline hipError_t mem_alloc(void** p, size_t bytes) {
  if (hip_device().fail_malloc != hipSuccess) return hip_device().fail_malloc;
  *p = std::aligned_alloc(256, (bytes + 255) / 256 * 256);
  std::memset(*p, 0xCD, bytes);  // garbage, as fresh device memory is
  ++hip_device().allocations;
  return hipSuccess;
}
inline hipError_t mem_free(void* p) {
  std::free(p);
  --hip_device().allocations;
  return hipSuccess;
}
inline hipError_t memcpy_async(void* dst, const void* src, size_t bytes, hipMemcpyKind kind,
                               hipStream_t stream) {
  hip_device().copies.push_back({kind, src, bytes, stream});
  hip_device().calls.push_back({HipCall::Kind::kCopy, stream, nullptr});
  std::memcpy(dst, src, bytes);
  return hipSuccess;
}
inline hipError_t host_register(void* p, size_t bytes, unsigned) {
  hip_device().registered.emplace_back(p, bytes);
  return hipSuccess;
}
inline hipError_t host_unregister(void*) {
  ++hip_device().unregistered;
  return hipSuccess;
}
inline hipError_t module_load(hipModule_t* module, const void* image) {
  hip_device().image = image;
  ++hip_device().modules;
  *module = handle<hipModule_t>(0x200);
  return hipSuccess;
}
inline hipError_t module_unload(hipModule_t) {
  --hip_device().modules;
  return hipSuccess;
}
inline hipError_t get_function(hipFunction_t* f, hipModule_t, const char* name) {
  if (hip_device().unknown_kernel && std::strcmp(name, "ss_gemm") == 0) return hipErrorNotFound;
  for (size_t i = 0; i < backends::kDeviceKernelCount; ++i) {
    const auto kernel = static_cast<DeviceKernel>(i);
    if (std::strcmp(backends::device_kernel_name(kernel), name) == 0) {
      *f = handle<hipFunction_t>(0x300 + i);
      hip_device().functions[*f] = kernel;
      return hipSuccess;
    }
  }
  return hipErrorNotFound;
}
inline hipError_t launch(hipFunction_t f, unsigned, unsigned, unsigned, unsigned, unsigned,
                         unsigned, unsigned, hipStream_t stream, void** params, void**) {
  const DeviceKernel kernel = hip_device().functions.at(f);
  hip_device().launch_streams.push_back(stream);
  hip_device().launched.push_back(kernel);
  hip_device().calls.push_back({HipCall::Kind::kLaunch, stream, nullptr});
  host_kernel(kernel, params[0])();
  return hipSuccess;
}
inline hipError_t event_create(hipEvent_t* event, unsigned flags) {
  static uintptr_t next = 0x9000;
  *event = handle<hipEvent_t>(next++);
  hip_device().event_flags[*event] = flags;
  ++hip_device().events_created;
  return hipSuccess;
}
inline hipError_t event_destroy(hipEvent_t event) {
  hip_device().event_flags.erase(event);
  return hipSuccess;
}
inline hipError_t event_record(hipEvent_t event, hipStream_t stream) {
  hip_device().records.emplace_back(event, stream);
  hip_device().calls.push_back({HipCall::Kind::kRecord, stream, event});
  return hipSuccess;
}
inline hipError_t wait_event(hipStream_t stream, hipEvent_t event, unsigned) {
  hip_device().waits.emplace_back(stream, event);
  hip_device().calls.push_back({HipCall::Kind::kWait, stream, event});
  return hipSuccess;
}
// Every step "takes" 0.25 ms.
inline hipError_t elapsed(float* ms, hipEvent_t, hipEvent_t) {
  *ms = 0.25F;
  return hipSuccess;
}

}  // namespace emulated_hip

inline HipRuntimeApi emulated_hip_runtime() {
  namespace e = emulated_hip;
  HipRuntimeApi api;
  api.hipGetErrorName = &e::error_name;
  api.hipGetErrorString = &e::error_string;
  api.hipSetDevice = &e::set_device;
  api.hipExtStreamCreateWithCUMask = &e::cu_mask_stream_create;
  api.hipExtStreamGetCUMask = &e::cu_mask_get;
  api.hipStreamCreateWithFlags = &e::stream_create;
  api.hipStreamDestroy = &e::stream_destroy;
  api.hipStreamSynchronize = &e::stream_sync;
  api.hipMalloc = &e::mem_alloc;
  api.hipFree = &e::mem_free;
  api.hipMemcpyAsync = &e::memcpy_async;
  api.hipHostRegister = &e::host_register;
  api.hipHostUnregister = &e::host_unregister;
  api.hipModuleLoadData = &e::module_load;
  api.hipModuleUnload = &e::module_unload;
  api.hipModuleGetFunction = &e::get_function;
  api.hipModuleLaunchKernel = &e::launch;
  api.hipEventCreateWithFlags = &e::event_create;
  api.hipEventDestroy = &e::event_destroy;
  api.hipEventRecord = &e::event_record;
  api.hipStreamWaitEvent = &e::wait_event;
  api.hipEventElapsedTime = &e::elapsed;
  return api;
}

// Stands in for the embedded code object (the fake loader only records where it is).
inline constexpr unsigned char kEmulatedCodeObject[] = {0x7f, 'E', 'L', 'F'};

}  // namespace sliceserve::testing
