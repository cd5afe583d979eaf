// The CUDA executor's own kernels on a real device: the embedded fatbin loads, and kernels of
// each family (element-wise, broadcast, pooling, data movement, both shapes of the row
// reductions) compute what the reference kernels do, also when launched from a captured CUDA
// graph. Skips without a device. tests/unit/cuda/cuda_kernels_test.cpp covers every op and case
// on the host.

#include <gtest/gtest.h>

#include <memory>
#include <string>
#include <vector>

#include "cuda_driver_api.h"
#include "cuda_kernels.h"
#include "sliceserve/backends/cuda/cuda_driver.h"
#include "support/device_kernel_tensors.h"

namespace sliceserve::backends {
namespace {

using testing::Dims;
using testing::expect_matches;
using testing::HostTensor;
using testing::make_op;
using testing::random_fp32;
using testing::run_reference;

#define ASSERT_CU(call) ASSERT_EQ((call), CUDA_SUCCESS) << #call

class CudaKernelsGpuTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto driver = load_cuda_driver();
    if (!driver.is_ok()) GTEST_SKIP() << driver.status().message();
    api_ = &(*driver)->api();
    CUdevice device = 0;
    ASSERT_CU(api_->cuDeviceGet(&device, 0));
    ASSERT_CU(api_->cuDevicePrimaryCtxRetain(&context_, device));
    device_ = device;
    ASSERT_CU(api_->cuCtxSetCurrent(context_));
    ASSERT_CU(api_->cuStreamCreate(&stream_, CU_STREAM_NON_BLOCKING));
    auto kernels = CudaKernels::load(*api_);
    ASSERT_TRUE(kernels.is_ok()) << kernels.status().to_string();
    kernels_ = std::move(*kernels);
  }

  void TearDown() override {
    if (api_ == nullptr) return;
    kernels_.reset();
    for (CUdeviceptr p : buffers_) api_->cuMemFree(p);
    if (stream_ != nullptr) api_->cuStreamDestroy(stream_);
    if (context_ != nullptr) api_->cuDevicePrimaryCtxRelease(device_);
  }

  // A device copy of `t` (zeros when `copy` is false), freed at TearDown.
  DeviceTensor on_device(const HostTensor& t, bool copy = true) {
    CUdeviceptr p = 0;
    EXPECT_EQ(api_->cuMemAlloc(&p, t.bytes.empty() ? 1 : t.bytes.size()), CUDA_SUCCESS);
    buffers_.push_back(p);
    if (!t.bytes.empty()) {
      if (copy) {
        EXPECT_EQ(api_->cuMemcpyHtoDAsync(p, t.bytes.data(), t.bytes.size(), stream_),
                  CUDA_SUCCESS);
      } else {
        EXPECT_EQ(api_->cuMemsetD8Async(p, 0, t.bytes.size(), stream_), CUDA_SUCCESS);
      }
    }
    return {p, t.dtype, t.dims};
  }

  // Waits for the stream and reads `d` back into a tensor of `like`'s shape.
  HostTensor read_back(const DeviceTensor& d, const HostTensor& like) {
    HostTensor t(like.dtype, like.dims);
    if (!t.bytes.empty()) {
      EXPECT_EQ(api_->cuMemcpyDtoHAsync(t.bytes.data(), d.data, t.bytes.size(), stream_),
                CUDA_SUCCESS);
    }
    EXPECT_EQ(api_->cuStreamSynchronize(stream_), CUDA_SUCCESS);
    return t;
  }

  // Runs `op` on one input: through `launch` on the device, and the reference on the host.
  template <typename Launch>
  void check_one_input(const PlanOp& op, const HostTensor& x, const Dims& y_dims, Launch launch,
                       float rtol = 1e-5F, float atol = 1e-6F) {
    HostTensor want(x.dtype, y_dims);
    run_reference(op, {&x}, {&want});
    const DeviceTensor dx = on_device(x);
    const DeviceTensor dy = on_device(want, false);
    const Status status = launch(dx, dy);
    ASSERT_TRUE(status.is_ok()) << status.to_string();
    expect_matches(read_back(dy, want), want, rtol, atol);
  }

  const CudaDriverApi* api_ = nullptr;
  CUdevice device_ = 0;
  CUcontext context_ = nullptr;
  CUstream stream_ = nullptr;
  std::unique_ptr<CudaKernels> kernels_;
  std::vector<CUdeviceptr> buffers_;
};

TEST_F(CudaKernelsGpuTest, ElementWiseAndBroadcastMatchTheReference) {
  PlanOp swish = make_op(OpKind::kUnary);
  swish.unary = UnaryAlg::kSwish;
  check_one_input(swish, random_fp32({3, 1000, 17}, -8, 8), {3, 1000, 17},
                  [&](const DeviceTensor& x, const DeviceTensor& y) {
                    return kernels_->unary(stream_, swish, x, y);
                  });

  PlanOp mul = make_op(OpKind::kBinary);
  mul.binary = BinaryAlg::kMul;
  const HostTensor a = random_fp32({2, 3, 40, 50}), b = random_fp32({3, 1, 1});
  HostTensor want(DataType::kFp32, a.dims);
  run_reference(mul, {&a, &b}, {&want});
  const DeviceTensor da = on_device(a), db = on_device(b), dy = on_device(want, false);
  ASSERT_TRUE(kernels_->binary(stream_, mul, da, db, dy).is_ok());
  expect_matches(read_back(dy, want), want);
}

TEST_F(CudaKernelsGpuTest, PoolingAndMovementMatchTheReference) {
  PlanOp pool = make_op(OpKind::kMaxPool);
  pool.kernel = {3, 3};
  pool.strides = {2, 2};
  pool.pads = {1, 1, 1, 1};
  check_one_input(pool, random_fp32({2, 3, 17, 19}), {2, 3, 9, 10},
                  [&](const DeviceTensor& x, const DeviceTensor& y) {
                    return kernels_->pool(stream_, pool, x, y);
                  });

  PlanOp pad = make_op(OpKind::kPad);
  pad.pads = {0, 1, 2, 3, 0, -1, 2, 1};
  pad.pad_mode = PlanOp::PadMode::kReflect;
  check_one_input(pad, random_fp32({2, 3, 5, 6}), {2, 3, 9, 10},
                  [&](const DeviceTensor& x, const DeviceTensor& y) {
                    return kernels_->pad(stream_, pad, x, y);
                  });

  PlanOp transpose = make_op(OpKind::kTranspose);
  transpose.perm = {0, 2, 3, 1};
  check_one_input(transpose, testing::random_bytes(DataType::kFp16, {2, 3, 4, 5}), {2, 4, 5, 3},
                  [&](const DeviceTensor& x, const DeviceTensor& y) {
                    return kernels_->transpose(stream_, transpose, x, y);
                  });

  PlanOp cast = make_op(OpKind::kCast);
  HostTensor x = random_fp32({4096}, -70000, 70000);
  HostTensor want(DataType::kFp16, x.dims);
  run_reference(cast, {&x}, {&want});
  const DeviceTensor dx = on_device(x), dy = on_device(want, false);
  ASSERT_TRUE(kernels_->cast(stream_, cast, dx, dy).is_ok());
  expect_matches(read_back(dy, want), want);
}

TEST_F(CudaKernelsGpuTest, RowReductionsOfBothShapesMatchTheReference) {
  for (const Dims& dims : {Dims{4, 1000}, Dims{3, 4, 5}}) {  // a block per row; a thread per row
    PlanOp softmax = make_op(OpKind::kSoftmax);
    softmax.axis = 1;
    check_one_input(softmax, random_fp32(dims, -20, 20), dims,
                    [&](const DeviceTensor& x, const DeviceTensor& y) {
                      return kernels_->softmax(stream_, softmax, x, y);
                    });
  }
  for (const Dims& dims : {Dims{2, 64, 56, 56}, Dims{2, 8, 7, 7}}) {
    PlanOp gap = make_op(OpKind::kGlobalAveragePool);
    check_one_input(gap, random_fp32(dims), {dims[0], dims[1], 1, 1},
                    [&](const DeviceTensor& x, const DeviceTensor& y) {
                      return kernels_->global_average_pool(stream_, gap, x, y);
                    });
  }
  PlanOp mean = make_op(OpKind::kReduceMean);
  mean.axes = {0, 2};
  mean.keepdims = false;
  check_one_input(mean, random_fp32({30, 5, 40}), {5},
                  [&](const DeviceTensor& x, const DeviceTensor& y) {
                    return kernels_->reduce_mean(stream_, mean, x, y);
                  });
}

// The executor records its launches into a CUDA graph: a captured launch must replay right.
TEST_F(CudaKernelsGpuTest, LaunchesCapturedIntoAGraphReplay) {
  PlanOp relu = make_op(OpKind::kUnary);
  const HostTensor x = random_fp32({1 << 20});
  HostTensor want(DataType::kFp32, x.dims);
  run_reference(relu, {&x}, {&want});
  const DeviceTensor dx = on_device(x), dy = on_device(want, false);
  ASSERT_CU(api_->cuStreamSynchronize(stream_));
  ASSERT_CU(api_->cuStreamBeginCapture(stream_, CU_STREAM_CAPTURE_MODE_THREAD_LOCAL));
  const Status recorded = kernels_->unary(stream_, relu, dx, dy);
  CUgraph graph = nullptr;
  ASSERT_CU(api_->cuStreamEndCapture(stream_, &graph));
  ASSERT_TRUE(recorded.is_ok()) << recorded.to_string();
  CUgraphExec exec = nullptr;
  ASSERT_CU(api_->cuGraphInstantiate(&exec, graph, 0));
  ASSERT_CU(api_->cuGraphLaunch(exec, stream_));
  expect_matches(read_back(dy, want), want);
  api_->cuGraphExecDestroy(exec);
  api_->cuGraphDestroy(graph);
}

}  // namespace
}  // namespace sliceserve::backends
