#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "sliceserve/backends/compute_context.h"
#include "sliceserve/backends/cpu/cpu_slice.h"
#include "sliceserve/backends/cpu/cpu_topology.h"
#include "sliceserve/backends/weight_store.h"
#include "sliceserve/worker/model.h"

namespace sliceserve::worker {
namespace {

using shm::DataType;

// A single-threaded context: parallel_for is a direct call.
class InlineContext final : public backends::ComputeContext {
 public:
  explicit InlineContext(unsigned concurrency = 1) : concurrency_(concurrency) {}
  unsigned concurrency() const override { return concurrency_; }
  void parallel_for(size_t n, const std::function<void(size_t, size_t)>& fn) override {
    if (n > 0) fn(0, n);
  }

 private:
  unsigned concurrency_;
};

struct TensorDecl {
  const char* name;
  DataType dtype;
  int64_t elements;
};

shm::ModelSpec make_spec(std::initializer_list<TensorDecl> inputs,
                         std::initializer_list<TensorDecl> outputs) {
  shm::ModelSpec spec;
  for (const TensorDecl& decl : inputs) {
    const int64_t dims[] = {decl.elements};
    spec.inputs[spec.n_inputs++] = shm::make_tensor_spec(decl.name, decl.dtype, dims).value();
  }
  for (const TensorDecl& decl : outputs) {
    const int64_t dims[] = {decl.elements};
    spec.outputs[spec.n_outputs++] = shm::make_tensor_spec(decl.name, decl.dtype, dims).value();
  }
  return spec;
}

// One item's buffers laid out per spec.
struct ItemBuffers {
  explicit ItemBuffers(const shm::ModelSpec& spec) {
    for (const auto& t : spec.input_specs()) inputs.emplace_back(t.byte_size(), std::byte{0x5a});
    for (const auto& t : spec.output_specs()) outputs.emplace_back(t.byte_size(), std::byte{0x5a});
    for (auto& b : inputs) input_ptrs.push_back(b.data());
    for (auto& b : outputs) output_ptrs.push_back(b.data());
  }
  ItemIO io() const { return {input_ptrs, output_ptrs}; }
  template <typename T>
  void set_input(size_t i, const std::vector<T>& values) {
    ASSERT_EQ(values.size() * sizeof(T), inputs[i].size());
    std::memcpy(inputs[i].data(), values.data(), inputs[i].size());
  }
  template <typename T>
  std::vector<T> output(size_t j) const {
    std::vector<T> values(outputs[j].size() / sizeof(T));
    std::memcpy(values.data(), outputs[j].data(), outputs[j].size());
    return values;
  }

  std::vector<std::vector<std::byte>> inputs, outputs;
  std::vector<const std::byte*> input_ptrs;
  std::vector<std::byte*> output_ptrs;
};

std::unique_ptr<Model> make_model(const std::string& kind, const shm::ModelSpec& spec,
                                  double flops = 1e4) {
  auto model = create_model({kind, "", flops, 16}, spec);
  EXPECT_TRUE(model.is_ok()) << model.status().to_string();
  return model.is_ok() ? std::move(model).value() : nullptr;
}

TEST(SyntheticModelTest, Fp32OutputsFollowTheFormula) {
  auto spec = make_spec({{"x", DataType::kFp32, 4}},
                        {{"y", DataType::kFp32, 6}, {"z", DataType::kFp64, 2}});
  auto model = make_model("synthetic", spec);
  ASSERT_TRUE(model);
  InlineContext ctx;
  ASSERT_TRUE(model->warm_up(ctx).is_ok());
  ItemBuffers item(spec);
  item.set_input<float>(0, {1.5f, -2.0f, 0.0f, 3.25f});
  const ItemIO io = item.io();
  ASSERT_TRUE(model->run({&io, 1}, ctx).is_ok());
  // y[k] = 2 * x[k mod 4] + 1
  EXPECT_EQ(item.output<float>(0), (std::vector<float>{4.0f, -3.0f, 1.0f, 7.5f, 4.0f, -3.0f}));
  EXPECT_EQ(item.output<double>(1), (std::vector<double>{4.0, -3.0}));
}

TEST(SyntheticModelTest, IntegerOutputsSaturateAndTruncate) {
  auto spec = make_spec({{"x", DataType::kFp32, 6}}, {{"i8", DataType::kInt8, 6},
                                                      {"u16", DataType::kUint16, 6},
                                                      {"b", DataType::kBool, 6},
                                                      {"i64", DataType::kInt64, 6}});
  auto model = make_model("synthetic", spec);
  ASSERT_TRUE(model);
  ItemBuffers item(spec);
  const float nan = std::numeric_limits<float>::quiet_NaN();
  item.set_input<float>(0, {100.0f, -100.0f, 1.7f, -1.7f, -0.5f, nan});
  const ItemIO io = item.io();
  InlineContext ctx;
  ASSERT_TRUE(model->run({&io, 1}, ctx).is_ok());
  // 2x+1 = 201, -199, 4.4, -2.4, 0, NaN
  EXPECT_EQ(item.output<int8_t>(0), (std::vector<int8_t>{127, -128, 4, -2, 0, 0}));
  EXPECT_EQ(item.output<uint16_t>(1), (std::vector<uint16_t>{201, 0, 4, 0, 0, 0}));
  EXPECT_EQ(item.output<uint8_t>(2), (std::vector<uint8_t>{1, 1, 1, 1, 0, 0}));
  EXPECT_EQ(item.output<int64_t>(3), (std::vector<int64_t>{201, -199, 4, -2, 0, 0}));
}

TEST(SyntheticModelTest, IntegerBoolAndHalfInputs) {
  auto spec = make_spec({{"x", DataType::kUint8, 3}}, {{"y", DataType::kInt32, 3}});
  auto model = make_model("synthetic", spec);
  ASSERT_TRUE(model);
  InlineContext ctx;
  {
    ItemBuffers item(spec);
    item.set_input<uint8_t>(0, {0, 7, 255});
    const ItemIO io = item.io();
    ASSERT_TRUE(model->run({&io, 1}, ctx).is_ok());
    EXPECT_EQ(item.output<int32_t>(0), (std::vector<int32_t>{1, 15, 511}));
  }
  auto bool_spec = make_spec({{"x", DataType::kBool, 2}}, {{"y", DataType::kUint64, 2}});
  auto bool_model = make_model("synthetic", bool_spec);
  ASSERT_TRUE(bool_model);
  {
    ItemBuffers item(bool_spec);
    item.set_input<uint8_t>(0, {0, 1});
    const ItemIO io = item.io();
    ASSERT_TRUE(bool_model->run({&io, 1}, ctx).is_ok());
    EXPECT_EQ(item.output<uint64_t>(0), (std::vector<uint64_t>{1, 3}));
  }
  // FP16 is IEEE binary16: 1.5 (0x3e00) -> 4.0 (0x4400); -0.25 (0xb400) -> 0.5 (0x3800);
  // 40000 (0x78e2) -> 80001 overflows to inf (0x7c00); 2^-24 (0x0001) -> 1 (0x3c00).
  auto half_spec = make_spec({{"x", DataType::kFp16, 4}},
                             {{"y", DataType::kFp16, 4}, {"f", DataType::kFp32, 4}});
  auto half_model = make_model("synthetic", half_spec);
  ASSERT_TRUE(half_model);
  {
    ItemBuffers item(half_spec);
    item.set_input<uint16_t>(0, {0x3e00, 0xb400, 0x78e2, 0x0001});
    const ItemIO io = item.io();
    ASSERT_TRUE(half_model->run({&io, 1}, ctx).is_ok());
    EXPECT_EQ(item.output<uint16_t>(0), (std::vector<uint16_t>{0x4400, 0x3800, 0x7c00, 0x3c00}));
    EXPECT_EQ(item.output<float>(1),
              (std::vector<float>{4.0f, 0.5f, 80001.0f, float(2.0 * std::ldexp(1.0, -24) + 1)}));
  }
}

TEST(SyntheticModelTest, EveryItemOfABatchOnEveryThreadCount) {
  auto spec = make_spec({{"x", DataType::kInt16, 2}}, {{"y", DataType::kInt16, 3}});
  auto model = make_model("synthetic", spec, 2e5);
  ASSERT_TRUE(model);
  auto slice = backends::create_cpu_slice({100, "process", 0, 0});
  ASSERT_TRUE(slice.is_ok()) << slice.status().to_string();
  ASSERT_TRUE(model->warm_up(**slice).is_ok());
  std::vector<std::unique_ptr<ItemBuffers>> items;
  std::vector<ItemIO> batch;
  for (int16_t i = 0; i < 7; ++i) {
    items.push_back(std::make_unique<ItemBuffers>(spec));
    items.back()->set_input<int16_t>(0, {i, int16_t(-i)});
    batch.push_back(items.back()->io());
  }
  ASSERT_TRUE(model->run(batch, **slice).is_ok());
  for (int16_t i = 0; i < 7; ++i) {
    EXPECT_EQ(items[size_t(i)]->output<int16_t>(0),
              (std::vector<int16_t>{int16_t(2 * i + 1), int16_t(1 - 2 * i), int16_t(2 * i + 1)}));
  }
}

// Wall time of one run of `batch` on `ctx`, in seconds.
// What two plain threads gain over one on this machine right now, on the synthetic kind's own
// work (an FMA pass over a 256 KiB working set per thread). Under load from other tests, or on
// two vCPUs that share a core, there may be no second core to gain.
double raw_two_thread_speedup() {
  auto passes = [](int count) {
    std::vector<float> x(64 * 1024, 0.25F);
    for (int p = 0; p < count; ++p) {
      for (float& v : x) v = 0.5F * v + 0.5F;
    }
    volatile float sink = x[0];  // keeps the loop
    (void)sink;
  };
  constexpr int kPasses = 4000;
  auto seconds = [](auto&& fn) {
    const auto start = std::chrono::steady_clock::now();
    fn();
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  };
  const double one = seconds([&] { passes(kPasses); });
  const double two = seconds([&] {
    std::thread other(passes, kPasses / 2);
    passes(kPasses / 2);
    other.join();
  });
  return one / two;
}

double time_run(Model& model, std::span<const ItemIO> batch, backends::ComputeContext& ctx) {
  const auto start = std::chrono::steady_clock::now();
  EXPECT_TRUE(model.run(batch, ctx).is_ok());
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

TEST(SyntheticModelTest, MoreThreadsRunAFixedBatchFaster) {
  auto cpus = backends::process_cpus();
  ASSERT_TRUE(cpus.is_ok());
  if (cpus->size() < 2) GTEST_SKIP() << "needs two cpus";
  auto spec = make_spec({{"x", DataType::kFp32, 16}}, {{"y", DataType::kFp32, 16}});
  std::vector<std::unique_ptr<ItemBuffers>> items;
  std::vector<ItemIO> batch;
  for (int i = 0; i < 4; ++i) {
    items.push_back(std::make_unique<ItemBuffers>(spec));
    batch.push_back(items.back()->io());
  }

  // Calibrate flops so the single-thread batch takes about 100 ms on this build, then time the
  // model on one whole core vs both cores of a two-core machine (neither is throttled). The slices
  // live for one measurement; destroyed in reverse order, the test thread gets its affinity back.
  std::unique_ptr<Model> model;
  double t1 = 1e9;
  double t2 = 1e9;
  auto measure = [&] {
    auto one = backends::create_cpu_slice({50, "process", 2, 0});
    ASSERT_TRUE(one.is_ok()) << one.status().to_string();
    ASSERT_EQ((*one)->concurrency(), 1u);
    auto two = backends::create_cpu_slice({100, "process", 2, 0});
    ASSERT_TRUE(two.is_ok()) << two.status().to_string();
    ASSERT_EQ((*two)->concurrency(), 2u);
    if (!model) {
      const double probe_flops = 4e6;
      auto probe = make_model("synthetic", spec, probe_flops);
      ASSERT_TRUE(probe);
      ASSERT_TRUE(probe->warm_up(**one).is_ok());
      double probe_time = 1e9;
      for (int i = 0; i < 3; ++i) {
        probe_time = std::min(probe_time, time_run(*probe, batch, **one));
      }
      const double flops = std::clamp(probe_flops * 0.1 / std::max(probe_time, 1e-6), 1e6, 1e11);
      model = make_model("synthetic", spec, flops);
      ASSERT_TRUE(model);
    }
    ASSERT_TRUE(model->warm_up(**one).is_ok());
    ASSERT_TRUE(model->warm_up(**two).is_ok());
    // Best of three, interleaved so that a burst of load elsewhere on the machine hits both
    // sides; up to three rounds while the machine is too busy to show the speed-up.
    t1 = t2 = 1e9;
    for (int round = 0; round < 3 && !(t1 / t2 >= 1.3); ++round) {
      for (int i = 0; i < 3; ++i) {
        t1 = std::min(t1, time_run(*model, batch, **one));
        t2 = std::min(t2, time_run(*model, batch, **two));
      }
    }
    two->reset();
    one->reset();
  };
  measure();
  // The slice fell short: a failure only if plain threads do better on the machine as it is, and
  // the slice still does not when measured again after them (on a shared 2-core guest the other
  // core can be taken for a second at a time).
  for (int attempt = 0; attempt < 2 && !HasFatalFailure() && t1 / t2 < 1.3; ++attempt) {
    const double raw = raw_two_thread_speedup();
    if (raw < 1.3) {
      GTEST_SKIP() << "the machine is too busy to show a speed-up (two plain threads: " << raw
                   << "x; the slice: " << t1 / t2 << "x)";
    }
    measure();
  }
  if (HasFatalFailure()) return;
  RecordProperty("one_thread_ms", std::to_string(t1 * 1e3));
  RecordProperty("two_threads_ms", std::to_string(t2 * 1e3));
  EXPECT_GE(t1 / t2, 1.3) << "1 thread " << t1 * 1e3 << " ms, 2 threads " << t2 * 1e3 << " ms";
}

TEST(SyntheticModelTest, WeightsAreLoadedAndDoNotChangeTheOutputs) {
  auto spec = make_spec({{"x", DataType::kFp32, 4}}, {{"y", DataType::kFp32, 4}});
  ModelOptions options{"synthetic", "", 2e6, 16};
  options.weights_mb = 1;
  auto model = create_model(options, spec);  // no store: a private copy
  ASSERT_TRUE(model.is_ok()) << model.status().to_string();
  EXPECT_EQ((*model)->weights().bytes, 1u << 20);
  EXPECT_EQ((*model)->weights().private_bytes, 1u << 20);
  auto slice = backends::create_cpu_slice({100, "process", 0, 0});
  ASSERT_TRUE(slice.is_ok()) << slice.status().to_string();
  ASSERT_TRUE((*model)->warm_up(**slice).is_ok());
  for (int round = 0; round < 3; ++round) {  // the threads walk on through the weights
    ItemBuffers item(spec);
    item.set_input<float>(0, {1.5f, -2.0f, 0.0f, float(round)});
    const ItemIO io = item.io();
    ASSERT_TRUE((*model)->run({&io, 1}, **slice).is_ok());
    EXPECT_EQ(item.output<float>(0), (std::vector<float>{4.0f, -3.0f, 1.0f, 2.0f * round + 1}));
  }
  auto plain = make_model("synthetic", spec);
  ASSERT_TRUE(plain);
  EXPECT_EQ(plain->weights().bytes, 0u);
}

TEST(SyntheticModelTest, ASecondModelOfTheSegmentMapsTheFirstOnesWeights) {
  const std::string segment = "/sliceserve.test" + std::to_string(getpid()) + ".synthw";
  backends::remove_host_weights(segment);
  auto spec = make_spec({{"x", DataType::kFp32, 4}}, {{"y", DataType::kFp32, 4}});
  ModelOptions options{"synthetic", "", 1e5, 16};
  options.weights_mb = 2;
  auto live_store = backends::open_host_weight_store(segment);
  auto shadow_store = backends::open_host_weight_store(segment);
  ASSERT_TRUE(live_store.is_ok() && shadow_store.is_ok());
  auto live = create_model(options, spec, live_store->get());
  ASSERT_TRUE(live.is_ok()) << live.status().to_string();
  auto shadow = create_model(options, spec, shadow_store->get());
  ASSERT_TRUE(shadow.is_ok()) << shadow.status().to_string();
  EXPECT_EQ((*live)->weights().bytes, 2u << 20);
  EXPECT_EQ((*live)->weights().private_bytes, 2u << 20);
  EXPECT_EQ((*shadow)->weights().bytes, 2u << 20);
  EXPECT_EQ((*shadow)->weights().private_bytes, 0u);
  EXPECT_EQ((*shadow_store)->private_bytes(), 0u);
  EXPECT_EQ((*shadow_store)->mapped_bytes(), 2u << 20);

  // The region holds the documented pattern, in [0, 1].
  auto region = (*shadow_store)->get_or_create("synthetic", 2u << 20, [](std::span<std::byte>) {
    return Status(ErrorCode::kInternal, "must not fill");
  });
  ASSERT_TRUE(region.is_ok());
  const float* w = reinterpret_cast<const float*>(region->data);
  for (size_t j = 0; j < region->bytes / sizeof(float); j += 997) {
    ASSERT_EQ(w[j], synthetic_weight(j)) << j;
    ASSERT_GE(w[j], 0.0f);
    ASSERT_LE(w[j], 1.0f);
  }
  InlineContext ctx(2);
  ItemBuffers item(spec);
  item.set_input<float>(0, {1, 2, 3, 4});
  const ItemIO io = item.io();
  ASSERT_TRUE((*shadow)->run({&io, 1}, ctx).is_ok());
  EXPECT_EQ(item.output<float>(0), (std::vector<float>{3, 5, 7, 9}));
  backends::remove_host_weights(segment);
}

TEST(SyntheticModelTest, LoadDelayEmulatesASlowLoadAndStopCutsItShort) {
  auto spec = make_spec({{"x", DataType::kFp32, 4}}, {{"y", DataType::kFp32, 4}});
  ModelOptions options{"synthetic", "", 1e4, 16};
  options.load_delay_ms = 150;
  auto start = std::chrono::steady_clock::now();
  auto model = create_model(options, spec);
  ASSERT_TRUE(model.is_ok()) << model.status().to_string();
  EXPECT_GE(std::chrono::steady_clock::now() - start, std::chrono::milliseconds(150));

  std::atomic<bool> stop{false};
  options.load_delay_ms = 60'000;
  options.stop = &stop;
  std::thread stopper([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    stop.store(true);
  });
  start = std::chrono::steady_clock::now();
  auto stopped = create_model(options, spec);
  stopper.join();
  EXPECT_EQ(stopped.status().code(), ErrorCode::kUnavailable);
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(5));
}

TEST(NullModelTest, CopiesInputZeroToOutputZero) {
  auto spec = make_spec({{"x", DataType::kUint8, 6}, {"w", DataType::kUint8, 2}},
                        {{"y", DataType::kUint8, 4}, {"z", DataType::kUint8, 3}});
  auto model = make_model("null", spec);
  ASSERT_TRUE(model);
  InlineContext ctx;
  ASSERT_TRUE(model->warm_up(ctx).is_ok());
  ItemBuffers item(spec);
  item.set_input<uint8_t>(0, {1, 2, 3, 4, 5, 6});
  const ItemIO io = item.io();
  ASSERT_TRUE(model->run({&io, 1}, ctx).is_ok());
  EXPECT_EQ(item.output<uint8_t>(0), (std::vector<uint8_t>{1, 2, 3, 4}));  // truncated
  EXPECT_EQ(item.output<uint8_t>(1), (std::vector<uint8_t>{0, 0, 0}));     // zero-filled

  auto wide = make_spec({{"x", DataType::kFp32, 1}}, {{"y", DataType::kFp32, 3}});
  auto wide_model = make_model("null", wide);
  ASSERT_TRUE(wide_model);
  ItemBuffers wide_item(wide);
  wide_item.set_input<float>(0, {2.5f});
  const ItemIO wide_io = wide_item.io();
  ASSERT_TRUE(wide_model->run({&wide_io, 1}, ctx).is_ok());
  EXPECT_EQ(wide_item.output<float>(0), (std::vector<float>{2.5f, 0.0f, 0.0f}));
}

TEST(ModelFactoryTest, RejectsInvalidOptions) {
  auto spec = make_spec({{"x", DataType::kFp32, 4}}, {{"y", DataType::kFp32, 4}});
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const ModelOptions bad[] = {
      {"", "", 1e6, 256},
      {"resnet", "", 1e6, 256},
      {"onnx", "", 1e6, 256},
      {"synthetic", "", -1, 256},
      {"synthetic", "", nan, 256},
      {"synthetic", "", 1e6, 0},
      {"synthetic", "", 1e6, (1u << 20) + 1},
      {"synthetic", "", 1e6, 256, (1u << 16) + 1},
      {"synthetic", "", 1e6, 256, 0, 600'001},
  };
  for (const ModelOptions& options : bad) {
    auto model = create_model(options, spec);
    ASSERT_FALSE(model.is_ok()) << options.kind;
    EXPECT_EQ(model.status().code(), ErrorCode::kInvalidArgument) << model.status().to_string();
  }
  auto onnx = create_model({"onnx", "no-such-model.onnx", 0, 1}, spec);
  EXPECT_EQ(onnx.status().code(), ErrorCode::kNotFound) << onnx.status().to_string();

  auto no_inputs = make_spec({}, {{"y", DataType::kFp32, 4}});
  EXPECT_EQ(create_model({"synthetic", "", 1e6, 256}, no_inputs).status().code(),
            ErrorCode::kInvalidArgument);
  EXPECT_TRUE(create_model({"null", "", 1e6, 256}, no_inputs).is_ok());
}

TEST(ModelFactoryTest, RunRejectsItemsThatDoNotMatchTheSpec) {
  auto spec = make_spec({{"x", DataType::kFp32, 4}}, {{"y", DataType::kFp32, 4}});
  InlineContext ctx;
  for (const char* kind : {"null", "synthetic"}) {
    auto model = make_model(kind, spec);
    ASSERT_TRUE(model);
    std::vector<std::byte> out(16);
    std::byte* outputs[] = {out.data()};
    const ItemIO missing_input{{}, outputs};
    EXPECT_EQ(model->run({&missing_input, 1}, ctx).code(), ErrorCode::kInvalidArgument) << kind;
    const std::byte* null_inputs[] = {nullptr};
    const ItemIO null_input{null_inputs, outputs};
    EXPECT_EQ(model->run({&null_input, 1}, ctx).code(), ErrorCode::kInvalidArgument) << kind;
    EXPECT_TRUE(model->run({}, ctx).is_ok()) << kind;  // an empty batch is fine
  }
}

}  // namespace
}  // namespace sliceserve::worker
