// sliceserved's TCP front-end against a real daemon with a null model (it echoes its input):
// answers, pipelining, many connections, malformed/truncated/idle/oversized input each cut off
// with an error while a concurrent good client goes on, tokens, and slicectl bench over TCP.

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <map>
#include <thread>

#include "sliceserve/client/client.h"
#include "sliceserve/client/wire.h"
#include "support/cli_run.h"
#include "support/daemon_harness.h"
#include "support/free_port.h"

namespace sliceserve::testing {
namespace {

using namespace std::chrono_literals;
namespace wire = client::wire;

constexpr const char* kToken = "a-token-of-twenty-chars";

std::string config(const std::string& instance, const std::string& tcp,
                   const std::string& extra = "") {
  return "[server]\ninstance = \"" + instance + "\"\ntcp = \"" + tcp +
         "\"\ntcp_idle_timeout_ms = 600\npolicy_interval_ms = 100000\n" + extra + R"(
[[model]]
name = "echo"
kind = "null"
slice = 20
max_batch = 8
max_queue_delay_us = 100
inputs = [ { name = "x", dtype = "INT32", shape = [4] } ]
outputs = [ { name = "y", dtype = "INT32", shape = [4] } ]
)";
}

class TcpServerTest : public ::testing::Test {
 protected:
  void start(const std::string& extra = "") {
    unsetenv("SLICESERVE_TOKEN");
    port_ = free_port();
    instance_ = unique_instance("tcp");
    const std::string path =
        dir_.write("c.toml", config(instance_, "127.0.0.1:" + std::to_string(port_), extra));
    daemon_ = std::make_unique<DaemonProcess>(path, dir_.path() + "/d.log");
    ASSERT_NE(wait_serving(instance_, "echo", 20s), 0u) << read_file(dir_.path() + "/d.log");
  }
  void TearDown() override {
    if (daemon_) {
      EXPECT_EQ(daemon_->stop(), 0) << read_file(dir_.path() + "/d.log");
    }
  }
  Result<client::Client> connect(const std::string& token = "") {
    client::ConnectOptions o;
    o.token = token;
    o.default_timeout = 5000ms;
    return client::Client::connect_tcp("echo", "127.0.0.1", port_, o);
  }

  TempDir dir_;
  std::string instance_;
  uint16_t port_ = 0;
  std::unique_ptr<DaemonProcess> daemon_;
};

// A raw protocol peer, for what the client library never sends.
class RawPeer {
 public:
  explicit RawPeer(uint16_t port) {
    fd_ = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    connected_ = ::connect(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0;
  }
  ~RawPeer() { close(fd_); }
  bool connected() const { return connected_; }
  void send(std::span<const std::byte> bytes) const {
    ASSERT_EQ(::send(fd_, bytes.data(), bytes.size(), MSG_NOSIGNAL), ssize_t(bytes.size()));
  }
  void hello(const std::string& token = "") const {
    send(wire::frame(wire::FrameType::kHello, 0, wire::encode(wire::Hello{token, "raw"})));
  }
  // Reads exactly n bytes; false on EOF or after `timeout`.
  bool read(std::span<std::byte> out, std::chrono::milliseconds timeout) const {
    size_t got = 0;
    while (got < out.size()) {
      pollfd p{fd_, POLLIN, 0};
      if (poll(&p, 1, int(timeout.count())) <= 0) return false;
      const ssize_t n = recv(fd_, out.data() + got, out.size() - got, 0);
      if (n <= 0) return false;
      got += size_t(n);
    }
    return true;
  }
  struct Frame {
    wire::FrameHeader header;
    std::vector<std::byte> meta;
    std::vector<std::byte> data;
  };
  std::optional<Frame> frame(std::chrono::milliseconds timeout = 5000ms) const {
    std::array<std::byte, wire::kHeaderBytes> head;
    if (!read(head, timeout)) return std::nullopt;
    auto h = wire::decode_header(head, wire::Limits{});
    if (!h.is_ok()) return std::nullopt;
    Frame f{*h, std::vector<std::byte>(h->header_len), std::vector<std::byte>(h->data_len)};
    if (!read(f.meta, timeout) || !read(f.data, timeout)) return std::nullopt;
    return f;
  }
  // True once the server closed the connection (EOF) within `timeout`.
  bool closed_by_server(std::chrono::milliseconds timeout) const {
    std::byte b[64];
    for (;;) {
      pollfd p{fd_, POLLIN, 0};
      if (poll(&p, 1, int(timeout.count())) <= 0) return false;
      const ssize_t n = recv(fd_, b, sizeof b, 0);
      if (n <= 0) return true;
    }
  }
  // The next frame must be a fatal error with `code`; then the server closes.
  void expect_fatal(ErrorCode code, std::chrono::milliseconds timeout = 5000ms) const {
    auto f = frame(timeout);
    ASSERT_TRUE(f.has_value()) << "no error frame";
    ASSERT_EQ(f->header.type, wire::FrameType::kError);
    EXPECT_TRUE(f->header.flags & wire::kFlagFatal);
    auto e = wire::decode_error(f->meta);
    ASSERT_TRUE(e.is_ok());
    EXPECT_EQ(e->code, wire::wire_code(code)) << e->message;
    EXPECT_TRUE(closed_by_server(2000ms));
  }

 private:
  int fd_ = -1;
  bool connected_ = false;
};

std::vector<std::byte> infer_frame(uint64_t id, std::array<int32_t, 4> values) {
  wire::InferRequest r;
  r.model = "echo";
  r.inputs.push_back({"x", shm::DataType::kInt32, {4}, 16});
  std::vector<std::byte> f = wire::frame(wire::FrameType::kInfer, id, wire::encode(r), 16);
  const auto* p = reinterpret_cast<const std::byte*>(values.data());
  f.insert(f.end(), p, p + 16);
  return f;
}

// A good client that keeps sending while something else goes wrong; counts wrong answers.
class GoodClient {
 public:
  explicit GoodClient(client::Client c) : client_(std::move(c)) {
    thread_ = std::thread([this] {
      for (int32_t i = 0; !stop_; ++i) {
        std::array<int32_t, 4> x{i, -i, 7, 42};
        client::Tensor t{"x", shm::DataType::kInt32, {4}, std::as_bytes(std::span(x))};
        auto r = client_.infer(std::span(&t, 1));
        if (!r.is_ok() || !std::equal(x.begin(), x.end(), r->outputs.at(0).as<int32_t>().begin())) {
          ++failures_;
        } else {
          ++done_;
        }
      }
    });
  }
  ~GoodClient() { stop(); }
  void stop() {
    stop_ = true;
    if (thread_.joinable()) thread_.join();
  }
  int done() const { return done_; }
  int failures() const { return failures_; }

 private:
  client::Client client_;
  std::atomic<bool> stop_{false};
  std::atomic<int> done_{0}, failures_{0};
  std::thread thread_;
};

TEST_F(TcpServerTest, AnswersAreTheModelsOverTcp) {
  start();
  auto c = connect();
  ASSERT_TRUE(c.is_ok()) << c.status().to_string();
  EXPECT_EQ(c->spec().n_inputs, 1u);
  EXPECT_EQ(c->spec().inputs[0].name_view(), "x");
  EXPECT_EQ(c->spec().outputs[0].name_view(), "y");
  for (int32_t i = 0; i < 50; ++i) {
    std::array<int32_t, 4> x{i, 2 * i, -i, 9};
    client::Tensor t{"x", shm::DataType::kInt32, {1, 4}, std::as_bytes(std::span(x))};
    auto r = c->infer(std::span(&t, 1));
    ASSERT_TRUE(r.is_ok()) << r.status().to_string();
    ASSERT_EQ(r->outputs.size(), 1u);
    EXPECT_EQ(r->outputs[0].name, "y");
    auto y = r->outputs[0].as<int32_t>();
    ASSERT_EQ(y.size(), 4u);
    EXPECT_TRUE(std::equal(x.begin(), x.end(), y.begin()));
  }
  // The server's validation, as over shm: a wrong dtype, shape, name; the connection goes on.
  std::array<float, 4> f{};
  client::Tensor wrong{"x", shm::DataType::kFp32, {4}, std::as_bytes(std::span(f))};
  EXPECT_EQ(c->infer(std::span(&wrong, 1)).status().code(), ErrorCode::kWrongDtype);
  std::array<int32_t, 5> five{};
  std::array<int32_t, 4> x0{};
  client::Tensor shape{"x", shm::DataType::kInt32, {2, 2}, std::as_bytes(std::span(x0))};
  EXPECT_EQ(c->infer(std::span(&shape, 1)).status().code(), ErrorCode::kWrongShape);
  // More bytes than any model takes: refused by the client, from the server's announced limit.
  client::Tensor bytes{"x", shm::DataType::kInt32, {4}, std::as_bytes(std::span(five))};
  EXPECT_EQ(c->infer(std::span(&bytes, 1)).status().code(), ErrorCode::kTensorTooLarge);
  // Fewer than the shape needs: refused by the server.
  client::Tensor few{"x", shm::DataType::kInt32, {4}, std::as_bytes(std::span(five).first(3))};
  EXPECT_EQ(c->infer(std::span(&few, 1)).status().code(), ErrorCode::kTensorTooLarge);
  client::Tensor name{"z", shm::DataType::kInt32, {4}, std::as_bytes(std::span(five).first(4))};
  EXPECT_EQ(c->infer(std::span(&name, 1)).status().code(), ErrorCode::kUnknownTensor);
  std::array<int32_t, 4> x{1, 2, 3, 4};
  client::Tensor ok{"x", shm::DataType::kInt32, {4}, std::as_bytes(std::span(x))};
  EXPECT_TRUE(c->infer(std::span(&ok, 1)).is_ok());
  auto unknown = client::Client::connect_tcp("nope", "127.0.0.1", port_);
  EXPECT_EQ(unknown.status().code(), ErrorCode::kUnknownModel);
  EXPECT_NE(unknown.status().message().find("echo"), std::string::npos);
}

TEST_F(TcpServerTest, PipelinedRequestsAnswerWithTheirIds) {
  start();
  RawPeer peer(port_);
  ASSERT_TRUE(peer.connected());
  peer.hello();
  auto ok = peer.frame();
  ASSERT_TRUE(ok && ok->header.type == wire::FrameType::kHelloOk);
  // Ids in no order, all sent before any reply is read.
  std::vector<uint64_t> ids;
  for (uint64_t i = 0; i < 40; ++i) ids.push_back((i * 7919) % 1000 + 1);
  std::vector<std::byte> burst;
  for (uint64_t id : ids) {
    auto f = infer_frame(id, {int32_t(id), int32_t(id) + 1, 0, -int32_t(id)});
    burst.insert(burst.end(), f.begin(), f.end());
  }
  peer.send(burst);
  std::map<uint64_t, int> seen;
  for (size_t n = 0; n < ids.size(); ++n) {
    auto f = peer.frame();
    ASSERT_TRUE(f.has_value()) << "reply " << n;
    ASSERT_EQ(f->header.type, wire::FrameType::kInferOk);
    const uint64_t id = f->header.request_id;
    ++seen[id];
    ASSERT_EQ(f->data.size(), 16u);
    int32_t y[4];
    std::memcpy(y, f->data.data(), 16);
    EXPECT_EQ(y[0], int32_t(id));
    EXPECT_EQ(y[1], int32_t(id) + 1);
    EXPECT_EQ(y[3], -int32_t(id));
  }
  for (uint64_t id : ids) EXPECT_EQ(seen[id], 1) << id;

  // The library pipelines too: many requests in flight on one connection.
  auto c = connect();
  ASSERT_TRUE(c.is_ok());
  std::vector<std::array<int32_t, 4>> xs(64);
  std::vector<std::future<Result<client::InferResult>>> futures;
  for (size_t i = 0; i < xs.size(); ++i) {
    xs[i] = {int32_t(i), 1, 2, 3};
    futures.push_back(c->infer_async(
        {client::Tensor{"x", shm::DataType::kInt32, {4}, std::as_bytes(std::span(xs[i]))}}));
  }
  for (size_t i = 0; i < xs.size(); ++i) {
    auto r = futures[i].get();
    ASSERT_TRUE(r.is_ok()) << r.status().to_string();
    EXPECT_EQ(r->outputs[0].as<int32_t>()[0], int32_t(i));
  }
}

// 24 connections, 20 requests each, all answered right: with the I/O threads polling for answers
// (the default), polling so briefly that most answers come through the completion threads, not
// polling at all, and with two I/O threads sharing the connections.
class TcpServerLoopTest : public TcpServerTest,
                          public ::testing::WithParamInterface<const char*> {};

INSTANTIATE_TEST_SUITE_P(IoLoops, TcpServerLoopTest,
                         ::testing::Values("", "io_poll_us = 1\n", "io_poll_us = 0\n",
                                           "tcp_io_threads = 2\n"));

TEST_P(TcpServerLoopTest, ManyConnectionsAtOnce) {
  start(GetParam());
  std::vector<std::thread> threads;
  std::atomic<int> good{0};
  for (int t = 0; t < 24; ++t) {
    threads.emplace_back([&, t] {
      auto c = connect();
      if (!c.is_ok()) return;
      for (int32_t i = 0; i < 20; ++i) {
        std::array<int32_t, 4> x{t, i, t * i, 5};
        client::Tensor in{"x", shm::DataType::kInt32, {4}, std::as_bytes(std::span(x))};
        auto r = c->infer(std::span(&in, 1));
        if (r.is_ok() && r->outputs[0].as<int32_t>()[2] == t * i) ++good;
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(good.load(), 24 * 20);
}

TEST_F(TcpServerTest, MalformedAndTruncatedFramesAreCutOffWhileOthersGoOn) {
  start();
  auto c = connect();
  ASSERT_TRUE(c.is_ok());
  GoodClient good(std::move(c).value());
  {
    // Not a SliceServe frame at all.
    RawPeer peer(port_);
    peer.hello();
    ASSERT_TRUE(peer.frame().has_value());
    std::vector<std::byte> junk(wire::kHeaderBytes, std::byte(0x41));
    peer.send(junk);
    peer.expect_fatal(ErrorCode::kIncompatible);
  }
  {
    // A frame before the hello.
    RawPeer peer(port_);
    peer.send(infer_frame(1, {1, 2, 3, 4}));
    peer.expect_fatal(ErrorCode::kInvalidArgument);
  }
  {
    // Tensors that do not add up to the frame's data length.
    RawPeer peer(port_);
    peer.hello();
    ASSERT_TRUE(peer.frame().has_value());
    std::vector<std::byte> f = infer_frame(5, {1, 2, 3, 4});
    f[20] = std::byte(12);  // data_len 12, the tensor says 16
    f.resize(f.size() - 4);
    peer.send(f);
    peer.expect_fatal(ErrorCode::kInvalidArgument);
  }
  {
    // A truncated frame: half its metadata, then silence. Cut at the idle limit with an error.
    RawPeer peer(port_);
    peer.hello();
    ASSERT_TRUE(peer.frame().has_value());
    std::vector<std::byte> f = infer_frame(6, {1, 2, 3, 4});
    f.resize(wire::kHeaderBytes + 5);
    peer.send(f);
    peer.expect_fatal(ErrorCode::kTimeout, 3000ms);
  }
  {
    // Truncated and closed: the server just drops it.
    RawPeer peer(port_);
    peer.hello();
    std::vector<std::byte> f = infer_frame(7, {1, 2, 3, 4});
    f.resize(10);
    peer.send(f);
  }
  std::this_thread::sleep_for(200ms);
  good.stop();
  EXPECT_EQ(good.failures(), 0);
  EXPECT_GT(good.done(), 10);
}

TEST_F(TcpServerTest, IdleClientIsCutAfterTheIdleLimit) {
  start();
  RawPeer peer(port_);
  peer.hello();
  ASSERT_TRUE(peer.frame().has_value());
  const auto begin = std::chrono::steady_clock::now();
  peer.expect_fatal(ErrorCode::kTimeout, 3000ms);
  const auto waited = std::chrono::steady_clock::now() - begin;
  EXPECT_GE(waited, 500ms);  // the limit is 600 ms
  EXPECT_LT(waited, 2500ms);
  // A client that never says hello is cut the same way.
  RawPeer silent(port_);
  silent.expect_fatal(ErrorCode::kTimeout, 3000ms);
}

TEST_F(TcpServerTest, OversizedTensorsAreRefused) {
  start();
  auto c = connect();
  ASSERT_TRUE(c.is_ok());
  GoodClient good(std::move(c).value());
  RawPeer peer(port_);
  peer.hello();
  auto ok = peer.frame();
  ASSERT_TRUE(ok.has_value());
  auto limits = wire::decode_hello_ok(ok->meta);
  ASSERT_TRUE(limits.is_ok());
  EXPECT_EQ(limits->limits.max_data_bytes, 16u);  // the largest request a model takes
  // A frame announcing 1 GiB of tensor data is refused before any of it is read.
  wire::InferRequest r;
  r.model = "echo";
  r.inputs.push_back({"x", shm::DataType::kInt32, {4}, 1u << 30});
  peer.send(wire::frame(wire::FrameType::kInfer, 9, wire::encode(r), 1u << 30));
  peer.expect_fatal(ErrorCode::kTensorTooLarge);
  // So is oversized metadata.
  RawPeer meta(port_);
  meta.hello();
  ASSERT_TRUE(meta.frame().has_value());
  wire::FrameHeader h;
  h.type = wire::FrameType::kInfer;
  h.header_len = 1u << 20;
  meta.send(wire::encode_header(h));
  meta.expect_fatal(ErrorCode::kTensorTooLarge);
  good.stop();
  EXPECT_EQ(good.failures(), 0);
}

TEST_F(TcpServerTest, AClientThatReadsNoRepliesDoesNotStallOthers) {
  start();
  auto c = connect();
  ASSERT_TRUE(c.is_ok());
  GoodClient good(std::move(c).value());
  RawPeer lazy(port_);
  lazy.hello();
  ASSERT_TRUE(lazy.frame().has_value());
  std::vector<std::byte> burst;
  for (uint64_t id = 1; id <= 300; ++id) {
    auto f = infer_frame(id, {int32_t(id), 0, 0, 0});
    burst.insert(burst.end(), f.begin(), f.end());
  }
  lazy.send(burst);
  std::this_thread::sleep_for(300ms);  // its replies pile up unread (the limit is 600 ms)
  const int before = good.done();
  std::this_thread::sleep_for(200ms);
  EXPECT_GT(good.done(), before);
  for (int n = 0; n < 300; ++n) {
    auto f = lazy.frame();
    ASSERT_TRUE(f.has_value()) << "reply " << n;
    EXPECT_EQ(f->header.type, wire::FrameType::kInferOk);
  }
  good.stop();
  EXPECT_EQ(good.failures(), 0);
}

TEST_F(TcpServerTest, WrongTokenIsRefused) {
  start("token = \"" + std::string(kToken) + "\"\n");
  auto none = connect();
  EXPECT_EQ(none.status().code(), ErrorCode::kInvalidArgument);
  EXPECT_NE(none.status().message().find("unauthenticated"), std::string::npos)
      << none.status().message();
  auto wrong = connect("a-token-of-twenty-chaRs");
  EXPECT_NE(wrong.status().message().find("unauthenticated"), std::string::npos);
  auto right = connect(kToken);
  ASSERT_TRUE(right.is_ok()) << right.status().to_string();
  std::array<int32_t, 4> x{1, 2, 3, 4};
  client::Tensor t{"x", shm::DataType::kInt32, {4}, std::as_bytes(std::span(x))};
  EXPECT_TRUE(right->infer(std::span(&t, 1)).is_ok());
}

TEST_F(TcpServerTest, NonLoopbackBindWithoutTokenRefusesToStart) {
  unsetenv("SLICESERVE_TOKEN");
  const std::string instance = unique_instance("tcpnl");
  const std::string path =
      dir_.write("c.toml", config(instance, "0.0.0.0:" + std::to_string(free_port())));
  DaemonProcess d(path, dir_.path() + "/nl.log");
  EXPECT_NE(d.wait(15s), 0);
  const std::string log = read_file(dir_.path() + "/nl.log");
  EXPECT_NE(log.find("without a token"), std::string::npos) << log;
  EXPECT_FALSE(any_segment_of(instance));
}

TEST_F(TcpServerTest, SlicectlBenchRunsOverTcp) {
  start();
  CliRun run = slicectl(
      "bench echo --concurrency 4 --duration 1 --json --transport tcp --address "
      "127.0.0.1:" +
      std::to_string(port_));
  ASSERT_EQ(run.rc, 0) << run.err;
  EXPECT_NE(run.out.find("\"errors\":0"), std::string::npos) << run.out;
}

}  // namespace
}  // namespace sliceserve::testing
