// The CUDA executor on a real device against the cpu executor: a small CNN that takes every path
// (the fused cuDNN convolution, a convolution with the epilogue kernel, a residual sum, BatchNorm
// folded and standalone, pooling, a reshape view, Gemm with a broadcast bias, Softmax), batches
// given whole and item by item, each pool entry of a green-context slice (one CUDA graph per
// queue), profile_run's per-layer device times on each entry (slicectl profile --device cuda:N),
// and weights shared through the device weight store. Skips without a device (label gpu).

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "sliceserve/backends/cpu/cpu_slice.h"
#include "sliceserve/backends/cuda/cuda_device_slice.h"
#include "sliceserve/backends/cuda/cuda_driver.h"
#include "sliceserve/backends/cuda/green_context_slice.h"
#include "sliceserve/worker/engine/engine.h"
#include "sliceserve/worker/engine/onnx_loader.h"
#include "support/onnx_model_builder.h"

namespace sliceserve::worker::engine {
namespace {

using testing::float_tensor;
using testing::ModelBuilder;
using testing::set_float;
using testing::set_int;
using testing::set_ints;

constexpr int64_t kMaxBatch = 4;
constexpr size_t kItemIn = 3 * 16 * 16;
constexpr size_t kItemOut = 10;

std::vector<float> random_floats(size_t n, unsigned seed, float scale = 1.0F) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0F, scale);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

// x [N,3,16,16] -> conv3x3(8)+BN+Relu -> conv3x3(8)+HardSwish (epilogue) -> conv3x3(8)+Add(first)
// +Relu (fused with z) -> MaxPool 2x2 -> BN+Relu -> GlobalAveragePool -> Flatten -> Gemm(10, bias)
// -> Softmax.
ModelBuilder small_cnn() {
  ModelBuilder b(14);  // HardSwish is opset 14
  b.input("x", {-1, 3, 16, 16});
  b.output("y", {-1, 10});
  unsigned seed = 1;
  auto conv = [&](const std::string& name, const std::string& in, int64_t cin, int64_t cout) {
    float_tensor(b, name + ".w", {cout, cin, 3, 3},
                 random_floats(static_cast<size_t>(cout * cin * 9), seed++, 0.3F));
    float_tensor(b, name + ".b", {cout}, random_floats(static_cast<size_t>(cout), seed++, 0.1F));
    auto* node = b.node("Conv", {in, name + ".w", name + ".b"}, {name}, name);
    set_ints(node, "pads", {1, 1, 1, 1});
    set_ints(node, "kernel_shape", {3, 3});
  };
  auto bn = [&](const std::string& name, const std::string& in, int64_t c) {
    std::vector<float> var = random_floats(static_cast<size_t>(c), seed++, 0.2F);
    for (float& v : var) v = 1.0F + std::abs(v);
    float_tensor(b, name + ".g", {c}, random_floats(static_cast<size_t>(c), seed++, 0.5F));
    float_tensor(b, name + ".s", {c}, random_floats(static_cast<size_t>(c), seed++, 0.5F));
    float_tensor(b, name + ".m", {c}, random_floats(static_cast<size_t>(c), seed++, 0.5F));
    float_tensor(b, name + ".v", {c}, var);
    auto* node = b.node("BatchNormalization",
                        {in, name + ".g", name + ".s", name + ".m", name + ".v"}, {name}, name);
    set_float(node, "epsilon", 1e-5F);
  };
  conv("c1", "x", 3, 8);
  bn("bn1", "c1", 8);
  b.node("Relu", {"bn1"}, {"r1"}, "relu1");
  conv("c2", "r1", 8, 8);
  b.node("HardSwish", {"c2"}, {"h2"}, "hswish2");
  conv("c3", "h2", 8, 8);
  b.node("Add", {"c3", "r1"}, {"a3"}, "add3");
  b.node("Relu", {"a3"}, {"r3"}, "relu3");
  auto* pool = b.node("MaxPool", {"r3"}, {"p"}, "pool");
  set_ints(pool, "kernel_shape", {2, 2});
  set_ints(pool, "strides", {2, 2});
  bn("bn4", "p", 8);
  b.node("Relu", {"bn4"}, {"r4"}, "relu4");
  b.node("GlobalAveragePool", {"r4"}, {"g"}, "gap");
  auto* flat = b.node("Flatten", {"g"}, {"f"}, "flatten");
  set_int(flat, "axis", 1);
  float_tensor(b, "fc.w", {10, 8}, random_floats(80, seed++, 0.5F));
  float_tensor(b, "fc.b", {10}, random_floats(10, seed++, 0.5F));
  auto* gemm = b.node("Gemm", {"f", "fc.w", "fc.b"}, {"logits"}, "fc");
  set_int(gemm, "transB", 1);
  auto* softmax = b.node("Softmax", {"logits"}, {"y"}, "softmax");
  set_int(softmax, "axis", 1);
  return b;
}

Graph graph_of(const ModelBuilder& b) {
  const std::string bytes = b.bytes();
  auto graph = load_onnx_bytes(std::as_bytes(std::span<const char>(bytes.data(), bytes.size())));
  EXPECT_TRUE(graph.is_ok()) << graph.status().to_string();
  return graph.is_ok() ? std::move(graph).value() : Graph{};
}

std::vector<float> run(Engine& engine, int64_t batch, const std::vector<float>& x,
                       backends::ComputeContext& ctx) {
  std::vector<float> y(kItemOut * static_cast<size_t>(batch));
  const std::byte* in[] = {reinterpret_cast<const std::byte*>(x.data())};
  std::byte* out[] = {reinterpret_cast<std::byte*>(y.data())};
  Status status = engine.run(batch, in, out, ctx);
  EXPECT_TRUE(status.is_ok()) << status.to_string();
  return y;
}

// TF32 convolutions (cuDNN's default math, as PyTorch's) keep about 3 decimal digits.
void expect_close(const std::vector<float>& got, const std::vector<float>& want,
                  const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  float scale = 0;
  for (float w : want) scale = std::max(scale, std::abs(w));
  float worst = 0;
  for (size_t i = 0; i < got.size(); ++i) worst = std::max(worst, std::abs(got[i] - want[i]));
  EXPECT_LE(worst, 1e-2F * std::max(scale, 1e-6F)) << what << ": worst error " << worst;
}

class CudaExecutorGpuTest : public ::testing::Test {
 protected:
  void SetUp() override {
    // The reference first, so that the model is checked on machines without a device too.
    auto cpu_slice = backends::create_cpu_slice({.percent = 100});
    ASSERT_TRUE(cpu_slice.is_ok());
    cpu_slice_ = std::move(cpu_slice).value();
    auto cpu = Engine::load_graph(graph_of(small_cnn()), {.max_batch = kMaxBatch});
    ASSERT_TRUE(cpu.is_ok()) << cpu.status().to_string();
    cpu_ = std::move(cpu).value();
    x_ = random_floats(kItemIn * kMaxBatch, 42);
    run(*cpu_, kMaxBatch, x_, *cpu_slice_);
    auto driver = backends::load_cuda_driver();
    if (!driver.is_ok()) GTEST_SKIP() << driver.status().message();
  }
  std::unique_ptr<backends::Slice> cpu_slice_;
  std::unique_ptr<Engine> cpu_;
  std::vector<float> x_;
};

TEST_F(CudaExecutorGpuTest, EveryBatchSizeMatchesTheCpuExecutor) {
  auto cuda =
      Engine::load_graph(graph_of(small_cnn()), {.max_batch = kMaxBatch, .device = "cuda:0"});
  ASSERT_TRUE(cuda.is_ok()) << cuda.status().to_string();
  auto slice = backends::create_cuda_device_slice({.device = 0, .mps_percent = std::nullopt});
  ASSERT_TRUE(slice.is_ok()) << slice.status().to_string();
  for (int64_t batch = 1; batch <= kMaxBatch; ++batch) {
    const std::vector<float> want = run(*cpu_, batch, x_, *cpu_slice_);
    // Twice: the first run captures the graph, the second replays it.
    expect_close(run(**cuda, batch, x_, **slice), want, "batch " + std::to_string(batch));
    expect_close(run(**cuda, batch, x_, **slice), want,
                 "batch " + std::to_string(batch) + " replayed");
  }
  // A host context: the executor's own stream.
  expect_close(run(**cuda, 2, x_, *cpu_slice_), run(*cpu_, 2, x_, *cpu_slice_), "host context");
}

TEST_F(CudaExecutorGpuTest, ItemsFromRegisteredMemoryGiveTheBatchesAnswer) {
  // The items sit apart in one registered block, as shm slots do.
  std::vector<std::byte> arena((kItemIn + kItemOut) * sizeof(float) * kMaxBatch * 2);
  auto cuda = Engine::load_graph(graph_of(small_cnn()),
                                 {.max_batch = kMaxBatch, .device = "cuda:0", .io_memory = arena});
  ASSERT_TRUE(cuda.is_ok()) << cuda.status().to_string();
  ASSERT_TRUE((*cuda)->runs_items());
  auto slice = backends::create_cuda_device_slice({.device = 0, .mps_percent = std::nullopt});
  ASSERT_TRUE(slice.is_ok()) << slice.status().to_string();
  const size_t stride = (kItemIn + kItemOut) * sizeof(float) * 2;
  std::vector<const std::byte*> in(kMaxBatch);
  std::vector<std::byte*> out(kMaxBatch);
  std::vector<backends::Executor::ItemBuffers> items;
  for (size_t i = 0; i < kMaxBatch; ++i) {
    std::byte* slot = arena.data() + i * stride;
    std::memcpy(slot, x_.data() + i * kItemIn, kItemIn * sizeof(float));
    in[i] = slot;
    out[i] = slot + kItemIn * sizeof(float);
  }
  for (size_t i = 0; i < kMaxBatch; ++i) {
    items.push_back({std::span(&in[i], 1), std::span(&out[i], 1)});
  }
  ASSERT_TRUE((*cuda)->run_items(items, **slice).is_ok());
  std::vector<float> got(kItemOut * kMaxBatch);
  for (size_t i = 0; i < kMaxBatch; ++i) {
    std::memcpy(got.data() + i * kItemOut, out[i], kItemOut * sizeof(float));
  }
  expect_close(got, run(*cpu_, kMaxBatch, x_, *cpu_slice_), "items");
}

TEST_F(CudaExecutorGpuTest, EachGreenContextOfThePoolRunsTheModel) {
  auto slice = backends::create_green_context_slice({.device = 0, .percent = 50});
  if (!slice.is_ok()) GTEST_SKIP() << slice.status().message();
  auto quarter = (*slice)->prepare(25);
  ASSERT_TRUE(quarter.is_ok()) << quarter.status().to_string();
  auto cuda =
      Engine::load_graph(graph_of(small_cnn()), {.max_batch = kMaxBatch, .device = "cuda:0"});
  ASSERT_TRUE(cuda.is_ok()) << cuda.status().to_string();
  const std::vector<float> want = run(*cpu_, 3, x_, *cpu_slice_);
  for (size_t entry = 0; entry < (*slice)->pool().size(); ++entry) {
    ASSERT_TRUE((*slice)->select(entry).is_ok());
    expect_close(run(**cuda, 3, x_, **slice), want, "pool entry " + std::to_string(entry));
  }
}

TEST_F(CudaExecutorGpuTest, ProfileRunTimesEveryLayerOnEachGreenContext) {
  auto slice = backends::create_green_context_slice({.device = 0, .percent = 50});
  if (!slice.is_ok()) GTEST_SKIP() << slice.status().message();
  auto quarter = (*slice)->prepare(25);
  ASSERT_TRUE(quarter.is_ok()) << quarter.status().to_string();
  auto cuda =
      Engine::load_graph(graph_of(small_cnn()), {.max_batch = kMaxBatch, .device = "cuda:0"});
  ASSERT_TRUE(cuda.is_ok()) << cuda.status().to_string();
  const std::vector<float> want = run(*cpu_, 2, x_, *cpu_slice_);
  for (size_t entry = 0; entry < (*slice)->pool().size(); ++entry) {
    SCOPED_TRACE("pool entry " + std::to_string(entry));
    ASSERT_TRUE((*slice)->select(entry).is_ok());
    // A captured graph first: the profile runs the steps eagerly beside it.
    expect_close(run(**cuda, 2, x_, **slice), want, "graph");
    std::vector<float> y(kItemOut * 2);
    const std::byte* in[] = {reinterpret_cast<const std::byte*>(x_.data())};
    std::byte* out[] = {reinterpret_cast<std::byte*>(y.data())};
    for (int round = 0; round < 2; ++round) {  // the second reuses the queue's events
      auto timings = (*cuda)->profile_run(2, in, out, **slice);
      ASSERT_TRUE(timings.is_ok()) << timings.status().to_string();
      expect_close(y, want, "profiled");
      ASSERT_FALSE(timings->empty());
      double total = 0;
      for (const auto& t : *timings) {
        EXPECT_TRUE(std::isfinite(t.ms) && t.ms >= 0) << t.label << ": " << t.ms;
        EXPECT_FALSE(t.label.empty());
        total += t.ms;
      }
      EXPECT_GT(total, 0.0);
    }
    expect_close(run(**cuda, 2, x_, **slice), want, "graph after the profile");
  }
}

}  // namespace
}  // namespace sliceserve::worker::engine
