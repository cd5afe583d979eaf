// The HTTP front-end's infer reply text (controller/src/http_infer.cpp): every datatype's JSON
// numbers read back as the values the model wrote, floating point in the fewest digits of its
// own type, NaN and infinities as null, names escaped, binary outputs after the JSON header.

#include "http_infer.h"

#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <cstring>
#include <limits>
#include <nlohmann/json.hpp>
#include <vector>

#include "sliceserve/shm/element_conversions.h"

namespace sliceserve::controller::http_infer {
namespace {

using shm::DataType;

shm::ModelSpec spec_of(std::vector<std::pair<const char*, DataType>> outputs, int64_t n) {
  shm::ModelSpec spec;
  spec.inputs[spec.n_inputs++] =
      shm::make_tensor_spec("x", DataType::kInt32, std::vector<int64_t>{1}).value();
  for (const auto& [name, dtype] : outputs) {
    spec.outputs[spec.n_outputs++] =
        shm::make_tensor_spec(name, dtype, std::vector<int64_t>{n}).value();
  }
  return spec;
}

template <typename T>
std::span<const std::byte> bytes(const std::vector<T>& v) {
  return std::as_bytes(std::span(v));
}

TEST(HttpInferReplyTest, FloatsReadBackExactlyInTheirOwnTypesDigits) {
  const shm::ModelSpec spec = spec_of({{"y", DataType::kFp32}, {"d", DataType::kFp64}}, 6);
  const std::vector<float> y = {0.1F,          -2.5F,
                                1e30F,         std::numeric_limits<float>::denorm_min(),
                                std::nanf(""), -std::numeric_limits<float>::infinity()};
  const std::vector<double> d = {0.1, 1.0 / 3.0, -0.0, 5e-324, 1e308, 2.0};
  Request request;
  request.id = "q\"1";
  request.outputs = {{0, false}, {1, false}};
  ItemOutputs item{};
  item[0] = bytes(y);
  item[1] = bytes(d);
  const Reply reply = build_reply(request, spec, "m", std::span(&item, 1));
  EXPECT_FALSE(reply.binary);
  EXPECT_EQ(reply.header_bytes, reply.body.size());
  EXPECT_NE(reply.body.find("\"data\":[0.1,-2.5,1e+30,1e-45,null,null]"), std::string::npos)
      << reply.body;
  EXPECT_NE(reply.body.find("\"data\":[0.1,0.3333333333333333,-0.0,5e-324,1e+308,2.0]"),
            std::string::npos)
      << reply.body;
  const auto j = nlohmann::json::parse(reply.body);
  EXPECT_EQ(j["id"], "q\"1");
  EXPECT_EQ(j["model_name"], "m");
  EXPECT_EQ(j["model_version"], "1");
  ASSERT_EQ(j["outputs"].size(), 2u);
  EXPECT_EQ(j["outputs"][0]["name"], "y");
  EXPECT_EQ(j["outputs"][0]["datatype"], "FP32");
  EXPECT_EQ(j["outputs"][0]["shape"], nlohmann::json({1, 6}));
  for (size_t i = 0; i < 4; ++i) {
    EXPECT_EQ(j["outputs"][0]["data"][i].get<float>(), y[i]) << i;
  }
  for (size_t i = 0; i < d.size(); ++i) {
    EXPECT_EQ(std::bit_cast<uint64_t>(j["outputs"][1]["data"][i].get<double>()),
              std::bit_cast<uint64_t>(d[i]))
        << i;
  }
}

TEST(HttpInferReplyTest, IntegersBooleansAndHalvesAcrossABatch) {
  const shm::ModelSpec spec = spec_of({{"i8", DataType::kInt8},
                                       {"u8", DataType::kUint8},
                                       {"b", DataType::kBool},
                                       {"h", DataType::kFp16},
                                       {"u64", DataType::kUint64},
                                       {"i64", DataType::kInt64}},
                                      2);
  const std::vector<int8_t> i8a = {-128, 127}, i8b = {0, -1};
  const std::vector<uint8_t> u8 = {255, 0}, b = {1, 0};
  const std::vector<uint16_t> h = {shm::double_to_half(1.5), shm::double_to_half(-0.25)};
  const std::vector<uint64_t> u64 = {std::numeric_limits<uint64_t>::max(), 7};
  const std::vector<int64_t> i64 = {std::numeric_limits<int64_t>::min(), -7};
  Request request;
  for (uint32_t k = 0; k < 6; ++k) request.outputs.push_back({k, false});
  ItemOutputs first{}, second{};
  for (ItemOutputs* item : {&first, &second}) {
    (*item)[1] = bytes(u8);
    (*item)[2] = bytes(b);
    (*item)[3] = bytes(h);
    (*item)[4] = bytes(u64);
    (*item)[5] = bytes(i64);
  }
  first[0] = bytes(i8a);
  second[0] = bytes(i8b);
  const ItemOutputs items[] = {first, second};
  const Reply reply = build_reply(request, spec, "m", items);
  const auto j = nlohmann::json::parse(reply.body);
  EXPECT_FALSE(j.contains("id"));
  EXPECT_EQ(j["outputs"][0]["shape"], nlohmann::json({2, 2}));
  EXPECT_EQ(j["outputs"][0]["data"], nlohmann::json({-128, 127, 0, -1}));
  EXPECT_EQ(j["outputs"][1]["data"], nlohmann::json({255, 0, 255, 0}));
  EXPECT_EQ(j["outputs"][2]["data"], nlohmann::json({true, false, true, false}));
  EXPECT_EQ(j["outputs"][3]["data"], nlohmann::json({1.5, -0.25, 1.5, -0.25}));
  EXPECT_EQ(j["outputs"][4]["data"][0].get<uint64_t>(), std::numeric_limits<uint64_t>::max());
  EXPECT_EQ(j["outputs"][5]["data"][0].get<int64_t>(), std::numeric_limits<int64_t>::min());
}

TEST(HttpInferReplyTest, BinaryOutputsFollowTheJsonHeader) {
  const shm::ModelSpec spec = spec_of({{"y", DataType::kFp32}, {"z", DataType::kInt32}}, 2);
  const std::vector<float> y = {1, 2};
  const std::vector<int32_t> z = {3, 4};
  Request request;
  request.outputs = {{1, true}, {0, false}};  // the request's order: z in binary, then y as JSON
  ItemOutputs item{};
  item[0] = bytes(y);
  item[1] = bytes(z);
  const Reply reply = build_reply(request, spec, "m", std::span(&item, 1));
  EXPECT_TRUE(reply.binary);
  const auto j = nlohmann::json::parse(reply.body.substr(0, reply.header_bytes));
  EXPECT_EQ(j["outputs"][0]["name"], "z");
  EXPECT_EQ(j["outputs"][0]["parameters"]["binary_data_size"], 8);
  EXPECT_FALSE(j["outputs"][0].contains("data"));
  EXPECT_EQ(j["outputs"][1]["data"], nlohmann::json({1.0, 2.0}));
  ASSERT_EQ(reply.body.size(), reply.header_bytes + 8);
  EXPECT_EQ(std::memcmp(reply.body.data() + reply.header_bytes, z.data(), 8), 0);
}

}  // namespace
}  // namespace sliceserve::controller::http_infer
