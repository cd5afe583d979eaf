#pragma once
// Model weights in device memory, shared between the workers of one model as CUDA VMM
// allocations exported as POSIX file descriptors, which the controller's fd broker
// (sliceserve/shm/fd_broker.h) keeps open for as long as the model is served. Plain CUDA IPC
// memory dies with the exporting process, and in a shadow resize the live worker exits first;
// a VMM allocation lives while any process holds a handle, a mapping or its fd.
//
// get_or_create(key, bytes, fill):
//   1. FETCH key from the broker. Found: cuMemImportFromShareableHandle, cuMemAddressReserve,
//      cuMemMap, cuMemSetAccess (read-write for the device) -> region shared = true.
//   2. Not found: cuMemCreate (pinned device memory, POSIX fd handle type, the size rounded up
//      to cuMemGetAllocationGranularity's minimum), map it the same way, fill a host staging
//      buffer through `fill`, copy it to the device (cuMemcpyHtoDAsync on the null stream, then
//      cuStreamSynchronize), cuMemExportToShareableHandle and PUBLISH -> shared = false. When
//      another worker published first (the broker answers EXISTS), ours is dropped and theirs
//      imported: two workers that raced still end with one copy.
//   3. When the device cannot share (no VMM, no POSIX fd handles), importing or mapping fails
//      (whether VMM fd sharing works under MPS is unverified), the broker is unreachable or its
//      entry does not match (another format, device or size): a private copy (cuMemAlloc), the
//      reason passed to `warn`, and the bytes counted in private_bytes(). Never silent.
// With an empty broker path (a standalone worker) every region is a private copy, no warning.
//
// The broker entry: bytes = the allocation's size (rounded), meta =
// "sliceserve-cuda-vmm/1 device=<ordinal> bytes=<requested>"; an importer checks all three.
// The ordinal is the device as the worker sees it (after CUDA_VISIBLE_DEVICES), so every worker
// of a model must see the same device list.
//
// Regions' `data` are device addresses (CUdeviceptr) cast to const std::byte*: never dereference
// them on the host (see weight_store.h). All calls run with the device's primary context current
// (retained by the store), restoring the caller's context afterwards. The store and its regions
// must not outlive the driver (load_cuda_driver()'s is never unloaded).

#include <functional>
#include <memory>
#include <string>

#include "sliceserve/backends/cuda/cuda_driver.h"
#include "sliceserve/backends/weight_store.h"

namespace sliceserve::backends {

// Receives one line per fallback to a private copy ("weights \"conv1\": private copy of
// 9437184 bytes: ..."). Without one, the lines go to stderr.
using WeightStoreWarning = std::function<void(const std::string& line)>;

// The store for device `device` of `driver`; `broker_path` is the model's fd broker socket (empty:
// private copies only). kInvalidArgument for a device out of range.
Result<std::unique_ptr<WeightStore>> open_cuda_weight_store(const CudaDriver& driver, int device,
                                                            std::string broker_path,
                                                            WeightStoreWarning warn = {});
// The same over a driver function table, which tests fill with fakes (cuda_driver_api.h).
Result<std::unique_ptr<WeightStore>> open_cuda_weight_store(const CudaDriverApi& api, int device,
                                                            std::string broker_path,
                                                            WeightStoreWarning warn = {});

}  // namespace sliceserve::backends
