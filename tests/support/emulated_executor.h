#pragma once
// What the GPU executors' emulated-device tests share (tests/unit/cuda, tests/unit/hip): a fixture
// with the cpu slice the reference runs on, the torchvision exports lowered to plans at every batch
// size, random inputs, a call's buffers, a run and the comparison with the cpu executor (1e-4 of
// each output's scale), a batch's items in registered slots, where an executor's weights go in
// device and host stores, the labels of a plan's steps, a context with chosen device and per-layer
// queues, a device weight store over host memory, and a hand-made plan for the Gemm and MatMul
// paths torchvision's do not take.

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <deque>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <random>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "sliceserve/backends/compute_context.h"
#include "sliceserve/backends/cpu/cpu_slice.h"
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
using backends::Slice;
using backends::UnaryAlg;
using backends::WeightRegion;
using backends::WeightStore;

// The tests' fixture base: the cpu slice the cpu executor's reference runs on (a host context,
// with no device queue).
class EmulatedExecutorTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto slice = backends::create_cpu_slice({.percent = 100});
    ASSERT_TRUE(slice.is_ok());
    cpu_slice_ = std::move(slice).value();
  }
  std::unique_ptr<Slice> cpu_slice_;
};

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

// A call's buffers: `inputs`, and outputs of `plan`'s sizes.
struct CallBuffers {
  CallBuffers(const Plan& plan, const std::vector<std::vector<float>>& inputs) {
    for (const auto& x : inputs) in.push_back(reinterpret_cast<const std::byte*>(x.data()));
    for (int v : plan.outputs) {
      outputs.emplace_back(size_t(plan.values[size_t(v)].element_count()));
    }
    for (auto& y : outputs) out.push_back(reinterpret_cast<std::byte*>(y.data()));
  }
  std::vector<std::vector<float>> outputs;
  std::vector<const std::byte*> in;
  std::vector<std::byte*> out;
};

inline std::vector<std::vector<float>> run(Executor& executor, const Plan& plan, size_t index,
                                           const std::vector<std::vector<float>>& inputs,
                                           ComputeContext& ctx) {
  CallBuffers call(plan, inputs);
  const Status status = executor.run(index, call.in, call.out, ctx);
  EXPECT_TRUE(status.is_ok()) << status.to_string();
  return std::move(call.outputs);
}

// What the cpu executor computes for plan `index` of `plans` on `inputs`: the reference.
inline std::vector<std::vector<float>> cpu_reference(const std::vector<Plan>& plans, size_t index,
                                                     const std::vector<std::vector<float>>& inputs,
                                                     ComputeContext& ctx) {
  auto cpu = backends::create_cpu_executor();
  const Status compiled = cpu->compile(plans, nullptr, 0);
  EXPECT_TRUE(compiled.is_ok()) << compiled.to_string();
  if (!compiled.is_ok()) return {};
  return run(*cpu, plans[index], index, inputs, ctx);
}

// The items of a batch of `plan` (one input and one output) in slots apart from each other in one
// block of host memory (what register_host_memory is given), each slot's input a row of `whole`.
struct SlotItems {
  SlotItems(const Plan& plan, const std::vector<float>& whole)
      : batch(size_t(plan.batch)),
        in_floats(size_t(plan.values[size_t(plan.inputs[0])].element_count()) / batch),
        out_floats(size_t(plan.values[size_t(plan.outputs[0])].element_count()) / batch),
        arena((in_floats + out_floats + 16) * batch),
        in(batch),
        out(batch) {
    for (size_t i = 0; i < batch; ++i) {
      float* slot = arena.data() + i * (in_floats + out_floats + 16);
      std::copy_n(whole.data() + i * in_floats, in_floats, slot);
      in[i] = reinterpret_cast<const std::byte*>(slot);
      out[i] = reinterpret_cast<std::byte*>(slot + in_floats);
    }
    for (size_t i = 0; i < batch; ++i) {
      items.push_back({std::span(&in[i], 1), std::span(&out[i], 1)});
    }
  }
  SlotItems(const SlotItems&) = delete;  // the items point into in and out
  SlotItems& operator=(const SlotItems&) = delete;

  // The items' outputs, one after another: the batch's output.
  std::vector<float> outputs() const {
    std::vector<float> got(out_floats * batch);
    for (size_t i = 0; i < batch; ++i) {
      std::memcpy(got.data() + i * out_floats, out[i], out_floats * sizeof(float));
    }
    return got;
  }

  size_t batch = 0;
  size_t in_floats = 0;   // per item
  size_t out_floats = 0;  // per item
  std::vector<float> arena;
  std::vector<const std::byte*> in;
  std::vector<std::byte*> out;
  std::vector<Executor::ItemBuffers> items;
};

// Compiles `plans` on executors from `make` with their weights in a device store that fills its
// region (private to the executor), in one that maps a region already filled (none private), both
// under one "<device>-engine-" key, and in a host store, no place for device weights (a private
// copy, the store left empty). `host_segment` names the host store's segment.
inline void expect_weights_placed(const std::function<std::unique_ptr<Executor>()>& make,
                                  const std::vector<Plan>& plans, const std::string& device,
                                  const std::string& host_segment) {
  FakeDeviceStore filled(false);
  FakeDeviceStore mapped(true);
  auto first = make();
  ASSERT_NE(first, nullptr);
  ASSERT_TRUE(first->compile(plans, &filled, 0).is_ok());
  auto second = make();
  ASSERT_NE(second, nullptr);
  ASSERT_TRUE(second->compile(plans, &mapped, 0).is_ok());
  ASSERT_EQ(filled.keys.size(), 1u);
  EXPECT_EQ(filled.keys, mapped.keys);  // the same region name for the same model
  EXPECT_EQ(filled.keys[0].rfind(device + "-engine-", 0), 0u);
  EXPECT_GT(first->weights().bytes, 0u);
  EXPECT_EQ(first->weights().private_bytes, first->weights().bytes);
  EXPECT_EQ(second->weights().private_bytes, 0u);
  auto host_store = backends::open_host_weight_store(host_segment);
  ASSERT_TRUE(host_store.is_ok());
  auto third = make();
  ASSERT_NE(third, nullptr);
  ASSERT_TRUE(third->compile(plans, host_store->get(), 0).is_ok());
  EXPECT_EQ((*host_store)->mapped_bytes(), 0u);
  EXPECT_EQ(third->weights().private_bytes, third->weights().bytes);
  backends::remove_host_weights(host_segment);
}

// Labels of the ops that are steps (a Copy is a view: no step), in order.
inline std::vector<std::string> step_labels(const Plan& plan) {
  std::vector<std::string> labels;
  for (const PlanOp& op : plan.ops) {
    if (op.kind != OpKind::kCopy) labels.push_back(op.label);
  }
  return labels;
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
  // Appends an op; the reference is valid until the next one.
  auto op = [&](OpKind kind, const std::string& label, std::vector<int> inputs,
                std::vector<int> outputs) -> PlanOp& {
    PlanOp& added = plan.ops.emplace_back();
    added.kind = kind;
    added.label = label;
    added.inputs = std::move(inputs);
    added.outputs = std::move(outputs);
    return added;
  };
  PlanOp& gemm = op(OpKind::kGemm, "gemm", {x, w, c}, {g});
  gemm.trans_b = true;
  gemm.alpha = 0.5F;
  gemm.beta = 2.0F;
  gemm.post_ops = {{.kind = PostOp::Kind::kUnary, .unary = UnaryAlg::kRelu}};
  op(OpKind::kMatMul, "matmul", {g, b3}, {m});
  // Three copies of m, stacked, then viewed as a batch of 3.
  op(OpKind::kConcat, "tile", {m, m, m}, {a}).axis = 0;
  op(OpKind::kCopy, "view", {a}, {a3});
  op(OpKind::kMatMul, "batched", {a3, bb}, {y});
  plan.inputs = {x};
  plan.outputs = {y, g};
  return plan;
}

}  // namespace sliceserve::testing
