// slicectl resize / policy / backend against a real sliceserved.

#include <gtest/gtest.h>
#include <sys/socket.h>
#include <sys/un.h>

#include <cstring>

#include "sliceserve/controller/admin_socket.h"
#include "support/cli_run.h"
#include "support/daemon_harness.h"

namespace sliceserve {
namespace {

using namespace std::chrono_literals;
using testing::CliRun;
using testing::DaemonProcess;
using testing::read_file;
using testing::slicectl;
using testing::TempDir;
using testing::unique_instance;
using testing::wait_serving;

class SlicectlControlTest : public ::testing::Test {
 protected:
  void SetUp() override {
    config_ = dir_.write("c.toml", "[server]\ninstance = \"" + instance_ + R"("
[[model]]
name = "alpha"
slice = 30
inputs = [ { name = "x", dtype = "FP32", shape = [16] } ]
outputs = [ { name = "y", dtype = "FP32", shape = [16] } ]
)");
    daemon_.emplace(config_, dir_.path() + "/log");
    ASSERT_NE(wait_serving(instance_, "alpha", 10s), 0u) << read_file(dir_.path() + "/log");
  }
  void TearDown() override { EXPECT_EQ(daemon_->stop(), 0); }
  CliRun run(const std::string& args) { return slicectl("--instance " + instance_ + " " + args); }
  nlohmann::json alpha() {
    auto reply = controller::admin_call(instance_, {{"cmd", "status"}});
    EXPECT_TRUE(reply.is_ok());
    return reply.is_ok() ? (*reply)["models"][0] : nlohmann::json::object();
  }

  TempDir dir_;
  std::string instance_ = unique_instance("ctl");
  std::string config_;
  std::optional<DaemonProcess> daemon_;
};

TEST_F(SlicectlControlTest, ResizeWaitsForTheSwapAndPinsThePolicy) {
  CliRun r = run("resize alpha 45");
  EXPECT_EQ(r.rc, 0) << r.err;
  EXPECT_NE(r.out.find("policy now off for alpha"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("shadow resize 30% -> 45%"), std::string::npos) << r.out;
  nlohmann::json m = alpha();
  EXPECT_EQ(m["slice"].get<double>(), 45);
  EXPECT_FALSE(m["policy"].get<bool>());
  r = run("policy alpha on");
  EXPECT_EQ(r.rc, 0) << r.err;
  EXPECT_TRUE(alpha()["policy"].get<bool>());
  r = run("status");
  EXPECT_EQ(r.rc, 0);
  EXPECT_NE(r.out.find("last resize (1 done, 0 failed)"), std::string::npos) << r.out;
}

TEST_F(SlicectlControlTest, BackendSwitchThenInPlaceResize) {
  CliRun r = run("backend alpha cpu:affinity");
  EXPECT_EQ(r.rc, 0) << r.err;
  EXPECT_EQ(alpha()["backend"], "cpu:affinity");
  r = run("resize alpha 60");
  EXPECT_EQ(r.rc, 0) << r.err;
  EXPECT_NE(r.out.find("in place 30% -> 60%"), std::string::npos) << r.out;
}

TEST_F(SlicectlControlTest, RefusalsAreClearAndChangeNothing) {
  nlohmann::json before = alpha();
  for (const char* args :
       {"backend alpha mps", "backend alpha warp-drive", "resize nope 20", "resize alpha 30"}) {
    CliRun r = run(args);
    EXPECT_EQ(r.rc, 1) << args;
    EXPECT_NE(r.err.find("slicectl: "), std::string::npos) << args << ": " << r.err;
  }
  // Not built, or (with the hip wing) not for a synthetic model.
  const std::string cumask = run("backend alpha cumask").err;
  EXPECT_TRUE(cumask.find("not available in this build") != std::string::npos ||
              cumask.find("runs on the cpu backend only") != std::string::npos)
      << cumask;
  EXPECT_EQ(run("resize alpha 0").rc, 105) << "CLI11 rejects it before any request";
  nlohmann::json after = alpha();
  EXPECT_EQ(after["epoch"], before["epoch"]);
  EXPECT_EQ(after["slice"], before["slice"]);
}

// Sends raw bytes to the admin socket; returns what came back before the server closed or 1 s.
std::string raw_admin(const std::string& instance, const std::string& bytes) {
  int fd = socket(AF_UNIX, SOCK_STREAM, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  const std::string path = controller::admin_socket_path(instance);
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  EXPECT_EQ(connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
  EXPECT_EQ(send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL), ssize_t(bytes.size()));
  shutdown(fd, SHUT_WR);
  std::string out;
  char buf[4096];
  timeval tv{1, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  for (ssize_t n; (n = recv(fd, buf, sizeof buf, 0)) > 0;) out.append(buf, size_t(n));
  close(fd);
  return out;
}

TEST_F(SlicectlControlTest, MalformedAdminRequestsGetAnErrorAndTheServerGoesOn) {
  EXPECT_NE(raw_admin(instance_, "not json\n").find("\"ok\":false"), std::string::npos);
  EXPECT_NE(raw_admin(instance_, "[1,2]\n").find("\"ok\":false"), std::string::npos);
  EXPECT_NE(raw_admin(instance_, "{\"cmd\":7}\n").find("\"ok\":false"), std::string::npos);
  // An endless line is cut off, not buffered without bound.
  EXPECT_EQ(raw_admin(instance_, std::string(200 * 1024, 'x')), "");
  EXPECT_EQ(run("status").rc, 0) << "the daemon still answers";
  EXPECT_EQ(alpha()["slice"].get<double>(), 30);
}

TEST(SlicectlControlNoDaemonTest, ControlWithoutADaemonSaysSo) {
  CliRun r = slicectl("--instance nodaemon" + std::to_string(getpid()) + " resize m 20");
  EXPECT_EQ(r.rc, 1);
  EXPECT_NE(r.err.find("no sliceserved answers"), std::string::npos) << r.err;
}

}  // namespace
}  // namespace sliceserve
