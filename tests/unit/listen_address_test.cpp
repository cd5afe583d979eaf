// Where the network front-ends listen and whether they may: host:port, loopback, the token rule,
// token comparison, and opening the listening socket (a real one, on loopback).

#include "sliceserve/controller/listen_address.h"

#include <gtest/gtest.h>

#include <asio.hpp>

#include "sliceserve/controller/config.h"

namespace sliceserve::controller {
namespace {

TEST(ListenAddressTest, SplitsHostAndPortWithBracketedIpv6) {
  auto v4 = split_address("127.0.0.1:8700");
  ASSERT_TRUE(v4.is_ok());
  EXPECT_EQ(v4->first, "127.0.0.1");
  EXPECT_EQ(v4->second, 8700);
  auto v6 = split_address("[::1]:8000");
  ASSERT_TRUE(v6.is_ok());
  EXPECT_EQ(v6->first, "::1");
  for (const char* bad : {"localhost", ":80", "host:", "host:http", "host:65536", "host:-1"}) {
    EXPECT_EQ(split_address(bad).status().code(), ErrorCode::kInvalidArgument) << bad;
  }
}

TEST(ListenAddressTest, BeyondLoopbackNeedsALongEnoughToken) {
  EXPECT_TRUE(is_loopback_host("localhost"));
  EXPECT_TRUE(is_loopback_host("127.3.2.1"));
  EXPECT_TRUE(is_loopback_host("::1"));
  EXPECT_FALSE(is_loopback_host("0.0.0.0"));
  EXPECT_FALSE(is_loopback_host("example.com"));
  EXPECT_TRUE(checked_listen_address("127.0.0.1:1", "").is_ok());
  auto open = checked_listen_address("0.0.0.0:8700", "");
  EXPECT_EQ(open.status().code(), ErrorCode::kInvalidArgument);
  EXPECT_NE(open.status().message().find("without a token"), std::string::npos);
  const std::string short_token(kMinTokenBytes - 1, 'a');
  EXPECT_EQ(checked_listen_address("0.0.0.0:8700", short_token).status().code(),
            ErrorCode::kInvalidArgument);
  EXPECT_TRUE(checked_listen_address("0.0.0.0:8700", std::string(kMinTokenBytes, 'a')).is_ok());
}

TEST(ListenAddressTest, TokensMatchOnlyWhenEqual) {
  EXPECT_TRUE(same_token("a-secret-token", "a-secret-token"));
  EXPECT_FALSE(same_token("a-secret-tokeN", "a-secret-token"));
  EXPECT_FALSE(same_token("a-secret", "a-secret-token"));
  EXPECT_FALSE(same_token("a-secret-token-and-more", "a-secret-token"));
  EXPECT_FALSE(same_token("", "a-secret-token"));
  EXPECT_FALSE(same_token("x", ""));
}

TEST(ListenAddressTest, ListensAndSaysWhichStepFailed) {
  asio::io_context ioc;
  asio::ip::tcp::acceptor first(ioc);
  ASSERT_TRUE(
      listen_on<asio::error_code>(first, "127.0.0.1", 0, "127.0.0.1:0", "TCP front-end").is_ok());
  const uint16_t port = first.local_endpoint().port();
  EXPECT_NE(port, 0);
  // The port is taken: binding fails, and says so with the front-end and the address.
  asio::ip::tcp::acceptor second(ioc);
  const std::string address = "127.0.0.1:" + std::to_string(port);
  Status taken = listen_on<asio::error_code>(second, "127.0.0.1", port, address, "TCP front-end");
  EXPECT_EQ(taken.code(), ErrorCode::kUnavailable);
  EXPECT_NE(taken.message().find("TCP front-end: binding " + address + ": "), std::string::npos)
      << taken.message();
}

}  // namespace
}  // namespace sliceserve::controller
