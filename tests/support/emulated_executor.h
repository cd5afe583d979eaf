#pragma once
// What the GPU executors' emulated-device tests share (tests/unit/cuda, tests/unit/hip): the
// torchvision exports lowered to plans at every batch size, random inputs, a run and the
// comparison with the cpu executor (1e-4 of each output's scale), a context with chosen device and
// per-layer queues, a device weight store over host memory, and a hand-made plan for the Gemm and
// MatMul paths torchvision's do not take.

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <deque>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <string_view>
#include <vector>

#include "sliceserve/backends/compute_context.h"
#include "sliceserve/backends/executor.h"
#include "sliceserve/backends/weight_store.h"
#include "sliceserve/worker/engine/fusion.h"
#include "sliceserve/worker/engine/lowering.h"
#include "sliceserve/worker/engine/onnx_loader.h"
#include "sliceserve/worker/engine/shape_inference.h"

namespace sliceserve::testing {

using backends::ComputeContext;
using backends::DataType;
using backends::DeviceQueue;
using backends::Executor;
using backends::OpKind;
using backends::Plan;
using backends::PlanOp;
using backends::PlanValue;
using backends::PostOp;
using backends::UnaryAlg;
using backends::WeightRegion;
using backends::WeightStore;

// A context whose device queue the test chooses (a slice pool's entries), and per-layer queues
// (KRISP right-sizing: `layers` by op label, the others on `queue`); it records the labels asked.
class QueueContext final : public ComputeContext {
 public:
  unsigned concurrency() const override { return 1; }
  void parallel_for(size_t n, const std::function<void(size_t, size_t)>& fn) override { fn(0, n); }
  DeviceQueue device_queue() const override { return queue; }
  DeviceQueue layer_queue(std::string_view layer) const override {
    asked.emplace_back(layer);
    const auto found = layers.find(std::string(layer));
    return found == layers.end() ? queue : found->second;
  }
  DeviceQueue queue;
  std::map<std::string, DeviceQueue> layers;
  mutable std::vector<std::string> asked;
};

// A device weight store over host memory.
class FakeDeviceStore final : public WeightStore {
 public:
  explicit FakeDeviceStore(bool shared) : shared_(shared) {}
  Result<WeightRegion> get_or_create(
      std::string_view key, size_t bytes,
      const std::function<Status(std::span<std::byte>)>& fill) override {
    keys.emplace_back(key);
    memory_.resize(bytes);
    RETURN_IF_ERROR(fill(memory_));
    return WeightRegion{memory_.data(), bytes, shared_};
  }
  size_t mapped_bytes() const override { return memory_.size(); }
  size_t private_bytes() const override { return shared_ ? 0 : memory_.size(); }
  bool holds_device_memory() const override { return true; }
  std::vector<std::string> keys;

 private:
  bool shared_;
  std::vector<std::byte> memory_;
};

// ---- plans, and the two executors on them ------------------------------------------------

struct Model {
  std::vector<Plan> plans;  // batch 1..max_batch
  std::deque<worker::engine::Tensor> storage;
  worker::engine::Graph graph;
};

inline std::unique_ptr<Model> plans_of(const std::filesystem::path& path, int64_t max_batch) {
  auto model = std::make_unique<Model>();
  auto graph = worker::engine::load_onnx_file(path.string());
  EXPECT_TRUE(graph.is_ok()) << graph.status().to_string();
  if (!graph.is_ok()) return nullptr;
  model->graph = std::move(graph).value();
  EXPECT_TRUE(worker::engine::infer_shapes(model->graph, 1).is_ok());
  EXPECT_TRUE(worker::engine::fuse(model->graph).is_ok());
  for (int64_t batch = 1; batch <= max_batch; ++batch) {
    EXPECT_TRUE(worker::engine::infer_shapes(model->graph, batch).is_ok());
    auto plan = worker::engine::lower(model->graph, batch, model->storage);
    EXPECT_TRUE(plan.is_ok()) << plan.status().to_string();
    if (!plan.is_ok()) return nullptr;
    model->plans.push_back(std::move(plan).value());
  }
  return model;
}

inline std::vector<std::vector<float>> random_inputs(const Plan& plan, unsigned seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist;
  std::vector<std::vector<float>> inputs;
  for (int v : plan.inputs) {
    std::vector<float> x(size_t(plan.values[size_t(v)].element_count()));
    for (float& f : x) f = dist(rng);
    inputs.push_back(std::move(x));
  }
  return inputs;
}

inline std::vector<std::vector<float>> run(Executor& executor, const Plan& plan, size_t index,
                                           const std::vector<std::vector<float>>& inputs,
                                           ComputeContext& ctx) {
  std::vector<std::vector<float>> outputs;
  std::vector<const std::byte*> in;
  std::vector<std::byte*> out;
  for (const auto& x : inputs) in.push_back(reinterpret_cast<const std::byte*>(x.data()));
  for (int v : plan.outputs) {
    outputs.emplace_back(size_t(plan.values[size_t(v)].element_count()));
  }
  for (auto& y : outputs) out.push_back(reinterpret_cast<std::byte*>(y.data()));
  const Status status = executor.run(index, in, out, ctx);
  EXPECT_TRUE(status.is_ok()) << status.to_string();
  return outputs;
}

inline void expect_close(const std::vector<std::vector<float>>& got,
                         const std::vector<std::vector<float>>& want, const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  for (size_t t = 0; t < got.size(); ++t) {
    float scale = 1e-6F;
    for (float w : want[t]) scale = std::max(scale, std::abs(w));
    float worst = 0;
    for (size_t i = 0; i < got[t].size(); ++i) {
      worst = std::max(worst, std::abs(got[t][i] - want[t][i]));
    }
    EXPECT_LE(worst, 1e-4F * scale) << what << " output " << t;
  }
}

// A hand-made model that takes the paths torchvision's do not: Gemm with a broadcast C and
// alpha/beta, MatMul batched, a standalone BatchNorm.
inline Plan gemm_matmul_plan(std::deque<std::vector<float>>& constants) {
  Plan plan;
  plan.batch = 2;
  auto value = [&](const std::string& name, std::vector<int64_t> dims) {
    PlanValue v;
    v.name = name;
    v.dtype = DataType::kFp32;
    v.dims = std::move(dims);
    plan.values.push_back(std::move(v));
    return int(plan.values.size()) - 1;
  };
  auto constant = [&](const std::string& name, std::vector<int64_t> dims, unsigned seed) {
    const int v = value(name, dims);
    std::mt19937 rng(seed);
    std::normal_distribution<float> dist;
    std::vector<float>& data =
        constants.emplace_back(size_t(plan.values[size_t(v)].element_count()));
    for (float& f : data) f = dist(rng);
    plan.values[size_t(v)].is_constant = true;
    plan.values[size_t(v)].data = std::as_bytes(std::span(data));
    return v;
  };
  const int x = value("x", {2, 6});
  const int w = constant("w", {5, 6}, 1);  // transposed: [N, K]
  const int c = constant("c", {5}, 2);
  const int g = value("g", {2, 5});
  const int b3 = constant("b3", {5, 4}, 3);
  const int m = value("m", {2, 4});
  const int a = value("a", {6, 4});
  const int a3 = value("a3", {3, 2, 4});
  const int bb = constant("bb", {3, 4, 3}, 4);
  const int y = value("y", {3, 2, 3});
  PlanOp gemm;
  gemm.kind = OpKind::kGemm;
  gemm.label = "gemm";
  gemm.inputs = {x, w, c};
  gemm.outputs = {g};
  gemm.trans_b = true;
  gemm.alpha = 0.5F;
  gemm.beta = 2.0F;
  gemm.post_ops = {{.kind = PostOp::Kind::kUnary, .unary = UnaryAlg::kRelu}};
  plan.ops.push_back(gemm);
  PlanOp mm;
  mm.kind = OpKind::kMatMul;
  mm.label = "matmul";
  mm.inputs = {g, b3};
  mm.outputs = {m};
  plan.ops.push_back(mm);
  PlanOp tile;  // three copies of m, stacked, then viewed as a batch of 3
  tile.kind = OpKind::kConcat;
  tile.label = "tile";
  tile.axis = 0;
  tile.inputs = {m, m, m};
  tile.outputs = {a};
  plan.ops.push_back(tile);
  PlanOp view;
  view.kind = OpKind::kCopy;
  view.label = "view";
  view.inputs = {a};
  view.outputs = {a3};
  plan.ops.push_back(view);
  PlanOp batched;
  batched.kind = OpKind::kMatMul;
  batched.label = "batched";
  batched.inputs = {a3, bb};
  batched.outputs = {y};
  plan.ops.push_back(batched);
  plan.inputs = {x};
  plan.outputs = {y, g};
  return plan;
}

}  // namespace sliceserve::testing
