#pragma once
// The greenctx backend: a slice is a number of SMs of one NVIDIA GPU, held as a green context
// (CUDA 12.4+ driver API) with a non-blocking stream the executor launches on.
//
// A green context cannot be resized, only replaced, so the slice keeps a pool: prepare(p)
// rounds p to an SM count (sm_partition.h), and when no entry has that count yet it splits the
// device's SM resource (cuDevSmResourceSplitByCount, one group), generates a descriptor, creates
// a green context (CU_GREEN_CTX_DEFAULT_STREAM) and a stream in it (CU_STREAM_NON_BLOCKING, which
// the driver requires); 100% (or any share that rounds to the whole device) uses the device's
// resource without a split. select(i) only changes which entry is active: O(1), no driver call.
// Entries are destroyed when the slice is: each stream, then its green context, last entry first.
//
// Shares are reported as the SMs' share of the device (pool() and info().percent: 64 of 132 SMs
// is 48.48%), so prepare(info().percent) finds the active entry again. Placement reads
// "SMs 0-63 of 132": the split hands out the device's first group, and the driver picks which
// physical SMs that is; two entries of a pool overlap (only one is active at a time).
//
// The host side is one thread: concurrency() is 1 and parallel_for runs fn(0, n) on the calling
// thread. The parallel work is the GPU's, on the active entry's SMs; an executor takes
// active_stream() / active_context() and launches there. begin_batch/end_batch do nothing (the
// share is spatial, not a time quota).
//
// The device is reached through GreenContextDevice so that the pool's logic is tested against a
// fake; cuda_green_context_device() is the real one over load_cuda_driver().

#include <cstddef>
#include <memory>
#include <string>
#include <vector>

#include "sliceserve/backends/cuda/sm_partition.h"
#include "sliceserve/backends/slice.h"
#include "sliceserve/shm/status.h"

namespace sliceserve::backends {

// The driver's flag values (checked against cuda.h where the real device is built).
inline constexpr unsigned kGreenCtxDefaultStream = 0x1;  // CU_GREEN_CTX_DEFAULT_STREAM
inline constexpr unsigned kStreamNonBlocking = 0x1;      // CU_STREAM_NON_BLOCKING

// A group of SMs the device split off (or the whole device): `id` is the device's own key for
// the resource it keeps; kWholeDeviceGroup names the device's entire SM resource.
struct SmGroup {
  unsigned sm_count = 0;
  size_t id = 0;
};
inline constexpr size_t kWholeDeviceGroup = 0;

// The green-context operations of one device. Handles are opaque (CUdevResourceDesc,
// CUgreenCtx, CUstream, CUcontext for the real device). Not thread-safe: one slice, one thread.
class GreenContextDevice {
 public:
  virtual ~GreenContextDevice() = default;

  virtual std::string name() const = 0;  // "NVIDIA H200 (device 0)"
  // The device's SM resource: SM count, minimum partition and alignment (reported or from the
  // table by compute capability).
  virtual Result<SmGranularity> sm_resource() = 0;
  // Splits one group of `sm_count` SMs off the device's resource (minCount = sm_count).
  virtual Result<SmGroup> split_sm(unsigned sm_count) = 0;
  // A descriptor for one group (kWholeDeviceGroup: the device's resource).
  virtual Result<void*> generate_desc(const SmGroup& group) = 0;
  virtual Result<void*> create_green_context(void* desc, unsigned flags) = 0;
  virtual Result<void*> create_stream(void* green_context, unsigned flags, int priority) = 0;
  // The CUcontext of a green context (cuCtxFromGreenCtx), to make it current.
  virtual Result<void*> context_of(void* green_context) = 0;
  virtual Status destroy_stream(void* stream) = 0;
  virtual Status destroy_green_context(void* green_context) = 0;
};

// The real device `index` over load_cuda_driver(); kUnavailable "no CUDA device: ..." without a
// driver or device, kInvalidArgument for an index the driver does not have.
Result<std::unique_ptr<GreenContextDevice>> cuda_green_context_device(int index);

class GreenContextSlice final : public Slice {
 public:
  // Reads the device's granularity and prepares and selects `percent` (entry 0).
  static Result<std::unique_ptr<GreenContextSlice>> create(
      std::unique_ptr<GreenContextDevice> device, double percent);
  ~GreenContextSlice() override;
  GreenContextSlice(const GreenContextSlice&) = delete;
  GreenContextSlice& operator=(const GreenContextSlice&) = delete;

  unsigned concurrency() const override { return 1; }
  void parallel_for(size_t n, const std::function<void(size_t, size_t)>& fn) override;
  SliceInfo info() const override;
  void begin_batch() override {}
  void end_batch() override {}
  bool resizes_in_place() const override { return true; }
  Result<size_t> prepare(double percent) override;
  std::vector<double> pool() const override;
  Status select(size_t index) override;

  // The active entry's context and stream; its pool index keys the executor's per-queue state.
  DeviceQueue device_queue() const override {
    return {entries_[active_].context, entries_[active_].stream, active_};
  }

  // The active entry, for the CUDA executor (opaque CUstream / CUcontext / CUgreenCtx).
  void* active_stream() const { return entries_[active_].stream; }
  void* active_context() const { return entries_[active_].context; }
  void* active_green_context() const { return entries_[active_].green_context; }
  unsigned active_sm_count() const { return entries_[active_].group_sms; }
  size_t active_index() const { return active_; }
  const SmGranularity& granularity() const { return granularity_; }

 private:
  struct Entry {
    unsigned sms = 0;        // the rounded count the entry was prepared for (its key)
    unsigned group_sms = 0;  // what the driver gave the group (normally == sms)
    void* green_context = nullptr;
    void* stream = nullptr;
    void* context = nullptr;
  };

  GreenContextSlice(std::unique_ptr<GreenContextDevice> device, SmGranularity granularity);
  Result<Entry> build(unsigned sms);
  void destroy(Entry& entry);

  std::unique_ptr<GreenContextDevice> device_;
  SmGranularity granularity_;
  std::vector<Entry> entries_;  // entries_[0]: the initial share
  size_t active_ = 0;
};

struct GreenContextSliceOptions {
  int device = 0;          // CUDA device ordinal
  double percent = 100.0;  // (0, 100] of the device's SMs, rounded (sm_partition.h)
};

// Validates the percent, opens the real device and creates the slice. kUnavailable
// "no CUDA device: ..." on a machine without a driver or GPU.
Result<std::unique_ptr<Slice>> create_green_context_slice(const GreenContextSliceOptions& options);

}  // namespace sliceserve::backends
