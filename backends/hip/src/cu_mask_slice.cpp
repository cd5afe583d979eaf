#include "sliceserve/backends/hip/cu_mask_slice.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <cstdio>
#include <string>
#include <utility>

#include "hip_runtime_api.h"
#include "sliceserve/backends/hip/hip_runtime.h"

namespace sliceserve::backends {
namespace {

// The real device over the loaded runtime.
class HipCuMaskDevice final : public CuMaskDevice {
 public:
  HipCuMaskDevice(const HipRuntime& runtime, HipDeviceInfo info)
      : api_(runtime.api()), info_(std::move(info)) {}

  std::string name() const override {
    return info_.name + " (device " + std::to_string(info_.index) + ")";
  }

  CuDeviceFacts facts() const override { return {name(), info_.cu_count, info_.gcn_arch}; }

  Result<void*> create_stream(const std::vector<uint32_t>& mask) override {
    hipStream_t stream = nullptr;
    SS_HIP_CHECK(api_,
                 api_.hipExtStreamCreateWithCUMask(&stream, uint32_t(mask.size()), mask.data()));
    return static_cast<void*>(stream);
  }

  Result<std::vector<uint32_t>> stream_mask(void* stream, size_t words) override {
    std::vector<uint32_t> mask(words, 0);
    SS_HIP_CHECK(api_, api_.hipExtStreamGetCUMask(static_cast<hipStream_t>(stream),
                                                  uint32_t(mask.size()), mask.data()));
    return mask;
  }

  Status destroy_stream(void* stream) override {
    SS_HIP_CHECK(api_, api_.hipStreamDestroy(static_cast<hipStream_t>(stream)));
    return Status::ok();
  }

 private:
  const HipRuntimeApi& api_;
  HipDeviceInfo info_;
};

}  // namespace

Result<std::unique_ptr<CuMaskDevice>> hip_cu_mask_device(int index) {
  ASSIGN_OR_RETURN(const HipRuntime* runtime, load_hip_runtime());
  ASSIGN_OR_RETURN(HipDeviceInfo info, runtime->device_info(index));
  // Streams are created on the calling thread's current device.
  SS_HIP_CHECK(runtime->api(), runtime->api().hipSetDevice(index));
  return std::unique_ptr<CuMaskDevice>(
      std::make_unique<HipCuMaskDevice>(*runtime, std::move(info)));
}

CuMaskSlice::CuMaskSlice(std::unique_ptr<CuMaskDevice> device, CuLayout layout, CuMaskPolicy policy)
    : device_(std::move(device)), layout_(layout), policy_(policy) {}

CuMaskSlice::~CuMaskSlice() {
  while (!entries_.empty()) {  // last entry first
    destroy(entries_.back());
    entries_.pop_back();
  }
}

Result<std::unique_ptr<CuMaskSlice>> CuMaskSlice::create(std::unique_ptr<CuMaskDevice> device,
                                                         double percent, CuMaskPolicy policy,
                                                         const CuLayoutConfig& layout_config) {
  if (device == nullptr) return Status(ErrorCode::kInvalidArgument, "cumask: no device given");
  ASSIGN_OR_RETURN(CuLayout layout, resolve_cu_layout(device->facts(), layout_config));
  RETURN_IF_ERROR(cu_count_for_percent(percent, layout, policy).status());
  std::unique_ptr<CuMaskSlice> slice(new CuMaskSlice(std::move(device), layout, policy));
  ASSIGN_OR_RETURN(size_t index, slice->prepare(percent));
  RETURN_IF_ERROR(slice->select(index));
  return slice;
}

void CuMaskSlice::parallel_for(size_t n, const std::function<void(size_t, size_t)>& fn) {
  if (n > 0) fn(0, n);
}

SliceInfo CuMaskSlice::info() const {
  SliceInfo info;
  info.backend = "cumask";
  info.mode = "instant";
  info.threads = concurrency();
  if (entries_.empty()) return info;
  const Entry& entry = entries_[active_];
  info.percent = percent_for_cu_count(entry.cus, layout_);
  info.placement =
      fmt::format("{} of {} CUs ({}, per engine {}, mask {})", entry.cus, layout_.cu_count,
                  cu_mask_policy_name(policy_), fmt::join(cus_per_engine(layout_, entry.mask), "/"),
                  cu_mask_hex(entry.mask));
  return info;
}

Result<size_t> CuMaskSlice::prepare(double percent) {
  ASSIGN_OR_RETURN(unsigned cus, cu_count_for_percent(percent, layout_, policy_));
  for (size_t i = 0; i < entries_.size(); ++i) {
    if (entries_[i].cus == cus) return i;
  }
  ASSIGN_OR_RETURN(Entry entry, build(cus));
  entries_.push_back(std::move(entry));
  return entries_.size() - 1;
}

std::vector<double> CuMaskSlice::pool() const {
  std::vector<double> shares;
  for (const Entry& entry : entries_) shares.push_back(percent_for_cu_count(entry.cus, layout_));
  return shares;
}

Status CuMaskSlice::select(size_t index) {
  if (index >= entries_.size()) {
    return Status(
        ErrorCode::kInvalidArgument,
        fmt::format("cumask slice pool has no entry {} (it holds {})", index, entries_.size()));
  }
  active_ = index;
  return Status::ok();
}

Result<CuMaskSlice::Entry> CuMaskSlice::build(unsigned cus) {
  Entry entry;
  entry.cus = cus;
  ASSIGN_OR_RETURN(entry.mask, cu_mask(layout_, policy_, cus));
  const std::string what = fmt::format("cumask slice of {} CUs on {}", cus, device_->name());
  Result<void*> stream = device_->create_stream(entry.mask);
  if (!stream.is_ok()) return stream.status().with_context(what);
  entry.stream = *stream;
  // From here the entry owns a stream: a later failure destroys it.
  Result<std::vector<uint32_t>> effective = device_->stream_mask(entry.stream, entry.mask.size());
  Status checked = effective.status();
  if (checked.is_ok() && *effective != entry.mask) {
    checked = Status(
        ErrorCode::kUnavailable,
        fmt::format("the stream's CU mask reads back as {} ({} CUs), not {}: a "
                    "process-wide mask (ROC_GLOBAL_CU_MASK or HSA_CU_MASK) narrows "
                    "this worker's CUs; unset it, cumask slices need the whole device",
                    cu_mask_hex(*effective), cu_mask_count(*effective), cu_mask_hex(entry.mask)));
  }
  if (!checked.is_ok()) {
    destroy(entry);
    return checked.with_context(what);
  }
  return entry;
}

void CuMaskSlice::destroy(Entry& entry) {
  // Destructors never fail: a runtime error here is reported and the rest still destroyed.
  if (entry.stream != nullptr) {
    Status destroyed = device_->destroy_stream(entry.stream);
    if (!destroyed.is_ok()) std::fprintf(stderr, "cumask: %s\n", destroyed.to_string().c_str());
    entry.stream = nullptr;
  }
}

Result<std::unique_ptr<Slice>> create_cu_mask_slice(const CuMaskSliceOptions& options) {
  if (!(options.percent > 0.0 && options.percent <= 100.0)) {  // also rejects NaN
    return Status(ErrorCode::kInvalidArgument,
                  fmt::format("cumask slice percent must be in (0, 100], got {}", options.percent));
  }
  ASSIGN_OR_RETURN(std::unique_ptr<CuMaskDevice> device, hip_cu_mask_device(options.device));
  ASSIGN_OR_RETURN(
      std::unique_ptr<CuMaskSlice> slice,
      CuMaskSlice::create(std::move(device), options.percent, options.policy, options.layout));
  return std::unique_ptr<Slice>(std::move(slice));
}

}  // namespace sliceserve::backends
