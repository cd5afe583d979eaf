#pragma once
// Model weights shared between a live worker and its shadow, so a shadow resize needs no second
// copy. The first worker of a model to load creates a region and fills it; every later worker
// of that model (the shadow, a restarted worker) maps the same bytes. The cpu backend keeps
// regions in POSIX shared memory; the CUDA backend implements the same interface with device
// memory exported as VMM shareable handles (POSIX fds, held by the controller's fd broker), the
// HIP backend later with HIP IPC handles.

#include <cstddef>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>

#include "sliceserve/shm/status.h"

namespace sliceserve::backends {

struct WeightRegion {
  // Host stores: the bytes, mapped read-only. Device stores (CUDA: open_cuda_weight_store in
  // backends/cuda/cuda_weight_store.h) carry the DEVICE address here: a CUdeviceptr cast to
  // const std::byte* (reinterpret_cast<CUdeviceptr>(data) gives it back). It must never be
  // dereferenced on the host; only device code and driver calls (copies, kernel arguments) use it.
  const std::byte* data = nullptr;
  size_t bytes = 0;
  bool shared = false;  // mapped from another worker's copy (false: this worker filled it)
};

class WeightStore {
 public:
  virtual ~WeightStore() = default;
  // The region named `key` of this model: mapped if a worker already published it, otherwise
  // created, filled by `fill` and published. The region stays valid while the store lives.
  virtual Result<WeightRegion> get_or_create(
      std::string_view key, size_t bytes,
      const std::function<Status(std::span<std::byte>)>& fill) = 0;
  // Bytes of regions this worker maps, and of those it filled itself.
  virtual size_t mapped_bytes() const = 0;
  virtual size_t private_bytes() const = 0;
  // True for stores of device memory (a region's `data` is then a device address): an executor
  // keeps its weights in a store only where they are usable, in host memory for the cpu
  // executor, in device memory for a GPU one.
  virtual bool holds_device_memory() const { return false; }
};

// A region key every store accepts: [A-Za-z0-9_.-]{1,64}, not "." or ".." (host stores name
// files after it). kInvalidArgument otherwise.
Status validate_weight_key(std::string_view key);

// Host memory store for the model whose segment is `segment_name` ("/sliceserve.<i>.<m>"):
// regions are "<segment_name>.w.<key>", mode 0600.
Result<std::unique_ptr<WeightStore>> open_host_weight_store(std::string_view segment_name);
// Removes every region of that model (the controller, when the model stops or at start).
void remove_host_weights(std::string_view segment_name);

}  // namespace sliceserve::backends
