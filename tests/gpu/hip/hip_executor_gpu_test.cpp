// The HIP executor on a real AMD GPU against the cpu executor: a torchvision export (resnet18 at
// 32x32, from scripts/models) through the engine on "hip:0", at batch 1 and 2, on a CU-masked
// stream of a cumask slice at two pool entries (the instant resize), item by item from registered
// memory, profiled per op, and right-sized (every other layer on a stream of the fewest CUs, at
// both entries). Skips without a device (label gpu).

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "sliceserve/backends/cpu/cpu_slice.h"
#include "sliceserve/backends/hip/cu_mask_slice.h"
#include "sliceserve/backends/hip/hip_runtime.h"
#include "sliceserve/worker/engine/engine.h"

namespace sliceserve::worker::engine {
namespace {

std::vector<float> random_floats(size_t n, unsigned seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist;
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

size_t elements(const std::vector<int64_t>& dims) {
  size_t n = 1;
  for (int64_t d : dims) n *= size_t(d);
  return n;
}

std::vector<float> run(Engine& engine, int64_t batch, const std::vector<float>& x,
                       backends::ComputeContext& ctx) {
  std::vector<float> y(elements(engine.output_shape(0, batch)));
  const std::byte* in[] = {reinterpret_cast<const std::byte*>(x.data())};
  std::byte* out[] = {reinterpret_cast<std::byte*>(y.data())};
  const Status ran = engine.run(batch, in, out, ctx);
  EXPECT_TRUE(ran.is_ok()) << ran.to_string();
  return y;
}

void expect_close(const std::vector<float>& got, const std::vector<float>& want) {
  ASSERT_EQ(got.size(), want.size());
  float scale = 1e-6F, worst = 0;
  for (float w : want) scale = std::max(scale, std::abs(w));
  for (size_t i = 0; i < got.size(); ++i) worst = std::max(worst, std::abs(got[i] - want[i]));
  EXPECT_LE(worst, 1e-4F * scale);
}

TEST(HipExecutorGpuTest, ATorchvisionModelMatchesTheCpuOnEveryPoolEntry) {
  auto runtime = backends::load_hip_runtime();
  if (!runtime.is_ok()) GTEST_SKIP() << runtime.status().to_string();
  const std::string path = std::string(SLICESERVE_SOURCE_DIR) + "/models/resnet18-32.onnx";
  if (!std::filesystem::exists(path)) GTEST_SKIP() << "no " << path << " (scripts/models)";
  backends::CuMaskSliceOptions options;  // device 0, the whole device, spread
  auto slice = backends::create_cu_mask_slice(options);
  ASSERT_TRUE(slice.is_ok()) << slice.status().to_string();
  auto half = (*slice)->prepare(50);
  ASSERT_TRUE(half.is_ok()) << half.status().to_string();
  auto gpu = Engine::load_file(path, {.max_batch = 2, .device = "hip:0"});
  ASSERT_TRUE(gpu.is_ok()) << gpu.status().to_string();
  auto cpu = Engine::load_file(path, {.max_batch = 2, .device = "cpu"});
  ASSERT_TRUE(cpu.is_ok()) << cpu.status().to_string();
  auto host = backends::create_cpu_slice({.percent = 100});
  ASSERT_TRUE(host.is_ok());
  for (int64_t batch = 1; batch <= 2; ++batch) {
    SCOPED_TRACE("batch " + std::to_string(batch));
    const auto x = random_floats(elements((*gpu)->input_shape(0, batch)), unsigned(batch));
    const auto want = run(**cpu, batch, x, **host);
    for (size_t entry : {size_t{0}, *half}) {
      SCOPED_TRACE("pool entry " + std::to_string(entry));
      ASSERT_TRUE((*slice)->select(entry).is_ok());
      expect_close(run(**gpu, batch, x, **slice), want);
    }
  }
  // Per-op device time, one entry per step, every one positive.
  const auto x = random_floats(elements((*gpu)->input_shape(0, 1)), 3);
  std::vector<float> y(elements((*gpu)->output_shape(0, 1)));
  const std::byte* in[] = {reinterpret_cast<const std::byte*>(x.data())};
  std::byte* out[] = {reinterpret_cast<std::byte*>(y.data())};
  auto timings = (*gpu)->profile_run(1, in, out, **slice);
  ASSERT_TRUE(timings.is_ok()) << timings.status().to_string();
  ASSERT_FALSE(timings->empty());
  double total = 0;
  for (const auto& t : *timings) {
    EXPECT_GT(t.ms, 0.0) << t.label;
    total += t.ms;
  }
  std::printf("resnet18-32 batch 1 on %zu ops: %.3f ms of device time\n", timings->size(), total);
}

TEST(HipExecutorGpuTest, ARightSizedSliceMatchesTheCpuOnEveryPoolEntry) {
  auto runtime = backends::load_hip_runtime();
  if (!runtime.is_ok()) GTEST_SKIP() << runtime.status().to_string();
  const std::string path = std::string(SLICESERVE_SOURCE_DIR) + "/models/resnet18-32.onnx";
  if (!std::filesystem::exists(path)) GTEST_SKIP() << "no " << path << " (scripts/models)";
  auto gpu = Engine::load_file(path, {.max_batch = 1, .device = "hip:0"});
  ASSERT_TRUE(gpu.is_ok()) << gpu.status().to_string();
  auto cpu = Engine::load_file(path, {.max_batch = 1, .device = "cpu"});
  ASSERT_TRUE(cpu.is_ok()) << cpu.status().to_string();
  auto host = backends::create_cpu_slice({.percent = 100});
  ASSERT_TRUE(host.is_ok());
  const auto x = random_floats(elements((*gpu)->input_shape(0, 1)), 5);
  const auto want = run(**cpu, 1, x, **host);
  // The layers' labels, from a profiled run on the whole device.
  auto whole = backends::create_cu_mask_slice({});
  ASSERT_TRUE(whole.is_ok()) << whole.status().to_string();
  std::vector<float> y(elements((*gpu)->output_shape(0, 1)));
  const std::byte* in[] = {reinterpret_cast<const std::byte*>(x.data())};
  std::byte* out[] = {reinterpret_cast<std::byte*>(y.data())};
  auto timings = (*gpu)->profile_run(1, in, out, **whole);
  ASSERT_TRUE(timings.is_ok()) << timings.status().to_string();
  const auto& cumask = static_cast<const backends::CuMaskSlice&>(**whole);
  const unsigned fewest = backends::cu_granule(cumask.layout(), cumask.policy());
  backends::CuMaskSliceOptions options;
  std::set<std::string> seen;
  for (const auto& t : *timings) {
    if (seen.insert(t.label).second && seen.size() % 2 == 0) {
      options.setup.layers.push_back({t.label, fewest});
    }
  }
  ASSERT_FALSE(options.setup.layers.empty());
  whole->reset();
  auto slice = backends::create_cu_mask_slice(options);
  ASSERT_TRUE(slice.is_ok()) << slice.status().to_string();
  EXPECT_NE((*slice)->info().placement.find("layers right-sized onto"), std::string::npos)
      << (*slice)->info().placement;
  auto half = (*slice)->prepare(50);
  ASSERT_TRUE(half.is_ok()) << half.status().to_string();
  for (size_t entry : {size_t{0}, *half}) {
    SCOPED_TRACE("pool entry " + std::to_string(entry));
    ASSERT_TRUE((*slice)->select(entry).is_ok());
    expect_close(run(**gpu, 1, x, **slice), want);
  }
}

}  // namespace
}  // namespace sliceserve::worker::engine
