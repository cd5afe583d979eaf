#pragma once
// The mps backend's slice: a whole CUDA device as this process sees it. Under MPS the process's
// share of the SMs is its CUDA_MPS_ACTIVE_THREAD_PERCENTAGE, fixed when its first context is
// created, so the slice only reports it and resizes by shadow worker (a new process with another
// percentage). Without MPS the process time-shares the device with every other one.
//
// The slice retains the device's primary context (cuDevicePrimaryCtxRetain, released on
// destruction) and creates one CU_STREAM_NON_BLOCKING stream in it; device_queue() returns both
// (pool index 0), and the executor launches there. The host side is one thread: concurrency() is
// 1 and parallel_for runs on the caller.
//
// The device is reached through PrimaryContextDevice so that the slice is tested against a fake;
// cuda_primary_context_device() is the real one over load_cuda_driver().

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "sliceserve/backends/slice.h"
#include "sliceserve/shm/status.h"

namespace sliceserve::backends {

// The primary-context operations of one device. Handles are opaque (CUcontext, CUstream).
class PrimaryContextDevice {
 public:
  virtual ~PrimaryContextDevice() = default;

  virtual std::string name() const = 0;  // "NVIDIA H200 (device 0)"
  virtual Result<void*> retain_primary_context() = 0;
  virtual Status release_primary_context() = 0;
  // A stream in `context` (made current on the calling thread first).
  virtual Result<void*> create_stream(void* context, unsigned flags) = 0;
  virtual Status destroy_stream(void* context, void* stream) = 0;
};

// The real device `index`; kUnavailable "no CUDA device: ..." without a driver or device,
// kInvalidArgument for an index the driver does not have.
Result<std::unique_ptr<PrimaryContextDevice>> cuda_primary_context_device(int index);

// The value of CUDA_MPS_ACTIVE_THREAD_PERCENTAGE (nullptr: unset, nullopt back): a number in
// (0, 100], else kInvalidArgument naming the variable.
Result<std::optional<double>> parse_mps_thread_percentage(const char* value);

class CudaDeviceSlice final : public Slice {
 public:
  // `mps_percent`: the process's MPS active thread percentage; nullopt when it is not an MPS
  // client with one (time-shared, reported as 100%).
  static Result<std::unique_ptr<CudaDeviceSlice>> create(
      std::unique_ptr<PrimaryContextDevice> device, std::optional<double> mps_percent);
  ~CudaDeviceSlice() override;
  CudaDeviceSlice(const CudaDeviceSlice&) = delete;
  CudaDeviceSlice& operator=(const CudaDeviceSlice&) = delete;

  unsigned concurrency() const override { return 1; }
  void parallel_for(size_t n, const std::function<void(size_t, size_t)>& fn) override;
  // backend "mps", mode "shadow", placement "MPS 40% of NVIDIA H200 (device 0)" or
  // "time-shared NVIDIA H200 (device 0)".
  SliceInfo info() const override;
  void begin_batch() override {}
  void end_batch() override {}
  bool resizes_in_place() const override { return false; }
  Result<size_t> prepare(double percent) override;  // kUnavailable: the share is per process
  std::vector<double> pool() const override { return {percent()}; }
  Status select(size_t index) override;  // only 0
  DeviceQueue device_queue() const override { return {context_, stream_, 0}; }

  double percent() const { return mps_percent_.value_or(100.0); }

 private:
  CudaDeviceSlice(std::unique_ptr<PrimaryContextDevice> device, std::optional<double> mps_percent)
      : device_(std::move(device)), mps_percent_(mps_percent) {}

  std::unique_ptr<PrimaryContextDevice> device_;
  std::optional<double> mps_percent_;
  void* context_ = nullptr;  // retained primary context; null until create() retained it
  void* stream_ = nullptr;
};

struct CudaDeviceSliceOptions {
  int device = 0;                     // CUDA device ordinal
  std::optional<double> mps_percent;  // see CudaDeviceSlice::create
};

// Opens the real device and creates the slice. kUnavailable "no CUDA device: ..." on a machine
// without a driver or GPU.
Result<std::unique_ptr<Slice>> create_cuda_device_slice(const CudaDeviceSliceOptions& options);

}  // namespace sliceserve::backends
