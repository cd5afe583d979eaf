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
// placement is physical, so the controller gives each model of the device its own CUs
// (CuSlicePlacement: the device's models one after the other, cu_placement in cu_mask.h); every
// entry of a pool starts at the model's offset, so a resize keeps the model's start. An entry
// larger than the initial share reaches into the next model's CUs: allowed (the policy keeps the
// sum of the shares within the device, so the neighbour has shrunk by then) and reported in
// info().placement, which counts the CUs the active entry shares with each other model's initial
// range.
//
// Per-layer right-sizing (KRISP): with layer sizes (from a `slicectl profile`, right_sizes()),
// every entry also holds a stream for each smaller CU count its layers need, whose mask is the
// first CUs of the entry's own (same offset, fewer positions: a subset, inside the slice), built
// with the entry (at create and prepare(), never while serving) and destroyed with it.
// layer_queue(label) answers the active entry's stream for the layer's count, capped at the
// entry's (a layer that needs the whole entry, or more, gets device_queue()); layers without a
// size, and a slice without sizes, answer device_queue(). Layer queues carry indices from
// kLayerQueueIndexBase up, one per stream, never a pool index (a pool holds at most one entry per
// CU count, so fewer than kMaxCus), so an executor's per-queue state (a MIOpen handle per CU
// count) never mixes two of them.
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
#include <string_view>
#include <utility>
#include <vector>

#include "sliceserve/backends/hip/cu_mask.h"
#include "sliceserve/backends/layer_profile.h"
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

// Where a slice sits among the cumask models of its device: the initial shares of all of them in
// the controller's placement order, and this model's index. Empty shares: the only one, at CU 0.
struct CuSlicePlacement {
  std::vector<double> shares;
  size_t index = 0;
};

// A layer's right-sized CU count (the profile's right_size).
struct CuLayerSize {
  std::string label;  // PlanOp::label
  unsigned cus = 0;
};

// The layer sizes of a profile measured on a hip device; kInvalidArgument for a profile of
// another device (a cpu profile counts threads, a cuda one SMs, not CUs).
Result<std::vector<CuLayerSize>> right_sizes(const LayerProfile& profile);

struct CuSliceSetup {
  CuSlicePlacement placement;
  std::vector<CuLayerSize> layers;  // right-sizing; empty: none
};

inline constexpr size_t kLayerQueueIndexBase = kMaxCus;

class CuMaskSlice final : public Slice {
 public:
  // Resolves the device's CU layout (resolve_cu_layout), places the slice (setup.placement) and
  // prepares and selects `percent` (entry 0). Layer sizes are rounded up to the policy's
  // granularity.
  static Result<std::unique_ptr<CuMaskSlice>> create(std::unique_ptr<CuMaskDevice> device,
                                                     double percent, CuMaskPolicy policy,
                                                     const CuLayoutConfig& layout_config,
                                                     CuSliceSetup setup = {});
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
  DeviceQueue layer_queue(std::string_view layer) const override;

  void* active_stream() const { return entries_[active_].stream; }
  const std::vector<uint32_t>& active_mask() const { return entries_[active_].mask; }
  unsigned active_cu_count() const { return entries_[active_].cus; }
  size_t active_index() const { return active_; }
  const CuLayout& layout() const { return layout_; }
  CuMaskPolicy policy() const { return policy_; }
  unsigned cu_offset() const { return offset_; }
  // The CUs the active entry shares with each other model's initial range: (model index, CUs),
  // only those above zero. At the initial share, non-empty only where rounding the shares to the
  // policy's granularity took more CUs than the device has.
  std::vector<std::pair<size_t, unsigned>> overlaps() const;
  // The CU count layer_queue(label) runs on under the active entry (its own count where the layer
  // has no smaller one).
  unsigned layer_cu_count(std::string_view layer) const;

 private:
  struct Stream {
    unsigned cus = 0;
    std::vector<uint32_t> mask;
    void* stream = nullptr;
    size_t index = 0;  // DeviceQueue::index
  };
  struct Entry {
    unsigned cus = 0;  // the rounded count the entry was prepared for (its key)
    std::vector<uint32_t> mask;
    void* stream = nullptr;
    std::vector<Stream> layer_streams;  // the smaller counts its layers need, ascending
    std::vector<size_t> layer_stream;   // per layers_[i]: index into layer_streams, or npos
  };
  struct Layer {
    std::string label;
    unsigned cus = 0;  // rounded up to the granule
  };

  CuMaskSlice(std::unique_ptr<CuMaskDevice> device, CuLayout layout, CuMaskPolicy policy);
  Result<Entry> build(unsigned cus);
  // A stream of `cus` CUs from the slice's offset; its read-back mask checked.
  Result<Stream> make_stream(unsigned cus, const std::string& what);
  void destroy(Entry& entry);
  void destroy_stream(void*& stream);
  const Layer* find_layer(std::string_view label) const;

  std::unique_ptr<CuMaskDevice> device_;
  CuLayout layout_;
  CuMaskPolicy policy_;
  unsigned offset_ = 0;
  // The other models' initial CUs (their index, their mask), for the overlap in info().
  std::vector<std::pair<size_t, std::vector<uint32_t>>> neighbours_;
  std::vector<Layer> layers_;  // sorted by label
  size_t next_layer_index_ = kLayerQueueIndexBase;
  std::vector<Entry> entries_;  // entries_[0]: the initial share
  size_t active_ = 0;
};

struct CuMaskSliceOptions {
  int device = 0;          // HIP device ordinal
  double percent = 100.0;  // (0, 100] of the device's CUs, rounded to the policy's granularity
  CuMaskPolicy policy = CuMaskPolicy::kSpread;
  CuLayoutConfig layout;  // [backend.cumask] shader_engines / wgp where HIP reports nothing
  CuSliceSetup setup;     // placement among the device's models, right-sizing
};

// Validates the percent, opens the real device and creates the slice. kUnavailable
// "no HIP device: ..." on a machine without ROCm or an AMD GPU.
Result<std::unique_ptr<Slice>> create_cu_mask_slice(const CuMaskSliceOptions& options);

}  // namespace sliceserve::backends
