#include "http_transport.h"

#include <poll.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <charconv>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <nlohmann/json.hpp>

#include "dial.h"
#include "sliceserve/shm/check.h"
#include "sliceserve/shm/futex.h"

namespace sliceserve::client {
namespace {

using nlohmann::json;

constexpr size_t kMaxReplyHead = 64 * 1024;

uint64_t deadline_after(std::chrono::milliseconds timeout) {
  return shm::monotonic_ns() + uint64_t(std::max<int64_t>(timeout.count(), 0)) * 1'000'000;
}

// Waits for `events` on fd until deadline_ns: kTimeout past it.
Status wait_for(int fd, short events, uint64_t deadline_ns, const std::string& address) {
  for (;;) {
    const uint64_t now = shm::monotonic_ns();
    if (now >= deadline_ns) {
      return Status(ErrorCode::kTimeout, "no reply from sliceserved at " + address + " in time");
    }
    pollfd p{fd, events, 0};
    const int ms = int(std::min<uint64_t>((deadline_ns - now) / 1'000'000 + 1, 1000));
    const int rc = poll(&p, 1, ms);
    if (rc > 0) return Status::ok();
    if (rc < 0 && errno != EINTR) return errno_status("poll", errno, __FILE__, __LINE__);
  }
}

// A reply's status line and the headers this transport reads.
struct ReplyHead {
  int status = 0;
  uint64_t content_length = 0;
  std::optional<uint64_t> header_length;  // Inference-Header-Content-Length
  bool close = false;
};

bool iequals_prefix(std::string_view line, std::string_view name) {
  if (line.size() <= name.size() || line[name.size()] != ':') return false;
  for (size_t i = 0; i < name.size(); ++i) {
    if (std::tolower(static_cast<unsigned char>(line[i])) !=
        std::tolower(static_cast<unsigned char>(name[i]))) {
      return false;
    }
  }
  return true;
}

Result<uint64_t> number(std::string_view text, const std::string& what) {
  while (!text.empty() && text.front() == ' ') text.remove_prefix(1);
  while (!text.empty() && (text.back() == ' ' || text.back() == '\r')) text.remove_suffix(1);
  uint64_t n = 0;
  const auto [end, err] = std::from_chars(text.data(), text.data() + text.size(), n);
  if (err != std::errc() || end != text.data() + text.size()) {
    return Status(ErrorCode::kIncompatible, "the server sent a bad " + what);
  }
  return n;
}

Result<ReplyHead> parse_head(std::string_view head) {
  ReplyHead h;
  if (head.substr(0, 9) != "HTTP/1.1 " || head.size() < 12) {
    return Status(ErrorCode::kIncompatible, "the server's reply is not HTTP/1.1");
  }
  ASSIGN_OR_RETURN(uint64_t status, number(head.substr(9, 3), "status"));
  h.status = int(status);
  bool has_length = false;
  size_t pos = head.find("\r\n");
  while (pos != std::string_view::npos && pos + 2 < head.size()) {
    const size_t end = head.find("\r\n", pos + 2);
    const std::string_view line = head.substr(pos + 2, end - pos - 2);
    if (iequals_prefix(line, "Content-Length")) {
      ASSIGN_OR_RETURN(h.content_length,
                       number(line.substr(sizeof("Content-Length")), "Content-Length"));
      has_length = true;
    } else if (iequals_prefix(line, "Inference-Header-Content-Length")) {
      ASSIGN_OR_RETURN(h.header_length,
                       number(line.substr(sizeof("Inference-Header-Content-Length")),
                              "Inference-Header-Content-Length"));
    } else if (iequals_prefix(line, "Connection")) {
      h.close = line.find("close") != std::string_view::npos;
    }
    pos = end;
  }
  if (!has_length) return Status(ErrorCode::kIncompatible, "the server's reply has no length");
  return h;
}

// What an error reply means to a caller of the client library.
Status http_error(int status, const std::string& body, const std::string& address) {
  const json j = json::parse(body, nullptr, false);
  std::string message = j.is_object() && j.contains("error") && j["error"].is_string()
                            ? j["error"].get<std::string>()
                            : "HTTP " + std::to_string(status);
  switch (status) {
    case 401:
      return Status(ErrorCode::kInvalidArgument, "unauthenticated: " + message);
    case 404:
      return Status(ErrorCode::kUnknownModel, message);
    case 413:
      return Status(ErrorCode::kTensorTooLarge, message);
    case 503:
      // Triton's habit, kept by the server: an expired timeout is 503 too.
      return Status(message.find("timed out") != std::string::npos ||
                            message.find("timeout") != std::string::npos
                        ? ErrorCode::kTimeout
                        : ErrorCode::kUnavailable,
                    message);
    case 500:
      return Status(ErrorCode::kModelError, message);
    default:
      return Status(status >= 400 && status < 500 ? ErrorCode::kInvalidArgument
                                                  : ErrorCode::kInternal,
                    "sliceserved at " + address + ": " + message);
  }
}

// Writes every byte of `parts` (a gathered write, resumed after partial writes).
Status send_all(int fd, std::vector<iovec> parts, uint64_t deadline_ns, const std::string& address) {
  size_t first = 0;
  while (first < parts.size()) {
    RETURN_IF_ERROR(wait_for(fd, POLLOUT, deadline_ns, address));
    msghdr msg{};
    msg.msg_iov = parts.data() + first;
    msg.msg_iovlen = std::min<size_t>(parts.size() - first, IOV_MAX);
    const ssize_t n = sendmsg(fd, &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n < 0) {
      if (errno == EAGAIN || errno == EINTR) continue;
      return gone(address, std::string("send: ") + strerror(errno));
    }
    size_t left = size_t(n);
    while (first < parts.size() && left >= parts[first].iov_len) left -= parts[first++].iov_len;
    if (left > 0) {
      parts[first].iov_base = static_cast<char*>(parts[first].iov_base) + left;
      parts[first].iov_len -= left;
    }
  }
  return Status::ok();
}

// Reads one reply: its head, then Content-Length bytes of body. `stale` is set when the
// connection was closed before any byte came (a keep-alive connection the server dropped).
Result<std::pair<ReplyHead, std::string>> read_reply(int fd, uint64_t deadline_ns,
                                                      const std::string& address, bool& stale) {
  std::string in;
  char buf[16384];
  size_t head_end = std::string::npos;
  stale = false;
  while (head_end == std::string::npos) {
    RETURN_IF_ERROR(wait_for(fd, POLLIN, deadline_ns, address));
    const ssize_t n = recv(fd, buf, sizeof buf, MSG_DONTWAIT);
    if (n == 0) {
      stale = in.empty();
      return gone(address, "the connection was closed");
    }
    if (n < 0) {
      if (errno == EAGAIN || errno == EINTR) continue;
      stale = in.empty() && errno == ECONNRESET;
      return gone(address, std::string("recv: ") + strerror(errno));
    }
    in.append(buf, size_t(n));
    head_end = in.find("\r\n\r\n");
    if (head_end == std::string::npos && in.size() > kMaxReplyHead) {
      return Status(ErrorCode::kIncompatible, "the server's reply head is too long");
    }
  }
  ASSIGN_OR_RETURN(ReplyHead head, parse_head(std::string_view(in).substr(0, head_end + 2)));
  std::string body = in.substr(head_end + 4);
  if (body.size() > head.content_length) {
    return Status(ErrorCode::kIncompatible, "the server sent more than one reply");
  }
  const size_t have = body.size();
  body.resize(head.content_length);
  size_t got = have;
  while (got < body.size()) {
    RETURN_IF_ERROR(wait_for(fd, POLLIN, deadline_ns, address));
    const ssize_t n = recv(fd, body.data() + got, body.size() - got, MSG_DONTWAIT);
    if (n == 0) return gone(address, "the connection was closed inside a reply");
    if (n < 0) {
      if (errno == EAGAIN || errno == EINTR) continue;
      return gone(address, std::string("recv: ") + strerror(errno));
    }
    got += size_t(n);
  }
  return std::pair{head, std::move(body)};
}

std::string authorization(const std::string& token) {
  return token.empty() ? std::string() : "Authorization: Bearer " + token + "\r\n";
}

}  // namespace

Client::HttpState::HttpState(std::string model, std::string host, uint16_t port,
                             std::string token, std::chrono::milliseconds timeout)
    : model_(std::move(model)),
      host_(std::move(host)),
      port_(port),
      address_(host_ + ":" + std::to_string(port)),
      token_(std::move(token)),
      default_timeout_(timeout) {}

Client::HttpState::~HttpState() {
  std::deque<Job> dropped;
  {
    std::lock_guard lock(mu_);
    stop_ = true;
    dropped.swap(jobs_);
  }
  cv_.notify_all();
  for (std::thread& t : senders_) t.join();
  for (Job& job : dropped) {
    job.done(Status(ErrorCode::kTimeout, "the client was closed before the request was sent"));
  }
  for (int fd : idle_) close(fd);
}

Result<std::unique_ptr<Client::HttpState>> Client::HttpState::connect(
    std::string_view model, std::string_view host, uint16_t port, const ConnectOptions& options) {
  std::string token = options.token;
  if (token.empty()) {
    if (const char* env = std::getenv("SLICESERVE_TOKEN")) token = env;
  }
  auto state = std::unique_ptr<HttpState>(new HttpState(
      std::string(model), std::string(host), port, std::move(token), options.default_timeout));
  // The model's tensors, from its KServe metadata.
  const std::string head = "GET /v2/models/" + state->model_ + " HTTP/1.1\r\nHost: " +
                           state->address_ + "\r\n" + authorization(state->token_) + "\r\n";
  ASSIGN_OR_RETURN(int fd, state->take_connection(true));
  const uint64_t deadline = deadline_after(options.default_timeout);
  Status sent = send_all(fd, {iovec{const_cast<char*>(head.data()), head.size()}}, deadline,
                         state->address_);
  bool stale = false;
  auto reply = sent.is_ok() ? read_reply(fd, deadline, state->address_, stale)
                            : Result<std::pair<ReplyHead, std::string>>(sent);
  if (!reply.is_ok()) {
    close(fd);
    return reply.status();
  }
  if (reply->first.status != 200) {
    close(fd);
    return http_error(reply->first.status, reply->second, state->address_);
  }
  state->give_back(fd);
  const json j = json::parse(reply->second, nullptr, false);
  auto tensors = [&](const char* key, shm::TensorSpec* out, uint32_t& n) -> Status {
    if (!j.is_object() || !j.contains(key) || !j[key].is_array() ||
        j[key].size() > shm::kMaxTensors) {
      return Status(ErrorCode::kIncompatible, "the server's model metadata has no usable '" +
                                                  std::string(key) + "'");
    }
    for (const json& t : j[key]) {
      if (!t.contains("name") || !t["name"].is_string() || !t.contains("datatype") ||
          !t["datatype"].is_string() || !t.contains("shape") || !t["shape"].is_array() ||
          t["shape"].empty()) {
        return Status(ErrorCode::kIncompatible, "the server's model metadata has a bad tensor");
      }
      ASSIGN_OR_RETURN(shm::DataType dtype,
                       shm::parse_data_type(t["datatype"].get<std::string>()));
      std::vector<int64_t> shape;
      for (size_t d = 1; d < t["shape"].size(); ++d) {  // [0] is the batch dimension
        if (!t["shape"][d].is_number_integer()) {
          return Status(ErrorCode::kIncompatible, "the server's model metadata has a bad shape");
        }
        shape.push_back(t["shape"][d].get<int64_t>());
      }
      ASSIGN_OR_RETURN(out[n], shm::make_tensor_spec(t["name"].get<std::string>(), dtype, shape));
      ++n;
    }
    return Status::ok();
  };
  RETURN_IF_ERROR(tensors("inputs", state->spec_.inputs, state->spec_.n_inputs));
  RETURN_IF_ERROR(tensors("outputs", state->spec_.outputs, state->spec_.n_outputs));
  return state;
}

Result<Client::HttpState::Encoded> Client::HttpState::encode(
    std::span<const Tensor> inputs, std::chrono::milliseconds timeout) const {
  // The checks the server makes too, so that a bad request fails before the network.
  if (inputs.size() != spec_.n_inputs) {
    return Status(ErrorCode::kUnknownTensor,
                  "model '" + model_ + "' takes " + std::to_string(spec_.n_inputs) +
                      " inputs, the request has " + std::to_string(inputs.size()));
  }
  Encoded e;
  json in = json::array();
  for (const Tensor& t : inputs) {
    const int index = spec_.find_input(t.name);
    if (index < 0) {
      return Status(ErrorCode::kUnknownTensor,
                    "model '" + model_ + "' has no input '" + t.name + "'");
    }
    const shm::TensorSpec& want = spec_.inputs[index];
    if (t.dtype != want.dtype) {
      return Status(ErrorCode::kWrongDtype, "input '" + t.name + "' has dtype " +
                                                std::string(shm::data_type_name(t.dtype)) +
                                                ", model '" + model_ + "' declares " +
                                                std::string(shm::data_type_name(want.dtype)));
    }
    if (t.data.size() != want.byte_size()) {
      return Status(ErrorCode::kTensorTooLarge,
                    "input '" + t.name + "' carries " + std::to_string(t.data.size()) +
                        " bytes, its declaration needs " + std::to_string(want.byte_size()));
    }
    std::vector<int64_t> shape{1};  // one item per request, as over shm and TCP
    shape.insert(shape.end(), want.dims, want.dims + want.ndims);
    in.push_back({{"name", t.name},
                  {"shape", shape},
                  {"datatype", shm::data_type_name(t.dtype)},
                  {"parameters", {{"binary_data_size", t.data.size()}}}});
    e.tensors.push_back(t.data);
  }
  json out = json::array();
  for (const shm::TensorSpec& t : spec_.output_specs()) {
    out.push_back({{"name", t.name_view()}, {"parameters", {{"binary_data", true}}}});
  }
  const json request = {
      {"inputs", std::move(in)},
      {"outputs", std::move(out)},
      {"parameters", {{"timeout", uint64_t(std::max<int64_t>(timeout.count(), 1)) * 1000}}}};
  const std::string header = request.dump();
  size_t data_bytes = 0;
  for (const auto& t : e.tensors) data_bytes += t.size();
  e.head = "POST /v2/models/" + model_ + "/infer HTTP/1.1\r\nHost: " + address_ + "\r\n" +
           authorization(token_) +
           "Content-Type: application/octet-stream\r\nInference-Header-Content-Length: " +
           std::to_string(header.size()) +
           "\r\nContent-Length: " + std::to_string(header.size() + data_bytes) + "\r\n\r\n" +
           header;
  return e;
}

Result<int> Client::HttpState::take_connection(bool fresh) {
  if (!fresh) {
    std::lock_guard lock(mu_);
    if (!idle_.empty()) {
      const int fd = idle_.back();
      idle_.pop_back();
      return fd;
    }
  }
  return dial(host_, port_, address_);
}

void Client::HttpState::give_back(int fd) {
  std::lock_guard lock(mu_);
  if (idle_.size() < kMaxConnections) {
    idle_.push_back(fd);
  } else {
    close(fd);
  }
}

Result<InferResult> Client::HttpState::round_trip(const Encoded& request, uint64_t deadline_ns) {
  std::vector<iovec> parts{iovec{const_cast<char*>(request.head.data()), request.head.size()}};
  for (const auto& t : request.tensors) {
    parts.push_back(iovec{const_cast<std::byte*>(t.data()), t.size()});
  }
  Result<std::pair<ReplyHead, std::string>> reply = Status(ErrorCode::kInternal, "not sent");
  for (int attempt = 0; attempt < 2; ++attempt) {
    // A pooled connection may have been closed by the server (idle limit): then once more on a
    // fresh one. Requests are pure, so a resend cannot do harm.
    ASSIGN_OR_RETURN(int fd, take_connection(attempt > 0));
    bool stale = false;
    Status sent = send_all(fd, parts, deadline_ns, address_);
    reply = sent.is_ok() ? read_reply(fd, deadline_ns, address_, stale)
                         : Result<std::pair<ReplyHead, std::string>>(sent);
    if (reply.is_ok() && !reply->first.close) {
      give_back(fd);
    } else {
      close(fd);
    }
    if (reply.is_ok() || !(stale || sent.code() == ErrorCode::kServerGone)) break;
  }
  if (!reply.is_ok()) return reply.status();
  const auto& [head, body] = *reply;
  if (head.status != 200) return http_error(head.status, body, address_);
  const size_t json_bytes = head.header_length.value_or(body.size());
  if (json_bytes > body.size()) {
    return Status(ErrorCode::kIncompatible, "the server's Inference-Header-Content-Length is "
                                            "beyond its body");
  }
  const json j = json::parse(std::string_view(body).substr(0, json_bytes), nullptr, false);
  if (!j.is_object() || !j.contains("outputs") || !j["outputs"].is_array()) {
    return Status(ErrorCode::kIncompatible, "the server's reply has no outputs");
  }
  InferResult result;
  result.batch_size = 1;
  result.outputs.resize(spec_.n_outputs);
  size_t offset = json_bytes;
  for (const json& o : j["outputs"]) {
    const int k = o.contains("name") && o["name"].is_string()
                      ? [&] {
                          for (uint32_t i = 0; i < spec_.n_outputs; ++i) {
                            if (spec_.outputs[i].name_view() == o["name"].get<std::string>()) {
                              return int(i);
                            }
                          }
                          return -1;
                        }()
                      : -1;
    const bool binary = o.contains("parameters") && o["parameters"].is_object() &&
                        o["parameters"].contains("binary_data_size") &&
                        o["parameters"]["binary_data_size"].is_number_unsigned();
    if (k < 0 || !binary) {
      return Status(ErrorCode::kIncompatible, "the server's reply has an output this client did "
                                              "not ask for, or not in binary");
    }
    const shm::TensorSpec& t = spec_.outputs[k];
    const uint64_t n = o["parameters"]["binary_data_size"].get<uint64_t>();
    if (n != t.byte_size() || offset + n > body.size()) {
      return Status(ErrorCode::kIncompatible, "the server's output '" + std::string(t.name_view()) +
                                                  "' has the wrong size");
    }
    OutputTensor& out = result.outputs[size_t(k)];
    out.name = std::string(t.name_view());
    out.dtype = t.dtype;
    out.shape.assign(t.dims, t.dims + t.ndims);
    const auto* p = reinterpret_cast<const std::byte*>(body.data() + offset);
    out.data.assign(p, p + n);
    offset += n;
  }
  for (const OutputTensor& out : result.outputs) {
    if (out.name.empty()) return Status(ErrorCode::kIncompatible, "the server left out an output");
  }
  return result;
}

Result<InferResult> Client::HttpState::infer(std::span<const Tensor> inputs,
                                             std::chrono::milliseconds timeout) {
  ASSIGN_OR_RETURN(Encoded e, encode(inputs, timeout));
  // A second past the server's own timeout, so that its answer (503) normally comes first.
  return round_trip(e, deadline_after(timeout + std::chrono::seconds(1)));
}

void Client::HttpState::infer_async(std::span<const Tensor> inputs, Callback done,
                                    std::chrono::milliseconds timeout) {
  Result<Encoded> e = encode(inputs, timeout);
  if (!e.is_ok()) return done(e.status());
  // The caller's bytes are only theirs until this returns: one copy.
  Job job{std::move(e).value(), deadline_after(timeout + std::chrono::seconds(1)), std::move(done)};
  size_t total = 0;
  for (const auto& t : job.request.tensors) total += t.size();
  job.request.owned.resize(total);
  size_t at = 0;
  for (auto& t : job.request.tensors) {
    std::memcpy(job.request.owned.data() + at, t.data(), t.size());
    t = std::span<const std::byte>(job.request.owned.data() + at, t.size());
    at += t.size();
  }
  {
    std::lock_guard lock(mu_);
    jobs_.push_back(std::move(job));
    if (busy_senders_ + jobs_.size() > senders_.size() && senders_.size() < kMaxConnections) {
      senders_.emplace_back([this] { run_sender(); });
    }
  }
  cv_.notify_one();
}

void Client::HttpState::run_sender() {
  std::unique_lock lock(mu_);
  for (;;) {
    cv_.wait(lock, [this] { return stop_ || !jobs_.empty(); });
    if (stop_) return;
    Job job = std::move(jobs_.front());
    jobs_.pop_front();
    ++busy_senders_;
    lock.unlock();
    Result<InferResult> r = shm::monotonic_ns() >= job.deadline_ns
                                ? Result<InferResult>(Status(ErrorCode::kTimeout,
                                                             "timed out before it could be sent"))
                                : round_trip(job.request, job.deadline_ns);
    job.done(std::move(r));
    lock.lock();
    --busy_senders_;
  }
}

}  // namespace sliceserve::client
