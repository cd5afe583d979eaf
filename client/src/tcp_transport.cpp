#include "tcp_transport.h"

#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cstdlib>
#include <cstring>
#include <future>
#include <tuple>
#include <vector>

#include "sliceserve/shm/check.h"
#include "dial.h"
#include "sliceserve/shm/futex.h"

namespace sliceserve::client {
namespace {

// The reader looks at deadlines at least this often while requests are in flight.
constexpr int kReaderPollMs = 20;

uint64_t deadline_after(std::chrono::milliseconds timeout) {
  return shm::monotonic_ns() + uint64_t(std::max<int64_t>(timeout.count(), 0)) * 1'000'000;
}

}  // namespace

Client::TcpState::TcpState(int fd, std::string model, std::string address,
                           std::chrono::milliseconds timeout)
    : fd_(fd), model_(std::move(model)), address_(std::move(address)), default_timeout_(timeout) {}

Result<std::unique_ptr<Client::TcpState>> Client::TcpState::connect(std::string_view model,
                                                                    std::string_view host,
                                                                    uint16_t port,
                                                                    const ConnectOptions& options) {
  const std::string address = std::string(host) + ":" + std::to_string(port);
  ASSIGN_OR_RETURN(int fd, dial(std::string(host), port, address));
  std::unique_ptr<TcpState> state(
      new TcpState(fd, std::string(model), address, options.default_timeout));
  std::string token = options.token;
  if (token.empty()) {
    const char* env = std::getenv("SLICESERVE_TOKEN");
    if (env != nullptr) token = env;
  }
  RETURN_IF_ERROR(state->handshake(token));
  state->reader_ = std::thread([s = state.get()] { s->run_reader(); });
  return state;
}

Client::TcpState::~TcpState() {
  {
    std::lock_guard lock(mu_);
    stop_ = true;
  }
  // Wakes the reader out of poll/recv; the descriptor is closed only once it has returned.
  shutdown(fd_, SHUT_RDWR);
  if (reader_.joinable()) reader_.join();
  fail_all(Status(ErrorCode::kTimeout, "model '" + model_ +
                                           "': request withdrawn, its client was "
                                           "closed"));
  close(fd_);
}

Status Client::TcpState::handshake(const std::string& token) {
  const uint64_t deadline = deadline_after(default_timeout_);
  const std::vector<std::byte> hello =
      wire::frame(wire::FrameType::kHello, 0, wire::encode(wire::Hello{token, "libsliceserve"}));
  std::array<std::span<const std::byte>, 1> parts{hello};
  RETURN_IF_ERROR(send_all(parts));
  std::vector<std::byte> meta;
  ASSIGN_OR_RETURN(wire::FrameHeader h, recv_frame(meta, deadline));
  if (h.type == wire::FrameType::kError) {
    ASSIGN_OR_RETURN(wire::ErrorReply e, wire::decode_error(meta));
    return wire::error_status(e);
  }
  if (h.type != wire::FrameType::kHelloOk) {
    return Status(ErrorCode::kIncompatible, "sliceserved at " + address_ +
                                                " answered the hello with frame type " +
                                                std::to_string(int(h.type)));
  }
  ASSIGN_OR_RETURN(hello_, wire::decode_hello_ok(meta));

  const std::vector<std::byte> ask =
      wire::frame(wire::FrameType::kModelInfo, 0, wire::encode(wire::ModelInfoRequest{model_}));
  parts = {std::span<const std::byte>(ask)};
  RETURN_IF_ERROR(send_all(parts));
  ASSIGN_OR_RETURN(h, recv_frame(meta, deadline));
  if (h.type == wire::FrameType::kError) {
    ASSIGN_OR_RETURN(wire::ErrorReply e, wire::decode_error(meta));
    return wire::error_status(e);
  }
  if (h.type != wire::FrameType::kModelInfoOk) {
    return Status(ErrorCode::kIncompatible, "sliceserved at " + address_ +
                                                " answered the model query with frame type " +
                                                std::to_string(int(h.type)));
  }
  ASSIGN_OR_RETURN(wire::ModelInfo info, wire::decode_model_info(meta));
  for (const auto& [list, count, out] :
       {std::tuple{&info.inputs, &spec_.n_inputs, spec_.inputs},
        std::tuple{&info.outputs, &spec_.n_outputs, spec_.outputs}}) {
    *count = uint32_t(list->size());
    for (size_t i = 0; i < list->size(); ++i) {
      const wire::TensorDesc& t = (*list)[i];
      ASSIGN_OR_RETURN(out[i], shm::make_tensor_spec(t.name, t.dtype, t.shape));
    }
  }
  return Status::ok();
}

Status Client::TcpState::send_all(std::span<const std::span<const std::byte>> parts) {
  std::array<iovec, 2 + shm::kMaxTensors> iov{};
  size_t n = 0;
  for (std::span<const std::byte> p : parts) {
    if (p.empty()) continue;
    iov[n].iov_base = const_cast<std::byte*>(p.data());  // writev does not write to it
    iov[n].iov_len = p.size();
    ++n;
  }
  std::lock_guard lock(send_mu_);
  size_t first = 0;
  while (first < n) {
    msghdr message{};
    message.msg_iov = &iov[first];
    message.msg_iovlen = n - first;
    // MSG_NOSIGNAL: a peer that went away is an error here, not a SIGPIPE for the application.
    const ssize_t sent = sendmsg(fd_, &message, MSG_NOSIGNAL);
    if (sent < 0) {
      if (errno == EINTR) continue;
      return gone(address_, std::string("send: ") + strerror(errno));
    }
    size_t left = size_t(sent);
    while (first < n && left >= iov[first].iov_len) left -= iov[first++].iov_len;
    if (first < n) {
      iov[first].iov_base = static_cast<std::byte*>(iov[first].iov_base) + left;
      iov[first].iov_len -= left;
    }
  }
  return Status::ok();
}

Status Client::TcpState::recv_all(std::span<std::byte> out, uint64_t deadline_ns) {
  size_t got = 0;
  while (got < out.size()) {
    if (deadline_ns != 0) {
      const uint64_t now = shm::monotonic_ns();
      if (now >= deadline_ns) {
        return Status(ErrorCode::kTimeout, "sliceserved at " + address_ + " did not answer");
      }
      pollfd p{fd_, POLLIN, 0};
      const int ready = poll(
          &p, 1,
          int(std::min<uint64_t>((deadline_ns - now) / 1'000'000 + 1, uint64_t(kReaderPollMs))));
      if (ready < 0 && errno != EINTR) return errno_status("poll", errno, __FILE__, __LINE__);
      if (ready <= 0) continue;
    }
    const ssize_t n = recv(fd_, out.data() + got, out.size() - got, 0);
    if (n == 0) return gone(address_, "the connection was closed");
    if (n < 0) {
      if (errno == EINTR) continue;
      return gone(address_, std::string("recv: ") + strerror(errno));
    }
    got += size_t(n);
  }
  return Status::ok();
}

Result<wire::FrameHeader> Client::TcpState::recv_frame(std::vector<std::byte>& meta,
                                                       uint64_t deadline_ns) {
  std::array<std::byte, wire::kHeaderBytes> head;
  RETURN_IF_ERROR(recv_all(head, deadline_ns));
  ASSIGN_OR_RETURN(wire::FrameHeader h, wire::decode_header(head, limits_));
  meta.resize(h.header_len);
  RETURN_IF_ERROR(recv_all(meta, deadline_ns));
  if (h.data_len != 0 && h.type != wire::FrameType::kInferOk) {
    return Status(
        ErrorCode::kIncompatible,
        "sliceserved at " + address_ + " sent data with frame type " + std::to_string(int(h.type)));
  }
  return h;
}

Result<InferResult> Client::TcpState::infer(std::span<const Tensor> inputs,
                                            std::chrono::milliseconds timeout) {
  std::promise<Result<InferResult>> promise;
  std::future<Result<InferResult>> future = promise.get_future();
  infer_async(
      inputs, [&promise](Result<InferResult> result) { promise.set_value(std::move(result)); },
      timeout);
  return future.get();
}

void Client::TcpState::infer_async(std::span<const Tensor> inputs, Callback done,
                                   std::chrono::milliseconds timeout) {
  if (inputs.size() > shm::kMaxTensors) {
    return done(Status(ErrorCode::kTensorTooLarge,
                       "request carries " + std::to_string(inputs.size()) + " tensors, at most " +
                           std::to_string(shm::kMaxTensors) + " are allowed"));
  }
  const uint64_t deadline = deadline_after(timeout);
  wire::InferRequest request;
  request.model = model_;
  request.timeout_ms = uint32_t(std::clamp<int64_t>(timeout.count(), 1, UINT32_MAX));
  uint64_t data_len = 0;
  for (const Tensor& t : inputs) {
    request.inputs.push_back({t.name, t.dtype, t.shape, t.data.size()});
    data_len += t.data.size();
  }
  if (data_len > hello_.limits.max_data_bytes) {
    return done(
        Status(ErrorCode::kTensorTooLarge, "request carries " + std::to_string(data_len) +
                                               " tensor bytes, the server takes at most " +
                                               std::to_string(hello_.limits.max_data_bytes)));
  }
  uint64_t id;
  {
    // At most max_in_flight requests on the connection: more would only wait in the server's
    // socket buffer, past their deadlines' reach.
    std::unique_lock lock(mu_);
    for (;;) {
      if (!broken_.is_ok()) {
        Status why = broken_;
        lock.unlock();
        return done(std::move(why));
      }
      if (pending_.size() < hello_.max_in_flight) break;
      if (room_.wait_until(lock, std::chrono::steady_clock::time_point(std::chrono::nanoseconds(
                                     deadline))) == std::cv_status::timeout) {
        lock.unlock();
        return done(Status(ErrorCode::kTimeout,
                           "model '" + model_ + "': all " + std::to_string(hello_.max_in_flight) +
                               " requests of this connection stayed in flight"));
      }
    }
    id = next_id_++;
    pending_.emplace(id, Pending{std::move(done), deadline});
  }
  const std::vector<std::byte> head =
      wire::frame(wire::FrameType::kInfer, id, wire::encode(request), uint32_t(data_len));
  std::array<std::span<const std::byte>, 1 + shm::kMaxTensors> parts{};
  parts[0] = head;
  for (size_t i = 0; i < inputs.size(); ++i) parts[1 + i] = inputs[i].data;
  Status sent = send_all(std::span(parts.data(), 1 + inputs.size()));
  if (!sent.is_ok()) {
    // A frame may have gone out in part, so nothing after it could be framed: end the connection
    // (the reader then fails the other requests in flight).
    shutdown(fd_, SHUT_RDWR);
    Callback failed;
    {
      std::lock_guard lock(mu_);
      auto it = pending_.find(id);
      if (it == pending_.end()) return;  // the reader failed it already
      failed = std::move(it->second.done);
      pending_.erase(it);
      if (broken_.is_ok()) broken_ = sent;
    }
    room_.notify_one();
    failed(std::move(sent));
  }
}

void Client::TcpState::run_reader() {
  for (;;) {
    {
      std::lock_guard lock(mu_);
      if (stop_) return;
    }
    // Expire what passed its deadline; a late reply then finds no request and is dropped.
    std::vector<Callback> expired;
    {
      std::lock_guard lock(mu_);
      const uint64_t now = shm::monotonic_ns();
      for (auto it = pending_.begin(); it != pending_.end();) {
        if (it->second.deadline_ns <= now) {
          expired.push_back(std::move(it->second.done));
          it = pending_.erase(it);
        } else {
          ++it;
        }
      }
    }
    if (!expired.empty()) room_.notify_all();
    for (Callback& done : expired) {
      done(Status(ErrorCode::kTimeout, "model '" + model_ + "': no answer within the timeout"));
    }
    pollfd p{fd_, POLLIN, 0};
    const int ready = poll(&p, 1, kReaderPollMs);
    if (ready < 0 && errno != EINTR) {
      fail_all(errno_status("poll", errno, __FILE__, __LINE__));
      return;
    }
    if (ready <= 0) continue;
    // A frame has begun: the rest follows at once from a well-behaved server.
    std::array<std::byte, wire::kHeaderBytes> head;
    Status s = recv_all(head, 0);
    Result<wire::FrameHeader> h = s.is_ok() ? wire::decode_header(head, limits_) : s;
    if (h.is_ok()) s = dispatch(*h);
    if (!h.is_ok() || !s.is_ok()) {
      fail_all(h.is_ok() ? s : h.status());
      return;
    }
  }
}

Status Client::TcpState::dispatch(const wire::FrameHeader& h) {
  std::vector<std::byte> meta(h.header_len);
  RETURN_IF_ERROR(recv_all(meta, 0));
  Callback done;
  {
    std::lock_guard lock(mu_);
    auto it = pending_.find(h.request_id);
    if (it != pending_.end()) {
      done = std::move(it->second.done);
      pending_.erase(it);
    }
  }
  if (done) room_.notify_one();
  if (h.type == wire::FrameType::kError) {
    if (h.data_len != 0) return Status(ErrorCode::kIncompatible, "an error frame with data");
    ASSIGN_OR_RETURN(wire::ErrorReply e, wire::decode_error(meta));
    Status failure = wire::error_status(e);
    if (done) done(failure);
    // A fatal error ends the connection: the reader's caller fails the rest with it.
    if ((h.flags & wire::kFlagFatal) != 0) return failure;
    return Status::ok();
  }
  if (h.type != wire::FrameType::kInferOk) {
    return Status(ErrorCode::kIncompatible, "sliceserved at " + address_ +
                                                " sent an unexpected frame type " +
                                                std::to_string(int(h.type)));
  }
  ASSIGN_OR_RETURN(wire::InferReply reply, wire::decode_infer_reply(meta));
  RETURN_IF_ERROR(wire::check_data_len(reply.outputs, h.data_len));
  InferResult result;
  result.request_id = h.request_id;
  result.batch_size = reply.batch_size;
  result.queue_ns = reply.queue_ns;
  result.compute_ns = reply.compute_ns;
  result.outputs.resize(reply.outputs.size());
  for (size_t i = 0; i < reply.outputs.size(); ++i) {
    wire::TensorDesc& desc = reply.outputs[i];
    OutputTensor& out = result.outputs[i];
    out.name = std::move(desc.name);
    out.dtype = desc.dtype;
    out.shape = std::move(desc.shape);
    // Straight from the socket into the result's own buffer.
    out.data.resize(desc.bytes);
    RETURN_IF_ERROR(recv_all(out.data, 0));
  }
  if (done) done(std::move(result));
  return Status::ok();
}

void Client::TcpState::fail_all(const Status& reason) {
  std::map<uint64_t, Pending> failed;
  {
    std::lock_guard lock(mu_);
    if (broken_.is_ok()) {
      broken_ = reason.code() == ErrorCode::kServerGone ? reason : reason.with_context(address_);
    }
    failed.swap(pending_);
  }
  room_.notify_all();
  for (auto& [id, p] : failed) p.done(reason);
}

}  // namespace sliceserve::client
