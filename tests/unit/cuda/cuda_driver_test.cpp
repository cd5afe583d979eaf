#include "sliceserve/backends/cuda/cuda_driver.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <string>

namespace sliceserve::backends {
namespace {

bool contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

TEST(CudaDriverTest, MissingLibraryIsNoCudaDevice) {
  auto driver = CudaDriver::open("libsliceserve_no_such_driver.so.1");
  ASSERT_FALSE(driver.is_ok());
  EXPECT_EQ(driver.status().code(), ErrorCode::kUnavailable);
  const std::string message = driver.status().message();
  EXPECT_EQ(message.rfind("no CUDA device: libsliceserve_no_such_driver.so.1 not found (", 0), 0u)
      << message;
}

TEST(CudaDriverTest, LibraryWithoutTheDriversSymbolsSaysTooOld) {
  auto driver = CudaDriver::open("libm.so.6");  // present everywhere, no cu* functions
  ASSERT_FALSE(driver.is_ok());
  EXPECT_EQ(driver.status().code(), ErrorCode::kUnavailable);
  const std::string message = driver.status().message();
  EXPECT_TRUE(contains(message, "no CUDA device: libm.so.6 has no cuGetErrorName")) << message;
  EXPECT_TRUE(contains(message, "driver too old")) << message;
  EXPECT_TRUE(contains(message, "12.4")) << message;
}

// The toolkit's stub resolves every symbol, and its cuInit fails: the checked-call text.
TEST(CudaDriverTest, StubLibraryFailsInCuInitWithTheCallsText) {
  const std::string stub = "/usr/local/cuda/lib64/stubs/libcuda.so";
  if (!std::filesystem::exists(stub)) GTEST_SKIP() << "no CUDA toolkit stub at " << stub;
  auto driver = CudaDriver::open(stub);
  ASSERT_FALSE(driver.is_ok());
  EXPECT_EQ(driver.status().code(), ErrorCode::kUnavailable);
  const std::string message = driver.status().message();
  EXPECT_EQ(message.rfind("no CUDA device: cuInit(0): CUDA_ERROR_", 0), 0u) << message;
  EXPECT_TRUE(contains(message, " at cuda_driver.cpp:")) << message;
}

TEST(CudaDriverTest, LoadIsCachedAndSaysNoCudaDeviceWithoutADriver) {
  auto first = load_cuda_driver();
  auto second = load_cuda_driver();
  ASSERT_EQ(first.is_ok(), second.is_ok());
  if (first.is_ok()) {
    EXPECT_EQ(*first, *second);
    EXPECT_GT((*first)->device_count(), 0);
    auto info = (*first)->device_info(0);
    ASSERT_TRUE(info.is_ok()) << info.status().to_string();
    EXPECT_GT(info->sm_count, 0u);
    EXPECT_FALSE(info->name.empty());
    auto out_of_range = (*first)->device_info((*first)->device_count());
    ASSERT_FALSE(out_of_range.is_ok());
    EXPECT_EQ(out_of_range.status().code(), ErrorCode::kInvalidArgument);
    return;
  }
  EXPECT_EQ(first.status().code(), ErrorCode::kUnavailable);
  EXPECT_EQ(first.status().message(), second.status().message());
  EXPECT_EQ(first.status().message().rfind("no CUDA device: ", 0), 0u) << first.status().message();
}

}  // namespace
}  // namespace sliceserve::backends
