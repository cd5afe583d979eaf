// The TCP protocol's frame codec: every field round-trips, and truncated, trailing, out-of-range
// and over-limit input is refused with the right code.

#include "sliceserve/client/wire.h"

#include <gtest/gtest.h>

#include <cstring>

namespace sliceserve::client::wire {
namespace {

std::vector<std::byte> bytes_of(std::initializer_list<int> values) {
  std::vector<std::byte> out;
  for (int v : values) out.push_back(std::byte(v));
  return out;
}

TEST(WireTest, HeaderRoundTripsEveryField) {
  FrameHeader h;
  h.type = FrameType::kError;
  h.flags = kFlagFatal;
  h.request_id = 0x0123456789abcdefULL;
  h.header_len = 777;
  h.data_len = 123456;
  const auto encoded = encode_header(h);
  // Little-endian on the wire: the magic's first byte is 'S', the id's first byte its lowest.
  EXPECT_EQ(encoded[0], std::byte('S'));
  EXPECT_EQ(encoded[3], std::byte('V'));
  EXPECT_EQ(encoded[4], std::byte(kVersion));
  EXPECT_EQ(encoded[8], std::byte(0xef));
  auto decoded = decode_header(encoded, Limits{});
  ASSERT_TRUE(decoded.is_ok()) << decoded.status().to_string();
  EXPECT_EQ(decoded->version, kVersion);
  EXPECT_EQ(decoded->type, FrameType::kError);
  EXPECT_EQ(decoded->flags, kFlagFatal);
  EXPECT_EQ(decoded->request_id, h.request_id);
  EXPECT_EQ(decoded->header_len, 777u);
  EXPECT_EQ(decoded->data_len, 123456u);
}

TEST(WireTest, TruncatedHeaderIsRefused) {
  const auto encoded = encode_header(FrameHeader{});
  for (size_t n = 0; n < kHeaderBytes; ++n) {
    auto r = decode_header(std::span(encoded).first(n), Limits{});
    EXPECT_EQ(r.status().code(), ErrorCode::kInvalidArgument) << n;
  }
}

TEST(WireTest, BadMagicVersionTypeAndFlagsAreRefused) {
  auto encoded = encode_header(FrameHeader{});
  auto bad = encoded;
  bad[0] = std::byte('X');
  EXPECT_EQ(decode_header(bad, Limits{}).status().code(), ErrorCode::kIncompatible);
  bad = encoded;
  bad[4] = std::byte(2);
  auto version = decode_header(bad, Limits{});
  EXPECT_EQ(version.status().code(), ErrorCode::kIncompatible);
  EXPECT_NE(version.status().message().find("version 2"), std::string::npos);
  for (int type : {0, 8, 255}) {
    bad = encoded;
    bad[5] = std::byte(type);
    EXPECT_EQ(decode_header(bad, Limits{}).status().code(), ErrorCode::kInvalidArgument) << type;
  }
  FrameHeader infer;
  infer.type = FrameType::kInfer;
  infer.flags = kFlagFatal;  // only error frames may carry it
  EXPECT_EQ(decode_header(encode_header(infer), Limits{}).status().code(),
            ErrorCode::kInvalidArgument);
}

TEST(WireTest, LengthsBeyondTheLimitsAreRefused) {
  Limits limits{100, 1000};
  FrameHeader h;
  h.type = FrameType::kInfer;
  h.header_len = 100;
  h.data_len = 1000;
  EXPECT_TRUE(decode_header(encode_header(h), limits).is_ok());
  h.header_len = 101;
  EXPECT_EQ(decode_header(encode_header(h), limits).status().code(), ErrorCode::kTensorTooLarge);
  h.header_len = 100;
  h.data_len = 1001;
  EXPECT_EQ(decode_header(encode_header(h), limits).status().code(), ErrorCode::kTensorTooLarge);
}

TEST(WireTest, InferRequestRoundTrips) {
  InferRequest m;
  m.model = "resnet50";
  m.timeout_ms = 2500;
  m.inputs.push_back({"input", shm::DataType::kFp32, {1, 3, 224, 224}, 3 * 224 * 224 * 4});
  m.inputs.push_back({"mask", shm::DataType::kBool, {7}, 7});
  auto r = decode_infer_request(encode(m));
  ASSERT_TRUE(r.is_ok()) << r.status().to_string();
  EXPECT_EQ(r->model, "resnet50");
  EXPECT_EQ(r->timeout_ms, 2500u);
  ASSERT_EQ(r->inputs.size(), 2u);
  EXPECT_EQ(r->inputs[0].name, "input");
  EXPECT_EQ(r->inputs[0].dtype, shm::DataType::kFp32);
  EXPECT_EQ(r->inputs[0].shape, (std::vector<int64_t>{1, 3, 224, 224}));
  EXPECT_EQ(r->inputs[0].bytes, 3u * 224 * 224 * 4);
  EXPECT_EQ(r->inputs[1].dtype, shm::DataType::kBool);
  EXPECT_TRUE(check_data_len(r->inputs, 3 * 224 * 224 * 4 + 7).is_ok());
  EXPECT_FALSE(check_data_len(r->inputs, 3 * 224 * 224 * 4 + 6).is_ok());
  EXPECT_FALSE(check_data_len(r->inputs, 3 * 224 * 224 * 4 + 8).is_ok());
}

TEST(WireTest, EveryOtherMessageRoundTrips) {
  auto hello = decode_hello(encode(Hello{"secret-token-123456", "test"}));
  ASSERT_TRUE(hello.is_ok());
  EXPECT_EQ(hello->token, "secret-token-123456");
  EXPECT_EQ(hello->client, "test");

  HelloOk ok{{1024, 4096}, 32, 5000};
  auto ok2 = decode_hello_ok(encode(ok));
  ASSERT_TRUE(ok2.is_ok());
  EXPECT_EQ(ok2->limits.max_header_bytes, 1024u);
  EXPECT_EQ(ok2->limits.max_data_bytes, 4096u);
  EXPECT_EQ(ok2->max_in_flight, 32u);
  EXPECT_EQ(ok2->idle_timeout_ms, 5000u);

  auto ask = decode_model_info_request(encode(ModelInfoRequest{"m"}));
  ASSERT_TRUE(ask.is_ok());
  EXPECT_EQ(ask->model, "m");

  ModelInfo info{
      "m", {{"x", shm::DataType::kInt32, {4}, 16}}, {{"y", shm::DataType::kFp16, {2, 2}, 8}}};
  auto info2 = decode_model_info(encode(info));
  ASSERT_TRUE(info2.is_ok());
  EXPECT_EQ(info2->outputs.at(0).name, "y");
  EXPECT_EQ(info2->outputs.at(0).shape, (std::vector<int64_t>{2, 2}));

  InferReply reply{8, 111, 222, {{"y", shm::DataType::kInt64, {3}, 24}}};
  auto reply2 = decode_infer_reply(encode(reply));
  ASSERT_TRUE(reply2.is_ok());
  EXPECT_EQ(reply2->batch_size, 8u);
  EXPECT_EQ(reply2->queue_ns, 111u);
  EXPECT_EQ(reply2->compute_ns, 222u);
  EXPECT_EQ(reply2->outputs.at(0).bytes, 24u);

  auto error = decode_error(encode(ErrorReply{wire_code(ErrorCode::kWrongShape), "bad shape"}));
  ASSERT_TRUE(error.is_ok());
  EXPECT_EQ(error_status(*error).code(), ErrorCode::kWrongShape);
  EXPECT_EQ(error_status(*error).message(), "bad shape");
  EXPECT_EQ(error_status(ErrorReply{kErrorUnauthenticated, "no"}).code(),
            ErrorCode::kInvalidArgument);
  EXPECT_EQ(error_status(ErrorReply{999, "?"}).code(), ErrorCode::kInternal);
}

TEST(WireTest, EveryTruncationAndTrailingByteOfMetadataIsRefused) {
  InferRequest m;
  m.model = "m";
  m.inputs.push_back({"x", shm::DataType::kInt32, {4}, 16});
  const std::vector<std::byte> meta = encode(m);
  for (size_t n = 0; n < meta.size(); ++n) {
    auto r = decode_infer_request(std::span(meta).first(n));
    EXPECT_EQ(r.status().code(), ErrorCode::kInvalidArgument) << n;
  }
  std::vector<std::byte> longer = meta;
  longer.push_back(std::byte(0));
  auto r = decode_infer_request(longer);
  EXPECT_NE(r.status().message().find("trailing"), std::string::npos) << r.status().message();
}

TEST(WireTest, OutOfRangeTensorFieldsAreRefused) {
  // model "m", timeout 0, then one tensor "x" with the field under test.
  auto with = [](int dtype, int ndims, int64_t dim) {
    std::vector<std::byte> meta = bytes_of({1, 0, 'm', 0, 0, 0, 0, 1, 1, 0, 'x', dtype, ndims});
    for (int d = 0; d < ndims; ++d) {
      for (int i = 0; i < 8; ++i) meta.push_back(std::byte((uint64_t(dim) >> (8 * i)) & 0xff));
    }
    for (int i = 0; i < 8; ++i) meta.push_back(std::byte(0));
    return meta;
  };
  EXPECT_TRUE(decode_infer_request(with(int(shm::DataType::kInt32), 1, 4)).is_ok());
  EXPECT_FALSE(decode_infer_request(with(0, 1, 4)).is_ok());    // kInvalid
  EXPECT_FALSE(decode_infer_request(with(13, 1, 4)).is_ok());   // past kFp64
  EXPECT_FALSE(decode_infer_request(with(11, 9, 4)).is_ok());   // > kMaxDims
  EXPECT_FALSE(decode_infer_request(with(11, 1, -1)).is_ok());  // negative
  // Nine tensors: more than kMaxTensors.
  std::vector<std::byte> many = bytes_of({1, 0, 'm', 0, 0, 0, 0, 9});
  EXPECT_FALSE(decode_infer_request(many).is_ok());
  // A name longer than a tensor name may be.
  std::vector<std::byte> name = bytes_of({1, 0, 'm', 0, 0, 0, 0, 1, 40, 0});
  name.resize(name.size() + 40, std::byte('a'));
  EXPECT_FALSE(decode_infer_request(name).is_ok());
}

TEST(WireTest, FramePrefixesTheHeader) {
  const std::vector<std::byte> meta = encode(ModelInfoRequest{"abc"});
  const std::vector<std::byte> f = frame(FrameType::kModelInfo, 42, meta);
  ASSERT_EQ(f.size(), kHeaderBytes + meta.size());
  auto h = decode_header(f, Limits{});
  ASSERT_TRUE(h.is_ok());
  EXPECT_EQ(h->request_id, 42u);
  EXPECT_EQ(h->header_len, meta.size());
  EXPECT_EQ(std::memcmp(f.data() + kHeaderBytes, meta.data(), meta.size()), 0);
}

}  // namespace
}  // namespace sliceserve::client::wire
