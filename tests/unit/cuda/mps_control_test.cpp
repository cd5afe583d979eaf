#include "sliceserve/backends/cuda/mps_control.h"

#include <gtest/gtest.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "support/fake_mps_control.h"

namespace sliceserve::backends {
namespace {

using std::chrono::milliseconds;
using Clock = std::chrono::steady_clock;

::testing::AssertionResult Contains(const std::string& text, const std::string& part) {
  if (text.find(part) != std::string::npos) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "\"" << text << "\" does not contain \"" << part << "\"";
}

using sliceserve::testing::ScopedEnv;

class MpsControlTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/mps_control_test_XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    fake_ = sliceserve::testing::write_fake_mps_control(dir_);
    ASSERT_FALSE(fake_.empty());
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  void write(const std::string& path, const std::string& text) const {
    std::ofstream out(path);
    out << text;
  }
  std::string path(const std::string& name) const { return dir_ + "/" + name; }
  bool exists(const std::string& p) const { return std::filesystem::exists(p); }

  // The lines the fake logged.
  std::vector<std::string> calls() const {
    std::vector<std::string> lines;
    std::ifstream in(path("calls.log"));
    for (std::string line; std::getline(in, line);) lines.push_back(line);
    return lines;
  }
  size_t count_calls(const std::string& prefix) const {
    size_t n = 0;
    for (const auto& line : calls()) n += line.rfind(prefix, 0) == 0 ? 1 : 0;
    return n;
  }

  MpsOptions start_options(milliseconds timeout = milliseconds(2000)) const {
    MpsOptions options = mps_start_options(dir_ + "/run");
    options.control_binary = fake_;
    options.timeout = timeout;
    return options;
  }
  MpsOptions attach_options(milliseconds timeout = milliseconds(2000)) const {
    MpsOptions options;
    options.mode = MpsOptions::Mode::kAttach;
    options.control_binary = fake_;
    options.pipe_dir = dir_ + "/existing-pipe";
    options.log_dir = dir_ + "/existing-log";
    options.timeout = timeout;
    return options;
  }
  // A daemon "someone else" started: the pipe the fake looks for.
  void make_existing_daemon() const {
    std::filesystem::create_directories(dir_ + "/existing-pipe");
    write(dir_ + "/existing-pipe/control", "");
  }

  // The process the fake left sleeping (hang mode) is gone: killed with the group, at most a
  // zombie waiting for init.
  void expect_hung_process_gone() const {
    std::ifstream in(path("hang.pid"));
    pid_t pid = 0;
    ASSERT_TRUE(in >> pid) << "the fake did not hang";
    const auto until = Clock::now() + milliseconds(2000);
    for (;;) {
      std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
      std::string text;
      std::getline(stat, text);
      const size_t paren = text.rfind(')');
      if (!stat || paren == std::string::npos || text.substr(paren + 2, 1) == "Z") return;
      ASSERT_LT(Clock::now(), until) << "pid " << pid << " still running: " << text;
      std::this_thread::sleep_for(milliseconds(10));
    }
  }

  static int mode_bits(const std::string& p) {
    struct stat st {};
    if (stat(p.c_str(), &st) != 0) return -1;
    return int(st.st_mode & 07777);
  }

  std::string dir_;
  std::string fake_;
};

TEST_F(MpsControlTest, StartRunsTheDaemonOnceWithItsOwnPrivateDirectories) {
  // A pipe directory of the controller's environment must not leak into its own daemon.
  ScopedEnv stray("CUDA_MPS_PIPE_DIRECTORY", "/somewhere/else");
  auto control = MpsControl::start_or_attach(start_options());
  ASSERT_TRUE(control.is_ok()) << control.status().to_string();
  const std::string pipe = dir_ + "/run/mps/pipe", log = dir_ + "/run/mps/log";
  EXPECT_EQ((*control)->info().pipe_dir, pipe);
  EXPECT_EQ((*control)->info().log_dir, log);
  EXPECT_TRUE((*control)->info().started);
  EXPECT_EQ(mode_bits(pipe), 0700);
  EXPECT_EQ(mode_bits(log), 0700);
  EXPECT_EQ(mode_bits(dir_ + "/run/mps"), 0700);
  EXPECT_EQ(count_calls("daemon "), 1u);
  EXPECT_EQ(count_calls("daemon args=-d pipe=" + pipe + " log=" + log), 1u);
  // Then it checked that the daemon answers.
  EXPECT_EQ(count_calls("command get_server_list pipe=" + pipe), 1u);
  EXPECT_EQ(count_calls("command quit"), 0u);
}

TEST_F(MpsControlTest, StartQuitsADaemonLeftInItsPipeDirectoryFirst) {
  const MpsOptions options = start_options();
  std::filesystem::create_directories(options.pipe_dir);
  write(options.pipe_dir + "/control", "");  // a daemon a crashed controller left running
  auto control = MpsControl::start_or_attach(options);
  ASSERT_TRUE(control.is_ok()) << control.status().to_string();
  const std::vector<std::string> lines = calls();
  ASSERT_GE(lines.size(), 4u);
  EXPECT_EQ(lines[0].rfind("command get_server_list ", 0), 0u) << lines[0];
  EXPECT_EQ(lines[1].rfind("command quit ", 0), 0u) << lines[1];
  EXPECT_EQ(lines[2].rfind("daemon args=-d ", 0), 0u) << lines[2];
  EXPECT_EQ(lines[3].rfind("command get_server_list ", 0), 0u) << lines[3];
  EXPECT_EQ(count_calls("daemon "), 1u);
}

TEST_F(MpsControlTest, ServerListReturnsTheDaemonsPids) {
  auto control = MpsControl::start_or_attach(start_options());
  ASSERT_TRUE(control.is_ok()) << control.status().to_string();
  auto empty = (*control)->server_list();
  ASSERT_TRUE(empty.is_ok()) << empty.status().to_string();
  EXPECT_TRUE(empty->empty());
  write(path("servers"), "1234\n5678\n");
  auto servers = (*control)->server_list();
  ASSERT_TRUE(servers.is_ok()) << servers.status().to_string();
  EXPECT_EQ(*servers, (std::vector<pid_t>{1234, 5678}));
}

TEST_F(MpsControlTest, ServerListRejectsAReplyThatIsNotPids) {
  auto control = MpsControl::start_or_attach(start_options());
  ASSERT_TRUE(control.is_ok()) << control.status().to_string();
  write(path("servers"), "1234\nnot-a-pid\n");
  auto servers = (*control)->server_list();
  ASSERT_FALSE(servers.is_ok());
  EXPECT_EQ(servers.status().code(), ErrorCode::kInternal);
  EXPECT_TRUE(Contains(servers.status().message(), "not-a-pid"));
}

TEST_F(MpsControlTest, SendReturnsTheReplyAndRejectsMultiLineCommands) {
  auto control = MpsControl::start_or_attach(start_options());
  ASSERT_TRUE(control.is_ok()) << control.status().to_string();
  write(path("servers"), "42\n");
  std::string reply;
  ASSERT_TRUE((*control)->send("get_server_list", &reply).is_ok());
  EXPECT_EQ(reply, "42\n");
  EXPECT_TRUE((*control)->send("set_default_active_thread_percentage 50").is_ok());
  EXPECT_EQ(count_calls("command set_default_active_thread_percentage 50 "), 1u);
  EXPECT_EQ((*control)->send("get_server_list\nquit").code(), ErrorCode::kInvalidArgument);
  EXPECT_EQ((*control)->send("").code(), ErrorCode::kInvalidArgument);
  EXPECT_EQ(count_calls("command quit"), 0u);
}

TEST_F(MpsControlTest, DestructionQuitsADaemonItStarted) {
  auto control = MpsControl::start_or_attach(start_options());
  ASSERT_TRUE(control.is_ok()) << control.status().to_string();
  const std::string pipe = (*control)->info().pipe_dir;
  EXPECT_TRUE(exists(pipe + "/control"));
  control->reset();
  EXPECT_EQ(count_calls("command quit pipe=" + pipe), 1u);
  EXPECT_FALSE(exists(pipe + "/control"));
}

TEST_F(MpsControlTest, StopIsIdempotent) {
  auto control = MpsControl::start_or_attach(start_options());
  ASSERT_TRUE(control.is_ok()) << control.status().to_string();
  EXPECT_TRUE((*control)->stop().is_ok());
  EXPECT_TRUE((*control)->stop().is_ok());
  control->reset();
  EXPECT_EQ(count_calls("command quit"), 1u);
}

TEST_F(MpsControlTest, StopTimesOutWhenTheDaemonKeepsAnswering) {
  write(path("ignore_quit"), "");
  auto control = MpsControl::start_or_attach(start_options(milliseconds(300)));
  ASSERT_TRUE(control.is_ok()) << control.status().to_string();
  const auto begin = Clock::now();
  Status stopped = (*control)->stop();
  const auto took = Clock::now() - begin;
  EXPECT_EQ(stopped.code(), ErrorCode::kTimeout) << stopped.to_string();
  EXPECT_TRUE(Contains(stopped.message(), "after `quit`"));
  EXPECT_GE(took, milliseconds(250));
  EXPECT_LT(took, milliseconds(900));
}

TEST_F(MpsControlTest, AttachedDaemonIsUsedButNeverStartedOrQuit) {
  make_existing_daemon();
  write(path("servers"), "777\n");
  auto control = MpsControl::start_or_attach(attach_options());
  ASSERT_TRUE(control.is_ok()) << control.status().to_string();
  EXPECT_FALSE((*control)->info().started);
  auto servers = (*control)->server_list();
  ASSERT_TRUE(servers.is_ok()) << servers.status().to_string();
  EXPECT_EQ(*servers, std::vector<pid_t>{777});
  EXPECT_TRUE((*control)->stop().is_ok());
  control->reset();
  EXPECT_EQ(count_calls("daemon "), 0u);
  EXPECT_EQ(count_calls("command get_server_list pipe=" + dir_ + "/existing-pipe"), 2u);
  EXPECT_EQ(count_calls("command quit"), 0u);
  EXPECT_TRUE(exists(dir_ + "/existing-pipe/control"));
}

TEST_F(MpsControlTest, AttachDefaultsToNvidiasPipeDirectory) {
  MpsOptions options = attach_options();
  options.pipe_dir.clear();
  options.log_dir.clear();
  // Whatever the machine has at /tmp/nvidia-mps, the fake only answers with a pipe there.
  auto control = MpsControl::start_or_attach(options);
  EXPECT_EQ(count_calls("command get_server_list pipe=/tmp/nvidia-mps"), 1u);
  if (!control.is_ok()) {
    EXPECT_EQ(control.status().code(), ErrorCode::kUnavailable);
    EXPECT_TRUE(Contains(control.status().message(),
                         "no MPS control daemon answers at " + std::string(kMpsDefaultPipeDir)));
  }
}

TEST_F(MpsControlTest, AttachWithoutADaemonIsUnavailableWithTheControlsStderr) {
  auto control = MpsControl::start_or_attach(attach_options());
  ASSERT_FALSE(control.is_ok());
  EXPECT_EQ(control.status().code(), ErrorCode::kUnavailable);
  const std::string message = control.status().message();
  EXPECT_TRUE(Contains(message, "no MPS control daemon answers at " + dir_ + "/existing-pipe"));
  EXPECT_TRUE(Contains(message, "`get_server_list`"));
  EXPECT_TRUE(Contains(message, "exit code 1"));
  EXPECT_TRUE(Contains(message, "Cannot find MPS control daemon process"));
  EXPECT_EQ(count_calls("command quit"), 0u);
}

TEST_F(MpsControlTest, MissingBinaryIsUnavailableNamingThePathSearched) {
  ScopedEnv path_env("PATH", dir_ + "/nowhere:/nonexistent-sliceserve-bin");
  MpsOptions options = start_options();
  options.control_binary = "nvidia-cuda-mps-control";
  auto control = MpsControl::start_or_attach(options);
  ASSERT_FALSE(control.is_ok());
  EXPECT_EQ(control.status().code(), ErrorCode::kUnavailable);
  EXPECT_EQ(control.status().message(), "nvidia-cuda-mps-control not found on PATH (" + dir_ +
                                            "/nowhere:/nonexistent-sliceserve-bin)");
  EXPECT_FALSE(exists(dir_ + "/run")) << "nothing is created before the binary is found";

  options.control_binary = dir_ + "/bin/no-such-control";
  control = MpsControl::start_or_attach(options);
  ASSERT_FALSE(control.is_ok());
  EXPECT_EQ(control.status().code(), ErrorCode::kUnavailable);
  EXPECT_TRUE(Contains(control.status().message(), dir_ + "/bin/no-such-control"));
}

TEST_F(MpsControlTest, BinaryIsFoundOnPath) {
  ScopedEnv path_env("PATH", dir_ + "/nowhere:" + dir_ + "/bin:/usr/bin:/bin");
  MpsOptions options = start_options();
  options.control_binary = "nvidia-cuda-mps-control";
  auto control = MpsControl::start_or_attach(options);
  ASSERT_TRUE(control.is_ok()) << control.status().to_string();
  EXPECT_EQ((*control)->binary(), fake_);
}

TEST_F(MpsControlTest, StartNeedsItsDirectoriesAndAPositiveTimeout) {
  MpsOptions options = start_options();
  options.pipe_dir.clear();
  auto control = MpsControl::start_or_attach(options);
  ASSERT_FALSE(control.is_ok());
  EXPECT_EQ(control.status().code(), ErrorCode::kInvalidArgument);
  options = start_options(milliseconds(0));
  control = MpsControl::start_or_attach(options);
  ASSERT_FALSE(control.is_ok());
  EXPECT_EQ(control.status().code(), ErrorCode::kInvalidArgument);
  EXPECT_EQ(count_calls("daemon "), 0u);
}

TEST_F(MpsControlTest, FailingDaemonStartCarriesItsStderr) {
  write(path("daemon_mode"), "fail");
  auto control = MpsControl::start_or_attach(start_options());
  ASSERT_FALSE(control.is_ok());
  EXPECT_EQ(control.status().code(), ErrorCode::kUnavailable);
  EXPECT_TRUE(Contains(control.status().message(), " -d`"));
  EXPECT_TRUE(Contains(control.status().message(), "exit code 1"));
  EXPECT_TRUE(
      Contains(control.status().message(), "An instance of this daemon is already running"));
  EXPECT_EQ(count_calls("command "), 0u) << "nothing to talk to, nothing to quit";
}

TEST_F(MpsControlTest, HangingDaemonStartTimesOutWithinTheBound) {
  write(path("daemon_mode"), "hang");
  const auto begin = Clock::now();
  auto control = MpsControl::start_or_attach(start_options(milliseconds(300)));
  const auto took = Clock::now() - begin;
  ASSERT_FALSE(control.is_ok());
  EXPECT_EQ(control.status().code(), ErrorCode::kUnavailable);
  EXPECT_TRUE(Contains(control.status().message(), "did not finish within 300 ms"));
  EXPECT_GE(took, milliseconds(300));
  EXPECT_LT(took, milliseconds(900));
  expect_hung_process_gone();
}

TEST_F(MpsControlTest, FailingControlAfterStartIsUnavailableAndTheDaemonIsQuit) {
  write(path("mode"), "fail");
  auto control = MpsControl::start_or_attach(start_options());
  ASSERT_FALSE(control.is_ok());
  EXPECT_EQ(control.status().code(), ErrorCode::kUnavailable);
  const std::string message = control.status().message();
  EXPECT_TRUE(Contains(message, "the MPS control daemon just started does not answer"));
  EXPECT_TRUE(Contains(message, "`get_server_list`"));
  EXPECT_TRUE(Contains(message, "exit code 1"));
  EXPECT_TRUE(Contains(message, "Cannot find MPS control daemon process (fake)"));
  // The daemon it started is not left behind: quit was sent (and failed, as everything does).
  EXPECT_EQ(count_calls("command quit"), 1u);
}

TEST_F(MpsControlTest, HangingControlTimesOutWithinTheBound) {
  auto started = MpsControl::start_or_attach(start_options(milliseconds(300)));
  ASSERT_TRUE(started.is_ok()) << started.status().to_string();
  write(path("mode"), "hang");
  const auto begin = Clock::now();
  auto servers = (*started)->server_list();
  const auto took = Clock::now() - begin;
  ASSERT_FALSE(servers.is_ok());
  EXPECT_EQ(servers.status().code(), ErrorCode::kTimeout);
  EXPECT_TRUE(Contains(servers.status().message(),
                       "`get_server_list` (" + fake_ + ", CUDA_MPS_PIPE_DIRECTORY="));
  EXPECT_TRUE(Contains(servers.status().message(), "did not finish within 300 ms"));
  EXPECT_GE(took, milliseconds(300));
  EXPECT_LT(took, milliseconds(900));
  expect_hung_process_gone();
  // Stopping a daemon whose control hangs is bounded too.
  const auto stop_begin = Clock::now();
  EXPECT_FALSE((*started)->stop().is_ok());
  EXPECT_LT(Clock::now() - stop_begin, milliseconds(900));
}

TEST_F(MpsControlTest, AttachToAHangingControlIsUnavailableWithinTheBound) {
  make_existing_daemon();
  write(path("mode"), "hang");
  const auto begin = Clock::now();
  auto control = MpsControl::start_or_attach(attach_options(milliseconds(300)));
  const auto took = Clock::now() - begin;
  ASSERT_FALSE(control.is_ok());
  EXPECT_EQ(control.status().code(), ErrorCode::kUnavailable);
  EXPECT_TRUE(Contains(control.status().message(), "did not finish within 300 ms"));
  EXPECT_LT(took, milliseconds(900));
  expect_hung_process_gone();
  EXPECT_EQ(count_calls("command quit"), 0u);
}

TEST_F(MpsControlTest, WorkerEnvironmentRoundsThePercentageDownToAtLeastOne) {
  const MpsControlInfo info{"/run/ss/mps/pipe", "/run/ss/mps/log", true};
  const std::map<double, std::string> cases = {{50.7, "50"},  {0.4, "1"},     {1.0, "1"},
                                               {99.99, "99"}, {100.0, "100"}, {0.3 * 100, "30"}};
  for (const auto& [percent, expected] : cases) {
    SCOPED_TRACE(percent);
    auto env = mps_worker_environment(info, percent, std::nullopt);
    ASSERT_TRUE(env.is_ok()) << env.status().to_string();
    EXPECT_EQ(*env, (std::vector<std::string>{
                        "CUDA_MPS_PIPE_DIRECTORY=/run/ss/mps/pipe",
                        "CUDA_MPS_LOG_DIRECTORY=/run/ss/mps/log",
                        "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=" + expected,
                    }));
  }
}

TEST_F(MpsControlTest, WorkerEnvironmentRejectsPercentagesOutsideZeroToHundred) {
  const MpsControlInfo info{"/run/ss/mps/pipe", "/run/ss/mps/log", true};
  for (double percent : {0.0, -5.0, 100.5, 101.0, std::numeric_limits<double>::quiet_NaN(),
                         std::numeric_limits<double>::infinity()}) {
    SCOPED_TRACE(percent);
    auto env = mps_worker_environment(info, percent, std::nullopt);
    ASSERT_FALSE(env.is_ok());
    EXPECT_EQ(env.status().code(), ErrorCode::kInvalidArgument);
    EXPECT_TRUE(Contains(env.status().message(), "(0, 100]"));
  }
}

TEST_F(MpsControlTest, WorkerEnvironmentFormatsThePinnedMemoryLimitInMiB) {
  const MpsControlInfo info{"/run/ss/mps/pipe", "/run/ss/mps/log", false};
  auto env = mps_worker_environment(info, 25, uint64_t(1024) << 20, 0);
  ASSERT_TRUE(env.is_ok()) << env.status().to_string();
  ASSERT_EQ(env->size(), 4u);
  EXPECT_EQ(env->back(), "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT=0=1024M");
  // Rounded down to whole MiB: a limit only tightens.
  env = mps_worker_environment(info, 25, (uint64_t(1536) << 20) + 4095, 1);
  ASSERT_TRUE(env.is_ok()) << env.status().to_string();
  EXPECT_EQ(env->back(), "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT=1=1536M");
  env = mps_worker_environment(info, 25, uint64_t(1000), 0);
  ASSERT_FALSE(env.is_ok());
  EXPECT_EQ(env.status().code(), ErrorCode::kInvalidArgument);
  env = mps_worker_environment(info, 25, uint64_t(1) << 30, -1);
  ASSERT_FALSE(env.is_ok());
  EXPECT_EQ(env.status().code(), ErrorCode::kInvalidArgument);
}

TEST_F(MpsControlTest, WorkerEnvironmentComesFromAStartedControl) {
  auto control = MpsControl::start_or_attach(start_options());
  ASSERT_TRUE(control.is_ok()) << control.status().to_string();
  auto env = mps_worker_environment((*control)->info(), 12.5, std::nullopt);
  ASSERT_TRUE(env.is_ok()) << env.status().to_string();
  EXPECT_EQ((*env)[0], "CUDA_MPS_PIPE_DIRECTORY=" + dir_ + "/run/mps/pipe");
  EXPECT_EQ((*env)[1], "CUDA_MPS_LOG_DIRECTORY=" + dir_ + "/run/mps/log");
  EXPECT_EQ((*env)[2], "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=12");
}

TEST_F(MpsControlTest, FallbackErrorReturnsTheFailureAsIs) {
  const Status failure(ErrorCode::kUnavailable, "nvidia-cuda-mps-control not found on PATH (/x)");
  auto decision = decide_mps(failure, MpsFallback::kError);
  ASSERT_FALSE(decision.is_ok());
  EXPECT_EQ(decision.status().code(), ErrorCode::kUnavailable);
  EXPECT_EQ(decision.status().message(), failure.message());
}

TEST_F(MpsControlTest, FallbackTimeshareRunsTimeSharedWithAWarning) {
  const Status failure(ErrorCode::kUnavailable, "nvidia-cuda-mps-control not found on PATH (/x)");
  auto decision = decide_mps(failure, MpsFallback::kTimeshare);
  ASSERT_TRUE(decision.is_ok()) << decision.status().to_string();
  EXPECT_EQ(decision->sharing, MpsDecision::Sharing::kTimeShared);
  EXPECT_EQ(decision->warning,
            "MPS unavailable (nvidia-cuda-mps-control not found on PATH (/x)): running "
            "time-shared; slices are not enforced");
  auto timed_out = decide_mps(Status(ErrorCode::kTimeout, "slow"), MpsFallback::kTimeshare);
  ASSERT_TRUE(timed_out.is_ok());
  EXPECT_EQ(timed_out->sharing, MpsDecision::Sharing::kTimeShared);
  EXPECT_FALSE(timed_out->warning.empty());
}

TEST_F(MpsControlTest, FallbackNeverHidesAConfigurationError) {
  const Status bad(ErrorCode::kInvalidArgument, "starting an MPS control daemon needs ...");
  for (MpsFallback fallback : {MpsFallback::kError, MpsFallback::kTimeshare}) {
    auto decision = decide_mps(bad, fallback);
    ASSERT_FALSE(decision.is_ok());
    EXPECT_EQ(decision.status().code(), ErrorCode::kInvalidArgument);
  }
}

TEST_F(MpsControlTest, SuccessfulStartMeansMpsWithoutAWarning) {
  for (MpsFallback fallback : {MpsFallback::kError, MpsFallback::kTimeshare}) {
    auto decision = decide_mps(Status::ok(), fallback);
    ASSERT_TRUE(decision.is_ok());
    EXPECT_EQ(decision->sharing, MpsDecision::Sharing::kMps);
    EXPECT_TRUE(decision->warning.empty());
  }
}

TEST_F(MpsControlTest, GreenContextsNeedTheFullMpsPercentage) {
  EXPECT_TRUE(check_greenctx_with_mps(100).is_ok());
  for (double percent : {99.9, 50.0, 1.0}) {
    SCOPED_TRACE(percent);
    Status s = check_greenctx_with_mps(percent);
    EXPECT_EQ(s.code(), ErrorCode::kInvalidArgument);
    EXPECT_TRUE(Contains(s.message(), "unset or 100"));
  }
  EXPECT_EQ(check_greenctx_with_mps(std::numeric_limits<double>::quiet_NaN()).code(),
            ErrorCode::kInvalidArgument);
}

}  // namespace
}  // namespace sliceserve::backends
