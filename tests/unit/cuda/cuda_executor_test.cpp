// The CUDA executor where there is no driver (this machine and CI): it cannot be created, and
// says why, and an engine asked for a CUDA device passes that on. On a GPU machine the same
// calls succeed, which tests/gpu/cuda_executor_gpu_test.cpp covers.

#include "sliceserve/backends/cuda/cuda_executor.h"

#include <gtest/gtest.h>

#include <string>

#include "sliceserve/backends/cuda/cuda_driver.h"
#include "sliceserve/worker/engine/engine.h"

namespace sliceserve::backends {
namespace {

TEST(CudaExecutorTest, WithoutADriverCreationSaysThereIsNoCudaDevice) {
  if (load_cuda_driver().is_ok()) GTEST_SKIP() << "a CUDA device is present";
  auto executor = create_cuda_executor(0);
  ASSERT_FALSE(executor.is_ok());
  EXPECT_EQ(executor.status().code(), ErrorCode::kUnavailable);
  EXPECT_EQ(executor.status().message().rfind("no CUDA device: ", 0), 0u)
      << executor.status().message();
}

TEST(CudaExecutorTest, AnEngineOnACudaDeviceReportsTheMissingDeviceBeforeLoading) {
  if (load_cuda_driver().is_ok()) GTEST_SKIP() << "a CUDA device is present";
  worker::engine::Graph empty;
  auto engine = worker::engine::Engine::load_graph(std::move(empty), {.device = "cuda:0"});
  ASSERT_FALSE(engine.is_ok());
  EXPECT_EQ(engine.status().code(), ErrorCode::kUnavailable);
  EXPECT_EQ(engine.status().message().rfind("no CUDA device: ", 0), 0u)
      << engine.status().message();
}

TEST(CudaExecutorTest, DeviceNamesAreCheckedBeforeAnythingIsLoaded) {
  for (const std::string device : {"cuda:", "cuda:x", "cuda:-1", "cuda:0x"}) {
    auto engine = worker::engine::Engine::load_graph({}, {.device = device});
    ASSERT_FALSE(engine.is_ok()) << device;
    EXPECT_EQ(engine.status().code(), ErrorCode::kInvalidArgument) << device;
    EXPECT_NE(engine.status().message().find("the CUDA ordinal must be a number"),
              std::string::npos)
        << engine.status().message();
  }
  auto unknown = worker::engine::Engine::load_graph({}, {.device = "tpu"});
  ASSERT_FALSE(unknown.is_ok());
  EXPECT_EQ(unknown.status().message(),
            "unknown device 'tpu' (cpu, cuda, cuda:<ordinal>, hip:<ordinal>)");
}

}  // namespace
}  // namespace sliceserve::backends
