#include "sliceserve/backends/cuda/green_context_slice.h"

#include <cstdio>
#include <map>
#include <string>
#include <utility>

#include "cuda_driver_api.h"
#include "sliceserve/backends/cuda/cuda_driver.h"

namespace sliceserve::backends {

static_assert(kGreenCtxDefaultStream == CU_GREEN_CTX_DEFAULT_STREAM);
static_assert(kStreamNonBlocking == CU_STREAM_NON_BLOCKING);

namespace {

// The real device over the loaded driver. Split groups are kept here, by id, until their
// descriptor is generated (a CUdevResource is a value the descriptor is built from).
class CudaGreenContextDevice final : public GreenContextDevice {
 public:
  CudaGreenContextDevice(const CudaDriver& driver, CudaDeviceInfo info, CUdevice device)
      : api_(driver.api()), info_(std::move(info)), device_(device) {}

  std::string name() const override {
    return info_.name + " (device " + std::to_string(info_.index) + ")";
  }

  Result<SmGranularity> sm_resource() override {
    CUdevResource resource{};  // zeroed: drivers before 12.8 leave the partition fields 0
    SS_CU_CHECK(api_, api_.cuDeviceGetDevResource(device_, &resource, CU_DEV_RESOURCE_TYPE_SM));
    whole_ = resource;
    have_whole_ = true;
    return sm_granularity(resource.sm.smCount, info_.cc_major, info_.cc_minor,
                          resource.sm.minSmPartitionSize, resource.sm.smCoscheduledAlignment);
  }

  Result<SmGroup> split_sm(unsigned sm_count) override {
    RETURN_IF_ERROR(need_whole());
    CUdevResource group{};
    CUdevResource remaining{};
    unsigned groups = 1;
    SS_CU_CHECK(
        api_, api_.cuDevSmResourceSplitByCount(&group, &groups, &whole_, &remaining, 0, sm_count));
    if (groups < 1) {
      return Status(ErrorCode::kInternal, "cuDevSmResourceSplitByCount gave no group of " +
                                              std::to_string(sm_count) + " SMs on " + name());
    }
    const size_t id = next_id_++;
    groups_[id] = group;
    return SmGroup{group.sm.smCount, id};
  }

  Result<void*> generate_desc(const SmGroup& group) override {
    RETURN_IF_ERROR(need_whole());
    CUdevResource resource = whole_;
    if (group.id != kWholeDeviceGroup) {
      auto found = groups_.find(group.id);
      if (found == groups_.end()) {
        return Status(ErrorCode::kInvalidArgument,
                      "greenctx: no SM group " + std::to_string(group.id) + " on " + name());
      }
      resource = found->second;
      groups_.erase(found);
    }
    CUdevResourceDesc desc = nullptr;
    SS_CU_CHECK(api_, api_.cuDevResourceGenerateDesc(&desc, &resource, 1));
    return static_cast<void*>(desc);
  }

  Result<void*> create_green_context(void* desc, unsigned flags) override {
    CUgreenCtx context = nullptr;
    SS_CU_CHECK(api_, api_.cuGreenCtxCreate(&context, static_cast<CUdevResourceDesc>(desc), device_,
                                            flags));
    return static_cast<void*>(context);
  }

  Result<void*> create_stream(void* green_context, unsigned flags, int priority) override {
    CUstream stream = nullptr;
    SS_CU_CHECK(api_, api_.cuGreenCtxStreamCreate(&stream, static_cast<CUgreenCtx>(green_context),
                                                  flags, priority));
    return static_cast<void*>(stream);
  }

  Result<void*> context_of(void* green_context) override {
    CUcontext context = nullptr;
    SS_CU_CHECK(api_, api_.cuCtxFromGreenCtx(&context, static_cast<CUgreenCtx>(green_context)));
    return static_cast<void*>(context);
  }

  Status destroy_stream(void* stream) override {
    SS_CU_CHECK(api_, api_.cuStreamDestroy(static_cast<CUstream>(stream)));
    return Status::ok();
  }

  Status destroy_green_context(void* green_context) override {
    SS_CU_CHECK(api_, api_.cuGreenCtxDestroy(static_cast<CUgreenCtx>(green_context)));
    return Status::ok();
  }

 private:
  Status need_whole() const {
    if (have_whole_) return Status::ok();
    return Status(ErrorCode::kInternal, "greenctx: sm_resource() must come before a split");
  }

  const CudaDriverApi& api_;
  CudaDeviceInfo info_;
  CUdevice device_;
  CUdevResource whole_{};
  bool have_whole_ = false;
  std::map<size_t, CUdevResource> groups_;
  size_t next_id_ = kWholeDeviceGroup + 1;
};

}  // namespace

Result<std::unique_ptr<GreenContextDevice>> cuda_green_context_device(int index) {
  ASSIGN_OR_RETURN(const CudaDriver* driver, load_cuda_driver());
  ASSIGN_OR_RETURN(CudaDeviceInfo info, driver->device_info(index));
  const CudaDriverApi& api = driver->api();
  CUdevice device = 0;
  SS_CU_CHECK(api, api.cuDeviceGet(&device, index));
  return std::unique_ptr<GreenContextDevice>(
      std::make_unique<CudaGreenContextDevice>(*driver, std::move(info), device));
}

GreenContextSlice::GreenContextSlice(std::unique_ptr<GreenContextDevice> device,
                                     SmGranularity granularity)
    : device_(std::move(device)), granularity_(granularity) {}

GreenContextSlice::~GreenContextSlice() {
  while (!entries_.empty()) {  // last entry first
    destroy(entries_.back());
    entries_.pop_back();
  }
}

Result<std::unique_ptr<GreenContextSlice>> GreenContextSlice::create(
    std::unique_ptr<GreenContextDevice> device, double percent) {
  RETURN_IF_ERROR(check_slice_percent(percent));
  if (device == nullptr) return Status(ErrorCode::kInvalidArgument, "greenctx: no device given");
  ASSIGN_OR_RETURN(SmGranularity granularity, device->sm_resource());
  RETURN_IF_ERROR(check_sm_granularity(granularity));
  std::unique_ptr<GreenContextSlice> slice(new GreenContextSlice(std::move(device), granularity));
  ASSIGN_OR_RETURN(size_t index, slice->prepare(percent));
  RETURN_IF_ERROR(slice->select(index));
  return slice;
}

void GreenContextSlice::parallel_for(size_t n, const std::function<void(size_t, size_t)>& fn) {
  if (n > 0) fn(0, n);
}

SliceInfo GreenContextSlice::info() const {
  SliceInfo info;
  info.backend = "greenctx";
  info.mode = "instant";
  info.threads = concurrency();
  if (entries_.empty()) return info;
  const Entry& entry = entries_[active_];
  info.percent = percent_for_sm_count(entry.sms, granularity_);
  info.placement = "SMs 0-" + std::to_string(entry.group_sms - 1) + " of " +
                   std::to_string(granularity_.sm_count);
  return info;
}

Result<size_t> GreenContextSlice::prepare(double percent) {
  ASSIGN_OR_RETURN(unsigned sms, sm_count_for_percent(percent, granularity_));
  for (size_t i = 0; i < entries_.size(); ++i) {
    if (entries_[i].sms == sms) return i;
  }
  ASSIGN_OR_RETURN(Entry entry, build(sms));
  entries_.push_back(entry);
  return entries_.size() - 1;
}

std::vector<double> GreenContextSlice::pool() const {
  std::vector<double> shares;
  for (const Entry& entry : entries_)
    shares.push_back(percent_for_sm_count(entry.sms, granularity_));
  return shares;
}

Status GreenContextSlice::select(size_t index) {
  if (index >= entries_.size()) {
    return Status(ErrorCode::kInvalidArgument, "greenctx slice pool has no entry " +
                                                   std::to_string(index) + " (it holds " +
                                                   std::to_string(entries_.size()) + ")");
  }
  active_ = index;
  return Status::ok();
}

Result<GreenContextSlice::Entry> GreenContextSlice::build(unsigned sms) {
  SmGroup group{granularity_.sm_count, kWholeDeviceGroup};
  if (sms < granularity_.sm_count) {
    ASSIGN_OR_RETURN(group, device_->split_sm(sms));
  }
  ASSIGN_OR_RETURN(void* desc, device_->generate_desc(group));
  Entry entry;
  entry.sms = sms;
  entry.group_sms = group.sm_count;
  ASSIGN_OR_RETURN(entry.green_context,
                   device_->create_green_context(desc, kGreenCtxDefaultStream));
  // From here the entry owns a green context: a later failure destroys what was created.
  Result<void*> stream = device_->create_stream(entry.green_context, kStreamNonBlocking, 0);
  if (!stream.is_ok()) {
    destroy(entry);
    return stream.status().with_context("greenctx slice of " + std::to_string(sms) + " SMs");
  }
  entry.stream = *stream;
  Result<void*> context = device_->context_of(entry.green_context);
  if (!context.is_ok()) {
    destroy(entry);
    return context.status().with_context("greenctx slice of " + std::to_string(sms) + " SMs");
  }
  entry.context = *context;
  return entry;
}

void GreenContextSlice::destroy(Entry& entry) {
  // Destructors never fail: a driver error here is reported and the rest still destroyed.
  if (entry.stream != nullptr) {
    Status destroyed = device_->destroy_stream(entry.stream);
    if (!destroyed.is_ok()) std::fprintf(stderr, "greenctx: %s\n", destroyed.to_string().c_str());
    entry.stream = nullptr;
  }
  if (entry.green_context != nullptr) {
    Status destroyed = device_->destroy_green_context(entry.green_context);
    if (!destroyed.is_ok()) std::fprintf(stderr, "greenctx: %s\n", destroyed.to_string().c_str());
    entry.green_context = nullptr;
  }
  entry.context = nullptr;
}

Result<std::unique_ptr<Slice>> create_green_context_slice(const GreenContextSliceOptions& options) {
  RETURN_IF_ERROR(check_slice_percent(options.percent));
  ASSIGN_OR_RETURN(std::unique_ptr<GreenContextDevice> device,
                   cuda_green_context_device(options.device));
  ASSIGN_OR_RETURN(std::unique_ptr<GreenContextSlice> slice,
                   GreenContextSlice::create(std::move(device), options.percent));
  return std::unique_ptr<Slice>(std::move(slice));
}

}  // namespace sliceserve::backends
