// ONNX's own backend node tests (Debian libonnx-testdata) run through the whole engine — loader,
// shape inference, fusion, lowering and the cpu executor — for every test whose ops are all
// supported: each output must equal output_*.pb (floats within rtol 1e-4 + atol 1e-6, everything
// else exactly). Prints passed/total per op.

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include "sliceserve/backends/cpu/cpu_slice.h"
#include "sliceserve/shm/element_conversions.h"
#include "sliceserve/worker/engine/engine.h"
#include "sliceserve/worker/engine/onnx_loader.h"
#include "sliceserve/worker/engine/shape_inference.h"
#include "support/onnx_node_tests.h"

namespace sliceserve::worker::engine {
namespace {

constexpr double kRtol = 1e-4;
constexpr double kAtol = 1e-6;

std::vector<std::byte> read_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::vector<char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::vector<std::byte> out(bytes.size());
  if (!bytes.empty()) std::memcpy(out.data(), bytes.data(), bytes.size());
  return out;
}

Result<Tensor> read_tensor(const std::filesystem::path& path) {
  if (!std::filesystem::exists(path)) return Status{ErrorCode::kNotFound, path.string()};
  return load_onnx_tensor(read_file(path));
}

// Element i as a double (floats) for comparisons.
double element(const std::byte* data, DataType dtype, size_t i) {
  switch (dtype) {
    case DataType::kFp32: {
      float v;
      std::memcpy(&v, data + i * 4, 4);
      return v;
    }
    case DataType::kFp64: {
      double v;
      std::memcpy(&v, data + i * 8, 8);
      return v;
    }
    default: {
      uint16_t v;
      std::memcpy(&v, data + i * 2, 2);
      return shm::half_to_double(v);
    }
  }
}

// "" when equal, else what differs.
std::string compare(const Tensor& want, const std::vector<std::byte>& got) {
  if (got.size() != want.data.size()) {
    return "size " + std::to_string(got.size()) + " != " + std::to_string(want.data.size());
  }
  const bool floating = want.dtype == DataType::kFp32 || want.dtype == DataType::kFp64 ||
                        want.dtype == DataType::kFp16;
  if (!floating) {
    return std::memcmp(got.data(), want.data.data(), got.size()) == 0 ? "" : "values differ";
  }
  const double rtol = want.dtype == DataType::kFp16 ? 1e-3 : kRtol;
  const auto n = static_cast<size_t>(want.element_count());
  for (size_t i = 0; i < n; ++i) {
    const double w = element(want.data.data(), want.dtype, i);
    const double g = element(got.data(), want.dtype, i);
    if (std::isnan(w) && std::isnan(g)) continue;
    if (w == g) continue;  // infinities
    if (!(std::abs(g - w) <= kAtol + rtol * std::abs(w))) {
      return "element " + std::to_string(i) + ": got " + std::to_string(g) + ", want " +
             std::to_string(w);
    }
  }
  return "";
}

struct Outcome {
  enum class Kind { kPassed, kFailed, kSkipped, kNotApplicable } kind;
  std::string detail;
};

// Runs one node test directory; kSkipped when a tensor has a dtype outside the engine's.
Outcome run_node_test(const std::filesystem::path& dir, backends::ComputeContext& ctx) {
  auto graph = load_onnx_file((dir / "model.onnx").string());
  if (!graph.is_ok()) {
    const std::string m = graph.status().message();
    if (m.find("unsupported dtype") != std::string::npos ||
        m.find("only tensor types") != std::string::npos) {
      return {Outcome::Kind::kSkipped, m};
    }
    return {Outcome::Kind::kFailed, m};
  }
  // Exported models carry their integer and scalar operands (shapes, axes, Clip bounds, Dropout's
  // ratio) as constants: the test's values of those become initializers; float tensors stay
  // inputs.
  const std::filesystem::path data = dir / "test_data_set_0";
  std::vector<ValueInfo> data_inputs;
  std::vector<Tensor> input_values;
  for (size_t i = 0; i < graph->inputs.size(); ++i) {
    auto value = read_tensor(data / ("input_" + std::to_string(i) + ".pb"));
    if (!value.is_ok()) {
      if (value.status().code() == ErrorCode::kNotFound) continue;  // an absent optional input
      return {Outcome::Kind::kSkipped, value.status().message()};
    }
    const bool floating = value->dtype == DataType::kFp32 || value->dtype == DataType::kFp64 ||
                          value->dtype == DataType::kFp16;
    if (!floating || value->dims.empty()) {
      graph->initializers[graph->inputs[i].name] = std::move(value).value();
      continue;
    }
    ValueInfo info = graph->inputs[i];
    info.shape = value->dims;
    info.has_shape = true;
    data_inputs.push_back(std::move(info));
    input_values.push_back(std::move(value).value());
  }
  graph->inputs = std::move(data_inputs);
  auto engine = Engine::load_graph(std::move(graph).value(), {.max_batch = 0});
  if (!engine.is_ok()) {
    // Training-mode Dropout draws random numbers (numpy's, in the test data): no inference engine
    // reproduces them. The engine refuses such a node clearly; the test is not applicable.
    if (engine.status().message().find("training-mode Dropout") != std::string::npos) {
      return {Outcome::Kind::kNotApplicable, engine.status().message()};
    }
    return {Outcome::Kind::kFailed, engine.status().message()};
  }
  std::vector<const std::byte*> inputs;
  for (const Tensor& t : input_values) inputs.push_back(t.data.data());
  std::vector<Tensor> wants;
  std::vector<std::vector<std::byte>> outputs;
  std::vector<std::byte*> output_ptrs;
  for (size_t i = 0; i < (*engine)->outputs().size(); ++i) {
    auto want = read_tensor(data / ("output_" + std::to_string(i) + ".pb"));
    if (!want.is_ok()) return {Outcome::Kind::kSkipped, want.status().message()};
    outputs.emplace_back(want->data.size());
    output_ptrs.push_back(outputs.back().data());
    wants.push_back(std::move(want).value());
  }
  Status ran = (*engine)->run(0, inputs, output_ptrs, ctx);
  if (!ran.is_ok()) return {Outcome::Kind::kFailed, ran.message()};
  for (size_t i = 0; i < wants.size(); ++i) {
    const std::string diff = compare(wants[i], outputs[i]);
    if (!diff.empty()) {
      return {Outcome::Kind::kFailed, "output " + (*engine)->outputs()[i].name + ": " + diff};
    }
  }
  return {Outcome::Kind::kPassed, ""};
}

TEST(OnnxNodeConformance, EverySupportedOpTestPasses) {
  if (!std::filesystem::is_directory(testing::kOnnxNodeTestDir))
    GTEST_SKIP() << "no libonnx-testdata";
  auto slice = backends::create_cpu_slice({.percent = 100});
  ASSERT_TRUE(slice.is_ok()) << slice.status().to_string();
  struct Counts {
    int passed = 0, total = 0, skipped = 0;
  };
  std::vector<std::string> not_applicable;
  std::map<std::string, Counts> table;
  std::vector<std::string> failures;
  for (const auto& test : testing::supported_node_tests()) {
    const std::filesystem::path& dir = test.dir;
    const std::string& op = test.op;
    const Outcome outcome = run_node_test(dir, **slice);
    Counts& counts = table[op];
    if (outcome.kind == Outcome::Kind::kSkipped) {
      ++counts.skipped;
      continue;
    }
    if (outcome.kind == Outcome::Kind::kNotApplicable) {
      not_applicable.push_back(dir.filename().string() + ": " + outcome.detail);
      continue;
    }
    ++counts.total;
    if (outcome.kind == Outcome::Kind::kPassed) {
      ++counts.passed;
    } else {
      failures.push_back(dir.filename().string() + ": " + outcome.detail);
    }
  }
  std::printf("%-20s %7s %7s %8s\n", "op", "passed", "total", "skipped");
  int passed = 0;
  int total = 0;
  for (const auto& [name, counts] : table) {
    std::printf("%-20s %7d %7d %8d\n", name.c_str(), counts.passed, counts.total, counts.skipped);
    passed += counts.passed;
    total += counts.total;
  }
  std::printf("%-20s %7d %7d\n", "all", passed, total);
  for (const auto& test : not_applicable) std::printf("NOT APPLICABLE %s\n", test.c_str());
  for (const auto& failure : failures) std::printf("FAIL %s\n", failure.c_str());
  EXPECT_LE(not_applicable.size(), 4U);
  EXPECT_GT(total, 200);
  EXPECT_TRUE(failures.empty()) << failures.size() << " node tests failed";
}

}  // namespace
}  // namespace sliceserve::worker::engine
