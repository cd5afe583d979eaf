// The CUDA executor's own kernels, without a GPU: (a) the kernel bodies run on the host over
// every index, with the params the launcher computes, against the reference kernels; (b) the
// launcher against a fake driver (what it resolves, launches and reports); (c) the embedded
// fatbin. tests/gpu/cuda_kernels_gpu_test.cpp runs the same kernels on a device.

#include "cuda_kernels.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <map>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "sliceserve/shm/tensor_spec.h"
#include "support/device_host_kernels.h"
#include "support/device_kernel_tensors.h"

namespace sliceserve::backends {
namespace {

namespace k = kernels;
using testing::address;
using testing::Dims;
using testing::expect_matches;
using testing::HostTensor;
using testing::make_op;
using testing::random_bytes;
using testing::random_fp32;
using testing::rng;
using testing::run_reference;

// ---- host emulation: each kernel's body over its params (support/device_host_kernels.h) -----

template <typename Params>
void emulate(const Result<KernelLaunch<Params>>& launch) {
  ASSERT_TRUE(launch.is_ok()) << launch.status().to_string();
  testing::host_kernel(launch->kernel, &launch->params)();
}

// ---- (a) element-wise ----------------------------------------------------------------------

TEST(CudaKernelsTest, UnaryMatchesTheReferenceForEveryFunction) {
  struct Case {
    UnaryAlg alg;
    float alpha, beta;
  };
  const Case cases[] = {{UnaryAlg::kRelu, 0.3F, 0},
                        {UnaryAlg::kLeakyRelu, 0.1F, 0},
                        {UnaryAlg::kClip, -0.5F, 0.7F},
                        {UnaryAlg::kSigmoid, 0, 0},
                        {UnaryAlg::kHardSigmoid, 0.2F, 0.5F},
                        {UnaryAlg::kHardSwish, 0, 0},
                        {UnaryAlg::kSwish, 0, 0}};
  for (const Case& c : cases) {
    SCOPED_TRACE(int(c.alg));
    PlanOp op = make_op(OpKind::kUnary);
    op.unary = c.alg;
    op.alpha = c.alpha;
    op.beta = c.beta;
    HostTensor x = random_fp32({3, 5, 7}, -8, 8);
    x.set_f(0, std::numeric_limits<float>::quiet_NaN());
    x.set_f(1, std::numeric_limits<float>::infinity());
    x.set_f(2, -std::numeric_limits<float>::infinity());
    x.set_f(3, -0.0F);
    HostTensor want(DataType::kFp32, x.dims), got(DataType::kFp32, x.dims);
    run_reference(op, {&x}, {&want});
    emulate(unary_launch(op, x.device(), got.device()));
    expect_matches(got, want);
  }
}

// The epilogue against a Conv whose 1x1 identity weights leave its input: the reference's bias,
// then post-ops and sums, in order.
TEST(CudaKernelsTest, EpilogueMatchesAConvsBiasPostOpsAndSums) {
  const int64_t c = 3;
  HostTensor x = random_fp32({2, c, 4, 5});
  HostTensor w(DataType::kFp32, {c, c, 1, 1});
  for (int64_t i = 0; i < c; ++i) w.set_f(i * c + i, 1.0F);
  HostTensor bias = random_fp32({c});
  HostTensor s1 = random_fp32(x.dims), s2 = random_fp32(x.dims);
  PlanOp op = make_op(OpKind::kConv);
  op.kernel = {1, 1};
  op.post_ops = {{PostOp::Kind::kUnary, UnaryAlg::kRelu, 0, 0, -1},
                 {PostOp::Kind::kSum, UnaryAlg::kRelu, 0, 0, 7},
                 {PostOp::Kind::kUnary, UnaryAlg::kClip, -1.0F, 2.0F, -1},
                 {PostOp::Kind::kSum, UnaryAlg::kRelu, 0, 0, 8},
                 {PostOp::Kind::kUnary, UnaryAlg::kSwish, 0, 0, -1}};
  HostTensor want(DataType::kFp32, x.dims);
  run_reference(op, {&x, &w, &bias}, {&want}, {&s1, &s2});
  HostTensor got = x;  // in place, as on a conv's result
  const std::vector<CUdeviceptr> sums{address(s1.bytes.data()), address(s2.bytes.data())};
  emulate(epilogue_launch(op.post_ops, address(bias.bytes.data()), sums, got.device()));
  expect_matches(got, want);

  // Bias alone, no post-ops.
  op.post_ops.clear();
  run_reference(op, {&x, &w, &bias}, {&want});
  got = x;
  emulate(epilogue_launch({}, address(bias.bytes.data()), {}, got.device()));
  expect_matches(got, want);
}

TEST(CudaKernelsTest, EpilogueMatchesAGemmsPostOps) {
  HostTensor a = random_fp32({5, 7});
  HostTensor eye(DataType::kFp32, {7, 7});
  for (int64_t i = 0; i < 7; ++i) eye.set_f(i * 7 + i, 1.0F);
  HostTensor s = random_fp32({5, 7});
  PlanOp op = make_op(OpKind::kGemm);
  op.alpha = 1.0F;
  op.post_ops = {{PostOp::Kind::kUnary, UnaryAlg::kLeakyRelu, 0.2F, 0, -1},
                 {PostOp::Kind::kSum, UnaryAlg::kRelu, 0, 0, 3}};
  HostTensor want(DataType::kFp32, {5, 7});
  run_reference(op, {&a, &eye}, {&want}, {&s});
  HostTensor got = a;
  const std::vector<CUdeviceptr> sums{address(s.bytes.data())};
  emulate(epilogue_launch(op.post_ops, 0, sums, got.device()));
  expect_matches(got, want);
}

TEST(CudaKernelsTest, BatchNormFoldedMatchesTheReference) {
  for (const Dims& dims : {Dims{2, 4, 3, 3}, Dims{5, 4}, Dims{1, 4, 2, 3, 2}}) {
    SCOPED_TRACE(shm::shape_to_string(dims));
    const int64_t c = dims[1];
    HostTensor x = random_fp32(dims);
    HostTensor gamma = random_fp32({c}), beta = random_fp32({c}), mean = random_fp32({c});
    HostTensor var = random_fp32({c}, 0.1F, 2.0F);
    PlanOp op = make_op(OpKind::kBatchNorm);
    op.epsilon = 1e-3F;
    op.post_ops = {{PostOp::Kind::kUnary, UnaryAlg::kRelu, 0, 0, -1},
                   {PostOp::Kind::kUnary, UnaryAlg::kHardSwish, 0, 0, -1}};
    HostTensor want(DataType::kFp32, dims), got(DataType::kFp32, dims);
    run_reference(op, {&x, &gamma, &beta, &mean, &var}, {&want});
    auto floats = [](const HostTensor& t) {
      return std::span<const float>(reinterpret_cast<const float*>(t.bytes.data()),
                                    size_t(t.count()));
    };
    HostTensor scale(DataType::kFp32, {c}), shift(DataType::kFp32, {c});
    fold_batch_norm(op.epsilon, floats(gamma), floats(beta), floats(mean), floats(var),
                    {reinterpret_cast<float*>(scale.bytes.data()), size_t(c)},
                    {reinterpret_cast<float*>(shift.bytes.data()), size_t(c)});
    emulate(batch_norm_launch(op, address(scale.bytes.data()), address(shift.bytes.data()),
                              x.device(), got.device()));
    // x * scale + shift in fp32 against the reference's double: cancellation costs absolute
    // precision of the order of the terms.
    expect_matches(got, want, 1e-5F, 1e-5F);
  }
}

TEST(CudaKernelsTest, BinaryBroadcastsLikeTheReference) {
  const std::pair<Dims, Dims> shapes[] = {
      {{2, 3, 4, 5}, {2, 3, 4, 5}},
      {{2, 3, 4, 5}, {5}},
      {{2, 1, 4, 1}, {3, 1, 5}},
      {{}, {2, 3}},
      {{1}, {4, 1, 3}},
      {{3, 1, 7}, {1, 1}},
      {{2, 1, 2, 1, 2, 1, 2, 3}, {1, 2, 1, 2, 1, 2, 1, 3}},        // rank 8, nothing merges
      {{2, 2, 1, 1, 2, 2, 1, 2, 3}, {2, 2, 1, 1, 2, 2, 1, 2, 3}},  // rank 9 merges to 1
      {{0, 3}, {1, 3}},
  };
  for (BinaryAlg alg : {BinaryAlg::kAdd, BinaryAlg::kSub, BinaryAlg::kMul, BinaryAlg::kDiv}) {
    for (const auto& [a_dims, b_dims] : shapes) {
      SCOPED_TRACE(shm::shape_to_string(a_dims) + " op " + shm::shape_to_string(b_dims));
      PlanOp op = make_op(OpKind::kBinary);
      op.binary = alg;
      HostTensor a = random_fp32(a_dims), b = random_fp32(b_dims, 0.5F, 3.0F);
      Dims y_dims(std::max(a_dims.size(), b_dims.size()));
      for (size_t i = 0; i < y_dims.size(); ++i) {
        const size_t from_end = y_dims.size() - i;
        const int64_t da = from_end <= a_dims.size() ? a_dims[a_dims.size() - from_end] : 1;
        const int64_t db = from_end <= b_dims.size() ? b_dims[b_dims.size() - from_end] : 1;
        y_dims[i] = da == 1 ? db : da;
      }
      HostTensor want(DataType::kFp32, y_dims), got(DataType::kFp32, y_dims);
      run_reference(op, {&a, &b}, {&want});
      emulate(binary_launch(op, a.device(), b.device(), got.device()));
      expect_matches(got, want);
    }
  }
}

TEST(CudaKernelsTest, BinaryRejectsShapesThatDoNotBroadcast) {
  PlanOp op = make_op(OpKind::kBinary, "node 'add' (Add)");
  HostTensor a = random_fp32({2, 3}), b = random_fp32({4}), y(DataType::kFp32, {2, 3});
  auto launch = binary_launch(op, a.device(), b.device(), y.device());
  ASSERT_FALSE(launch.is_ok());
  EXPECT_EQ(launch.status().code(), ErrorCode::kInvalidArgument);
  EXPECT_NE(launch.status().message().find("node 'add' (Add)"), std::string::npos);
}

TEST(CudaKernelsTest, LrnMatchesTheReference) {
  for (int64_t size : {1, 3, 4, 5}) {
    for (const Dims& dims : {Dims{2, 7, 3, 3}, Dims{3, 6}}) {
      SCOPED_TRACE("size " + std::to_string(size) + " " + shm::shape_to_string(dims));
      PlanOp op = make_op(OpKind::kLrn);
      op.size = size;
      op.alpha = 1e-2F;
      op.beta = 0.75F;
      op.bias = 1.0F;
      HostTensor x = random_fp32(dims);
      HostTensor want(DataType::kFp32, dims), got(DataType::kFp32, dims);
      run_reference(op, {&x}, {&want});
      emulate(lrn_launch(op, x.device(), got.device()));
      expect_matches(got, want);
    }
  }
}

// ---- (a) pooling and reductions ------------------------------------------------------------

int64_t pool_out(int64_t in, int64_t kernel, int64_t stride, int64_t dilation, int64_t pb,
                 int64_t pe, bool ceil) {
  const int64_t span = in + pb + pe - (kernel - 1) * dilation - 1;
  return (ceil ? (span + stride - 1) : span) / stride + 1;
}

TEST(CudaKernelsTest, PoolingMatchesTheReferenceIncludingPaddingEdgeCases) {
  struct Case {
    Dims x;
    Dims kernel, strides, dilations, pads;
    bool ceil;
  };
  const Case cases[] = {
      {{2, 3, 7, 9}, {3, 3}, {2, 2}, {}, {1, 1, 1, 1}, false},
      {{1, 2, 7, 7}, {2, 2}, {2, 2}, {}, {0, 0, 0, 0}, true},       // ceil_mode
      {{1, 1, 6, 7}, {3, 2}, {1, 2}, {2, 1}, {2, 0, 1, 1}, false},  // dilation, uneven pads
      {{1, 2, 2, 2}, {2, 2}, {1, 1}, {}, {3, 3, 3, 3}, false},      // windows of pad only
      {{1, 1, 5, 5}, {2, 2}, {2, 2}, {}, {1, 1, 1, 1}, true},       // ceil past the pads
      {{2, 3, 10}, {3}, {2}, {}, {1, 2}, false},                    // 1-d
  };
  for (const Case& c : cases) {
    for (OpKind kind : {OpKind::kMaxPool, OpKind::kAveragePool}) {
      for (bool include_pad : {false, true}) {
        if (kind == OpKind::kMaxPool && include_pad) continue;
        SCOPED_TRACE(shm::shape_to_string(c.x) + (kind == OpKind::kMaxPool ? " max" : " avg") +
                     (include_pad ? " include_pad" : ""));
        PlanOp op = make_op(kind);
        op.kernel = c.kernel;
        op.strides = c.strides;
        op.dilations = c.dilations;
        op.pads = c.pads;
        op.count_include_pad = include_pad;
        Dims y_dims = {c.x[0], c.x[1]};
        const size_t spatial = c.x.size() - 2;
        for (size_t i = 0; i < spatial; ++i) {
          y_dims.push_back(pool_out(c.x[2 + i], c.kernel[i], c.strides[i],
                                    c.dilations.empty() ? 1 : c.dilations[i], c.pads[i],
                                    c.pads[spatial + i], c.ceil));
        }
        HostTensor x = random_fp32(c.x);
        if (kind == OpKind::kMaxPool) x.set_f(1, std::numeric_limits<float>::quiet_NaN());
        HostTensor want(DataType::kFp32, y_dims), got(DataType::kFp32, y_dims);
        run_reference(op, {&x}, {&want});
        emulate(pool_launch(op, x.device(), got.device()));
        expect_matches(got, want);
      }
    }
  }
}

TEST(CudaKernelsTest, GlobalAveragePoolMatchesTheReference) {
  for (const Dims& dims : {Dims{2, 3, 5, 7}, Dims{1, 4, 20, 20}, Dims{2, 3, 9}, Dims{1, 2, 0, 3}}) {
    SCOPED_TRACE(shm::shape_to_string(dims));
    HostTensor x = random_fp32(dims);
    Dims y_dims = dims;
    std::fill(y_dims.begin() + 2, y_dims.end(), 1);
    PlanOp op = make_op(OpKind::kGlobalAveragePool);
    HostTensor want(DataType::kFp32, y_dims), got(DataType::kFp32, y_dims);
    run_reference(op, {&x}, {&want});
    auto launch = global_average_pool_launch(op, x.device(), got.device());
    emulate(launch);
    expect_matches(got, want);
    ASSERT_TRUE(launch.is_ok());
    EXPECT_EQ(launch->kernel, launch->params.row_length >= kBlockRowLength
                                  ? DeviceKernel::ss_reduce_mean_block
                                  : DeviceKernel::ss_reduce_mean_rows);
  }
}

TEST(CudaKernelsTest, ReduceMeanMatchesTheReference) {
  struct Case {
    Dims x, axes;
    bool keepdims;
  };
  const Case cases[] = {{{2, 3, 4, 5}, {1}, true},
                        {{2, 3, 4, 5}, {0, 2}, false},
                        {{2, 3, 4, 5}, {1, 2, 3}, true},
                        {{2, 3, 4, 5}, {}, false},
                        {{7}, {0}, true},
                        {{3, 50, 4}, {1, 2}, false}};
  for (const Case& c : cases) {
    SCOPED_TRACE(shm::shape_to_string(c.x) + " axes " + shm::shape_to_string(c.axes));
    PlanOp op = make_op(OpKind::kReduceMean);
    op.axes = c.axes;
    op.keepdims = c.keepdims;
    Dims y_dims;
    for (size_t i = 0; i < c.x.size(); ++i) {
      const bool reduced =
          c.axes.empty() || std::find(c.axes.begin(), c.axes.end(), int64_t(i)) != c.axes.end();
      if (!reduced) {
        y_dims.push_back(c.x[i]);
      } else if (c.keepdims) {
        y_dims.push_back(1);
      }
    }
    HostTensor x = random_fp32(c.x);
    HostTensor want(DataType::kFp32, y_dims), got(DataType::kFp32, y_dims);
    run_reference(op, {&x}, {&want});
    emulate(reduce_mean_launch(op, x.device(), got.device()));
    expect_matches(got, want, 1e-5F, 1e-6F);
  }
}

TEST(CudaKernelsTest, SoftmaxIsStableAndMatchesTheReference) {
  struct Case {
    Dims x;
    int64_t axis;
  };
  const Case cases[] = {{{3, 4, 5}, 0},  {{3, 4, 5}, 1}, {{3, 4, 5}, 2},
                        {{3, 4, 5}, -1}, {{2, 300}, 1},  {{1, 1000}, -1}};
  for (const Case& c : cases) {
    SCOPED_TRACE(shm::shape_to_string(c.x) + " axis " + std::to_string(c.axis));
    PlanOp op = make_op(OpKind::kSoftmax);
    op.axis = c.axis;
    HostTensor x = random_fp32(c.x, 990.0F, 1000.0F);  // exp would overflow without the max
    HostTensor want(DataType::kFp32, c.x), got(DataType::kFp32, c.x);
    run_reference(op, {&x}, {&want});
    auto launch = softmax_launch(op, x.device(), got.device());
    emulate(launch);
    expect_matches(got, want);
    ASSERT_TRUE(launch.is_ok());
    EXPECT_EQ(launch->kernel, launch->params.length >= kBlockRowLength
                                  ? DeviceKernel::ss_softmax_block
                                  : DeviceKernel::ss_softmax_rows);
  }
}

// ---- (a) data movement ---------------------------------------------------------------------

TEST(CudaKernelsTest, TransposeMatchesTheReferenceForEveryElementSize) {
  struct Case {
    DataType dtype;
    Dims x, perm;
  };
  const Case cases[] = {
      {DataType::kInt8, {2, 3, 4}, {2, 0, 1}},
      {DataType::kFp32, {2, 3, 4, 5}, {0, 2, 3, 1}},
      {DataType::kFp16, {3, 5}, {}},  // the default: reversed
      {DataType::kInt64, {2, 1, 3, 1, 2}, {4, 3, 2, 1, 0}},
      {DataType::kUint8, {2, 1, 2, 1, 2, 1, 2, 1, 2}, {0, 1, 2, 3, 4, 5, 6, 7, 8}},  // merges
      {DataType::kFp32, {7}, {0}},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(shm::shape_to_string(c.x) + " perm " + shm::shape_to_string(c.perm));
    PlanOp op = make_op(OpKind::kTranspose);
    op.perm = c.perm;
    Dims y_dims(c.x.size());
    for (size_t i = 0; i < c.x.size(); ++i) {
      y_dims[i] = c.x[size_t(c.perm.empty() ? int64_t(c.x.size() - 1 - i) : c.perm[i])];
    }
    HostTensor x = random_bytes(c.dtype, c.x);
    HostTensor want(c.dtype, y_dims), got(c.dtype, y_dims);
    run_reference(op, {&x}, {&want});
    emulate(transpose_launch(op, x.device(), got.device()));
    expect_matches(got, want);
  }
}

TEST(CudaKernelsTest, TransposeBeyondEightUnmergeableDimensionsIsRejected) {
  const Dims dims{2, 2, 2, 2, 2, 2, 2, 2, 2};
  PlanOp op = make_op(OpKind::kTranspose);
  op.perm = {8, 7, 6, 5, 4, 3, 2, 1, 0};
  HostTensor x = random_bytes(DataType::kUint8, dims), y(DataType::kUint8, dims);
  auto launch = transpose_launch(op, x.device(), y.device());
  ASSERT_FALSE(launch.is_ok());
  EXPECT_EQ(launch.status().code(), ErrorCode::kInvalidArgument);
}

TEST(CudaKernelsTest, ConcatAndSplitMatchTheReference) {
  {
    SCOPED_TRACE("concat int64 axis 1");
    PlanOp op = make_op(OpKind::kConcat);
    op.axis = 1;
    std::vector<HostTensor> parts;
    for (int64_t n : {1, 4, 0, 2}) parts.push_back(random_bytes(DataType::kInt64, {2, n, 3}));
    std::vector<const HostTensor*> ins;
    std::vector<DeviceTensor> cuda_ins;
    for (const HostTensor& t : parts) {
      ins.push_back(&t);
      cuda_ins.push_back(t.device());
    }
    HostTensor want(DataType::kInt64, {2, 7, 3}), got(DataType::kInt64, {2, 7, 3});
    run_reference(op, ins, {&want});
    for (size_t i = 0; i < parts.size(); ++i) emulate(concat_launch(op, cuda_ins, i, got.device()));
    expect_matches(got, want);
  }
  {
    SCOPED_TRACE("concat fp16 axis -1");
    PlanOp op = make_op(OpKind::kConcat);
    op.axis = -1;
    HostTensor a = random_bytes(DataType::kFp16, {3, 2}), b = random_bytes(DataType::kFp16, {3, 5});
    const std::vector<DeviceTensor> cuda_ins{a.device(), b.device()};
    HostTensor want(DataType::kFp16, {3, 7}), got(DataType::kFp16, {3, 7});
    run_reference(op, {&a, &b}, {&want});
    for (size_t i = 0; i < 2; ++i) emulate(concat_launch(op, cuda_ins, i, got.device()));
    expect_matches(got, want);
  }
  {
    SCOPED_TRACE("split fp32 axis 1");
    PlanOp op = make_op(OpKind::kSplit);
    op.axis = 1;
    op.sizes = {1, 3, 2};
    HostTensor x = random_fp32({4, 6, 5});
    std::vector<HostTensor> want, got;
    for (int64_t n : op.sizes) {
      want.emplace_back(DataType::kFp32, Dims{4, n, 5});
      got.emplace_back(DataType::kFp32, Dims{4, n, 5});
    }
    std::vector<HostTensor*> outs;
    std::vector<DeviceTensor> cuda_outs;
    for (size_t i = 0; i < want.size(); ++i) {
      outs.push_back(&want[i]);
      cuda_outs.push_back(got[i].device());
    }
    run_reference(op, {&x}, outs);
    for (size_t i = 0; i < got.size(); ++i) emulate(split_launch(op, x.device(), cuda_outs, i));
    for (size_t i = 0; i < got.size(); ++i) expect_matches(got[i], want[i]);
  }
  {
    SCOPED_TRACE("split bool axis 0");
    PlanOp op = make_op(OpKind::kSplit);
    HostTensor x = random_bytes(DataType::kBool, {5, 3});
    HostTensor w0(DataType::kBool, {2, 3}), w1(DataType::kBool, {3, 3});
    HostTensor g0(DataType::kBool, {2, 3}), g1(DataType::kBool, {3, 3});
    run_reference(op, {&x}, {&w0, &w1});
    const std::vector<DeviceTensor> cuda_outs{g0.device(), g1.device()};
    for (size_t i = 0; i < 2; ++i) emulate(split_launch(op, x.device(), cuda_outs, i));
    expect_matches(g0, w0);
    expect_matches(g1, w1);
  }
}

TEST(CudaKernelsTest, SliceWithNegativeStepsMatchesTheReference) {
  struct Case {
    DataType dtype;
    Dims x, starts, steps, y;
  };
  const Case cases[] = {
      {DataType::kInt16, {5, 6, 7}, {4, 1, 0}, {-1, 2, 3}, {5, 3, 3}},
      {DataType::kFp32, {10}, {9}, {-3}, {4}},
      {DataType::kInt64, {4, 4}, {1, 0}, {1, 1}, {2, 4}},
      {DataType::kFp32, {4, 4}, {0, 0}, {1, 1}, {0, 4}},  // empty
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(shm::shape_to_string(c.x) + " -> " + shm::shape_to_string(c.y));
    PlanOp op = make_op(OpKind::kSlice);
    op.starts = c.starts;
    op.steps = c.steps;
    HostTensor x = random_bytes(c.dtype, c.x);
    HostTensor want(c.dtype, c.y), got(c.dtype, c.y);
    run_reference(op, {&x}, {&want});
    emulate(slice_launch(op, x.device(), got.device()));
    expect_matches(got, want);
  }
}

TEST(CudaKernelsTest, PadMatchesTheReferenceInEveryModeWithCrops) {
  struct Case {
    DataType dtype;
    Dims x, pads;
    PlanOp::PadMode mode;
    double value;
  };
  using M = PlanOp::PadMode;
  const Case cases[] = {
      {DataType::kFp32, {2, 3, 4}, {0, 1, 2, 1, 0, 1}, M::kConstant, 1.5},
      {DataType::kFp32, {3, 5}, {-1, 2, 1, -2}, M::kConstant, -1.0},  // crops
      {DataType::kFp32, {3, 4, 5}, {1, 2, 3, 2, 1, 4}, M::kReflect, 0},
      {DataType::kInt32, {4, 5}, {2, 3, 1, 4}, M::kEdge, 0},
      {DataType::kUint8, {3, 3}, {1, 1, 1, 1}, M::kConstant, 300.0},  // saturates to 255
      {DataType::kFp16, {2, 3}, {1, 0, 0, 2}, M::kConstant, 0.1},
      {DataType::kFp32, {5, 6}, {-1, 2, 1, -3}, M::kReflect, 0},  // reflect of the cropped part
      {DataType::kFp32, {1, 4}, {2, 1, 3, 0}, M::kReflect, 0},    // reflect of one element
      {DataType::kInt64, {2, 2, 2}, {1, 1, 1, 1, 1, 1}, M::kEdge, 0},
      {DataType::kInt8, {2, 3}, {0, -3, 0, 2}, M::kConstant, -7.0},  // all of a dim cropped
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(shm::shape_to_string(c.x) + " pads " + shm::shape_to_string(c.pads) + " mode " +
                 std::to_string(int(c.mode)));
    PlanOp op = make_op(OpKind::kPad);
    op.pads = c.pads;
    op.pad_mode = c.mode;
    op.pad_value = c.value;
    Dims y_dims(c.x.size());
    for (size_t i = 0; i < c.x.size(); ++i) {
      y_dims[i] = c.x[i] + c.pads[i] + c.pads[c.x.size() + i];
    }
    HostTensor x = c.dtype == DataType::kFp32 ? random_fp32(c.x) : random_bytes(c.dtype, c.x);
    HostTensor want(c.dtype, y_dims), got(c.dtype, y_dims);
    run_reference(op, {&x}, {&want});
    emulate(pad_launch(op, x.device(), got.device()));
    expect_matches(got, want);
  }
}

TEST(CudaKernelsTest, GatherWithNegativeIndicesMatchesTheReference) {
  struct Case {
    DataType dtype;
    Dims x;
    int64_t axis;
    DataType index_dtype;
    Dims index_dims;
    std::vector<int64_t> indices;
  };
  const Case cases[] = {
      {DataType::kFp32, {5, 4, 3}, 0, DataType::kInt64, {2, 3}, {-1, 0, 4, -5, 2, 1}},
      {DataType::kFp32, {5, 4, 3}, 1, DataType::kInt32, {3}, {3, -4, 1}},
      {DataType::kFp32, {5, 4, 3}, -1, DataType::kInt32, {}, {-1}},  // a scalar index
      {DataType::kInt8, {6, 2}, 0, DataType::kInt64, {4}, {5, -6, 0, -1}},
      {DataType::kFp16, {3, 4}, 1, DataType::kInt32, {0}, {}},  // no indices
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(shm::shape_to_string(c.x) + " axis " + std::to_string(c.axis));
    PlanOp op = make_op(OpKind::kGather);
    op.axis = c.axis;
    HostTensor x = random_bytes(c.dtype, c.x);
    HostTensor idx(c.index_dtype, c.index_dims);
    for (size_t i = 0; i < c.indices.size(); ++i) {
      if (c.index_dtype == DataType::kInt64) {
        idx.set<int64_t>(int64_t(i), c.indices[i]);
      } else {
        idx.set<int32_t>(int64_t(i), int32_t(c.indices[i]));
      }
    }
    const int64_t axis = c.axis < 0 ? c.axis + int64_t(c.x.size()) : c.axis;
    Dims y_dims(c.x.begin(), c.x.begin() + axis);
    y_dims.insert(y_dims.end(), c.index_dims.begin(), c.index_dims.end());
    y_dims.insert(y_dims.end(), c.x.begin() + axis + 1, c.x.end());
    HostTensor want(c.dtype, y_dims), got(c.dtype, y_dims);
    run_reference(op, {&x, &idx}, {&want});
    emulate(gather_launch(op, x.device(), idx.device(), got.device()));
    expect_matches(got, want);
  }
}

TEST(CudaKernelsTest, GatherOutOfRangeIndexGivesZerosNotAFault) {
  PlanOp op = make_op(OpKind::kGather);
  HostTensor x = random_fp32({3, 2});
  HostTensor idx(DataType::kInt64, {2});
  idx.set<int64_t>(0, 3);
  idx.set<int64_t>(1, -4);
  HostTensor got = random_fp32({2, 2});
  emulate(gather_launch(op, x.device(), idx.device(), got.device()));
  for (int64_t i = 0; i < got.count(); ++i) EXPECT_EQ(got.f(i), 0.0F);
}

// Sources of every dtype Cast takes: fp16's every bit pattern, int8/uint8's every value, edge
// values of the wider ones, and floats around every saturation bound and fp16 rounding case.
HostTensor cast_source(DataType dtype) {
  const float inf = std::numeric_limits<float>::infinity();
  const std::vector<float> floats = {0.0F,
                                     -0.0F,
                                     1.0F,
                                     -1.0F,
                                     0.5F,
                                     -0.5F,
                                     1.5F,
                                     2.5F,
                                     -2.5F,
                                     127.9F,
                                     128.0F,
                                     -128.5F,
                                     -129.0F,
                                     255.5F,
                                     256.0F,
                                     300.0F,
                                     -300.0F,
                                     65504.0F,
                                     65519.0F,
                                     65520.0F,
                                     70000.0F,
                                     1e-8F,
                                     3e-8F,
                                     6e-8F,
                                     3e-5F,
                                     6.1e-5F,
                                     2147483520.0F,
                                     2147483648.0F,
                                     3e9F,
                                     -2147483648.0F,
                                     -3e9F,
                                     9.2233715e18F,
                                     1e19F,
                                     -1e19F,
                                     std::numeric_limits<float>::quiet_NaN(),
                                     inf,
                                     -inf,
                                     0.333F,
                                     1234.5678F,
                                     1e-40F,
                                     std::numeric_limits<float>::max(),
                                     1.00048828125F,
                                     1.00146484375F};  // fp16 ties
  switch (dtype) {
    case DataType::kFp32: {
      HostTensor t(dtype, {int64_t(floats.size()) + 64});
      for (size_t i = 0; i < floats.size(); ++i) t.set_f(int64_t(i), floats[i]);
      std::uniform_real_distribution<float> dist(-70000.0F, 70000.0F);
      for (int64_t i = int64_t(floats.size()); i < t.count(); ++i) t.set_f(i, dist(rng()));
      return t;
    }
    case DataType::kFp16: {
      HostTensor t(dtype, {65536});
      for (int64_t i = 0; i < 65536; ++i) t.set<uint16_t>(i, uint16_t(i));
      return t;
    }
    case DataType::kInt8:
    case DataType::kUint8: {
      HostTensor t(dtype, {256});
      for (int64_t i = 0; i < 256; ++i) t.set<uint8_t>(i, uint8_t(i));
      return t;
    }
    case DataType::kBool: {
      HostTensor t(dtype, {2});
      t.set<uint8_t>(1, 1);
      return t;
    }
    case DataType::kInt32: {
      const std::vector<int32_t> values = {0,
                                           1,
                                           -1,
                                           127,
                                           128,
                                           -129,
                                           255,
                                           256,
                                           65504,
                                           65519,
                                           65520,
                                           70000,
                                           16777217,
                                           -16777217,
                                           std::numeric_limits<int32_t>::max(),
                                           std::numeric_limits<int32_t>::min()};
      HostTensor t(dtype, {int64_t(values.size())});
      for (size_t i = 0; i < values.size(); ++i) t.set<int32_t>(int64_t(i), values[i]);
      return t;
    }
    default: {
      const std::vector<int64_t> values = {0,
                                           1,
                                           -1,
                                           255,
                                           256,
                                           -129,
                                           70000,
                                           2147483647,
                                           2147483648LL,
                                           -2147483649LL,
                                           (1LL << 40) | 1,
                                           (1LL << 53) + 1,
                                           123456789012345LL,
                                           std::numeric_limits<int64_t>::max(),
                                           std::numeric_limits<int64_t>::min()};
      HostTensor t(DataType::kInt64, {int64_t(values.size())});
      for (size_t i = 0; i < values.size(); ++i) t.set<int64_t>(int64_t(i), values[i]);
      return t;
    }
  }
}

TEST(CudaKernelsTest, CastMatchesTheReferenceForEveryPair) {
  const DataType dtypes[] = {DataType::kFp32, DataType::kFp16,  DataType::kInt32, DataType::kInt64,
                             DataType::kInt8, DataType::kUint8, DataType::kBool};
  for (DataType from : dtypes) {
    const HostTensor x = cast_source(from);
    for (DataType to : dtypes) {
      SCOPED_TRACE(std::string(shm::data_type_name(from)) + " -> " +
                   std::string(shm::data_type_name(to)));
      PlanOp op = make_op(OpKind::kCast);
      HostTensor want(to, x.dims), got(to, x.dims);
      run_reference(op, {&x}, {&want});
      emulate(cast_launch(op, x.device(), got.device()));
      expect_matches(got, want, 0.0F, 0.0F);  // exact, floats included
    }
  }
}

TEST(CudaKernelsTest, CastRejectsADtypeItDoesNotConvert) {
  PlanOp op = make_op(OpKind::kCast);
  HostTensor x(DataType::kFp64, {2}), y(DataType::kFp32, {2});
  EXPECT_EQ(cast_launch(op, x.device(), y.device()).status().code(), ErrorCode::kInvalidArgument);
}

TEST(CudaKernelsTest, FillWritesTheOneOfEveryDtype) {
  for (DataType dtype :
       {DataType::kFp32, DataType::kFp16, DataType::kFp64, DataType::kInt64, DataType::kInt32,
        DataType::kInt16, DataType::kInt8, DataType::kUint8, DataType::kBool}) {
    SCOPED_TRACE(std::string(shm::data_type_name(dtype)));
    PlanOp op = make_op(OpKind::kFill);
    HostTensor want(dtype, {3, 5}), got = random_bytes(dtype, {3, 5});
    run_reference(op, {}, {&want});
    emulate(fill_launch(op, got.device()));
    expect_matches(got, want);
  }
}

TEST(CudaKernelsTest, FloatOnlyKernelsRejectOtherDtypesNamingTheOp) {
  PlanOp op = make_op(OpKind::kUnary, "node 'relu1' (Relu)");
  HostTensor x(DataType::kFp16, {4}), y(DataType::kFp16, {4});
  auto launch = unary_launch(op, x.device(), y.device());
  ASSERT_FALSE(launch.is_ok());
  EXPECT_EQ(launch.status().code(), ErrorCode::kInvalidArgument);
  EXPECT_EQ(launch.status().message().rfind("node 'relu1' (Relu): device kernel: ", 0), 0u)
      << launch.status().message();
}

// ---- (b) the launcher against a fake driver ------------------------------------------------

struct FakeLaunch {
  std::string kernel;
  unsigned grid[3];
  unsigned block[3];
  unsigned shared_bytes;
  CUstream stream;
  std::vector<std::byte> params;
  bool has_extra;
};

// The fake driver's record; static because the driver table holds plain function pointers.
struct FakeDriver {
  std::vector<std::string> resolved;  // cuLibraryGetKernel's names, in order
  const void* image = nullptr;
  std::vector<CUlibrary> unloaded;
  std::vector<FakeLaunch> launches;
  std::string fail_function;  // this kernel's cuLibraryGetKernel fails
  bool fail_load = false;
  bool fail_launch = false;
};

FakeDriver& fake() {
  static FakeDriver driver;
  return driver;
}

CUlibrary fake_library() { return reinterpret_cast<CUlibrary>(uintptr_t(0x5150)); }

size_t params_size(const std::string& kernel) {
  static const std::map<std::string, size_t> sizes = {
      {"ss_unary", sizeof(k::UnaryParams)},
      {"ss_channel_epilogue", sizeof(k::ChannelEpilogueParams)},
      {"ss_binary", sizeof(k::BinaryParams)},
      {"ss_lrn", sizeof(k::LrnParams)},
      {"ss_cast", sizeof(k::CastParams)},
      {"ss_fill", sizeof(k::FillParams)},
      {"ss_max_pool", sizeof(k::Pool2dParams)},
      {"ss_average_pool", sizeof(k::Pool2dParams)},
      {"ss_strided_copy", sizeof(k::StridedCopyParams)},
      {"ss_pad", sizeof(k::PadParams)},
      {"ss_gather", sizeof(k::GatherParams)},
      {"ss_reduce_mean_rows", sizeof(k::ReduceMeanParams)},
      {"ss_reduce_mean_block", sizeof(k::ReduceMeanParams)},
      {"ss_softmax_rows", sizeof(k::SoftmaxParams)},
      {"ss_softmax_block", sizeof(k::SoftmaxParams)}};
  return sizes.at(kernel);
}

CudaDriverApi fake_api() {
  CudaDriverApi api;
  api.cuGetErrorName = [](CUresult result, const char** name) -> CUresult {
    switch (result) {
      case CUDA_ERROR_NOT_FOUND:
        *name = "CUDA_ERROR_NOT_FOUND";
        return CUDA_SUCCESS;
      case CUDA_ERROR_NO_BINARY_FOR_GPU:
        *name = "CUDA_ERROR_NO_BINARY_FOR_GPU";
        return CUDA_SUCCESS;
      case CUDA_ERROR_INVALID_VALUE:
        *name = "CUDA_ERROR_INVALID_VALUE";
        return CUDA_SUCCESS;
      default:
        return CUDA_ERROR_INVALID_VALUE;
    }
  };
  api.cuGetErrorString = [](CUresult, const char** text) -> CUresult {
    *text = "the fake driver's description";
    return CUDA_SUCCESS;
  };
  api.cuLibraryLoadData = [](CUlibrary* library, const void* image, CUjit_option*, void**, unsigned,
                             CUlibraryOption*, void**, unsigned) -> CUresult {
    fake().image = image;
    if (fake().fail_load) return CUDA_ERROR_NO_BINARY_FOR_GPU;
    *library = fake_library();
    return CUDA_SUCCESS;
  };
  api.cuLibraryUnload = [](CUlibrary library) -> CUresult {
    fake().unloaded.push_back(library);
    return CUDA_SUCCESS;
  };
  api.cuLibraryGetKernel = [](CUkernel* kernel, CUlibrary library, const char* name) -> CUresult {
    if (library != fake_library() || name == fake().fail_function) return CUDA_ERROR_NOT_FOUND;
    fake().resolved.emplace_back(name);
    *kernel = reinterpret_cast<CUkernel>(uintptr_t(fake().resolved.size()));  // index + 1
    return CUDA_SUCCESS;
  };
  api.cuLaunchKernel = [](CUfunction function, unsigned gx, unsigned gy, unsigned gz, unsigned bx,
                          unsigned by, unsigned bz, unsigned shared, CUstream stream, void** params,
                          void** extra) -> CUresult {
    if (fake().fail_launch) return CUDA_ERROR_INVALID_VALUE;
    FakeLaunch launch{fake().resolved.at(reinterpret_cast<uintptr_t>(function) - 1),
                      {gx, gy, gz},
                      {bx, by, bz},
                      shared,
                      stream,
                      {},
                      extra != nullptr};
    // The driver copies the one argument now: so does the fake, by the kernel's params size.
    const auto* bytes = static_cast<const std::byte*>(params[0]);
    launch.params.assign(bytes, bytes + params_size(launch.kernel));
    fake().launches.push_back(std::move(launch));
    return CUDA_SUCCESS;
  };
  return api;
}

template <typename Params>
Params decode(const FakeLaunch& launch) {
  EXPECT_EQ(launch.params.size(), sizeof(Params));
  Params p;
  std::memcpy(&p, launch.params.data(), sizeof p);
  return p;
}

CUstream fake_stream() { return reinterpret_cast<CUstream>(uintptr_t(0x57)); }

class CudaKernelsLauncherTest : public ::testing::Test {
 protected:
  void SetUp() override { fake() = FakeDriver{}; }

  std::unique_ptr<CudaKernels> load() {
    auto loaded = CudaKernels::load(api_);
    EXPECT_TRUE(loaded.is_ok()) << loaded.status().to_string();
    return loaded.is_ok() ? std::move(*loaded) : nullptr;
  }

  CudaDriverApi api_ = fake_api();
};

TEST_F(CudaKernelsLauncherTest, LoadResolvesEveryKernelAndTheDestructorUnloads) {
  {
    auto kernels = load();
    ASSERT_NE(kernels, nullptr);
    EXPECT_EQ(fake().image, cuda_kernels_fatbin().data());
    std::vector<std::string> expected;
    for (size_t i = 0; i < kDeviceKernelCount; ++i) {
      expected.emplace_back(device_kernel_name(DeviceKernel(i)));
    }
    EXPECT_EQ(fake().resolved, expected);
    EXPECT_TRUE(fake().unloaded.empty());
  }
  EXPECT_EQ(fake().unloaded, std::vector<CUlibrary>{fake_library()});
}

TEST_F(CudaKernelsLauncherTest, AMissingKernelIsReportedByNameAndTheLibraryUnloaded) {
  fake().fail_function = "ss_pad";
  auto loaded = CudaKernels::load(api_);
  ASSERT_FALSE(loaded.is_ok());
  const std::string message = loaded.status().message();
  EXPECT_EQ(message.rfind("CUDA kernel ss_pad: cuLibraryGetKernel(", 0), 0u) << message;
  EXPECT_NE(message.find("CUDA_ERROR_NOT_FOUND: the fake driver's description"), std::string::npos)
      << message;
  EXPECT_EQ(fake().unloaded, std::vector<CUlibrary>{fake_library()});
}

TEST_F(CudaKernelsLauncherTest, AFatbinTheDeviceCannotRunNamesItsArchitectures) {
  fake().fail_load = true;
  auto loaded = CudaKernels::load(api_);
  ASSERT_FALSE(loaded.is_ok());
  const std::string message = loaded.status().message();
  EXPECT_NE(message.find(std::string("SASS for sm_") + cuda_kernels_archs()), std::string::npos)
      << message;
  EXPECT_NE(message.find("CUDA_ERROR_NO_BINARY_FOR_GPU"), std::string::npos) << message;
  EXPECT_TRUE(fake().unloaded.empty());
}

TEST_F(CudaKernelsLauncherTest, ALaunchPassesTheKernelGridAndItsParams) {
  auto kernels = load();
  ASSERT_NE(kernels, nullptr);
  const Dims dims{2, 1000};
  const DeviceTensor x{0x1000, DataType::kFp32, dims}, y{0x9000, DataType::kFp32, dims};
  PlanOp op = make_op(OpKind::kSoftmax);
  op.axis = 1;
  ASSERT_TRUE(kernels->softmax(fake_stream(), op, x, y).is_ok());
  ASSERT_EQ(fake().launches.size(), 1u);
  const FakeLaunch& launch = fake().launches[0];
  EXPECT_EQ(launch.kernel, "ss_softmax_block");  // rows of 1000: a block each
  EXPECT_EQ(launch.grid[0], 2u);
  EXPECT_EQ(launch.grid[1], 1u);
  EXPECT_EQ(launch.grid[2], 1u);
  EXPECT_EQ(launch.block[0], 256u);
  EXPECT_EQ(launch.block[1], 1u);
  EXPECT_EQ(launch.shared_bytes, 0u);
  EXPECT_EQ(launch.stream, fake_stream());
  EXPECT_FALSE(launch.has_extra);
  const auto p = decode<k::SoftmaxParams>(launch);
  EXPECT_EQ(address(p.x), 0x1000u);
  EXPECT_EQ(address(p.y), 0x9000u);
  EXPECT_EQ(p.rows, 2);
  EXPECT_EQ(p.length, 1000);
  EXPECT_EQ(p.inner, 1);
}

TEST_F(CudaKernelsLauncherTest, LargeTensorsCapTheGridAndBroadcastDimsMerge) {
  auto kernels = load();
  ASSERT_NE(kernels, nullptr);
  const Dims big{64, 1000, 1000}, row{1000};
  PlanOp op = make_op(OpKind::kBinary);
  op.binary = BinaryAlg::kMul;
  const DeviceTensor a{0x1000, DataType::kFp32, big}, b{0x2000, DataType::kFp32, row},
      y{0x3000, DataType::kFp32, big};
  ASSERT_TRUE(kernels->binary(fake_stream(), op, a, b, y).is_ok());
  ASSERT_EQ(fake().launches.size(), 1u);
  EXPECT_EQ(fake().launches[0].kernel, "ss_binary");
  EXPECT_EQ(fake().launches[0].grid[0], kDeviceMaxBlocks);
  const auto p = decode<k::BinaryParams>(fake().launches[0]);
  EXPECT_EQ(p.count, 64'000'000);
  EXPECT_EQ(p.alg, k::KernelBinary::kMul);
  // [64, 1000] x [1000]: the two outer dims merge (contiguous in y, a, and broadcast in b).
  ASSERT_EQ(p.rank, 2);
  EXPECT_EQ(p.dims[0], 64'000);
  EXPECT_EQ(p.dims[1], 1000);
  EXPECT_EQ(p.a_strides[0], 1000);
  EXPECT_EQ(p.a_strides[1], 1);
  EXPECT_EQ(p.b_strides[0], 0);
  EXPECT_EQ(p.b_strides[1], 1);
}

TEST_F(CudaKernelsLauncherTest, ConcatLaunchesACopyPerInputIntoItsBlock) {
  auto kernels = load();
  ASSERT_NE(kernels, nullptr);
  const Dims d0{2, 3}, d1{2, 5}, dy{2, 8};
  PlanOp op = make_op(OpKind::kConcat);
  op.axis = 1;
  const std::vector<DeviceTensor> inputs{{0x1000, DataType::kFp16, d0},
                                         {0x2000, DataType::kFp16, d1}};
  const DeviceTensor y{0x8000, DataType::kFp16, dy};
  ASSERT_TRUE(kernels->concat(fake_stream(), op, inputs, y).is_ok());
  ASSERT_EQ(fake().launches.size(), 2u);
  const auto second = decode<k::StridedCopyParams>(fake().launches[1]);
  EXPECT_EQ(fake().launches[1].kernel, "ss_strided_copy");
  EXPECT_EQ(address(second.src), 0x2000u);
  EXPECT_EQ(address(second.dst), 0x8000u + 3 * 2);  // after input 0's 3 columns of 2 bytes
  EXPECT_EQ(second.element_size, 2);
  EXPECT_EQ(second.count, 10);
  ASSERT_EQ(second.rank, 2);
  EXPECT_EQ(second.src_strides[0], 5);
  EXPECT_EQ(second.dst_strides[0], 8);
}

TEST_F(CudaKernelsLauncherTest, EmptyTensorsLaunchNothing) {
  auto kernels = load();
  ASSERT_NE(kernels, nullptr);
  const Dims empty{0, 4};
  PlanOp op = make_op(OpKind::kUnary);
  const DeviceTensor x{0, DataType::kFp32, empty};
  EXPECT_TRUE(kernels->unary(fake_stream(), op, x, x).is_ok());
  EXPECT_TRUE(fake().launches.empty());
}

TEST_F(CudaKernelsLauncherTest, InvalidParamsLaunchNothing) {
  auto kernels = load();
  ASSERT_NE(kernels, nullptr);
  const Dims dims{4};
  PlanOp op = make_op(OpKind::kSoftmax, "node 'sm' (Softmax)");
  op.axis = 3;
  const DeviceTensor x{0x1000, DataType::kFp32, dims};
  const Status status = kernels->softmax(fake_stream(), op, x, x);
  EXPECT_EQ(status.code(), ErrorCode::kInvalidArgument);
  EXPECT_NE(status.message().find("node 'sm' (Softmax)"), std::string::npos);
  EXPECT_TRUE(fake().launches.empty());
}

TEST_F(CudaKernelsLauncherTest, ALaunchFailureNamesTheKernelAndTheDriversError) {
  auto kernels = load();
  ASSERT_NE(kernels, nullptr);
  fake().fail_launch = true;
  const Dims dims{3, 4};
  PlanOp op = make_op(OpKind::kFill);
  const DeviceTensor y{0x1000, DataType::kBool, dims};
  const Status status = kernels->fill(fake_stream(), op, y);
  ASSERT_FALSE(status.is_ok());
  EXPECT_EQ(status.message().rfind("CUDA kernel ss_fill: cuLaunchKernel(", 0), 0u)
      << status.message();
  EXPECT_NE(status.message().find("CUDA_ERROR_INVALID_VALUE: the fake driver's description"),
            std::string::npos)
      << status.message();
}

// ---- (c) the embedded fatbin ---------------------------------------------------------------

TEST(CudaKernelsFatbinTest, IsEmbeddedWithTheFatbinMagicAndEveryKernel) {
  const std::span<const unsigned char> image = cuda_kernels_fatbin();
  ASSERT_GT(image.size(), 16u);
  uint32_t magic = 0;
  std::memcpy(&magic, image.data(), sizeof magic);
  EXPECT_EQ(magic, 0xBA55ED50U);  // fatbinary.h's FATBIN_MAGIC
  EXPECT_EQ(reinterpret_cast<uintptr_t>(image.data()) % 8, 0u);
  EXPECT_NE(std::string(cuda_kernels_archs()).find("90"), std::string::npos);
  // nvcc leaves the SASS ELF uncompressed: each kernel's code section is named in it, so the
  // launcher's list and the .cu's kernels cannot drift apart unnoticed.
  const std::string bytes(reinterpret_cast<const char*>(image.data()), image.size());
  for (size_t i = 0; i < kDeviceKernelCount; ++i) {
    const std::string section = std::string(".text.") + device_kernel_name(DeviceKernel(i));
    EXPECT_NE(bytes.find(section + '\0'), std::string::npos) << section;
  }
}

}  // namespace
}  // namespace sliceserve::backends
