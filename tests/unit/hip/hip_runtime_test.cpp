// The HIP runtime is loaded, not linked: a missing library, one without HIP's symbols, and the
// installed runtime on a machine without an AMD GPU all answer "no HIP device".

#include "sliceserve/backends/hip/hip_runtime.h"

#include <gtest/gtest.h>

#include <string>

namespace sliceserve::backends {
namespace {

bool contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

TEST(HipRuntimeTest, MissingLibrariesAreNoHipDeviceAndEachIsNamed) {
  auto runtime = HipRuntime::open({"libsliceserve_no_hip.so.5", "libsliceserve_no_hip.so"});
  ASSERT_FALSE(runtime.is_ok());
  EXPECT_EQ(runtime.status().code(), ErrorCode::kUnavailable);
  const std::string message = runtime.status().message();
  EXPECT_EQ(message.rfind("no HIP device: libsliceserve_no_hip.so.5 not found (", 0), 0u)
      << message;
  EXPECT_TRUE(contains(message, "; libsliceserve_no_hip.so not found (")) << message;
}

TEST(HipRuntimeTest, LibraryWithoutHipsSymbolsSaysTooOld) {
  auto runtime = HipRuntime::open({"libm.so.6"});  // present everywhere, no hip* functions
  ASSERT_FALSE(runtime.is_ok());
  EXPECT_EQ(runtime.status().code(), ErrorCode::kUnavailable);
  const std::string message = runtime.status().message();
  EXPECT_TRUE(contains(message, "no HIP device: libm.so.6 has no hipGetErrorName")) << message;
  EXPECT_TRUE(contains(message, "HIP runtime too old")) << message;
}

TEST(HipRuntimeTest, TheSonamesAreRocm5sThenTheUnversionedOne) {
  EXPECT_EQ(hip_runtime_libraries(),
            (std::vector<std::string>{"libamdhip64.so.5", "libamdhip64.so"}));
}

// The process-wide runtime: on a machine with ROCm's runtime and no GPU (CI: libamdhip64-dev
// installed) the failure is the checked hipGetDeviceCount call with the runtime's error.
TEST(HipRuntimeTest, LoadIsCachedAndSaysNoHipDeviceWithoutAGpu) {
  auto first = load_hip_runtime();
  auto second = load_hip_runtime();
  ASSERT_EQ(first.is_ok(), second.is_ok());
  if (first.is_ok()) {
    EXPECT_EQ(*first, *second);
    EXPECT_GT((*first)->device_count(), 0);
    auto info = (*first)->device_info(0);
    ASSERT_TRUE(info.is_ok()) << info.status().to_string();
    EXPECT_GT(info->cu_count, 0u);
    EXPECT_FALSE(info->name.empty());
    auto out_of_range = (*first)->device_info((*first)->device_count());
    ASSERT_FALSE(out_of_range.is_ok());
    EXPECT_EQ(out_of_range.status().code(), ErrorCode::kInvalidArgument);
    return;
  }
  EXPECT_EQ(first.status().code(), ErrorCode::kUnavailable);
  EXPECT_EQ(first.status().message(), second.status().message());
  const std::string message = first.status().message();
  EXPECT_EQ(message.rfind("no HIP device: ", 0), 0u) << message;
  if (!contains(message, "not found")) {
    // The library loaded: the device count is the checked call that failed.
    EXPECT_TRUE(contains(message, "hipGetDeviceCount(&count): hipError")) << message;
    EXPECT_TRUE(contains(message, " at hip_runtime.cpp:")) << message;
  }
}

}  // namespace
}  // namespace sliceserve::backends
