// The kernel library's convolution and GEMM (backends/kernels/convolution.cuh, launched by
// backends/src/device_kernels.h), which the HIP executor runs for Conv, Gemm and MatMul: the
// bodies on the host over their launch's params, against the cpu reference kernels, for groups,
// strides, dilations, padding, 1-D to 3-D, fused bias and post-ops, transposed GEMM operands and
// batched MatMul (strided and broadcast). The other kernels' tests are the cuda wing's
// (tests/unit/cuda/cuda_kernels_test.cpp), built with it.

#include "device_kernels.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "support/device_host_kernels.h"
#include "support/device_kernel_tensors.h"

namespace sliceserve::backends {
namespace {

using testing::address;
using testing::Dims;
using testing::expect_matches;
using testing::HostTensor;
using testing::make_op;
using testing::random_fp32;
using testing::run_reference;

template <typename Params>
void emulate(const Result<KernelLaunch<Params>>& launch) {
  ASSERT_TRUE(launch.is_ok()) << launch.status().to_string();
  testing::host_kernel(launch->kernel, &launch->params)();
}

struct ConvCase {
  std::string name;
  Dims x;  // N, C, spatial...
  int64_t out_channels;
  Dims kernel, strides, dilations, pads;
  int64_t group = 1;
  bool bias = true;
};

Dims conv_output(const ConvCase& c) {
  Dims y = {c.x[0], c.out_channels};
  for (size_t d = 0; d < c.kernel.size(); ++d) {
    const int64_t reach = (c.kernel[d] - 1) * c.dilations[d] + 1;
    y.push_back((c.x[2 + d] + c.pads[d] + c.pads[d + c.kernel.size()] - reach) / c.strides[d] + 1);
  }
  return y;
}

PlanOp conv_op(const ConvCase& c) {
  PlanOp op = make_op(OpKind::kConv, "node '" + c.name + "' (Conv)");
  op.kernel = c.kernel;
  op.strides = c.strides;
  op.dilations = c.dilations;
  op.pads = c.pads;
  op.group = c.group;
  return op;
}

void check_conv(const ConvCase& c, const std::vector<PostOp>& post_ops = {}) {
  SCOPED_TRACE(c.name);
  PlanOp op = conv_op(c);
  op.post_ops = post_ops;
  Dims w_dims = {c.out_channels, c.x[1] / c.group};
  w_dims.insert(w_dims.end(), c.kernel.begin(), c.kernel.end());
  const HostTensor x = random_fp32(c.x);
  const HostTensor w = random_fp32(w_dims, -1, 1);
  const HostTensor bias = random_fp32({c.out_channels});
  const Dims y_dims = conv_output(c);
  HostTensor want(DataType::kFp32, y_dims), got(DataType::kFp32, y_dims);
  std::vector<HostTensor> sums;
  for (const PostOp& post : post_ops) {
    if (post.kind == PostOp::Kind::kSum) sums.push_back(random_fp32(y_dims));
  }
  std::vector<const HostTensor*> sum_ptrs;
  std::vector<DeviceAddress> sum_addresses;
  for (const HostTensor& s : sums) {
    sum_ptrs.push_back(&s);
    sum_addresses.push_back(address(s.bytes.data()));
  }
  std::vector<const HostTensor*> inputs = {&x, &w};
  if (c.bias) inputs.push_back(&bias);
  run_reference(op, inputs, {&want}, sum_ptrs);
  emulate(conv_launch(op, x.device(), w.device(), c.bias ? address(bias.bytes.data()) : 0,
                      sum_addresses, got.device()));
  expect_matches(got, want, 1e-4F, 1e-4F);
}

TEST(DeviceKernelsTest, ConvolutionMatchesTheReferenceForEveryGeometry) {
  const ConvCase cases[] = {
      {"3x3 pad 1", {2, 3, 9, 8}, 5, {3, 3}, {1, 1}, {1, 1}, {1, 1, 1, 1}},
      {"7x7 stride 2 pad 3", {1, 3, 17, 15}, 4, {7, 7}, {2, 2}, {1, 1}, {3, 3, 3, 3}},
      {"1x1 no bias", {2, 8, 5, 5}, 6, {1, 1}, {1, 1}, {1, 1}, {0, 0, 0, 0}, 1, false},
      {"dilated 2", {1, 4, 11, 10}, 3, {3, 3}, {1, 1}, {2, 2}, {2, 2, 2, 2}},
      {"two groups, stride 3 by 2", {2, 6, 13, 9}, 4, {3, 2}, {3, 2}, {1, 1}, {1, 0, 1, 0}, 2},
      {"depthwise", {2, 6, 7, 7}, 6, {3, 3}, {2, 2}, {1, 1}, {1, 1, 1, 1}, 6},
      {"1-D", {2, 4, 19}, 3, {5}, {2}, {1}, {2, 2}},
      {"3-D", {1, 2, 5, 6, 4}, 3, {3, 3, 2}, {1, 2, 1}, {1, 1, 2}, {1, 1, 0, 1, 1, 0}},
  };
  for (const ConvCase& c : cases) check_conv(c);
}

TEST(DeviceKernelsTest, ConvolutionFusesTheResidualSumAndActivations) {
  const ConvCase c{"residual", {2, 4, 6, 6}, 4, {3, 3}, {1, 1}, {1, 1}, {1, 1, 1, 1}};
  check_conv(
      c, {{.kind = PostOp::Kind::kSum}, {.kind = PostOp::Kind::kUnary, .unary = UnaryAlg::kRelu}});
  check_conv(c, {{.kind = PostOp::Kind::kUnary, .unary = UnaryAlg::kClip, .alpha = 0, .beta = 6}});
}

TEST(DeviceKernelsTest, ConvolutionRefusesShapesItCannotCompute) {
  const ConvCase c{"bad", {1, 4, 6, 6}, 4, {3, 3}, {1, 1}, {1, 1}, {1, 1, 1, 0}};
  PlanOp op = conv_op(c);
  const HostTensor x = random_fp32(c.x);
  const HostTensor w = random_fp32({4, 4, 3, 3});
  HostTensor y(DataType::kFp32, {1, 4, 5, 5});
  auto asymmetric = conv_launch(op, x.device(), w.device(), 0, {}, y.device());
  ASSERT_FALSE(asymmetric.is_ok());
  EXPECT_EQ(asymmetric.status().message(), "node 'bad' (Conv): device kernel: asymmetric padding");
  op.pads = {1, 1, 1, 1};
  op.group = 3;  // 4 channels do not split into 3 groups
  EXPECT_FALSE(conv_launch(op, x.device(), w.device(), 0, {}, y.device()).is_ok());
  op.group = 1;
  HostTensor wrong(DataType::kFp32, {1, 4, 5, 6});
  EXPECT_NE(conv_launch(op, x.device(), w.device(), 0, {}, wrong.device())
                .status()
                .message()
                .find("output spatial dimension"),
            std::string::npos);
}

TEST(DeviceKernelsTest, GemmMatchesTheReferenceWithTransposedOperandsAndPostOps) {
  for (const bool trans_a : {false, true}) {
    for (const bool trans_b : {false, true}) {
      SCOPED_TRACE(std::to_string(trans_a) + std::to_string(trans_b));
      const int64_t m = 7, k = 9, n = 6;  // not multiples of the 4 x 4 tile
      PlanOp op = make_op(OpKind::kGemm);
      op.trans_a = trans_a;
      op.trans_b = trans_b;
      op.alpha = 0.75F;
      op.post_ops = {{.kind = PostOp::Kind::kUnary, .unary = UnaryAlg::kLeakyRelu, .alpha = 0.1F}};
      const HostTensor a = random_fp32(trans_a ? Dims{k, m} : Dims{m, k});
      const HostTensor b = random_fp32(trans_b ? Dims{n, k} : Dims{k, n});
      HostTensor want(DataType::kFp32, {m, n}), got(DataType::kFp32, {m, n});
      run_reference(op, {&a, &b}, {&want});
      emulate(gemm_launch(op, a.device(), b.device(), 0.0F, {}, got.device()));
      expect_matches(got, want, 1e-4F, 1e-4F);
    }
  }
}

TEST(DeviceKernelsTest, GemmAddsBetaTimesWhatYHoldsAndASum) {
  // The executor's Gemm with C: Y holds broadcast C before the kernel runs with beta.
  const int64_t m = 5, k = 3, n = 9;
  PlanOp op = make_op(OpKind::kGemm);
  op.trans_b = true;
  op.alpha = 2.0F;
  op.beta = 0.5F;
  const HostTensor a = random_fp32({m, k});
  const HostTensor b = random_fp32({n, k});
  const HostTensor c = random_fp32({n});
  HostTensor want(DataType::kFp32, {m, n}), got(DataType::kFp32, {m, n});
  run_reference(op, {&a, &b, &c}, {&want});
  for (int64_t i = 0; i < m * n; ++i) got.set_f(i, c.f(i % n));
  emulate(gemm_launch(op, a.device(), b.device(), op.beta, {}, got.device()));
  expect_matches(got, want, 1e-4F, 1e-4F);
  // A sum post-op reads its operand at Y's element.
  PlanOp summed = make_op(OpKind::kGemm);
  summed.post_ops = {{.kind = PostOp::Kind::kSum}};
  const HostTensor b2 = random_fp32({k, n});
  const HostTensor s = random_fp32({m, n});
  HostTensor want2(DataType::kFp32, {m, n}), got2(DataType::kFp32, {m, n});
  run_reference(summed, {&a, &b2}, {&want2}, {&s});
  const std::vector<DeviceAddress> sums = {address(s.bytes.data())};
  emulate(gemm_launch(summed, a.device(), b2.device(), 0.0F, sums, got2.device()));
  expect_matches(got2, want2, 1e-4F, 1e-4F);
  // Operands that do not multiply are refused.
  EXPECT_FALSE(gemm_launch(summed, a.device(), b.device(), 0.0F, sums, got2.device()).is_ok());
}

TEST(DeviceKernelsTest, BatchedMatMulMatchesTheReferenceStridedAndBroadcast) {
  const int64_t batch = 3, m = 5, k = 6, n = 7;
  const PlanOp op = make_op(OpKind::kMatMul);
  {
    SCOPED_TRACE("both batched");
    const HostTensor a = random_fp32({batch, m, k});
    const HostTensor b = random_fp32({batch, k, n});
    HostTensor want(DataType::kFp32, {batch, m, n}), got(DataType::kFp32, {batch, m, n});
    run_reference(op, {&a, &b}, {&want});
    emulate(matmul_launch(op, m, n, k, batch, m * k, k * n, a.device(), b.device(), got.device()));
    expect_matches(got, want, 1e-4F, 1e-4F);
  }
  {
    SCOPED_TRACE("one A for every B");
    const HostTensor a = random_fp32({m, k});
    const HostTensor b = random_fp32({batch, k, n});
    HostTensor want(DataType::kFp32, {batch, m, n}), got(DataType::kFp32, {batch, m, n});
    run_reference(op, {&a, &b}, {&want});
    emulate(matmul_launch(op, m, n, k, batch, 0, k * n, a.device(), b.device(), got.device()));
    expect_matches(got, want, 1e-4F, 1e-4F);
  }
  // Strides past the operand are refused before anything is launched.
  const HostTensor a = random_fp32({m, k});
  const HostTensor b = random_fp32({k, n});
  HostTensor y(DataType::kFp32, {batch, m, n});
  EXPECT_FALSE(
      matmul_launch(op, m, n, k, batch, m * k, 0, a.device(), b.device(), y.device()).is_ok());
}

}  // namespace
}  // namespace sliceserve::backends
