#include "sliceserve/backends/hip/cu_mask_slice.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <cstdio>
#include <string>
#include <utility>

#include "cu_mask_slice_internal.h"
#include "hip_runtime_api.h"
#include "sliceserve/backends/hip/hip_runtime.h"

namespace sliceserve::backends {
namespace {

// The real device over a runtime table: the loaded one, or a test's emulated one.
class HipCuMaskDevice final : public CuMaskDevice {
 public:
  HipCuMaskDevice(const HipRuntimeApi& api, HipDeviceInfo info)
      : api_(api), info_(std::move(info)) {}

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

std::unique_ptr<CuMaskDevice> hip_cu_mask_device(const HipRuntimeApi& api, HipDeviceInfo info) {
  return std::make_unique<HipCuMaskDevice>(api, std::move(info));
}

Result<std::unique_ptr<CuMaskDevice>> hip_cu_mask_device(int index) {
  ASSIGN_OR_RETURN(const HipRuntime* runtime, load_hip_runtime());
  ASSIGN_OR_RETURN(HipDeviceInfo info, runtime->device_info(index));
  // Streams are created on the calling thread's current device.
  SS_HIP_CHECK(runtime->api(), runtime->api().hipSetDevice(index));
  return hip_cu_mask_device(runtime->api(), std::move(info));
}

Result<std::vector<CuLayerSize>> right_sizes(const LayerProfile& profile) {
  if (profile.device != "hip") {
    return Status(ErrorCode::kInvalidArgument,
                  fmt::format("cumask right-sizing needs a profile measured on a hip device; this "
                              "one is of '{}' ({} counts)",
                              profile.device, profile.device == "cpu" ? "thread" : "SM"));
  }
  std::vector<CuLayerSize> sizes;
  for (const LayerProfileEntry& layer : profile.layers) {
    sizes.push_back({layer.label, layer.right_size});
  }
  return sizes;
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
                                                         const CuLayoutConfig& layout_config,
                                                         CuSliceSetup setup) {
  if (device == nullptr) return Status(ErrorCode::kInvalidArgument, "cumask: no device given");
  ASSIGN_OR_RETURN(CuLayout layout, resolve_cu_layout(device->facts(), layout_config));
  RETURN_IF_ERROR(cu_count_for_percent(percent, layout, policy).status());
  std::unique_ptr<CuMaskSlice> slice(new CuMaskSlice(std::move(device), layout, policy));
  const CuSlicePlacement& placement = setup.placement;
  if (!placement.shares.empty()) {
    if (placement.index >= placement.shares.size()) {
      return Status(ErrorCode::kInvalidArgument,
                    fmt::format("cumask placement: model index {} of {} models",
                                placement.index, placement.shares.size()));
    }
    Result<std::vector<CuRange>> placed = cu_placement(layout, policy, placement.shares);
    if (!placed.is_ok()) return placed.status().with_context("cumask placement");
    const std::vector<CuRange>& ranges = *placed;
    slice->offset_ = ranges[placement.index].offset;
    for (size_t i = 0; i < ranges.size(); ++i) {
      if (i == placement.index) continue;
      ASSIGN_OR_RETURN(std::vector<uint32_t> mask,
                       cu_mask(layout, policy, ranges[i].cus, ranges[i].offset));
      slice->neighbours_.emplace_back(i, std::move(mask));
    }
  }
  const unsigned granule = cu_granule(layout, policy);
  for (CuLayerSize& size : setup.layers) {
    if (size.cus == 0) {
      return Status(ErrorCode::kInvalidArgument,
                    fmt::format("cumask right-sizing: layer {} has 0 CUs", size.label));
    }
    // A count measured on another policy or part: the next whole granule, at most the device.
    const unsigned cus = std::min((size.cus + granule - 1) / granule * granule, layout.cu_count);
    slice->layers_.push_back({std::move(size.label), cus});
  }
  std::sort(slice->layers_.begin(), slice->layers_.end(),
            [](const Layer& a, const Layer& b) { return a.label < b.label; });
  for (size_t i = 1; i < slice->layers_.size(); ++i) {
    if (slice->layers_[i].label == slice->layers_[i - 1].label) {
      return Status(ErrorCode::kInvalidArgument,
                    fmt::format("cumask right-sizing: layer {} is sized twice",
                                slice->layers_[i].label));
    }
  }
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
  std::string extra;
  for (const auto& [model, shared] : overlaps()) {
    extra += fmt::format(", {} CUs shared with cumask model {}'s initial ones", shared, model);
  }
  if (!layers_.empty()) {
    std::vector<unsigned> counts;
    for (const Stream& s : entry.layer_streams) counts.push_back(s.cus);
    extra += counts.empty()
                 ? fmt::format(", {} layers right-sized, none below the slice", layers_.size())
                 : fmt::format(", {} layers right-sized onto {} CUs", layers_.size(),
                               fmt::join(counts, "/"));
  }
  info.placement = fmt::format(
      "{} of {} CUs{} ({}, per engine {}, mask {}{})", entry.cus, layout_.cu_count,
      offset_ == 0 ? std::string() : fmt::format(" at offset {}", offset_),
      cu_mask_policy_name(policy_), fmt::join(cus_per_engine(layout_, entry.mask), "/"),
      cu_mask_hex(entry.mask), extra);
  return info;
}

std::vector<std::pair<size_t, unsigned>> CuMaskSlice::overlaps() const {
  std::vector<std::pair<size_t, unsigned>> out;
  for (const auto& [model, mask] : neighbours_) {
    if (const unsigned shared = cu_mask_overlap(entries_[active_].mask, mask); shared > 0) {
      out.emplace_back(model, shared);
    }
  }
  return out;
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

const CuMaskSlice::Layer* CuMaskSlice::find_layer(std::string_view label) const {
  auto it = std::lower_bound(layers_.begin(), layers_.end(), label,
                             [](const Layer& l, std::string_view key) { return l.label < key; });
  return it != layers_.end() && it->label == label ? &*it : nullptr;
}

DeviceQueue CuMaskSlice::layer_queue(std::string_view layer) const {
  const Layer* found = find_layer(layer);
  if (found == nullptr) return device_queue();
  const Entry& entry = entries_[active_];
  const size_t chosen = entry.layer_stream[size_t(found - layers_.data())];
  if (chosen == std::string::npos) return device_queue();
  const Stream& s = entry.layer_streams[chosen];
  return {nullptr, s.stream, s.index};
}

unsigned CuMaskSlice::layer_cu_count(std::string_view layer) const {
  const Layer* found = find_layer(layer);
  const Entry& entry = entries_[active_];
  return found == nullptr ? entry.cus : std::min(found->cus, entry.cus);
}

Result<CuMaskSlice::Stream> CuMaskSlice::make_stream(unsigned cus, const std::string& what) {
  Stream made;
  made.cus = cus;
  ASSIGN_OR_RETURN(made.mask, cu_mask(layout_, policy_, cus, offset_));
  Result<void*> stream = device_->create_stream(made.mask);
  if (!stream.is_ok()) return stream.status().with_context(what);
  made.stream = *stream;
  // From here the stream is ours: a later failure destroys it.
  Result<std::vector<uint32_t>> effective = device_->stream_mask(made.stream, made.mask.size());
  Status checked = effective.status();
  if (checked.is_ok() && *effective != made.mask) {
    checked = Status(
        ErrorCode::kUnavailable,
        fmt::format("the stream's CU mask reads back as {} ({} CUs), not {}: a "
                    "process-wide mask (ROC_GLOBAL_CU_MASK or HSA_CU_MASK) narrows "
                    "this worker's CUs; unset it, cumask slices need the whole device",
                    cu_mask_hex(*effective), cu_mask_count(*effective), cu_mask_hex(made.mask)));
  }
  if (!checked.is_ok()) {
    destroy_stream(made.stream);
    return checked.with_context(what);
  }
  return made;
}

Result<CuMaskSlice::Entry> CuMaskSlice::build(unsigned cus) {
  Entry entry;
  entry.cus = cus;
  ASSIGN_OR_RETURN(Stream own,
                   make_stream(cus, fmt::format("cumask slice of {} CUs on {}", cus,
                                                device_->name())));
  entry.mask = std::move(own.mask);
  entry.stream = own.stream;
  // The smaller counts of the entry's layers, one stream each, ascending.
  std::vector<unsigned> counts;
  for (const Layer& layer : layers_) {
    if (layer.cus < cus) counts.push_back(layer.cus);
  }
  std::sort(counts.begin(), counts.end());
  counts.erase(std::unique(counts.begin(), counts.end()), counts.end());
  for (unsigned count : counts) {
    Result<Stream> made =
        make_stream(count, fmt::format("right-sized stream of {} CUs in the {}-CU slice on {}",
                                       count, cus, device_->name()));
    if (!made.is_ok()) {
      destroy(entry);  // the streams made so far, last first
      return made.status();
    }
    made->index = next_layer_index_++;
    entry.layer_streams.push_back(std::move(made).value());
  }
  for (const Layer& layer : layers_) {
    const auto it = std::lower_bound(counts.begin(), counts.end(), layer.cus);
    entry.layer_stream.push_back(layer.cus < cus ? size_t(it - counts.begin())
                                                 : std::string::npos);
  }
  return entry;
}

void CuMaskSlice::destroy_stream(void*& stream) {
  // Destructors never fail: a runtime error here is reported and the rest still destroyed.
  if (stream != nullptr) {
    Status destroyed = device_->destroy_stream(stream);
    if (!destroyed.is_ok()) std::fprintf(stderr, "cumask: %s\n", destroyed.to_string().c_str());
    stream = nullptr;
  }
}

void CuMaskSlice::destroy(Entry& entry) {
  // Last made first: the layer streams (largest first), then the entry's own.
  while (!entry.layer_streams.empty()) {
    destroy_stream(entry.layer_streams.back().stream);
    entry.layer_streams.pop_back();
  }
  destroy_stream(entry.stream);
}

Result<std::unique_ptr<Slice>> create_cu_mask_slice(const CuMaskSliceOptions& options) {
  if (!(options.percent > 0.0 && options.percent <= 100.0)) {  // also rejects NaN
    return Status(ErrorCode::kInvalidArgument,
                  fmt::format("cumask slice percent must be in (0, 100], got {}", options.percent));
  }
  ASSIGN_OR_RETURN(std::unique_ptr<CuMaskDevice> device, hip_cu_mask_device(options.device));
  ASSIGN_OR_RETURN(
      std::unique_ptr<CuMaskSlice> slice,
      CuMaskSlice::create(std::move(device), options.percent, options.policy, options.layout,
                          options.setup));
  return std::unique_ptr<Slice>(std::move(slice));
}

}  // namespace sliceserve::backends
