// The HIP executor's host code on an emulated device, against the cpu executor: every torchvision
// export under models/ and a hand-made Gemm/MatMul plan, run through the executor's real compile
// and run paths with the HIP runtime replaced by a recording fake whose "device" is host memory
// (support/emulated_hip_runtime.h): module launches run the kernels' own bodies on the host by
// name, copies are memcpy, events and streams are handles whose use is recorded. What is checked
// here is everything but the GPU: buffer placement, every launch's parameters, the stream of every
// call, the events that order per-layer streams (and that none is recorded without them), copies
// per item from registered memory, per-step timing, where the weights go, and the checked calls'
// error text.

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdlib>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "device_kernels.h"
#include "hip_executor_internal.h"
#include "hip_runtime_api.h"
#include "sliceserve/backends/hip/hip_executor.h"
#include "support/emulated_hip_test.h"
#include "support/torchvision_models.h"

namespace sliceserve::backends {
namespace {

using testing::CallBuffers;
using testing::cpu_reference;
using testing::expect_close;
using testing::expect_weights_placed;
using testing::gemm_matmul_plan;
using testing::hip_device;
using testing::HipCopy;
using testing::kEmulatedCodeObject;
using testing::plans_of;
using testing::QueueContext;
using testing::random_inputs;
using testing::run;
using testing::SlotItems;
using testing::step_labels;

class HipExecutorEmulatedTest : public testing::EmulatedHipTest {
 protected:
  void TearDown() override {
    EmulatedHipTest::TearDown();
    EXPECT_EQ(hip_device().modules, 0) << "module leaked";
  }
};

hipStream_t stream_of(uintptr_t value) { return reinterpret_cast<hipStream_t>(value); }

TEST_F(HipExecutorEmulatedTest, EveryTorchvisionExportMatchesTheCpuExecutorOnTheContextsStream) {
  const auto files = testing::reduced_models({"32"});
  if (files.empty()) GTEST_SKIP() << "no models/NAME-32.onnx (scripts/models builds them)";
  QueueContext ctx;  // a CuMaskSlice's device queue: no context, its stream, its pool index
  ctx.queue = {nullptr, stream_of(0x7000), 1};
  for (const auto& file : files) {
    SCOPED_TRACE(file.filename().string());
    auto model = plans_of(file, 2);
    ASSERT_NE(model, nullptr);
    hip_device() = testing::EmulatedHip{};
    auto cpu = create_cpu_executor();
    ASSERT_TRUE(cpu->compile(model->plans, nullptr, 0).is_ok());
    auto gpu = hip();
    ASSERT_NE(gpu, nullptr);
    EXPECT_EQ(hip_device().image, kEmulatedCodeObject);
    const Status compiled = gpu->compile(model->plans, nullptr, 0);
    ASSERT_TRUE(compiled.is_ok()) << compiled.to_string();
    EXPECT_EQ(gpu->weights().private_bytes, gpu->weights().bytes);
    const size_t compile_copies = hip_device().copies.size();
    for (size_t index = 0; index < model->plans.size(); ++index) {
      SCOPED_TRACE("batch " + std::to_string(model->plans[index].batch));
      const auto inputs = random_inputs(model->plans[index], unsigned(index) + 1);
      const auto want = run(*cpu, model->plans[index], index, inputs, *cpu_slice_);
      expect_close(run(*gpu, model->plans[index], index, inputs, ctx), want, "hip");
    }
    // Every launch, copy and synchronisation of the runs went to the slice's stream, and with no
    // per-layer queue no event exists.
    ASSERT_FALSE(hip_device().launch_streams.empty());
    for (hipStream_t s : hip_device().launch_streams) EXPECT_EQ(s, ctx.queue.stream);
    for (size_t i = compile_copies; i < hip_device().copies.size(); ++i) {
      EXPECT_EQ(hip_device().copies[i].stream, ctx.queue.stream);
    }
    EXPECT_EQ(hip_device().synchronized.back(), ctx.queue.stream);
    EXPECT_EQ(hip_device().events_created, 0);
    EXPECT_TRUE(hip_device().records.empty());
    EXPECT_TRUE(hip_device().waits.empty());
    // Convolutions and GEMMs run on the library's own kernels.
    const std::set<DeviceKernel> kinds(hip_device().launched.begin(), hip_device().launched.end());
    EXPECT_TRUE(kinds.count(DeviceKernel::ss_conv)) << "no convolution launched";
  }
}

TEST_F(HipExecutorEmulatedTest, GemmWithBroadcastBiasAndBatchedMatMulMatchTheCpuExecutor) {
  std::deque<std::vector<float>> constants;
  const std::vector<Plan> plans = {gemm_matmul_plan(constants)};
  auto gpu = hip();
  ASSERT_NE(gpu, nullptr);
  const Status compiled = gpu->compile(plans, nullptr, 0);
  ASSERT_TRUE(compiled.is_ok()) << compiled.to_string();
  const auto inputs = random_inputs(plans[0], 7);
  expect_close(run(*gpu, plans[0], 0, inputs, *cpu_slice_),
               cpu_reference(plans, 0, inputs, *cpu_slice_), "gemm and matmul");
  EXPECT_EQ(
      std::count(hip_device().launched.begin(), hip_device().launched.end(), DeviceKernel::ss_gemm),
      3);
  // A host context has no device queue: the executor's own stream.
  ASSERT_FALSE(hip_device().launch_streams.empty());
  EXPECT_NE(hip_device().launch_streams[0], nullptr);
}

// The stream each step is to run on under `ctx`.
std::vector<hipStream_t> step_streams(const QueueContext& ctx,
                                      const std::vector<std::string>& labels) {
  std::vector<hipStream_t> streams;
  for (const std::string& label : labels) {
    const auto found = ctx.layers.find(label);
    streams.push_back(
        static_cast<hipStream_t>((found == ctx.layers.end() ? ctx.queue : found->second).stream));
  }
  return streams;
}

TEST_F(HipExecutorEmulatedTest, LayersOnOtherStreamsAreOrderedWithPooledEventsAndEndOnTheSlice) {
  const auto files = testing::reduced_models({"32"});
  if (files.empty()) GTEST_SKIP() << "no models/NAME-32.onnx (scripts/models builds them)";
  auto model = plans_of(files.front(), 1);
  ASSERT_NE(model, nullptr);
  const Plan& plan = model->plans[0];
  const std::vector<std::string> labels = step_labels(plan);
  ASSERT_GE(labels.size(), 4u);
  auto gpu = hip();
  ASSERT_NE(gpu, nullptr);
  ASSERT_TRUE(gpu->compile(model->plans, nullptr, 0).is_ok());
  const auto inputs = random_inputs(plan, 5);
  const auto want = cpu_reference(model->plans, 0, inputs, *cpu_slice_);

  // Right-sized: steps 1 and 2 on a narrower stream, the last step on another, the rest on the
  // slice's (ops lowered from one node share its label, so the streams are worked out per step).
  QueueContext ctx;
  const hipStream_t main = stream_of(0x7000);
  ctx.queue = {nullptr, main, 0};
  ctx.layers[labels[1]] = {nullptr, stream_of(0x7100), 3};
  ctx.layers[labels[2]] = {nullptr, stream_of(0x7100), 3};
  ctx.layers[labels.back()] = {nullptr, stream_of(0x7200), 4};
  const std::vector<hipStream_t> streams = step_streams(ctx, labels);
  // Each change of stream (and the way back to the slice's at the end) is one ordering.
  std::vector<std::pair<hipStream_t, hipStream_t>> expected;
  hipStream_t previous = main;
  for (hipStream_t s : streams) {
    if (s != previous) expected.emplace_back(previous, s);
    previous = s;
  }
  if (previous != main) expected.emplace_back(previous, main);
  ASSERT_GE(expected.size(), 3u);
  for (int round = 0; round < 2; ++round) {
    SCOPED_TRACE("round " + std::to_string(round));
    hip_device().records.clear();
    hip_device().waits.clear();
    ctx.asked.clear();
    expect_close(run(*gpu, plan, 0, inputs, ctx), want, "right-sized");
    EXPECT_EQ(ctx.asked, labels);  // every step asked for its layer's queue, in order
    ASSERT_EQ(hip_device().records.size(), expected.size());
    ASSERT_EQ(hip_device().waits.size(), expected.size());
    for (size_t i = 0; i < expected.size(); ++i) {
      // Recorded on the producer's stream, waited on by the consumer's, the same event.
      EXPECT_EQ(hip_device().records[i].second, expected[i].first) << i;
      EXPECT_EQ(hip_device().waits[i].first, expected[i].second) << i;
      EXPECT_EQ(hip_device().waits[i].second, hip_device().records[i].first) << i;
      EXPECT_EQ(hip_device().event_flags.at(hip_device().records[i].first), hipEventDisableTiming);
    }
    // The run ends on the slice's stream: the output copy and the synchronisation.
    EXPECT_EQ(hip_device().copies.back().stream, main);
    EXPECT_EQ(hip_device().synchronized.back(), main);
  }
  // One event per ordering, created in the first round and reused in the second.
  EXPECT_EQ(hip_device().events_created, int(expected.size()));
}

TEST_F(HipExecutorEmulatedTest, ItemsGoStraightBetweenRegisteredSlotsAndTheDevice) {
  const auto files = testing::reduced_models({"32"});
  if (files.empty()) GTEST_SKIP() << "no models/NAME-32.onnx (scripts/models builds them)";
  auto model = plans_of(files.front(), 3);
  ASSERT_NE(model, nullptr);
  auto gpu = hip();
  ASSERT_NE(gpu, nullptr);
  ASSERT_TRUE(gpu->compile(model->plans, nullptr, 0).is_ok());
  const Plan& plan = model->plans[2];  // batch 3
  ASSERT_EQ(plan.inputs.size(), 1u);
  ASSERT_EQ(plan.outputs.size(), 1u);
  const auto whole = random_inputs(plan, 3);
  SlotItems slots(plan, whole[0]);
  std::vector<float>& arena = slots.arena;
  ASSERT_TRUE(gpu->register_host_memory(std::as_writable_bytes(std::span(arena))).is_ok());
  ASSERT_EQ(hip_device().registered.size(), 1u);
  EXPECT_EQ(hip_device().registered[0].first, arena.data());
  EXPECT_EQ(hip_device().registered[0].second, arena.size() * sizeof(float));
  hip_device().copies.clear();
  ASSERT_TRUE(gpu->runs_items());
  QueueContext ctx;
  ctx.queue = {nullptr, stream_of(0x7000), 0};
  const Status ran = gpu->run_items(2, slots.items, ctx);
  ASSERT_TRUE(ran.is_ok()) << ran.to_string();
  // One copy in and one out per item, in from the registered slots, all on the slice's stream.
  int h2d = 0, d2h = 0;
  const auto* begin = reinterpret_cast<const std::byte*>(arena.data());
  const auto* end = begin + arena.size() * sizeof(float);
  for (const HipCopy& c : hip_device().copies) {
    EXPECT_EQ(c.stream, ctx.queue.stream);
    if (c.kind == hipMemcpyHostToDevice) {
      ++h2d;
      const auto* src = static_cast<const std::byte*>(c.src);
      EXPECT_TRUE(src >= begin && src + c.bytes <= end) << "a copy from outside the slots";
      EXPECT_EQ(c.bytes, slots.in_floats * sizeof(float));
    } else {
      ++d2h;
    }
  }
  EXPECT_EQ(h2d, 3);
  EXPECT_EQ(d2h, 3);
  expect_close({slots.outputs()}, run(*gpu, plan, 2, whole, ctx), "items");
  // A batch of the wrong size is refused before anything is copied.
  hip_device().copies.clear();
  EXPECT_FALSE(gpu->run_items(1, slots.items, ctx).is_ok());
  EXPECT_TRUE(hip_device().copies.empty());
  gpu.reset();
  EXPECT_EQ(hip_device().unregistered, 1);
}

TEST_F(HipExecutorEmulatedTest, ProfileRunTimesEveryStepWithDeviceEventsOnItsStream) {
  const auto files = testing::reduced_models({"32"});
  if (files.empty()) GTEST_SKIP() << "no models/NAME-32.onnx (scripts/models builds them)";
  auto model = plans_of(files.front(), 1);
  ASSERT_NE(model, nullptr);
  const Plan& plan = model->plans[0];
  const std::vector<std::string> labels = step_labels(plan);
  auto gpu = hip();
  ASSERT_NE(gpu, nullptr);
  ASSERT_TRUE(gpu->compile(model->plans, nullptr, 0).is_ok());
  const auto inputs = random_inputs(plan, 11);
  QueueContext ctx;
  ctx.queue = {nullptr, stream_of(0x7000), 0};
  ctx.layers[labels[0]] = {nullptr, stream_of(0x7100), 2};
  CallBuffers call(plan, inputs);
  auto timings = gpu->profile_run(0, call.in, call.out, ctx);
  ASSERT_TRUE(timings.is_ok()) << timings.status().to_string();
  ASSERT_EQ(timings->size(), labels.size());
  for (size_t s = 0; s < labels.size(); ++s) {
    EXPECT_EQ((*timings)[s].label, labels[s]);
    EXPECT_DOUBLE_EQ((*timings)[s].ms, 0.25);
  }
  expect_close(call.outputs, cpu_reference(model->plans, 0, inputs, *cpu_slice_), "profiled run");
  // Timing pairs (events that time) around each step on its own stream: the first step's on the
  // right-sized stream, after the ordering event that moved the run there.
  std::vector<std::pair<hipEvent_t, hipStream_t>> timing;
  for (const auto& record : hip_device().records) {
    if (hip_device().event_flags.at(record.first) == hipEventDefault) timing.push_back(record);
  }
  ASSERT_EQ(timing.size(), 2 * labels.size());
  const std::vector<hipStream_t> streams = step_streams(ctx, labels);
  EXPECT_EQ(streams[0], stream_of(0x7100));
  for (size_t s = 0; s < labels.size(); ++s) {
    EXPECT_EQ(timing[2 * s].second, streams[s]) << labels[s];
    EXPECT_EQ(timing[2 * s + 1].second, streams[s]) << labels[s];
  }
  // A second profile reuses the pooled events.
  const int created = hip_device().events_created;
  ASSERT_TRUE(gpu->profile_run(0, call.in, call.out, ctx).is_ok());
  EXPECT_EQ(hip_device().events_created, created);
}

TEST_F(HipExecutorEmulatedTest, WeightsGoToADeviceStoreAndAMappedRegionIsNotPrivate) {
  const auto files = testing::reduced_models({"32"});
  if (files.empty()) GTEST_SKIP() << "no models/NAME-32.onnx (scripts/models builds them)";
  auto model = plans_of(files.front(), 1);
  ASSERT_NE(model, nullptr);
  expect_weights_placed([this] { return hip(); }, model->plans, "hip",
                        "/sliceserve.test-hip-emulated.m");
}

TEST_F(HipExecutorEmulatedTest, FailedCallsSayTheCallTheRuntimesTextAndWhere) {
  const auto files = testing::reduced_models({"32"});
  if (files.empty()) GTEST_SKIP() << "no models/NAME-32.onnx (scripts/models builds them)";
  auto model = plans_of(files.front(), 1);
  ASSERT_NE(model, nullptr);
  auto gpu = hip();
  hip_device().fail_malloc = hipErrorOutOfMemory;
  const Status compiled = gpu->compile(model->plans, nullptr, 0);
  hip_device().fail_malloc = hipSuccess;
  ASSERT_FALSE(compiled.is_ok());
  const std::string message = compiled.message();
  EXPECT_NE(message.find("hipMalloc(&private_weights_, host.size()): hipErrorOutOfMemory: out of "
                         "memory at "),
            std::string::npos)
      << message;
  EXPECT_NE(message.find("hip_executor.cpp:"), std::string::npos) << message;
  gpu.reset();
  // A kernel missing from the code object fails the executor's creation, naming it.
  hip_device().unknown_kernel = true;
  auto missing = create_hip_executor(api_, 0, kEmulatedCodeObject);
  ASSERT_FALSE(missing.is_ok());
  EXPECT_EQ(missing.status().message().rfind("HIP kernel ss_gemm: hipModuleGetFunction(", 0), 0u)
      << missing.status().message();
  // No code object (a build whose hipcc could not make one): kUnavailable, before any call.
  auto none = create_hip_executor(api_, 0, {});
  ASSERT_FALSE(none.is_ok());
  EXPECT_EQ(none.status().code(), ErrorCode::kUnavailable);
  EXPECT_EQ(none.status().message().rfind("this build has no HIP kernels", 0), 0u);
}

TEST_F(HipExecutorEmulatedTest, TheRealExecutorSaysWhenThereIsNoHipDevice) {
  auto executor = create_hip_executor(0);
  if (executor.is_ok()) GTEST_SKIP() << "this machine has a HIP device";
  EXPECT_EQ(executor.status().code(), ErrorCode::kUnavailable);
  EXPECT_EQ(executor.status().message().rfind("no HIP device: ", 0), 0u)
      << executor.status().message();
}

}  // namespace
}  // namespace sliceserve::backends
