// The GPU executors' shared host-side planning (backends/src/device_program.h): which step each op
// becomes, where each value's bytes are, and the weight table shared by a model's plans.

#include "device_program.h"

#include <gtest/gtest.h>

#include <cstring>
#include <deque>
#include <string>
#include <vector>

namespace sliceserve::backends {
namespace {

// Builds plans by hand: values and ops in order.
class PlanBuilder {
 public:
  explicit PlanBuilder(int64_t batch = 1) { plan_.batch = batch; }

  int value(const std::string& name, std::vector<int64_t> dims, DataType dtype = DataType::kFp32) {
    PlanValue v;
    v.name = name;
    v.dtype = dtype;
    v.dims = std::move(dims);
    plan_.values.push_back(std::move(v));
    return static_cast<int>(plan_.values.size()) - 1;
  }
  int constant(const std::string& name, std::vector<int64_t> dims, std::vector<float> data) {
    const int v = value(name, std::move(dims));
    storage_.push_back(std::move(data));
    plan_.values[static_cast<size_t>(v)].is_constant = true;
    plan_.values[static_cast<size_t>(v)].data = std::as_bytes(std::span(storage_.back()));
    return v;
  }
  PlanOp& op(OpKind kind, std::vector<int> inputs, std::vector<int> outputs,
             const std::string& label) {
    PlanOp o;
    o.kind = kind;
    o.inputs = std::move(inputs);
    o.outputs = std::move(outputs);
    o.label = label;
    plan_.ops.push_back(std::move(o));
    return plan_.ops.back();
  }
  void io(std::vector<int> inputs, std::vector<int> outputs) {
    plan_.inputs = std::move(inputs);
    plan_.outputs = std::move(outputs);
  }
  const Plan& plan() const { return plan_; }

 private:
  Plan plan_;
  std::deque<std::vector<float>> storage_;  // constant bytes, stable addresses
};

PlanOp& conv(PlanBuilder& b, int x, int w, int bias, int y, const std::string& label) {
  std::vector<int> inputs = {x, w};
  if (bias >= 0) inputs.push_back(bias);
  PlanOp& op = b.op(OpKind::kConv, inputs, {y}, label);
  op.kernel = {3, 3};
  op.strides = {1, 1};
  op.dilations = {1, 1};
  op.pads = {1, 1, 1, 1};
  return op;
}

PostOp relu() { return {.kind = PostOp::Kind::kUnary, .unary = UnaryAlg::kRelu}; }
PostOp sum(int value) { return {.kind = PostOp::Kind::kSum, .value = value}; }

Result<std::vector<DeviceProgram>> plan_one(const Plan& plan, DeviceWeightTable& weights) {
  return plan_device_programs(std::span<const Plan>(&plan, 1), weights, "cuda");
}

TEST(DeviceProgramTest, ConvReluAndConvAddReluAreOneCudnnCallWithAZeroBiasWhenAbsent) {
  PlanBuilder b;
  const int x = b.value("x", {1, 4, 8, 8});
  const int w1 = b.constant("w1", {4, 4, 3, 3}, std::vector<float>(144, 0.5F));
  const int w2 = b.constant("w2", {4, 4, 3, 3}, std::vector<float>(144, 0.25F));
  const int bias2 = b.constant("b2", {4}, {1, 2, 3, 4});
  const int y1 = b.value("y1", {1, 4, 8, 8});
  const int y2 = b.value("y2", {1, 4, 8, 8});
  conv(b, x, w1, -1, y1, "conv1").post_ops = {relu()};
  conv(b, y1, w2, bias2, y2, "conv2").post_ops = {sum(x), relu()};
  b.io({x}, {y2});
  DeviceWeightTable weights;
  auto programs = plan_one(b.plan(), weights);
  ASSERT_TRUE(programs.is_ok()) << programs.status().message();
  const DeviceProgram& p = programs->front();
  ASSERT_EQ(p.steps.size(), 2u);
  EXPECT_EQ(p.steps[0].kind, DeviceStep::Kind::kConvFused);
  EXPECT_EQ(p.steps[0].z, -1);
  const DeviceWeightEntry& zeros = weights.entries[p.steps[0].bias];
  EXPECT_EQ(zeros.name, "conv1/zero bias");
  ASSERT_EQ(zeros.bytes, 4 * sizeof(float));
  EXPECT_EQ(zeros.derived, std::vector<std::byte>(16, std::byte{0}));
  EXPECT_EQ(p.steps[1].kind, DeviceStep::Kind::kConvFused);
  EXPECT_EQ(p.steps[1].z, x);
  EXPECT_EQ(weights.entries[p.steps[1].bias].name, "b2");
}

TEST(DeviceProgramTest, OtherPostOpsRunAsTheEpilogueAfterAPlainConvolution) {
  PlanBuilder b;
  const int x = b.value("x", {1, 4, 8, 8});
  const int w = b.constant("w", {4, 4, 3, 3}, std::vector<float>(144, 1.0F));
  const int bias = b.constant("b", {4}, {0, 0, 0, 0});
  const int y = b.value("y", {1, 4, 8, 8});
  const int z = b.value("z", {1, 4, 8, 8});
  conv(b, x, w, bias, y, "hswish").post_ops = {
      {.kind = PostOp::Kind::kUnary, .unary = UnaryAlg::kHardSwish}};
  conv(b, y, w, -1, z, "plain");
  b.io({x}, {z});
  DeviceWeightTable weights;
  auto programs = plan_one(b.plan(), weights);
  ASSERT_TRUE(programs.is_ok()) << programs.status().message();
  const DeviceProgram& p = programs->front();
  EXPECT_EQ(p.steps[0].kind, DeviceStep::Kind::kConv);
  EXPECT_TRUE(p.steps[0].epilogue);
  EXPECT_EQ(p.steps[1].kind, DeviceStep::Kind::kConv);
  EXPECT_FALSE(p.steps[1].epilogue);  // no bias, no post-ops: cuDNN's result is the answer
  EXPECT_EQ(p.steps[1].bias, SIZE_MAX);
}

TEST(DeviceProgramTest, AsymmetricPaddingIsRefusedNamingTheOp) {
  PlanBuilder b;
  const int x = b.value("x", {1, 4, 8, 8});
  const int w = b.constant("w", {4, 4, 3, 3}, std::vector<float>(144, 1.0F));
  const int y = b.value("y", {1, 4, 8, 8});
  conv(b, x, w, -1, y, "node 'same_upper' (Conv)").pads = {0, 0, 1, 1};
  b.io({x}, {y});
  DeviceWeightTable weights;
  auto programs = plan_one(b.plan(), weights);
  ASSERT_FALSE(programs.is_ok());
  EXPECT_EQ(
      programs.status().message(),
      "node 'same_upper' (Conv): not supported on cuda: asymmetric padding (the convolutions pad "
      "both sides alike)");
}

TEST(DeviceProgramTest, AReshapeIsAViewOfItsInputsBytesAndNoStep) {
  PlanBuilder b;
  const int x = b.value("x", {2, 3, 4});
  const int flat = b.value("flat", {2, 12});
  const int y = b.value("y", {2, 12});
  b.op(OpKind::kCopy, {x}, {flat}, "reshape");
  b.op(OpKind::kUnary, {flat}, {y}, "relu");
  b.io({x}, {y});
  DeviceWeightTable weights;
  auto programs = plan_one(b.plan(), weights);
  ASSERT_TRUE(programs.is_ok()) << programs.status().message();
  const DeviceProgram& p = programs->front();
  ASSERT_EQ(p.steps.size(), 1u);
  EXPECT_EQ(p.steps[0].op, 1u);
  EXPECT_EQ(p.values[static_cast<size_t>(flat)].kind, ValueLocation::Kind::kArena);
  EXPECT_EQ(p.values[static_cast<size_t>(flat)].offset, p.values[static_cast<size_t>(x)].offset);
  EXPECT_NE(p.values[static_cast<size_t>(y)].offset, p.values[static_cast<size_t>(x)].offset);
}

TEST(DeviceProgramTest, ValuesShareArenaBytesWhenTheirLifetimesDoNotOverlap) {
  // x -> a -> b -> c -> y. An input lives from before the first step to its last reader, an
  // output from its producer to after the last step: every value overlaps only its neighbours.
  PlanBuilder b;
  const std::vector<int64_t> dims = {1, 1024};
  const int x = b.value("x", dims);
  const int a = b.value("a", dims);
  const int bb = b.value("b", dims);
  const int c = b.value("c", dims);
  const int y = b.value("y", dims);
  b.op(OpKind::kUnary, {x}, {a}, "1");
  b.op(OpKind::kUnary, {a}, {bb}, "2");
  b.op(OpKind::kUnary, {bb}, {c}, "3");
  b.op(OpKind::kUnary, {c}, {y}, "4");
  b.io({x}, {y});
  DeviceWeightTable weights;
  auto programs = plan_one(b.plan(), weights);
  ASSERT_TRUE(programs.is_ok()) << programs.status().message();
  const DeviceProgram& p = programs->front();
  auto offset = [&](int v) { return p.values[static_cast<size_t>(v)].offset; };
  const std::vector<int> chain = {x, a, bb, c, y};
  for (size_t i = 0; i + 1 < chain.size(); ++i) {
    EXPECT_NE(offset(chain[i]), offset(chain[i + 1])) << i;
  }
  EXPECT_EQ(p.arena_bytes, 2 * 4096u);
}

TEST(DeviceProgramTest, BatchNormBecomesAScaleAndShiftComputedFromItsStatistics) {
  PlanBuilder b;
  const int x = b.value("x", {1, 2, 4, 4});
  const int gamma = b.constant("gamma", {2}, {2.0F, 1.0F});
  const int beta = b.constant("beta", {2}, {0.5F, -1.0F});
  const int mean = b.constant("mean", {2}, {1.0F, 3.0F});
  const int var = b.constant("var", {2}, {4.0F, 0.25F});
  const int y = b.value("y", {1, 2, 4, 4});
  b.op(OpKind::kBatchNorm, {x, gamma, beta, mean, var}, {y}, "bn").epsilon = 0.0F;
  b.io({x}, {y});
  DeviceWeightTable weights;
  auto programs = plan_one(b.plan(), weights);
  ASSERT_TRUE(programs.is_ok()) << programs.status().message();
  const DeviceStep& step = programs->front().steps.at(0);
  EXPECT_EQ(step.kind, DeviceStep::Kind::kBatchNorm);
  ASSERT_EQ(weights.entries.size(), 1u);  // the statistics themselves never go to the device
  const DeviceWeightEntry& entry = weights.entries[step.scale_shift];
  std::vector<float> ss(4);
  ASSERT_EQ(entry.derived.size(), sizeof(float) * 4);
  std::memcpy(ss.data(), entry.derived.data(), entry.derived.size());
  EXPECT_FLOAT_EQ(ss[0], 1.0F);   // 2 / sqrt(4)
  EXPECT_FLOAT_EQ(ss[1], 2.0F);   // 1 / sqrt(0.25)
  EXPECT_FLOAT_EQ(ss[2], -0.5F);  // 0.5 - 1 * 1
  EXPECT_FLOAT_EQ(ss[3], -7.0F);  // -1 - 3 * 2
}

TEST(DeviceProgramTest, PlansOfOneModelShareTheirWeightEntries) {
  std::vector<Plan> plans;
  std::vector<PlanBuilder> builders;
  for (int64_t batch : {1, 4}) {
    PlanBuilder& b = builders.emplace_back(batch);
    const int x = b.value("x", {batch, 4, 8, 8});
    const int w = b.constant("w", {4, 4, 3, 3}, std::vector<float>(144, 1.0F));
    const int y = b.value("y", {batch, 4, 8, 8});
    conv(b, x, w, -1, y, "conv").post_ops = {relu()};
    b.io({x}, {y});
  }
  for (const PlanBuilder& b : builders) plans.push_back(b.plan());
  DeviceWeightTable weights;
  auto programs = plan_device_programs(plans, weights, "cuda");
  ASSERT_TRUE(programs.is_ok()) << programs.status().message();
  ASSERT_EQ(programs->size(), 2u);
  EXPECT_EQ(weights.entries.size(), 2u);  // w and conv's zero bias, once for both plans
  EXPECT_EQ(weights.bytes, 768u + 256u);  // 576 bytes of w and 16 of zeros, each 256-aligned
  EXPECT_GT((*programs)[1].arena_bytes, (*programs)[0].arena_bytes);
}

TEST(DeviceProgramTest, MatMulBatchesAreStridedOrStackedAndPartialBroadcastIsRefused) {
  auto matmul = [](std::vector<int64_t> a, std::vector<int64_t> bdims, std::vector<int64_t> y) {
    PlanBuilder b;
    const int va = b.value("a", std::move(a));
    const int vb = b.value("b", std::move(bdims));
    const int vy = b.value("y", std::move(y));
    b.op(OpKind::kMatMul, {va, vb}, {vy}, "mm");
    b.io({va, vb}, {vy});
    DeviceWeightTable weights;
    return plan_one(b.plan(), weights);
  };
  auto stacked = matmul({2, 3, 5, 4}, {4, 7}, {2, 3, 5, 7});
  ASSERT_TRUE(stacked.is_ok()) << stacked.status().message();
  const DeviceStep& s = stacked->front().steps[0];
  EXPECT_EQ(s.m, 30);
  EXPECT_EQ(s.k, 4);
  EXPECT_EQ(s.n, 7);
  EXPECT_EQ(s.batch, 1);

  auto strided = matmul({6, 5, 4}, {6, 4, 7}, {6, 5, 7});
  ASSERT_TRUE(strided.is_ok());
  EXPECT_EQ(strided->front().steps[0].batch, 6);
  EXPECT_EQ(strided->front().steps[0].stride_a, 20);
  EXPECT_EQ(strided->front().steps[0].stride_b, 28);

  auto broadcast_a = matmul({5, 4}, {6, 4, 7}, {6, 5, 7});
  ASSERT_TRUE(broadcast_a.is_ok());
  EXPECT_EQ(broadcast_a->front().steps[0].stride_a, 0);

  auto partial = matmul({2, 1, 5, 4}, {1, 3, 4, 7}, {2, 3, 5, 7});
  ASSERT_FALSE(partial.is_ok());
  EXPECT_NE(partial.status().message().find("partially"), std::string::npos);
}

TEST(DeviceProgramTest, WhatTheExecutorCannotRunIsRefusedClearly) {
  auto single = [](OpKind kind, DataType dtype, bool indices) {
    PlanBuilder b;
    const int x = b.value("x", {1, 2, 4, 4}, dtype);
    const int y = b.value("y", {1, 2, 2, 2}, dtype);
    std::vector<int> outputs = {y};
    if (indices) outputs.push_back(b.value("i", {1, 2, 2, 2}, DataType::kInt64));
    PlanOp& op = b.op(kind, {x}, outputs, "op");
    op.kernel = {2, 2};
    op.strides = {2, 2};
    op.dilations = {1, 1};
    op.pads = {0, 0, 0, 0};
    op.perm = {0, 1, 2, 3};
    b.io({x}, {y});
    DeviceWeightTable weights;
    return plan_one(b.plan(), weights);
  };
  auto indices = single(OpKind::kMaxPool, DataType::kFp32, true);
  ASSERT_FALSE(indices.is_ok());
  EXPECT_EQ(indices.status().message(), "op: not supported on cuda: MaxPool's Indices output");
  auto fp16 = single(OpKind::kMaxPool, DataType::kFp16, false);
  ASSERT_FALSE(fp16.is_ok());
  EXPECT_NE(fp16.status().message().find("'x' is FP16; this op runs in FP32 only"),
            std::string::npos)
      << fp16.status().message();
  // Data movement takes any element type.
  EXPECT_TRUE(single(OpKind::kTranspose, DataType::kInt64, false).is_ok());
}

TEST(DeviceProgramTest, TheRegionKeyFollowsTheContentsAndFillPlacesEveryEntry) {
  DeviceWeightTable a;
  DeviceWeightTable b;
  std::vector<float> ones(8, 1.0F);
  std::vector<float> twos(8, 2.0F);
  PlanValue v;
  v.name = "w";
  v.dtype = DataType::kFp32;
  v.dims = {8};
  v.is_constant = true;
  v.data = std::as_bytes(std::span(ones));
  a.constant(v);
  v.data = std::as_bytes(std::span(twos));
  b.constant(v);
  EXPECT_NE(a.region_key("cuda"), b.region_key("cuda"));
  // Each device's executor names its own regions.
  EXPECT_EQ(a.region_key("hip").rfind("hip-engine-", 0), 0u);
  EXPECT_EQ(a.region_key("cuda").substr(4), a.region_key("hip").substr(3));
  a.derived("extra", std::vector<std::byte>(4, std::byte{7}));
  std::vector<std::byte> region(a.bytes);
  a.fill(region);
  float first = 0;
  std::memcpy(&first, region.data(), sizeof first);
  EXPECT_EQ(first, 1.0F);
  EXPECT_EQ(region[a.entries[1].offset], std::byte{7});
  EXPECT_EQ(a.entries[1].offset % kDeviceAlignment, 0u);
}

}  // namespace
}  // namespace sliceserve::backends
