// The run-time admin API against a real sliceserved: load and unload (served over shared memory,
// TCP and HTTP as they come and go), every /v2/admin route over HTTP with and without the token,
// slicectl --server, and the policy and SLO metrics.

#include <gtest/gtest.h>

#include <atomic>
#include <nlohmann/json.hpp>
#include <regex>
#include <thread>

#include "sliceserve/client/client.h"
#include "sliceserve/controller/admin_socket.h"
#include "support/cli_run.h"
#include "support/daemon_harness.h"
#include "support/free_port.h"
#include "support/raw_http.h"

namespace sliceserve::testing {
namespace {

using namespace std::chrono_literals;

constexpr const char* kToken = "an-admin-token-of-24chars";

struct Reply {
  int status = 0;  // 0: no reply
  nlohmann::json body;
  std::string text;
};

// One request on a fresh connection ("Connection: close"), the reply read until the server
// closes it or is silent for 10 s.
Reply http(uint16_t port, const std::string& method, const std::string& target,
           const std::string& body = "", const std::string& token = "") {
  std::string raw = method + " " + target + " HTTP/1.1\r\nHost: x\r\nConnection: close\r\n";
  if (!token.empty()) raw += "Authorization: Bearer " + token + "\r\n";
  raw += "Content-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body;
  const HttpReply in = http_round_trip(port, raw, 10s);
  return {in.status, nlohmann::json::parse(in.body, nullptr, false), in.body};
}

std::string null_model_json(const std::string& name, double slice) {
  return nlohmann::json{{"model",
                         {{"name", name},
                          {"kind", "null"},
                          {"slice", slice},
                          {"slo_ms", 50},
                          {"max_queue_delay_us", 100},
                          {"inputs", {{{"name", "x"}, {"dtype", "FP32"}, {"shape", {4}}}}},
                          {"outputs", {{{"name", "y"}, {"dtype", "FP32"}, {"shape", {4}}}}}}}}
      .dump();
}

bool segment_exists(const std::string& instance, const std::string& model) {
  for (const std::string& m : shm::list_segment_models(instance)) {
    if (m == model) return true;
  }
  return false;
}

template <typename Pred>
bool eventually(Pred pred, std::chrono::milliseconds timeout = 15s) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < deadline) {
    if (pred()) return true;
    std::this_thread::sleep_for(20ms);
  }
  return pred();
}

class AdminApiTest : public ::testing::Test {
 protected:
  void start(const std::string& token = "") {
    unsetenv("SLICESERVE_TOKEN");
    token_ = token;
    http_port_ = free_port();
    tcp_port_ = free_port();
    const std::string path =
        dir_.write("c.toml", "[server]\ninstance = \"" + instance_ + "\"\ntcp = \"127.0.0.1:" +
                                 std::to_string(tcp_port_) + "\"\nhttp = \"127.0.0.1:" +
                                 std::to_string(http_port_) +
                                 "\"\npolicy_interval_ms = 100\nshutdown_grace_ms = 2000\n" +
                                 (token.empty() ? "" : "token = \"" + token + "\"\n") + R"(
[[model]]
name = "echo"
kind = "null"
slice = 20
slo_ms = 50
max_queue_delay_us = 100
inputs = [ { name = "x", dtype = "FP32", shape = [4] } ]
outputs = [ { name = "y", dtype = "FP32", shape = [4] } ]
)");
    daemon_.emplace(path, dir_.path() + "/d.log");
    ASSERT_NE(wait_serving(instance_, "echo", 30s), 0u) << log();
    ASSERT_TRUE(eventually([&] { return admin("GET", "/v2/admin/status").status == 200; }))
        << log();
  }
  void TearDown() override {
    if (daemon_) {
      EXPECT_EQ(daemon_->stop(), 0) << log();
    }
    EXPECT_FALSE(any_segment_of(instance_));
  }
  std::string log() { return read_file(dir_.path() + "/d.log"); }
  Reply admin(const std::string& method, const std::string& target, const std::string& body = "") {
    return http(http_port_, method, target, body, token_);
  }
  nlohmann::json model_row(const std::string& model) {
    Reply s = admin("GET", "/v2/admin/status");
    for (const auto& m : s.body["models"]) {
      if (m["model"] == model) return m;
    }
    return nullptr;
  }
  client::Client shm_client(const std::string& model) {
    client::ConnectOptions o;
    o.instance = instance_;
    auto c = client::Client::connect(model, o);
    EXPECT_TRUE(c.is_ok()) << c.status().message();
    return std::move(c).value();
  }
  CliRun slicectl_server(const std::string& args) {
    return slicectl("--server http://127.0.0.1:" + std::to_string(http_port_) +
                    (token_.empty() ? "" : " --token " + token_) + " " + args);
  }

  TempDir dir_;
  std::string instance_ = unique_instance("adm");
  std::string token_;
  uint16_t http_port_ = 0;
  uint16_t tcp_port_ = 0;
  std::optional<DaemonProcess> daemon_;
};

std::vector<float> run_one(client::Client& c, float seed) {
  std::vector<float> x = {seed, seed + 1, seed + 2, seed + 3};
  client::Tensor t{"x", shm::DataType::kFp32, {4}, std::as_bytes(std::span(x))};
  auto r = c.infer(std::span(&t, 1));
  EXPECT_TRUE(r.is_ok()) << r.status().message();
  if (!r.is_ok()) return {};
  auto y = r->outputs[0].as<float>();
  return {y.begin(), y.end()};
}

TEST_F(AdminApiTest, LoadedModelIsServedOverShmTcpAndHttp) {
  start();
  Reply load = admin("POST", "/v2/admin/models/load", null_model_json("fresh", 10));
  ASSERT_EQ(load.status, 200) << load.text;
  EXPECT_EQ(load.body["message"], "loading fresh");
  ASSERT_NE(wait_serving(instance_, "fresh", 30s), 0u) << log();

  client::Client shm = shm_client("fresh");
  EXPECT_EQ(run_one(shm, 1), (std::vector<float>{1, 2, 3, 4}));
  auto tcp = client::Client::connect_tcp("fresh", "127.0.0.1", tcp_port_);
  ASSERT_TRUE(tcp.is_ok()) << tcp.status().message();
  EXPECT_EQ(run_one(*tcp, 5), (std::vector<float>{5, 6, 7, 8}));
  Reply meta = admin("GET", "/v2/models/fresh");
  EXPECT_EQ(meta.status, 200) << meta.text;
  EXPECT_EQ(meta.body["name"], "fresh");
  EXPECT_TRUE(eventually([&] { return admin("GET", "/v2/models/fresh/ready").status == 200; }));
  EXPECT_TRUE(model_row("fresh").value("serving", false));
}

TEST_F(AdminApiTest, BadLoadBodiesChangeNothing) {
  start();
  struct Case {
    std::string body;
    int status;
    std::string says;
  };
  const std::vector<Case> cases = {
      {"not json", 400, "JSON object"},
      {R"({"model":{"name":"b","kind":"null","slice":300}})", 400, "model.slice"},
      {R"({"model":{"name":"b","kind":"null","slize":3}})", 400, "did you mean 'slice'"},
      {R"({"model":{"name":"b","kind":"null","slice":5}})", 400, "model.inputs"},
      {R"({"model":"b"})", 400, "must be an object"},
      {R"({"toml":"[[model]]\nname = 3\n"})", 400, "load request:2: key 'model.name'"},
      {R"({"toml":"[[model]"})", 400, "load request:1"},
      {null_model_json("echo", 5), 409, "already served"},
      {null_model_json("huge", 99), 409, "no room"},
  };
  for (const Case& c : cases) {
    Reply r = admin("POST", "/v2/admin/models/load", c.body);
    EXPECT_EQ(r.status, c.status) << c.body << " -> " << r.text;
    EXPECT_NE(r.body.value("error", "").find(c.says), std::string::npos)
        << c.body << " -> " << r.text;
  }
  Reply s = admin("GET", "/v2/admin/status");
  ASSERT_EQ(s.body["models"].size(), 1u) << s.text;
  EXPECT_EQ(s.body["models"][0]["model"], "echo");
  EXPECT_EQ(shm::list_segment_models(instance_), std::vector<std::string>{"echo"});
  client::Client shm = shm_client("echo");
  EXPECT_EQ(run_one(shm, 2), (std::vector<float>{2, 3, 4, 5}));
}

TEST_F(AdminApiTest, UnloadWhileClientsSubmitEndsTheirRequestsWithErrorsAndRemovesTheSegment) {
  start();
  ASSERT_EQ(admin("POST", "/v2/admin/models/load", null_model_json("doomed", 10)).status, 200);
  ASSERT_NE(wait_serving(instance_, "doomed", 30s), 0u) << log();

  // One shared-memory and one TCP client submit without pause until their requests fail.
  std::atomic<bool> go{true};
  std::atomic<int> shm_ok{0}, tcp_ok{0}, ended{0};
  std::vector<Status> ends(2);
  auto submitter = [&](client::Client c, std::atomic<int>& ok, Status& end) {
    std::vector<float> x = {1, 2, 3, 4};
    client::Tensor t{"x", shm::DataType::kFp32, {4}, std::as_bytes(std::span(x))};
    while (go.load()) {
      auto r = c.infer(std::span(&t, 1), 5000ms);
      if (!r.is_ok()) {
        end = r.status();
        break;
      }
      ++ok;
    }
    ++ended;
  };
  auto tcp = client::Client::connect_tcp("doomed", "127.0.0.1", tcp_port_);
  ASSERT_TRUE(tcp.is_ok()) << tcp.status().message();
  std::thread shm_thread(submitter, shm_client("doomed"), std::ref(shm_ok), std::ref(ends[0]));
  std::thread tcp_thread(submitter, std::move(tcp).value(), std::ref(tcp_ok), std::ref(ends[1]));
  ASSERT_TRUE(eventually([&] { return shm_ok > 20 && tcp_ok > 20; })) << log();

  const auto unload_at = std::chrono::steady_clock::now();
  Reply r = admin("POST", "/v2/admin/models/doomed/unload");
  ASSERT_EQ(r.status, 200) << r.text;
  EXPECT_EQ(r.body["message"], "unloading doomed");
  // Both end with an error well before their 5 s timeout: the closed segment fails them fast.
  EXPECT_TRUE(eventually([&] { return ended == 2; }, 4s));
  EXPECT_LT(std::chrono::steady_clock::now() - unload_at, 4s);
  go = false;  // a client still succeeding after that is a failure; stop it
  shm_thread.join();
  tcp_thread.join();
  EXPECT_EQ(ends[0].code(), ErrorCode::kServerGone) << ends[0].to_string();
  EXPECT_TRUE(ends[1].code() == ErrorCode::kServerGone ||
              ends[1].code() == ErrorCode::kUnknownModel)
      << ends[1].to_string();

  EXPECT_TRUE(eventually([&] { return !segment_exists(instance_, "doomed"); })) << log();
  EXPECT_TRUE(eventually([&] { return admin("GET", "/v2/admin/status").body["unloading"].empty(); }));
  EXPECT_TRUE(model_row("doomed").is_null());
  EXPECT_EQ(admin("GET", "/v2/models/doomed").status, 404);
  auto again = client::Client::connect_tcp("doomed", "127.0.0.1", tcp_port_);
  EXPECT_EQ(again.status().code(), ErrorCode::kUnknownModel) << again.status().to_string();
  EXPECT_EQ(admin("POST", "/v2/admin/models/doomed/unload").status, 404);
  // The other model serves on, and the name can be loaded again.
  client::Client echo = shm_client("echo");
  EXPECT_EQ(run_one(echo, 3), (std::vector<float>{3, 4, 5, 6}));
  ASSERT_EQ(admin("POST", "/v2/admin/models/load", null_model_json("doomed", 10)).status, 200);
  EXPECT_NE(wait_serving(instance_, "doomed", 30s), 0u) << log();
}

// Whether the process maps a file of the model's segment (/dev/shm/NAME, "(deleted)" once
// unlinked).
bool maps_segment(pid_t pid, const std::string& instance, const std::string& model) {
  const Result<std::string> name = shm::segment_name(instance, model);
  const std::string file = "/dev/shm/" + name->substr(name->find_first_not_of('/'));
  return read_file("/proc/" + std::to_string(pid) + "/maps").find(file) != std::string::npos;
}

TEST_F(AdminApiTest, AnUnloadedModelIsUnmappedByTheFrontEndsAfterTheirLastRequest) {
  start();
  ASSERT_EQ(admin("POST", "/v2/admin/models/load", null_model_json("brief", 10)).status, 200);
  ASSERT_NE(wait_serving(instance_, "brief", 30s), 0u) << log();
  // A keep-alive HTTP connection and a TCP client each answered once, and both stay open.
  const int keep = connect_loopback(http_port_);
  ASSERT_GE(keep, 0);
  const std::string body =
      R"({"inputs":[{"name":"x","shape":[1,4],"datatype":"FP32","data":[1,2,3,4]}]})";
  const std::string raw = "POST /v2/models/brief/infer HTTP/1.1\r\nHost: x\r\nContent-Length: " +
                          std::to_string(body.size()) + "\r\n\r\n" + body;
  send(keep, raw.data(), raw.size(), MSG_NOSIGNAL);
  EXPECT_EQ(parse_http_reply(read_until_closed(keep, 500ms)).status, 200);
  auto tcp = client::Client::connect_tcp("brief", "127.0.0.1", tcp_port_);
  ASSERT_TRUE(tcp.is_ok()) << tcp.status().message();
  EXPECT_EQ(run_one(*tcp, 1), (std::vector<float>{1, 2, 3, 4}));
  ASSERT_TRUE(maps_segment(daemon_->pid(), instance_, "brief"));

  ASSERT_EQ(admin("POST", "/v2/admin/models/brief/unload").status, 200);
  EXPECT_TRUE(eventually([&] { return !maps_segment(daemon_->pid(), instance_, "brief"); }))
      << "the daemon still maps the unloaded model's segment\n"
      << log();
  close(keep);
}

TEST_F(AdminApiTest, EveryRouteAnswersWithTheTokenAndNoneWithout) {
  start(kToken);
  const std::vector<std::pair<std::string, std::string>> routes = {
      {"GET", "/v2/admin/status"},
      {"POST", "/v2/admin/models/load"},
      {"POST", "/v2/admin/models/echo/resize"},
      {"POST", "/v2/admin/models/echo/policy"},
      {"POST", "/v2/admin/models/echo/backend"},
      {"POST", "/v2/admin/models/echo/unload"},
  };
  for (const auto& [method, target] : routes) {
    EXPECT_EQ(http(http_port_, method, target, "{}").status, 401) << target;
    EXPECT_EQ(http(http_port_, method, target, "{}", "wrong-token-of-24-chars!").status, 401);
  }
  Reply policy = admin("POST", "/v2/admin/models/echo/policy", R"({"on":false})");
  EXPECT_EQ(policy.status, 200) << policy.text;
  EXPECT_FALSE(model_row("echo")["policy"].get<bool>());
  EXPECT_EQ(admin("POST", "/v2/admin/models/echo/policy", R"({"on":"yes"})").status, 400);
  EXPECT_EQ(admin("POST", "/v2/admin/models/nope/policy", R"({"on":true})").status, 404);
  EXPECT_EQ(admin("GET", "/v2/admin/models/echo/policy").status, 405);
  EXPECT_EQ(admin("POST", "/v2/admin/models/echo/backend", R"({"backend":"quantum"})").status,
            400);
  EXPECT_EQ(admin("POST", "/v2/admin/models/echo/resize", R"({"slice":0})").status, 400);

  Reply resize = admin("POST", "/v2/admin/models/echo/resize", R"({"slice":30})");
  ASSERT_EQ(resize.status, 200) << resize.text;
  // A shadow resize (cpu:process) takes a while: meanwhile another resize and an unload conflict.
  Reply busy = admin("POST", "/v2/admin/models/echo/resize", R"({"slice":35})");
  Reply unload = admin("POST", "/v2/admin/models/echo/unload");
  if (model_row("echo")["resizing"].get<bool>() || busy.status == 409) {
    EXPECT_EQ(busy.status, 409) << busy.text;
    EXPECT_EQ(unload.status, 409) << unload.text;
    EXPECT_NE(unload.body.value("error", "").find("resizing"), std::string::npos) << unload.text;
  }
  EXPECT_TRUE(eventually([&] {
    auto m = model_row("echo");
    return !m["resizing"].get<bool>() && m["slice"] == 30;
  })) << log();

  Reply load = admin("POST", "/v2/admin/models/load",
                     R"({"toml":"[[model]]\nname = \"second\"\nkind = \"null\"\nslice = 5\n)"
                     R"(inputs = [ { name = \"x\", dtype = \"FP32\", shape = [1] } ]\n)"
                     R"(outputs = [ { name = \"y\", dtype = \"FP32\", shape = [1] } ]\n"})");
  ASSERT_EQ(load.status, 200) << load.text;
  EXPECT_NE(wait_serving(instance_, "second", 30s), 0u) << log();
  EXPECT_EQ(admin("POST", "/v2/admin/models/second/unload").status, 200);
  EXPECT_TRUE(eventually([&] { return !segment_exists(instance_, "second"); }));
  EXPECT_EQ(admin("GET", "/v2/admin/nothing").status, 404);
}

// The value of one series in Prometheus text, or -1 when absent.
double metric(const std::string& text, const std::string& series) {
  const size_t at = text.find("\n" + series + " ");
  if (at == std::string::npos) return -1;
  const size_t start = at + 1 + series.size() + 1;
  const std::string value = text.substr(start, text.find('\n', start) - start);
  return value == "NaN" ? std::nan("") : std::stod(value);
}

TEST_F(AdminApiTest, MetricsCountPolicyDecisionsAndSloOutcomes) {
  start();
  const std::string labels = "{model=\"echo\",version=\"1\"";
  const std::string hold = "sliceserve_policy_decisions_total" + labels + ",action=\"hold\"}";
  const std::string shrink = "sliceserve_policy_decisions_total" + labels + ",action=\"shrink\"}";
  const std::string met = "sliceserve_slo_met_total" + labels + "}";
  const std::string missed = "sliceserve_slo_missed_total" + labels + "}";
  const std::string attainment = "sliceserve_slo_attainment" + labels + "}";
  Reply first = admin("GET", "/metrics");
  ASSERT_EQ(first.status, 200);
  for (const std::string& s : {hold, shrink, met, missed, attainment}) {
    EXPECT_NE(first.text.find("\n" + s + " "), std::string::npos) << s << "\n" << first.text;
  }
  EXPECT_NE(first.text.find("# TYPE sliceserve_policy_decisions_total counter"),
            std::string::npos);
  EXPECT_NE(first.text.find("# TYPE sliceserve_slo_attainment gauge"), std::string::npos);

  client::Client c = shm_client("echo");
  for (int i = 0; i < 50; ++i) run_one(c, float(i));
  // Every policy interval decides for the model; the idle one at 20% shrinks (the policy goes
  // for min_slice), and 50 fast requests are within a 50 ms SLO.
  double decisions_before = 0, decisions_after = 0;
  for (const char* action : {"grow", "shrink", "batch", "hold"}) {
    decisions_before += std::max(0.0, metric(first.text, "sliceserve_policy_decisions_total" +
                                                            labels + ",action=\"" + action + "\"}"));
  }
  Reply later;
  ASSERT_TRUE(eventually([&] {
    later = admin("GET", "/metrics");
    return metric(later.text, met) >= 50;
  })) << later.text;
  EXPECT_EQ(metric(later.text, missed), 0);
  EXPECT_DOUBLE_EQ(metric(later.text, attainment), 1.0);
  for (const char* action : {"grow", "shrink", "batch", "hold"}) {
    decisions_after += metric(later.text, "sliceserve_policy_decisions_total" + labels +
                                              ",action=\"" + action + "\"}");
  }
  EXPECT_GT(decisions_after, decisions_before);
  EXPECT_TRUE(eventually([&] {
    return metric(admin("GET", "/metrics").text, shrink) >= 1;
  })) << admin("GET", "/metrics").text << log();
}

TEST_F(AdminApiTest, SlicectlServerSteersTheDaemonOverHttp) {
  start(kToken);
  CliRun status = slicectl_server("status");
  EXPECT_EQ(status.rc, 0) << status.err;
  EXPECT_NE(status.out.find("echo"), std::string::npos) << status.out;
  CliRun json = slicectl_server("status --json");
  ASSERT_EQ(json.rc, 0) << json.err;
  EXPECT_EQ(nlohmann::json::parse(json.out)["models"][0]["model"], "echo");

  CliRun no_token = slicectl("--server http://127.0.0.1:" + std::to_string(http_port_) + " status");
  EXPECT_NE(no_token.rc, 0);
  EXPECT_NE(no_token.err.find("Bearer"), std::string::npos) << no_token.err;
  CliRun env_token = slicectl("--server http://127.0.0.1:" + std::to_string(http_port_) +
                                  " status",
                              std::string("SLICESERVE_TOKEN=") + kToken);
  EXPECT_EQ(env_token.rc, 0) << env_token.err;

  CliRun resize = slicectl_server("resize echo 25");
  EXPECT_EQ(resize.rc, 0) << resize.err << log();
  EXPECT_EQ(model_row("echo")["slice"], 25);
  CliRun policy = slicectl_server("policy echo on");
  EXPECT_EQ(policy.rc, 0) << policy.err;
  EXPECT_TRUE(model_row("echo")["policy"].get<bool>());

  const std::string file = dir_.write("m.toml", R"([[model]]
name = "remote"
kind = "null"
slice = 10
inputs = [ { name = "x", dtype = "FP32", shape = [4] } ]
outputs = [ { name = "y", dtype = "FP32", shape = [4] } ]
)");
  CliRun load = slicectl_server("load " + file);
  ASSERT_EQ(load.rc, 0) << load.err << log();
  EXPECT_NE(load.out.find("remote: serving"), std::string::npos) << load.out;
  client::Client c = shm_client("remote");
  EXPECT_EQ(run_one(c, 1), (std::vector<float>{1, 2, 3, 4}));
  CliRun twice = slicectl_server("load " + file);
  EXPECT_NE(twice.rc, 0);
  EXPECT_NE(twice.err.find("already served"), std::string::npos) << twice.err;

  CliRun unload = slicectl_server("unload remote");
  EXPECT_EQ(unload.rc, 0) << unload.err;
  EXPECT_NE(unload.out.find("remote: unloaded"), std::string::npos) << unload.out;
  EXPECT_FALSE(segment_exists(instance_, "remote"));
  CliRun unknown = slicectl_server("unload remote");
  EXPECT_NE(unknown.rc, 0);
  EXPECT_NE(unknown.err.find("unknown model 'remote'"), std::string::npos) << unknown.err;

  // The same through the local socket.
  CliRun local_load = slicectl("--instance " + instance_ + " load " + file);
  EXPECT_EQ(local_load.rc, 0) << local_load.err;
  CliRun local_unload = slicectl("--instance " + instance_ + " unload remote");
  EXPECT_EQ(local_unload.rc, 0) << local_unload.err;
  EXPECT_FALSE(segment_exists(instance_, "remote"));
  CliRun nothing = slicectl("--server http://127.0.0.1:1 status");
  EXPECT_NE(nothing.rc, 0);
  EXPECT_NE(nothing.err.find("no sliceserved answers"), std::string::npos) << nothing.err;
}

}  // namespace
}  // namespace sliceserve::testing
