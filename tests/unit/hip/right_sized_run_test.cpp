// A right-sized run end to end on an emulated device: a real CuMaskSlice (the real HIP-backed
// CU-mask device, hip_cu_mask_device over the table) and the real HIP executor share one emulated
// HIP runtime (support/emulated_hip_runtime.h), the slice's layer sizes come from a layer profile
// parsed from its text (right_sizes), and the executor runs a torchvision export with the slice as
// its ComputeContext. Checked against the profile, not against the slice's own answers: the
// outputs match the cpu executor; every launch is on the stream whose CU mask is its layer's right
// size inside the active entry (the slice's own stream for unprofiled layers and those at the
// entry's size or more); each change of stream is a record on the stream left and a wait on the
// one entered, on one event; the run ends on the slice's stream; an instant resize between batches
// (resize_in_place, as the worker's `set slice`) moves the layers to the new entry's streams
// without creating any; and without a profile every launch stays on the slice's stream.

#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "cu_mask_slice_internal.h"
#include "sliceserve/backends/hip/cu_mask.h"
#include "sliceserve/backends/hip/cu_mask_slice.h"
#include "sliceserve/backends/layer_profile.h"
#include "support/emulated_hip_test.h"

namespace sliceserve::backends {
namespace {

using testing::cpu_reference;
using testing::expect_close;
using testing::hip_device;
using testing::HipCall;
using testing::plans_of;
using testing::random_inputs;
using testing::run;
using testing::step_labels;

// An MI50: 60 CUs in 4 shader engines (gfx906's table), so spread's granule is 4 CUs.
HipDeviceInfo mi50() {
  HipDeviceInfo info;
  info.index = 0;
  info.name = "AMD Instinct MI50 (emulated)";
  info.cu_count = 60;
  info.gcn_arch = 906;
  return info;
}
constexpr double kInitialPercent = 80;  // 48 CUs
constexpr double kResizedPercent = 40;  // 24 CUs
const std::vector<unsigned> kUnits = {8, 16, 32, 60};

std::filesystem::path resnet18() {
  return std::filesystem::path(SLICESERVE_SOURCE_DIR) / "models" / "resnet18-32.onnx";
}

// A profile's text for the model's layers, as `slicectl profile` writes it: every fifth layer left
// out, the others given right sizes 8, 16, 32 and 60 CUs in turn. Each latency is flat from the
// layer's right size up and twice that below it, so the right size is what select_right_size
// picks.
std::string profile_text(const std::vector<std::string>& labels, const std::string& sha256) {
  nlohmann::json layers = nlohmann::json::array();
  std::set<std::string> seen;
  size_t n = 0;
  for (const std::string& label : labels) {
    if (!seen.insert(label).second) continue;  // ops lowered from one node share its label
    const size_t k = n++ % 5;
    if (k == 0) continue;
    std::vector<double> ms;
    for (size_t u = 0; u < kUnits.size(); ++u) ms.push_back(u + 1 >= k ? 0.5 : 1.0);
    layers.push_back({{"label", label}, {"ms", ms}, {"right_size", kUnits[k - 1]}});
  }
  const nlohmann::json doc = {{"format", kLayerProfileFormat},
                              {"version", kLayerProfileVersion},
                              {"model", "resnet18-32.onnx"},
                              {"model_sha256", sha256},
                              {"device", "hip"},
                              {"batch", 1},
                              {"repeats", 3},
                              {"units", kUnits},
                              {"layers", layers}};
  return doc.dump(2);
}

// Where the profile says a step runs in an entry of `entry_cus`: the mask of its right size when
// that is below the entry's, or nullopt for the slice's own stream.
std::optional<std::vector<uint32_t>> expected_mask(const LayerProfile& profile,
                                                   const std::string& label, unsigned entry_cus,
                                                   const CuLayout& layout) {
  const LayerProfileEntry* layer = profile.find(label);
  if (layer == nullptr || layer->right_size >= entry_cus) return std::nullopt;
  auto mask = cu_mask(layout, CuMaskPolicy::kSpread, layer->right_size);
  EXPECT_TRUE(mask.is_ok()) << mask.status().to_string();
  return mask.is_ok() ? std::optional(*mask) : std::nullopt;
}

class RightSizedRunTest : public testing::EmulatedHipTest {
 protected:
  // The slice at kInitialPercent with kResizedPercent prepared too (as the worker's --slice-pool
  // does at load); `streams[i]` gets the streams entry i was built with.
  std::unique_ptr<CuMaskSlice> slice(std::vector<CuLayerSize> layers,
                                     std::vector<std::set<hipStream_t>>& streams) {
    std::set<hipStream_t> before = hip_device().live_streams;
    auto made = CuMaskSlice::create(hip_cu_mask_device(api_, mi50()), kInitialPercent,
                                    CuMaskPolicy::kSpread, {},
                                    {.placement = {}, .layers = std::move(layers)});
    EXPECT_TRUE(made.is_ok()) << made.status().to_string();
    if (!made.is_ok()) return nullptr;
    auto new_streams = [&before] {
      std::set<hipStream_t> added;
      for (hipStream_t s : hip_device().live_streams) {
        if (!before.count(s)) added.insert(s);
      }
      before = hip_device().live_streams;
      return added;
    };
    streams.push_back(new_streams());
    auto index = (*made)->prepare(kResizedPercent);
    EXPECT_TRUE(index.is_ok() && *index == 1) << index.status().to_string();
    streams.push_back(new_streams());
    return std::move(made).value();
  }

  // A HIP executor compiled for `plans`.
  std::unique_ptr<Executor> compiled_hip(const std::vector<Plan>& plans) {
    auto executor = hip();
    if (executor == nullptr) return nullptr;
    const Status compiled = executor->compile(plans, nullptr, 0);
    EXPECT_TRUE(compiled.is_ok()) << compiled.to_string();
    return executor;
  }
};

// The stream-ordered calls of one run with consecutive launches (and copies) on one stream merged
// into one call: what the ordering is asserted on.
std::vector<HipCall> merged(const std::vector<HipCall>& calls) {
  std::vector<HipCall> out;
  for (const HipCall& call : calls) {
    const bool same = !out.empty() && out.back().stream == call.stream &&
                      out.back().kind == call.kind &&
                      (call.kind == HipCall::Kind::kLaunch || call.kind == HipCall::Kind::kCopy);
    if (!same) out.push_back(call);
  }
  return out;
}

// One run's calls against the profile: copies in on the slice's stream; then per run of steps on
// one stream, an ordering (record on the stream left, wait on the one entered, the same event, one
// that does not time) and their launches, on the slice's own stream or on a stream of this entry
// whose mask is the steps' right size; the way back to the slice's stream ordered the same way;
// copies out and the synchronisation there.
void expect_right_sized_run(const std::vector<HipCall>& calls, const CuMaskSlice& slice,
                            const std::set<hipStream_t>& entry_streams, const LayerProfile& profile,
                            const std::vector<std::string>& labels) {
  // The steps' expected streams, merged into runs: nullopt is the slice's own stream.
  std::vector<std::optional<std::vector<uint32_t>>> runs;
  for (const std::string& label : labels) {
    auto mask = expected_mask(profile, label, slice.active_cu_count(), slice.layout());
    if (runs.empty() || runs.back() != mask) runs.push_back(std::move(mask));
  }
  const auto main = static_cast<hipStream_t>(slice.active_stream());
  const std::vector<HipCall> got = merged(calls);
  size_t at = 0;
  auto next = [&](HipCall::Kind kind, const char* what) -> const HipCall* {
    EXPECT_LT(at, got.size()) << "the run ends before " << what;
    if (at >= got.size()) return nullptr;
    EXPECT_EQ(int(got[at].kind), int(kind)) << what << ", call " << at;
    return got[at].kind == kind ? &got[at++] : nullptr;
  };
  auto ordering = [&](hipStream_t from) -> hipStream_t {
    const HipCall* record = next(HipCall::Kind::kRecord, "an ordering's record");
    const HipCall* wait = next(HipCall::Kind::kWait, "an ordering's wait");
    if (record == nullptr || wait == nullptr) return nullptr;
    EXPECT_EQ(record->stream, from);
    EXPECT_EQ(wait->event, record->event);
    EXPECT_EQ(hip_device().event_flags.at(record->event), hipEventDisableTiming);
    return wait->stream;
  };
  const HipCall* copy_in = next(HipCall::Kind::kCopy, "the input copy");
  ASSERT_NE(copy_in, nullptr);
  EXPECT_EQ(copy_in->stream, main);
  hipStream_t current = main;
  for (size_t r = 0; r < runs.size(); ++r) {
    SCOPED_TRACE("run of steps " + std::to_string(r));
    if (r > 0 || runs[r].has_value()) {
      const hipStream_t entered = ordering(current);
      ASSERT_NE(entered, nullptr);
      current = entered;
    }
    const HipCall* launches = next(HipCall::Kind::kLaunch, "the steps' launches");
    ASSERT_NE(launches, nullptr);
    EXPECT_EQ(launches->stream, current);
    if (!runs[r].has_value()) {
      EXPECT_EQ(current, main) << "a step at the slice's size off the slice's stream";
    } else {
      EXPECT_NE(current, main);
      EXPECT_TRUE(entry_streams.count(current)) << "a layer stream of another entry";
      EXPECT_EQ(hip_device().cu_masks.at(current), *runs[r]);
    }
  }
  if (current != main) {
    EXPECT_EQ(ordering(current), main);
  }
  const HipCall* copy_out = next(HipCall::Kind::kCopy, "the output copy");
  ASSERT_NE(copy_out, nullptr);
  EXPECT_EQ(copy_out->stream, main);
  const HipCall* sync = next(HipCall::Kind::kSynchronize, "the synchronisation");
  ASSERT_NE(sync, nullptr);
  EXPECT_EQ(sync->stream, main);
  EXPECT_EQ(at, got.size()) << "calls after the synchronisation";
}

TEST_F(RightSizedRunTest, EachLayerRunsOnItsRightSizedStreamAndAResizeMovesThemAll) {
  if (!std::filesystem::exists(resnet18())) {
    GTEST_SKIP() << "no models/resnet18-32.onnx (scripts/models builds it)";
  }
  auto model = plans_of(resnet18(), 1);
  ASSERT_NE(model, nullptr);
  const Plan& plan = model->plans[0];
  const std::vector<std::string> labels = step_labels(plan);

  auto sha256 = file_sha256(resnet18().string());
  ASSERT_TRUE(sha256.is_ok()) << sha256.status().to_string();
  auto profile = parse_layer_profile(profile_text(labels, *sha256));
  ASSERT_TRUE(profile.is_ok()) << profile.status().to_string();
  ASSERT_TRUE(check_layer_profile_model(*profile, resnet18().string()).is_ok());
  for (const LayerProfileEntry& layer : profile->layers) {
    auto selected = select_right_size(profile->units, layer.ms);
    ASSERT_TRUE(selected.is_ok()) << selected.status().to_string();
    EXPECT_EQ(*selected, layer.right_size) << layer.label;
  }
  auto sizes = right_sizes(*profile);
  ASSERT_TRUE(sizes.is_ok()) << sizes.status().to_string();

  std::vector<std::set<hipStream_t>> streams;
  auto slice = this->slice(*sizes, streams);
  ASSERT_NE(slice, nullptr);
  // Built at load: 48 CUs with layer streams of 8, 16 and 32 (60 is capped at the entry), and
  // 24 CUs with 8 and 16.
  ASSERT_EQ(slice->active_cu_count(), 48u);
  EXPECT_EQ(streams[0].size(), 4u);
  EXPECT_EQ(streams[1].size(), 3u);
  const size_t streams_at_load = hip_device().cu_masks.size();

  auto gpu = compiled_hip(model->plans);
  ASSERT_NE(gpu, nullptr);
  const auto inputs = random_inputs(plan, 3);
  const auto want = cpu_reference(model->plans, 0, inputs, *cpu_slice_);

  // The initial share, a resize down, and back up: each batch on the active entry's streams.
  const struct {
    double percent;
    unsigned cus;
    size_t entry;
  } batches[] = {{kInitialPercent, 48, 0}, {kResizedPercent, 24, 1}, {kInitialPercent, 48, 0}};
  std::set<size_t> distinct_runs;
  for (const auto& batch : batches) {
    SCOPED_TRACE(std::to_string(batch.cus) + " CUs");
    ASSERT_TRUE(resize_in_place(*slice, batch.percent).is_ok());
    ASSERT_EQ(slice->active_cu_count(), batch.cus);
    EXPECT_EQ(slice->active_index(), batch.entry);
    hip_device().calls.clear();
    expect_close(run(*gpu, plan, 0, inputs, *slice), want, "right-sized");
    expect_right_sized_run(hip_device().calls, *slice, streams[batch.entry], *profile, labels);
    std::set<hipStream_t> used;
    for (const HipCall& call : hip_device().calls) {
      if (call.kind == HipCall::Kind::kLaunch) used.insert(call.stream);
    }
    distinct_runs.insert(used.size());
  }
  // The slice's stream and three layer streams at 48 CUs; two at 24 (32 is the entry's size or
  // more there, so those layers join the slice's stream).
  EXPECT_EQ(distinct_runs, (std::set<size_t>{4, 3}));
  EXPECT_EQ(hip_device().cu_masks.size(), streams_at_load) << "a resize created a stream";
}

TEST_F(RightSizedRunTest, WithoutAProfileEveryLaunchIsOnTheSlicesStream) {
  if (!std::filesystem::exists(resnet18())) {
    GTEST_SKIP() << "no models/resnet18-32.onnx (scripts/models builds it)";
  }
  auto model = plans_of(resnet18(), 1);
  ASSERT_NE(model, nullptr);
  const Plan& plan = model->plans[0];
  std::vector<std::set<hipStream_t>> streams;
  auto slice = this->slice({}, streams);
  ASSERT_NE(slice, nullptr);
  EXPECT_EQ(streams[0].size(), 1u);  // each entry only its own stream
  EXPECT_EQ(streams[1].size(), 1u);
  auto gpu = compiled_hip(model->plans);
  ASSERT_NE(gpu, nullptr);
  const auto inputs = random_inputs(plan, 4);
  const auto want = cpu_reference(model->plans, 0, inputs, *cpu_slice_);
  for (double percent : {kInitialPercent, kResizedPercent}) {
    SCOPED_TRACE(percent);
    ASSERT_TRUE(resize_in_place(*slice, percent).is_ok());
    hip_device().launch_streams.clear();
    hip_device().copies.clear();
    expect_close(run(*gpu, plan, 0, inputs, *slice), want, "plain cumask");
    ASSERT_FALSE(hip_device().launch_streams.empty());
    for (hipStream_t s : hip_device().launch_streams) EXPECT_EQ(s, slice->active_stream());
    for (const testing::HipCopy& copy : hip_device().copies) {
      EXPECT_EQ(copy.stream, slice->active_stream());
    }
    EXPECT_EQ(hip_device().synchronized.back(), slice->active_stream());
  }
  EXPECT_EQ(hip_device().events_created, 0);
  EXPECT_TRUE(hip_device().records.empty());
  EXPECT_TRUE(hip_device().waits.empty());
}

}  // namespace
}  // namespace sliceserve::backends
