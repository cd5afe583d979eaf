#include "sliceserve/backends/cuda/cuda_device_slice.h"

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <utility>

#include "cuda_driver_api.h"
#include "sliceserve/backends/cuda/cuda_driver.h"
#include "sliceserve/backends/cuda/green_context_slice.h"

namespace sliceserve::backends {
namespace {

std::string format_percent(double value) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%g", value);
  return buf;
}

class CudaPrimaryContextDevice final : public PrimaryContextDevice {
 public:
  CudaPrimaryContextDevice(const CudaDriver& driver, CudaDeviceInfo info, CUdevice device)
      : api_(driver.api()), info_(std::move(info)), device_(device) {}

  std::string name() const override {
    return info_.name + " (device " + std::to_string(info_.index) + ")";
  }

  Result<void*> retain_primary_context() override {
    CUcontext context = nullptr;
    SS_CU_CHECK(api_, api_.cuDevicePrimaryCtxRetain(&context, device_));
    return static_cast<void*>(context);
  }

  Status release_primary_context() override {
    SS_CU_CHECK(api_, api_.cuDevicePrimaryCtxRelease(device_));
    return Status::ok();
  }

  Result<void*> create_stream(void* context, unsigned flags) override {
    // cuStreamCreate creates the stream in the calling thread's current context.
    SS_CU_CHECK(api_, api_.cuCtxSetCurrent(static_cast<CUcontext>(context)));
    CUstream stream = nullptr;
    SS_CU_CHECK(api_, api_.cuStreamCreate(&stream, flags));
    return static_cast<void*>(stream);
  }

  Status destroy_stream(void* context, void* stream) override {
    SS_CU_CHECK(api_, api_.cuCtxSetCurrent(static_cast<CUcontext>(context)));
    SS_CU_CHECK(api_, api_.cuStreamDestroy(static_cast<CUstream>(stream)));
    return Status::ok();
  }

 private:
  const CudaDriverApi& api_;
  CudaDeviceInfo info_;
  CUdevice device_;
};

}  // namespace

Result<std::unique_ptr<PrimaryContextDevice>> cuda_primary_context_device(int index) {
  ASSIGN_OR_RETURN(const CudaDriver* driver, load_cuda_driver());
  ASSIGN_OR_RETURN(CudaDeviceInfo info, driver->device_info(index));
  const CudaDriverApi& api = driver->api();
  CUdevice device = 0;
  SS_CU_CHECK(api, api.cuDeviceGet(&device, index));
  return std::unique_ptr<PrimaryContextDevice>(
      std::make_unique<CudaPrimaryContextDevice>(*driver, std::move(info), device));
}

Result<std::optional<double>> parse_mps_thread_percentage(const char* value) {
  if (value == nullptr) return std::optional<double>();
  char* end = nullptr;
  errno = 0;
  const double percent = std::strtod(value, &end);
  if (end == value || *end != '\0' || errno != 0 || !std::isfinite(percent) || percent <= 0 ||
      percent > 100) {
    return Status(ErrorCode::kInvalidArgument,
                  std::string("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE must be a number in (0, 100], "
                              "got '") +
                      value + "'");
  }
  return std::optional<double>(percent);
}

Result<std::unique_ptr<CudaDeviceSlice>> CudaDeviceSlice::create(
    std::unique_ptr<PrimaryContextDevice> device, std::optional<double> mps_percent) {
  if (device == nullptr) return Status(ErrorCode::kInvalidArgument, "mps: no device given");
  if (mps_percent && !(*mps_percent > 0 && *mps_percent <= 100)) {
    return Status(ErrorCode::kInvalidArgument, "mps: the MPS percentage must be in (0, 100], got " +
                                                   format_percent(*mps_percent));
  }
  std::unique_ptr<CudaDeviceSlice> slice(new CudaDeviceSlice(std::move(device), mps_percent));
  ASSIGN_OR_RETURN(slice->context_, slice->device_->retain_primary_context());
  // From here the destructor releases the context (and the stream, once it exists).
  ASSIGN_OR_RETURN(slice->stream_,
                   slice->device_->create_stream(slice->context_, kStreamNonBlocking));
  return slice;
}

CudaDeviceSlice::~CudaDeviceSlice() {
  // Destructors never fail: a driver error here is reported and the rest still released.
  if (stream_ != nullptr) {
    Status destroyed = device_->destroy_stream(context_, stream_);
    if (!destroyed.is_ok()) std::fprintf(stderr, "mps: %s\n", destroyed.to_string().c_str());
  }
  if (context_ != nullptr) {
    Status released = device_->release_primary_context();
    if (!released.is_ok()) std::fprintf(stderr, "mps: %s\n", released.to_string().c_str());
  }
}

void CudaDeviceSlice::parallel_for(size_t n, const std::function<void(size_t, size_t)>& fn) {
  if (n > 0) fn(0, n);
}

SliceInfo CudaDeviceSlice::info() const {
  SliceInfo info;
  info.backend = "mps";
  info.mode = "shadow";
  info.percent = percent();
  info.threads = concurrency();
  info.placement = mps_percent_ ? "MPS " + format_percent(*mps_percent_) + "% of " + device_->name()
                                : "time-shared " + device_->name();
  return info;
}

Result<size_t> CudaDeviceSlice::prepare(double percent) {
  if (std::abs(percent - this->percent()) < 1e-9) return size_t{0};
  return Status(ErrorCode::kUnavailable,
                "an mps slice's share is fixed for its process: it changes by shadow resize");
}

Status CudaDeviceSlice::select(size_t index) {
  if (index == 0) return Status::ok();
  return Status(ErrorCode::kInvalidArgument,
                "an mps slice has one entry, not " + std::to_string(index + 1));
}

Result<std::unique_ptr<Slice>> create_cuda_device_slice(const CudaDeviceSliceOptions& options) {
  ASSIGN_OR_RETURN(std::unique_ptr<PrimaryContextDevice> device,
                   cuda_primary_context_device(options.device));
  ASSIGN_OR_RETURN(std::unique_ptr<CudaDeviceSlice> slice,
                   CudaDeviceSlice::create(std::move(device), options.mps_percent));
  return std::unique_ptr<Slice>(std::move(slice));
}

}  // namespace sliceserve::backends
