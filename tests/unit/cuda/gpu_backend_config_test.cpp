// The mps and greenctx backends in sliceserved's config and in what it gives each worker: the
// [backend.mps] / [backend.greenctx] tables, the per-model keys, every new error, and the pure
// worker argument and environment functions.

#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

#include "sliceserve/controller/config.h"
#include "sliceserve/controller/model_supervisor.h"
#include "sliceserve/controller/mps_session.h"
#include "sliceserve/controller/worker_process.h"

namespace sliceserve::controller {
namespace {

namespace fs = std::filesystem;

// An onnx model needs a readable file: the config test's tensors are declared, so any existing
// ONNX file would do, but the parser reads it. The models of config/mps.toml are built by
// scripts/models; tests that need one skip without it.
const std::string kModelFile = SLICESERVE_SOURCE_DIR "/models/resnet18-32.onnx";

bool have_model() { return fs::exists(kModelFile); }

std::string onnx_model(std::string_view name, std::string_view extra = "") {
  return "[[model]]\nname = \"" + std::string(name) + "\"\nkind = \"onnx\"\npath = \"" +
         kModelFile + "\"\nslice = 40\n" + std::string(extra);
}

constexpr std::string_view kSynthetic = R"([[model]]
name = "s"
slice = 20
inputs = [ { name = "x", shape = [4] } ]
outputs = [ { name = "y", shape = [4] } ]
)";

Result<Config> parse(std::string_view text) { return parse_config(text, "gpu.toml"); }

void expect_error(std::string_view text, std::string_view key, std::string_view what) {
  Result<Config> c = parse(text);
  ASSERT_FALSE(c.is_ok()) << text;
  EXPECT_EQ(c.status().code(), ErrorCode::kInvalidArgument);
  EXPECT_NE(c.status().message().find("key '" + std::string(key) + "': "), std::string::npos)
      << c.status().message();
  EXPECT_NE(c.status().message().find(what), std::string::npos) << c.status().message();
}

bool has_pair(const std::vector<std::string>& args, const std::string& k, const std::string& v) {
  for (size_t i = 0; i + 1 < args.size(); ++i) {
    if (args[i] == k && args[i + 1] == v) return true;
  }
  return false;
}

bool has(const std::vector<std::string>& args, const std::string& item) {
  return std::find(args.begin(), args.end(), item) != args.end();
}

TEST(GpuBackendConfigTest, DefaultsOfTheMpsAndGreenctxTables) {
  Result<Config> c = parse(kSynthetic);
  ASSERT_TRUE(c.is_ok()) << c.status().to_string();
  EXPECT_EQ(c->mps.control, MpsControlMode::kStart);
  EXPECT_EQ(c->mps.fallback, MpsFallbackMode::kError);
  EXPECT_EQ(c->mps.thread_percentage, MpsThreads::kSlice);
  EXPECT_EQ(c->mps.device, 0u);
  EXPECT_TRUE(c->mps.pipe_dir.empty());
  EXPECT_EQ(c->greenctx.device, 0u);
  EXPECT_FALSE(c->greenctx.mps);
  EXPECT_FALSE(c->needs_mps_control()) << "a cpu model needs no MPS";
}

TEST(GpuBackendConfigTest, EveryMpsAndGreenctxKeyIsRead) {
  if (!have_model()) GTEST_SKIP() << kModelFile << " is not built (scripts/models)";
  Result<Config> c = parse(R"([server]
backend = "mps"
[backend.mps]
control = "attach"
pipe_dir = "/run/mps/pipe"
log_dir = "/run/mps/log"
fallback = "timeshare"
thread_percentage = "full"
device = 1
[backend.greenctx]
device = 2
mps = true
)" + onnx_model("m", "device_mem_mb = 2048\n") +
                           onnx_model("g", "backend = \"greenctx\"\n"));
  ASSERT_TRUE(c.is_ok()) << c.status().to_string();
  EXPECT_EQ(c->server.backend, "mps");
  EXPECT_EQ(c->mps.control, MpsControlMode::kAttach);
  EXPECT_EQ(c->mps.pipe_dir, "/run/mps/pipe");
  EXPECT_EQ(c->mps.log_dir, "/run/mps/log");
  EXPECT_EQ(c->mps.fallback, MpsFallbackMode::kTimeshare);
  EXPECT_EQ(c->mps.thread_percentage, MpsThreads::kFull);
  EXPECT_EQ(c->mps.device, 1u);
  EXPECT_EQ(c->greenctx.device, 2u);
  EXPECT_TRUE(c->greenctx.mps);
  EXPECT_EQ(c->backend_of(c->models[0]), Backend::kMps) << "from [server] backend";
  EXPECT_EQ(c->models[0].device_mem_mb, 2048u);
  EXPECT_EQ(c->backend_of(c->models[1]), Backend::kGreenctx);
  EXPECT_TRUE(c->needs_mps_control());
}

TEST(GpuBackendConfigTest, WhichModelsNeedTheMpsControl) {
  if (!have_model()) GTEST_SKIP() << kModelFile << " is not built (scripts/models)";
  const std::string greenctx = onnx_model("g", "backend = \"greenctx\"\n");
  EXPECT_FALSE(parse(greenctx)->needs_mps_control()) << "greenctx without mps = true";
  EXPECT_TRUE(parse("[backend.greenctx]\nmps = true\n" + greenctx)->needs_mps_control());
  const std::string mps = onnx_model("m", "backend = \"mps\"\n");
  EXPECT_TRUE(parse(mps)->needs_mps_control());
  EXPECT_FALSE(parse("[backend.mps]\ncontrol = \"off\"\n" + mps)->needs_mps_control())
      << "control = off: no MPS at all";
  EXPECT_FALSE(
      parse("[backend.mps]\ncontrol = \"off\"\n[backend.greenctx]\nmps = true\n" + greenctx)
          ->needs_mps_control());
}

TEST(GpuBackendConfigTest, EachNewRuleNamesItsKey) {
  expect_error("[backend.mps]\ncontrol = \"auto\"\n" + std::string(kSynthetic),
               "backend.mps.control", "must be one of start, attach, off; got 'auto'");
  expect_error("[backend.mps]\nfallback = \"cpu\"\n" + std::string(kSynthetic),
               "backend.mps.fallback", "must be one of error, timeshare");
  expect_error("[backend.mps]\nthread_percentage = 50\n" + std::string(kSynthetic),
               "backend.mps.thread_percentage", "must be a string");
  expect_error("[backend.mps]\nthread_percentage = \"half\"\n" + std::string(kSynthetic),
               "backend.mps.thread_percentage", "must be one of slice, full");
  expect_error("[backend.mps]\npipe_dir = \"relative/pipe\"\n" + std::string(kSynthetic),
               "backend.mps.pipe_dir", "must be an absolute path");
  expect_error(
      "[backend.mps]\ncontrol = \"off\"\nlog_dir = \"/var/log/mps\"\n" + std::string(kSynthetic),
      "backend.mps.log_dir", "has no effect with control = \"off\"");
  expect_error("[backend.mps]\ndevice = -1\n" + std::string(kSynthetic), "backend.mps.device",
               "must be in 0..1023");
  expect_error("[backend.mps]\nthreads = 4\n" + std::string(kSynthetic), "backend.mps.threads",
               "unknown key");
  expect_error("[backend.greenctx]\nmps = \"yes\"\n" + std::string(kSynthetic),
               "backend.greenctx.mps", "must be true or false");
  expect_error("[backend.greenctx]\nsms = 8\n" + std::string(kSynthetic), "backend.greenctx.sms",
               "unknown key");
#ifndef SLICESERVE_HAVE_HIP
  expect_error("[backend.cumask]\n" + std::string(kSynthetic), "backend.cumask",
               "unknown key (the backends are cpu, mps and greenctx)");
  expect_error("[server]\nbackend = \"cumask\"\n" + std::string(kSynthetic), "server.backend",
               "backend 'cumask' is not available in this build");
#endif
  // The synthetic and null kinds burn or skip host compute: not on a GPU slice.
  expect_error(std::string(kSynthetic) + "backend = \"mps\"\n", "model[0].kind",
               "model kind 'synthetic' runs on the cpu backend only, not on mps");
  expect_error("[server]\nbackend = \"greenctx\"\n" + std::string(kSynthetic), "model[0].kind",
               "runs on the cpu backend only, not on greenctx ([server] backend)");
  expect_error(std::string(kSynthetic) + "kind = \"null\"\nbackend = \"greenctx\"\n",
               "model[0].kind", "model kind 'null' runs on the cpu backend only");
  expect_error(std::string(kSynthetic) + "device_mem_mb = 512\n", "model[0].device_mem_mb",
               "applies to the mps backend only; the model runs on cpu:process");
  expect_error(std::string(kSynthetic) + "device_mem_mb = 0\n", "model[0].device_mem_mb",
               "must be in 1..16777216, got 0");
}

TEST(GpuBackendConfigTest, GreenctxRefusesAnInheritedMpsPercentageBelow100) {
  if (!have_model()) GTEST_SKIP() << kModelFile << " is not built (scripts/models)";
  Result<Config> c = parse(onnx_model("g", "backend = \"greenctx\"\n"));
  ASSERT_TRUE(c.is_ok()) << c.status().to_string();
  EXPECT_TRUE(check_greenctx_environment(*c, nullptr).is_ok());
  EXPECT_TRUE(check_greenctx_environment(*c, "100").is_ok());
  Status below = check_greenctx_environment(*c, "40");
  EXPECT_EQ(below.code(), ErrorCode::kInvalidArgument);
  EXPECT_NE(below.message().find("greenctx must not be combined with an MPS thread percentage "
                                 "below 100"),
            std::string::npos)
      << below.message();
  EXPECT_NE(below.message().find("model 'g'"), std::string::npos) << below.message();
  EXPECT_NE(below.message().find("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=40"), std::string::npos);
  EXPECT_EQ(check_greenctx_environment(*c, "lots").code(), ErrorCode::kInvalidArgument);
  // Only greenctx cares: an mps model's own percentage replaces the inherited one.
  Result<Config> mps = parse(onnx_model("m", "backend = \"mps\"\n"));
  ASSERT_TRUE(mps.is_ok());
  EXPECT_TRUE(check_greenctx_environment(*mps, "40").is_ok());
}

class GpuWorkerSetupTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!have_model()) GTEST_SKIP() << kModelFile << " is not built (scripts/models)";
  }
  Config config(std::string_view head, std::string_view model_extra) {
    Result<Config> c = parse(std::string(head) + onnx_model("m", model_extra));
    EXPECT_TRUE(c.is_ok()) << c.status().to_string();
    return c.is_ok() ? *c : Config{};
  }
  MpsState running() const {
    MpsState s;
    s.sharing = MpsState::Sharing::kMps;
    s.pipe_dir = "/run/ss/mps/pipe";
    s.log_dir = "/run/ss/mps/log";
    s.started = true;
    return s;
  }
  std::vector<std::string> env(const Config& c, const MpsState& s) {
    Result<std::vector<std::string>> e = worker_environment(c, c.models[0], s);
    EXPECT_TRUE(e.is_ok()) << e.status().to_string();
    return e.is_ok() ? *e : std::vector<std::string>{};
  }
};

TEST_F(GpuWorkerSetupTest, MpsWorkerArgumentsNameTheDeviceAndNoPool) {
  Config c = config("[backend.mps]\ndevice = 3\n", "backend = \"mps\"\n");
  auto args = worker_arguments(c, c.models[0], "/sliceserve.g.m", 2, {2, 0});
  EXPECT_TRUE(has_pair(args, "--backend", "mps"));
  EXPECT_TRUE(has_pair(args, "--device", "3"));
  EXPECT_TRUE(has_pair(args, "--slice", "40"));
  EXPECT_TRUE(has_pair(args, "--model-path", kModelFile));
  EXPECT_FALSE(has(args, "--slice-pool")) << "mps resizes by shadow";
  EXPECT_FALSE(has(args, "--cpu-mode"));
}

TEST_F(GpuWorkerSetupTest, GreenctxWorkerArgumentsCarryTheSlicePool) {
  Config c = config("[backend.greenctx]\ndevice = 1\n[policy]\nmin_slice = 20\nmin_step = 40\n",
                    "backend = \"greenctx\"\n");
  auto args = worker_arguments(c, c.models[0], "/sliceserve.g.m", 2, {2, 0});
  EXPECT_TRUE(has_pair(args, "--backend", "greenctx"));
  EXPECT_TRUE(has_pair(args, "--device", "1"));
  EXPECT_TRUE(has_pair(args, "--slice-pool", "20,60,100")) << "resized in place";
}

TEST_F(GpuWorkerSetupTest, MpsWorkerEnvironmentHasItsSliceAndMemoryLimit) {
  Config c = config("[backend.mps]\ndevice = 1\n", "backend = \"mps\"\ndevice_mem_mb = 1024\n");
  c.models[0].slice = 37.9;
  const std::vector<std::string> e = env(c, running());
  EXPECT_TRUE(has(e, "CUDA_MPS_PIPE_DIRECTORY=/run/ss/mps/pipe"));
  EXPECT_TRUE(has(e, "CUDA_MPS_LOG_DIRECTORY=/run/ss/mps/log"));
  EXPECT_TRUE(has(e, "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=37")) << "rounded down, as MPS does";
  EXPECT_TRUE(has(e, "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT=1=1024M"));
}

TEST_F(GpuWorkerSetupTest, FullThreadPercentageGivesEveryMpsWorker100) {
  Config c = config("[backend.mps]\nthread_percentage = \"full\"\n", "backend = \"mps\"\n");
  const std::vector<std::string> e = env(c, running());
  EXPECT_TRUE(has(e, "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=100"));
  EXPECT_EQ(
      std::count_if(e.begin(), e.end(),
                    [](const std::string& x) { return x.find("PINNED") != std::string::npos; }),
      0);
}

TEST_F(GpuWorkerSetupTest, GreenctxUnderMpsGetsOnlyThePipeAndLogDirs) {
  Config c = config("[backend.greenctx]\nmps = true\n", "backend = \"greenctx\"\n");
  EXPECT_EQ(env(c, running()),
            (std::vector<std::string>{"CUDA_MPS_PIPE_DIRECTORY=/run/ss/mps/pipe",
                                      "CUDA_MPS_LOG_DIRECTORY=/run/ss/mps/log"}));
  Config alone = config("", "backend = \"greenctx\"\n");
  EXPECT_TRUE(env(alone, running()).empty()) << "greenctx without mps = true";
}

TEST_F(GpuWorkerSetupTest, NoMpsNoExtraEnvironment) {
  Config c = config("", "backend = \"mps\"\n");
  MpsState time_shared;
  time_shared.sharing = MpsState::Sharing::kTimeShared;
  EXPECT_TRUE(env(c, time_shared).empty()) << "fell back: plain CUDA clients";
  Config off = config("[backend.mps]\ncontrol = \"off\"\n", "backend = \"mps\"\n");
  EXPECT_TRUE(env(off, running()).empty()) << "control = off";
  Config cpu = config("", "");
  cpu.models[0].kind = "synthetic";
  EXPECT_TRUE(env(cpu, running()).empty());
}

TEST_F(GpuWorkerSetupTest, StatusNamesTheBackendAndATimeSharedFallback) {
  Config c = config("", "backend = \"mps\"\n");
  MpsState time_shared;
  time_shared.sharing = MpsState::Sharing::kTimeShared;
  EXPECT_EQ(backend_display(c, Backend::kMps, running()), "mps");
  EXPECT_EQ(backend_display(c, Backend::kMps, time_shared), "mps (time-shared)");
  EXPECT_EQ(backend_display(c, Backend::kGreenctx, time_shared), "greenctx")
      << "greenctx without mps = true never wanted MPS";
  EXPECT_EQ(backend_display(c, Backend::kCpuAffinity, time_shared), "cpu:affinity");
  Config off = config("[backend.mps]\ncontrol = \"off\"\n", "backend = \"mps\"\n");
  EXPECT_EQ(backend_display(off, Backend::kMps, MpsState{}), "mps (time-shared)");
  EXPECT_EQ(sharing_name(MpsState::Sharing::kTimeShared), "time-shared");
}

TEST(SpawnEnvironmentTest, ExtraEntriesReplaceOrAppend) {
  const char* base[] = {"PATH=/usr/bin", "CUDA_MPS_PIPE_DIRECTORY=/tmp/nvidia-mps", "HOME=/root",
                        nullptr};
  EXPECT_EQ(spawn_environment(base, {"CUDA_MPS_PIPE_DIRECTORY=/run/pipe", "X=1"}),
            (std::vector<std::string>{"PATH=/usr/bin", "HOME=/root",
                                      "CUDA_MPS_PIPE_DIRECTORY=/run/pipe", "X=1"}));
  EXPECT_EQ(spawn_environment(base, {}),
            (std::vector<std::string>{"PATH=/usr/bin", "CUDA_MPS_PIPE_DIRECTORY=/tmp/nvidia-mps",
                                      "HOME=/root"}));
  const char* prefix[] = {"CUDA_MPS_PIPE=keep", nullptr};
  EXPECT_EQ(spawn_environment(prefix, {"CUDA_MPS_PIPE_DIRECTORY=/p"}),
            (std::vector<std::string>{"CUDA_MPS_PIPE=keep", "CUDA_MPS_PIPE_DIRECTORY=/p"}))
      << "names match whole, not by prefix";
  EXPECT_TRUE(spawn_environment(nullptr, {}).empty());
}

// config/mps.toml and config/greenctx.toml parse (with their models built).
TEST(GpuBackendConfigTest, ExampleConfigsLoad) {
  for (const char* name : {"mps", "greenctx"}) {
    SCOPED_TRACE(name);
    const std::string path = std::string(SLICESERVE_SOURCE_DIR "/config/") + name + ".toml";
    Result<Config> c = load_config(path);
    if (!c.is_ok() && c.status().message().find("model file not found") != std::string::npos) {
      GTEST_SKIP() << c.status().message() << " (scripts/models builds it)";
    }
    ASSERT_TRUE(c.is_ok()) << c.status().to_string();
    EXPECT_EQ(c->server.backend, name);
    ASSERT_FALSE(c->models.empty());
    for (const ModelConfig& m : c->models) {
      EXPECT_EQ(m.kind, "onnx");
      EXPECT_EQ(backend_name(c->backend_of(m)), name);
    }
  }
}

}  // namespace
}  // namespace sliceserve::controller
