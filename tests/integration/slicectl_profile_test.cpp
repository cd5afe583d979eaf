// slicectl profile on this machine's cpu (thread counts of a cpu affinity slice), as a subprocess
// on a small CNN in a temporary folder: the profile file it writes (parsed by the strict parser),
// its progress, and the errors for bad counts, devices and models.

#include <gtest/gtest.h>
#include <onnx/onnx_pb.h>
#include <unistd.h>

#include <fstream>
#include <string>
#include <vector>

#include "sliceserve/backends/cpu/cpu_topology.h"
#include "sliceserve/backends/layer_profile.h"
#include "support/cli_run.h"
#include "support/daemon_harness.h"
#include "support/onnx_model_builder.h"

namespace sliceserve {
namespace {

using testing::CliRun;
using testing::slicectl;
using testing::TempDir;

// x [N,3,16,16] -> Conv 3x3 (8 channels) -> Relu -> MaxPool 2x2 -> Flatten -> Gemm -> y [N,10].
std::string small_cnn() {
  testing::ModelBuilder b;
  b.input("x", {-1, 3, 16, 16});
  auto add = [&](const std::string& name, const std::vector<int64_t>& dims) {
    auto* t = b.init(name, onnx::TensorProto::FLOAT, dims);
    int64_t n = 1;
    for (int64_t d : dims) n *= d;
    for (int64_t i = 0; i < n; ++i) t->add_float_data(float(i % 7) * 0.01F - 0.03F);
  };
  add("conv_w", {8, 3, 3, 3});
  add("conv_b", {8});
  add("fc_w", {10, 8 * 7 * 7});
  add("fc_b", {10});
  testing::set_ints(b.node("Conv", {"x", "conv_w", "conv_b"}, {"c"}, "conv"), "kernel_shape",
                    {3, 3});
  b.node("Relu", {"c"}, {"r"}, "relu");
  auto* pool = b.node("MaxPool", {"r"}, {"p"}, "pool");
  testing::set_ints(pool, "kernel_shape", {2, 2});
  testing::set_ints(pool, "strides", {2, 2});
  b.node("Flatten", {"p"}, {"f"}, "flatten");
  testing::set_int(b.node("Gemm", {"f", "fc_w", "fc_b"}, {"y"}, "fc"), "transB", 1);
  b.output("y", {-1, 10});
  return b.bytes();
}

class SlicectlProfileTest : public ::testing::Test {
 protected:
  void SetUp() override {
    model_ = dir_.path() + "/cnn.onnx";
    std::ofstream(model_, std::ios::binary) << small_cnn();
    auto cpus = backends::process_cpus();
    ASSERT_TRUE(cpus.is_ok());
    cpus_ = unsigned(cpus->size());
  }
  std::string path(const std::string& name) const { return dir_.path() + "/" + name; }

  TempDir dir_;
  std::string model_;
  unsigned cpus_ = 1;
};

TEST_F(SlicectlProfileTest, WritesEachLayersLatencyPerThreadCountAndItsRightSize) {
  const std::string units = cpus_ >= 2 ? "1,2" : "1";
  const CliRun run = slicectl("profile " + model_ + " --device cpu --units " + units +
                              " --batch 2 --repeats 3 --output " + path("p.json"));
  ASSERT_EQ(run.rc, 0) << run.err;
  // Progress: one line per count, then the summary.
  EXPECT_NE(run.err.find("profile: 1 threads (1/"), std::string::npos) << run.err;
  EXPECT_NE(run.err.find("-> " + path("p.json")), std::string::npos) << run.err;

  auto profile = backends::read_layer_profile(path("p.json"));
  ASSERT_TRUE(profile.is_ok()) << profile.status().to_string();
  EXPECT_EQ(profile->model, "cnn.onnx");
  EXPECT_TRUE(backends::check_layer_profile_model(*profile, model_).is_ok());
  EXPECT_EQ(profile->device, "cpu");
  EXPECT_EQ(profile->batch, 2);
  EXPECT_EQ(profile->repeats, 3u);
  EXPECT_EQ(profile->units, cpus_ >= 2 ? (std::vector<unsigned>{1, 2})
                                       : (std::vector<unsigned>{1}));
  // The conv (Relu fused into it), the pool and the fc are steps of their own.
  ASSERT_GE(profile->layers.size(), 3u);
  auto has = [&](const std::string& node) {
    for (const auto& layer : profile->layers) {
      if (layer.label.find("'" + node + "'") != std::string::npos) return true;
    }
    return false;
  };
  EXPECT_TRUE(has("conv"));
  EXPECT_TRUE(has("pool"));
  EXPECT_TRUE(has("fc"));
  for (const auto& layer : profile->layers) {
    auto right = backends::select_right_size(profile->units, layer.ms);
    ASSERT_TRUE(right.is_ok());
    EXPECT_EQ(layer.right_size, *right) << layer.label;
    for (double ms : layer.ms) EXPECT_GT(ms, 0.0) << layer.label;
  }
}

TEST_F(SlicectlProfileTest, TheDefaultFileIsBesideTheModel) {
  const CliRun run = slicectl("profile " + model_ + " --units 1 --repeats 1");
  ASSERT_EQ(run.rc, 0) << run.err;
  EXPECT_TRUE(backends::read_layer_profile(path("cnn.cpu.profile.json")).is_ok());
}

TEST_F(SlicectlProfileTest, BadCountsDevicesAndModelsAreClearErrors) {
  struct Case {
    std::string args;
    int rc;
    std::string error;
  };
  const std::vector<Case> cases = {
      {"--units 2,1", 2, "--units must increase: 1 follows 2"},
      {"--units 0", 2, "--units: 0 threads is outside 1.."},
      {"--units " + std::to_string(cpus_ + 1), 2, "threads is outside 1.." + std::to_string(cpus_)},
      {"--device gpu:0", 2, "--device gpu:0: give cpu, hip:N or cuda:N"},
      {"--device hip:x", 2, "give cpu, hip:N or cuda:N"},
      {"--device cuda:", 2, "give cpu, hip:N or cuda:N"},
      {"--device hip:0", 1, "no HIP device"},
      {"--device cuda:0", 1, "no CUDA device"},
      {"--batch 0", 105, ""},  // CLI11's range check
  };
  for (const Case& c : cases) {
    const CliRun run = slicectl("profile " + model_ + " --output " + path("x.json") + " " + c.args);
    EXPECT_EQ(run.rc, c.rc) << c.args << ": " << run.err;
    EXPECT_NE(run.err.find(c.error), std::string::npos) << c.args << ": " << run.err;
  }
  EXPECT_NE(access(path("x.json").c_str(), F_OK), 0) << "no file for a failed profile";
  const CliRun missing = slicectl("profile " + path("none.onnx") + " --units 1");
  EXPECT_EQ(missing.rc, 2) << missing.err;
  EXPECT_NE(missing.err.find("none.onnx"), std::string::npos) << missing.err;
}

}  // namespace
}  // namespace sliceserve
