// The engine against PyTorch on torchvision exports: every model scripts/models cached under
// models/ at a reduced input size (NAME-32, NAME-64) runs its seeded input, and the output must
// equal PyTorch's (models/STEM.output.npy) within 1e-4 of the output's scale (random weights
// leave some networks with outputs near 1e-10, so the error is relative to the largest |y|).
// A batch of 3 — the input, its negation and the input again — must give the same answer for
// each item as batch 1 does. scripts/test builds the models before the tests run.

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include "sliceserve/backends/cpu/cpu_slice.h"
#include "sliceserve/client/npy.h"
#include "sliceserve/worker/engine/engine.h"
#include "support/torchvision_models.h"

namespace sliceserve::worker::engine {
namespace {

constexpr double kRelativeTolerance = 1e-4;

// max |a - b| / max |b|.
double relative_error(std::span<const float> a, std::span<const float> b) {
  double err = 0;
  double scale = 0;
  for (size_t i = 0; i < b.size(); ++i) {
    err = std::max(err, static_cast<double>(std::abs(a[i] - b[i])));
    scale = std::max(scale, static_cast<double>(std::abs(b[i])));
  }
  return scale == 0 ? err : err / scale;
}

std::span<const float> floats(const std::vector<std::byte>& bytes) {
  return {reinterpret_cast<const float*>(bytes.data()), bytes.size() / sizeof(float)};
}

TEST(TorchvisionConformance, OutputsMatchPyTorch) {
  const auto files = testing::reduced_models();
  if (files.empty()) GTEST_SKIP() << "no models/NAME-32.onnx (scripts/models builds them)";
  auto slice = backends::create_cpu_slice({.percent = 100});
  ASSERT_TRUE(slice.is_ok()) << slice.status().to_string();
  for (const auto& file : files) {
    SCOPED_TRACE(file.filename().string());
    const std::string stem = (file.parent_path() / file.stem()).string();
    auto input = client::read_npy(stem + ".input.npy");
    auto expected = client::read_npy(stem + ".output.npy");
    ASSERT_TRUE(input.is_ok()) << input.status().to_string();
    ASSERT_TRUE(expected.is_ok()) << expected.status().to_string();
    auto engine = Engine::load_file(file.string(), {.max_batch = 3});
    ASSERT_TRUE(engine.is_ok()) << engine.status().to_string();
    ASSERT_EQ((*engine)->input_shape(0, 1), input->shape);
    ASSERT_EQ((*engine)->output_shape(0, 1), expected->shape);

    std::vector<std::byte> single(expected->data.size());
    const std::byte* in[] = {input->data.data()};
    std::byte* out[] = {single.data()};
    ASSERT_TRUE((*engine)->run(1, in, out, **slice).is_ok());
    const double error = relative_error(floats(single), floats(expected->data));
    EXPECT_LE(error, kRelativeTolerance);

    // Batch of 3: x, -x, x.
    const size_t item = input->data.size();
    std::vector<std::byte> batch_in(3 * item);
    std::copy(input->data.begin(), input->data.end(), batch_in.begin());
    std::copy(input->data.begin(), input->data.end(), batch_in.begin() + 2 * item);
    auto negated = std::span(reinterpret_cast<float*>(batch_in.data() + item), item / 4);
    const auto x = floats(input->data);
    for (size_t i = 0; i < negated.size(); ++i) negated[i] = -x[i];
    std::vector<std::byte> batch_out(3 * single.size());
    const std::byte* bin[] = {batch_in.data()};
    std::byte* bout[] = {batch_out.data()};
    ASSERT_TRUE((*engine)->run(3, bin, bout, **slice).is_ok());
    const auto all = floats(batch_out);
    const size_t n = single.size() / 4;
    EXPECT_LE(relative_error(all.subspan(0, n), floats(single)), kRelativeTolerance);
    EXPECT_LE(relative_error(all.subspan(2 * n, n), floats(single)), kRelativeTolerance);
    EXPECT_GT(relative_error(all.subspan(n, n), floats(single)), 0.0) << "-x gave x's output";
    std::printf("%-32s relative error %.2e (batch 1), weights %.1f MiB\n", file.filename().c_str(),
                error, static_cast<double>((*engine)->weights().bytes) / (1 << 20));
  }
}

}  // namespace
}  // namespace sliceserve::worker::engine
