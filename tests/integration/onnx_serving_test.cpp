// A real ONNX model served end to end: sliceserved reads the model's tensors from the file, its
// worker runs it through the engine, clients get the model's answers, and a shadow resize under
// traffic maps the live worker's weights instead of loading a second copy.

#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <future>
#include <random>

#include "sliceserve/client/client.h"
#include "sliceserve/controller/admin_socket.h"
#include "sliceserve/shm/segment.h"
#include "support/daemon_harness.h"
#include "support/onnx_model_builder.h"

namespace sliceserve {
namespace {

using namespace std::chrono_literals;
using controller::admin_call;
using testing::DaemonProcess;
using testing::read_file;
using testing::TempDir;
using testing::unique_instance;
using testing::wait_serving;

constexpr int64_t kIn = 512;
constexpr int64_t kOut = 1024;  // weights: 512 x 1024 floats, 2 MiB

// y = relu(W x + b) for x [N, 512]: a fully connected layer as exporters write it.
std::vector<float> weights() {
  std::mt19937 rng(11);
  std::uniform_real_distribution<float> dist(-0.05F, 0.05F);
  std::vector<float> w(static_cast<size_t>(kIn * kOut));
  for (float& v : w) v = dist(rng);
  return w;
}

std::string dense_model() {
  testing::ModelBuilder b;
  b.input("features", {-1, kIn});
  b.output("scores", {-1, kOut});
  testing::float_tensor(b, "w", {kOut, kIn}, weights());
  std::vector<float> bias(static_cast<size_t>(kOut));
  for (int64_t i = 0; i < kOut; ++i) bias[static_cast<size_t>(i)] = 0.001F * float(i % 7);
  testing::float_tensor(b, "b", {kOut}, bias);
  auto* gemm = b.node("Gemm", {"features", "w", "b"}, {"fc"}, "fc");
  testing::set_int(gemm, "transB", 1);
  b.node("Relu", {"fc"}, {"scores"}, "relu");
  return b.bytes();
}

std::vector<float> expected(const std::vector<float>& x) {
  static const std::vector<float> w = weights();
  std::vector<float> y(static_cast<size_t>(kOut));
  for (int64_t o = 0; o < kOut; ++o) {
    double sum = 0.001 * double(o % 7);
    for (int64_t i = 0; i < kIn; ++i) {
      sum += double(w[static_cast<size_t>(o * kIn + i)]) * x[static_cast<size_t>(i)];
    }
    y[static_cast<size_t>(o)] = static_cast<float>(std::max(0.0, sum));
  }
  return y;
}

class OnnxServingTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const std::string model = dense_model();
    std::ofstream(dir_.path() + "/dense.onnx", std::ios::binary) << model;
    config_ = dir_.write("serve.toml", "[server]\ninstance = \"" + instance_ +
                                           "\"\npolicy_interval_ms = 100\n[policy]\n"
                                           "enabled = false\n" +
                                           R"(
[[model]]
name = "dense"
kind = "onnx"
path = "dense.onnx"
slice = 40
max_batch = 4
)");
    daemon_ = std::make_unique<DaemonProcess>(config_, dir_.path() + "/log");
    ASSERT_GT(wait_serving(instance_, "dense", 30s), 0u) << log();
  }

  std::string log() const { return read_file(dir_.path() + "/log"); }

  // Sends `count` requests, `in_flight` at a time; returns how many answers were right.
  int send_checked(client::Client& c, int count, int in_flight, unsigned seed) {
    std::mt19937 rng(seed);
    std::normal_distribution<float> dist;
    int right = 0;
    for (int done = 0; done < count; done += in_flight) {
      std::vector<std::vector<float>> inputs;
      std::vector<std::future<Result<client::InferResult>>> answers;
      for (int k = 0; k < in_flight; ++k) {
        std::vector<float> x(static_cast<size_t>(kIn));
        for (float& v : x) v = dist(rng);
        inputs.push_back(std::move(x));
        client::Tensor t{
            "features", shm::DataType::kFp32, {kIn}, std::as_bytes(std::span(inputs.back()))};
        answers.push_back(c.infer_async({t}, 10s));
      }
      for (int k = 0; k < in_flight; ++k) {
        auto result = answers[static_cast<size_t>(k)].get();
        if (!result.is_ok()) {
          ADD_FAILURE() << result.status().to_string();
          continue;
        }
        const auto y = result->outputs[0].as<float>();
        const std::vector<float> want = expected(inputs[static_cast<size_t>(k)]);
        bool same = y.size() == want.size();
        for (size_t i = 0; same && i < want.size(); ++i) {
          same = std::abs(y[i] - want[i]) <= 1e-4F * (1 + std::abs(want[i]));
        }
        right += same ? 1 : 0;
      }
    }
    return right;
  }

  TempDir dir_;
  std::string instance_ = unique_instance("onnx");
  std::string config_;
  std::unique_ptr<DaemonProcess> daemon_;
};

TEST_F(OnnxServingTest, ClientsGetTheModelsAnswers) {
  auto c = client::Client::connect("dense", {.instance = instance_});
  ASSERT_TRUE(c.is_ok()) << c.status().to_string();
  // The spec came from the file: per item, without the batch dimension.
  ASSERT_EQ(c->spec().n_inputs, 1u);
  EXPECT_EQ(c->spec().inputs[0].name_view(), "features");
  EXPECT_EQ(
      std::vector<int64_t>(c->spec().inputs[0].shape().begin(), c->spec().inputs[0].shape().end()),
      std::vector<int64_t>{kIn});
  EXPECT_EQ(send_checked(*c, 64, 8, 1), 64);
  EXPECT_EQ(daemon_->stop(), 0) << log();
}

TEST_F(OnnxServingTest, AShadowResizeUnderTrafficMapsTheLiveWorkersWeights) {
  auto c = client::Client::connect("dense", {.instance = instance_});
  ASSERT_TRUE(c.is_ok()) << c.status().to_string();
  auto traffic = std::async(std::launch::async, [&] { return send_checked(*c, 200, 4, 2); });
  std::this_thread::sleep_for(100ms);
  auto reply = admin_call(instance_, {{"cmd", "resize"}, {"model", "dense"}, {"slice", 60}});
  ASSERT_TRUE(reply.is_ok() && (*reply)["ok"].get<bool>()) << (reply.is_ok() ? reply->dump() : "");
  ASSERT_GT(wait_serving(instance_, "dense", 30s, 1), 1u) << log();
  EXPECT_EQ(traffic.get(), 200) << "an answer was lost or wrong across the swap";

  auto segment = shm::Segment::attach(shm::segment_name(instance_, "dense").value());
  ASSERT_TRUE(segment.is_ok());
  const uint64_t epoch = segment->header().owner_epoch.load();
  ASSERT_GE(epoch, 2u);
  const shm::WorkerStats& stats = segment->stats_block(epoch);
  EXPECT_GE(stats.weight_bytes.load(), uint64_t(kIn * kOut * 4));
  EXPECT_EQ(stats.weight_private_bytes.load(), 0u) << "the shadow copied the weights";
  EXPECT_EQ(send_checked(*c, 16, 4, 3), 16);
  EXPECT_EQ(daemon_->stop(), 0) << log();
}

}  // namespace
}  // namespace sliceserve
