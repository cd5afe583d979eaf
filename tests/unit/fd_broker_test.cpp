#include "sliceserve/shm/fd_broker.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <functional>
#include <string>
#include <thread>
#include <vector>

namespace sliceserve::shm {
namespace {

using namespace std::chrono_literals;

// A socket path of its own per test, so ctest can run the cases in parallel.
std::string test_socket_path() {
  static std::atomic<int> counter{0};
  return "/tmp/ss_fdb_" + std::to_string(getpid()) + "_" + std::to_string(counter++) + ".sock";
}

// A memfd of `size` bytes, byte i = (i * 7 + seed) & 0xff.
UniqueFd make_memfd(size_t size, uint8_t seed) {
  UniqueFd fd(memfd_create("fd_broker_test", MFD_CLOEXEC));
  if (!fd.valid() || ftruncate(fd.get(), off_t(size)) != 0) return {};
  void* base = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd.get(), 0);
  if (base == MAP_FAILED) return {};
  auto* bytes = static_cast<uint8_t*>(base);
  for (size_t i = 0; i < size; ++i) bytes[i] = uint8_t(i * 7 + seed);
  munmap(base, size);
  return fd;
}

// True if the memfd holds make_memfd(size, seed)'s bytes.
bool has_pattern(int fd, size_t size, uint8_t seed) {
  struct stat st {};
  if (fstat(fd, &st) != 0 || size_t(st.st_size) != size) return false;
  void* base = mmap(nullptr, size, PROT_READ, MAP_SHARED, fd, 0);
  if (base == MAP_FAILED) return false;
  const auto* bytes = static_cast<const uint8_t*>(base);
  bool same = true;
  for (size_t i = 0; i < size && same; ++i) same = bytes[i] == uint8_t(i * 7 + seed);
  munmap(base, size);
  return same;
}

// Runs `body` in a forked child; its return value is the exit code.
pid_t fork_child(const std::function<int()>& body) {
  const pid_t pid = fork();
  if (pid == 0) _exit(body());
  return pid;
}

// The child's exit code, or -1 if it did not exit normally within `timeout` (then killed).
int wait_child(pid_t pid, std::chrono::milliseconds timeout = 10s) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    int status = 0;
    const pid_t done = waitpid(pid, &status, WNOHANG);
    if (done == pid) return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    if (done < 0 || std::chrono::steady_clock::now() > deadline) {
      kill(pid, SIGKILL);
      waitpid(pid, &status, 0);
      return -1;
    }
    std::this_thread::sleep_for(5ms);
  }
}

// A raw client connection, for frames the library would never send.
UniqueFd raw_connect(const std::string& path) {
  UniqueFd fd(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, path.c_str(), sizeof addr.sun_path - 1);
  const timeval timeout{5, 0};
  setsockopt(fd.get(), SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout);
  if (connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) return {};
  return fd;
}

bool send_bytes(int fd, std::span<const std::byte> bytes) {
  return send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL) == ssize_t(bytes.size());
}

// Reads until the server closes; the reply frame if one came.
Result<FdFrame> read_reply(int fd) {
  std::vector<std::byte> bytes;
  std::byte chunk[512];
  for (;;) {
    const ssize_t n = recv(fd, chunk, sizeof chunk, 0);
    if (n <= 0) break;
    bytes.insert(bytes.end(), chunk, chunk + n);
  }
  if (bytes.empty()) return Status(ErrorCode::kServerGone, "closed without a reply");
  return decode_fd_frame(bytes);
}

std::vector<std::byte> frame_bytes(const FdFrame& frame) {
  auto bytes = encode_fd_frame(frame);
  EXPECT_TRUE(bytes.is_ok()) << bytes.status().to_string();
  return bytes.is_ok() ? *bytes : std::vector<std::byte>{};
}

class FdBrokerTest : public ::testing::Test {
 protected:
  void SetUp() override { start({}); }
  void start(FdBrokerOptions options) {
    broker_.reset();
    auto broker = FdBroker::start(path_, options);
    ASSERT_TRUE(broker.is_ok()) << broker.status().to_string();
    broker_ = std::move(broker).value();
  }

  std::string path_ = test_socket_path();
  std::unique_ptr<FdBroker> broker_;
};

TEST_F(FdBrokerTest, MemoryPublishedByAChildThatExitedIsReadByAnother) {
  constexpr size_t kSize = 1 << 20;
  const pid_t publisher = fork_child([&] {
    UniqueFd fd = make_memfd(kSize, 3);
    if (!fd.valid()) return 2;
    Status s = publish_fd(path_, "resnet50.w.conv1", kSize, "memfd v1", fd.get());
    return s.is_ok() ? 0 : 3;
  });
  ASSERT_EQ(wait_child(publisher), 0);
  EXPECT_EQ(broker_->size(), 1u);
  // The publisher and its descriptors are gone: only the broker's copy keeps the memory.
  const pid_t reader = fork_child([&] {
    auto fetched = fetch_fd(path_, "resnet50.w.conv1");
    if (!fetched.is_ok()) return 2;
    if (fetched->bytes != kSize || fetched->meta != "memfd v1") return 3;
    if ((fcntl(fetched->fd.get(), F_GETFD) & FD_CLOEXEC) == 0) return 4;
    return has_pattern(fetched->fd.get(), kSize, 3) ? 0 : 5;
  });
  EXPECT_EQ(wait_child(reader), 0);
  const FdBrokerStats stats = broker_->stats();
  EXPECT_EQ(stats.published, 1u);
  EXPECT_EQ(stats.fetched, 1u);
  EXPECT_EQ(stats.bad_requests, 0u);
}

TEST_F(FdBrokerTest, SecondPublishIsRefusedAndTheFirstStays) {
  UniqueFd first = make_memfd(4096, 1);
  UniqueFd second = make_memfd(8192, 2);
  ASSERT_TRUE(publish_fd(path_, "w", 4096, "first", first.get()).is_ok());
  Status again = publish_fd(path_, "w", 8192, "second", second.get());
  EXPECT_EQ(again.code(), ErrorCode::kAlreadyExists) << again.to_string();
  EXPECT_NE(again.message().find("first publisher wins"), std::string::npos) << again.message();
  auto fetched = fetch_fd(path_, "w");
  ASSERT_TRUE(fetched.is_ok()) << fetched.status().to_string();
  EXPECT_EQ(fetched->bytes, 4096u);
  EXPECT_EQ(fetched->meta, "first");
  EXPECT_TRUE(has_pattern(fetched->fd.get(), 4096, 1));
  EXPECT_EQ(broker_->stats().duplicates, 1u);
}

TEST_F(FdBrokerTest, FetchOfAMissingKeyIsNotFound) {
  auto fetched = fetch_fd(path_, "nothing.here");
  ASSERT_FALSE(fetched.is_ok());
  EXPECT_EQ(fetched.status().code(), ErrorCode::kNotFound) << fetched.status().to_string();
  EXPECT_EQ(broker_->stats().not_found, 1u);
}

TEST_F(FdBrokerTest, RemoveAllForgetsEveryEntry) {
  UniqueFd fd = make_memfd(4096, 1);
  ASSERT_TRUE(publish_fd(path_, "a", 4096, "", fd.get()).is_ok());
  ASSERT_TRUE(publish_fd(path_, "b", 4096, "", fd.get()).is_ok());
  EXPECT_EQ(broker_->keys(), (std::vector<std::string>{"a", "b"}));
  broker_->remove_all();
  EXPECT_EQ(broker_->size(), 0u);
  EXPECT_EQ(fetch_fd(path_, "a").status().code(), ErrorCode::kNotFound);
  // The key is free again.
  EXPECT_TRUE(publish_fd(path_, "a", 4096, "", fd.get()).is_ok());
}

TEST_F(FdBrokerTest, MalformedAndTruncatedFramesDoNotDisturbAGoodClient) {
  start({.request_timeout_ms = 1500, .max_connections = 64});
  // Garbage: refused at once with a reason, then closed.
  UniqueFd garbage = raw_connect(path_);
  ASSERT_TRUE(garbage.valid());
  std::vector<std::byte> junk(kFdFrameHeaderBytes, std::byte{0x5a});
  ASSERT_TRUE(send_bytes(garbage.get(), junk));
  auto refused = read_reply(garbage.get());
  ASSERT_TRUE(refused.is_ok()) << refused.status().to_string();
  EXPECT_EQ(refused->op, FdOp::kRefused);
  EXPECT_NE(refused->meta.find("bad magic"), std::string::npos) << refused->meta;

  // Half a header, and then silence: the connection stays open, holding nobody else up.
  UniqueFd stalled = raw_connect(path_);
  ASSERT_TRUE(stalled.valid());
  const auto fetch_frame = frame_bytes({FdOp::kFetch, 0, "w", {}});
  ASSERT_TRUE(send_bytes(stalled.get(), std::span(fetch_frame).first(10)));
  // A whole header whose body never comes: the peer closes instead.
  {
    UniqueFd truncated = raw_connect(path_);
    ASSERT_TRUE(truncated.valid());
    const auto publish_frame = frame_bytes({FdOp::kPublish, 4096, "truncated", "meta"});
    ASSERT_TRUE(send_bytes(truncated.get(), std::span(publish_frame).first(30)));
  }

  const auto start_time = std::chrono::steady_clock::now();
  UniqueFd fd = make_memfd(4096, 9);
  Status published = publish_fd(path_, "w", 4096, "good", fd.get());
  ASSERT_TRUE(published.is_ok()) << published.to_string();
  auto fetched = fetch_fd(path_, "w");
  ASSERT_TRUE(fetched.is_ok()) << fetched.status().to_string();
  EXPECT_TRUE(has_pattern(fetched->fd.get(), 4096, 9));
  EXPECT_LT(std::chrono::steady_clock::now() - start_time, 1s) << "the good client waited";

  // The stalled connection is closed once its time is up, with a reason.
  auto timed_out = read_reply(stalled.get());
  ASSERT_TRUE(timed_out.is_ok()) << timed_out.status().to_string();
  EXPECT_EQ(timed_out->op, FdOp::kRefused);
  EXPECT_NE(timed_out->meta.find("did not arrive within 1500 ms"), std::string::npos)
      << timed_out->meta;
  EXPECT_EQ(broker_->stats().bad_requests, 3u);
  EXPECT_EQ(broker_->keys(), std::vector<std::string>{"w"});
}

TEST_F(FdBrokerTest, ClientsRefuseKeysAndMetaOverTheLimits) {
  UniqueFd fd = make_memfd(4096, 1);
  const std::string longest_key(kMaxFdKeyBytes, 'k');
  const std::string longest_meta(kMaxFdMetaBytes, 'm');
  EXPECT_TRUE(publish_fd(path_, longest_key, 4096, longest_meta, fd.get()).is_ok());
  auto fetched = fetch_fd(path_, longest_key);
  ASSERT_TRUE(fetched.is_ok()) << fetched.status().to_string();
  EXPECT_EQ(fetched->meta, longest_meta);

  EXPECT_EQ(publish_fd(path_, longest_key + "k", 4096, "", fd.get()).code(),
            ErrorCode::kInvalidArgument);
  EXPECT_EQ(publish_fd(path_, "k2", 4096, longest_meta + "m", fd.get()).code(),
            ErrorCode::kInvalidArgument);
  EXPECT_EQ(publish_fd(path_, "", 4096, "", fd.get()).code(), ErrorCode::kInvalidArgument);
  EXPECT_EQ(publish_fd(path_, "with space", 4096, "", fd.get()).code(),
            ErrorCode::kInvalidArgument);
  EXPECT_EQ(publish_fd(path_, "k3", 0, "", fd.get()).code(), ErrorCode::kInvalidArgument);
  EXPECT_EQ(publish_fd(path_, "k4", 4096, "", -1).code(), ErrorCode::kInvalidArgument);
  EXPECT_EQ(fetch_fd(path_, std::string(300, 'x')).status().code(), ErrorCode::kInvalidArgument);
  EXPECT_EQ(broker_->size(), 1u);
}

TEST_F(FdBrokerTest, ServerRefusesFramesOverTheLimitsFromTheHeaderAlone) {
  // A header announcing a 257-byte key: refused without waiting for a body that never comes.
  std::vector<std::byte> header = frame_bytes({FdOp::kFetch, 0, "k", {}});
  header.resize(kFdFrameHeaderBytes);
  header[8] = std::byte{0x01};  // key length 257 = 0x101
  header[9] = std::byte{0x01};
  UniqueFd conn = raw_connect(path_);
  ASSERT_TRUE(send_bytes(conn.get(), header));
  auto reply = read_reply(conn.get());
  ASSERT_TRUE(reply.is_ok()) << reply.status().to_string();
  EXPECT_EQ(reply->op, FdOp::kRefused);
  EXPECT_NE(reply->meta.find("257-byte key"), std::string::npos) << reply->meta;

  // Another version.
  std::vector<std::byte> other = frame_bytes({FdOp::kFetch, 0, "k", {}});
  other[4] = std::byte{2};
  conn = raw_connect(path_);
  ASSERT_TRUE(send_bytes(conn.get(), other));
  reply = read_reply(conn.get());
  ASSERT_TRUE(reply.is_ok());
  EXPECT_NE(reply->meta.find("version 2"), std::string::npos) << reply->meta;

  // PUBLISH without its fd, and a reply op sent as a request.
  for (const FdFrame& frame :
       {FdFrame{FdOp::kPublish, 4096, "k", {}}, FdFrame{FdOp::kOk, 0, "k", {}}}) {
    conn = raw_connect(path_);
    ASSERT_TRUE(send_bytes(conn.get(), frame_bytes(frame)));
    reply = read_reply(conn.get());
    ASSERT_TRUE(reply.is_ok());
    EXPECT_EQ(reply->op, FdOp::kRefused);
  }
  EXPECT_EQ(broker_->size(), 0u);
  EXPECT_EQ(broker_->stats().bad_requests, 4u);
}

TEST_F(FdBrokerTest, ConnectionsOverTheLimitAreClosed) {
  start({.request_timeout_ms = 5000, .max_connections = 1});
  UniqueFd holder = raw_connect(path_);
  ASSERT_TRUE(holder.valid());
  std::this_thread::sleep_for(50ms);  // the broker accepts it
  auto fetched = fetch_fd(path_, "w", 1000);
  EXPECT_EQ(fetched.status().code(), ErrorCode::kServerGone) << fetched.status().to_string();
  holder.reset();
  std::this_thread::sleep_for(50ms);
  EXPECT_EQ(fetch_fd(path_, "w").status().code(), ErrorCode::kNotFound);
  EXPECT_EQ(broker_->stats().rejected_peers, 1u);
}

TEST_F(FdBrokerTest, PeerOfAnotherUserIsRejected) {
  if (geteuid() != 0) GTEST_SKIP() << "needs root to run a client as another uid";
  UniqueFd fd = make_memfd(4096, 1);
  ASSERT_TRUE(publish_fd(path_, "w", 4096, "", fd.get()).is_ok());
  // Past the file mode, so that the broker's own uid check is what stops the peer.
  ASSERT_EQ(chmod(path_.c_str(), 0666), 0);
  const pid_t other = fork_child([&] {
    if (setuid(65534) != 0) return 2;
    // Each end checks the other: the client sees a broker of another uid, the broker a peer
    // of another uid; whichever looks first ends the call.
    const ErrorCode code = fetch_fd(path_, "w", 2000).status().code();
    return code == ErrorCode::kUnavailable || code == ErrorCode::kServerGone ? 0 : 3;
  });
  EXPECT_EQ(wait_child(other), 0);
  const auto deadline = std::chrono::steady_clock::now() + 2s;
  while (broker_->stats().rejected_peers == 0 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(5ms);
  }
  EXPECT_EQ(broker_->stats().rejected_peers, 1u);
  EXPECT_EQ(broker_->stats().fetched, 0u);
}

TEST_F(FdBrokerTest, SocketIsPrivateAndRemovedOnDestruction) {
  struct stat st {};
  ASSERT_EQ(stat(path_.c_str(), &st), 0);
  EXPECT_TRUE(S_ISSOCK(st.st_mode));
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  broker_.reset();
  EXPECT_NE(stat(path_.c_str(), &st), 0);
  EXPECT_EQ(fetch_fd(path_, "w").status().code(), ErrorCode::kServerGone);
}

TEST_F(FdBrokerTest, LiveBrokerIsRefusedStaleSocketReplaced) {
  auto second = FdBroker::start(path_);
  ASSERT_FALSE(second.is_ok());
  EXPECT_EQ(second.status().code(), ErrorCode::kAlreadyExists) << second.status().to_string();
  broker_.reset();

  // A socket left behind by a broker that crashed: bound, never unlinked, nobody listening.
  {
    UniqueFd dead(socket(AF_UNIX, SOCK_STREAM, 0));
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::strncpy(addr.sun_path, path_.c_str(), sizeof addr.sun_path - 1);
    ASSERT_EQ(bind(dead.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
  }
  start({});
  UniqueFd fd = make_memfd(4096, 1);
  EXPECT_TRUE(publish_fd(path_, "w", 4096, "", fd.get()).is_ok());
  broker_.reset();

  const std::string file = path_ + ".file";
  UniqueFd plain(open(file.c_str(), O_CREAT | O_WRONLY | O_CLOEXEC, 0600));
  auto on_file = FdBroker::start(file);
  EXPECT_EQ(on_file.status().code(), ErrorCode::kAlreadyExists);
  unlink(file.c_str());
}

TEST(FdBrokerClientTest, NoBrokerIsServerGone) {
  EXPECT_EQ(fetch_fd("/tmp/ss_fdb_nobody_listens.sock", "w").status().code(),
            ErrorCode::kServerGone);
  EXPECT_EQ(fetch_fd(std::string(200, 'p'), "w").status().code(), ErrorCode::kInvalidArgument);
}

TEST(FdBrokerClientTest, SilentServerIsATimeout) {
  const std::string path = test_socket_path();
  UniqueFd listener(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, path.c_str(), sizeof addr.sun_path - 1);
  ASSERT_EQ(bind(listener.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
  ASSERT_EQ(listen(listener.get(), 4), 0);
  const auto start_time = std::chrono::steady_clock::now();
  auto fetched = fetch_fd(path, "w", 200);
  EXPECT_EQ(fetched.status().code(), ErrorCode::kTimeout) << fetched.status().to_string();
  EXPECT_LT(std::chrono::steady_clock::now() - start_time, 2s);
  unlink(path.c_str());
}

TEST(FdFrameTest, EncodeDecodeRoundTrips) {
  const FdFrame frame{FdOp::kOk, 123456789012345ULL, "model.w.0", "cuda-vmm v1 device=0"};
  const std::vector<std::byte> bytes = frame_bytes(frame);
  ASSERT_EQ(bytes.size(), kFdFrameHeaderBytes + frame.key.size() + frame.meta.size());
  EXPECT_EQ(std::memcmp(bytes.data(), "SSFB", 4), 0);
  auto size = fd_frame_size(bytes);
  ASSERT_TRUE(size.is_ok());
  EXPECT_EQ(*size, bytes.size());
  auto decoded = decode_fd_frame(bytes);
  ASSERT_TRUE(decoded.is_ok()) << decoded.status().to_string();
  EXPECT_EQ(decoded->op, frame.op);
  EXPECT_EQ(decoded->bytes, frame.bytes);
  EXPECT_EQ(decoded->key, frame.key);
  EXPECT_EQ(decoded->meta, frame.meta);
}

TEST(FdFrameTest, DecodeRefusesBadFrames) {
  const std::vector<std::byte> good = frame_bytes({FdOp::kFetch, 0, "key", "m"});
  // Short, one byte too long, bad magic, bad op, a control character in the key.
  EXPECT_EQ(decode_fd_frame(std::span(good).first(good.size() - 1)).status().code(),
            ErrorCode::kInvalidArgument);
  std::vector<std::byte> longer = good;
  longer.push_back(std::byte{'x'});
  EXPECT_EQ(decode_fd_frame(longer).status().code(), ErrorCode::kInvalidArgument);
  std::vector<std::byte> magic = good;
  magic[0] = std::byte{'X'};
  EXPECT_EQ(decode_fd_frame(magic).status().code(), ErrorCode::kIncompatible);
  std::vector<std::byte> op = good;
  op[6] = std::byte{0x7f};
  EXPECT_EQ(decode_fd_frame(op).status().code(), ErrorCode::kInvalidArgument);
  std::vector<std::byte> control = good;
  control[kFdFrameHeaderBytes] = std::byte{'\n'};
  EXPECT_EQ(decode_fd_frame(control).status().code(), ErrorCode::kInvalidArgument);
  EXPECT_EQ(fd_frame_size(std::span(good).first(kFdFrameHeaderBytes - 1)).status().code(),
            ErrorCode::kInvalidArgument);
}

}  // namespace
}  // namespace sliceserve::shm
