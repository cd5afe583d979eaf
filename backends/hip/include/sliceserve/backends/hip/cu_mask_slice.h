#pragma once
// The cumask backend: a slice is a set of compute units of one AMD GPU, held as a HIP stream
// created with a CU mask (hipExtStreamCreateWithCUMask), which the executor launches on.
//
// A stream's mask is fixed when it is created, so the slice keeps a pool: prepare(p) rounds p to
// a CU count under the slice's policy (cu_mask.h), and when no entry has that count yet it builds
// the mask, creates the stream and reads its mask back (hipExtStreamGetCUMask). A mask that reads
// back differently was narrowed by a process-wide mask (ROC_GLOBAL_CU_MASK / HSA_CU_MASK, which
// sliceserve never sets): the entry is refused, since its share would be a lie. select(i) only
// changes which entry is active: O(1), no runtime call. That is the instant resize, through the
// same Slice interface cpu:affinity and greenctx use. Entries are destroyed when the slice is,
// last first.
//
// Shares are reported as the CUs' share of the device (pool() and info().percent: 32 of 60 CUs is
// 53.33%), so prepare(info().percent) finds the active entry again. Unlike green contexts the
// placement is physical: every worker's masks start at the same bits (spread: CU 0 upwards, pack:
// engine 0 first), so slices of different workers overlap; only one entry of a pool is active.
//
// The host side is one thread: concurrency() is 1 and parallel_for runs fn(0, n) on the calling
// thread. device_queue() is {nullptr, the active hipStream_t, its pool index}: HIP has no context
// to make current (the device is selected with hipSetDevice when the device is opened, on the
// thread that creates the slice, which is the one that runs the batches). begin_batch/end_batch do
// nothing (the share is spatial, not a time quota).
//
// The device is reached through CuMaskDevice so that the pool's logic is tested against a fake;
// hip_cu_mask_device() is the real one over load_hip_runtime().

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "sliceserve/backends/hip/cu_mask.h"
#include "sliceserve/backends/slice.h"
#include "sliceserve/shm/status.h"

namespace sliceserve::backends {

// The CU-masked stream operations of one device. Streams are opaque (hipStream_t for the real
// device). Not thread-safe: one slice, one thread.
class CuMaskDevice {
 public:
  virtual ~CuMaskDevice() = default;

  virtual std::string name() const = 0;  // "AMD Instinct MI210 (device 0)"
  virtual CuDeviceFacts facts() const = 0;
  // hipExtStreamCreateWithCUMask(&stream, mask.size(), mask.data()).
  virtual Result<void*> create_stream(const std::vector<uint32_t>& mask) = 0;
  // hipExtStreamGetCUMask: the mask the stream runs with, `words` words.
  virtual Result<std::vector<uint32_t>> stream_mask(void* stream, size_t words) = 0;
  virtual Status destroy_stream(void* stream) = 0;
};

// The real device `index` over load_hip_runtime(), made the calling thread's current device;
// kUnavailable "no HIP device: ..." without ROCm or a device, kInvalidArgument for an index the
// runtime does not have.
Result<std::unique_ptr<CuMaskDevice>> hip_cu_mask_device(int index);

class CuMaskSlice final : public Slice {
 public:
  // Resolves the device's CU layout (resolve_cu_layout) and prepares and selects `percent`
  // (entry 0).
  static Result<std::unique_ptr<CuMaskSlice>> create(std::unique_ptr<CuMaskDevice> device,
                                                     double percent, CuMaskPolicy policy,
                                                     const CuLayoutConfig& layout_config);
  ~CuMaskSlice() override;
  CuMaskSlice(const CuMaskSlice&) = delete;
  CuMaskSlice& operator=(const CuMaskSlice&) = delete;

  unsigned concurrency() const override { return 1; }
  void parallel_for(size_t n, const std::function<void(size_t, size_t)>& fn) override;
  SliceInfo info() const override;
  void begin_batch() override {}
  void end_batch() override {}
  bool resizes_in_place() const override { return true; }
  Result<size_t> prepare(double percent) override;
  std::vector<double> pool() const override;
  Status select(size_t index) override;

  // No context on HIP; the active entry's stream, and its pool index for per-queue state.
  DeviceQueue device_queue() const override { return {nullptr, entries_[active_].stream, active_}; }

  void* active_stream() const { return entries_[active_].stream; }
  const std::vector<uint32_t>& active_mask() const { return entries_[active_].mask; }
  unsigned active_cu_count() const { return entries_[active_].cus; }
  size_t active_index() const { return active_; }
  const CuLayout& layout() const { return layout_; }
  CuMaskPolicy policy() const { return policy_; }

 private:
  struct Entry {
    unsigned cus = 0;  // the rounded count the entry was prepared for (its key)
    std::vector<uint32_t> mask;
    void* stream = nullptr;
  };

  CuMaskSlice(std::unique_ptr<CuMaskDevice> device, CuLayout layout, CuMaskPolicy policy);
  Result<Entry> build(unsigned cus);
  void destroy(Entry& entry);

  std::unique_ptr<CuMaskDevice> device_;
  CuLayout layout_;
  CuMaskPolicy policy_;
  std::vector<Entry> entries_;  // entries_[0]: the initial share
  size_t active_ = 0;
};

struct CuMaskSliceOptions {
  int device = 0;          // HIP device ordinal
  double percent = 100.0;  // (0, 100] of the device's CUs, rounded to the policy's granularity
  CuMaskPolicy policy = CuMaskPolicy::kSpread;
  CuLayoutConfig layout;  // [backend.cumask] shader_engines / wgp where HIP reports nothing
};

// Validates the percent, opens the real device and creates the slice. kUnavailable
// "no HIP device: ..." on a machine without ROCm or an AMD GPU.
Result<std::unique_ptr<Slice>> create_cu_mask_slice(const CuMaskSliceOptions& options);

}  // namespace sliceserve::backends
