// The cumask slice's pool against a fake CuMaskDevice that records every call it receives: which
// masks are created, when, what is destroyed, and what a failure leaves behind.

#include "sliceserve/backends/hip/cu_mask_slice.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "sliceserve/backends/hip/hip_runtime.h"

namespace sliceserve::backends {
namespace {

// Records every call as "name(arg)"; streams are small integers cast to pointers.
struct FakeLog {
  std::vector<std::string> calls;
  std::string fail;                   // the call name that fails next (once)
  int fail_skip = 0;                  // calls of that name that succeed before it fails
  std::vector<uint32_t> global_mask;  // non-empty: ANDed into what streams read back
};

void* handle(uintptr_t value) { return reinterpret_cast<void*>(value); }
uintptr_t value_of(void* handle) { return reinterpret_cast<uintptr_t>(handle); }

class FakeCuMaskDevice final : public CuMaskDevice {
 public:
  FakeCuMaskDevice(std::shared_ptr<FakeLog> log, CuDeviceFacts facts)
      : log_(std::move(log)), facts_(std::move(facts)) {}

  std::string name() const override { return "fake " + facts_.name; }
  CuDeviceFacts facts() const override { return facts_; }

  Result<void*> create_stream(const std::vector<uint32_t>& mask) override {
    RETURN_IF_ERROR(record("create_stream(" + cu_mask_hex(mask) + ", " +
                           std::to_string(mask.size()) + " words)"));
    std::vector<uint32_t> effective = mask;
    for (size_t i = 0; i < log_->global_mask.size() && i < effective.size(); ++i) {
      effective[i] &= log_->global_mask[i];
    }
    masks_.push_back(effective);
    return handle(masks_.size());  // stream n: masks_[n - 1]
  }
  Result<std::vector<uint32_t>> stream_mask(void* stream, size_t words) override {
    RETURN_IF_ERROR(record("stream_mask(" + std::to_string(value_of(stream)) + ", " +
                           std::to_string(words) + ")"));
    std::vector<uint32_t> mask = masks_.at(value_of(stream) - 1);
    mask.resize(words, 0);
    return mask;
  }
  Status destroy_stream(void* stream) override {
    return record("destroy_stream(" + std::to_string(value_of(stream)) + ")");
  }

 private:
  Status record(const std::string& call) {
    log_->calls.push_back(call);
    const std::string name = call.substr(0, call.find('('));
    if (!log_->fail.empty() && log_->fail == name && log_->fail_skip-- == 0) {
      log_->fail.clear();
      return Status(ErrorCode::kInternal, name + ": hipErrorOutOfMemory: out of memory");
    }
    return Status::ok();
  }

  std::shared_ptr<FakeLog> log_;
  CuDeviceFacts facts_;
  std::vector<std::vector<uint32_t>> masks_;
};

const CuDeviceFacts kMi50{"MI50", 60, 906};
const CuDeviceFacts kMi210{"MI210", 104, 910};

class CuMaskSliceTest : public ::testing::Test {
 protected:
  Result<std::unique_ptr<CuMaskSlice>> make(double percent,
                                            CuMaskPolicy policy = CuMaskPolicy::kSpread,
                                            const CuDeviceFacts& facts = kMi50,
                                            CuLayoutConfig config = {}, CuSliceSetup setup = {}) {
    return CuMaskSlice::create(std::make_unique<FakeCuMaskDevice>(log_, facts), percent, policy,
                               config, std::move(setup));
  }
  // The setup built here, not as a braced temporary at the call (GCC 12 then warns that its
  // vectors may be used uninitialized).
  Result<std::unique_ptr<CuMaskSlice>> make_with(double percent, CuSlicePlacement placement,
                                                 std::vector<CuLayerSize> layers,
                                                 CuMaskPolicy policy = CuMaskPolicy::kSpread) {
    CuSliceSetup setup;
    setup.placement = std::move(placement);
    setup.layers = std::move(layers);
    return make(percent, policy, kMi50, {}, std::move(setup));
  }
  std::vector<std::string>& calls() { return log_->calls; }

  std::shared_ptr<FakeLog> log_ = std::make_shared<FakeLog>();
};

TEST_F(CuMaskSliceTest, CreateBuildsAndSelectsTheInitialShare) {
  auto slice = make(50);
  ASSERT_TRUE(slice.is_ok()) << slice.status().to_string();
  EXPECT_EQ(calls(),
            (std::vector<std::string>{"create_stream(0xffffffff, 2 words)", "stream_mask(1, 2)"}));
  const SliceInfo info = (*slice)->info();
  EXPECT_EQ(info.backend, "cumask");
  EXPECT_EQ(info.mode, "instant");
  EXPECT_EQ(info.threads, 1u);
  EXPECT_NEAR(info.percent, 100.0 * 32 / 60, 1e-9);
  EXPECT_EQ(info.placement, "32 of 60 CUs (spread, per engine 8/8/8/8, mask 0xffffffff)");
  EXPECT_TRUE((*slice)->resizes_in_place());
  EXPECT_EQ((*slice)->concurrency(), 1u);
  const DeviceQueue queue = (*slice)->device_queue();
  EXPECT_EQ(queue.context, nullptr) << "HIP has no context to make current";
  EXPECT_EQ(queue.stream, handle(1));
  EXPECT_EQ(queue.index, 0u);
  EXPECT_EQ((*slice)->active_cu_count(), 32u);
  EXPECT_EQ((*slice)->layout().shader_engines, 4u);
}

TEST_F(CuMaskSliceTest, PackPutsASmallSliceInOneEngine) {
  auto slice = make(25, CuMaskPolicy::kPack);
  ASSERT_TRUE(slice.is_ok()) << slice.status().to_string();
  EXPECT_EQ(calls().at(0), "create_stream(0x111111111111111, 2 words)");
  EXPECT_EQ((*slice)->info().placement,
            "15 of 60 CUs (pack, per engine 15/0/0/0, mask 0x111111111111111)");
}

TEST_F(CuMaskSliceTest, ThePoolBuildsEachCountOnceAndSelectMakesNoCall) {
  auto slice = make(50);
  ASSERT_TRUE(slice.is_ok());
  calls().clear();
  auto quarter = (*slice)->prepare(25);  // 16 CUs
  ASSERT_TRUE(quarter.is_ok());
  EXPECT_EQ(*quarter, 1u);
  auto again = (*slice)->prepare(26);  // 15.6 CUs: 16 again
  ASSERT_TRUE(again.is_ok());
  EXPECT_EQ(*again, 1u);
  auto same = (*slice)->prepare(53);  // 31.8: the initial 32
  ASSERT_TRUE(same.is_ok());
  EXPECT_EQ(*same, 0u);
  auto whole = (*slice)->prepare(100);
  ASSERT_TRUE(whole.is_ok());
  EXPECT_EQ(*whole, 2u);
  EXPECT_EQ(calls(), (std::vector<std::string>{
                         "create_stream(0xffff, 2 words)", "stream_mask(2, 2)",
                         "create_stream(0xfffffffffffffff, 2 words)", "stream_mask(3, 2)"}));
  EXPECT_EQ((*slice)->info().percent, 100.0 * 32 / 60) << "prepare does not switch";
  const std::vector<double> pool = (*slice)->pool();
  ASSERT_EQ(pool.size(), 3u);
  EXPECT_NEAR(pool[1], 100.0 * 16 / 60, 1e-9);
  EXPECT_EQ(pool[2], 100.0);

  calls().clear();
  ASSERT_TRUE((*slice)->select(1).is_ok());
  EXPECT_TRUE(calls().empty()) << "an instant resize makes no runtime call";
  EXPECT_EQ((*slice)->device_queue().stream, handle(2));
  EXPECT_EQ((*slice)->device_queue().index, 1u);
  EXPECT_EQ((*slice)->active_mask(), (std::vector<uint32_t>{0xffffu, 0}));
  EXPECT_NEAR((*slice)->info().percent, 100.0 * 16 / 60, 1e-9);
  auto found = (*slice)->prepare((*slice)->info().percent);
  ASSERT_TRUE(found.is_ok());
  EXPECT_EQ(*found, 1u) << "a reported share finds its entry again";

  Status missing = (*slice)->select(3);
  ASSERT_FALSE(missing.is_ok());
  EXPECT_EQ(missing.code(), ErrorCode::kInvalidArgument);
  EXPECT_EQ(missing.message(), "cumask slice pool has no entry 3 (it holds 3)");
  EXPECT_EQ((*slice)->active_index(), 1u) << "a refused select changes nothing";
}

TEST_F(CuMaskSliceTest, ResizeInPlaceGoesThroughTheSliceInterface) {
  auto slice = make(50, CuMaskPolicy::kSpread, kMi210);
  ASSERT_TRUE(slice.is_ok());
  Slice& generic = **slice;
  ASSERT_TRUE(resize_in_place(generic, 10).is_ok());
  EXPECT_EQ((*slice)->active_cu_count(), 8u);  // 10.4 CUs = 1.3 granules of 8
  EXPECT_EQ(generic.info().placement,
            "8 of 104 CUs (spread, per engine 1/1/1/1/1/1/1/1, mask 0xff)");
  ASSERT_TRUE(resize_in_place(generic, 50).is_ok());
  EXPECT_EQ((*slice)->active_index(), 0u);
}

TEST_F(CuMaskSliceTest, TheDestructorDestroysEveryStreamLastFirst) {
  {
    auto slice = make(50);
    ASSERT_TRUE(slice.is_ok());
    ASSERT_TRUE((*slice)->prepare(25).is_ok());
    ASSERT_TRUE((*slice)->prepare(75).is_ok());
    calls().clear();
  }
  EXPECT_EQ(calls(), (std::vector<std::string>{"destroy_stream(3)", "destroy_stream(2)",
                                               "destroy_stream(1)"}));
}

TEST_F(CuMaskSliceTest, AFailedStreamCreationLeavesThePoolUnchanged) {
  auto slice = make(50);
  ASSERT_TRUE(slice.is_ok());
  log_->fail = "create_stream";
  auto failed = (*slice)->prepare(25);
  ASSERT_FALSE(failed.is_ok());
  EXPECT_EQ(failed.status().code(), ErrorCode::kInternal);
  EXPECT_NE(failed.status().message().find("cumask slice of 16 CUs on fake MI50"),
            std::string::npos)
      << failed.status().message();
  EXPECT_EQ((*slice)->pool().size(), 1u);
}

TEST_F(CuMaskSliceTest, AFailedReadBackDestroysTheNewStream) {
  auto slice = make(50);
  ASSERT_TRUE(slice.is_ok());
  calls().clear();
  log_->fail = "stream_mask";
  ASSERT_FALSE((*slice)->prepare(25).is_ok());
  EXPECT_EQ(calls(), (std::vector<std::string>{"create_stream(0xffff, 2 words)",
                                               "stream_mask(2, 2)", "destroy_stream(2)"}));
  EXPECT_EQ((*slice)->pool().size(), 1u);
}

TEST_F(CuMaskSliceTest, AMaskNarrowedByAProcessWideMaskIsRefused) {
  log_->global_mask = {0x0000ffffu, 0};  // what ROC_GLOBAL_CU_MASK=0xffff would leave
  auto slice = make(50);
  ASSERT_FALSE(slice.is_ok());
  EXPECT_EQ(slice.status().code(), ErrorCode::kUnavailable);
  const std::string message = slice.status().message();
  EXPECT_NE(message.find("reads back as 0xffff (16 CUs), not 0xffffffff"), std::string::npos)
      << message;
  EXPECT_NE(message.find("ROC_GLOBAL_CU_MASK"), std::string::npos) << message;
  EXPECT_EQ(calls().back(), "destroy_stream(1)");
}

TEST_F(CuMaskSliceTest, AnUnknownEngineCountFailsBeforeAnyStream) {
  auto slice = make(50, CuMaskPolicy::kSpread, {"RX 7900", 96, 1100});
  ASSERT_FALSE(slice.is_ok());
  EXPECT_EQ(slice.status().code(), ErrorCode::kInvalidArgument);
  EXPECT_NE(slice.status().message().find("set [backend.cumask] shader_engines"),
            std::string::npos);
  EXPECT_TRUE(calls().empty());
  auto configured =
      make(50, CuMaskPolicy::kSpread, {"RX 7900", 96, 1100}, CuLayoutConfig{6, std::nullopt});
  ASSERT_TRUE(configured.is_ok()) << configured.status().to_string();
  // 48 CUs = 4 pairs in each of 6 engines.
  EXPECT_EQ((*configured)->info().placement,
            "48 of 96 CUs (spread, per engine 8/8/8/8/8/8, mask 0xffffffffffff)");
}

TEST_F(CuMaskSliceTest, SharesOutsideTheDeviceAreRefused) {
  for (double percent : {0.0, 101.0}) {
    auto slice = make(percent);
    ASSERT_FALSE(slice.is_ok()) << percent;
    EXPECT_EQ(slice.status().code(), ErrorCode::kInvalidArgument);
  }
  EXPECT_TRUE(calls().empty());
  auto no_device = CuMaskSlice::create(nullptr, 50, CuMaskPolicy::kSpread, {});
  ASSERT_FALSE(no_device.is_ok());
  EXPECT_EQ(no_device.status().code(), ErrorCode::kInvalidArgument);
}

TEST_F(CuMaskSliceTest, ParallelForRunsOnTheCaller) {
  auto slice = make(50);
  ASSERT_TRUE(slice.is_ok());
  size_t begin = 1;
  size_t end = 0;
  (*slice)->parallel_for(7, [&](size_t b, size_t e) {
    begin = b;
    end = e;
  });
  EXPECT_EQ(begin, 0u);
  EXPECT_EQ(end, 7u);
}

// ---- placement among the device's models ----

TEST_F(CuMaskSliceTest, APlacedSliceStartsAfterTheModelsBeforeIt) {
  // MI50, three models of 30, 30 and 40%: 20 CUs from 0, 20 from 20, 24 from 40 (wrapping).
  auto slice = make_with(30, {{30, 30, 40}, 1}, {});
  ASSERT_TRUE(slice.is_ok()) << slice.status().to_string();
  EXPECT_EQ(calls().at(0), "create_stream(0xfffff00000, 2 words)");
  EXPECT_EQ((*slice)->cu_offset(), 20u);
  EXPECT_EQ((*slice)->info().placement,
            "20 of 60 CUs at offset 20 (spread, per engine 5/5/5/5, mask 0xfffff00000)");
  EXPECT_TRUE((*slice)->overlaps().empty());
  // A resize keeps the start; growing past its 20 CUs reaches the next model's.
  calls().clear();
  ASSERT_TRUE(resize_in_place(**slice, 50).is_ok());
  EXPECT_EQ(calls().at(0), "create_stream(0xffffffff00000, 2 words)");
  EXPECT_EQ((*slice)->info().placement,
            "32 of 60 CUs at offset 20 (spread, per engine 8/8/8/8, mask 0xffffffff00000, 12 CUs "
            "shared with cumask model 2's initial ones)");
  // The whole device overlaps both others.
  ASSERT_TRUE(resize_in_place(**slice, 100).is_ok());
  EXPECT_EQ((*slice)->info().placement,
            "60 of 60 CUs at offset 20 (spread, per engine 15/15/15/15, mask 0xfffffffffffffff, "
            "20 CUs shared with cumask model 0's initial ones, 24 CUs shared with cumask model "
            "2's initial ones)");
}

TEST_F(CuMaskSliceTest, ThePlacementOfTheLastModelWrapsAndSaysWhatItOverlaps) {
  auto slice = make_with(40, {{30, 30, 40}, 2}, {});
  ASSERT_TRUE(slice.is_ok()) << slice.status().to_string();
  EXPECT_EQ(calls().at(0), "create_stream(0xfffff000000000f, 2 words)");
  EXPECT_EQ((*slice)->info().placement,
            "24 of 60 CUs at offset 40 (spread, per engine 6/6/6/6, mask 0xfffff000000000f, 4 CUs "
            "shared with cumask model 0's initial ones)");
  EXPECT_EQ((*slice)->overlaps(), (std::vector<std::pair<size_t, unsigned>>{{0, 4}}))
      << "rounding 30/30/40% to whole rounds of 4 CUs took 64 of 60";
}

TEST_F(CuMaskSliceTest, PackPlacementFillsTheNextEngine) {
  // 25% = 15 CUs = engine 0; the second model starts on engine 1 (bits 1, 5, 9, ...).
  auto slice = make_with(25, {{25, 25}, 1}, {}, CuMaskPolicy::kPack);
  ASSERT_TRUE(slice.is_ok()) << slice.status().to_string();
  EXPECT_EQ(calls().at(0), "create_stream(0x222222222222222, 2 words)");
  EXPECT_EQ(cus_per_engine((*slice)->layout(), (*slice)->active_mask()),
            (std::vector<unsigned>{0, 15, 0, 0}));
}

TEST_F(CuMaskSliceTest, ABadPlacementFailsBeforeAnyStream) {
  auto slice = make_with(30, {{30, 30}, 2}, {});
  ASSERT_FALSE(slice.is_ok());
  EXPECT_EQ(slice.status().code(), ErrorCode::kInvalidArgument);
  EXPECT_EQ(slice.status().message(), "cumask placement: model index 2 of 2 models");
  auto zero = make_with(30, {{30, 0}, 0}, {});
  ASSERT_FALSE(zero.is_ok());
  EXPECT_NE(zero.status().message().find("cumask model 1"), std::string::npos)
      << zero.status().message();
  EXPECT_TRUE(calls().empty());
}

// ---- per-layer right-sizing ----

const std::vector<CuLayerSize> kLayers = {
    {"conv1", 8}, {"conv2", 16}, {"fc", 60}, {"relu", 6}};  // relu: 6 rounds up to 8

TEST_F(CuMaskSliceTest, EachEntryBuildsAStreamPerSmallerLayerCountAtLoad) {
  auto slice = make_with(50, {}, kLayers);
  ASSERT_TRUE(slice.is_ok()) << slice.status().to_string();
  EXPECT_EQ(calls(), (std::vector<std::string>{
                         "create_stream(0xffffffff, 2 words)", "stream_mask(1, 2)",
                         "create_stream(0xff, 2 words)", "stream_mask(2, 2)",
                         "create_stream(0xffff, 2 words)", "stream_mask(3, 2)"}))
      << "the slice's 32 CUs, then 8 and 16 of them, each read back";
  CuMaskSlice& s = **slice;
  EXPECT_EQ(s.layer_queue("conv1").stream, handle(2));
  EXPECT_EQ(s.layer_queue("conv1").index, kLayerQueueIndexBase);
  EXPECT_EQ(s.layer_queue("conv1").context, nullptr);
  EXPECT_EQ(s.layer_queue("relu").stream, handle(2)) << "one stream per count";
  EXPECT_EQ(s.layer_queue("conv2").stream, handle(3));
  EXPECT_EQ(s.layer_queue("conv2").index, kLayerQueueIndexBase + 1);
  EXPECT_EQ(s.layer_queue("fc").stream, handle(1)) << "capped at the slice: its own stream";
  EXPECT_EQ(s.layer_queue("fc").index, 0u);
  EXPECT_EQ(s.layer_queue("softmax").stream, handle(1)) << "not profiled";
  EXPECT_EQ(s.layer_cu_count("conv1"), 8u);
  EXPECT_EQ(s.layer_cu_count("relu"), 8u);
  EXPECT_EQ(s.layer_cu_count("fc"), 32u);
  EXPECT_EQ(s.layer_cu_count("softmax"), 32u);
  EXPECT_EQ(s.info().placement,
            "32 of 60 CUs (spread, per engine 8/8/8/8, mask 0xffffffff, 4 layers right-sized onto "
            "8/16 CUs)");
}

TEST_F(CuMaskSliceTest, SelectSwitchesTheLayerStreamsWithTheEntry) {
  auto slice = make_with(50, {}, kLayers);
  ASSERT_TRUE(slice.is_ok());
  CuMaskSlice& s = **slice;
  calls().clear();
  auto quarter = s.prepare(25);  // 16 CUs: only conv1/relu's 8 is smaller
  ASSERT_TRUE(quarter.is_ok());
  EXPECT_EQ(calls(), (std::vector<std::string>{"create_stream(0xffff, 2 words)",
                                               "stream_mask(4, 2)", "create_stream(0xff, 2 words)",
                                               "stream_mask(5, 2)"}));
  EXPECT_EQ(s.layer_queue("conv1").stream, handle(2)) << "prepare does not switch";
  calls().clear();
  ASSERT_TRUE(s.select(*quarter).is_ok());
  EXPECT_TRUE(calls().empty()) << "switching layer streams makes no runtime call";
  EXPECT_EQ(s.layer_queue("conv1").stream, handle(5));
  EXPECT_EQ(s.layer_queue("conv1").index, kLayerQueueIndexBase + 2) << "a stream of its own";
  EXPECT_EQ(s.layer_queue("conv2").stream, handle(4)) << "16 CUs: the whole entry";
  EXPECT_EQ(s.layer_queue("conv2").index, 1u);
  EXPECT_EQ(s.layer_queue("fc").stream, handle(4));
  EXPECT_EQ(s.layer_cu_count("conv2"), 16u);
  ASSERT_TRUE(s.select(0).is_ok());
  EXPECT_EQ(s.layer_queue("conv2").stream, handle(3));
  EXPECT_EQ(s.layer_queue("conv1").stream, handle(2));
}

TEST_F(CuMaskSliceTest, LayerMasksAreTheFirstCusOfThePlacedSlice) {
  auto slice = make_with(30, {{30, 30, 40}, 1}, {{"conv1", 8}});
  ASSERT_TRUE(slice.is_ok()) << slice.status().to_string();
  // The slice holds CUs 20-39; its 8-CU layer stream CUs 20-27, inside it and balanced.
  EXPECT_EQ(calls().at(0), "create_stream(0xfffff00000, 2 words)");
  EXPECT_EQ(calls().at(2), "create_stream(0xff00000, 2 words)");
  // Pack: the layer's CUs are the first of the slice's engine-1 CUs.
  calls().clear();
  auto pack =
      make_with(25, {{25, 25}, 1}, {{"conv1", 3}}, CuMaskPolicy::kPack);
  ASSERT_TRUE(pack.is_ok()) << pack.status().to_string();
  EXPECT_EQ(calls().at(0), "create_stream(0x222222222222222, 2 words)");
  EXPECT_EQ(calls().at(2), "create_stream(0x222, 2 words)");
}

TEST_F(CuMaskSliceTest, LayerStreamsAreDestroyedWithTheirEntryLastMadeFirst) {
  {
    auto slice = make_with(50, {}, kLayers);
    ASSERT_TRUE(slice.is_ok());
    ASSERT_TRUE((*slice)->prepare(25).is_ok());
    calls().clear();
  }
  EXPECT_EQ(calls(), (std::vector<std::string>{"destroy_stream(5)", "destroy_stream(4)",
                                               "destroy_stream(3)", "destroy_stream(2)",
                                               "destroy_stream(1)"}));
}

TEST_F(CuMaskSliceTest, AFailedLayerStreamDestroysTheEntrysStreamsAndLeavesThePool) {
  auto slice = make_with(50, {}, kLayers);
  ASSERT_TRUE(slice.is_ok());
  calls().clear();
  log_->fail = "create_stream";
  log_->fail_skip = 1;  // the entry's stream is made, its layer stream fails
  auto failed = (*slice)->prepare(25);
  ASSERT_FALSE(failed.is_ok());
  EXPECT_NE(failed.status().message().find("right-sized stream of 8 CUs in the 16-CU slice"),
            std::string::npos)
      << failed.status().message();
  EXPECT_EQ(calls(), (std::vector<std::string>{"create_stream(0xffff, 2 words)",
                                               "stream_mask(4, 2)", "create_stream(0xff, 2 words)",
                                               "destroy_stream(4)"}));
  EXPECT_EQ((*slice)->pool().size(), 1u);
  EXPECT_EQ((*slice)->layer_queue("conv1").stream, handle(2));
}

TEST_F(CuMaskSliceTest, WithoutLayerSizesEveryLayerGetsTheSlicesQueue) {
  auto slice = make(50);
  ASSERT_TRUE(slice.is_ok());
  EXPECT_EQ((*slice)->layer_queue("conv1").stream, (*slice)->device_queue().stream);
  EXPECT_EQ((*slice)->layer_queue("conv1").index, 0u);
  EXPECT_EQ(calls().size(), 2u) << "no layer streams";
}

TEST_F(CuMaskSliceTest, LayerSizesThatCannotBeUsedAreRefused) {
  auto twice = make_with(50, {}, {{"conv1", 8}, {"conv1", 16}});
  ASSERT_FALSE(twice.is_ok());
  EXPECT_EQ(twice.status().message(), "cumask right-sizing: layer conv1 is sized twice");
  auto zero = make_with(50, {}, {{"conv1", 0}});
  ASSERT_FALSE(zero.is_ok());
  EXPECT_EQ(zero.status().message(), "cumask right-sizing: layer conv1 has 0 CUs");
  EXPECT_TRUE(calls().empty());
}

TEST(CuMaskRightSizesTest, AProfileGivesEachLayerItsRightSizeAndOnlyHipProfilesCount) {
  LayerProfile profile;
  profile.device = "hip";
  profile.units = {4, 8};
  profile.layers = {{"conv1", {2.0, 1.0}, 8}, {"fc", {1.0, 1.0}, 4}};
  auto sizes = right_sizes(profile);
  ASSERT_TRUE(sizes.is_ok());
  ASSERT_EQ(sizes->size(), 2u);
  EXPECT_EQ((*sizes)[0].label, "conv1");
  EXPECT_EQ((*sizes)[0].cus, 8u);
  EXPECT_EQ((*sizes)[1].cus, 4u);
  profile.device = "cpu";
  auto cpu = right_sizes(profile);
  ASSERT_FALSE(cpu.is_ok());
  EXPECT_EQ(cpu.status().code(), ErrorCode::kInvalidArgument);
  EXPECT_NE(cpu.status().message().find("measured on a hip device; this one is of 'cpu' (thread "
                                        "counts)"),
            std::string::npos)
      << cpu.status().message();
  profile.device = "cuda";
  auto cuda = right_sizes(profile);
  ASSERT_FALSE(cuda.is_ok());
  EXPECT_NE(cuda.status().message().find("this one is of 'cuda' (SM counts)"), std::string::npos)
      << cuda.status().message();
}

CuMaskSliceOptions options(double percent) {
  CuMaskSliceOptions o;
  o.percent = percent;
  return o;
}

// On this machine (no AMD GPU) the real slice says why it cannot exist.
TEST(CuMaskSliceRealTest, WithoutADeviceTheSliceIsNoHipDevice) {
  if (load_hip_runtime().is_ok()) GTEST_SKIP() << "a HIP device is present";
  auto slice = create_cu_mask_slice(options(50));
  ASSERT_FALSE(slice.is_ok());
  EXPECT_EQ(slice.status().code(), ErrorCode::kUnavailable);
  EXPECT_EQ(slice.status().message().rfind("no HIP device: ", 0), 0u) << slice.status().message();
  auto bad = create_cu_mask_slice(options(0));
  ASSERT_FALSE(bad.is_ok());
  EXPECT_EQ(bad.status().code(), ErrorCode::kInvalidArgument);
}

}  // namespace
}  // namespace sliceserve::backends
