#include "sliceserve/backends/cuda/cuda_device_slice.h"

#include <gtest/gtest.h>

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
  std::string fail;  // the call name that fails (every time)
};

void* handle(uintptr_t value) { return reinterpret_cast<void*>(value); }
std::string text(void* h) { return std::to_string(reinterpret_cast<uintptr_t>(h)); }

class FakePrimaryContextDevice final : public PrimaryContextDevice {
 public:
  explicit FakePrimaryContextDevice(std::shared_ptr<FakeLog> log) : log_(std::move(log)) {}

  std::string name() const override { return "Fake GPU (device 0)"; }
  Result<void*> retain_primary_context() override {
    RETURN_IF_ERROR(record("retain_primary_context", "()"));
    return handle(7);
  }
  Status release_primary_context() override { return record("release_primary_context", "()"); }
  Result<void*> create_stream(void* context, unsigned flags) override {
    RETURN_IF_ERROR(record("create_stream",
                           "(ctx " + text(context) + ", flags " + std::to_string(flags) + ")"));
    return handle(9);
  }
  Status destroy_stream(void* context, void* stream) override {
    return record("destroy_stream", "(ctx " + text(context) + ", stream " + text(stream) + ")");
  }

 private:
  Status record(const std::string& name, const std::string& args) {
    log_->calls.push_back(name + args);
    if (log_->fail == name) return Status(ErrorCode::kInternal, name + ": CUDA_ERROR_FAKE");
    return Status::ok();
  }
  std::shared_ptr<FakeLog> log_;
};

class CudaDeviceSliceTest : public ::testing::Test {
 protected:
  Result<std::unique_ptr<CudaDeviceSlice>> make(std::optional<double> percent) {
    return CudaDeviceSlice::create(std::make_unique<FakePrimaryContextDevice>(log_), percent);
  }
  std::shared_ptr<FakeLog> log_ = std::make_shared<FakeLog>();
};

TEST_F(CudaDeviceSliceTest, RetainsThePrimaryContextAndMakesOneNonBlockingStream) {
  {
    auto slice = make(40.0);
    ASSERT_TRUE(slice.is_ok()) << slice.status().to_string();
    EXPECT_EQ(log_->calls, (std::vector<std::string>{"retain_primary_context()",
                                                     "create_stream(ctx 7, flags 1)"}));
    const DeviceQueue queue = (*slice)->device_queue();
    EXPECT_EQ(queue.context, handle(7));
    EXPECT_EQ(queue.stream, handle(9));
    EXPECT_EQ(queue.index, 0u);
    log_->calls.clear();
  }
  EXPECT_EQ(log_->calls, (std::vector<std::string>{"destroy_stream(ctx 7, stream 9)",
                                                   "release_primary_context()"}));
}

TEST_F(CudaDeviceSliceTest, ReportsItsMpsPercentageAndResizesOnlyByShadow) {
  auto slice = make(40.0);
  ASSERT_TRUE(slice.is_ok()) << slice.status().to_string();
  const SliceInfo info = (*slice)->info();
  EXPECT_EQ(info.backend, "mps");
  EXPECT_DOUBLE_EQ(info.percent, 40.0);
  EXPECT_EQ(info.threads, 1u);
  EXPECT_EQ(info.placement, "MPS 40% of Fake GPU (device 0)");
  EXPECT_FALSE((*slice)->resizes_in_place());
  EXPECT_EQ((*slice)->pool(), (std::vector<double>{40.0}));
  EXPECT_EQ((*slice)->prepare(60).status().code(), ErrorCode::kUnavailable);
  EXPECT_EQ((*slice)->prepare(40).value(), 0u) << "its own share is entry 0";
  EXPECT_TRUE((*slice)->select(0).is_ok());
  EXPECT_EQ((*slice)->select(1).code(), ErrorCode::kInvalidArgument);
  EXPECT_EQ((*slice)->concurrency(), 1u);
}

TEST_F(CudaDeviceSliceTest, WithoutAnMpsPercentageItIsTimeSharedAt100) {
  auto slice = make(std::nullopt);
  ASSERT_TRUE(slice.is_ok()) << slice.status().to_string();
  EXPECT_DOUBLE_EQ((*slice)->info().percent, 100.0);
  EXPECT_EQ((*slice)->info().placement, "time-shared Fake GPU (device 0)");
}

TEST_F(CudaDeviceSliceTest, ParallelForRunsOnTheCaller) {
  auto slice = make(50.0);
  ASSERT_TRUE(slice.is_ok());
  std::vector<std::pair<size_t, size_t>> chunks;
  (*slice)->parallel_for(10, [&](size_t b, size_t e) { chunks.emplace_back(b, e); });
  (*slice)->parallel_for(0, [&](size_t b, size_t e) { chunks.emplace_back(b, e); });
  EXPECT_EQ(chunks, (std::vector<std::pair<size_t, size_t>>{{0, 10}}));
}

TEST_F(CudaDeviceSliceTest, AFailedStreamReleasesTheContextAgain) {
  log_->fail = "create_stream";
  auto slice = make(40.0);
  ASSERT_FALSE(slice.is_ok());
  EXPECT_NE(slice.status().message().find("CUDA_ERROR_FAKE"), std::string::npos);
  EXPECT_EQ(log_->calls,
            (std::vector<std::string>{"retain_primary_context()", "create_stream(ctx 7, flags 1)",
                                      "release_primary_context()"}));
}

TEST_F(CudaDeviceSliceTest, AFailedRetainReleasesNothing) {
  log_->fail = "retain_primary_context";
  EXPECT_FALSE(make(40.0).is_ok());
  EXPECT_EQ(log_->calls, (std::vector<std::string>{"retain_primary_context()"}));
}

TEST_F(CudaDeviceSliceTest, RejectsAPercentageOutsideTheRange) {
  EXPECT_EQ(make(0.0).status().code(), ErrorCode::kInvalidArgument);
  EXPECT_EQ(make(100.5).status().code(), ErrorCode::kInvalidArgument);
  EXPECT_TRUE(log_->calls.empty());
}

TEST(MpsThreadPercentageTest, ParsesTheEnvironmentValue) {
  EXPECT_FALSE(parse_mps_thread_percentage(nullptr).value().has_value());
  EXPECT_DOUBLE_EQ(parse_mps_thread_percentage("40").value().value(), 40.0);
  EXPECT_DOUBLE_EQ(parse_mps_thread_percentage("12.5").value().value(), 12.5);
  EXPECT_DOUBLE_EQ(parse_mps_thread_percentage("100").value().value(), 100.0);
  for (const char* bad : {"", "0", "101", "forty", "40%", "nan"}) {
    SCOPED_TRACE(bad);
    Result<std::optional<double>> r = parse_mps_thread_percentage(bad);
    ASSERT_FALSE(r.is_ok());
    EXPECT_NE(r.status().message().find("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"), std::string::npos);
  }
}

// Without a driver the real slice says why, as the other cuda slices do.
TEST(CudaDeviceSliceDriverTest, WithoutADeviceTheSliceIsUnavailable) {
  if (load_cuda_driver().is_ok()) GTEST_SKIP() << "a CUDA device is present";
  auto slice = create_cuda_device_slice({.device = 0, .mps_percent = 50.0});
  ASSERT_FALSE(slice.is_ok());
  EXPECT_EQ(slice.status().code(), ErrorCode::kUnavailable);
  EXPECT_EQ(slice.status().message().rfind("no CUDA device: ", 0), 0u) << slice.status().message();
}

}  // namespace
}  // namespace sliceserve::backends
