// The mps backend's slice on a real device: the primary context and the stream exist and work.
// Skips without a device (label gpu).

#include <gtest/gtest.h>

#include <chrono>

#include "sliceserve/backends/cuda/cuda_device_slice.h"
#include "sliceserve/backends/cuda/cuda_driver.h"

namespace sliceserve::backends {
namespace {

TEST(CudaDeviceSliceGpuTest, HoldsAContextAndAStreamOfTheDevice) {
  auto driver = load_cuda_driver();
  if (!driver.is_ok()) GTEST_SKIP() << driver.status().message();  // "no CUDA device: ..."
  const auto start = std::chrono::steady_clock::now();
  auto slice = create_cuda_device_slice({.device = 0, .mps_percent = std::nullopt});
  ASSERT_TRUE(slice.is_ok()) << slice.status().to_string();
  const auto took = std::chrono::steady_clock::now() - start;
  const DeviceQueue queue = (*slice)->device_queue();
  EXPECT_NE(queue.context, nullptr);
  EXPECT_NE(queue.stream, nullptr);
  EXPECT_EQ(queue.index, 0u);
  const SliceInfo info = (*slice)->info();
  EXPECT_DOUBLE_EQ(info.percent, 100.0);
  EXPECT_NE(info.placement.find("(device 0)"), std::string::npos) << info.placement;
  RecordProperty("create_ms",
                 std::to_string(std::chrono::duration<double, std::milli>(took).count()));
  // A second slice of the same device shares the primary context (retained twice).
  auto second = create_cuda_device_slice({.device = 0, .mps_percent = 100.0});
  ASSERT_TRUE(second.is_ok()) << second.status().to_string();
  EXPECT_EQ((*second)->device_queue().context, queue.context);
  EXPECT_NE((*second)->device_queue().stream, queue.stream);
}

}  // namespace
}  // namespace sliceserve::backends
