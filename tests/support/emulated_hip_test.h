#pragma once
// The fixture base of the hip wing's emulated-device tests (the executor's, a right-sized run's):
// a fresh emulated runtime for each test, HIP executors on it, and at the end no device memory,
// event or stream left behind.

#include <gtest/gtest.h>

#include <memory>

#include "hip_executor_internal.h"
#include "support/emulated_executor.h"
#include "support/emulated_hip_runtime.h"

namespace sliceserve::testing {

class EmulatedHipTest : public EmulatedExecutorTest {
 protected:
  void SetUp() override {
    hip_device() = EmulatedHip{};
    EmulatedExecutorTest::SetUp();
  }
  void TearDown() override {
    EXPECT_EQ(hip_device().allocations, 0) << "device memory leaked";
    EXPECT_TRUE(hip_device().event_flags.empty()) << "events leaked";
    EXPECT_TRUE(hip_device().live_streams.empty()) << "streams leaked";
  }

  // A HIP executor on the emulated runtime (null, and a failure, when it cannot be made).
  std::unique_ptr<Executor> hip() {
    auto executor = backends::create_hip_executor(api_, 0, kEmulatedCodeObject);
    EXPECT_TRUE(executor.is_ok()) << executor.status().to_string();
    return executor.is_ok() ? std::move(executor).value() : nullptr;
  }

  backends::HipRuntimeApi api_ = emulated_hip_runtime();
};

}  // namespace sliceserve::testing
