// Device weights shared through CUDA VMM POSIX fds held by the controller's fd broker (see
// cuda_weight_store.h for the protocol). Each region's device memory is a DeviceMemory that
// records every step it took (allocation or import, address reservation, mapping, exported or
// fetched fd), so an error at any step, a lost race and the destructor undo exactly those steps.

#include "sliceserve/backends/cuda/cuda_weight_store.h"

#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "cuda_driver_api.h"
#include "sliceserve/shm/fd_broker.h"
#include "sliceserve/shm/unique_fd.h"

namespace sliceserve::backends {
namespace {

constexpr const char* kMetaFormat = "sliceserve-cuda-vmm/1";
constexpr size_t kMaxRegionBytes = size_t{1} << 40;

std::string entry_meta(int device, size_t bytes) {
  return std::string(kMetaFormat) + " device=" + std::to_string(device) +
         " bytes=" + std::to_string(bytes);
}

// One region's device memory: a private cuMemAlloc, or a VMM allocation (created or imported)
// mapped at a reserved range, with its fd. release() undoes what was done, last step first.
class DeviceMemory {
 public:
  explicit DeviceMemory(const CudaDriverApi& api) : api_(api) {}
  ~DeviceMemory() { (void)release(); }
  DeviceMemory(const DeviceMemory&) = delete;
  DeviceMemory& operator=(const DeviceMemory&) = delete;

  CUdeviceptr ptr = 0;
  size_t size = 0;         // of the allocation and its mapping
  bool allocated = false;  // cuMemAlloc: ptr is freed with cuMemFree
  CUmemGenericAllocationHandle handle = 0;
  bool has_handle = false;  // cuMemCreate / cuMemImportFromShareableHandle
  bool reserved = false;    // cuMemAddressReserve of [ptr, ptr + size)
  bool mapped = false;      // cuMemMap of handle there
  shm::UniqueFd fd;         // exported (ours) or fetched (another worker's)

  // Every step is undone even when one fails; the first failure is returned.
  Status release() {
    Status first;
    auto undo = [&](CUresult result, const char* call) {
      if (result != CUDA_SUCCESS && first.is_ok()) {
        first = cuda_error(api_, result, call, __FILE__, __LINE__);
      }
    };
    if (mapped) undo(api_.cuMemUnmap(ptr, size), "cuMemUnmap(ptr, size)");
    if (reserved) undo(api_.cuMemAddressFree(ptr, size), "cuMemAddressFree(ptr, size)");
    if (has_handle) undo(api_.cuMemRelease(handle), "cuMemRelease(handle)");
    if (allocated) undo(api_.cuMemFree(ptr), "cuMemFree(ptr)");
    mapped = reserved = has_handle = allocated = false;
    fd.reset();
    return first;
  }

 private:
  const CudaDriverApi& api_;
};

class CudaWeightStore final : public WeightStore {
 public:
  CudaWeightStore(const CudaDriverApi& api, int device, CUdevice cu_device, CUcontext context,
                  std::string broker_path, WeightStoreWarning warn)
      : api_(api),
        device_(device),
        cu_device_(cu_device),
        context_(context),
        broker_path_(std::move(broker_path)),
        warn_(std::move(warn)) {}

  ~CudaWeightStore() override {
    CUcontext previous = nullptr;
    const bool entered = enter(&previous).is_ok();
    for (auto it = regions_.rbegin(); it != regions_.rend(); ++it) {
      Status released = (*it)->memory->release();
      if (!released.is_ok()) warn("weights \"" + (*it)->key + "\": " + released.to_string());
    }
    regions_.clear();
    if (entered) {
      if (Status left = leave(previous); !left.is_ok()) warn(left.to_string());
    }
    if (CUresult r = api_.cuDevicePrimaryCtxRelease(cu_device_); r != CUDA_SUCCESS) {
      warn(
          cuda_error(api_, r, "cuDevicePrimaryCtxRelease(device)", __FILE__, __LINE__).to_string());
    }
  }
  CudaWeightStore(const CudaWeightStore&) = delete;
  CudaWeightStore& operator=(const CudaWeightStore&) = delete;

  // Decides once whether this device can share at all; the reason is repeated for every
  // private copy it causes.
  Status init() {
    if (broker_path_.empty()) return Status::ok();
    int vmm = 0;
    int posix_fd = 0;
    SS_CU_CHECK(api_,
                api_.cuDeviceGetAttribute(
                    &vmm, CU_DEVICE_ATTRIBUTE_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED, cu_device_));
    SS_CU_CHECK(api_,
                api_.cuDeviceGetAttribute(
                    &posix_fd, CU_DEVICE_ATTRIBUTE_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR_SUPPORTED,
                    cu_device_));
    if (vmm == 0 || posix_fd == 0) {
      unshareable_ = "device " + std::to_string(device_) + " cannot share weights (" +
                     (vmm == 0 ? "no virtual memory management" : "no POSIX fd handles") + ")";
      return Status::ok();
    }
    const CUmemAllocationProp prop = allocation_prop();
    const CUresult r =
        api_.cuMemGetAllocationGranularity(&granularity_, &prop, CU_MEM_ALLOC_GRANULARITY_MINIMUM);
    if (r != CUDA_SUCCESS || granularity_ == 0) {
      unshareable_ = cuda_error(api_, r,
                                "cuMemGetAllocationGranularity(&granularity, &prop, "
                                "CU_MEM_ALLOC_GRANULARITY_MINIMUM)",
                                __FILE__, __LINE__)
                         .message();
    }
    return Status::ok();
  }

  Result<WeightRegion> get_or_create(
      std::string_view key, size_t bytes,
      const std::function<Status(std::span<std::byte>)>& fill) override {
    RETURN_IF_ERROR(validate_weight_key(key));
    if (bytes == 0 || bytes > kMaxRegionBytes) {
      return Status(ErrorCode::kInvalidArgument, "weight region size must be in 1.." +
                                                     std::to_string(kMaxRegionBytes) +
                                                     " bytes, got " + std::to_string(bytes));
    }
    for (const auto& held : regions_) {
      if (held->key != key) continue;
      if (held->region.bytes != bytes) {
        return Status(ErrorCode::kInvalidArgument,
                      "weight region \"" + std::string(key) + "\" is already mapped with " +
                          std::to_string(held->region.bytes) + " bytes, asked for " +
                          std::to_string(bytes));
      }
      return held->region;
    }
    CUcontext previous = nullptr;
    RETURN_IF_ERROR(enter(&previous));
    Result<WeightRegion> region = load(std::string(key), bytes, fill);
    Status left = leave(previous);
    if (region.is_ok() && !left.is_ok()) return left;
    if (!region.is_ok())
      return region.status().with_context("weight region \"" + std::string(key) + "\"");
    return region;
  }

  size_t mapped_bytes() const override { return mapped_; }
  size_t private_bytes() const override { return private_; }
  bool holds_device_memory() const override { return true; }

 private:
  struct Held {
    std::string key;
    WeightRegion region;
    std::unique_ptr<DeviceMemory> memory;
  };

  CUmemAllocationProp allocation_prop() const {
    CUmemAllocationProp prop{};
    prop.type = CU_MEM_ALLOCATION_TYPE_PINNED;
    prop.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
    prop.location.id = device_;
    prop.requestedHandleTypes = CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR;
    return prop;
  }

  Status enter(CUcontext* previous) {
    SS_CU_CHECK(api_, api_.cuCtxGetCurrent(previous));
    if (*previous != context_) SS_CU_CHECK(api_, api_.cuCtxSetCurrent(context_));
    return Status::ok();
  }
  Status leave(CUcontext previous) {
    if (previous != context_) SS_CU_CHECK(api_, api_.cuCtxSetCurrent(previous));
    return Status::ok();
  }

  void warn(const std::string& line) const {
    if (warn_) {
      warn_(line);
    } else {
      std::fprintf(stderr, "sliceserve: %s\n", line.c_str());
    }
  }

  size_t rounded(size_t bytes) const {
    return (bytes + granularity_ - 1) / granularity_ * granularity_;
  }

  Result<WeightRegion> load(std::string key, size_t bytes,
                            const std::function<Status(std::span<std::byte>)>& fill) {
    if (broker_path_.empty()) return private_copy(std::move(key), bytes, fill, "");
    if (!unshareable_.empty()) return private_copy(std::move(key), bytes, fill, unshareable_);
    Result<shm::FetchedFd> fetched = shm::fetch_fd(broker_path_, key);
    if (fetched.is_ok()) {
      auto memory = std::make_unique<DeviceMemory>(api_);
      Status imported = import(std::move(fetched).value(), bytes, *memory);
      if (!imported.is_ok()) {
        memory.reset();  // whatever the import did take, before the copy takes more
        return private_copy(std::move(key), bytes, fill, "importing: " + imported.message());
      }
      return hold(std::move(key), bytes, std::move(memory), true);
    }
    if (fetched.status().code() != ErrorCode::kNotFound) {
      return private_copy(std::move(key), bytes, fill, fetched.status().message());
    }
    return create_and_publish(std::move(key), bytes, fill);
  }

  Result<WeightRegion> create_and_publish(std::string key, size_t bytes,
                                          const std::function<Status(std::span<std::byte>)>& fill) {
    auto memory = std::make_unique<DeviceMemory>(api_);
    Status created = create(rounded(bytes), *memory);
    if (!created.is_ok()) return private_copy(std::move(key), bytes, fill, created.message());
    RETURN_IF_ERROR(upload(memory->ptr, bytes, fill));
    int fd = -1;
    const CUresult exported = api_.cuMemExportToShareableHandle(
        &fd, memory->handle, CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR, 0);
    if (exported != CUDA_SUCCESS) {
      return keep_unpublished(std::move(key), bytes, std::move(memory),
                              cuda_error(api_, exported,
                                         "cuMemExportToShareableHandle(&fd, handle, "
                                         "CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR, 0)",
                                         __FILE__, __LINE__)
                                  .message());
    }
    memory->fd.reset(fd);
    Status published =
        shm::publish_fd(broker_path_, key, memory->size, entry_meta(device_, bytes), fd);
    if (published.is_ok()) return hold(std::move(key), bytes, std::move(memory), false);
    if (published.code() != ErrorCode::kAlreadyExists) {
      return keep_unpublished(std::move(key), bytes, std::move(memory), published.message());
    }
    // Another worker filled and published the same region meanwhile: use theirs, drop ours.
    Result<shm::FetchedFd> theirs = shm::fetch_fd(broker_path_, key);
    if (!theirs.is_ok()) {
      return keep_unpublished(std::move(key), bytes, std::move(memory),
                              "lost the race to publish, then: " + theirs.status().message());
    }
    auto shared = std::make_unique<DeviceMemory>(api_);
    Status imported = import(std::move(theirs).value(), bytes, *shared);
    if (!imported.is_ok()) {
      return keep_unpublished(std::move(key), bytes, std::move(memory),
                              "lost the race to publish, then importing: " + imported.message());
    }
    Status released = memory->release();
    if (!released.is_ok())
      warn("weights \"" + key + "\": dropping our copy: " + released.to_string());
    return hold(std::move(key), bytes, std::move(shared), true);
  }

  // A VMM allocation of `size` bytes (a multiple of the granularity), mapped read-write.
  Status create(size_t size, DeviceMemory& memory) {
    const CUmemAllocationProp prop = allocation_prop();
    SS_CU_CHECK(api_, api_.cuMemCreate(&memory.handle, size, &prop, 0));
    memory.has_handle = true;
    return map(size, memory);
  }

  // Maps another worker's allocation after checking that it is this region of this device.
  Status import(shm::FetchedFd fetched, size_t bytes, DeviceMemory& memory) {
    const std::string expected = entry_meta(device_, bytes);
    if (fetched.meta != expected || fetched.bytes != rounded(bytes)) {
      return Status(ErrorCode::kIncompatible,
                    "the broker holds \"" + fetched.meta + "\" of " +
                        std::to_string(fetched.bytes) + " bytes, this worker needs \"" + expected +
                        "\" of " + std::to_string(rounded(bytes)) + " bytes");
    }
    memory.fd = std::move(fetched.fd);
    // The POSIX fd handle type passes the descriptor itself, by value, as the pointer.
    void* os_handle = reinterpret_cast<void*>(static_cast<uintptr_t>(memory.fd.get()));
    SS_CU_CHECK(api_, api_.cuMemImportFromShareableHandle(
                          &memory.handle, os_handle, CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR));
    memory.has_handle = true;
    return map(fetched.bytes, memory);
  }

  Status map(size_t size, DeviceMemory& memory) {
    SS_CU_CHECK(api_, api_.cuMemAddressReserve(&memory.ptr, size, granularity_, 0, 0));
    memory.reserved = true;
    memory.size = size;
    SS_CU_CHECK(api_, api_.cuMemMap(memory.ptr, size, 0, memory.handle, 0));
    memory.mapped = true;
    CUmemAccessDesc access{};
    access.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
    access.location.id = device_;
    access.flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
    SS_CU_CHECK(api_, api_.cuMemSetAccess(memory.ptr, size, &access, 1));
    return Status::ok();
  }

  // Fills a host staging buffer and copies it to the device, waiting for the copy.
  Status upload(CUdeviceptr ptr, size_t bytes,
                const std::function<Status(std::span<std::byte>)>& fill) {
    // Not zeroed: `fill` writes every byte.
    std::unique_ptr<std::byte[]> staging(new std::byte[bytes]);
    Status filled = fill(std::span<std::byte>(staging.get(), bytes));
    if (!filled.is_ok()) return filled.with_context("filling the weights");
    SS_CU_CHECK(api_, api_.cuMemcpyHtoDAsync(ptr, staging.get(), bytes, nullptr));
    SS_CU_CHECK(api_, api_.cuStreamSynchronize(nullptr));
    return Status::ok();
  }

  // A copy of this worker's own (cuMemAlloc), reported unless the store is standalone.
  Result<WeightRegion> private_copy(std::string key, size_t bytes,
                                    const std::function<Status(std::span<std::byte>)>& fill,
                                    const std::string& why) {
    if (!why.empty()) {
      warn("weights \"" + key + "\": private copy of " + std::to_string(bytes) +
           " bytes (not shared with the model's other workers): " + why);
    }
    auto memory = std::make_unique<DeviceMemory>(api_);
    SS_CU_CHECK(api_, api_.cuMemAlloc(&memory->ptr, bytes));
    memory->allocated = true;
    memory->size = bytes;
    RETURN_IF_ERROR(upload(memory->ptr, bytes, fill));
    return hold(std::move(key), bytes, std::move(memory), false);
  }

  // Our filled VMM allocation that the broker does not hold: serves this worker only.
  Result<WeightRegion> keep_unpublished(std::string key, size_t bytes,
                                        std::unique_ptr<DeviceMemory> memory,
                                        const std::string& why) {
    warn("weights \"" + key + "\": private copy of " + std::to_string(bytes) +
         " bytes (not shared with the model's other workers): " + why);
    return hold(std::move(key), bytes, std::move(memory), false);
  }

  WeightRegion hold(std::string key, size_t bytes, std::unique_ptr<DeviceMemory> memory,
                    bool shared) {
    // The device address, carried in the interface's pointer (see weight_store.h).
    const auto* data = reinterpret_cast<const std::byte*>(static_cast<uintptr_t>(memory->ptr));
    const WeightRegion region{data, bytes, shared};
    regions_.push_back(std::make_unique<Held>(Held{std::move(key), region, std::move(memory)}));
    mapped_ += bytes;
    if (!shared) private_ += bytes;
    return region;
  }

  const CudaDriverApi& api_;
  const int device_;
  const CUdevice cu_device_;
  const CUcontext context_;  // the device's primary context, retained
  const std::string broker_path_;
  const WeightStoreWarning warn_;
  std::string unshareable_;  // why this device shares nothing; empty when it can
  size_t granularity_ = 0;   // cuMemGetAllocationGranularity's minimum
  std::vector<std::unique_ptr<Held>> regions_;
  size_t mapped_ = 0;
  size_t private_ = 0;
};

}  // namespace

Result<std::unique_ptr<WeightStore>> open_cuda_weight_store(const CudaDriverApi& api, int device,
                                                            std::string broker_path,
                                                            WeightStoreWarning warn) {
  int count = 0;
  SS_CU_CHECK(api, api.cuDeviceGetCount(&count));
  if (device < 0 || device >= count) {
    return Status(ErrorCode::kInvalidArgument, "CUDA device " + std::to_string(device) +
                                                   " out of range (" + std::to_string(count) +
                                                   " devices)");
  }
  CUdevice cu_device = 0;
  SS_CU_CHECK(api, api.cuDeviceGet(&cu_device, device));
  CUcontext context = nullptr;
  SS_CU_CHECK(api, api.cuDevicePrimaryCtxRetain(&context, cu_device));
  // Owns the retained context from here: an early return releases it.
  auto store = std::make_unique<CudaWeightStore>(api, device, cu_device, context,
                                                 std::move(broker_path), std::move(warn));
  RETURN_IF_ERROR(store->init());
  return std::unique_ptr<WeightStore>(std::move(store));
}

Result<std::unique_ptr<WeightStore>> open_cuda_weight_store(const CudaDriver& driver, int device,
                                                            std::string broker_path,
                                                            WeightStoreWarning warn) {
  return open_cuda_weight_store(driver.api(), device, std::move(broker_path), std::move(warn));
}

}  // namespace sliceserve::backends
