#pragma once
// A broker of named file descriptors on a Unix stream socket, so that memory exported as an fd
// (a CUDA VMM allocation, a memfd) outlives the process that made it. The controller runs the
// FdBroker and keeps every published fd open for as long as the model is served; its workers
// publish what they allocate and fetch what an earlier worker published. To the broker these
// are plain descriptors: it links no GPU library and never looks inside them.
//
// Protocol: one request per connection. The client connects, sends one frame (PUBLISH carries
// exactly one fd as SCM_RIGHTS ancillary data, FETCH none), reads one reply frame (FETCH's OK
// reply carries the fd), and the server closes the connection.
//
//   PUBLISH(key, bytes, meta) + fd -> OK | EXISTS (first publisher wins: the key keeps the fd it
//                                     has, the reply's `bytes` is the stored entry's; the sender
//                                     drops its own and FETCHes the stored one) | REFUSED
//   FETCH(key)                     -> OK(bytes, meta) + fd | NOT_FOUND | REFUSED
//
// Frame (every field little-endian; the header is 24 bytes, key and meta follow, no padding):
//
//   offset  size  field
//        0     4  magic "SSFB" (the bytes 'S' 'S' 'F' 'B')
//        4     2  version (kFdFrameVersion)
//        6     2  op (FdOp)
//        8     4  key_length   1..kMaxFdKeyBytes (0 allowed in replies)
//       12     4  meta_length  0..kMaxFdMetaBytes
//       16     8  bytes        the size of the memory behind the fd (PUBLISH, OK, EXISTS)
//       24        key (printable ASCII without space, 0x21..0x7e), then meta (0x20..0x7e)
//
// A frame is at most kMaxFdFrameBytes. REFUSED replies carry the reason as their meta. The
// server answers a malformed frame (bad magic, version, op, lengths, characters, a request with
// the wrong number of fds) with REFUSED and closes the connection; one that stays incomplete for
// FdBrokerOptions::request_timeout_ms is closed. Either way the other connections are served on.
//
// Security: the socket is created 0600 in a directory the caller chooses (the controller's
// runtime directory, which only its user can enter), and every connection's peer must have the
// server's effective uid (SO_PEERCRED), checked on both ends.

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "sliceserve/shm/status.h"
#include "sliceserve/shm/unique_fd.h"

namespace sliceserve::shm {

inline constexpr uint16_t kFdFrameVersion = 1;
inline constexpr size_t kFdFrameHeaderBytes = 24;
inline constexpr size_t kMaxFdKeyBytes = 256;
inline constexpr size_t kMaxFdMetaBytes = 4096;
inline constexpr size_t kMaxFdFrameBytes = kFdFrameHeaderBytes + kMaxFdKeyBytes + kMaxFdMetaBytes;
inline constexpr int kFdBrokerTimeoutMs = 5000;  // clients' send/receive timeout, by default

enum class FdOp : uint16_t {
  kPublish = 1,  // request: key, bytes, meta + one fd
  kFetch = 2,    // request: key
  kOk = 0x80,    // reply: PUBLISH stored; FETCH found (bytes, meta + the fd)
  kNotFound = 0x81,
  kExists = 0x82,   // reply to PUBLISH: the key is taken; `bytes` is the stored entry's
  kRefused = 0x83,  // reply: malformed or invalid request; meta says why
};

struct FdFrame {
  FdOp op = FdOp::kFetch;
  uint64_t bytes = 0;
  std::string key;
  std::string meta;
};

// The frame's bytes; kInvalidArgument when the key or meta breaks the limits above (a request's
// key must not be empty).
Result<std::vector<std::byte>> encode_fd_frame(const FdFrame& frame);
// The whole frame's size, from its first kFdFrameHeaderBytes (more are ignored): kIncompatible
// for another magic or version, kInvalidArgument for an unknown op or lengths over the limits.
// Needs only the header, so a reader knows how much to wait for and refuses a bad frame early.
Result<size_t> fd_frame_size(std::span<const std::byte> header);
// Parses exactly one frame: `bytes` must be all of it and nothing more.
Result<FdFrame> decode_fd_frame(std::span<const std::byte> bytes);

// ---- client side (workers) ----

struct FetchedFd {
  UniqueFd fd;
  uint64_t bytes = 0;
  std::string meta;
};

// Publishes `fd` (not consumed: the broker gets its own copy) under `key`. kAlreadyExists when
// another publisher got there first (fetch_fd gives the stored one), kServerGone when no broker
// listens at `socket_path`, kTimeout when it does not answer within timeout_ms, kInvalidArgument
// for a key/meta over the limits or a request the broker refused.
Status publish_fd(const std::string& socket_path, std::string_view key, uint64_t bytes,
                  std::string_view meta, int fd, int timeout_ms = kFdBrokerTimeoutMs);
// The fd published under `key`, a new descriptor owned by the caller (close-on-exec).
// kNotFound when nothing is published under it; otherwise the errors of publish_fd.
Result<FetchedFd> fetch_fd(const std::string& socket_path, std::string_view key,
                           int timeout_ms = kFdBrokerTimeoutMs);

// ---- server side (the controller) ----

struct FdBrokerOptions {
  int request_timeout_ms = 5000;  // a connection whose frame is incomplete after this is closed
  size_t max_connections = 64;    // connections over this are closed at once
};

struct FdBrokerStats {
  uint64_t published = 0;       // PUBLISH stored
  uint64_t duplicates = 0;      // PUBLISH answered EXISTS
  uint64_t fetched = 0;         // FETCH answered with an fd
  uint64_t not_found = 0;       // FETCH of a missing key
  uint64_t bad_requests = 0;    // refused, truncated or timed-out frames
  uint64_t rejected_peers = 0;  // another uid, or over max_connections
};

// Serves the socket on its own thread from start() to destruction. Every method is thread-safe.
class FdBroker {
 public:
  // Binds `socket_path` (mode 0600; a stale socket nobody answers on is replaced, a live one or
  // a non-socket file is kAlreadyExists) and starts serving.
  static Result<std::unique_ptr<FdBroker>> start(std::string socket_path,
                                                 FdBrokerOptions options = {});
  // Stops the thread, closes every connection and every stored fd, removes the socket.
  ~FdBroker();
  FdBroker(const FdBroker&) = delete;
  FdBroker& operator=(const FdBroker&) = delete;

  const std::string& path() const { return path_; }
  size_t size() const;  // entries held
  std::vector<std::string> keys() const;
  // Closes every stored fd (the model stopped): memory nobody else maps is freed. Later PUBLISHes
  // are stored afresh.
  void remove_all();
  FdBrokerStats stats() const;

 private:
  struct Entry {
    UniqueFd fd;
    uint64_t bytes = 0;
    std::string meta;
  };
  struct Connection;

  FdBroker(std::string path, FdBrokerOptions options, UniqueFd listen_fd, UniqueFd wake_fd,
           uint64_t socket_inode);
  void serve();
  void accept_connections(std::vector<Connection>& connections);
  // Reads what arrived; false once the connection is finished (answered or dropped).
  bool read_from(Connection& connection);
  void answer(Connection& connection, const FdFrame& request);
  void refuse(Connection& connection, const std::string& why);

  std::string path_;
  FdBrokerOptions options_;
  UniqueFd listen_fd_;
  UniqueFd wake_fd_;  // an eventfd that ends the thread's poll
  uint64_t socket_inode_ = 0;
  mutable std::mutex mutex_;  // guards entries_ and stats_
  std::map<std::string, Entry, std::less<>> entries_;
  FdBrokerStats stats_;
  std::thread thread_;
};

}  // namespace sliceserve::shm
