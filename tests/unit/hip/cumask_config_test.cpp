// The cumask backend in sliceserved's config and in what it gives each worker: the
// [backend.cumask] table, its errors, the worker's arguments (resized in place, with the slice
// pool), config/cumask.toml, and the engine's "hip:N" device.

#include <gtest/gtest.h>

#include <algorithm>
#include <string>
#include <string_view>
#include <vector>

#include "sliceserve/backends/layer_profile.h"
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

// ---- placement and right-sizing ----

bool has_flag(const std::vector<std::string>& args, const std::string& flag) {
  return std::find(args.begin(), args.end(), flag) != args.end();
}

TEST_F(CumaskConfigTest, EachCumaskModelIsPlacedAfterTheOnesBeforeIt) {
  // Three cumask models with a cpu one between: the cpu model takes no CUs.
  std::string text = "[server]\nbackend = \"cumask\"\n";
  for (const char* name : {"a", "b", "c"}) {
    text += "[[model]]\nname = \"" + std::string(name) + "\"\nkind = \"onnx\"\npath = \"" +
            model_ + "\"\nslice = " + (name[0] == 'c' ? "35" : "30") + "\n";
    if (name[0] == 'b') {
      text += "backend = \"cpu:affinity\"\n";
    }
  }
  Result<Config> c = parse(text);
  ASSERT_TRUE(c.is_ok()) << c.status().to_string();
  const CumaskPlacement a = cumask_placement(*c, "a");
  EXPECT_EQ(a.shares, (std::vector<double>{30, 35}));
  EXPECT_EQ(a.index, 0u);
  const CumaskPlacement third = cumask_placement(*c, "c");
  EXPECT_EQ(third.shares, (std::vector<double>{30, 35}));
  EXPECT_EQ(third.index, 1u);
  EXPECT_TRUE(cumask_placement(*c, "b").shares.empty()) << "not on cumask";
  auto args = worker_arguments(*c, c->models[2], "/s", 2, {2, 0});
  EXPECT_TRUE(has_pair(args, "--cu-shares", "30,35"));
  EXPECT_TRUE(has_pair(args, "--cu-index", "1"));
  EXPECT_FALSE(has_flag(args, "--profile")) << "right_size is off by default";
  EXPECT_FALSE(has_flag(worker_arguments(*c, c->models[1], "/s", 2, {2, 0}), "--cu-shares"));
  // A resized model keeps its start: the placement is the config's, not the model's now.
  ModelConfig resized = c->models[2];
  resized.slice = 60;
  EXPECT_TRUE(has_pair(worker_arguments(*c, resized, "/s", 2, {2, 0}), "--cu-shares", "30,35"));
}

class CumaskProfileConfigTest : public CumaskConfigTest {
 protected:
  std::string profile_file(const std::string& device, const std::string& model_path) {
    backends::LayerProfile p;
    p.model = "m.onnx";
    auto hash = backends::file_sha256(model_path);
    EXPECT_TRUE(hash.is_ok());
    p.model_sha256 = hash.is_ok() ? *hash : std::string(64, '0');
    p.device = device;
    p.units = {4, 8};
    p.layers = {{"node 'relu' (Relu)", {1.0, 1.0}, 4}};
    return dir_.write(device + ".profile.json", backends::format_layer_profile(p));
  }
  std::string cumask_model(const std::string& extra) const {
    return "[server]\nbackend = \"cumask\"\n" + onnx_model(extra);
  }
};

TEST_F(CumaskProfileConfigTest, RightSizeGivesTheWorkerTheProfile) {
  const std::string profile = profile_file("hip", model_);
  Result<Config> c =
      parse(cumask_model("profile = \"" + profile + "\"\nright_size = true\n"));
  ASSERT_TRUE(c.is_ok()) << c.status().to_string();
  EXPECT_EQ(c->models[0].profile, profile);
  EXPECT_TRUE(c->models[0].right_size);
  auto args = worker_arguments(*c, c->models[0], "/s", 2, {2, 0});
  EXPECT_TRUE(has_pair(args, "--profile", profile));
  EXPECT_TRUE(has_flag(args, "--right-size"));
  // A profile alone is checked and kept, and the worker runs plain cumask.
  Result<Config> off = parse(cumask_model("profile = \"" + profile + "\"\n"));
  ASSERT_TRUE(off.is_ok()) << off.status().to_string();
  EXPECT_FALSE(off->models[0].right_size);
  EXPECT_FALSE(has_flag(worker_arguments(*off, off->models[0], "/s", 2, {2, 0}), "--profile"));
}

TEST_F(CumaskProfileConfigTest, EachRightSizingRuleNamesItsKey) {
  const std::string hip = profile_file("hip", model_);
  expect_error(cumask_model("right_size = true\n"), "model[0].right_size",
               "needs a layer profile of the model");
  expect_error(onnx_model("profile = \"" + hip + "\"\nright_size = true\n"),
               "model[0].right_size", "needs the cumask backend (per-layer CU masks); the model "
                                      "runs on cpu:process ([server] backend)");
  expect_error(cumask_model("profile = \"" + profile_file("cpu", model_) +
                            "\"\nright_size = true\n"),
               "model[0].profile", "right_size needs a profile measured on hip");
  // A profile measured on NVIDIA (slicectl profile --device cuda:N) is a measurement: neither a
  // cumask nor a greenctx model launches layers by it (the profile's key comes first in the file,
  // so its error is the one reported).
  const std::string cuda = profile_file("cuda", model_);
  for (const std::string backend : {"cumask", "greenctx"}) {
    expect_error("[server]\nbackend = \"" + backend + "\"\n" +
                     onnx_model("profile = \"" + cuda + "\"\nright_size = true\n"),
                 "model[0].profile",
                 "right_size needs a profile measured on hip (CU counts); this one was measured "
                 "on cuda (SM counts, for measuring only: there is no per-layer launch on NVIDIA "
                 "yet, docs/nvidia.md)");
  }
  // Kept without right_size: a profile is checked, and unused.
  Result<Config> kept =
      parse("[server]\nbackend = \"greenctx\"\n" + onnx_model("profile = \"" + cuda + "\"\n"));
  ASSERT_TRUE(kept.is_ok()) << kept.status().to_string();
  EXPECT_FALSE(kept->models[0].right_size);
  expect_error(cumask_model("profile = \"" + dir_.path() + "/none.json\"\n"), "model[0].profile",
               "No such file");
  expect_error(cumask_model("profile = \"" + dir_.write("bad.json", "{}") + "\"\n"),
               "model[0].profile", "not a sliceserve-layer-profile file");
  expect_error(cumask_model("right_size = 1\n"), "model[0].right_size", "must be true or false");
  // A profile of another model file.
  const std::string other = dir_.write("other.onnx", "other bytes");
  expect_error(cumask_model("profile = \"" + profile_file("hip", other) + "\"\n"),
               "model[0].profile", "the layer profile is of model 'm.onnx'");
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
