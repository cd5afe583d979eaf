// The ONNX loader: models built with the onnx protobuf API, serialized, loaded into the IR.

#include "sliceserve/worker/engine/onnx_loader.h"

#include <gtest/gtest.h>
#include <onnx/onnx_pb.h>

#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include "sliceserve/worker/engine/shape_inference.h"
#include "support/onnx_model_builder.h"

namespace sliceserve::worker::engine {
namespace {

using testing::ModelBuilder;
using testing::set_int;
using testing::set_ints;

void set_float(onnx::NodeProto* n, const std::string& name, float v) {
  auto* a = n->add_attribute();
  a->set_name(name);
  a->set_type(onnx::AttributeProto::FLOAT);
  a->set_f(v);
}

Result<Graph> load(const std::string& bytes) {
  return load_onnx_bytes(std::as_bytes(std::span<const char>(bytes.data(), bytes.size())));
}

std::string conv_model(bool group_as_float = false) {
  ModelBuilder b;
  b.input("x", {1, 3, 8, 8});
  b.input("w", {4, 3, 3, 3});  // old exporters list initializers as inputs too
  auto* w = b.init("w", onnx::TensorProto::FLOAT, {4, 3, 3, 3});
  std::vector<float> weights(4 * 3 * 3 * 3, 0.5F);
  w->set_raw_data(
      std::string(reinterpret_cast<const char*>(weights.data()), weights.size() * sizeof(float)));
  auto* bias = b.init("b", onnx::TensorProto::FLOAT, {4});
  for (int i = 0; i < 4; ++i) bias->add_float_data(static_cast<float>(i));
  auto* conv = b.node("Conv", {"x", "w", "b"}, {"y"}, "conv1");
  set_ints(conv, "pads", {1, 1, 1, 1});
  set_ints(conv, "strides", {2, 2});
  if (group_as_float) {
    set_float(conv, "group", 1.0F);
  } else {
    set_int(conv, "group", 1);
  }
  b.node("Relu", {"y"}, {"z"}, "relu1");
  b.output("z");
  return b.bytes();
}

TEST(OnnxLoader, LoadsConvModel) {
  auto graph = load(conv_model());
  ASSERT_TRUE(graph.is_ok()) << graph.status().to_string();
  EXPECT_EQ(graph->opset, 13);
  ASSERT_EQ(graph->inputs.size(), 1u);
  EXPECT_EQ(graph->inputs[0].name, "x");
  EXPECT_EQ(graph->inputs[0].dtype, DataType::kFp32);
  EXPECT_EQ(graph->inputs[0].shape, (std::vector<int64_t>{1, 3, 8, 8}));
  ASSERT_EQ(graph->initializers.size(), 2u);
  const Tensor& w = graph->initializers.at("w");
  EXPECT_EQ(w.dims, (std::vector<int64_t>{4, 3, 3, 3}));
  ASSERT_EQ(w.as<float>().size(), 108u);
  EXPECT_EQ(w.as<float>()[107], 0.5F);
  const Tensor& bias = graph->initializers.at("b");
  ASSERT_EQ(bias.as<float>().size(), 4u);
  EXPECT_EQ(bias.as<float>()[3], 3.0F);
  ASSERT_EQ(graph->nodes.size(), 2u);
  const Node& conv = graph->nodes[0];
  EXPECT_EQ(conv.op_type, "Conv");
  EXPECT_EQ(conv.name, "conv1");
  EXPECT_EQ(conv.inputs, (std::vector<std::string>{"x", "w", "b"}));
  EXPECT_EQ(*conv.ints_attr("strides"), (std::vector<int64_t>{2, 2}));
  EXPECT_EQ(*conv.int_attr("group", 7), 1);
  EXPECT_EQ(*conv.int_attr("missing", 7), 7);
  auto wrong = conv.float_attr("group", 0.0F);
  ASSERT_FALSE(wrong.is_ok());
  EXPECT_EQ(wrong.status().message(), "node 'conv1' (Conv): attribute 'group' must be a float");
}

TEST(OnnxLoader, TypedInitializerFields) {
  ModelBuilder b;
  b.input("x", {2});
  auto* i64 = b.init("i64", onnx::TensorProto::INT64, {3});
  for (int64_t v : {-1, 0, 5}) i64->add_int64_data(v);
  auto* i32 = b.init("i32", onnx::TensorProto::INT32, {2});
  i32->add_int32_data(-7);
  i32->add_int32_data(9);
  auto* i8 = b.init("i8", onnx::TensorProto::INT8, {2});
  i8->add_int32_data(-3);
  i8->add_int32_data(4);
  auto* u8 = b.init("u8", onnx::TensorProto::UINT8, {1});
  u8->add_int32_data(200);
  auto* flag = b.init("flag", onnx::TensorProto::BOOL, {2});
  flag->add_int32_data(1);
  flag->add_int32_data(0);
  auto* f64 = b.init("f64", onnx::TensorProto::DOUBLE, {1});
  f64->add_double_data(2.5);
  auto* f16 = b.init("f16", onnx::TensorProto::FLOAT16, {1});
  f16->add_int32_data(0x3C00);  // 1.0
  auto* scalar = b.init("scalar", onnx::TensorProto::FLOAT, {});
  scalar->add_float_data(1.5F);
  b.node("Identity", {"x"}, {"y"});
  b.output("y");
  auto graph = load(b.bytes());
  ASSERT_TRUE(graph.is_ok()) << graph.status().to_string();
  const auto& inits = graph->initializers;
  EXPECT_EQ(inits.at("i64").to_int64(), (std::vector<int64_t>{-1, 0, 5}));
  EXPECT_EQ(inits.at("i32").to_int64(), (std::vector<int64_t>{-7, 9}));
  EXPECT_EQ(inits.at("i8").to_int64(), (std::vector<int64_t>{-3, 4}));
  EXPECT_EQ(inits.at("u8").to_int64(), (std::vector<int64_t>{200}));
  EXPECT_EQ(inits.at("flag").to_int64(), (std::vector<int64_t>{1, 0}));
  EXPECT_EQ(inits.at("f64").as<double>()[0], 2.5);
  EXPECT_EQ(inits.at("f16").dtype, DataType::kFp16);
  EXPECT_EQ(inits.at("f16").as<uint16_t>()[0], 0x3C00);
  EXPECT_EQ(inits.at("scalar").element_count(), 1);
  EXPECT_EQ(inits.at("scalar").as<float>()[0], 1.5F);
  EXPECT_EQ(graph->nodes[0].name, "Identity_0");  // unnamed nodes get a name for errors
}

TEST(OnnxLoader, ConstantNodeValue) {
  ModelBuilder b;
  b.input("x", {2, 3});
  auto* c = b.node("Constant", {}, {"shape"}, "c");
  auto* attr = c->add_attribute();
  attr->set_name("value");
  attr->set_type(onnx::AttributeProto::TENSOR);
  attr->mutable_t()->set_data_type(onnx::TensorProto::INT64);
  attr->mutable_t()->add_dims(1);
  attr->mutable_t()->add_int64_data(-1);
  b.node("Reshape", {"x", "shape"}, {"y"}, "r");
  b.output("y");
  auto graph = load(b.bytes());
  ASSERT_TRUE(graph.is_ok()) << graph.status().to_string();
  auto value = graph->nodes[0].tensor_attr("value");
  ASSERT_TRUE(value.is_ok());
  EXPECT_EQ((*value)->to_int64(), (std::vector<int64_t>{-1}));
}

TEST(OnnxLoader, SortsNodesTopologically) {
  ModelBuilder b;
  b.input("x", {4});
  b.node("Relu", {"b"}, {"c"}, "third");
  b.node("Relu", {"a"}, {"b"}, "second");
  b.node("Relu", {"x"}, {"a"}, "first");
  b.output("c");
  auto graph = load(b.bytes());
  ASSERT_TRUE(graph.is_ok()) << graph.status().to_string();
  ASSERT_EQ(graph->nodes.size(), 3u);
  EXPECT_EQ(graph->nodes[0].name, "first");
  EXPECT_EQ(graph->nodes[1].name, "second");
  EXPECT_EQ(graph->nodes[2].name, "third");
}

TEST(OnnxLoader, CycleIsAnErrorNamingTheNode) {
  ModelBuilder b;
  b.input("x", {4});
  b.node("Add", {"x", "b"}, {"a"}, "n1");
  b.node("Relu", {"a"}, {"b"}, "n2");
  b.output("b");
  auto graph = load(b.bytes());
  ASSERT_FALSE(graph.is_ok());
  EXPECT_EQ(graph.status().code(), ErrorCode::kInvalidArgument);
  EXPECT_NE(graph.status().message().find("node 'n1' (Add): is part of a cycle"), std::string::npos)
      << graph.status().message();
}

TEST(OnnxLoader, UndefinedInputNamesTheNode) {
  ModelBuilder b;
  b.input("x", {4});
  b.node("Add", {"x", "nowhere"}, {"y"}, "adder");
  b.output("y");
  auto graph = load(b.bytes());
  ASSERT_FALSE(graph.is_ok());
  EXPECT_EQ(graph.status().message(), "node 'adder' (Add): input 'nowhere' is not defined");
}

TEST(OnnxLoader, TruncatedAndGarbageBytesNeverCrash) {
  const std::string bytes = conv_model();
  int errors = 0;
  for (size_t length = 0; length < bytes.size(); ++length) {
    auto graph = load(bytes.substr(0, length));
    if (!graph.is_ok()) {
      ++errors;
      EXPECT_EQ(graph.status().code(), ErrorCode::kInvalidArgument);
    }
  }
  EXPECT_GT(errors, static_cast<int>(bytes.size() / 2));
  auto garbage = load("this is not an onnx model at all \xff\xff\xff");
  ASSERT_FALSE(garbage.is_ok());
  EXPECT_EQ(garbage.status().code(), ErrorCode::kInvalidArgument);
  // Every single-byte corruption: an error or a graph, never a crash.
  for (size_t i = 0; i < bytes.size(); ++i) {
    std::string corrupt = bytes;
    corrupt[i] = static_cast<char>(corrupt[i] ^ 0x5A);
    auto graph = load(corrupt);
    if (graph.is_ok()) (void)infer_shapes(*graph, 2);
  }
}

TEST(OnnxLoader, MissingFileIsNotFound) {
  auto graph = load_onnx_file("/nonexistent/model.onnx");
  ASSERT_FALSE(graph.is_ok());
  EXPECT_EQ(graph.status().code(), ErrorCode::kNotFound);
}

TEST(OnnxLoader, LoadsFromFile) {
  const std::string path = ::testing::TempDir() + "onnx_loader_test_model.onnx";
  {
    std::ofstream out(path, std::ios::binary);
    out << conv_model();
  }
  auto graph = load_onnx_file(path);
  std::remove(path.c_str());
  ASSERT_TRUE(graph.is_ok()) << graph.status().to_string();
  EXPECT_EQ(graph->nodes.size(), 2u);
}

TEST(OnnxLoader, UnsupportedDtypeNamesTheInitializer) {
  ModelBuilder b;
  b.input("x", {1});
  auto* s = b.init("names", onnx::TensorProto::STRING, {1});
  s->add_string_data("hello");
  b.node("Identity", {"x"}, {"y"});
  b.output("y");
  auto graph = load(b.bytes());
  ASSERT_FALSE(graph.is_ok());
  EXPECT_NE(graph.status().message().find("initializer 'names': unsupported dtype"),
            std::string::npos)
      << graph.status().message();
}

TEST(OnnxLoader, RawDataSizeMismatch) {
  ModelBuilder b;
  b.input("x", {1});
  auto* w = b.init("w", onnx::TensorProto::FLOAT, {4});
  w->set_raw_data(std::string(8, '\0'));
  b.node("Identity", {"x"}, {"y"});
  b.output("y");
  auto graph = load(b.bytes());
  ASSERT_FALSE(graph.is_ok());
  EXPECT_NE(graph.status().message().find("initializer 'w'"), std::string::npos);
}

TEST(OnnxLoader, BadAttributeTypeIsReportedByShapeInference) {
  auto graph = load(conv_model(/*group_as_float=*/true));
  ASSERT_TRUE(graph.is_ok()) << graph.status().to_string();
  Status status = infer_shapes(*graph, 1);
  ASSERT_FALSE(status.is_ok());
  EXPECT_EQ(status.message(), "node 'conv1' (Conv): attribute 'group' must be an int");
}

}  // namespace
}  // namespace sliceserve::worker::engine
