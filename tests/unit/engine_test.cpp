// The engine on small graphs: what fusion merges, that fused graphs still compute the unfused
// result, clear errors, weights shared through the WeightStore, and the thread count.

#include "sliceserve/worker/engine/engine.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "sliceserve/backends/cpu/cpu_slice.h"
#include "sliceserve/worker/engine/fusion.h"
#include "sliceserve/worker/engine/onnx_loader.h"
#include "sliceserve/worker/engine/shape_inference.h"
#include "support/onnx_model_builder.h"
#include "support/shm_test_util.h"

namespace sliceserve::worker::engine {
namespace {

using testing::float_tensor;
using testing::ModelBuilder;
using testing::set_float;
using testing::set_int;
using testing::set_ints;

Graph load(const ModelBuilder& b) {
  const std::string bytes = b.bytes();
  auto graph = load_onnx_bytes(std::as_bytes(std::span<const char>(bytes.data(), bytes.size())));
  EXPECT_TRUE(graph.is_ok()) << graph.status().to_string();
  return graph.is_ok() ? std::move(graph).value() : Graph{};
}

// The model's graph after shape inference at batch 1 and fusion, and what fusion merged.
struct Fused {
  Graph graph;
  FusionCounts counts;
};

Fused fuse_model(const ModelBuilder& b) {
  Fused out{load(b), {}};
  Status inferred = infer_shapes(out.graph, 1);
  EXPECT_TRUE(inferred.is_ok()) << inferred.to_string();
  auto counts = fuse(out.graph);
  EXPECT_TRUE(counts.is_ok()) << counts.status().to_string();
  if (counts.is_ok()) out.counts = *counts;
  return out;
}

std::vector<float> random_floats(size_t n, unsigned seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist;
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

// Runs `batch` items of input `x` (one input, one output of out_floats per item).
std::vector<float> run(Engine& engine, int64_t batch, const std::vector<float>& x,
                       size_t out_floats, backends::ComputeContext& ctx) {
  std::vector<float> y(out_floats * static_cast<size_t>(std::max<int64_t>(batch, 1)));
  const std::byte* in[] = {reinterpret_cast<const std::byte*>(x.data())};
  std::byte* out[] = {reinterpret_cast<std::byte*>(y.data())};
  Status status = engine.run(batch, in, out, ctx);
  EXPECT_TRUE(status.is_ok()) << status.to_string();
  return y;
}

class EngineTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto slice = backends::create_cpu_slice({.percent = 100});
    ASSERT_TRUE(slice.is_ok()) << slice.status().to_string();
    slice_ = std::move(slice).value();
  }
  std::unique_ptr<backends::Slice> slice_;
};

// x [N,4,6,6] -> Conv 1x1 (identity) -> BN (2x + 1) -> Relu -> Conv 1x1 (identity) -> Add x ->
// Relu: y = relu(relu(2x + 1) + x).
ModelBuilder residual_block() {
  ModelBuilder b;
  b.input("x", {-1, 4, 6, 6});
  b.output("y", {-1, 4, 6, 6});
  std::vector<float> identity(16, 0.0F);
  for (int i = 0; i < 4; ++i) identity[static_cast<size_t>(i * 5)] = 1.0F;
  float_tensor(b, "w1", {4, 4, 1, 1}, identity);
  float_tensor(b, "w2", {4, 4, 1, 1}, identity);
  float_tensor(b, "scale", {4}, {2, 2, 2, 2});
  float_tensor(b, "shift", {4}, {1, 1, 1, 1});
  float_tensor(b, "mean", {4}, {0, 0, 0, 0});
  float_tensor(b, "var", {4}, {1, 1, 1, 1});
  b.node("Conv", {"x", "w1"}, {"c1"}, "conv1");
  auto* bn = b.node("BatchNormalization", {"c1", "scale", "shift", "mean", "var"}, {"n1"}, "bn1");
  set_float(bn, "epsilon", 0.0F);
  b.node("Relu", {"n1"}, {"r1"}, "relu1");
  b.node("Conv", {"r1", "w2"}, {"c2"}, "conv2");
  b.node("Add", {"c2", "x"}, {"s"}, "add");
  b.node("Relu", {"s"}, {"y"}, "relu2");
  return b;
}

TEST_F(EngineTest, FusionMergesBatchNormAddAndActivationsIntoTheConvs) {
  auto [graph, counts] = fuse_model(residual_block());
  EXPECT_EQ(counts.batch_norm, 1);
  EXPECT_EQ(counts.add, 1);
  EXPECT_EQ(counts.activation, 2);
  ASSERT_EQ(graph.nodes.size(), 2u);
  EXPECT_EQ(graph.nodes[0].op_type, "Conv");
  ASSERT_EQ(graph.nodes[0].fused.size(), 1u);
  EXPECT_EQ(graph.nodes[0].fused[0].op_type, "Relu");
  EXPECT_EQ(graph.nodes[0].outputs[0], "r1");
  ASSERT_EQ(graph.nodes[1].fused.size(), 2u);
  EXPECT_EQ(graph.nodes[1].fused[0].op_type, "Add");
  EXPECT_EQ(graph.nodes[1].fused[0].addend, "x");
  EXPECT_EQ(graph.nodes[1].fused[1].op_type, "Relu");
  EXPECT_EQ(graph.nodes[1].outputs[0], "y");
  // The BN's parameters and the unfolded weights are gone; the folded ones replace them.
  EXPECT_EQ(graph.initializers.count("scale"), 0u);
  EXPECT_EQ(graph.initializers.count("w1"), 0u);
  EXPECT_EQ(graph.initializers.size(), 3u);  // folded w1 and bias, w2
}

TEST_F(EngineTest, FusedResidualBlockComputesTheUnfusedResult) {
  auto engine = Engine::load_graph(load(residual_block()), {.max_batch = 3});
  ASSERT_TRUE(engine.is_ok()) << engine.status().to_string();
  const size_t item = 4 * 6 * 6;
  for (int64_t batch : {1, 3}) {
    const std::vector<float> x = random_floats(item * static_cast<size_t>(batch), 7);
    const std::vector<float> y = run(**engine, batch, x, item, *slice_);
    for (size_t i = 0; i < x.size(); ++i) {
      const float want = std::max(0.0F, std::max(0.0F, 2 * x[i] + 1) + x[i]);
      ASSERT_NEAR(y[i], want, 1e-5F) << "batch " << batch << " element " << i;
    }
  }
}

TEST_F(EngineTest, HardSigmoidTimesItsInputBecomesHardSwish) {
  ModelBuilder b;
  b.input("x", {-1, 8});
  b.output("y", {-1, 8});
  auto* hs = b.node("HardSigmoid", {"x"}, {"h"}, "hs");
  set_float(hs, "alpha", 1.0F / 6.0F);
  set_float(hs, "beta", 0.5F);
  b.node("Mul", {"x", "h"}, {"y"}, "mul");
  auto [graph, counts] = fuse_model(b);
  EXPECT_EQ(counts.hardswish, 1);
  ASSERT_EQ(graph.nodes.size(), 1u);
  EXPECT_EQ(graph.nodes[0].op_type, "HardSwish");

  auto engine = Engine::load_graph(load(b), {.max_batch = 1});
  ASSERT_TRUE(engine.is_ok()) << engine.status().to_string();
  const std::vector<float> x = {-4, -3, -1.5F, 0, 0.5F, 2, 3, 5};
  const std::vector<float> y = run(**engine, 1, x, 8, *slice_);
  for (size_t i = 0; i < x.size(); ++i) {
    EXPECT_NEAR(y[i], x[i] * std::clamp(x[i] / 6 + 0.5F, 0.0F, 1.0F), 1e-6F) << x[i];
  }
}

TEST_F(EngineTest, SigmoidTimesItsInputBecomesSwishInsideTheConv) {
  ModelBuilder b;
  b.input("x", {-1, 2, 3, 3});
  b.output("y", {-1, 2, 3, 3});
  float_tensor(b, "w", {2, 2, 1, 1}, {1, 0, 0, 1});
  b.node("Conv", {"x", "w"}, {"c"}, "conv");
  b.node("Sigmoid", {"c"}, {"s"}, "sigmoid");
  b.node("Mul", {"s", "c"}, {"y"}, "mul");
  auto [graph, counts] = fuse_model(b);
  EXPECT_EQ(counts.swish, 1);
  EXPECT_EQ(counts.activation, 1);
  ASSERT_EQ(graph.nodes.size(), 1u);
  ASSERT_EQ(graph.nodes[0].fused.size(), 1u);
  EXPECT_EQ(graph.nodes[0].fused[0].op_type, "Swish");

  auto engine = Engine::load_graph(load(b), {.max_batch = 1});
  ASSERT_TRUE(engine.is_ok()) << engine.status().to_string();
  const std::vector<float> x = random_floats(18, 9);
  const std::vector<float> y = run(**engine, 1, x, 18, *slice_);
  for (size_t i = 0; i < x.size(); ++i) {
    EXPECT_NEAR(y[i], x[i] / (1 + std::exp(-x[i])), 1e-5F) << x[i];
  }
}

TEST_F(EngineTest, AStandaloneBatchNormTakesTheReluThatFollowsIt) {
  ModelBuilder b;  // densenet's pre-activation: BN on a value no Conv produced, then Relu
  b.input("x", {-1, 2, 2, 2});
  b.output("y", {-1, 2, 2, 2});
  float_tensor(b, "scale", {2}, {1, -2});
  float_tensor(b, "shift", {2}, {0.5F, 0});
  float_tensor(b, "mean", {2}, {0, 1});
  float_tensor(b, "var", {2}, {1, 4});
  auto* bn = b.node("BatchNormalization", {"x", "scale", "shift", "mean", "var"}, {"n"}, "bn");
  set_float(bn, "epsilon", 0.0F);
  b.node("Relu", {"n"}, {"y"}, "relu");
  auto [graph, counts] = fuse_model(b);
  EXPECT_EQ(counts.activation, 1);
  ASSERT_EQ(graph.nodes.size(), 1u);
  EXPECT_EQ(graph.nodes[0].op_type, "BatchNormalization");

  auto engine = Engine::load_graph(load(b), {.max_batch = 1});
  ASSERT_TRUE(engine.is_ok()) << engine.status().to_string();
  const std::vector<float> x = {-1, 0, 1, 2, -1, 0, 1, 3};
  const std::vector<float> y = run(**engine, 1, x, 8, *slice_);
  for (size_t i = 0; i < x.size(); ++i) {
    const float want = i < 4 ? x[i] + 0.5F : -2 * (x[i] - 1) / 2;
    EXPECT_NEAR(y[i], std::max(0.0F, want), 1e-6F) << i;
  }
}

TEST_F(EngineTest, UnsupportedOpIsAnErrorNamingTheNodeAndOp) {
  ModelBuilder b;
  b.input("x", {-1, 4});
  b.output("y", {-1, 4});
  b.node("Relu", {"x"}, {"r"}, "relu");
  b.node("Erf", {"r"}, {"y"}, "erf_1");
  auto engine = Engine::load_graph(load(b), {.max_batch = 2});
  ASSERT_FALSE(engine.is_ok());
  EXPECT_EQ(engine.status().code(), ErrorCode::kInvalidArgument);
  EXPECT_EQ(engine.status().message(), "node 'erf_1' (Erf): unsupported op");
}

TEST_F(EngineTest, BadAttributeIsAnErrorNamingTheNode) {
  ModelBuilder b;
  b.input("x", {-1, 2, 5, 5});
  b.output("y");
  auto* pool = b.node("MaxPool", {"x"}, {"y"}, "pool");
  set_ints(pool, "kernel_shape", {2, 2});
  set_ints(pool, "strides", {0, 1});
  auto engine = Engine::load_graph(load(b), {.max_batch = 1});
  ASSERT_FALSE(engine.is_ok());
  EXPECT_EQ(engine.status().message(),
            "node 'pool' (MaxPool): kernel_shape, strides and dilations must be positive");
}

TEST_F(EngineTest, TruncatedAndMissingFilesAreClearErrors) {
  const std::string bytes = residual_block().bytes();
  const std::filesystem::path dir = std::filesystem::temp_directory_path();
  const std::string path =
      (dir / ("engine_test_truncated." + std::to_string(getpid()) + ".onnx")).string();
  {
    std::ofstream out(path, std::ios::binary);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size() / 2));
  }
  auto truncated = Engine::load_file(path, {.max_batch = 1});
  std::filesystem::remove(path);
  ASSERT_FALSE(truncated.is_ok());
  EXPECT_EQ(truncated.status().code(), ErrorCode::kInvalidArgument);
  EXPECT_NE(truncated.status().message().find(path), std::string::npos)
      << truncated.status().message();

  auto missing = Engine::load_file(path, {.max_batch = 1});
  ASSERT_FALSE(missing.is_ok());
  EXPECT_EQ(missing.status().code(), ErrorCode::kNotFound);
}

TEST_F(EngineTest, RunChecksTheBatchAndTheBufferCounts) {
  auto engine = Engine::load_graph(load(residual_block()), {.max_batch = 2});
  ASSERT_TRUE(engine.is_ok()) << engine.status().to_string();
  EXPECT_EQ((*engine)->input_shape(0, 2), (std::vector<int64_t>{2, 4, 6, 6}));
  EXPECT_EQ((*engine)->output_shape(0, 1), (std::vector<int64_t>{1, 4, 6, 6}));
  std::vector<float> x(3 * 144), y(3 * 144);
  const std::byte* in[] = {reinterpret_cast<const std::byte*>(x.data())};
  std::byte* out[] = {reinterpret_cast<std::byte*>(y.data())};
  Status too_big = (*engine)->run(3, in, out, *slice_);
  EXPECT_EQ(too_big.code(), ErrorCode::kInvalidArgument);
  EXPECT_EQ(too_big.message(), "batch 3 is out of range (the engine was built for 1..2)");
  Status no_outputs = (*engine)->run(1, in, {}, *slice_);
  EXPECT_EQ(no_outputs.code(), ErrorCode::kInvalidArgument);
}

TEST_F(EngineTest, AShadowMapsTheWeightsTheFirstWorkerFilled) {
  const std::string segment = testing::unique_segment_name("engine");
  auto first_store = backends::open_host_weight_store(segment);
  auto second_store = backends::open_host_weight_store(segment);
  ASSERT_TRUE(first_store.is_ok() && second_store.is_ok());
  auto first =
      Engine::load_graph(load(residual_block()), {.max_batch = 2, .weights = first_store->get()});
  auto second =
      Engine::load_graph(load(residual_block()), {.max_batch = 2, .weights = second_store->get()});
  ASSERT_TRUE(first.is_ok()) << first.status().to_string();
  ASSERT_TRUE(second.is_ok()) << second.status().to_string();
  EXPECT_GT((*first)->weights().bytes, 0u);
  EXPECT_EQ((*first)->weights().private_bytes, (*first)->weights().bytes);
  EXPECT_EQ((*second)->weights().bytes, (*first)->weights().bytes);
  EXPECT_EQ((*second)->weights().private_bytes, 0u);
  const std::vector<float> x = random_floats(2 * 144, 3);
  EXPECT_EQ(run(**first, 2, x, 144, *slice_), run(**second, 2, x, 144, *slice_));
  first->reset();
  second->reset();
  backends::remove_host_weights(segment);
}

// Every test runs in a process of its own (gtest_discover_tests), so its threads are its own.
size_t thread_count() {
  return static_cast<size_t>(std::distance(std::filesystem::directory_iterator("/proc/self/task"),
                                           std::filesystem::directory_iterator{}));
}

TEST(EngineThreads, AOneThreadSliceRunsTheModelOnItsOneThread) {
  const unsigned cpus = std::max(1U, std::thread::hardware_concurrency());
  auto one = backends::create_cpu_slice({.percent = 100.0 / cpus});
  ASSERT_TRUE(one.is_ok()) << one.status().to_string();
  ASSERT_EQ((*one)->concurrency(), 1u);
  const size_t before = thread_count();
  auto engine = Engine::load_graph(load(residual_block()), {.max_batch = 2, .threads = 1});
  ASSERT_TRUE(engine.is_ok()) << engine.status().to_string();
  const std::vector<float> x = random_floats(2 * 144, 5);
  (void)run(**engine, 2, x, 144, **one);
  // oneDNN's primitives fix their thread count when created: built for all cpus, they would
  // start an OpenMP thread here (and it would inherit this thread's one cpu).
  EXPECT_EQ(thread_count(), before);
}

TEST_F(EngineTest, OneThreadAndAllThreadsGiveTheSameResult) {
  auto engine = Engine::load_graph(load(residual_block()), {.max_batch = 2});
  ASSERT_TRUE(engine.is_ok());
  auto one = backends::create_cpu_slice(
      {.percent = 100.0 / std::max(1U, std::thread::hardware_concurrency())});
  ASSERT_TRUE(one.is_ok()) << one.status().to_string();
  ASSERT_EQ((*one)->concurrency(), 1u);
  const std::vector<float> x = random_floats(2 * 144, 5);
  EXPECT_EQ(run(**engine, 2, x, 144, **one), run(**engine, 2, x, 144, *slice_));
}

}  // namespace
}  // namespace sliceserve::worker::engine
