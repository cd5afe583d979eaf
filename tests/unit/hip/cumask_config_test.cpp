// The cumask backend in sliceserved's config and in what it gives each worker: the
// [backend.cumask] table, its errors, the worker's arguments (resized in place, with the slice
// pool), config/cumask.toml, and the engine's "hip:N" device.

#include <gtest/gtest.h>

#include <algorithm>
#include <string>
#include <string_view>
#include <vector>

#include "sliceserve/controller/config.h"
#include "sliceserve/controller/model_supervisor.h"
#include "sliceserve/worker/engine/engine.h"
#include "support/daemon_harness.h"
#include "support/onnx_model_builder.h"

namespace sliceserve::controller {
namespace {

bool has_pair(const std::vector<std::string>& args, const std::string& k, const std::string& v) {
  for (size_t i = 0; i + 1 < args.size(); ++i) {
    if (args[i] == k && args[i + 1] == v) return true;
  }
  return false;
}

class CumaskConfigTest : public ::testing::Test {
 protected:
  void SetUp() override {
    testing::ModelBuilder b;
    b.input("x", {-1, 4});
    b.output("y", {-1, 4});
    b.node("Relu", {"x"}, {"y"}, "relu");
    model_ = dir_.write("m.onnx", b.bytes());
  }
  std::string onnx_model(std::string_view extra = "") const {
    return "[[model]]\nname = \"m\"\nkind = \"onnx\"\npath = \"" + model_ + "\"\nslice = 40\n" +
           std::string(extra);
  }
  static Result<Config> parse(const std::string& text) { return parse_config(text, "amd.toml"); }
  void expect_error(const std::string& text, std::string_view key, std::string_view what) {
    Result<Config> c = parse(text);
    ASSERT_FALSE(c.is_ok()) << text;
    EXPECT_EQ(c.status().code(), ErrorCode::kInvalidArgument);
    EXPECT_NE(c.status().message().find("key '" + std::string(key) + "': "), std::string::npos)
        << c.status().message();
    EXPECT_NE(c.status().message().find(what), std::string::npos) << c.status().message();
  }

  testing::TempDir dir_;
  std::string model_;
};

TEST_F(CumaskConfigTest, DefaultsOfTheTable) {
  Result<Config> c = parse("[server]\nbackend = \"cumask\"\n" + onnx_model());
  ASSERT_TRUE(c.is_ok()) << c.status().to_string();
  EXPECT_EQ(c->cumask.device, 0u);
  EXPECT_EQ(c->cumask.policy, CumaskPolicy::kSpread);
  EXPECT_EQ(c->cumask.shader_engines, 0u);
  EXPECT_FALSE(c->cumask.wgp.has_value());
  EXPECT_EQ(c->backend_of(c->models[0]), Backend::kCumask);
  EXPECT_FALSE(c->needs_mps_control());
}

TEST_F(CumaskConfigTest, EveryKeyIsRead) {
  Result<Config> c =
      parse("[backend.cumask]\ndevice = 1\npolicy = \"pack\"\nshader_engines = 6\nwgp = true\n" +
            onnx_model("backend = \"cumask\"\n"));
  ASSERT_TRUE(c.is_ok()) << c.status().to_string();
  EXPECT_EQ(c->cumask.device, 1u);
  EXPECT_EQ(c->cumask.policy, CumaskPolicy::kPack);
  EXPECT_EQ(c->cumask.shader_engines, 6u);
  EXPECT_EQ(c->cumask.wgp, true);
  EXPECT_EQ(c->backend_of(c->models[0]), Backend::kCumask) << "the model's own key";
}

TEST_F(CumaskConfigTest, EachRuleNamesItsKey) {
  const std::string model = onnx_model();
  expect_error("[backend.cumask]\npolicy = \"balanced\"\n" + model, "backend.cumask.policy",
               "must be one of spread, pack");
  expect_error("[backend.cumask]\nshader_engines = 65\n" + model, "backend.cumask.shader_engines",
               "must be in 0..64");
  expect_error("[backend.cumask]\nwgp = 1\n" + model, "backend.cumask.wgp",
               "must be true or false");
  expect_error("[backend.cumask]\ndevice = -1\n" + model, "backend.cumask.device",
               "must be in 0..1023");
  expect_error("[backend.cumask]\nmask = \"0xff\"\n" + model, "backend.cumask.mask", "unknown key");
  expect_error(
      "[server]\nbackend = \"cumask\"\n[[model]]\nname = \"s\"\nslice = 20\ninputs = [ { name = "
      "\"x\", shape = [4] } ]\noutputs = [ { name = \"y\", shape = [4] } ]\n",
      "model[0].kind", "runs on the cpu backend only, not on cumask");
}

TEST_F(CumaskConfigTest, TheBackendNameRoundTripsAndResizesInPlace) {
  auto parsed = parse_backend_name("cumask");
  ASSERT_TRUE(parsed.is_ok()) << parsed.status().to_string();
  EXPECT_EQ(*parsed, Backend::kCumask);
  EXPECT_EQ(backend_name(Backend::kCumask), "cumask");
  EXPECT_EQ(backend_family(Backend::kCumask), "cumask");
  EXPECT_TRUE(resizes_in_place(Backend::kCumask));
  EXPECT_TRUE(is_gpu_backend(Backend::kCumask));
  EXPECT_EQ(cumask_policy_name(CumaskPolicy::kPack), "pack");
  EXPECT_EQ(cumask_policy_name(CumaskPolicy::kSpread), "spread");
}

TEST_F(CumaskConfigTest, WorkerArgumentsCarryTheDeviceThePolicyAndTheSlicePool) {
  Result<Config> c = parse(
      "[backend.cumask]\ndevice = 1\npolicy = \"pack\"\nshader_engines = 4\n"
      "[policy]\nmin_slice = 20\nmin_step = 40\n" +
      onnx_model("backend = \"cumask\"\n"));
  ASSERT_TRUE(c.is_ok()) << c.status().to_string();
  auto args = worker_arguments(*c, c->models[0], "/sliceserve.a.m", 2, {2, 0});
  EXPECT_TRUE(has_pair(args, "--backend", "cumask"));
  EXPECT_TRUE(has_pair(args, "--device", "1"));
  EXPECT_TRUE(has_pair(args, "--cu-policy", "pack"));
  EXPECT_TRUE(has_pair(args, "--shader-engines", "4"));
  EXPECT_TRUE(has_pair(args, "--wgp", "auto"));
  EXPECT_TRUE(has_pair(args, "--slice-pool", "20,60,100")) << "resized in place";
  EXPECT_EQ(std::find(args.begin(), args.end(), "--cpu-mode"), args.end());
  c->cumask.wgp = false;
  EXPECT_TRUE(has_pair(worker_arguments(*c, c->models[0], "/s", 2, {2, 0}), "--wgp", "false"));
  // No CUDA weights to share: the environment is the controller's.
  auto env = worker_environment(*c, c->models[0], MpsState{});
  ASSERT_TRUE(env.is_ok());
  EXPECT_TRUE(env->empty());
}

// config/cumask.toml parses (its models built by scripts/models).
TEST(CumaskExampleConfigTest, Loads) {
  auto c = load_config(SLICESERVE_SOURCE_DIR "/config/cumask.toml");
  if (!c.is_ok() && c.status().message().find("model file not found") != std::string::npos) {
    GTEST_SKIP() << c.status().message() << " (scripts/models builds it)";
  }
  ASSERT_TRUE(c.is_ok()) << c.status().to_string();
  EXPECT_EQ(c->server.backend, "cumask");
  ASSERT_FALSE(c->models.empty());
  for (const ModelConfig& m : c->models) {
    EXPECT_EQ(m.kind, "onnx");
    EXPECT_EQ(c->backend_of(m), Backend::kCumask);
  }
}

// The engine's "hip:N" is the HIP executor: without an AMD GPU a clear kUnavailable at load.
TEST(CumaskEngineTest, HipDevicesReachTheHipExecutorAndSayWhenThereIsNoDevice) {
  auto engine = worker::engine::Engine::load_graph({}, {.device = "hip:0"});
  ASSERT_FALSE(engine.is_ok());
  EXPECT_EQ(engine.status().code(), ErrorCode::kUnavailable);
  EXPECT_EQ(engine.status().message().rfind("no HIP device: ", 0), 0u)
      << engine.status().message();
  for (const std::string device : {"hip:", "hip:x", "hip:-1"}) {
    auto bad = worker::engine::Engine::load_graph({}, {.device = device});
    ASSERT_FALSE(bad.is_ok()) << device;
    EXPECT_EQ(bad.status().code(), ErrorCode::kInvalidArgument) << device;
    EXPECT_NE(bad.status().message().find("the HIP ordinal must be a number"), std::string::npos)
        << bad.status().message();
  }
}

}  // namespace
}  // namespace sliceserve::controller
