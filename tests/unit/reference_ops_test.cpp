#include "reference_ops.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

namespace sliceserve::backends {
namespace {

using Dims = std::vector<int64_t>;

// A tensor owning its bytes; values are given in the dtype's storage type (uint16_t bits for
// fp16, uint8_t for bool).
struct Tensor {
  DataType dtype = DataType::kInvalid;
  Dims dims;
  std::vector<std::byte> bytes;

  TensorRef ref() const { return {dtype, dims, bytes.data()}; }
  MutableTensorRef mut() { return {dtype, dims, bytes.data()}; }

  template <typename T>
  std::vector<T> values() const {
    std::vector<T> v(bytes.size() / sizeof(T));
    if (!v.empty()) std::memcpy(v.data(), bytes.data(), bytes.size());
    return v;
  }
};

template <typename T>
Tensor make(DataType dtype, Dims dims, const std::vector<T>& values) {
  Tensor t{dtype, std::move(dims), std::vector<std::byte>(values.size() * sizeof(T))};
  if (!values.empty()) std::memcpy(t.bytes.data(), values.data(), t.bytes.size());
  return t;
}

Tensor f32(Dims dims, const std::vector<float>& values) {
  return make(DataType::kFp32, std::move(dims), values);
}

// An output, pre-filled with a pattern so that unwritten elements show.
Tensor output(DataType dtype, Dims dims) {
  int64_t n = 1;
  for (int64_t d : dims) n *= d;
  Tensor t{dtype, std::move(dims),
           std::vector<std::byte>(size_t(n) * shm::data_type_size(dtype), std::byte{0xa5})};
  return t;
}

PlanOp make_op(OpKind kind) {
  PlanOp op;
  op.kind = kind;
  op.label = "node 'n1' (Test)";
  return op;
}

Status run(const PlanOp& op, const std::vector<TensorRef>& in,
           const std::vector<MutableTensorRef>& out, const std::vector<TensorRef>& sums = {}) {
  return run_reference_op(op, in, out, sums);
}

void expect_floats(const std::vector<float>& actual, const std::vector<float>& expected,
                   float tolerance = 0.0F) {
  ASSERT_EQ(actual.size(), expected.size());
  for (size_t i = 0; i < actual.size(); ++i) {
    EXPECT_NEAR(actual[i], expected[i], tolerance) << "element " << i;
  }
}

void expect_invalid(const Status& status, const std::string& fragment) {
  EXPECT_EQ(status.code(), ErrorCode::kInvalidArgument) << status.to_string();
  EXPECT_NE(status.message().find("node 'n1'"), std::string::npos) << status.message();
  EXPECT_NE(status.message().find(fragment), std::string::npos) << status.message();
}

// ---- Conv -----------------------------------------------------------------------------------

TEST(ReferenceOps, ConvGroupedWithPaddingAndBias) {
  PlanOp op = make_op(OpKind::kConv);
  op.group = 2;
  op.kernel = {2, 2};
  op.strides = {1, 1};
  op.dilations = {1, 1};
  op.pads = {1, 1, 1, 1};
  const Tensor x = f32({1, 2, 2, 2}, {1, 2, 3, 4, 5, 6, 7, 8});
  const Tensor w = f32({2, 1, 2, 2}, {1, 0, 0, 1, 1, 1, 1, 1});
  const Tensor b = f32({2}, {10, 20});
  Tensor y = output(DataType::kFp32, {1, 2, 3, 3});
  ASSERT_TRUE(run(op, {x.ref(), w.ref(), b.ref()}, {y.mut()}).is_ok());
  expect_floats(y.values<float>(), {11, 12, 10, 13, 15, 12, 10, 13, 14,  //
                                    25, 31, 26, 32, 46, 34, 27, 35, 28});
}

TEST(ReferenceOps, Conv1dStridedDilatedWithPostOps) {
  PlanOp op = make_op(OpKind::kConv);
  op.strides = {2};
  op.dilations = {2};
  op.pads = {0, 0};
  PostOp relu;
  relu.kind = PostOp::Kind::kUnary;
  relu.unary = UnaryAlg::kRelu;
  PostOp sum;
  sum.kind = PostOp::Kind::kSum;
  op.post_ops = {relu, sum};
  const Tensor x = f32({1, 1, 5}, {1, 2, 3, 4, 5});
  const Tensor w = f32({1, 1, 2}, {2, -1});
  const Tensor residual = f32({1, 1, 2}, {10, 20});
  Tensor y = output(DataType::kFp32, {1, 1, 2});
  // Absent bias: a null TensorRef. [2*1 - 3, 2*3 - 5] = [-1, 1] -> relu [0, 1] -> + residual.
  const TensorRef no_bias{DataType::kFp32, {}, nullptr};
  ASSERT_TRUE(run(op, {x.ref(), w.ref(), no_bias}, {y.mut()}, {residual.ref()}).is_ok());
  expect_floats(y.values<float>(), {10, 21});
}

TEST(ReferenceOps, Conv3dSumsTheWholeWindow) {
  PlanOp op = make_op(OpKind::kConv);
  const Tensor x = f32({1, 1, 2, 2, 2}, {1, 2, 3, 4, 5, 6, 7, 8});
  const Tensor w = f32({1, 1, 2, 2, 2}, {1, 1, 1, 1, 1, 1, 1, -1});
  Tensor y = output(DataType::kFp32, {1, 1, 1, 1, 1});
  ASSERT_TRUE(run(op, {x.ref(), w.ref()}, {y.mut()}).is_ok());
  expect_floats(y.values<float>(), {20});  // 36 - 2 * 8
}

TEST(ReferenceOps, ConvRejectsInconsistentShapesAndCounts) {
  PlanOp op = make_op(OpKind::kConv);
  const Tensor x = f32({1, 2, 3, 3}, std::vector<float>(18, 1));
  const Tensor w = f32({1, 2, 2, 2}, std::vector<float>(8, 1));
  Tensor y = output(DataType::kFp32, {1, 1, 3, 3});  // expected [1, 1, 2, 2]
  expect_invalid(run(op, {x.ref(), w.ref()}, {y.mut()}), "output spatial dimension 0");
  expect_invalid(run(op, {x.ref()}, {y.mut()}), "needs 2 to 3 inputs, got 1");
  op.group = 2;  // W's 2 input channels * 2 groups != 2
  Tensor y2 = output(DataType::kFp32, {1, 1, 2, 2});
  expect_invalid(run(op, {x.ref(), w.ref()}, {y2.mut()}), "group 2");
  op.group = 1;
  PostOp sum;
  sum.kind = PostOp::Kind::kSum;
  op.post_ops = {sum};
  expect_invalid(run(op, {x.ref(), w.ref()}, {y2.mut()}), "1 sum post-ops but 0 sum operands");
}

// ---- normalisation --------------------------------------------------------------------------

TEST(ReferenceOps, BatchNormUsesRunningStatistics) {
  PlanOp op = make_op(OpKind::kBatchNorm);
  op.epsilon = 0;
  const Tensor x = f32({1, 2, 2}, {1, 2, 3, 4});
  const Tensor scale = f32({2}, {2, 1}), bias = f32({2}, {1, 0});
  const Tensor mean = f32({2}, {1, 3}), var = f32({2}, {4, 1});
  Tensor y = output(DataType::kFp32, {1, 2, 2});
  ASSERT_TRUE(
      run(op, {x.ref(), scale.ref(), bias.ref(), mean.ref(), var.ref()}, {y.mut()}).is_ok());
  expect_floats(y.values<float>(), {1, 2, 0, 1});

  const Tensor x64 = make<double>(DataType::kFp64, {1, 2, 1}, {3, 5});
  Tensor y64 = output(DataType::kFp64, {1, 2, 1});
  ASSERT_TRUE(
      run(op, {x64.ref(), scale.ref(), bias.ref(), mean.ref(), var.ref()}, {y64.mut()}).is_ok());
  EXPECT_EQ(y64.values<double>(), (std::vector<double>{3, 2}));
}

TEST(ReferenceOps, LrnSumsSquaresOverNeighbouringChannels) {
  PlanOp op = make_op(OpKind::kLrn);
  op.size = 2;  // channels c .. c + 1
  op.alpha = 2;
  op.beta = 1;
  op.bias = 1;
  const Tensor x = f32({1, 3, 1, 1}, {1, 2, 3});
  Tensor y = output(DataType::kFp32, {1, 3, 1, 1});
  ASSERT_TRUE(run(op, {x.ref()}, {y.mut()}).is_ok());
  expect_floats(y.values<float>(), {1.0F / 6, 2.0F / 14, 3.0F / 10}, 1e-7F);
  op.size = 3;  // channels c - 1 .. c + 1
  op.alpha = 3;
  ASSERT_TRUE(run(op, {x.ref()}, {y.mut()}).is_ok());
  expect_floats(y.values<float>(), {1.0F / 6, 2.0F / 15, 3.0F / 14}, 1e-7F);
}

TEST(ReferenceOps, SoftmaxIsStableAndUsesOneAxis) {
  PlanOp op = make_op(OpKind::kSoftmax);
  op.axis = 1;
  const Tensor x = f32({2, 2}, {1000, 1000, 0, std::log(3.0F)});
  Tensor y = output(DataType::kFp32, {2, 2});
  ASSERT_TRUE(run(op, {x.ref()}, {y.mut()}).is_ok());
  expect_floats(y.values<float>(), {0.5F, 0.5F, 0.25F, 0.75F}, 1e-7F);
  op.axis = 0;
  const Tensor x2 = f32({2, 2}, {0, 0, std::log(3.0F), 0});
  ASSERT_TRUE(run(op, {x2.ref()}, {y.mut()}).is_ok());
  expect_floats(y.values<float>(), {0.25F, 0.5F, 0.75F, 0.5F}, 1e-7F);
}

// ---- element-wise ---------------------------------------------------------------------------

TEST(ReferenceOps, UnaryAlgorithms) {
  const Tensor x = f32({5}, {-2, -0.5F, 0, 1, 4});
  struct Case {
    UnaryAlg alg;
    float alpha, beta;
    std::vector<float> expected;
  };
  const Case cases[] = {
      {UnaryAlg::kRelu, 0, 0, {0, 0, 0, 1, 4}},
      {UnaryAlg::kLeakyRelu, 0.1F, 0, {-0.2F, -0.05F, 0, 1, 4}},
      {UnaryAlg::kClip, -1, 2, {-1, -0.5F, 0, 1, 2}},
      {UnaryAlg::kSigmoid, 0, 0, {0.11920292F, 0.37754067F, 0.5F, 0.73105858F, 0.98201379F}},
      {UnaryAlg::kHardSigmoid, 0.2F, 0.5F, {0.1F, 0.4F, 0.5F, 0.7F, 1}},
      {UnaryAlg::kHardSwish, 0, 0, {-1.0F / 3, -0.5F * (5.0F / 12), 0, 2.0F / 3, 4}},
  };
  for (const Case& c : cases) {
    PlanOp op = make_op(OpKind::kUnary);
    op.unary = c.alg;
    op.alpha = c.alpha;
    op.beta = c.beta;
    Tensor y = output(DataType::kFp32, {5});
    ASSERT_TRUE(run(op, {x.ref()}, {y.mut()}).is_ok());
    SCOPED_TRACE(int(c.alg));
    expect_floats(y.values<float>(), c.expected, 1e-7F);
  }
}

TEST(ReferenceOps, UnaryOnFp16AndFp64) {
  PlanOp op = make_op(OpKind::kUnary);
  op.unary = UnaryAlg::kRelu;
  const Tensor h = make<uint16_t>(DataType::kFp16, {3}, {0xc000, 0x3c00, 0x3800});  // -2, 1, .5
  Tensor hy = output(DataType::kFp16, {3});
  ASSERT_TRUE(run(op, {h.ref()}, {hy.mut()}).is_ok());
  EXPECT_EQ(hy.values<uint16_t>(), (std::vector<uint16_t>{0x0000, 0x3c00, 0x3800}));

  op.unary = UnaryAlg::kSigmoid;
  const Tensor d = make<double>(DataType::kFp64, {1}, {0.5});
  Tensor dy = output(DataType::kFp64, {1});
  ASSERT_TRUE(run(op, {d.ref()}, {dy.mut()}).is_ok());
  EXPECT_DOUBLE_EQ(dy.values<double>()[0], 1.0 / (1.0 + std::exp(-0.5)));

  const Tensor i = make<int32_t>(DataType::kInt32, {1}, {1});
  Tensor iy = output(DataType::kInt32, {1});
  expect_invalid(run(op, {i.ref()}, {iy.mut()}), "unsupported dtype INT32");
}

TEST(ReferenceOps, BinaryBroadcastsLikeNumpy) {
  PlanOp op = make_op(OpKind::kBinary);
  op.binary = BinaryAlg::kAdd;
  const Tensor a = f32({2, 1, 3}, {0, 1, 2, 3, 4, 5});
  const Tensor b = f32({4, 1}, {0, 10, 20, 30});
  Tensor y = output(DataType::kFp32, {2, 4, 3});
  ASSERT_TRUE(run(op, {a.ref(), b.ref()}, {y.mut()}).is_ok());
  std::vector<float> expected;
  for (int i = 0; i < 2; ++i) {
    for (int j = 0; j < 4; ++j) {
      for (int k = 0; k < 3; ++k) expected.push_back(float(3 * i + k + 10 * j));
    }
  }
  expect_floats(y.values<float>(), expected);

  op.binary = BinaryAlg::kSub;  // a scalar operand
  const Tensor s = f32({}, {1});
  Tensor y2 = output(DataType::kFp32, {2, 1, 3});
  ASSERT_TRUE(run(op, {s.ref(), a.ref()}, {y2.mut()}).is_ok());
  expect_floats(y2.values<float>(), {1, 0, -1, -2, -3, -4});

  Tensor wrong = output(DataType::kFp32, {2, 3});
  expect_invalid(run(op, {a.ref(), b.ref()}, {wrong.mut()}), "expected [2,4,3]");
  const Tensor c = f32({2}, {1, 2});
  expect_invalid(run(op, {a.ref(), c.ref()}, {y2.mut()}), "do not broadcast");
}

TEST(ReferenceOps, IntegerDivTruncatesAndDivisionByZeroGivesZero) {
  PlanOp op = make_op(OpKind::kBinary);
  op.binary = BinaryAlg::kDiv;
  constexpr int32_t kMin = std::numeric_limits<int32_t>::min();
  const Tensor a = make<int32_t>(DataType::kInt32, {5}, {7, -7, 5, kMin, 0});
  const Tensor b = make<int32_t>(DataType::kInt32, {5}, {2, 2, 0, -1, -3});
  Tensor y = output(DataType::kInt32, {5});
  ASSERT_TRUE(run(op, {a.ref(), b.ref()}, {y.mut()}).is_ok());
  EXPECT_EQ(y.values<int32_t>(), (std::vector<int32_t>{3, -3, 0, kMin, 0}));

  const Tensor ua = make<uint64_t>(DataType::kUint64, {2}, {9, 9});
  const Tensor ub = make<uint64_t>(DataType::kUint64, {2}, {0, 4});
  Tensor uy = output(DataType::kUint64, {2});
  ASSERT_TRUE(run(op, {ua.ref(), ub.ref()}, {uy.mut()}).is_ok());
  EXPECT_EQ(uy.values<uint64_t>(), (std::vector<uint64_t>{0, 2}));
}

TEST(ReferenceOps, IntegerArithmeticWraps) {
  PlanOp op = make_op(OpKind::kBinary);
  op.binary = BinaryAlg::kAdd;
  const Tensor a = make<uint8_t>(DataType::kUint8, {2}, {250, 1});
  const Tensor b = make<uint8_t>(DataType::kUint8, {1}, {10});
  Tensor y = output(DataType::kUint8, {2});
  ASSERT_TRUE(run(op, {a.ref(), b.ref()}, {y.mut()}).is_ok());
  EXPECT_EQ(y.values<uint8_t>(), (std::vector<uint8_t>{4, 11}));

  op.binary = BinaryAlg::kMul;
  const Tensor ia = make<int64_t>(DataType::kInt64, {2}, {int64_t(1) << 62, -3});
  const Tensor ib = make<int64_t>(DataType::kInt64, {2}, {4, 5});
  Tensor iy = output(DataType::kInt64, {2});
  ASSERT_TRUE(run(op, {ia.ref(), ib.ref()}, {iy.mut()}).is_ok());
  EXPECT_EQ(iy.values<int64_t>(), (std::vector<int64_t>{0, -15}));

  op.binary = BinaryAlg::kSub;
  const Tensor sa = make<int8_t>(DataType::kInt8, {1}, {-128});
  const Tensor sb = make<int8_t>(DataType::kInt8, {1}, {1});
  Tensor sy = output(DataType::kInt8, {1});
  ASSERT_TRUE(run(op, {sa.ref(), sb.ref()}, {sy.mut()}).is_ok());
  EXPECT_EQ(sy.values<int8_t>(), (std::vector<int8_t>{127}));
}

TEST(ReferenceOps, BinaryOnFp16AndRejectsBool) {
  PlanOp op = make_op(OpKind::kBinary);
  op.binary = BinaryAlg::kMul;
  const Tensor a = make<uint16_t>(DataType::kFp16, {2}, {0x3c00, 0x4000});  // 1, 2
  const Tensor b = make<uint16_t>(DataType::kFp16, {1}, {0x4200});          // 3
  Tensor y = output(DataType::kFp16, {2});
  ASSERT_TRUE(run(op, {a.ref(), b.ref()}, {y.mut()}).is_ok());
  EXPECT_EQ(y.values<uint16_t>(), (std::vector<uint16_t>{0x4200, 0x4600}));  // 3, 6

  const Tensor t = make<uint8_t>(DataType::kBool, {1}, {1});
  Tensor ty = output(DataType::kBool, {1});
  expect_invalid(run(op, {t.ref(), t.ref()}, {ty.mut()}), "unsupported dtype BOOL");
}

// ---- pooling --------------------------------------------------------------------------------

TEST(ReferenceOps, MaxPoolCeilModeWindowsCountOnlyInBoundsElements) {
  PlanOp op = make_op(OpKind::kMaxPool);
  op.kernel = {2, 2};
  op.strides = {2, 2};
  op.pads = {0, 0, 0, 0};
  op.dilations = {1, 1};
  const Tensor x = f32({1, 1, 3, 3}, {1, 2, 3, 4, 5, 6, 7, 8, 9});
  Tensor y = output(DataType::kFp32, {1, 1, 2, 2});  // ceil mode
  ASSERT_TRUE(run(op, {x.ref()}, {y.mut()}).is_ok());
  expect_floats(y.values<float>(), {5, 6, 8, 9});
}

TEST(ReferenceOps, MaxPoolIgnoresPaddingAndHonoursDilation) {
  PlanOp op = make_op(OpKind::kMaxPool);
  op.kernel = {2};
  op.pads = {1, 1};
  const Tensor x = f32({1, 1, 2}, {-3, -4});
  Tensor y = output(DataType::kFp32, {1, 1, 3});
  ASSERT_TRUE(run(op, {x.ref()}, {y.mut()}).is_ok());
  expect_floats(y.values<float>(), {-3, -3, -4});  // padding is -inf, not 0

  op.pads = {0, 0};
  op.dilations = {2};
  const Tensor xi = make<int8_t>(DataType::kInt8, {1, 1, 5}, {-5, 3, -1, 7, -9});
  Tensor yi = output(DataType::kInt8, {1, 1, 3});
  ASSERT_TRUE(run(op, {xi.ref()}, {yi.mut()}).is_ok());
  EXPECT_EQ(yi.values<int8_t>(), (std::vector<int8_t>{-1, 7, -1}));

  const Tensor xs = make<int32_t>(DataType::kInt32, {1, 1, 5}, {0, 0, 0, 0, 0});
  Tensor ys = output(DataType::kInt32, {1, 1, 3});
  expect_invalid(run(op, {xs.ref()}, {ys.mut()}), "unsupported dtype INT32");
}

TEST(ReferenceOps, AveragePoolCeilModeWithAndWithoutCountIncludePad) {
  PlanOp op = make_op(OpKind::kAveragePool);
  op.kernel = {2, 2};
  op.strides = {2, 2};
  op.pads = {1, 1, 0, 0};  // begins only; ceil mode adds a third window reaching past the end
  std::vector<float> values;
  for (int i = 1; i <= 16; ++i) values.push_back(float(i));
  const Tensor x = f32({1, 1, 4, 4}, values);
  Tensor y = output(DataType::kFp32, {1, 1, 3, 3});
  op.count_include_pad = false;
  ASSERT_TRUE(run(op, {x.ref()}, {y.mut()}).is_ok());
  expect_floats(y.values<float>(), {1, 2.5F, 4, 7, 8.5F, 10, 13, 14.5F, 16});
  op.count_include_pad = true;  // the begin pads count, the part beyond the end does not
  ASSERT_TRUE(run(op, {x.ref()}, {y.mut()}).is_ok());
  expect_floats(y.values<float>(), {0.25F, 1.25F, 2, 3.5F, 8.5F, 10, 6.5F, 14.5F, 16});

  Tensor too_big = output(DataType::kFp32, {1, 1, 4, 4});
  expect_invalid(run(op, {x.ref()}, {too_big.mut()}), "expected 2 or 3");
  op.kernel = {2};
  expect_invalid(run(op, {x.ref()}, {y.mut()}), "kernel has 1 entries, expected 2");
}

TEST(ReferenceOps, GlobalAveragePool) {
  PlanOp op = make_op(OpKind::kGlobalAveragePool);
  const Tensor x = f32({1, 2, 2, 2}, {1, 2, 3, 4, 5, 6, 7, 8});
  Tensor y = output(DataType::kFp32, {1, 2, 1, 1});
  ASSERT_TRUE(run(op, {x.ref()}, {y.mut()}).is_ok());
  expect_floats(y.values<float>(), {2.5F, 6.5F});
}

// ---- Gemm and MatMul ------------------------------------------------------------------------

TEST(ReferenceOps, GemmWithAlphaBetaBroadcastCAndTransposes) {
  PlanOp op = make_op(OpKind::kGemm);
  op.alpha = 2;
  op.beta = 0.5F;
  const Tensor a = f32({2, 3}, {1, 2, 3, 4, 5, 6});
  const Tensor b = f32({3, 2}, {1, 0, 0, 1, 1, 1});
  const Tensor c = f32({2}, {10, 20});
  Tensor y = output(DataType::kFp32, {2, 2});
  ASSERT_TRUE(run(op, {a.ref(), b.ref(), c.ref()}, {y.mut()}).is_ok());
  expect_floats(y.values<float>(), {13, 20, 25, 32});

  op.trans_a = op.trans_b = true;
  const Tensor at = f32({3, 2}, {1, 4, 2, 5, 3, 6});
  const Tensor bt = f32({2, 3}, {1, 0, 1, 0, 1, 1});
  const Tensor c_col = f32({2, 1}, {10, 20});
  ASSERT_TRUE(run(op, {at.ref(), bt.ref(), c_col.ref()}, {y.mut()}).is_ok());
  expect_floats(y.values<float>(), {13, 15, 30, 32});
}

TEST(ReferenceOps, GemmAppliesPostOpsInOrder) {
  PlanOp op = make_op(OpKind::kGemm);
  op.alpha = 1;
  PostOp clip;
  clip.kind = PostOp::Kind::kUnary;
  clip.unary = UnaryAlg::kClip;
  clip.alpha = 0;
  clip.beta = 10;
  PostOp sum;
  sum.kind = PostOp::Kind::kSum;
  op.post_ops = {clip, sum};
  const Tensor a = f32({2, 3}, {1, 2, 3, 4, 5, 6});
  const Tensor b = f32({3, 2}, {1, 0, 0, 1, 1, 1});
  const Tensor residual = f32({2, 2}, {1, 1, 1, 1});
  Tensor y = output(DataType::kFp32, {2, 2});
  ASSERT_TRUE(run(op, {a.ref(), b.ref()}, {y.mut()}, {residual.ref()}).is_ok());
  expect_floats(y.values<float>(), {5, 6, 11, 11});  // [[4, 5], [10, 11]] clipped, plus 1

  const Tensor wrong = f32({4}, {1, 1, 1, 1});
  expect_invalid(run(op, {a.ref(), b.ref()}, {y.mut()}, {wrong.ref()}), "sum operand 0");
}

TEST(ReferenceOps, MatMulPromotesRankOneOperands) {
  PlanOp op = make_op(OpKind::kMatMul);
  const Tensor v = f32({3}, {1, 2, 3});
  const Tensor w = f32({3}, {4, 5, 6});
  Tensor dot = output(DataType::kFp32, {});
  ASSERT_TRUE(run(op, {v.ref(), w.ref()}, {dot.mut()}).is_ok());
  expect_floats(dot.values<float>(), {32});

  const Tensor b = f32({2, 3, 2}, {1, 2, 3, 4, 5, 6, 1, 0, 0, 1, 1, 1});
  Tensor vb = output(DataType::kFp32, {2, 2});
  ASSERT_TRUE(run(op, {v.ref(), b.ref()}, {vb.mut()}).is_ok());
  expect_floats(vb.values<float>(), {22, 28, 4, 5});

  const Tensor m = f32({2, 3}, {1, 2, 3, 4, 5, 6});
  const Tensor ones = f32({3}, {1, 1, 1});
  Tensor mv = output(DataType::kFp32, {2});
  ASSERT_TRUE(run(op, {m.ref(), ones.ref()}, {mv.mut()}).is_ok());
  expect_floats(mv.values<float>(), {6, 15});

  Tensor wrong = output(DataType::kFp32, {1, 2});
  expect_invalid(run(op, {m.ref(), ones.ref()}, {wrong.mut()}), "expected [2]");
}

TEST(ReferenceOps, MatMulBroadcastsBatchDimensions) {
  PlanOp op = make_op(OpKind::kMatMul);
  const Tensor a = f32({2, 1, 1, 2}, {1, 2, 3, 4});
  const Tensor b = f32({3, 2, 1}, {1, 0, 0, 1, 1, 1});
  Tensor y = output(DataType::kFp32, {2, 3, 1, 1});
  ASSERT_TRUE(run(op, {a.ref(), b.ref()}, {y.mut()}).is_ok());
  expect_floats(y.values<float>(), {1, 2, 3, 3, 4, 7});

  const Tensor ia = make<int64_t>(DataType::kInt64, {2, 2}, {1, -2, 3, 4});
  const Tensor ib = make<int64_t>(DataType::kInt64, {2, 2}, {5, 6, 7, 8});
  Tensor iy = output(DataType::kInt64, {2, 2});
  ASSERT_TRUE(run(op, {ia.ref(), ib.ref()}, {iy.mut()}).is_ok());
  EXPECT_EQ(iy.values<int64_t>(), (std::vector<int64_t>{-9, -10, 43, 50}));

  const Tensor bad = f32({2, 3, 1}, {1, 2, 3, 4, 5, 6});  // K = 3 against 2
  Tensor y2 = output(DataType::kFp32, {2, 1, 1});
  expect_invalid(run(op, {a.ref(), bad.ref()}, {y2.mut()}), "do not multiply");
}

// ---- data movement --------------------------------------------------------------------------

TEST(ReferenceOps, CopyKeepsBytesInAnotherShape) {
  PlanOp op = make_op(OpKind::kCopy);
  const Tensor x = make<int16_t>(DataType::kInt16, {2, 3}, {1, 2, 3, 4, 5, 6});
  Tensor y = output(DataType::kInt16, {3, 2});
  ASSERT_TRUE(run(op, {x.ref()}, {y.mut()}).is_ok());
  EXPECT_EQ(y.values<int16_t>(), (std::vector<int16_t>{1, 2, 3, 4, 5, 6}));
  Tensor small = output(DataType::kInt16, {5});
  expect_invalid(run(op, {x.ref()}, {small.mut()}), "differ in size");
}

TEST(ReferenceOps, TransposeAnyElementSize) {
  PlanOp op = make_op(OpKind::kTranspose);
  op.perm = {1, 0};
  const Tensor x = make<int16_t>(DataType::kInt16, {2, 3}, {1, 2, 3, 4, 5, 6});
  Tensor y = output(DataType::kInt16, {3, 2});
  ASSERT_TRUE(run(op, {x.ref()}, {y.mut()}).is_ok());
  EXPECT_EQ(y.values<int16_t>(), (std::vector<int16_t>{1, 4, 2, 5, 3, 6}));

  std::vector<double> values;
  for (int i = 0; i < 24; ++i) values.push_back(i);
  const Tensor x3 = make<double>(DataType::kFp64, {2, 3, 4}, values);
  for (const Dims& perm : {Dims{2, 0, 1}, Dims{1, 0, 2}}) {
    op.perm = perm;
    const Dims in_dims{2, 3, 4};
    Dims out_dims{in_dims[size_t(perm[0])], in_dims[size_t(perm[1])], in_dims[size_t(perm[2])]};
    Tensor y3 = output(DataType::kFp64, out_dims);
    ASSERT_TRUE(run(op, {x3.ref()}, {y3.mut()}).is_ok());
    const std::vector<double> got = y3.values<double>();
    size_t at = 0;
    for (int64_t i = 0; i < out_dims[0]; ++i) {
      for (int64_t j = 0; j < out_dims[1]; ++j) {
        for (int64_t k = 0; k < out_dims[2]; ++k) {
          int64_t idx[3];
          idx[perm[0]] = i;
          idx[perm[1]] = j;
          idx[perm[2]] = k;
          EXPECT_EQ(got[at++], double(idx[0] * 12 + idx[1] * 4 + idx[2]));
        }
      }
    }
  }
  op.perm = {0, 0, 1};
  Tensor y3 = output(DataType::kFp64, {2, 3, 4});
  expect_invalid(run(op, {x3.ref()}, {y3.mut()}), "not a permutation");
}

TEST(ReferenceOps, ConcatAndSplitAlongAnAxis) {
  PlanOp concat = make_op(OpKind::kConcat);
  concat.axis = 1;
  const Tensor a = make<int32_t>(DataType::kInt32, {2, 1}, {1, 2});
  const Tensor b = make<int32_t>(DataType::kInt32, {2, 2}, {3, 4, 5, 6});
  Tensor y = output(DataType::kInt32, {2, 3});
  ASSERT_TRUE(run(concat, {a.ref(), b.ref()}, {y.mut()}).is_ok());
  EXPECT_EQ(y.values<int32_t>(), (std::vector<int32_t>{1, 3, 4, 2, 5, 6}));

  PlanOp split = make_op(OpKind::kSplit);
  split.axis = 1;
  split.sizes = {1, 2};
  Tensor s0 = output(DataType::kInt32, {2, 1});
  Tensor s1 = output(DataType::kInt32, {2, 2});
  ASSERT_TRUE(run(split, {y.ref()}, {s0.mut(), s1.mut()}).is_ok());
  EXPECT_EQ(s0.values<int32_t>(), a.values<int32_t>());
  EXPECT_EQ(s1.values<int32_t>(), b.values<int32_t>());

  Tensor short_y = output(DataType::kInt32, {2, 2});
  expect_invalid(run(concat, {a.ref(), b.ref()}, {short_y.mut()}), "add up to 3");
  split.sizes = {1, 1};
  expect_invalid(run(split, {y.ref()}, {s0.mut(), s1.mut()}), "does not have size 1");
}

TEST(ReferenceOps, SliceWithNegativeSteps) {
  PlanOp op = make_op(OpKind::kSlice);
  op.starts = {1, 4};
  op.steps = {-1, -2};
  const Tensor x = make<int32_t>(DataType::kInt32, {2, 5}, {0, 1, 2, 3, 4, 5, 6, 7, 8, 9});
  Tensor y = output(DataType::kInt32, {2, 3});
  ASSERT_TRUE(run(op, {x.ref()}, {y.mut()}).is_ok());
  EXPECT_EQ(y.values<int32_t>(), (std::vector<int32_t>{9, 7, 5, 4, 2, 0}));

  op.starts = {0, 1};
  op.steps = {1, 1};
  ASSERT_TRUE(run(op, {x.ref()}, {y.mut()}).is_ok());  // contiguous rows
  EXPECT_EQ(y.values<int32_t>(), (std::vector<int32_t>{1, 2, 3, 6, 7, 8}));

  op.starts = {0, 3};
  expect_invalid(run(op, {x.ref()}, {y.mut()}), "dimension 1");
}

TEST(ReferenceOps, PadConstantReflectEdgeAndCrop) {
  PlanOp op = make_op(OpKind::kPad);
  op.pads = {1, 0, 0, 1};
  op.pad_value = 9;
  const Tensor x = make<int32_t>(DataType::kInt32, {2, 2}, {1, 2, 3, 4});
  Tensor y = output(DataType::kInt32, {3, 3});
  ASSERT_TRUE(run(op, {x.ref()}, {y.mut()}).is_ok());
  EXPECT_EQ(y.values<int32_t>(), (std::vector<int32_t>{9, 9, 9, 1, 2, 9, 3, 4, 9}));

  op.pad_mode = PlanOp::PadMode::kReflect;
  op.pads = {0, 2, 0, 2};
  const Tensor row = make<int32_t>(DataType::kInt32, {1, 3}, {1, 2, 3});
  Tensor row_y = output(DataType::kInt32, {1, 7});
  ASSERT_TRUE(run(op, {row.ref()}, {row_y.mut()}).is_ok());
  EXPECT_EQ(row_y.values<int32_t>(), (std::vector<int32_t>{3, 2, 1, 2, 3, 2, 1}));

  op.pads = {1, 1, 1, 1};
  const Tensor sq = make<int32_t>(DataType::kInt32, {3, 3}, {1, 2, 3, 4, 5, 6, 7, 8, 9});
  Tensor sq_y = output(DataType::kInt32, {5, 5});
  ASSERT_TRUE(run(op, {sq.ref()}, {sq_y.mut()}).is_ok());
  EXPECT_EQ(sq_y.values<int32_t>(),
            (std::vector<int32_t>{5, 4, 5, 6, 5, 2, 1, 2, 3, 2, 5, 4, 5, 6, 5,  //
                                  8, 7, 8, 9, 8, 5, 4, 5, 6, 5}));

  op.pad_mode = PlanOp::PadMode::kEdge;
  op.pads = {1, 1, 0, 2};
  const Tensor e = f32({2, 2}, {1, 2, 3, 4});
  Tensor e_y = output(DataType::kFp32, {3, 5});
  ASSERT_TRUE(run(op, {e.ref()}, {e_y.mut()}).is_ok());
  expect_floats(e_y.values<float>(), {1, 1, 2, 2, 2, 1, 1, 2, 2, 2, 3, 3, 4, 4, 4});

  op.pads = {0, -2, 0, 1};  // crop two, then extend the cropped edge
  const Tensor c = f32({1, 4}, {0, 1, 2, 3});
  Tensor c_y = output(DataType::kFp32, {1, 3});
  ASSERT_TRUE(run(op, {c.ref()}, {c_y.mut()}).is_ok());
  expect_floats(c_y.values<float>(), {2, 3, 3});

  op.pad_mode = PlanOp::PadMode::kConstant;
  op.pads = {0, -1, 0, 1};
  op.pad_value = 0;
  const Tensor c2 = f32({2, 4}, {0, 1, 2, 3, 4, 5, 6, 7});
  Tensor c2_y = output(DataType::kFp32, {2, 4});
  ASSERT_TRUE(run(op, {c2.ref()}, {c2_y.mut()}).is_ok());
  expect_floats(c2_y.values<float>(), {1, 2, 3, 0, 5, 6, 7, 0});

  op.pads = {0, 1};  // pad_value converted to the dtype: 300 saturates in int8
  op.pad_value = 300;
  const Tensor i8 = make<int8_t>(DataType::kInt8, {1}, {-1});
  Tensor i8_y = output(DataType::kInt8, {2});
  ASSERT_TRUE(run(op, {i8.ref()}, {i8_y.mut()}).is_ok());
  EXPECT_EQ(i8_y.values<int8_t>(), (std::vector<int8_t>{-1, 127}));

  Tensor wrong = output(DataType::kInt8, {3});
  expect_invalid(run(op, {i8.ref()}, {wrong.mut()}), "expected [2]");
}

TEST(ReferenceOps, GatherNegativeIndexAndOutOfRange) {
  PlanOp op = make_op(OpKind::kGather);
  const Tensor x = make<int64_t>(DataType::kInt64, {3, 2}, {1, 2, 3, 4, 5, 6});
  const Tensor idx = make<int32_t>(DataType::kInt32, {2}, {-1, 0});
  Tensor y = output(DataType::kInt64, {2, 2});
  ASSERT_TRUE(run(op, {x.ref(), idx.ref()}, {y.mut()}).is_ok());
  EXPECT_EQ(y.values<int64_t>(), (std::vector<int64_t>{5, 6, 1, 2}));

  op.axis = 1;
  const Tensor idx2 = make<int64_t>(DataType::kInt64, {1, 1}, {1});
  Tensor y2 = output(DataType::kInt64, {3, 1, 1});
  ASSERT_TRUE(run(op, {x.ref(), idx2.ref()}, {y2.mut()}).is_ok());
  EXPECT_EQ(y2.values<int64_t>(), (std::vector<int64_t>{2, 4, 6}));

  const Tensor scalar = make<int64_t>(DataType::kInt64, {}, {-2});
  Tensor y3 = output(DataType::kInt64, {3});
  ASSERT_TRUE(run(op, {x.ref(), scalar.ref()}, {y3.mut()}).is_ok());
  EXPECT_EQ(y3.values<int64_t>(), (std::vector<int64_t>{1, 3, 5}));

  op.axis = 0;
  const Tensor bad = make<int32_t>(DataType::kInt32, {2}, {0, 3});
  expect_invalid(run(op, {x.ref(), bad.ref()}, {y.mut()}), "index 3 is out of range");
  const Tensor bad_neg = make<int32_t>(DataType::kInt32, {2}, {-4, 0});
  expect_invalid(run(op, {x.ref(), bad_neg.ref()}, {y.mut()}), "index -4 is out of range");
}

TEST(ReferenceOps, ReduceMeanFloatsAndIntegers) {
  PlanOp op = make_op(OpKind::kReduceMean);
  op.axes = {1};
  op.keepdims = true;
  const Tensor x = f32({2, 3}, {1, 2, 3, 4, 5, 6});
  Tensor y = output(DataType::kFp32, {2, 1});
  ASSERT_TRUE(run(op, {x.ref()}, {y.mut()}).is_ok());
  expect_floats(y.values<float>(), {2, 5});

  op.axes = {0};
  op.keepdims = false;
  Tensor y0 = output(DataType::kFp32, {3});
  ASSERT_TRUE(run(op, {x.ref()}, {y0.mut()}).is_ok());
  expect_floats(y0.values<float>(), {2.5F, 3.5F, 4.5F});

  op.axes = {0, 1};
  Tensor all = output(DataType::kFp32, {});
  ASSERT_TRUE(run(op, {x.ref()}, {all.mut()}).is_ok());
  expect_floats(all.values<float>(), {3.5F});

  op.axes = {1};
  const Tensor xi = make<int32_t>(DataType::kInt32, {2, 2}, {1, 2, -3, -6});
  Tensor yi = output(DataType::kInt32, {2});
  ASSERT_TRUE(run(op, {xi.ref()}, {yi.mut()}).is_ok());
  EXPECT_EQ(yi.values<int32_t>(), (std::vector<int32_t>{1, -4}));  // truncated toward zero

  op.axes = {1, 0};
  expect_invalid(run(op, {xi.ref()}, {yi.mut()}), "sorted");
}

TEST(ReferenceOps, CastFp32ToFp16RoundsToNearestEven) {
  PlanOp op = make_op(OpKind::kCast);
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const float inf = std::numeric_limits<float>::infinity();
  const Tensor x = f32({11}, {1.0F, 0.1F, 65504.0F, 65520.0F, -0.0F, 1e-8F, nan, -inf, 2049.0F,
                              2051.0F, 5.9604645e-08F});
  Tensor y = output(DataType::kFp16, {11});
  ASSERT_TRUE(run(op, {x.ref()}, {y.mut()}).is_ok());
  EXPECT_EQ(y.values<uint16_t>(),
            (std::vector<uint16_t>{0x3c00, 0x2e66, 0x7bff, 0x7c00, 0x8000, 0x0000, 0x7e00, 0xfc00,
                                   0x6800, 0x6802, 0x0001}));

  // And back: every fp16 value is exact in fp32.
  Tensor back = output(DataType::kFp32, {11});
  ASSERT_TRUE(run(op, {y.ref()}, {back.mut()}).is_ok());
  const std::vector<float> b = back.values<float>();
  EXPECT_EQ(b[0], 1.0F);
  EXPECT_EQ(b[1], 0.0999755859375F);
  EXPECT_EQ(b[2], 65504.0F);
  EXPECT_EQ(b[3], inf);
  EXPECT_TRUE(std::signbit(b[4]));
  EXPECT_TRUE(std::isnan(b[6]));
  EXPECT_EQ(b[7], -inf);
  EXPECT_EQ(b[8], 2048.0F);
  EXPECT_EQ(b[9], 2052.0F);
  EXPECT_EQ(b[10], std::ldexp(1.0F, -24));
}

TEST(ReferenceOps, CastFp64ToFp16RoundsOnce) {
  PlanOp op = make_op(OpKind::kCast);
  // 1 + 2^-11 + 2^-40 is above the halfway point between fp16 1 and 1 + 2^-10; rounding through
  // fp32 first would land exactly on the halfway point and round to even (1).
  const Tensor x =
      make<double>(DataType::kFp64, {1}, {1.0 + std::ldexp(1.0, -11) + std::ldexp(1.0, -40)});
  Tensor y = output(DataType::kFp16, {1});
  ASSERT_TRUE(run(op, {x.ref()}, {y.mut()}).is_ok());
  EXPECT_EQ(y.values<uint16_t>(), (std::vector<uint16_t>{0x3c01}));
}

TEST(ReferenceOps, CastFloatToIntegerSaturatesAndIntegerToIntegerWraps) {
  PlanOp op = make_op(OpKind::kCast);
  const Tensor x =
      f32({6}, {300, -300, 1.9F, -1.9F, std::numeric_limits<float>::quiet_NaN(), -0.5F});
  Tensor y = output(DataType::kInt8, {6});
  ASSERT_TRUE(run(op, {x.ref()}, {y.mut()}).is_ok());
  EXPECT_EQ(y.values<int8_t>(), (std::vector<int8_t>{127, -128, 1, -1, 0, 0}));

  Tensor u = output(DataType::kUint32, {6});
  ASSERT_TRUE(run(op, {x.ref()}, {u.mut()}).is_ok());
  EXPECT_EQ(u.values<uint32_t>(), (std::vector<uint32_t>{300, 0, 1, 0, 0, 0}));

  const Tensor i = make<int32_t>(DataType::kInt32, {3}, {300, -1, 255});
  Tensor iu = output(DataType::kUint8, {3});
  ASSERT_TRUE(run(op, {i.ref()}, {iu.mut()}).is_ok());
  EXPECT_EQ(iu.values<uint8_t>(), (std::vector<uint8_t>{44, 255, 255}));

  const Tensor big = make<uint64_t>(DataType::kUint64, {1}, {~uint64_t(0)});
  Tensor big_f = output(DataType::kFp32, {1});
  ASSERT_TRUE(run(op, {big.ref()}, {big_f.mut()}).is_ok());
  EXPECT_EQ(big_f.values<float>()[0], 18446744073709551616.0F);
}

TEST(ReferenceOps, CastToAndFromBool) {
  PlanOp op = make_op(OpKind::kCast);
  const Tensor x = f32({4}, {0, -0.0F, 2.5F, std::numeric_limits<float>::quiet_NaN()});
  Tensor y = output(DataType::kBool, {4});
  ASSERT_TRUE(run(op, {x.ref()}, {y.mut()}).is_ok());
  EXPECT_EQ(y.values<uint8_t>(), (std::vector<uint8_t>{0, 0, 1, 1}));

  const Tensor bools = make<uint8_t>(DataType::kBool, {3}, {0, 1, 7});
  Tensor f = output(DataType::kFp64, {3});
  ASSERT_TRUE(run(op, {bools.ref()}, {f.mut()}).is_ok());
  EXPECT_EQ(f.values<double>(), (std::vector<double>{0, 1, 1}));
  Tensor h = output(DataType::kFp16, {3});
  ASSERT_TRUE(run(op, {bools.ref()}, {h.mut()}).is_ok());
  EXPECT_EQ(h.values<uint16_t>(), (std::vector<uint16_t>{0, 0x3c00, 0x3c00}));

  Tensor wrong = output(DataType::kFp64, {4});
  expect_invalid(run(op, {bools.ref()}, {wrong.mut()}), "expected [3]");
}

TEST(ReferenceOps, FillWritesOnesOfTheOutputDtype) {
  PlanOp op = make_op(OpKind::kFill);
  Tensor b = output(DataType::kBool, {2});
  Tensor h = output(DataType::kFp16, {2});
  Tensor i = output(DataType::kInt64, {2});
  ASSERT_TRUE(run(op, {}, {b.mut()}).is_ok());
  ASSERT_TRUE(run(op, {}, {h.mut()}).is_ok());
  ASSERT_TRUE(run(op, {}, {i.mut()}).is_ok());
  EXPECT_EQ(b.values<uint8_t>(), (std::vector<uint8_t>{1, 1}));
  EXPECT_EQ(h.values<uint16_t>(), (std::vector<uint16_t>{0x3c00, 0x3c00}));
  EXPECT_EQ(i.values<int64_t>(), (std::vector<int64_t>{1, 1}));
}

// ---- randomised cross-checks against direct per-element formulas ---------------------------

Dims unravel(int64_t flat, const Dims& dims) {
  Dims index(dims.size());
  for (size_t i = dims.size(); i-- > 0;) {
    index[i] = flat % dims[i];
    flat /= dims[i];
  }
  return index;
}

int64_t ravel(const Dims& index, const Dims& dims) {
  int64_t flat = 0;
  for (size_t i = 0; i < dims.size(); ++i) flat = flat * dims[i] + index[i];
  return flat;
}

int64_t count_of(const Dims& dims) {
  int64_t n = 1;
  for (int64_t d : dims) n *= d;
  return n;
}

// Small integers: every sum of products below is exact in fp32, so results compare exactly.
std::vector<float> random_floats(std::mt19937& rng, int64_t n) {
  std::uniform_int_distribution<int> value(-3, 3);
  std::vector<float> v(static_cast<size_t>(n));
  for (float& f : v) f = float(value(rng));
  return v;
}

TEST(ReferenceOps, ConvMatchesDirectFormulaOnRandomShapes) {
  std::mt19937 rng(7);
  auto pick = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
  for (int iteration = 0; iteration < 60; ++iteration) {
    const size_t spatial = size_t(pick(1, 3));
    const int64_t n = pick(1, 2), group = pick(1, 2), cg = pick(1, 2), mg = pick(1, 3);
    PlanOp op = make_op(OpKind::kConv);
    op.group = group;
    Dims x_dims{n, group * cg}, w_dims{group * mg, cg}, y_dims{n, group * mg};
    op.pads.assign(2 * spatial, 0);
    for (size_t i = 0; i < spatial; ++i) {
      op.kernel.push_back(pick(1, 3));
      op.strides.push_back(pick(1, 2));
      op.dilations.push_back(pick(1, 2));
      op.pads[i] = pick(0, 2);
      op.pads[spatial + i] = pick(0, 2);
      const int64_t extent = (op.kernel[i] - 1) * op.dilations[i] + 1;
      const int64_t in =
          std::max<int64_t>(1, extent - op.pads[i] - op.pads[spatial + i]) + pick(0, 4);
      x_dims.push_back(in);
      w_dims.push_back(op.kernel[i]);
      y_dims.push_back((in + op.pads[i] + op.pads[spatial + i] - extent) / op.strides[i] + 1);
    }
    const Tensor x = f32(x_dims, random_floats(rng, count_of(x_dims)));
    const Tensor w = f32(w_dims, random_floats(rng, count_of(w_dims)));
    const Tensor b = f32({group * mg}, random_floats(rng, group * mg));
    Tensor y = output(DataType::kFp32, y_dims);
    ASSERT_TRUE(run(op, {x.ref(), w.ref(), b.ref()}, {y.mut()}).is_ok()) << iteration;
    const std::vector<float> got = y.values<float>();
    const std::vector<float> xv = x.values<float>(), wv = w.values<float>(), bv = b.values<float>();
    for (int64_t flat = 0; flat < count_of(y_dims); ++flat) {
      const Dims yi = unravel(flat, y_dims);
      const int64_t oc = yi[1], g = oc / mg;
      double sum = bv[size_t(oc)];
      Dims w_sub(w_dims.begin() + 2, w_dims.end());
      for (int64_t ic = 0; ic < cg; ++ic) {
        for (int64_t k = 0; k < count_of(w_sub); ++k) {
          const Dims ki = unravel(k, w_sub);
          Dims xi{yi[0], g * cg + ic};
          bool inside = true;
          for (size_t s = 0; s < spatial; ++s) {
            const int64_t pos = yi[2 + s] * op.strides[s] + ki[s] * op.dilations[s] - op.pads[s];
            inside = inside && pos >= 0 && pos < x_dims[2 + s];
            xi.push_back(pos);
          }
          if (!inside) continue;
          Dims wi{oc, ic};
          wi.insert(wi.end(), ki.begin(), ki.end());
          sum += double(xv[size_t(ravel(xi, x_dims))]) * wv[size_t(ravel(wi, w_dims))];
        }
      }
      ASSERT_EQ(got[size_t(flat)], float(sum)) << "iteration " << iteration << " element " << flat;
    }
  }
}

TEST(ReferenceOps, PoolsMatchDirectFormulaOnRandomShapes) {
  std::mt19937 rng(11);
  auto pick = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
  for (int iteration = 0; iteration < 80; ++iteration) {
    const size_t spatial = size_t(pick(1, 3));
    const bool is_max = pick(0, 1) == 1;
    PlanOp op = make_op(is_max ? OpKind::kMaxPool : OpKind::kAveragePool);
    op.count_include_pad = pick(0, 1) == 1;
    Dims x_dims{pick(1, 2), pick(1, 2)}, y_dims = x_dims;
    op.pads.assign(2 * spatial, 0);
    for (size_t i = 0; i < spatial; ++i) {
      op.kernel.push_back(pick(1, 3));
      op.strides.push_back(pick(1, 3));
      op.dilations.push_back(is_max ? pick(1, 2) : 1);
      op.pads[i] = pick(0, op.kernel[i] - 1);
      op.pads[spatial + i] = pick(0, op.kernel[i] - 1);
      const int64_t extent = (op.kernel[i] - 1) * op.dilations[i] + 1;
      const int64_t in = std::max<int64_t>(1, extent) + pick(0, 4);
      const int64_t span = in + op.pads[i] + op.pads[spatial + i] - extent;
      int64_t out = (pick(0, 1) == 1 ? (span + op.strides[i] - 1) : span) / op.strides[i] + 1;
      if ((out - 1) * op.strides[i] >= in + op.pads[i]) --out;  // onnxruntime's ceil-mode rule
      x_dims.push_back(in);
      y_dims.push_back(out);
    }
    const Tensor x = f32(x_dims, random_floats(rng, count_of(x_dims)));
    Tensor y = output(DataType::kFp32, y_dims);
    ASSERT_TRUE(run(op, {x.ref()}, {y.mut()}).is_ok()) << iteration;
    const std::vector<float> got = y.values<float>(), xv = x.values<float>();
    const Dims k_dims = op.kernel;
    for (int64_t flat = 0; flat < count_of(y_dims); ++flat) {
      const Dims yi = unravel(flat, y_dims);
      double best = -std::numeric_limits<double>::infinity(), sum = 0;
      int64_t in_bounds = 0, in_padded = 0;
      for (int64_t k = 0; k < count_of(k_dims); ++k) {
        const Dims ki = unravel(k, k_dims);
        Dims xi{yi[0], yi[1]};
        bool inside = true, padded = true;
        for (size_t s = 0; s < spatial; ++s) {
          const int64_t pos = yi[2 + s] * op.strides[s] + ki[s] * op.dilations[s] - op.pads[s];
          inside = inside && pos >= 0 && pos < x_dims[2 + s];
          padded = padded && pos >= -op.pads[s] && pos < x_dims[2 + s] + op.pads[spatial + s];
          xi.push_back(pos);
        }
        in_padded += padded ? 1 : 0;
        if (!inside) continue;
        ++in_bounds;
        const double v = xv[size_t(ravel(xi, x_dims))];
        best = std::max(best, v);
        sum += v;
      }
      const float expected =
          is_max ? float(best) : float(sum / double(op.count_include_pad ? in_padded : in_bounds));
      ASSERT_FLOAT_EQ(got[size_t(flat)], expected) << "iteration " << iteration << " " << flat;
    }
  }
}

TEST(ReferenceOps, BinaryMatchesNaiveBroadcastOnRandomShapes) {
  std::mt19937 rng(13);
  auto pick = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
  for (int iteration = 0; iteration < 100; ++iteration) {
    const size_t rank = size_t(pick(0, 4));
    Dims y_dims, a_dims, b_dims;
    for (size_t i = 0; i < rank; ++i) y_dims.push_back(pick(1, 3));
    const size_t a_rank = size_t(pick(0, int(rank))), b_rank = size_t(pick(0, int(rank)));
    for (size_t i = rank - a_rank; i < rank; ++i) a_dims.push_back(pick(0, 1) ? y_dims[i] : 1);
    for (size_t i = rank - b_rank; i < rank; ++i) b_dims.push_back(pick(0, 1) ? y_dims[i] : 1);
    // The output is the broadcast of the two: a dimension neither operand has becomes 1.
    for (size_t i = 0; i < rank; ++i) {
      const int64_t da = i < rank - a_rank ? 1 : a_dims[i - (rank - a_rank)];
      const int64_t db = i < rank - b_rank ? 1 : b_dims[i - (rank - b_rank)];
      y_dims[i] = std::max(da, db);
    }
    // ... and has the larger operand's rank.
    y_dims.erase(y_dims.begin(), y_dims.begin() + int64_t(rank - std::max(a_rank, b_rank)));
    std::vector<int32_t> av, bv;
    for (int64_t i = 0; i < count_of(a_dims); ++i) av.push_back(pick(-100, 100));
    for (int64_t i = 0; i < count_of(b_dims); ++i) bv.push_back(pick(-100, 100));
    const Tensor a = make(DataType::kInt32, a_dims, av), b = make(DataType::kInt32, b_dims, bv);
    PlanOp op = make_op(OpKind::kBinary);
    op.binary = BinaryAlg::kSub;
    Tensor y = output(DataType::kInt32, y_dims);
    const Status status = run(op, {a.ref(), b.ref()}, {y.mut()});
    ASSERT_TRUE(status.is_ok()) << iteration << ": " << status.to_string();
    const std::vector<int32_t> got = y.values<int32_t>();
    for (int64_t flat = 0; flat < count_of(y_dims); ++flat) {
      const Dims yi = unravel(flat, y_dims);
      auto operand_index = [&](const Dims& dims) {
        Dims index;
        for (size_t i = 0; i < dims.size(); ++i) {
          index.push_back(dims[i] == 1 ? 0 : yi[yi.size() - dims.size() + i]);
        }
        return size_t(ravel(index, dims));
      };
      ASSERT_EQ(got[size_t(flat)], av[operand_index(a_dims)] - bv[operand_index(b_dims)])
          << "iteration " << iteration << " element " << flat;
    }
  }
}

TEST(ReferenceOps, PadMatchesNaiveOnRandomShapes) {
  std::mt19937 rng(17);
  auto pick = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
  for (int iteration = 0; iteration < 150; ++iteration) {
    const size_t rank = size_t(pick(1, 4));
    PlanOp op = make_op(OpKind::kPad);
    op.pad_mode = PlanOp::PadMode(pick(0, 2));
    op.pad_value = -1;
    Dims x_dims, y_dims, kept_begin, kept;
    op.pads.assign(2 * rank, 0);
    for (size_t i = 0; i < rank; ++i) {
      const int64_t in = pick(1, 4);
      op.pads[i] = pick(-1, 3);
      op.pads[rank + i] = pick(-1, 3);
      if (in + std::min<int64_t>(0, op.pads[i]) + std::min<int64_t>(0, op.pads[rank + i]) < 1) {
        op.pads[i] = std::max<int64_t>(0, op.pads[i]);  // keep at least one element
        op.pads[rank + i] = std::max<int64_t>(0, op.pads[rank + i]);
      }
      x_dims.push_back(in);
      y_dims.push_back(in + op.pads[i] + op.pads[rank + i]);
      kept_begin.push_back(std::max<int64_t>(0, -op.pads[i]));
      kept.push_back(in - kept_begin.back() - std::max<int64_t>(0, -op.pads[rank + i]));
    }
    std::vector<int16_t> xv;
    for (int64_t i = 0; i < count_of(x_dims); ++i) xv.push_back(int16_t(i));
    const Tensor x = make(DataType::kInt16, x_dims, xv);
    Tensor y = output(DataType::kInt16, y_dims);
    ASSERT_TRUE(run(op, {x.ref()}, {y.mut()}).is_ok()) << iteration;
    const std::vector<int16_t> got = y.values<int16_t>();
    for (int64_t flat = 0; flat < count_of(y_dims); ++flat) {
      const Dims yi = unravel(flat, y_dims);
      Dims xi;
      bool in_pad = false;
      for (size_t i = 0; i < rank; ++i) {
        // r: the position relative to the kept part of dimension i.
        const int64_t r = yi[i] - std::max<int64_t>(0, op.pads[i]);
        const int64_t len = kept[i];
        int64_t m = r;
        if (r < 0 || r >= len) {
          in_pad = true;
          if (op.pad_mode == PlanOp::PadMode::kEdge) {
            m = std::clamp<int64_t>(r, 0, len - 1);
          } else if (op.pad_mode == PlanOp::PadMode::kReflect) {
            m = r;  // reflect repeatedly, like numpy
            while (m < 0 || m >= len) {
              if (len == 1) {
                m = 0;
              } else if (m < 0) {
                m = -m;
              } else {
                m = 2 * (len - 1) - m;
              }
            }
          }
        }
        xi.push_back(kept_begin[i] + m);
      }
      const int16_t expected = in_pad && op.pad_mode == PlanOp::PadMode::kConstant
                                   ? int16_t(-1)
                                   : xv[size_t(ravel(xi, x_dims))];
      ASSERT_EQ(got[size_t(flat)], expected) << "iteration " << iteration << " element " << flat;
    }
  }
}

TEST(ReferenceOps, TransposeAndSliceMatchNaiveOnRandomShapes) {
  std::mt19937 rng(19);
  auto pick = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
  for (int iteration = 0; iteration < 100; ++iteration) {
    const size_t rank = size_t(pick(1, 5));
    Dims x_dims;
    for (size_t i = 0; i < rank; ++i) x_dims.push_back(pick(1, 4));
    std::vector<uint8_t> xv;
    for (int64_t i = 0; i < count_of(x_dims); ++i) xv.push_back(uint8_t(i * 7));
    const Tensor x = make(DataType::kUint8, x_dims, xv);

    PlanOp transpose = make_op(OpKind::kTranspose);
    transpose.perm.resize(rank);
    for (size_t i = 0; i < rank; ++i) transpose.perm[i] = int64_t(i);
    std::shuffle(transpose.perm.begin(), transpose.perm.end(), rng);
    Dims t_dims;
    for (int64_t p : transpose.perm) t_dims.push_back(x_dims[size_t(p)]);
    Tensor t = output(DataType::kUint8, t_dims);
    ASSERT_TRUE(run(transpose, {x.ref()}, {t.mut()}).is_ok());
    const std::vector<uint8_t> t_got = t.values<uint8_t>();
    for (int64_t flat = 0; flat < count_of(t_dims); ++flat) {
      const Dims ti = unravel(flat, t_dims);
      Dims xi(rank);
      for (size_t i = 0; i < rank; ++i) xi[size_t(transpose.perm[i])] = ti[i];
      ASSERT_EQ(t_got[size_t(flat)], xv[size_t(ravel(xi, x_dims))]) << iteration;
    }

    PlanOp slice = make_op(OpKind::kSlice);
    Dims s_dims;
    for (size_t i = 0; i < rank; ++i) {
      const int64_t start = pick(0, int(x_dims[i]) - 1);
      int64_t step = pick(1, 2) * (pick(0, 1) ? 1 : -1);
      const int64_t room = step > 0 ? (x_dims[i] - 1 - start) / step : start / -step;
      slice.starts.push_back(start);
      slice.steps.push_back(step);
      s_dims.push_back(pick(1, int(room) + 1));
    }
    Tensor s = output(DataType::kUint8, s_dims);
    ASSERT_TRUE(run(slice, {x.ref()}, {s.mut()}).is_ok());
    const std::vector<uint8_t> s_got = s.values<uint8_t>();
    for (int64_t flat = 0; flat < count_of(s_dims); ++flat) {
      const Dims si = unravel(flat, s_dims);
      Dims xi(rank);
      for (size_t i = 0; i < rank; ++i) xi[i] = slice.starts[i] + si[i] * slice.steps[i];
      ASSERT_EQ(s_got[size_t(flat)], xv[size_t(ravel(xi, x_dims))]) << iteration;
    }
  }
}

// ---- errors ---------------------------------------------------------------------------------

TEST(ReferenceOps, WrongCountsAndMissingDataAreInvalidArguments) {
  const Tensor x = f32({2}, {1, 2});
  Tensor y = output(DataType::kFp32, {2});
  PlanOp unary = make_op(OpKind::kUnary);
  expect_invalid(run(unary, {x.ref(), x.ref()}, {y.mut()}), "needs 1 inputs, got 2");
  expect_invalid(run(unary, {x.ref()}, {}), "needs 1 outputs, got 0");
  const TensorRef missing{DataType::kFp32, x.dims, nullptr};
  expect_invalid(run(unary, {missing}, {y.mut()}), "input 0 has no data");

  PlanOp binary = make_op(OpKind::kBinary);
  const Tensor i = make<int32_t>(DataType::kInt32, {2}, {1, 2});
  expect_invalid(run(binary, {x.ref(), i.ref()}, {y.mut()}), "is INT32, expected FP32");

  PostOp relu;
  unary.post_ops = {relu};
  expect_invalid(run(unary, {x.ref()}, {y.mut()}), "only Conv and Gemm");

  PlanOp slice = make_op(OpKind::kSlice);
  slice.starts = {0};
  expect_invalid(run(slice, {x.ref()}, {y.mut()}), "needs starts, steps");
}

}  // namespace
}  // namespace sliceserve::backends
