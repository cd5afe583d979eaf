#include "sliceserve/backends/cuda/green_context_slice.h"

#include <gtest/gtest.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "sliceserve/backends/cuda/cuda_driver.h"

namespace sliceserve::backends {
namespace {

// Records every call as "name(arg, ...)"; handles are small integers cast to pointers.
struct FakeLog {
  std::vector<std::string> calls;
  std::string fail;  // the call name that fails next (once)
};

void* handle(uintptr_t value) { return reinterpret_cast<void*>(value); }
uintptr_t value_of(void* handle) { return reinterpret_cast<uintptr_t>(handle); }

class FakeGreenContextDevice final : public GreenContextDevice {
 public:
  FakeGreenContextDevice(std::shared_ptr<FakeLog> log, SmGranularity granularity)
      : log_(std::move(log)), granularity_(granularity) {}

  std::string name() const override { return "fake"; }

  Result<SmGranularity> sm_resource() override {
    RETURN_IF_ERROR(record("sm_resource()"));
    return granularity_;
  }
  Result<SmGroup> split_sm(unsigned sm_count) override {
    RETURN_IF_ERROR(record("split_sm(" + std::to_string(sm_count) + ", min " +
                           std::to_string(granularity_.min_partition) + ")"));
    return SmGroup{sm_count, next_++};
  }
  Result<void*> generate_desc(const SmGroup& group) override {
    RETURN_IF_ERROR(record("generate_desc(group " + std::to_string(group.id) + ", " +
                           std::to_string(group.sm_count) + " SMs)"));
    return handle(1000 + group.id);
  }
  Result<void*> create_green_context(void* desc, unsigned flags) override {
    RETURN_IF_ERROR(record("create_green_context(desc " + std::to_string(value_of(desc)) +
                           ", flags " + std::to_string(flags) + ")"));
    return handle(next_++);
  }
  Result<void*> create_stream(void* green_context, unsigned flags, int priority) override {
    RETURN_IF_ERROR(record("create_stream(ctx " + std::to_string(value_of(green_context)) +
                           ", flags " + std::to_string(flags) + ", priority " +
                           std::to_string(priority) + ")"));
    return handle(next_++);
  }
  Result<void*> context_of(void* green_context) override {
    RETURN_IF_ERROR(record("context_of(ctx " + std::to_string(value_of(green_context)) + ")"));
    return handle(value_of(green_context) + 500);
  }
  Status destroy_stream(void* stream) override {
    return record("destroy_stream(" + std::to_string(value_of(stream)) + ")");
  }
  Status destroy_green_context(void* green_context) override {
    return record("destroy_green_context(" + std::to_string(value_of(green_context)) + ")");
  }

 private:
  Status record(std::string call) {
    const std::string name = call.substr(0, call.find('('));
    log_->calls.push_back(std::move(call));
    if (log_->fail == name) {
      log_->fail.clear();
      return Status(ErrorCode::kInternal, name + "(...): CUDA_ERROR_OUT_OF_MEMORY: out of memory");
    }
    return Status::ok();
  }

  std::shared_ptr<FakeLog> log_;
  SmGranularity granularity_;
  uintptr_t next_ = 1;
};

class GreenContextSliceTest : public ::testing::Test {
 protected:
  std::unique_ptr<GreenContextSlice> make(double percent, SmGranularity granularity = {132, 8, 8}) {
    auto slice = GreenContextSlice::create(
        std::make_unique<FakeGreenContextDevice>(log_, granularity), percent);
    EXPECT_TRUE(slice.is_ok()) << slice.status().to_string();
    return slice.is_ok() ? std::move(slice).value() : nullptr;
  }

  std::vector<std::string> take_calls() { return std::exchange(log_->calls, {}); }

  std::shared_ptr<FakeLog> log_ = std::make_shared<FakeLog>();
};

TEST_F(GreenContextSliceTest, CreateSplitsTheRoundedCountAndBuildsContextAndStream) {
  auto slice = make(50);
  ASSERT_NE(slice, nullptr);
  EXPECT_EQ(take_calls(), (std::vector<std::string>{
                              "sm_resource()",
                              "split_sm(64, min 8)",
                              "generate_desc(group 1, 64 SMs)",
                              "create_green_context(desc 1001, flags 1)",   // DEFAULT_STREAM
                              "create_stream(ctx 2, flags 1, priority 0)",  // NON_BLOCKING
                              "context_of(ctx 2)",
                          }));
  EXPECT_EQ(kGreenCtxDefaultStream, 1u);
  EXPECT_EQ(kStreamNonBlocking, 1u);
  EXPECT_EQ(value_of(slice->active_green_context()), 2u);
  EXPECT_EQ(value_of(slice->active_stream()), 3u);
  EXPECT_EQ(value_of(slice->active_context()), 502u);
  EXPECT_EQ(slice->active_sm_count(), 64u);
}

TEST_F(GreenContextSliceTest, InfoSaysBackendSmsAndPlacement) {
  auto slice = make(50);
  ASSERT_NE(slice, nullptr);
  const SliceInfo info = slice->info();
  EXPECT_EQ(info.backend, "greenctx");
  EXPECT_EQ(info.placement, "SMs 0-63 of 132");
  EXPECT_NEAR(info.percent, 100.0 * 64 / 132, 1e-9);
  EXPECT_EQ(info.threads, 1u);
  EXPECT_EQ(info.duty, 1.0);
  EXPECT_TRUE(slice->resizes_in_place());
  EXPECT_EQ(slice->pool().size(), 1u);
}

TEST_F(GreenContextSliceTest, WholeDeviceUsesTheDeviceResourceWithoutASplit) {
  auto slice = make(100);
  ASSERT_NE(slice, nullptr);
  const std::vector<std::string> calls = take_calls();
  ASSERT_GE(calls.size(), 2u);
  EXPECT_EQ(calls[1], "generate_desc(group 0, 132 SMs)");
  for (const std::string& call : calls) EXPECT_EQ(call.rfind("split_sm", 0), std::string::npos);
  EXPECT_EQ(slice->info().placement, "SMs 0-131 of 132");
  EXPECT_EQ(slice->info().percent, 100.0);
}

TEST_F(GreenContextSliceTest, PreparingTheSameRoundedSizeReusesTheEntry) {
  auto slice = make(50);
  ASSERT_NE(slice, nullptr);
  take_calls();
  auto again = slice->prepare(48);  // 63.4 SMs -> 64 as well
  ASSERT_TRUE(again.is_ok()) << again.status().to_string();
  EXPECT_EQ(*again, 0u);
  auto effective = slice->prepare(slice->info().percent);
  ASSERT_TRUE(effective.is_ok());
  EXPECT_EQ(*effective, 0u);
  EXPECT_TRUE(take_calls().empty());
  EXPECT_EQ(slice->pool().size(), 1u);
}

TEST_F(GreenContextSliceTest, PrepareAddsAnEntryWithoutSwitching) {
  auto slice = make(50);
  ASSERT_NE(slice, nullptr);
  take_calls();
  auto quarter = slice->prepare(25);
  ASSERT_TRUE(quarter.is_ok()) << quarter.status().to_string();
  EXPECT_EQ(*quarter, 1u);
  EXPECT_EQ(take_calls().front(), "split_sm(32, min 8)");
  EXPECT_EQ(slice->active_index(), 0u);
  EXPECT_EQ(slice->active_sm_count(), 64u);
  const std::vector<double> pool = slice->pool();
  ASSERT_EQ(pool.size(), 2u);
  EXPECT_NEAR(pool[0], 100.0 * 64 / 132, 1e-9);
  EXPECT_NEAR(pool[1], 100.0 * 32 / 132, 1e-9);
}

TEST_F(GreenContextSliceTest, SelectSwitchesWithoutADeviceCall) {
  auto slice = make(50);
  ASSERT_NE(slice, nullptr);
  auto quarter = slice->prepare(25);
  ASSERT_TRUE(quarter.is_ok());
  void* half_stream = slice->active_stream();
  take_calls();
  ASSERT_TRUE(slice->select(*quarter).is_ok());
  EXPECT_NE(slice->active_stream(), half_stream);
  EXPECT_EQ(slice->active_sm_count(), 32u);
  EXPECT_EQ(slice->info().placement, "SMs 0-31 of 132");
  ASSERT_TRUE(slice->select(0).is_ok());
  EXPECT_EQ(slice->active_stream(), half_stream);
  ASSERT_TRUE(resize_in_place(*slice, 25).is_ok());  // prepare finds it, select switches
  EXPECT_EQ(slice->active_index(), 1u);
  EXPECT_TRUE(take_calls().empty());
  Status bad = slice->select(2);
  ASSERT_FALSE(bad.is_ok());
  EXPECT_EQ(bad.code(), ErrorCode::kInvalidArgument);
  EXPECT_EQ(slice->active_index(), 1u);
}

TEST_F(GreenContextSliceTest, DestructionDestroysEveryHandleOnceInReverseOrder) {
  auto slice = make(50);  // green context 2, stream 3
  ASSERT_NE(slice, nullptr);
  ASSERT_TRUE(slice->prepare(25).is_ok());   // group 4, green context 5, stream 6
  ASSERT_TRUE(slice->prepare(100).is_ok());  // green context 7, stream 8
  take_calls();
  slice.reset();
  EXPECT_EQ(take_calls(), (std::vector<std::string>{
                              "destroy_stream(8)",
                              "destroy_green_context(7)",
                              "destroy_stream(6)",
                              "destroy_green_context(5)",
                              "destroy_stream(3)",
                              "destroy_green_context(2)",
                          }));
}

TEST_F(GreenContextSliceTest, FailingGreenContextCreateLeavesThePoolUnchanged) {
  auto slice = make(50);
  ASSERT_NE(slice, nullptr);
  log_->fail = "create_green_context";
  auto failed = slice->prepare(25);
  ASSERT_FALSE(failed.is_ok());
  EXPECT_EQ(failed.status().code(), ErrorCode::kInternal);
  EXPECT_NE(failed.status().message().find("CUDA_ERROR_OUT_OF_MEMORY"), std::string::npos);
  EXPECT_EQ(slice->pool().size(), 1u);
  EXPECT_EQ(slice->active_index(), 0u);
  take_calls();
  auto retried = slice->prepare(25);  // nothing half-built remains in the way
  ASSERT_TRUE(retried.is_ok()) << retried.status().to_string();
  EXPECT_EQ(*retried, 1u);
}

TEST_F(GreenContextSliceTest, FailingStreamCreateDestroysTheNewGreenContext) {
  auto slice = make(50);
  ASSERT_NE(slice, nullptr);
  take_calls();
  log_->fail = "create_stream";
  auto failed = slice->prepare(25);
  ASSERT_FALSE(failed.is_ok());
  EXPECT_NE(failed.status().message().find("32 SMs"), std::string::npos);
  const std::vector<std::string> calls = take_calls();
  ASSERT_FALSE(calls.empty());
  EXPECT_EQ(calls.back(), "destroy_green_context(5)");
  EXPECT_EQ(slice->pool().size(), 1u);
  slice.reset();  // the failed entry's context is not destroyed a second time
  EXPECT_EQ(take_calls(),
            (std::vector<std::string>{"destroy_stream(3)", "destroy_green_context(2)"}));
}

TEST_F(GreenContextSliceTest, FailingFirstPrepareFailsCreateAndLeaksNothing) {
  log_->fail = "create_stream";
  auto slice = GreenContextSlice::create(
      std::make_unique<FakeGreenContextDevice>(log_, SmGranularity{132, 8, 8}), 50);
  ASSERT_FALSE(slice.is_ok());
  EXPECT_EQ(log_->calls.back(), "destroy_green_context(2)");
}

TEST_F(GreenContextSliceTest, RejectsBadPercents) {
  auto zero = GreenContextSlice::create(
      std::make_unique<FakeGreenContextDevice>(log_, SmGranularity{132, 8, 8}), 0);
  ASSERT_FALSE(zero.is_ok());
  EXPECT_EQ(zero.status().code(), ErrorCode::kInvalidArgument);
  EXPECT_TRUE(log_->calls.empty());  // validated before the device is touched
  auto slice = make(50);
  ASSERT_NE(slice, nullptr);
  auto over = slice->prepare(150);
  ASSERT_FALSE(over.is_ok());
  EXPECT_EQ(over.status().code(), ErrorCode::kInvalidArgument);
}

TEST_F(GreenContextSliceTest, ParallelForRunsOnTheCallingThread) {
  auto slice = make(50);
  ASSERT_NE(slice, nullptr);
  EXPECT_EQ(slice->concurrency(), 1u);
  std::vector<std::pair<size_t, size_t>> chunks;
  slice->parallel_for(10, [&](size_t begin, size_t end) { chunks.emplace_back(begin, end); });
  EXPECT_EQ(chunks, (std::vector<std::pair<size_t, size_t>>{{0, 10}}));
  chunks.clear();
  slice->parallel_for(0, [&](size_t begin, size_t end) { chunks.emplace_back(begin, end); });
  EXPECT_TRUE(chunks.empty());
  EXPECT_TRUE(slice->host_cpus().empty());
}

TEST(GreenContextSliceDriverTest, CreateWithoutADriverIsNoCudaDevice) {
  if (load_cuda_driver().is_ok()) GTEST_SKIP() << "a CUDA device is present";
  auto slice = create_green_context_slice({.device = 0, .percent = 50});
  ASSERT_FALSE(slice.is_ok());
  EXPECT_EQ(slice.status().code(), ErrorCode::kUnavailable);
  EXPECT_EQ(slice.status().message().rfind("no CUDA device: ", 0), 0u) << slice.status().message();
  EXPECT_EQ(slice.status().message(), load_cuda_driver().status().message());
  auto bad = create_green_context_slice({.device = 0, .percent = 0});
  ASSERT_FALSE(bad.is_ok());
  EXPECT_EQ(bad.status().code(), ErrorCode::kInvalidArgument);
}

// On a GPU: a real pool of three green contexts on device 0.
TEST(GreenContextSliceGpuTest, BuildsAndSwitchesARealPool) {
  auto driver = load_cuda_driver();
  if (!driver.is_ok()) GTEST_SKIP() << driver.status().message();  // "no CUDA device: ..."
  auto slice = create_green_context_slice({.device = 0, .percent = 50});
  ASSERT_TRUE(slice.is_ok()) << slice.status().to_string();
  auto& green = static_cast<GreenContextSlice&>(**slice);
  const SmGranularity granularity = green.granularity();
  EXPECT_GT(granularity.sm_count, 0u);
  // Creation cost has no published figure: time it (a pool entry is built at load).
  const auto created = std::chrono::steady_clock::now();
  auto quarter = green.prepare(25);
  const auto quarter_done = std::chrono::steady_clock::now();
  ASSERT_TRUE(quarter.is_ok()) << quarter.status().to_string();
  auto whole = green.prepare(100);
  ASSERT_TRUE(whole.is_ok()) << whole.status().to_string();
  const auto select_start = std::chrono::steady_clock::now();
  constexpr int kSwitches = 1000;
  for (int k = 0; k < kSwitches; ++k) {
    ASSERT_TRUE(green.select(static_cast<size_t>(k) % green.pool().size()).is_ok());
  }
  const auto select_end = std::chrono::steady_clock::now();
  for (size_t i = 0; i < green.pool().size(); ++i) {
    ASSERT_TRUE(green.select(i).is_ok());
    EXPECT_NE(green.active_stream(), nullptr);
    EXPECT_NE(green.active_context(), nullptr);
    EXPECT_GE(green.active_sm_count(), granularity.min_partition);
  }
  EXPECT_EQ(green.active_sm_count(), granularity.sm_count);
  const double create_ms =
      std::chrono::duration<double, std::milli>(quarter_done - created).count();
  const double select_us =
      std::chrono::duration<double, std::micro>(select_end - select_start).count() / kSwitches;
  std::printf(
      "greenctx on %u SMs (min %u, alignment %u): %s; creating a pool entry %.3f ms, "
      "select %.3f us\n",
      granularity.sm_count, granularity.min_partition, granularity.alignment,
      green.info().placement.c_str(), create_ms, select_us);
}

}  // namespace
}  // namespace sliceserve::backends
