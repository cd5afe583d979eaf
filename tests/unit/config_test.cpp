#include "sliceserve/controller/config.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <string>
#include <string_view>
#include <vector>

#include "sliceserve/shm/layout.h"
#include "support/onnx_model_builder.h"

namespace sliceserve::controller {
namespace {

namespace fs = std::filesystem;

#ifdef SLICESERVE_HAVE_CUDA
constexpr bool kHaveCudaWing = true;
#else
constexpr bool kHaveCudaWing = false;
#endif
#ifdef SLICESERVE_HAVE_HIP
constexpr bool kHaveHipWing = true;
#else
constexpr bool kHaveHipWing = false;
#endif
// A backend this build lacks, for the "not available" errors; empty when every wing is built.
constexpr std::string_view kUnavailableBackend =
    !kHaveHipWing ? "cumask" : (!kHaveCudaWing ? "mps" : "");

// One valid model; tests append or replace pieces of it.
constexpr std::string_view kModelA = R"([[model]]
name = "a"
slice = 40
inputs = [ { name = "x", dtype = "FP32", shape = [4] } ]
outputs = [ { name = "y", dtype = "FP32", shape = [4] } ]
)";

constexpr std::string_view kFullConfig = R"(# every key, none at its default
[server]
instance = "full-test_1"
backend = "cpu"
policy_interval_ms = 250
log_level = "debug"
tcp = "0.0.0.0:9700"
http = "[::1]:9000"
worker_binary = "/opt/sliceserve/bin/sliceserve-worker"
restart_backoff_min_ms = 100
restart_backoff_max_ms = 5000
worker_ready_timeout_ms = 20000
shutdown_grace_ms = 1500
tcp_io_threads = 3
io_poll_us = 0

[backend.cpu]
mode = "affinity"
cores = 2

[[model]]
name = "small"
kind = "null"
slo_ms = 20
slice = 40
max_batch = 32
max_queue_delay_us = 250
flops_per_item = 2e6
working_set_kb = 512
lanes = 8
slots_per_lane = 4
inputs = [ { name = "x", dtype = "FP32", shape = [64] },
           { name = "mask", dtype = "bool", shape = [2, 32] } ]
outputs = [ { name = "y", dtype = "INT64", shape = [3, 4, 5] } ]

[[model]]
name = "big"
slo_ms = 7.5
slice = 60
inputs = [ { name = "x", shape = [1] } ]
outputs = [ { name = "x", dtype = "FP16", shape = [1] } ]
)";

// The 1-based line of the first line of `text` containing `marker`.
uint32_t line_of(std::string_view text, std::string_view marker) {
  const size_t at = text.find(marker);
  EXPECT_NE(at, std::string_view::npos) << "marker '" << marker << "' not in the text";
  uint32_t line = 1;
  for (size_t i = 0; i < at && i < text.size(); ++i) line += text[i] == '\n' ? 1 : 0;
  return line;
}

class ConfigTest : public ::testing::Test {
 protected:
  void SetUp() override {
    static std::atomic<int> counter{0};
    dir_ = fs::temp_directory_path() / ("sliceserve_config_test." + std::to_string(::getpid()) +
                                        "." + std::to_string(counter.fetch_add(1)));
    fs::create_directories(dir_);
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }

  std::string write_file(const std::string& relative, std::string_view text) {
    const fs::path path = dir_ / relative;
    fs::create_directories(path.parent_path());
    std::ofstream out(path, std::ios::binary);
    out << text;
    return path.string();
  }

  // Parses `text` as "test.toml" and expects an invalid-argument error whose message starts
  // with "test.toml:LINE: key 'KEY': " and contains `what`.
  void expect_error(std::string_view text, uint32_t line, std::string_view key,
                    std::string_view what) {
    Result<Config> config = parse_config(text, "test.toml");
    ASSERT_FALSE(config.is_ok()) << "parsed:\n" << text;
    EXPECT_EQ(config.status().code(), ErrorCode::kInvalidArgument);
    const std::string prefix =
        "test.toml:" + std::to_string(line) + ": key '" + std::string(key) + "': ";
    const std::string message = config.status().message();
    EXPECT_EQ(message.substr(0, prefix.size()), prefix) << message;
    EXPECT_NE(message.find(what), std::string::npos) << message;
  }

  fs::path dir_;
};

TEST_F(ConfigTest, FullConfigFillsEveryField) {
  Result<Config> result = parse_config(kFullConfig, "full.toml");
  ASSERT_TRUE(result.is_ok()) << result.status().to_string();
  const Config& config = *result;
  EXPECT_EQ(config.source_path, "");

  EXPECT_EQ(config.server.instance, "full-test_1");
  EXPECT_EQ(config.server.backend, "cpu");
  EXPECT_EQ(config.server.policy_interval_ms, 250u);
  EXPECT_EQ(config.server.log_level, "debug");
  EXPECT_EQ(config.server.tcp, "0.0.0.0:9700");
  EXPECT_EQ(config.server.http, "[::1]:9000");
  EXPECT_EQ(config.server.tcp_io_threads, 3u);
  EXPECT_EQ(config.server.io_poll_us, 0u);
  EXPECT_EQ(config.server.worker_binary, "/opt/sliceserve/bin/sliceserve-worker");
  EXPECT_EQ(config.server.restart_backoff_min_ms, 100u);
  EXPECT_EQ(config.server.restart_backoff_max_ms, 5000u);
  EXPECT_EQ(config.server.worker_ready_timeout_ms, 20000u);
  EXPECT_EQ(config.server.shutdown_grace_ms, 1500u);
  EXPECT_EQ(config.cpu.mode, CpuMode::kAffinity);
  EXPECT_EQ(config.cpu.cores, 2u);

  ASSERT_EQ(config.models.size(), 2u);
  const ModelConfig& small = config.models[0];
  EXPECT_EQ(small.name, "small");
  EXPECT_EQ(small.kind, "null");
  EXPECT_EQ(small.path, "");
  EXPECT_DOUBLE_EQ(small.slo_ms, 20);
  EXPECT_DOUBLE_EQ(small.slice, 40);
  EXPECT_EQ(small.max_batch, 32u);
  EXPECT_EQ(small.max_queue_delay_us, 250u);
  EXPECT_DOUBLE_EQ(small.flops_per_item, 2e6);
  EXPECT_EQ(small.working_set_kb, 512u);
  EXPECT_EQ(small.lanes, 8u);
  EXPECT_EQ(small.slots_per_lane, 4u);
  EXPECT_EQ(small.source_line, line_of(kFullConfig, "[[model]]"));
  ASSERT_EQ(small.inputs.size(), 2u);
  EXPECT_EQ(small.inputs[0].name, "x");
  EXPECT_EQ(small.inputs[0].dtype, shm::DataType::kFp32);
  EXPECT_EQ(small.inputs[0].shape, (std::vector<int64_t>{64}));
  EXPECT_EQ(small.inputs[1].name, "mask");
  EXPECT_EQ(small.inputs[1].dtype, shm::DataType::kBool);
  EXPECT_EQ(small.inputs[1].shape, (std::vector<int64_t>{2, 32}));
  ASSERT_EQ(small.outputs.size(), 1u);
  EXPECT_EQ(small.outputs[0].name, "y");
  EXPECT_EQ(small.outputs[0].dtype, shm::DataType::kInt64);
  EXPECT_EQ(small.outputs[0].shape, (std::vector<int64_t>{3, 4, 5}));

  const ModelConfig& big = config.models[1];
  EXPECT_EQ(big.name, "big");
  EXPECT_DOUBLE_EQ(big.slo_ms, 7.5);
  EXPECT_DOUBLE_EQ(big.slice, 60);
  EXPECT_EQ(big.source_line, line_of(kFullConfig, "name = \"big\"") - 1);
  // An input and an output may share a name; dtype defaults to FP32.
  EXPECT_EQ(big.inputs[0].name, "x");
  EXPECT_EQ(big.inputs[0].dtype, shm::DataType::kFp32);
  EXPECT_EQ(big.outputs[0].name, "x");
  EXPECT_EQ(big.outputs[0].dtype, shm::DataType::kFp16);

  EXPECT_EQ(config.find_model("big"), &config.models[1]);
  EXPECT_EQ(config.find_model("small"), &config.models[0]);
  EXPECT_EQ(config.find_model("missing"), nullptr);
}

TEST_F(ConfigTest, AbsentOptionalKeysTakeTheirDefaults) {
  Result<Config> result = parse_config(kModelA, "min.toml");
  ASSERT_TRUE(result.is_ok()) << result.status().to_string();
  const Config& config = *result;
  const ServerConfig server_defaults;
  EXPECT_EQ(config.server.instance, "default");
  EXPECT_EQ(config.server.backend, "cpu");
  EXPECT_EQ(config.server.policy_interval_ms, 500u);
  EXPECT_EQ(config.server.log_level, "info");
  EXPECT_EQ(config.server.tcp, "127.0.0.1:8700");
  EXPECT_EQ(config.server.http, "127.0.0.1:8000");
  EXPECT_EQ(config.server.tcp_io_threads, 0u);
  EXPECT_EQ(config.server.io_poll_us, 50u);
  EXPECT_EQ(config.server.worker_binary, "");
  EXPECT_EQ(config.server.restart_backoff_min_ms, server_defaults.restart_backoff_min_ms);
  EXPECT_EQ(config.server.restart_backoff_max_ms, server_defaults.restart_backoff_max_ms);
  EXPECT_EQ(config.server.worker_ready_timeout_ms, server_defaults.worker_ready_timeout_ms);
  EXPECT_EQ(config.server.shutdown_grace_ms, server_defaults.shutdown_grace_ms);
  EXPECT_EQ(config.cpu.mode, CpuMode::kProcess);
  EXPECT_EQ(config.cpu.cores, 0u);

  ASSERT_EQ(config.models.size(), 1u);
  const ModelConfig& model = config.models[0];
  const ModelConfig model_defaults;
  EXPECT_EQ(model.name, "a");
  EXPECT_EQ(model.kind, "synthetic");
  EXPECT_EQ(model.path, "");
  EXPECT_DOUBLE_EQ(model.slo_ms, model_defaults.slo_ms);
  EXPECT_DOUBLE_EQ(model.slice, 40);
  EXPECT_EQ(model.max_batch, model_defaults.max_batch);
  EXPECT_EQ(model.max_queue_delay_us, model_defaults.max_queue_delay_us);
  EXPECT_DOUBLE_EQ(model.flops_per_item, model_defaults.flops_per_item);
  EXPECT_EQ(model.working_set_kb, model_defaults.working_set_kb);
  EXPECT_EQ(model.lanes, model_defaults.lanes);
  EXPECT_EQ(model.slots_per_lane, model_defaults.slots_per_lane);
  EXPECT_EQ(model.source_line, 1u);
}

TEST_F(ConfigTest, EmptyServerAndBackendTablesKeepDefaults) {
  const std::string text = "[server]\n[backend.cpu]\n" + std::string(kModelA);
  Result<Config> result = parse_config(text, "t.toml");
  ASSERT_TRUE(result.is_ok()) << result.status().to_string();
  EXPECT_EQ(result->server.instance, "default");
  EXPECT_EQ(result->cpu.mode, CpuMode::kProcess);
}

TEST_F(ConfigTest, ArrayOfTablesSyntaxForTensorsIsAccepted) {
  constexpr std::string_view kText = R"([[model]]
name = "a"
slice = 10
[[model.inputs]]
name = "x"
dtype = "int32"
shape = [2, 2]
[[model.outputs]]
name = "y"
shape = [4]
)";
  Result<Config> result = parse_config(kText, "t.toml");
  ASSERT_TRUE(result.is_ok()) << result.status().to_string();
  ASSERT_EQ(result->models[0].inputs.size(), 1u);
  EXPECT_EQ(result->models[0].inputs[0].dtype, shm::DataType::kInt32);
  EXPECT_EQ(result->models[0].outputs[0].shape, (std::vector<int64_t>{4}));
}

TEST_F(ConfigTest, SlicesSummingToExactlyTheDeviceAreAccepted) {
  std::string text;
  for (const char* spec : {"p = 33.3", "q = 33.3", "r = 33.4"}) {
    std::string model(kModelA);
    model.replace(model.find("name = \"a\""), 10, std::string("name = \"") + spec[0] + "\"");
    model.replace(model.find("slice = 40"), 10, std::string("slice = ") + (spec + 4));
    text += model;
  }
  Result<Config> result = parse_config(text, "t.toml");
  ASSERT_TRUE(result.is_ok()) << result.status().to_string();
  EXPECT_EQ(result->models.size(), 3u);
}

TEST_F(ConfigTest, LoadConfigRecordsTheSourcePath) {
  const std::string path = write_file("ok.toml", kModelA);
  Result<Config> result = load_config(path);
  ASSERT_TRUE(result.is_ok()) << result.status().to_string();
  EXPECT_EQ(result->source_path, path);
}

TEST_F(ConfigTest, MissingFileIsNotFoundWithTheFileName) {
  const std::string path = (dir_ / "absent.toml").string();
  Result<Config> result = load_config(path);
  ASSERT_FALSE(result.is_ok());
  EXPECT_EQ(result.status().code(), ErrorCode::kNotFound);
  EXPECT_EQ(result.status().message(), path + ": cannot open: No such file or directory");
}

TEST_F(ConfigTest, DirectoryInsteadOfFileIsRejected) {
  Result<Config> result = load_config(dir_.string());
  ASSERT_FALSE(result.is_ok());
  EXPECT_EQ(result.status().message(), dir_.string() + ": cannot open: Is a directory");
}

TEST_F(ConfigTest, SyntaxErrorReportsFileLineAndColumn) {
  const std::string path = write_file("broken.toml", "[server]\ninstance = \"x\"\nlog_level = \n");
  Result<Config> result = load_config(path);
  ASSERT_FALSE(result.is_ok());
  EXPECT_EQ(result.status().code(), ErrorCode::kInvalidArgument);
  const std::string prefix = path + ":3:";
  EXPECT_EQ(result.status().message().substr(0, prefix.size()), prefix)
      << result.status().message();
  // FILE:LINE:COL: description
  EXPECT_NE(result.status().message().find(": ", prefix.size()), std::string::npos);
}

TEST_F(ConfigTest, DuplicateTomlKeyIsASyntaxError) {
  Result<Config> result =
      parse_config("[server]\nlog_level = \"info\"\nlog_level = \"off\"\n", "dup.toml");
  ASSERT_FALSE(result.is_ok());
  EXPECT_EQ(result.status().message().rfind("dup.toml:3:", 0), 0u) << result.status().message();
}

TEST_F(ConfigTest, ErrorsNameTheFileTheLineAndTheKeyExactly) {
  const std::string text = std::string(kModelA) + "max_batch = 0\n";
  Result<Config> result = parse_config(text, "configs/x.toml");
  ASSERT_FALSE(result.is_ok());
  EXPECT_EQ(result.status().message(),
            "configs/x.toml:6: key 'model[0].max_batch': must be in 1..256, got 0");

  const std::string second =
      "[[model]]\nname = \"b\"\nslice = 70\n" + std::string(kModelA.substr(kModelA.find("inputs")));
  const std::string path = write_file("slice.toml", std::string(kModelA) + second);
  result = load_config(path);
  ASSERT_FALSE(result.is_ok());
  EXPECT_EQ(result.status().message(),
            path + ":8: key 'model[1].slice': sum of slices 110 exceeds the device (100)");
}

TEST_F(ConfigTest, SumOfSlicesOverTheDeviceIsReportedAtTheCrossingModel) {
  std::string text;
  int index = 0;
  for (const char* slice : {"50", "50", "30"}) {
    std::string model(kModelA);
    model.replace(model.find("name = \"a\""), 10, "name = \"m" + std::to_string(index++) + "\"");
    model.replace(model.find("slice = 40"), 10, std::string("slice = ") + slice);
    text += model;
  }
  Result<Config> result = parse_config(text, "sum.toml");
  ASSERT_FALSE(result.is_ok());
  EXPECT_EQ(result.status().code(), ErrorCode::kInvalidArgument);
  EXPECT_EQ(result.status().message(),
            "sum.toml:13: key 'model[2].slice': sum of slices 130 exceeds the device (100)");
}

TEST_F(ConfigTest, DuplicateModelNameIsReportedAtTheSecondModel) {
  const std::string text = std::string(kModelA) + std::string(kModelA);
  Result<Config> result = parse_config(text, "dup.toml");
  ASSERT_FALSE(result.is_ok());
  EXPECT_EQ(result.status().message(),
            "dup.toml:7: key 'model[1].name': duplicate model name 'a' (first defined at line 2)");
}

TEST_F(ConfigTest, MissingRequiredKeyIsReportedAtItsTable) {
  constexpr std::string_view kText = R"([server]
instance = "x"

[[model]]
name = "a"
inputs = [ { name = "x", shape = [4] } ]
outputs = [ { name = "y", shape = [4] } ]
)";
  Result<Config> result = parse_config(kText, "m.toml");
  ASSERT_FALSE(result.is_ok());
  EXPECT_EQ(result.status().message(), "m.toml:4: key 'model[0].slice': missing required key");
}

TEST_F(ConfigTest, TheEarliestErrorInTheFileIsReported) {
  // The model comes first in the file, so its error wins over the later [server] one.
  const std::string text = std::string(kModelA) + "lanes = 0\n\n[server]\npolicy_interval_ms = 0\n";
  Result<Config> result = parse_config(text, "order.toml");
  ASSERT_FALSE(result.is_ok());
  EXPECT_EQ(result.status().message(),
            "order.toml:6: key 'model[0].lanes': must be in 1..64, got 0");
}

TEST_F(ConfigTest, UnknownKeySuggestsTheClosestKnownKey) {
  const std::string text = std::string(kModelA) + "slo_sm = 3\n";
  Result<Config> result = parse_config(text, "t.toml");
  ASSERT_FALSE(result.is_ok());
  EXPECT_EQ(result.status().message(),
            "t.toml:6: key 'model[0].slo_sm': unknown key (did you mean 'slo_ms'?)");
}

TEST_F(ConfigTest, RelativeModelPathIsResolvedAgainstTheConfigFolder) {
  write_file("models/m.onnx", "not really onnx");
  const std::string config_path =
      write_file("serve.toml", std::string(kModelA) + "path = \"models/m.onnx\"\n");
  Result<Config> result = load_config(config_path);
  ASSERT_TRUE(result.is_ok()) << result.status().to_string();
  EXPECT_EQ(fs::path(result->models[0].path), dir_ / "models" / "m.onnx");
  EXPECT_TRUE(fs::exists(result->models[0].path));
}

TEST_F(ConfigTest, AbsoluteModelPathIsKeptAsGiven) {
  const std::string model_file = write_file("abs/m.onnx", "x");
  const std::string text = std::string(kModelA) + "path = \"" + model_file + "\"\n";
  Result<Config> result = parse_config(text, "elsewhere/t.toml");
  ASSERT_TRUE(result.is_ok()) << result.status().to_string();
  EXPECT_EQ(result->models[0].path, model_file);
}

TEST_F(ConfigTest, MissingModelFileIsReportedWithTheResolvedPath) {
  const std::string path =
      write_file("sub/serve.toml", std::string(kModelA) + "path = \"nope.onnx\"\n");
  Result<Config> result = load_config(path);
  ASSERT_FALSE(result.is_ok());
  EXPECT_EQ(result.status().message(), path + ":6: key 'model[0].path': model file not found: '" +
                                           (dir_ / "sub" / "nope.onnx").string() + "'");
}

// A model with input 'input' FP32 [N,3,8,8] and output 'output' FP32 [N,10].
std::string tiny_onnx_model() {
  testing::ModelBuilder b;
  b.input("input", {-1, 3, 8, 8});
  b.output("output", {-1, 10});
  auto* w = b.init("w", onnx::TensorProto::FLOAT, {10, 192});
  for (int i = 0; i < 10 * 192; ++i) w->add_float_data(0.01F);
  b.node("Flatten", {"input"}, {"flat"}, "flatten");
  auto* gemm = b.node("Gemm", {"flat", "w"}, {"output"}, "fc");
  testing::set_int(gemm, "transB", 1);
  return b.bytes();
}

TEST_F(ConfigTest, OnnxModelTensorsComeFromTheFile) {
  write_file("m.onnx", tiny_onnx_model());
  const std::string path = write_file("serve.toml", R"([[model]]
name = "tiny"
kind = "onnx"
path = "m.onnx"
slice = 50
)");
  Result<Config> result = load_config(path);
  ASSERT_TRUE(result.is_ok()) << result.status().to_string();
  const ModelConfig& model = result->models[0];
  ASSERT_EQ(model.inputs.size(), 1u);
  EXPECT_EQ(model.inputs[0].name, "input");
  EXPECT_EQ(model.inputs[0].dtype, shm::DataType::kFp32);
  EXPECT_EQ(model.inputs[0].shape, (std::vector<int64_t>{3, 8, 8}));
  ASSERT_EQ(model.outputs.size(), 1u);
  EXPECT_EQ(model.outputs[0].name, "output");
  EXPECT_EQ(model.outputs[0].shape, (std::vector<int64_t>{10}));
}

TEST_F(ConfigTest, OnnxModelTensorsThatDifferFromTheFileAreRejected) {
  write_file("m.onnx", tiny_onnx_model());
  const std::string path = write_file("serve.toml", R"([[model]]
name = "tiny"
kind = "onnx"
path = "m.onnx"
slice = 50
inputs = [ { name = "input", dtype = "FP32", shape = [3, 16, 16] } ]
)");
  Result<Config> result = load_config(path);
  ASSERT_FALSE(result.is_ok());
  EXPECT_EQ(result.status().message(),
            path +
                ":6: key 'model[0].inputs': the model file has input FP32 [3,8,8] (per item, "
                "without the batch); the config declares input FP32 [3,16,16]");
}

TEST_F(ConfigTest, OnnxModelNeedsAValidFile) {
  write_file("bad.onnx", "not a model");
  const std::string text = "[[model]]\nname = \"m\"\nkind = \"onnx\"\nslice = 50\n";
  expect_error(text, 1, "model[0].path", "missing required key");
  const std::string path = write_file("serve.toml", text + "path = \"bad.onnx\"\n");
  Result<Config> result = load_config(path);
  ASSERT_FALSE(result.is_ok());
  EXPECT_NE(result.status().message().find(path + ":5: key 'model[0].path': "), std::string::npos)
      << result.status().message();
}

TEST_F(ConfigTest, DemoConfigLoads) {
  if (!fs::exists(SLICESERVE_SOURCE_DIR "/models/resnet18-64.onnx")) {
    GTEST_SKIP() << "the demo's model is not built (scripts/models --input-size 64 resnet18)";
  }
  Result<Config> result = load_config(SLICESERVE_SOURCE_DIR "/config/demo.toml");
  ASSERT_TRUE(result.is_ok()) << result.status().to_string();
  const Config& config = *result;
  EXPECT_EQ(config.server.instance, "demo");
  EXPECT_EQ(config.server.backend, "cpu");
  EXPECT_EQ(config.cpu.mode, CpuMode::kProcess);
  ASSERT_EQ(config.models.size(), 4u);
  double total = 0;
  for (const ModelConfig& model : config.models) total += model.slice;
  EXPECT_LE(total, 100.0);
  // The real model's tensors come from its file.
  const ModelConfig* resnet = config.find_model("resnet18");
  ASSERT_NE(resnet, nullptr);
  EXPECT_EQ(resnet->kind, "onnx");
  ASSERT_EQ(resnet->inputs.size(), 1u);
  EXPECT_EQ(resnet->inputs[0].name, "input");
  EXPECT_EQ(resnet->inputs[0].shape, (std::vector<int64_t>{3, 64, 64}));
  ASSERT_EQ(resnet->outputs.size(), 1u);
  EXPECT_EQ(resnet->outputs[0].shape, (std::vector<int64_t>{1000}));
  const ModelConfig* detector = config.find_model("detector");
  ASSERT_NE(detector, nullptr);
  EXPECT_EQ(detector->inputs[0].shape, (std::vector<int64_t>{3, 32, 32}));
  const ModelConfig* embedder = config.find_model("embedder");
  ASSERT_NE(embedder, nullptr);
  EXPECT_EQ(embedder->inputs[0].dtype, shm::DataType::kInt32);
  EXPECT_NE(config.find_model("classifier"), nullptr);
}

// Every config/invalid/*.toml starts with "# error: <text the message must contain>"; a second
// line "# needs: cuda" marks a rule of the cuda backends, checked only where the wing is built,
// and "# needs: no hip" one that holds only where the hip wing is missing.
TEST_F(ConfigTest, InvalidExampleConfigsAreRejectedWithTheirDocumentedError) {
  const fs::path folder = fs::path(SLICESERVE_SOURCE_DIR) / "config" / "invalid";
  int checked = 0;
  for (const auto& entry : fs::directory_iterator(folder)) {
    if (entry.path().extension() != ".toml") continue;
    SCOPED_TRACE(entry.path().string());
    std::ifstream in(entry.path());
    std::string first_line;
    std::getline(in, first_line);
    std::string second_line;
    std::getline(in, second_line);
    if (second_line == "# needs: cuda" && !kHaveCudaWing) continue;
    if (second_line == "# needs: no hip" && kHaveHipWing) continue;
    constexpr std::string_view kTag = "# error: ";
    ASSERT_EQ(first_line.rfind(kTag, 0), 0u) << "first line must be '# error: ...'";
    const std::string expected = entry.path().string() + ":" + first_line.substr(kTag.size());
    Result<Config> result = load_config(entry.path().string());
    ASSERT_FALSE(result.is_ok());
    EXPECT_EQ(result.status().code(), ErrorCode::kInvalidArgument);
    EXPECT_EQ(result.status().message(), expected);
    ++checked;
  }
  EXPECT_GE(checked, 3);
}

TEST_F(ConfigTest, CpuModeNamesMatchTheConfigSpelling) {
  EXPECT_EQ(cpu_mode_name(CpuMode::kProcess), "process");
  EXPECT_EQ(cpu_mode_name(CpuMode::kAffinity), "affinity");
}

// ---- one case per validation rule: the message names the file, the line and the key ----

struct ErrorCase {
  const char* name;   // test name suffix
  std::string text;   // the config; the offending line contains "#!" unless `line` is set
  const char* key;    // the key path in the message
  const char* what;   // a piece of the message after the key
  uint32_t line = 0;  // expected line when no "#!" marker is used
};

std::string with_model(std::string_view extra_model_lines, std::string_view before = "") {
  return std::string(before) + std::string(kModelA) + std::string(extra_model_lines);
}

std::string model_with(std::string_view from, std::string_view to) {
  std::string model(kModelA);
  model.replace(model.find(from), from.size(), to);
  return model;
}

std::vector<ErrorCase> error_cases() {
  std::vector<ErrorCase> cases = {
      // unknown keys, everywhere
      {"UnknownTopLevelTable", with_model("", "[metrics] #!\nport = 1\n"), "metrics",
       "unknown key"},
      {"UnknownServerKey", with_model("", "[server]\ncolour = 1 #!\n"), "server.colour",
       "unknown key"},
      {"UnknownBackendTable", with_model("", "[backend.tpu] #!\nx = 1\n"), "backend.tpu",
       "unknown key"},
      {"UnknownCpuKey", with_model("", "[backend.cpu]\nthreads = 2 #!\n"), "backend.cpu.threads",
       "unknown key"},
      {"UnknownModelKey", with_model("batch = 4 #!\n"), "model[0].batch", "unknown key"},
      {"UnknownTensorKey",
       model_with("{ name = \"x\", dtype", "{ name = \"x\", layout = \"nchw\", dtype"),
       "model[0].inputs[0].layout", "unknown key", 4},
      // types
      {"FloatForIntegerKey", with_model("max_batch = 8.0 #!\n"), "model[0].max_batch",
       "must be an integer, not a float"},
      {"StringForNumberKey", with_model("slo_ms = \"fast\" #!\n"), "model[0].slo_ms",
       "must be a number, not a string"},
      {"IntegerForStringKey", with_model("", "[server]\ninstance = 5 #!\n"), "server.instance",
       "must be a string, not an integer"},
      {"ServerIsNotATable", with_model("", "server = 5 #!\n"), "server", "must be a table"},
      {"ModelIsNotAnArray", "model = 5 #!\n", "model", "must be an array of tables"},
      {"NanIsNotANumber", with_model("slo_ms = nan #!\n"), "model[0].slo_ms",
       "must be a finite number"},
      // [server]
      {"BadInstanceName", with_model("", "[server]\ninstance = \"my demo\" #!\n"),
       "server.instance", "must match [A-Za-z0-9_-]{1,48}"},
      {"UnknownBackend", with_model("", "[server]\nbackend = \"tpu\" #!\n"), "server.backend",
       "must be one of cpu, mps, greenctx, cumask"},
      {"ZeroPolicyInterval", with_model("", "[server]\npolicy_interval_ms = 0 #!\n"),
       "server.policy_interval_ms", "must be > 0, got 0"},
      {"BadLogLevel", with_model("", "[server]\nlog_level = \"verbose\" #!\n"), "server.log_level",
       "must be one of trace, debug, info, warn, error, off"},
      {"TcpWithoutPort", with_model("", "[server]\ntcp = \"localhost\" #!\n"), "server.tcp",
       "must be host:port"},
      {"HttpPortOutOfRange", with_model("", "[server]\nhttp = \"127.0.0.1:65536\" #!\n"),
       "server.http", "port in 1..65535"},
      {"HttpPortZero", with_model("", "[server]\nhttp = \"127.0.0.1:0\" #!\n"), "server.http",
       "port in 1..65535"},
      {"BackoffMinAboveMax",
       with_model("", "[server]\nrestart_backoff_min_ms = 500 #!\nrestart_backoff_max_ms = 100\n"),
       "server.restart_backoff_min_ms", "must be <= restart_backoff_max_ms (100)"},
      {"BackoffMaxBelowDefaultMin", with_model("", "[server]\nrestart_backoff_max_ms = 100 #!\n"),
       "server.restart_backoff_max_ms", "must be >= restart_backoff_min_ms (200)"},
      {"TooManyIoThreads", with_model("", "[server]\ntcp_io_threads = 65 #!\n"),
       "server.tcp_io_threads", "must be in 0..64, got 65"},
      {"PollBeyondASecond", with_model("", "[server]\nio_poll_us = 1000001 #!\n"),
       "server.io_poll_us", "must be in 0..1000000, got 1000001"},
      {"ZeroBackoffMin", with_model("", "[server]\nrestart_backoff_min_ms = 0 #!\n"),
       "server.restart_backoff_min_ms", "must be > 0"},
      {"NegativeShutdownGrace", with_model("", "[server]\nshutdown_grace_ms = -1 #!\n"),
       "server.shutdown_grace_ms", "must be >= 0, got -1"},
      {"ZeroReadyTimeout", with_model("", "[server]\nworker_ready_timeout_ms = 0 #!\n"),
       "server.worker_ready_timeout_ms", "must be > 0"},
      // [backend.cpu]
      {"BadCpuMode", with_model("", "[backend.cpu]\nmode = \"pinned\" #!\n"), "backend.cpu.mode",
       "must be one of process, affinity; got 'pinned'"},
      {"NegativeCores", with_model("", "[backend.cpu]\ncores = -2 #!\n"), "backend.cpu.cores",
       "must be in 0..1024, got -2"},
      // [[model]]
      {"NoModel", "[server]\ninstance = \"x\"\n", "model", "at least one [[model]]", 1},
      {"EmptyModelArray", "model = [] #!\n", "model", "at least one [[model]]"},
      {"MissingName", model_with("name = \"a\"\n", ""), "model[0].name", "missing required key", 1},
      {"MissingInputs",
       model_with("inputs = [ { name = \"x\", dtype = \"FP32\", shape = [4] } ]\n", ""),
       "model[0].inputs", "missing required key", 1},
      {"MissingOutputs",
       model_with("outputs = [ { name = \"y\", dtype = \"FP32\", shape = [4] } ]\n", ""),
       "model[0].outputs", "missing required key", 1},
      {"BadModelName", model_with("name = \"a\"", "name = \"a.b\" #!"), "model[0].name",
       "must match [A-Za-z0-9_-]{1,48}; got 'a.b'"},
      {"TooLongModelName", model_with("name = \"a\"", "name = \"" + std::string(49, 'n') + "\" #!"),
       "model[0].name", "must match"},
      {"ZeroSlice", model_with("slice = 40", "slice = 0 #!"), "model[0].slice",
       "must be in (0, 100], got 0"},
      {"SliceOverTheDevice", model_with("slice = 40", "slice = 100.5 #!"), "model[0].slice",
       "must be in (0, 100], got 100.5"},
      {"ZeroSlo", with_model("slo_ms = 0 #!\n"), "model[0].slo_ms", "must be > 0"},
      {"MaxBatchOverLimit", with_model("max_batch = 257 #!\n"), "model[0].max_batch",
       "must be in 1..256, got 257"},
      {"TooManyLanes", with_model("lanes = 65 #!\n"), "model[0].lanes", "must be in 1..64"},
      {"TooManySlotsPerLane", with_model("slots_per_lane = 1025 #!\n"), "model[0].slots_per_lane",
       "must be in 1..1024"},
      {"ZeroWorkingSet", with_model("working_set_kb = 0 #!\n"), "model[0].working_set_kb",
       "must be > 0"},
      {"NegativeFlops", with_model("flops_per_item = -1.5 #!\n"), "model[0].flops_per_item",
       "must be >= 0, got -1.5"},
      {"UnknownKind", with_model("kind = \"tensorflow\" #!\n"), "model[0].kind",
       "must be one of synthetic, null, onnx; got 'tensorflow'"},
      {"EmptyPath", with_model("path = \"\" #!\n"), "model[0].path", "must not be empty"},
      // tensors
      {"EmptyInputs", model_with("inputs = [", "inputs = [ ] #!\n#"), "model[0].inputs",
       "must declare at least one tensor"},
      {"TooManyInputs",
       model_with(
           "inputs = [", "inputs = [ #!\n" +
                             [] {
                               std::string many;
                               for (int i = 0; i < 8; ++i)
                                 many +=
                                     "{ name = \"i" + std::to_string(i) + "\", shape = [1] },\n";
                               return many;
                             }()),
       "model[0].inputs", "at most 8 tensors are allowed, got 9"},
      {"TensorIsNotATable", model_with("inputs = [", "inputs = [ 5, #!\n"), "model[0].inputs[0]",
       "must be a { name, dtype, shape } table, not an integer"},
      {"EmptyTensorName", model_with("{ name = \"x\"", "{ name = \"\""), "model[0].inputs[0].name",
       "must not be empty", 4},
      {"TooLongTensorName",
       model_with("{ name = \"x\"", "{ name = \"" + std::string(32, 't') + "\""),
       "model[0].inputs[0].name", "must be at most 31 characters, got 32", 4},
      {"DuplicateTensorName",
       model_with("{ name = \"y\", dtype = \"FP32\", shape = [4] }",
                  "{ name = \"y\", shape = [4] },\n { name = \"y\", shape = [2] }"),
       "model[0].outputs[1].name", "duplicate tensor name 'y' in model[0].outputs", 6},
      {"MissingTensorShape", model_with(", shape = [4] } ]\noutputs", " } ]\noutputs"),
       "model[0].inputs[0].shape", "missing required key", 4},
      {"UnknownDtype",
       model_with("dtype = \"FP32\", shape = [4] } ]\noutputs",
                  "dtype = \"FP33\", shape = [4] } ]\noutputs"),
       "model[0].inputs[0].dtype", "unknown dtype 'FP33'", 4},
      {"EmptyShape", model_with("shape = [4] } ]\noutputs", "shape = [] } ]\noutputs"),
       "model[0].inputs[0].shape", "must have 1..8 dimensions, got 0", 4},
      {"TooManyDims",
       model_with("shape = [4] } ]\noutputs", "shape = [1,1,1,1,1,1,1,1,1] } ]\noutputs"),
       "model[0].inputs[0].shape", "must have 1..8 dimensions, got 9", 4},
      {"ZeroDim", model_with("shape = [4] } ]\noutputs", "shape = [4, 0] } ]\noutputs"),
       "model[0].inputs[0].shape", "dimension 1 must be > 0, got 0", 4},
      {"FloatDim", model_with("shape = [4] } ]\noutputs", "shape = [2.5] } ]\noutputs"),
       "model[0].inputs[0].shape", "dimension 0 must be an integer, not a float", 4},
      {"ShapeIsNotAnArray", model_with("shape = [4] } ]\noutputs", "shape = 4 } ]\noutputs"),
       "model[0].inputs[0].shape", "must be an array of integers, not an integer", 4},
      {"ItemOverTheByteBudget",
       model_with("shape = [4] } ]\noutputs", "shape = [4096, 4096] } ]\noutputs"), "model[0]",
       "67108880 bytes, more than the 64 MiB budget", 1},
      {"HugeShapeDoesNotOverflowTheBudget",
       model_with("shape = [4] } ]\noutputs",
                  "shape = [4294967296, 4294967296, 4294967296] } ]\noutputs"),
       "model[0]", "more than 2^64 bytes", 1},
  };
  if (!kUnavailableBackend.empty()) {
    const std::string name(kUnavailableBackend);
    cases.push_back({"UnavailableBackend",
                     with_model("", "[server]\nbackend = \"" + name + "\" #!\n"), "server.backend",
                     kHaveHipWing ? "backend 'mps' is not available in this build"
                                  : "backend 'cumask' is not available in this build"});
  }
  return cases;
}

class ConfigErrorTest : public ConfigTest, public ::testing::WithParamInterface<ErrorCase> {};

TEST_P(ConfigErrorTest, IsRejectedWithFileLineAndKey) {
  const ErrorCase& c = GetParam();
  const uint32_t line = c.line != 0 ? c.line : line_of(c.text, "#!");
  expect_error(c.text, line, c.key, c.what);
}

INSTANTIATE_TEST_SUITE_P(EachRule, ConfigErrorTest, ::testing::ValuesIn(error_cases()),
                         [](const ::testing::TestParamInfo<ErrorCase>& case_info) {
                           return std::string(case_info.param.name);
                         });

}  // namespace
}  // namespace sliceserve::controller

namespace sliceserve::controller {
namespace {

constexpr const char* kReconfigConfig = R"([server]
instance = "r"
[policy]
enabled = true
min_slice = 10
min_step = 2.5
grow_p99_fraction = 0.9
shrink_p99_fraction = 0.4
shrink_after = 3
cooldown = 1
target_utilization = 0.7
resize_timeout_ms = 1234
failed_resize_backoff_ms = 99
[[model]]
name = "a"
slice = 20
backend = "cpu:affinity"
policy = false
weights_mb = 16
load_delay_ms = 250
inputs = [ { name = "x", shape = [1] } ]
outputs = [ { name = "y", shape = [1] } ]
[[model]]
name = "b"
slice = 20
inputs = [ { name = "x", shape = [1] } ]
outputs = [ { name = "y", shape = [1] } ]
)";

TEST(ConfigReconfigurationTest, PolicyTableAndModelBackendKeysAreRead) {
  Result<Config> c = parse_config(kReconfigConfig, "r.toml");
  ASSERT_TRUE(c.is_ok()) << c.status().to_string();
  EXPECT_TRUE(c->policy.enabled);
  EXPECT_DOUBLE_EQ(c->policy.tuning.min_slice, 10);
  EXPECT_DOUBLE_EQ(c->policy.tuning.min_step, 2.5);
  EXPECT_DOUBLE_EQ(c->policy.tuning.grow_p99_fraction, 0.9);
  EXPECT_DOUBLE_EQ(c->policy.tuning.shrink_p99_fraction, 0.4);
  EXPECT_EQ(c->policy.tuning.shrink_after, 3u);
  EXPECT_EQ(c->policy.tuning.cooldown, 1u);
  EXPECT_DOUBLE_EQ(c->policy.tuning.target_utilization, 0.7);
  EXPECT_EQ(c->policy.resize_timeout_ms, 1234u);
  EXPECT_EQ(c->policy.failed_resize_backoff_ms, 99u);
  const ModelConfig& a = c->models[0];
  EXPECT_EQ(c->backend_of(a), Backend::kCpuAffinity);
  EXPECT_FALSE(a.policy);
  EXPECT_EQ(a.weights_mb, 16u);
  EXPECT_EQ(a.load_delay_ms, 250u);
  EXPECT_EQ(c->backend_of(c->models[1]), Backend::kCpuProcess) << "inherits [backend.cpu] mode";
  EXPECT_TRUE(c->models[1].policy);
}

TEST(ConfigReconfigurationTest, BadPolicyAndBackendValuesNameTheirKey) {
  std::string text = kReconfigConfig;
  auto expect_bad = [](std::string t, const std::string& key, const std::string& what) {
    Result<Config> c = parse_config(t, "r.toml");
    ASSERT_FALSE(c.is_ok()) << t;
    EXPECT_NE(c.status().message().find("key '" + key + "'"), std::string::npos)
        << c.status().message();
    EXPECT_NE(c.status().message().find(what), std::string::npos) << c.status().message();
  };
  auto replace = [&](const std::string& from, const std::string& to) {
    std::string t = text;
    t.replace(t.find(from), from.size(), to);
    return t;
  };
  if (!kUnavailableBackend.empty()) {
    expect_bad(replace("backend = \"cpu:affinity\"",
                       "backend = \"" + std::string(kUnavailableBackend) + "\""),
               "model[0].backend", "not available in this build");
  }
  expect_bad(replace("backend = \"cpu:affinity\"", "backend = \"gpu\""), "model[0].backend",
             "unknown backend");
  expect_bad(replace("policy = false", "policy = 1"), "model[0].policy", "true or false");
  expect_bad(replace("min_slice = 10", "min_slice = 0"), "policy.min_slice", "must be in");
  expect_bad(replace("enabled = true", "enabled = true\nbogus = 1"), "policy.bogus", "unknown key");
  expect_bad(replace("shrink_p99_fraction = 0.4", "shrink_p99_fraction = 0.95"), "policy",
             "must be below grow_p99_fraction");
}

TEST(ConfigReconfigurationTest, BackendNamesParse) {
  EXPECT_EQ(parse_backend_name("cpu").value(), Backend::kCpuProcess);
  EXPECT_EQ(parse_backend_name("cpu:process").value(), Backend::kCpuProcess);
  EXPECT_EQ(parse_backend_name("cpu:affinity").value(), Backend::kCpuAffinity);
  EXPECT_EQ(parse_backend_name("").status().code(), ErrorCode::kInvalidArgument);
#ifdef SLICESERVE_HAVE_HIP
  EXPECT_EQ(parse_backend_name("cumask").value(), Backend::kCumask);
#else
  EXPECT_EQ(parse_backend_name("cumask").status().code(), ErrorCode::kUnavailable);
#endif
#ifdef SLICESERVE_HAVE_CUDA
  EXPECT_EQ(parse_backend_name("mps").value(), Backend::kMps);
  EXPECT_EQ(parse_backend_name("greenctx").value(), Backend::kGreenctx);
#else
  EXPECT_EQ(parse_backend_name("mps").status().code(), ErrorCode::kUnavailable);
  EXPECT_EQ(parse_backend_name("greenctx").status().code(), ErrorCode::kUnavailable);
#endif
  for (Backend b :
       {Backend::kCpuProcess, Backend::kCpuAffinity, Backend::kMps, Backend::kGreenctx}) {
    EXPECT_EQ(parse_backend_name(backend_name(b)).is_ok(), kHaveCudaWing || !is_gpu_backend(b))
        << backend_name(b);
  }
  EXPECT_EQ(backend_name(Backend::kCpuAffinity), "cpu:affinity");
  EXPECT_EQ(backend_name(Backend::kGreenctx), "greenctx");
  EXPECT_EQ(backend_family(Backend::kCpuAffinity), "cpu");
  EXPECT_EQ(backend_family(Backend::kMps), "mps");
  EXPECT_TRUE(resizes_in_place(Backend::kCpuAffinity));
  EXPECT_TRUE(resizes_in_place(Backend::kGreenctx));
  EXPECT_FALSE(resizes_in_place(Backend::kCpuProcess));
  EXPECT_FALSE(resizes_in_place(Backend::kMps));
}

}  // namespace
}  // namespace sliceserve::controller
