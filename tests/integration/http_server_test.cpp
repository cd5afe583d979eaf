// sliceserved's HTTP front-end against a real daemon with a null model: KServe v2 health and
// metadata, Prometheus /metrics, the 501 for infer, tokens, and malformed or oversized requests
// answered with 400/431 while a concurrent good request is served.

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>

#include <nlohmann/json.hpp>
#include <regex>
#include <set>
#include <sstream>
#include <thread>

#include "sliceserve/client/client.h"
#include "support/daemon_harness.h"
#include "support/free_port.h"

namespace sliceserve::testing {
namespace {

using namespace std::chrono_literals;

constexpr const char* kToken = "a-token-of-twenty-chars";

struct Reply {
  int status = 0;  // 0: no reply
  std::string head;
  std::string body;
};

// Sends `raw` on a fresh connection and reads until the server closes it (requests carry
// "Connection: close") or 5 s pass.
Reply round_trip(uint16_t port, const std::string& raw) {
  Reply r;
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
    close(fd);
    return r;
  }
  send(fd, raw.data(), raw.size(), MSG_NOSIGNAL);
  std::string in;
  char buf[4096];
  for (;;) {
    pollfd p{fd, POLLIN, 0};
    if (poll(&p, 1, 5000) <= 0) break;
    const ssize_t n = recv(fd, buf, sizeof buf, 0);
    if (n <= 0) break;
    in.append(buf, size_t(n));
  }
  close(fd);
  const size_t end = in.find("\r\n\r\n");
  if (in.rfind("HTTP/1.1 ", 0) != 0 || end == std::string::npos) return r;
  r.status = std::stoi(in.substr(9, 3));
  r.head = in.substr(0, end);
  r.body = in.substr(end + 4);
  return r;
}

Reply request(uint16_t port, const std::string& method, const std::string& target,
              const std::string& extra_headers = "") {
  return round_trip(port, method + " " + target + " HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" +
                              extra_headers + "\r\n");
}

std::string config(const std::string& instance, uint16_t port, const std::string& extra = "") {
  return "[server]\ninstance = \"" + instance +
         "\"\ntcp = \"\"\nhttp = \"127.0.0.1:" + std::to_string(port) +
         "\"\npolicy_interval_ms = 100\n" + extra + R"(
[[model]]
name = "echo"
kind = "null"
slice = 20
slo_ms = 50
max_batch = 8
max_queue_delay_us = 100
inputs = [ { name = "x", dtype = "INT32", shape = [4] } ]
outputs = [ { name = "y", dtype = "FP32", shape = [2, 2] } ]
)";
}

class HttpServerTest : public ::testing::Test {
 protected:
  void start(const std::string& extra = "") {
    unsetenv("SLICESERVE_TOKEN");
    port_ = free_port();
    instance_ = unique_instance("http");
    const std::string path = dir_.write("c.toml", config(instance_, port_, extra));
    daemon_ = std::make_unique<DaemonProcess>(path, dir_.path() + "/d.log");
    ASSERT_NE(wait_serving(instance_, "echo", 20s), 0u) << read_file(dir_.path() + "/d.log");
  }
  void TearDown() override {
    if (daemon_) {
      EXPECT_EQ(daemon_->stop(), 0) << read_file(dir_.path() + "/d.log");
    }
  }
  // The front-end's port is bound by the time the daemon serves; health needs the worker too.
  Reply wait_ready() {
    Reply r;
    for (int i = 0; i < 200; ++i) {
      r = request(port_, "GET", "/v2/health/ready");
      if (r.status == 200) break;
      std::this_thread::sleep_for(50ms);
    }
    return r;
  }

  TempDir dir_;
  std::string instance_;
  uint16_t port_ = 0;
  std::unique_ptr<DaemonProcess> daemon_;
};

TEST_F(HttpServerTest, HealthEndpointsAnswer200OnceTheWorkerServes) {
  start();
  EXPECT_EQ(request(port_, "GET", "/v2/health/live").status, 200);
  EXPECT_EQ(wait_ready().status, 200);
  Reply r = request(port_, "GET", "/v2/models/echo/ready");
  EXPECT_EQ(r.status, 200);
  EXPECT_TRUE(r.body.empty());
}

TEST_F(HttpServerTest, ServerMetadataNamesSliceserve) {
  start();
  Reply r = request(port_, "GET", "/v2");
  ASSERT_EQ(r.status, 200);
  auto j = nlohmann::json::parse(r.body);
  EXPECT_EQ(j["name"], "sliceserve");
  EXPECT_FALSE(j["version"].get<std::string>().empty());
  EXPECT_TRUE(j["extensions"].is_array());
  EXPECT_NE(r.head.find("application/json"), std::string::npos);
}

TEST_F(HttpServerTest, ModelMetadataHasKServeDatatypesAndBatchDimension) {
  start();
  Reply r = request(port_, "GET", "/v2/models/echo");
  ASSERT_EQ(r.status, 200) << r.body;
  auto j = nlohmann::json::parse(r.body);
  EXPECT_EQ(j["name"], "echo");
  EXPECT_EQ(j["platform"], "null");
  ASSERT_EQ(j["inputs"].size(), 1u);
  EXPECT_EQ(j["inputs"][0]["name"], "x");
  EXPECT_EQ(j["inputs"][0]["datatype"], "INT32");
  EXPECT_EQ(j["inputs"][0]["shape"], nlohmann::json({-1, 4}));
  EXPECT_EQ(j["outputs"][0]["datatype"], "FP32");
  EXPECT_EQ(j["outputs"][0]["shape"], nlohmann::json({-1, 2, 2}));
}

TEST_F(HttpServerTest, UnknownModelsPathsAndMethodsGetJsonErrors) {
  start();
  for (const char* target : {"/v2/models/nope", "/v2/models/nope/ready", "/nothing"}) {
    Reply r = request(port_, "GET", target);
    EXPECT_EQ(r.status, 404) << target;
    EXPECT_TRUE(nlohmann::json::parse(r.body).contains("error")) << r.body;
  }
  Reply r = request(port_, "DELETE", "/v2/health/live");
  EXPECT_EQ(r.status, 405);
  EXPECT_NE(r.head.find("Allow: GET"), std::string::npos) << r.head;
}

TEST_F(HttpServerTest, InferAnswers501NotImplemented) {
  start();
  Reply r = round_trip(port_,
                       "POST /v2/models/echo/infer HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                       "Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{}");
  EXPECT_EQ(r.status, 501);
  EXPECT_NE(nlohmann::json::parse(r.body)["error"].get<std::string>().find("not implemented"),
            std::string::npos);
  EXPECT_EQ(request(port_, "GET", "/v2/models/echo/infer").status, 405);
}

TEST_F(HttpServerTest, MetricsParseAsPrometheusText) {
  start();
  ASSERT_EQ(wait_ready().status, 200);
  client::ConnectOptions o;
  o.instance = instance_;
  auto c = client::Client::connect("echo", o);
  ASSERT_TRUE(c.is_ok()) << c.status().message();
  int32_t x[4] = {1, 2, 3, 4};
  client::Tensor t{"x", shm::DataType::kInt32, {4}, std::as_bytes(std::span(x))};
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(c->infer(std::span(&t, 1)).is_ok());
  Reply r = request(port_, "GET", "/metrics");
  ASSERT_EQ(r.status, 200);
  EXPECT_NE(r.head.find("text/plain"), std::string::npos);
  const std::regex sample(
      R"re(^([a-zA-Z_:][a-zA-Z0-9_:]*)\{([a-z_]+="[^"]*"(,[a-z_]+="[^"]*")*)\} [0-9.eE+-]+$)re");
  const std::regex help(R"(^# HELP [a-zA-Z_:][a-zA-Z0-9_:]* .+$)");
  const std::regex type(R"(^# TYPE ([a-zA-Z_:][a-zA-Z0-9_:]*) (counter|gauge)$)");
  std::set<std::string> typed, sampled;
  std::istringstream in(r.body);
  std::string line;
  std::smatch m;
  while (std::getline(in, line)) {
    if (std::regex_match(line, m, type)) {
      typed.insert(m[1]);
    } else if (std::regex_match(line, m, sample)) {
      sampled.insert(m[1]);
      EXPECT_NE(line.find("model=\"echo\",version=\"1\""), std::string::npos) << line;
    } else {
      EXPECT_TRUE(std::regex_match(line, help)) << "not Prometheus text: " << line;
    }
  }
  for (const char* name : {"nv_inference_request_success", "nv_inference_request_failure",
                           "nv_inference_count", "nv_inference_exec_count",
                           "nv_inference_request_duration_us", "nv_inference_queue_duration_us",
                           "nv_inference_compute_infer_duration_us", "sliceserve_slice_percent",
                           "sliceserve_epoch", "sliceserve_resizes_total", "sliceserve_slo_ms"}) {
    EXPECT_TRUE(typed.count(name)) << name;
    EXPECT_TRUE(sampled.count(name)) << name;
  }
  EXPECT_NE(r.body.find("sliceserve_slice_percent{model=\"echo\",version=\"1\"} 20\n"),
            std::string::npos)
      << r.body;
  EXPECT_NE(r.body.find("nv_inference_request_success{model=\"echo\",version=\"1\"} 3\n"),
            std::string::npos)
      << r.body;
  EXPECT_NE(r.body.find("sliceserve_slo_ms{model=\"echo\",version=\"1\"} 50\n"), std::string::npos);
}

TEST_F(HttpServerTest, MalformedAndOversizedRequestsGet400And431WhileOthersAreServed) {
  start();
  // A client that sends half a request and waits holds its connection open meanwhile.
  const int slow = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port_);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(connect(slow, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
  send(slow, "GET /v2 HT", 10, MSG_NOSIGNAL);

  Reply bad_line;
  Reply big;
  Reply good;
  std::thread t1([&] { bad_line = round_trip(port_, "GARBAGE\r\n\r\n"); });
  std::thread t2([&] {
    big = request(port_, "GET", "/v2", "X-Big: " + std::string(64 * 1024, 'a') + "\r\n");
  });
  std::thread t3([&] { good = request(port_, "GET", "/v2/health/live"); });
  t1.join();
  t2.join();
  t3.join();
  EXPECT_EQ(bad_line.status, 400);
  EXPECT_TRUE(nlohmann::json::parse(bad_line.body).contains("error"));
  EXPECT_EQ(big.status, 431);
  EXPECT_EQ(good.status, 200);
  Reply body = round_trip(port_,
                          "POST /v2/models/echo/infer HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                          "Content-Length: 100000\r\n\r\n");
  EXPECT_EQ(body.status, 413);
  close(slow);
  EXPECT_EQ(request(port_, "GET", "/v2/health/live").status, 200);
}

TEST_F(HttpServerTest, KeepAliveServesSeveralRequestsOnOneConnection) {
  start();
  Reply r = round_trip(port_,
                       "GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n"
                       "GET /v2 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
  EXPECT_EQ(r.status, 200);
  EXPECT_NE(r.body.find("\"sliceserve\""), std::string::npos) << r.body;
}

TEST_F(HttpServerTest, TokenIsAskedAsBearerHeader) {
  start(std::string("token = \"") + kToken + "\"\n");
  Reply no = request(port_, "GET", "/v2");
  EXPECT_EQ(no.status, 401);
  EXPECT_NE(no.head.find("WWW-Authenticate: Bearer"), std::string::npos);
  EXPECT_EQ(request(port_, "GET", "/v2", "Authorization: Bearer wrong-token-of-twenty\r\n").status,
            401);
  EXPECT_EQ(
      request(port_, "GET", "/v2", std::string("Authorization: Bearer ") + kToken + "\r\n").status,
      200);
}

TEST_F(HttpServerTest, NonLoopbackAddressWithoutTokenRefusesToStart) {
  unsetenv("SLICESERVE_TOKEN");
  const std::string path = dir_.write(
      "c.toml", std::regex_replace(config(unique_instance("http"), 1), std::regex("127.0.0.1:1"),
                                   "0.0.0.0:" + std::to_string(free_port())));
  DaemonProcess d(path, dir_.path() + "/d.log");
  EXPECT_NE(d.wait(15s), 0);
  EXPECT_NE(read_file(dir_.path() + "/d.log").find("without a token"), std::string::npos)
      << read_file(dir_.path() + "/d.log");
}

}  // namespace
}  // namespace sliceserve::testing
