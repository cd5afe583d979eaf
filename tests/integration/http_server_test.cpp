// sliceserved's HTTP front-end against a real daemon: KServe v2 health and metadata, Prometheus
// /metrics, inference with JSON and binary tensors (null, synthetic and ONNX models, values
// checked against the shared-memory path), every refused request answered with its error while
// other connections are served, tokens, limits, truncated bodies and pipelining.

#include <gtest/gtest.h>

#include <bit>
#include <cstring>
#include <fstream>
#include <future>
#include <nlohmann/json.hpp>
#include <regex>
#include <set>
#include <sstream>
#include <thread>

#include "sliceserve/client/client.h"
#include "support/daemon_harness.h"
#include "support/free_port.h"
#include "support/onnx_model_builder.h"
#include "support/raw_http.h"

namespace sliceserve::testing {
namespace {

using namespace std::chrono_literals;

constexpr const char* kToken = "a-token-of-twenty-chars";

// POST /v2/models/{model}/infer; `json` then `binary` (with Inference-Header-Content-Length when
// there is a binary part).
std::string infer_request(const std::string& model, const std::string& json,
                          const std::string& binary = "", bool close = true,
                          const std::string& extra_headers = "") {
  std::string r = "POST /v2/models/" + model + "/infer HTTP/1.1\r\nHost: x\r\n";
  if (close) r += "Connection: close\r\n";
  r += "Content-Type: " + std::string(binary.empty() ? "application/json" : "application/octet-stream") +
       "\r\nContent-Length: " + std::to_string(json.size() + binary.size()) + "\r\n";
  if (!binary.empty()) r += "Inference-Header-Content-Length: " + std::to_string(json.size()) + "\r\n";
  return r + extra_headers + "\r\n" + json + binary;
}

template <typename T>
std::string bytes_of(const std::vector<T>& v) {
  return std::string(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(T));
}

// y = W x + b for x [N, 4], y [N, 3]: the ONNX model the tests serve.
std::string tiny_gemm() {
  testing::ModelBuilder b;
  b.input("features", {-1, 4});
  b.output("scores", {-1, 3});
  testing::float_tensor(b, "w", {3, 4}, {0.5F, -1, 2, 0.25F, 1, 1, 1, 1, -0.5F, 0, 3, -2});
  testing::float_tensor(b, "b", {3}, {0.1F, 0.2F, 0.3F});
  auto* gemm = b.node("Gemm", {"features", "w", "b"}, {"scores"}, "fc");
  testing::set_int(gemm, "transB", 1);
  return b.bytes();
}

HttpReply request(uint16_t port, const std::string& method, const std::string& target,
                  const std::string& extra_headers = "") {
  return http_round_trip(port, method + " " + target +
                                   " HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + extra_headers +
                                   "\r\n");
}

std::string config(const std::string& instance, uint16_t port, const std::string& extra = "",
                   const std::string& models = "") {
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
)" + models;
}

// A null model (output o copies input a's bytes) with one input of each kind of range check.
constexpr const char* kMixedModel = R"(
[[model]]
name = "mixed"
kind = "null"
slice = 10
max_batch = 4
inputs = [ { name = "a", dtype = "UINT8", shape = [3] }, { name = "b", dtype = "FP16", shape = [2] },
           { name = "c", dtype = "BOOL", shape = [2] } ]
outputs = [ { name = "o", dtype = "UINT8", shape = [3] }, { name = "p", dtype = "FP32", shape = [2] } ]
)";

class HttpServerTest : public ::testing::Test {
 protected:
  void start(const std::string& extra = "", const std::string& models = "",
             std::vector<std::string> wait_for = {}) {
    unsetenv("SLICESERVE_TOKEN");
    port_ = free_port();
    instance_ = unique_instance("http");
    const std::string path = dir_.write("c.toml", config(instance_, port_, extra, models));
    daemon_ = std::make_unique<DaemonProcess>(path, dir_.path() + "/d.log");
    wait_for.insert(wait_for.begin(), "echo");
    for (const std::string& m : wait_for) {
      ASSERT_NE(wait_serving(instance_, m, 30s), 0u) << m << ": " << read_file(dir_.path() + "/d.log");
    }
  }
  client::Client shm_client(const std::string& model) {
    client::ConnectOptions o;
    o.instance = instance_;
    auto c = client::Client::connect(model, o);
    EXPECT_TRUE(c.is_ok()) << c.status().message();
    return std::move(c).value();
  }
  // The model's outputs for one item through shared memory, as the reference.
  std::vector<std::byte> shm_output(const std::string& model, const client::Tensor& input,
                                    size_t output = 0) {
    client::Client c = shm_client(model);
    auto r = c.infer(std::span(&input, 1));
    EXPECT_TRUE(r.is_ok()) << r.status().message();
    return r.is_ok() ? r->outputs[output].data : std::vector<std::byte>{};
  }
  void TearDown() override {
    if (daemon_) {
      EXPECT_EQ(daemon_->stop(), 0) << read_file(dir_.path() + "/d.log");
    }
  }
  // The front-end's port is bound by the time the daemon serves; health needs the worker too.
  HttpReply wait_ready() {
    HttpReply r;
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
  HttpReply r = request(port_, "GET", "/v2/models/echo/ready");
  EXPECT_EQ(r.status, 200);
  EXPECT_TRUE(r.body.empty());
}

TEST_F(HttpServerTest, ServerMetadataNamesSliceserve) {
  start();
  HttpReply r = request(port_, "GET", "/v2");
  ASSERT_EQ(r.status, 200);
  auto j = nlohmann::json::parse(r.body);
  EXPECT_EQ(j["name"], "sliceserve");
  EXPECT_FALSE(j["version"].get<std::string>().empty());
  EXPECT_EQ(j["extensions"], nlohmann::json({"binary_tensor_data"}));
  EXPECT_NE(r.head.find("application/json"), std::string::npos);
}

TEST_F(HttpServerTest, ModelMetadataHasKServeDatatypesAndBatchDimension) {
  start();
  HttpReply r = request(port_, "GET", "/v2/models/echo");
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
    HttpReply r = request(port_, "GET", target);
    EXPECT_EQ(r.status, 404) << target;
    EXPECT_TRUE(nlohmann::json::parse(r.body).contains("error")) << r.body;
  }
  HttpReply r = request(port_, "DELETE", "/v2/health/live");
  EXPECT_EQ(r.status, 405);
  EXPECT_NE(r.head.find("Allow: GET"), std::string::npos) << r.head;
}

// Four floats carried as the bits of INT32s: the null model copies them into its FP32 output.
std::vector<int32_t> float_bits(std::initializer_list<float> values) {
  std::vector<int32_t> out;
  for (float f : values) out.push_back(std::bit_cast<int32_t>(f));
  return out;
}

std::vector<float> floats_of(const std::vector<std::byte>& bytes) {
  std::vector<float> out(bytes.size() / sizeof(float));
  std::memcpy(out.data(), bytes.data(), out.size() * sizeof(float));
  return out;
}

TEST_F(HttpServerTest, JsonInferOnTheNullModelMatchesTheShmPath) {
  start();
  ASSERT_EQ(wait_ready().status, 200);
  const std::vector<int32_t> x = float_bits({1.5F, -2.25F, 3.0F, 100.0F});
  const std::vector<int32_t> x2 = float_bits({-7.0F, 0.5F, 0.0F, 1e6F});
  const std::vector<float> want = floats_of(shm_output(
      "echo", {"x", shm::DataType::kInt32, {4}, std::as_bytes(std::span(x))}));
  ASSERT_EQ(want, std::vector<float>({1.5F, -2.25F, 3.0F, 100.0F}));

  const nlohmann::json body = {
      {"id", "r-1"},
      {"inputs", {{{"name", "x"}, {"shape", {1, 4}}, {"datatype", "INT32"}, {"data", x}}}}};
  HttpReply r = http_round_trip(port_, infer_request("echo", body.dump()));
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(http_header(r, "Content-Type"), "application/json");
  const auto j = nlohmann::json::parse(r.body);
  EXPECT_EQ(j["model_name"], "echo");
  EXPECT_EQ(j["model_version"], "1");
  EXPECT_EQ(j["id"], "r-1");
  ASSERT_EQ(j["outputs"].size(), 1u);
  EXPECT_EQ(j["outputs"][0]["name"], "y");
  EXPECT_EQ(j["outputs"][0]["datatype"], "FP32");
  EXPECT_EQ(j["outputs"][0]["shape"], nlohmann::json({1, 2, 2}));
  EXPECT_EQ(j["outputs"][0]["data"].get<std::vector<float>>(), want);

  // A batch of two, nested row-major: two items through the ring, answered in item order.
  const nlohmann::json batch = {
      {"inputs",
       {{{"name", "x"}, {"shape", {2, 4}}, {"datatype", "INT32"}, {"data", {x, x2}}}}},
      {"outputs", {{{"name", "y"}}}}};
  r = http_round_trip(port_, infer_request("echo", batch.dump()));
  ASSERT_EQ(r.status, 200) << r.body;
  const auto jb = nlohmann::json::parse(r.body);
  EXPECT_FALSE(jb.contains("id"));
  EXPECT_EQ(jb["outputs"][0]["shape"], nlohmann::json({2, 2, 2}));
  EXPECT_EQ(jb["outputs"][0]["data"].get<std::vector<float>>(),
            std::vector<float>({1.5F, -2.25F, 3.0F, 100.0F, -7.0F, 0.5F, 0.0F, 1e6F}));
}

TEST_F(HttpServerTest, JsonInferOnSyntheticAndOnnxModelsMatchesTheShmPath) {
  std::ofstream(dir_.path() + "/gemm.onnx", std::ios::binary) << tiny_gemm();
  start("", "[[model]]\nname = \"syn\"\nkind = \"synthetic\"\nslice = 10\nmax_batch = 4\n"
            "flops_per_item = 1e4\ninputs = [ { name = \"x\", dtype = \"FP32\", shape = [4] } ]\n"
            "outputs = [ { name = \"y\", dtype = \"FP32\", shape = [4] } ]\n"
            "[[model]]\nname = \"gemm\"\nkind = \"onnx\"\npath = \"" + dir_.path() +
            "/gemm.onnx\"\nslice = 10\nmax_batch = 4\n",
        {"syn", "gemm"});
  const std::vector<float> x = {0.5F, -1.0F, 2.0F, 4.0F};
  for (const auto& [model, in, out] :
       {std::tuple{"syn", "x", "y"}, std::tuple{"gemm", "features", "scores"}}) {
    const std::vector<float> want = floats_of(
        shm_output(model, {in, shm::DataType::kFp32, {4}, std::as_bytes(std::span(x))}));
    ASSERT_FALSE(want.empty()) << model;
    const nlohmann::json body = {
        {"inputs", {{{"name", in}, {"shape", {1, 4}}, {"datatype", "FP32"}, {"data", x}}}}};
    HttpReply r = http_round_trip(port_, infer_request(model, body.dump()));
    ASSERT_EQ(r.status, 200) << model << ": " << r.body;
    const auto j = nlohmann::json::parse(r.body);
    EXPECT_EQ(j["outputs"][0]["name"], out);
    const std::vector<float> got = j["outputs"][0]["data"].get<std::vector<float>>();
    ASSERT_EQ(got.size(), want.size()) << model;
    for (size_t i = 0; i < got.size(); ++i) EXPECT_FLOAT_EQ(got[i], want[i]) << model << " " << i;
  }
  // The ONNX model's answer is W x + b itself, not merely what shared memory says.
  const nlohmann::json body = {
      {"inputs", {{{"name", "features"}, {"shape", {1, 4}}, {"datatype", "FP32"}, {"data", x}}}}};
  const auto j =
      nlohmann::json::parse(http_round_trip(port_, infer_request("gemm", body.dump())).body);
  const std::vector<float> got = j["outputs"][0]["data"].get<std::vector<float>>();
  EXPECT_NEAR(got[0], 0.25F + 1.0F + 4.0F + 1.0F + 0.1F, 1e-5);
  EXPECT_NEAR(got[1], 5.5F + 0.2F, 1e-5);
  EXPECT_NEAR(got[2], -0.25F + 6.0F - 8.0F + 0.3F, 1e-5);
}

TEST_F(HttpServerTest, BinaryInferCarriesRawTensorsBothWays) {
  start("", kMixedModel, {"mixed"});
  const std::vector<uint8_t> a = {7, 200, 255, 1, 2, 3};  // a batch of two
  const std::vector<uint16_t> b = {0x3c00, 0xc000, 0x3800, 0x0000};
  const std::vector<uint8_t> c = {1, 0, 0, 1};
  const nlohmann::json head = {
      {"id", "bin"},
      {"inputs",
       {{{"name", "a"}, {"shape", {2, 3}}, {"datatype", "UINT8"},
         {"parameters", {{"binary_data_size", 6}}}},
        {{"name", "b"}, {"shape", {2, 2}}, {"datatype", "FP16"},
         {"parameters", {{"binary_data_size", 8}}}},
        {{"name", "c"}, {"shape", {2, 2}}, {"datatype", "BOOL"},
         {"parameters", {{"binary_data_size", 4}}}}}},
      {"outputs", {{{"name", "o"}, {"parameters", {{"binary_data", true}}}}}}};
  const std::string json = head.dump();
  HttpReply r =
      http_round_trip(port_, infer_request("mixed", json, bytes_of(a) + bytes_of(b) + bytes_of(c)));
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(http_header(r, "Content-Type"), "application/octet-stream");
  const size_t n = std::stoul(http_header(r, "Inference-Header-Content-Length"));
  ASSERT_LE(n, r.body.size());
  const auto j = nlohmann::json::parse(r.body.substr(0, n));
  EXPECT_EQ(j["id"], "bin");
  ASSERT_EQ(j["outputs"].size(), 1u);
  EXPECT_EQ(j["outputs"][0]["name"], "o");
  EXPECT_EQ(j["outputs"][0]["shape"], nlohmann::json({2, 3}));
  EXPECT_EQ(j["outputs"][0]["parameters"]["binary_data_size"], 6);
  EXPECT_FALSE(j["outputs"][0].contains("data"));
  EXPECT_EQ(r.body.substr(n), bytes_of(a));  // o copies a, item by item

  // The same tensors through shared memory give the same bytes.
  const std::vector<uint16_t> b0 = {b[0], b[1]};
  const std::vector<uint8_t> a0 = {a[0], a[1], a[2]}, c0 = {c[0], c[1]};
  client::Client shm = shm_client("mixed");
  const client::Tensor in[] = {{"a", shm::DataType::kUint8, {3}, std::as_bytes(std::span(a0))},
                               {"b", shm::DataType::kFp16, {2}, std::as_bytes(std::span(b0))},
                               {"c", shm::DataType::kBool, {2}, std::as_bytes(std::span(c0))}};
  auto s = shm.infer(in);
  ASSERT_TRUE(s.is_ok()) << s.status().message();
  EXPECT_EQ(bytes_of(std::vector<std::byte>(s->outputs[0].data)), r.body.substr(n, 3));
}

// A chunked infer request: the JSON header, then the binary part, in chunks of `chunk` bytes.
std::string chunked_infer_request(const std::string& model, const std::string& json,
                                  const std::string& binary, size_t chunk) {
  std::string r = "POST /v2/models/" + model +
                  "/infer HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                  "Transfer-Encoding: chunked\r\nInference-Header-Content-Length: " +
                  std::to_string(json.size()) + "\r\n\r\n";
  const std::string body = json + binary;
  for (size_t at = 0; at < body.size(); at += chunk) {
    const std::string piece = body.substr(at, chunk);
    char size[32];
    std::snprintf(size, sizeof size, "%zx\r\n", piece.size());
    r += size + piece + "\r\n";
  }
  return r + "0\r\n\r\n";
}

TEST_F(HttpServerTest, ChunkedBinaryInferIsReadLikeOneWithContentLength) {
  start();
  const std::vector<int32_t> x = {5, -6, 7, 8, 1, 2, 3, 4};
  const std::string head = nlohmann::json{{"inputs",
                                           {{{"name", "x"},
                                             {"shape", {2, 4}},
                                             {"datatype", "INT32"},
                                             {"parameters", {{"binary_data_size", 32}}}}}},
                                          {"parameters", {{"binary_data_output", true}}}}
                               .dump();
  for (size_t chunk : {size_t(7), size_t(1000)}) {  // chunks across the header/tensor border, one
    HttpReply r = http_round_trip(port_, chunked_infer_request("echo", head, bytes_of(x), chunk));
    ASSERT_EQ(r.status, 200) << chunk << ": " << r.body;
    const size_t n = std::stoul(http_header(r, "Inference-Header-Content-Length"));
    EXPECT_EQ(r.body.substr(n), bytes_of(x)) << chunk;
  }
  // Fewer tensor bytes than the header says, then the body's end: cut short.
  HttpReply short_body =
      http_round_trip(port_, chunked_infer_request("echo", head, bytes_of(x).substr(0, 20), 1000));
  EXPECT_EQ(short_body.status, 400);
  EXPECT_NE(short_body.body.find("ended inside a tensor"), std::string::npos) << short_body.body;
  // More: refused, and nothing of it runs.
  HttpReply long_body =
      http_round_trip(port_, chunked_infer_request("echo", head, bytes_of(x) + "extra", 1000));
  EXPECT_EQ(long_body.status, 400);
  EXPECT_NE(long_body.body.find("longer than its JSON header and tensors"), std::string::npos)
      << long_body.body;
  EXPECT_EQ(request(port_, "GET", "/v2/health/live").status, 200);
}

TEST_F(HttpServerTest, BinaryInputWithJsonOutputAnswersJson) {
  start("", kMixedModel, {"mixed"});
  // a binary, b and c as JSON (FP16 from numbers), outputs as JSON by default.
  const std::vector<uint8_t> a = {9, 8, 7};
  const nlohmann::json head = {
      {"inputs",
       {{{"name", "a"}, {"shape", {1, 3}}, {"datatype", "UINT8"},
         {"parameters", {{"binary_data_size", 3}}}},
        {{"name", "b"}, {"shape", {1, 2}}, {"datatype", "FP16"}, {"data", {1.0, -2.5}}},
        {{"name", "c"}, {"shape", {1, 2}}, {"datatype", "BOOL"}, {"data", {true, false}}}}}};
  HttpReply r = http_round_trip(port_, infer_request("mixed", head.dump(), bytes_of(a)));
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(http_header(r, "Content-Type"), "application/json");
  EXPECT_EQ(http_header(r, "Inference-Header-Content-Length"), "");
  const auto j = nlohmann::json::parse(r.body);
  ASSERT_EQ(j["outputs"].size(), 2u);  // every output, in the model's order
  EXPECT_EQ(j["outputs"][0]["data"], nlohmann::json({9, 8, 7}));
  EXPECT_EQ(j["outputs"][1]["name"], "p");
  EXPECT_EQ(j["outputs"][1]["data"], nlohmann::json({0.0, 0.0}));

  // binary_data_output asks for every output in binary.
  nlohmann::json all = head;
  all["parameters"] = {{"binary_data_output", true}};
  r = http_round_trip(port_, infer_request("mixed", all.dump(), bytes_of(a)));
  ASSERT_EQ(r.status, 200) << r.body;
  const size_t n = std::stoul(http_header(r, "Inference-Header-Content-Length"));
  EXPECT_EQ(r.body.size(), n + 3 + 8);
  EXPECT_EQ(r.body.substr(n, 3), bytes_of(a));
}

TEST_F(HttpServerTest, RefusedInferRequestsGet400NamingTheTensorWhileOthersAreServed) {
  start("", kMixedModel, {"mixed"});
  const std::string good = nlohmann::json{{"inputs",
                                           {{{"name", "x"},
                                             {"shape", {1, 4}},
                                             {"datatype", "INT32"},
                                             {"data", {1, 2, 3, 4}}}}}}
                               .dump();
  auto x = [](nlohmann::json shape, nlohmann::json data, std::string dtype = "INT32") {
    return nlohmann::json{
        {"inputs",
         {{{"name", "x"}, {"shape", shape}, {"datatype", dtype}, {"data", data}}}}}.dump();
  };
  auto mixed = [](nlohmann::json a, nlohmann::json b, nlohmann::json c) {
    return nlohmann::json{
        {"inputs",
         {{{"name", "a"}, {"shape", {1, 3}}, {"datatype", "UINT8"}, {"data", a}},
          {{"name", "b"}, {"shape", {1, 2}}, {"datatype", "FP16"}, {"data", b}},
          {{"name", "c"}, {"shape", {1, 2}}, {"datatype", "BOOL"}, {"data", c}}}}}.dump();
  };
  struct Case {
    std::string model, body, binary, error;
  };
  const std::vector<Case> cases = {
      {"echo", "{\"inputs\": [", "", "not valid JSON"},
      {"echo", "{}", "", "needs 'inputs'"},
      {"echo", x({1, 5}, {1, 2, 3, 4, 5}), "", "input 'x' has shape [1,5], model 'echo' takes [-1,4]"},
      {"echo", x({1, 4}, {1, 2, 3, 4}, "FP32"), "", "input 'x' has datatype FP32, model 'echo' declares INT32"},
      {"echo", x({1, 4}, {1, 2, 3}), "", "input 'x' has 3 elements, its shape [1,4] needs 4"},
      {"echo", x({2, 4}, {{1, 2, 3, 4}, {1, 2, 3}}), "", "input 'x': data[1] should be an array of 4"},
      {"echo", x({1, 4}, {1, 2, 3, 2147483648LL}), "", "input 'x': element 3 is 2147483648, out of range for INT32"},
      {"echo", x({1, 4}, {1, 2, 3, 1.5}), "", "input 'x': element 3 is not an integer"},
      {"echo", x({17, 4}, nlohmann::json::array()), "", "input 'x' has a batch of 17; one request carries at most 16"},
      {"echo",
       nlohmann::json{{"inputs", {{{"name", "x"}, {"shape", {1, 4}}, {"datatype", "INT32"}, {"data", {1, 2, 3, 4}}},
                                  {{"name", "z"}, {"shape", {1}}, {"datatype", "INT32"}, {"data", {1}}}}}}.dump(),
       "", "model 'echo' has no input 'z' (inputs: x)"},
      {"echo",
       nlohmann::json{{"inputs", {{{"name", "x"}, {"shape", {1, 4}}, {"datatype", "INT32"}, {"data", {1, 2, 3, 4}}}}},
                      {"outputs", {{{"name", "q"}}}}}.dump(),
       "", "model 'echo' has no output 'q' (outputs: y)"},
      {"echo",
       nlohmann::json{{"inputs", {{{"name", "x"}, {"shape", {1, 4}}, {"datatype", "INT32"},
                                   {"parameters", {{"binary_data_size", 15}}}}}}}.dump(),
       std::string(15, 'a'), "input 'x' has binary_data_size 15, its shape [1,4] of INT32 needs 16 bytes"},
      {"echo",
       nlohmann::json{{"inputs", {{{"name", "x"}, {"shape", {1, 4}}, {"datatype", "INT32"},
                                   {"parameters", {{"binary_data_size", 16}}}}}}}.dump(),
       std::string(20, 'a'), "the binary part has 20 bytes, the inputs' binary_data_size add up to 16"},
      {"mixed", mixed({1, 2, 256}, {1, 2}, {true, false}), "", "input 'a': element 2 is 256, out of range for UINT8"},
      {"mixed", mixed({1, 2, -1}, {1, 2}, {true, false}), "", "input 'a': element 2 is -1, out of range for UINT8"},
      {"mixed", mixed({1, 2, 3}, {1, 70000}, {true, false}), "", "input 'b': element 1 is out of range for FP16"},
      {"mixed", mixed({1, 2, 3}, {1, "2"}, {true, false}), "", "input 'b': element 1 is not a number"},
      {"mixed", mixed({1, 2, 3}, {1, 2}, {true, 1}), "", "input 'c': element 1 is not a boolean"},
      {"mixed",
       nlohmann::json{{"inputs", {{{"name", "a"}, {"shape", {1, 3}}, {"datatype", "UINT8"}, {"data", {1, 2, 3}}}}}}.dump(),
       "", "input 'b' of model 'mixed' is missing"},
  };
  std::atomic<bool> stop{false};
  std::atomic<int> served{0}, failed{0};
  std::thread other([&] {
    while (!stop) {
      const HttpReply r = http_round_trip(port_, infer_request("echo", good));
      (r.status == 200 ? served : failed)++;
    }
  });
  for (const Case& c : cases) {
    // The refused request, then a good one on the same connection: a 400 keeps it open.
    const HttpReply both = http_round_trip(
        port_, infer_request(c.model, c.body, c.binary, false) + infer_request("echo", good));
    const std::vector<HttpReply> replies = split_http_replies(both);
    ASSERT_EQ(replies.size(), 2u) << c.error << "\n" << both.head << both.body;
    EXPECT_EQ(replies[0].status, 400) << c.error;
    const auto j = nlohmann::json::parse(replies[0].body, nullptr, false);
    ASSERT_TRUE(j.contains("error")) << replies[0].body;
    EXPECT_NE(j["error"].get<std::string>().find(c.error), std::string::npos)
        << "want: " << c.error << "\ngot:  " << j["error"];
    EXPECT_EQ(replies[1].status, 200) << replies[1].body;
  }
  stop = true;
  other.join();
  EXPECT_GT(served.load(), 0);
  EXPECT_EQ(failed.load(), 0);
  // Unknown model and wrong method.
  EXPECT_EQ(http_round_trip(port_, infer_request("nope", good)).status, 404);
  EXPECT_EQ(request(port_, "GET", "/v2/models/echo/infer").status, 405);
}

TEST_F(HttpServerTest, TruncatedAndOversizedInferBodiesAreRefused) {
  start("http_max_body_mb = 1\n");
  // Part of a request, then the client ends its side (what a dying client does): the server says
  // the body was cut short, then closes.
  auto truncated = [&](const std::string& part) {
    const int fd = connect_loopback(port_);
    EXPECT_GE(fd, 0);
    send(fd, part.data(), part.size(), MSG_NOSIGNAL);
    shutdown(fd, SHUT_WR);
    std::string in = read_until_closed(fd, 5s);
    close(fd);
    return in;
  };
  const std::string json_body = nlohmann::json{{"inputs", {{{"name", "x"}, {"shape", {1, 4}},
                                                 {"datatype", "INT32"}, {"data", {1, 2, 3, 4}}}}}}
                                    .dump();
  const std::string json_req = infer_request("echo", json_body);
  std::string in = truncated(json_req.substr(0, json_req.size() - 10));  // inside the JSON
  EXPECT_EQ(in.substr(0, 12), "HTTP/1.1 400") << in;
  EXPECT_NE(in.find("truncated"), std::string::npos) << in;
  const std::string head =
      nlohmann::json{{"inputs", {{{"name", "x"}, {"shape", {1, 4}}, {"datatype", "INT32"},
                                  {"parameters", {{"binary_data_size", 16}}}}}}}.dump();
  const std::string bin_req = infer_request("echo", head, std::string(16, 'a'));
  in = truncated(bin_req.substr(0, bin_req.size() - 5));  // inside the tensor, slot taken
  EXPECT_EQ(in.substr(0, 12), "HTTP/1.1 400") << in;
  EXPECT_NE(in.find("truncated"), std::string::npos) << in;
  // The cut request's slot went back: a batch that needs every slot of the lane still runs.
  const std::string all_slots =
      nlohmann::json{{"parameters", {{"timeout", 3000000}}},
                     {"inputs", {{{"name", "x"}, {"shape", {16, 4}}, {"datatype", "INT32"},
                                  {"data", std::vector<int>(64, 5)}}}}}.dump();
  HttpReply full = http_round_trip(port_, infer_request("echo", all_slots));
  EXPECT_EQ(full.status, 200) << full.body;
  HttpReply r;
  // Over the limit (1 MiB here): 413 at once, from Content-Length alone.
  r = http_round_trip(port_,
                      "POST /v2/models/echo/infer HTTP/1.1\r\nHost: x\r\n"
                      "Content-Length: 2000000\r\n\r\n");
  EXPECT_EQ(r.status, 413);
  EXPECT_NE(r.body.find("1048576"), std::string::npos) << r.body;
  // A header length beyond the body, and a zero one.
  for (const char* bad : {"99999", "0", "x"}) {
    r = http_round_trip(port_,
                        "POST /v2/models/echo/infer HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                        "Content-Length: 2\r\nInference-Header-Content-Length: " +
                            std::string(bad) + "\r\n\r\n{}");
    EXPECT_EQ(r.status, 400) << bad << r.body;
  }
  EXPECT_EQ(request(port_, "GET", "/v2/health/live").status, 200);
}

TEST_F(HttpServerTest, PipelinedInferRequestsOnOneConnectionAnswerInOrder) {
  start();
  std::string all;
  for (int i = 0; i < 6; ++i) {
    const nlohmann::json body = {
        {"id", std::to_string(i)},
        {"inputs", {{{"name", "x"}, {"shape", {1, 4}}, {"datatype", "INT32"}, {"data", {i, i, i, i}}}}}};
    all += infer_request("echo", body.dump(), "", false);
    if (i == 2) all += "GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n";
  }
  all += "GET /v2 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
  const std::vector<HttpReply> replies = split_http_replies(http_round_trip(port_, all));
  ASSERT_EQ(replies.size(), 8u);
  int next = 0;
  for (size_t k = 0; k < 7; ++k) {
    ASSERT_EQ(replies[k].status, 200) << k << replies[k].body;
    if (k == 3) {
      EXPECT_TRUE(replies[k].body.empty());  // the health check, in its place
      continue;
    }
    const auto j = nlohmann::json::parse(replies[k].body);
    EXPECT_EQ(j["id"], std::to_string(next));
    const int32_t bits = next++;
    EXPECT_EQ(j["outputs"][0]["data"][0].get<float>(), std::bit_cast<float>(bits));
  }
  EXPECT_NE(replies[7].body.find("sliceserve"), std::string::npos);
}

// Batches of 3 from 8 connections at once, each item's answer right: with the I/O thread polling
// so briefly that most answers come through the completion thread, and not polling at all (the
// other tests run with the default poll).
TEST_F(HttpServerTest, ConcurrentBatchesAreAnsweredWithBriefOrNoPolling) {
  for (const char* extra : {"io_poll_us = 1\n", "io_poll_us = 0\n"}) {
    start(extra);
    std::vector<std::thread> threads;
    std::atomic<int> good{0};
    for (int t = 0; t < 8; ++t) {
      threads.emplace_back([&, t] {
        for (int i = 0; i < 10; ++i) {
          const nlohmann::json body = {{"inputs",
                                        {{{"name", "x"},
                                          {"shape", {3, 4}},
                                          {"datatype", "INT32"},
                                          {"data", {t, i, 0, 0, t, i, 1, 1, t, i, 2, 2}}}}}};
          const HttpReply r = http_round_trip(port_, infer_request("echo", body.dump()));
          if (r.status != 200) continue;
          const auto j = nlohmann::json::parse(r.body);
          const auto& data = j["outputs"][0]["data"];
          if (data.size() == 12 && data[9].get<float>() == std::bit_cast<float>(int32_t(i)) &&
              data[10].get<float>() == std::bit_cast<float>(int32_t(2))) {
            ++good;
          }
        }
      });
    }
    for (auto& th : threads) th.join();
    EXPECT_EQ(good.load(), 80) << extra;
    ASSERT_EQ(daemon_->stop(), 0) << read_file(dir_.path() + "/d.log");
    daemon_.reset();
  }
}

// JSON headers of 16 KiB and more are parsed off the I/O thread; answers and errors are the same.
TEST_F(HttpServerTest, LargeJsonBodiesAreParsedOffTheIoThreadWithTheSameAnswers) {
  start("", R"(
[[model]]
name = "wide"
kind = "null"
slice = 10
max_batch = 2
inputs = [ { name = "x", dtype = "INT32", shape = [4096] } ]
outputs = [ { name = "y", dtype = "INT32", shape = [4096] } ]
)",
        {"wide"});
  auto body_of = [](int seed, int32_t last) {
    std::vector<int32_t> x(2 * 4096);
    for (size_t i = 0; i < x.size(); ++i) x[i] = seed * 100000 + int32_t(i);
    x.back() = last;
    const nlohmann::json body = {
        {"inputs", {{{"name", "x"}, {"shape", {2, 4096}}, {"datatype", "INT32"}, {"data", x}}}}};
    return std::pair{x, body.dump()};
  };
  std::vector<std::thread> threads;
  std::atomic<int> good{0};
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 5; ++i) {
        const auto [x, body] = body_of(t * 10 + i, 7);
        const HttpReply r = http_round_trip(port_, infer_request("wide", body));
        if (r.status == 200 &&
            nlohmann::json::parse(r.body)["outputs"][0]["data"].get<std::vector<int32_t>>() == x) {
          ++good;
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(good.load(), 20);
  // An error in the last number is found by the pool's parse and named as in place.
  const auto [x, bad] = body_of(1, 0);
  std::string out_of_range = bad;
  out_of_range.replace(out_of_range.rfind(",0]"), 3, ",3000000000]");
  ASSERT_GT(out_of_range.size(), size_t(16 * 1024));
  const HttpReply r = http_round_trip(port_, infer_request("wide", out_of_range));
  EXPECT_EQ(r.status, 400);
  EXPECT_NE(r.body.find("out of range for INT32"), std::string::npos) << r.body;
  EXPECT_EQ(request(port_, "GET", "/v2/health/live").status, 200);
}

TEST_F(HttpServerTest, InferNeedsTheToken) {
  start(std::string("token = \"") + kToken + "\"\n");
  const std::string body =
      nlohmann::json{{"inputs", {{{"name", "x"}, {"shape", {1, 4}}, {"datatype", "INT32"},
                                  {"data", {1, 2, 3, 4}}}}}}.dump();
  EXPECT_EQ(http_round_trip(port_, infer_request("echo", body)).status, 401);
  EXPECT_EQ(
      http_round_trip(port_, infer_request("echo", body, "", true,
                                           std::string("Authorization: Bearer ") + kToken + "\r\n"))
          .status,
      200);
}

TEST_F(HttpServerTest, InferOnALoadingModelIs503AndATimeoutIs503) {
  // "slow" takes a minute to load; "busy" runs long enough for a 1 ms timeout to expire.
  start("",
        "[[model]]\nname = \"slow\"\nkind = \"synthetic\"\nslice = 10\nload_delay_ms = 60000\n"
        "inputs = [ { name = \"x\", dtype = \"FP32\", shape = [1] } ]\n"
        "outputs = [ { name = \"y\", dtype = \"FP32\", shape = [1] } ]\n"
        "[[model]]\nname = \"busy\"\nkind = \"synthetic\"\nslice = 10\nflops_per_item = 2e8\n"
        "inputs = [ { name = \"x\", dtype = \"FP32\", shape = [1] } ]\n"
        "outputs = [ { name = \"y\", dtype = \"FP32\", shape = [1] } ]\n",
        {"busy"});
  nlohmann::json body = {
      {"inputs", {{{"name", "x"}, {"shape", {1, 1}}, {"datatype", "FP32"}, {"data", {1.0}}}}}};
  HttpReply r = http_round_trip(port_, infer_request("slow", body.dump()));
  EXPECT_EQ(r.status, 503) << r.body;
  EXPECT_NE(r.body.find("no serving worker"), std::string::npos) << r.body;
  body["parameters"] = {{"timeout", 1000}};  // microseconds, as Triton's
  r = http_round_trip(port_, infer_request("busy", body.dump()));
  EXPECT_EQ(r.status, 503) << r.body;
  EXPECT_NE(r.body.find("error"), std::string::npos) << r.body;
  body.erase("parameters");
  EXPECT_EQ(http_round_trip(port_, infer_request("busy", body.dump())).status, 200);
}

TEST_F(HttpServerTest, ClientHttpTransportMatchesTheShmPath) {
  start();
  ASSERT_EQ(wait_ready().status, 200);
  client::ConnectOptions o;
  auto http = client::Client::connect_http("echo", "127.0.0.1", port_, o);
  ASSERT_TRUE(http.is_ok()) << http.status().message();
  EXPECT_EQ(http->spec().n_inputs, 1u);
  EXPECT_EQ(http->spec().outputs[0].byte_size(), 16u);
  const std::vector<int32_t> x = float_bits({0.5F, 8.0F, -1.0F, 2.5F});
  const client::Tensor t{"x", shm::DataType::kInt32, {4}, std::as_bytes(std::span(x))};
  auto r = http->infer(std::span(&t, 1));
  ASSERT_TRUE(r.is_ok()) << r.status().message();
  EXPECT_EQ(r->outputs[0].data, shm_output("echo", t));
  EXPECT_EQ(r->outputs[0].shape, std::vector<int64_t>({2, 2}));
  // Many in flight at once through infer_async: every one answered, each with its own bytes.
  std::vector<std::future<Result<client::InferResult>>> futures;
  std::vector<std::vector<int32_t>> inputs;
  for (int i = 0; i < 40; ++i) inputs.push_back({i, i + 1, i + 2, i + 3});
  for (const auto& in : inputs) {
    futures.push_back(http->infer_async(
        std::vector<client::Tensor>{{"x", shm::DataType::kInt32, {4}, std::as_bytes(std::span(in))}}));
  }
  for (size_t i = 0; i < futures.size(); ++i) {
    auto a = futures[i].get();
    ASSERT_TRUE(a.is_ok()) << a.status().message();
    EXPECT_EQ(a->outputs[0].data.size(), 16u);
    EXPECT_EQ(std::memcmp(a->outputs[0].data.data(), inputs[i].data(), 16), 0) << i;
  }
  // Errors as values: a wrong dtype before the network, an unknown model from the server's 404.
  const client::Tensor bad{"x", shm::DataType::kFp32, {4}, std::as_bytes(std::span(x))};
  EXPECT_EQ(http->infer(std::span(&bad, 1)).status().code(), ErrorCode::kWrongDtype);
  EXPECT_EQ(client::Client::connect_http("nope", "127.0.0.1", port_, o).status().code(),
            ErrorCode::kUnknownModel);
}

TEST_F(HttpServerTest, MetricsParseAsPrometheusText) {
  start("[policy]\nenabled = false\n");  // the slice stays at its 20
  ASSERT_EQ(wait_ready().status, 200);
  client::ConnectOptions o;
  o.instance = instance_;
  auto c = client::Client::connect("echo", o);
  ASSERT_TRUE(c.is_ok()) << c.status().message();
  int32_t x[4] = {1, 2, 3, 4};
  client::Tensor t{"x", shm::DataType::kInt32, {4}, std::as_bytes(std::span(x))};
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(c->infer(std::span(&t, 1)).is_ok());
  // The worker counts a batch just after answering it: the third may take a moment to show.
  const std::string three = "nv_inference_request_success{model=\"echo\",version=\"1\"} 3\n";
  HttpReply r;
  for (int tries = 0; tries < 100; ++tries) {
    r = request(port_, "GET", "/metrics");
    if (r.body.find(three) != std::string::npos) break;
    std::this_thread::sleep_for(20ms);
  }
  ASSERT_EQ(r.status, 200);
  EXPECT_NE(r.head.find("text/plain"), std::string::npos);
  const std::regex sample(
      R"re(^([a-zA-Z_:][a-zA-Z0-9_:]*)\{([a-z_]+="[^"]*"(,[a-z_]+="[^"]*")*)\} ([0-9.eE+-]+|NaN)$)re");
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
  const int slow = connect_loopback(port_);
  ASSERT_GE(slow, 0);
  send(slow, "GET /v2 HT", 10, MSG_NOSIGNAL);

  HttpReply bad_line;
  HttpReply big;
  HttpReply good;
  std::thread t1([&] { bad_line = http_round_trip(port_, "GARBAGE\r\n\r\n"); });
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
  HttpReply body =
      http_round_trip(port_,
                      "POST /v2/models/echo/ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                      "Content-Length: 100000\r\n\r\n");
  EXPECT_EQ(body.status, 413);  // 4 KiB for bodies other than infer's
  close(slow);
  EXPECT_EQ(request(port_, "GET", "/v2/health/live").status, 200);
}

TEST_F(HttpServerTest, KeepAliveServesSeveralRequestsOnOneConnection) {
  start();
  HttpReply r = http_round_trip(port_,
                                "GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n"
                                "GET /v2 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
  EXPECT_EQ(r.status, 200);
  EXPECT_NE(r.body.find("\"sliceserve\""), std::string::npos) << r.body;
}

TEST_F(HttpServerTest, TokenIsAskedAsBearerHeader) {
  start(std::string("token = \"") + kToken + "\"\n");
  HttpReply no = request(port_, "GET", "/v2");
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
