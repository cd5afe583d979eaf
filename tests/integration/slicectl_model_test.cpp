// slicectl run-model (an ONNX file through the engine, no daemon) and slicectl infer (.npy files
// through a running sliceserved), as subprocesses on files in a temporary folder.

#include <gtest/gtest.h>
#include <onnx/onnx_pb.h>

#include <cmath>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "sliceserve/client/npy.h"
#include "support/cli_run.h"
#include "support/daemon_harness.h"
#include "support/free_port.h"
#include "support/onnx_model_builder.h"

namespace sliceserve {
namespace {

using namespace std::chrono_literals;
using client::NpyArray;
using client::read_npy;
using client::write_npy;
using shm::DataType;
using testing::CliRun;
using testing::slicectl;
using testing::TempDir;

NpyArray floats(std::vector<int64_t> shape, const std::vector<float>& values) {
  NpyArray a;
  a.dtype = DataType::kFp32;
  a.shape = std::move(shape);
  const auto bytes = std::as_bytes(std::span(values));
  a.data.assign(bytes.begin(), bytes.end());
  EXPECT_EQ(size_t(a.element_count()), values.size());
  return a;
}

std::vector<float> values_of(const NpyArray& a) {
  std::vector<float> v(a.data.size() / sizeof(float));
  std::memcpy(v.data(), a.data.data(), v.size() * sizeof(float));
  return v;
}

std::vector<float> random_floats(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(-1.0F, 1.0F);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

// ---- run-model ----

// x [N,2,5,5] -> Conv 3x3 (3 channels, bias) -> Relu -> Flatten -> Gemm (transB) -> y [N,4].
constexpr int64_t kCin = 2, kCout = 3, kSide = 5, kKernel = 3, kOutSide = 3, kClasses = 4;
constexpr int64_t kFlat = kCout * kOutSide * kOutSide;

struct SmallCnn {
  std::vector<float> conv_w = random_floats(kCout * kCin * kKernel * kKernel, 1);
  std::vector<float> conv_b = random_floats(kCout, 2);
  std::vector<float> fc_w = random_floats(kClasses * kFlat, 3);
  std::vector<float> fc_b = random_floats(kClasses, 4);

  std::string onnx() const {
    testing::ModelBuilder b;
    b.input("x", {-1, kCin, kSide, kSide});
    auto add = [&](const std::string& name, const std::vector<int64_t>& dims,
                   const std::vector<float>& v) {
      auto* t = b.init(name, onnx::TensorProto::FLOAT, dims);
      for (float f : v) t->add_float_data(f);
    };
    add("conv_w", {kCout, kCin, kKernel, kKernel}, conv_w);
    add("conv_b", {kCout}, conv_b);
    add("fc_w", {kClasses, kFlat}, fc_w);
    add("fc_b", {kClasses}, fc_b);
    testing::set_ints(b.node("Conv", {"x", "conv_w", "conv_b"}, {"c"}, "conv"), "kernel_shape",
                      {kKernel, kKernel});
    b.node("Relu", {"c"}, {"r"}, "relu");
    b.node("Flatten", {"r"}, {"f"}, "flatten");
    testing::set_int(b.node("Gemm", {"f", "fc_w", "fc_b"}, {"y"}, "fc"), "transB", 1);
    b.output("y", {-1, kClasses});
    return b.bytes();
  }

  // The model's output for n items of x, in double precision.
  std::vector<float> reference(const std::vector<float>& x, int64_t n) const {
    std::vector<float> y;
    for (int64_t item = 0; item < n; ++item) {
      std::vector<double> flat(kFlat);
      for (int64_t co = 0; co < kCout; ++co) {
        for (int64_t oy = 0; oy < kOutSide; ++oy) {
          for (int64_t ox = 0; ox < kOutSide; ++ox) {
            double acc = conv_b[co];
            for (int64_t ci = 0; ci < kCin; ++ci) {
              for (int64_t ky = 0; ky < kKernel; ++ky) {
                for (int64_t kx = 0; kx < kKernel; ++kx) {
                  acc += double(x[((item * kCin + ci) * kSide + oy + ky) * kSide + ox + kx]) *
                         conv_w[((co * kCin + ci) * kKernel + ky) * kKernel + kx];
                }
              }
            }
            flat[(co * kOutSide + oy) * kOutSide + ox] = std::max(acc, 0.0);
          }
        }
      }
      for (int64_t k = 0; k < kClasses; ++k) {
        double acc = fc_b[k];
        for (int64_t j = 0; j < kFlat; ++j) acc += flat[j] * fc_w[k * kFlat + j];
        y.push_back(float(acc));
      }
    }
    return y;
  }
};

class RunModelTest : public ::testing::Test {
 protected:
  void SetUp() override {
    model_ = dir_.path() + "/cnn.onnx";
    std::ofstream(model_, std::ios::binary) << cnn_.onnx();
  }
  std::string path(const std::string& name) const { return dir_.path() + "/" + name; }
  std::string input(const std::string& name, int64_t n, uint32_t seed = 7) {
    x_ = random_floats(size_t(n * kCin * kSide * kSide), seed);
    EXPECT_TRUE(write_npy(path(name), floats({n, kCin, kSide, kSide}, x_)).is_ok());
    return path(name);
  }
  void expect_output(const std::string& file, int64_t n) {
    auto y = read_npy(file);
    ASSERT_TRUE(y.is_ok()) << y.status().to_string();
    EXPECT_EQ(y->dtype, DataType::kFp32);
    EXPECT_EQ(y->shape, (std::vector<int64_t>{n, kClasses}));
    const std::vector<float> got = values_of(*y);
    const std::vector<float> want = cnn_.reference(x_, n);
    ASSERT_EQ(got.size(), want.size());
    for (size_t i = 0; i < got.size(); ++i) EXPECT_NEAR(got[i], want[i], 1e-4) << i;
  }

  TempDir dir_;
  SmallCnn cnn_;
  std::string model_;
  std::vector<float> x_;
};

TEST_F(RunModelTest, RunsABatchAndWritesTheOutput) {
  const std::string in = input("x.npy", 3);
  CliRun r = slicectl("run-model " + model_ + " --input " + in + " --output " + path("y.npy") +
                      " --threads 1");
  ASSERT_EQ(r.rc, 0) << r.err;
  expect_output(path("y.npy"), 3);
  EXPECT_NE(r.err.find("run-model " + model_ + ": x FP32 [3,2,5,5] -> y FP32 [3,4]; load "),
            std::string::npos)
      << r.err;
  EXPECT_NE(r.err.find(" ms, run "), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("1 thread\n"), std::string::npos) << r.err;
}

TEST_F(RunModelTest, RepeatedRunsReportTheFirstAndTheFastest) {
  const std::string in = input("x.npy", 2);
  CliRun r = slicectl("run-model " + model_ + " --input " + in + " --output " + path("y.npy") +
                      " --threads 1 --runs 3");
  ASSERT_EQ(r.rc, 0) << r.err;
  expect_output(path("y.npy"), 2);
  EXPECT_NE(r.err.find(" ms, first run "), std::string::npos) << r.err;
  EXPECT_NE(r.err.find(", fastest of 3 "), std::string::npos) << r.err;
  EXPECT_NE(r.err.find(" ms, cpu, 1 thread\n"), std::string::npos) << r.err;
}

TEST_F(RunModelTest, ACudaDeviceRunsThereOrSaysWhyNot) {
  const std::string in = input("x.npy", 2);
  CliRun r = slicectl("run-model " + model_ + " --input " + in + " --output " + path("y.npy") +
                      " --device cuda:0");
  if (r.rc == 0) {
    // A machine with a GPU (and cuDNN/cuBLAS) and a build with the cuda wing.
    expect_output(path("y.npy"), 2);
    EXPECT_NE(r.err.find(", cuda:0, 1 thread\n"), std::string::npos) << r.err;
    return;
  }
  EXPECT_EQ(r.rc, 1) << r.err;
  EXPECT_NE(r.err.find("model '" + model_ + "' on cuda:0: "), std::string::npos) << r.err;
  const bool said_why = r.err.find("no CUDA device") != std::string::npos ||
                        r.err.find("not available in this build") != std::string::npos ||
                        r.err.find("built without the CUDA toolkit") != std::string::npos;
  EXPECT_TRUE(said_why) << r.err;

  CliRun bad = slicectl("run-model " + model_ + " --input " + in + " --output " +
                        path("y.npy") + " --device tpu:0");
  EXPECT_EQ(bad.rc, 1) << bad.err;
  EXPECT_NE(bad.err.find("unknown device 'tpu:0'"), std::string::npos) << bad.err;
}

TEST_F(RunModelTest, OneItemByNameOnEveryCpu) {
  const std::string in = input("one.npy", 1, 11);
  CliRun r = slicectl("run-model " + model_ + " --input-name x=" + in +
                      " --output-name y=" + path("out.npy"));
  ASSERT_EQ(r.rc, 0) << r.err;
  expect_output(path("out.npy"), 1);
}

TEST_F(RunModelTest, BadInputsExitWithTwoAndNameTheProblem) {
  const std::string out = path("y.npy");
  auto run = [&](const std::string& args) {
    CliRun r = slicectl("run-model " + args);
    EXPECT_FALSE(std::filesystem::exists(out)) << "no output on failure";
    return r;
  };
  CliRun missing_model = run(path("nope.onnx") + " --input x.npy --output " + out);
  EXPECT_EQ(missing_model.rc, 2);
  EXPECT_NE(missing_model.err.find("cannot open model '" + path("nope.onnx") + "'"),
            std::string::npos)
      << missing_model.err;

  CliRun missing_input = run(model_ + " --input " + path("none.npy") + " --output " + out);
  EXPECT_EQ(missing_input.rc, 2);
  EXPECT_EQ(missing_input.err, "slicectl: " + path("none.npy") + ": no such file\n");

  ASSERT_TRUE(
      write_npy(path("small.npy"), floats({2, 2, 4, 4}, std::vector<float>(2 * 2 * 4 * 4, 1.0F)))
          .is_ok());
  CliRun wrong_shape = run(model_ + " --input " + path("small.npy") + " --output " + out);
  EXPECT_EQ(wrong_shape.rc, 2);
  EXPECT_EQ(wrong_shape.err, "slicectl: input 'x': expected FP32 [?,2,5,5], got FP32 [2,2,4,4]\n");

  NpyArray doubles;
  doubles.dtype = DataType::kFp64;
  doubles.shape = {1, 2, 5, 5};
  doubles.data.resize(50 * 8);
  ASSERT_TRUE(write_npy(path("f8.npy"), doubles).is_ok());
  CliRun wrong_dtype = run(model_ + " --input " + path("f8.npy") + " --output " + out);
  EXPECT_EQ(wrong_dtype.rc, 2);
  EXPECT_EQ(wrong_dtype.err, "slicectl: input 'x': expected FP32 [?,2,5,5], got FP64 [1,2,5,5]\n");

  const std::string truncated("\x93NUMPY\x01\x00\x10\x00{'descr': '<f4'", 25);
  std::ofstream(path("bad.npy"), std::ios::binary) << truncated;
  CliRun malformed = run(model_ + " --input " + path("bad.npy") + " --output " + out);
  EXPECT_EQ(malformed.rc, 2);
  EXPECT_EQ(malformed.err, "slicectl: " + path("bad.npy") +
                               ": truncated: header length 16 goes past the end of the file (25 "
                               "bytes)\n");

  const std::string in = input("x.npy", 2);
  CliRun no_output = run(model_ + " --input " + in);
  EXPECT_EQ(no_output.rc, 2);
  EXPECT_EQ(no_output.err, "slicectl: give --output FILE (or --output-name NAME=FILE)\n");
  CliRun no_input = run(model_ + " --output " + out);
  EXPECT_EQ(no_input.rc, 2);
  EXPECT_NE(no_input.err.find("input 'x' has no file"), std::string::npos) << no_input.err;
  CliRun unknown = run(model_ + " --input-name z=" + in + " --output " + out);
  EXPECT_EQ(unknown.rc, 2);
  EXPECT_EQ(unknown.err, "slicectl: the model has no input 'z' (its inputs: 'x')\n");
  CliRun twice = run(model_ + " --input " + in + " --input " + in + " --output " + out);
  EXPECT_EQ(twice.rc, 2);
  EXPECT_EQ(twice.err, "slicectl: 2 input files for a model with 1 input ('x')\n");
}

TEST_F(RunModelTest, AnInvalidModelExitsWithOne) {
  std::ofstream(path("junk.onnx")) << "this is not a protobuf";
  const std::string in = input("x.npy", 1);
  CliRun r =
      slicectl("run-model " + path("junk.onnx") + " --input " + in + " --output " + path("y.npy"));
  EXPECT_EQ(r.rc, 1) << r.err;
  EXPECT_NE(r.err.find("model '" + path("junk.onnx") + "'"), std::string::npos) << r.err;
  EXPECT_FALSE(std::filesystem::exists(path("y.npy")));
}

// ---- infer, against one daemon for all cases ----

class InferTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new TempDir();
    instance_ = new std::string(testing::unique_instance("npyinfer"));
    tcp_port_ = testing::free_port();
    http_port_ = testing::free_port();
    const std::string config = dir_->write(
        "infer.toml", "[server]\ninstance = \"" + *instance_ +
                          "\"\ntcp = \"127.0.0.1:" + std::to_string(tcp_port_) +
                          "\"\nhttp = \"127.0.0.1:" + std::to_string(http_port_) + "\"\n" + R"(
[policy]
enabled = false

[[model]]
name = "syn"
kind = "synthetic"
slice = 20
max_batch = 4
flops_per_item = 1e4
inputs = [ { name = "x", dtype = "FP32", shape = [4] } ]
outputs = [ { name = "y", dtype = "FP32", shape = [4] } ]

[[model]]
name = "pair"
kind = "null"
slice = 10
inputs = [ { name = "a", dtype = "INT32", shape = [2, 3] },
           { name = "b", dtype = "INT32", shape = [2] } ]
outputs = [ { name = "c", dtype = "INT32", shape = [2, 3] } ]
)");
    daemon_ = new testing::DaemonProcess(config, dir_->path() + "/log");
    serving_ = testing::wait_serving(*instance_, "syn", 20s) != 0 &&
               testing::wait_serving(*instance_, "pair", 20s) != 0;
  }
  static void TearDownTestSuite() {
    daemon_->stop();
    delete daemon_;
    delete instance_;
    delete dir_;
  }
  void SetUp() override { ASSERT_TRUE(serving_) << testing::read_file(dir_->path() + "/log"); }

  static std::string path(const std::string& name) { return dir_->path() + "/" + name; }
  static CliRun infer(const std::string& args) {
    return slicectl("infer " + args + " --instance " + *instance_);
  }

  static inline TempDir* dir_ = nullptr;
  static inline std::string* instance_ = nullptr;
  static inline testing::DaemonProcess* daemon_ = nullptr;
  static inline bool serving_ = false;
  static inline uint16_t tcp_port_ = 0;
  static inline uint16_t http_port_ = 0;
};

TEST_F(InferTest, OneItemKeepsTheItemShape) {
  ASSERT_TRUE(write_npy(path("one.npy"), floats({4}, {0.5F, -1.0F, 2.0F, 0.0F})).is_ok());
  CliRun r = infer("syn --input " + path("one.npy") + " --output " + path("one_y.npy"));
  ASSERT_EQ(r.rc, 0) << r.err;
  auto y = read_npy(path("one_y.npy"));
  ASSERT_TRUE(y.is_ok()) << y.status().to_string();
  EXPECT_EQ(y->shape, (std::vector<int64_t>{4}));
  EXPECT_EQ(values_of(*y), (std::vector<float>{2.0F, -1.0F, 5.0F, 1.0F}));
  EXPECT_NE(r.err.find("infer syn: 1 request -> y FP32 [4]; "), std::string::npos) << r.err;
}

TEST_F(InferTest, StackedItemsAreSentTogetherAndStackedBack) {
  const std::vector<float> x = random_floats(3 * 4, 5);
  ASSERT_TRUE(write_npy(path("three.npy"), floats({3, 4}, x)).is_ok());
  CliRun r = infer("syn --input-name x=" + path("three.npy") + " --output " + path("three_y.npy"));
  ASSERT_EQ(r.rc, 0) << r.err;
  auto y = read_npy(path("three_y.npy"));
  ASSERT_TRUE(y.is_ok()) << y.status().to_string();
  EXPECT_EQ(y->shape, (std::vector<int64_t>{3, 4}));
  const std::vector<float> got = values_of(*y);
  ASSERT_EQ(got.size(), x.size());
  for (size_t i = 0; i < x.size(); ++i) EXPECT_EQ(got[i], float(2.0 * double(x[i]) + 1.0)) << i;
  EXPECT_NE(r.err.find("infer syn: 3 requests -> y FP32 [3,4]; "), std::string::npos) << r.err;

  // A leading 1 is one stacked item: the output keeps it.
  ASSERT_TRUE(write_npy(path("stack1.npy"), floats({1, 4}, {1, 2, 3, 4})).is_ok());
  r = infer("syn --input " + path("stack1.npy") + " --output " + path("stack1_y.npy"));
  ASSERT_EQ(r.rc, 0) << r.err;
  auto y1 = read_npy(path("stack1_y.npy"));
  ASSERT_TRUE(y1.is_ok());
  EXPECT_EQ(y1->shape, (std::vector<int64_t>{1, 4}));
  EXPECT_EQ(values_of(*y1), (std::vector<float>{3, 5, 7, 9}));
}

TEST_F(InferTest, TcpAndHttpTransportsGiveTheShmAnswer) {
  const std::vector<float> x = random_floats(3 * 4, 9);
  ASSERT_TRUE(write_npy(path("net.npy"), floats({3, 4}, x)).is_ok());
  CliRun shm = infer("syn --input " + path("net.npy") + " --output " + path("net_shm.npy"));
  ASSERT_EQ(shm.rc, 0) << shm.err;
  const auto expected = read_npy(path("net_shm.npy"));
  ASSERT_TRUE(expected.is_ok());
  for (const auto& [transport, port] :
       {std::pair{"tcp", tcp_port_}, std::pair{"http", http_port_}}) {
    const std::string out = path(std::string("net_") + transport + ".npy");
    CliRun r = infer("syn --input " + path("net.npy") + " --output " + out + " --transport " +
                     transport + " --address 127.0.0.1:" + std::to_string(port));
    ASSERT_EQ(r.rc, 0) << transport << ": " << r.err;
    auto y = read_npy(out);
    ASSERT_TRUE(y.is_ok()) << transport;
    EXPECT_EQ(y->shape, expected->shape) << transport;
    EXPECT_EQ(values_of(*y), values_of(*expected)) << transport;
    EXPECT_NE(r.err.find("infer syn: 3 requests -> y FP32 [3,4]; "), std::string::npos) << r.err;
  }
  // Nothing listening: the address is in the error.
  CliRun refused =
      infer("syn --input " + path("net.npy") + " --output " + path("w.npy") +
            " --transport http --address 127.0.0.1:" + std::to_string(testing::free_port()));
  EXPECT_EQ(refused.rc, 1);
  EXPECT_NE(refused.err.find("127.0.0.1"), std::string::npos) << refused.err;
  CliRun bad = infer("syn --input " + path("net.npy") + " --output " + path("w.npy") +
                     " --transport tcp --address nowhere");
  EXPECT_EQ(bad.rc, 1);
  EXPECT_NE(bad.err.find("--address must be host:port, not nowhere"), std::string::npos) << bad.err;
}

TEST_F(InferTest, TwoInputsOfANullModel) {
  NpyArray a;
  a.dtype = DataType::kInt32;
  a.shape = {2, 2, 3};
  for (int32_t v = 0; v < 12; ++v) {
    const auto* p = reinterpret_cast<const std::byte*>(&v);
    a.data.insert(a.data.end(), p, p + 4);
  }
  NpyArray b;
  b.dtype = DataType::kInt32;
  b.shape = {2, 2};
  b.data.resize(16);
  ASSERT_TRUE(write_npy(path("a.npy"), a).is_ok());
  ASSERT_TRUE(write_npy(path("b.npy"), b).is_ok());
  CliRun r = infer("pair --input-name b=" + path("b.npy") + " --input " + path("a.npy") +
                   " --output " + path("c.npy"));
  ASSERT_EQ(r.rc, 0) << r.err;
  auto c = read_npy(path("c.npy"));
  ASSERT_TRUE(c.is_ok());
  EXPECT_EQ(c->dtype, DataType::kInt32);
  EXPECT_EQ(c->shape, (std::vector<int64_t>{2, 2, 3}));
  EXPECT_EQ(c->data, a.data) << "the null model copies input 0";

  b.shape = {3, 2};
  b.data.resize(24);
  ASSERT_TRUE(write_npy(path("b3.npy"), b).is_ok());
  r = infer("pair --input " + path("a.npy") + " --input " + path("b3.npy") + " --output " +
            path("c3.npy"));
  EXPECT_EQ(r.rc, 2);
  EXPECT_EQ(r.err, "slicectl: inputs disagree: 'a' holds 2 items, 'b' 3 items\n");
}

TEST_F(InferTest, ErrorsNameTheModelOrTheInput) {
  ASSERT_TRUE(write_npy(path("five.npy"), floats({5}, {1, 2, 3, 4, 5})).is_ok());
  CliRun wrong = infer("syn --input " + path("five.npy") + " --output " + path("w.npy"));
  EXPECT_EQ(wrong.rc, 2);
  EXPECT_EQ(wrong.err,
            "slicectl: input 'x': expected FP32 [4] (or N items: [?,4]), got FP32 [5]\n");
  NpyArray ints;
  ints.dtype = DataType::kInt32;
  ints.shape = {4};
  ints.data.resize(16);
  ASSERT_TRUE(write_npy(path("ints.npy"), ints).is_ok());
  CliRun dtype = infer("syn --input " + path("ints.npy") + " --output " + path("w.npy"));
  EXPECT_EQ(dtype.rc, 2);
  EXPECT_EQ(dtype.err,
            "slicectl: input 'x': expected FP32 [4] (or N items: [?,4]), got INT32 [4]\n");
  EXPECT_FALSE(std::filesystem::exists(path("w.npy")));

  CliRun unknown = infer("nope --input " + path("five.npy") + " --output " + path("w.npy"));
  EXPECT_EQ(unknown.rc, 1);
  EXPECT_NE(unknown.err.find("unknown model 'nope' (served: pair, syn)"), std::string::npos)
      << unknown.err;

  CliRun nobody = slicectl("infer syn --input " + path("five.npy") + " --output " + path("w.npy") +
                           " --instance nobody" + std::to_string(getpid()));
  EXPECT_EQ(nobody.rc, 1);
  EXPECT_FALSE(nobody.err.empty());
}

}  // namespace
}  // namespace sliceserve
