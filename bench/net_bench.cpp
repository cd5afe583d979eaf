// net_bench: the round trip of a small request through sliceserved's TCP front-end to a null
// model, and, in the same run, through a plain Asio TCP echo server that returns each frame as
// it came (the floor any TCP front-end sits on). Both sides get the same client: C connections,
// each one blocking request in flight (closed loop), the same frame bytes (an INT32 [4] infer
// frame). One JSON line:
//   {"bench":"tcp_overhead","sliceserve_p50_us":X,"echo_p50_us":Y,"sliceserve_rps":N,"echo_rps":M,...}
// Then, through the HTTP front-end (KServe v2) to a null model with an FP32 [E] tensor, the same
// closed loop with JSON tensors and with binary tensors (Inference-Header-Content-Length), same
// concurrency and tensor, one line each:
//   {"bench":"http","encoding":"json"|"binary","p50_us":X,"p99_us":Y,"rps":N,"tensor_bytes":B,...}
//
//   net_bench [--concurrency C] [--seconds S] [--http-elements E] [--io-poll-us U]
// (--io-poll-us: the daemon's [server] io_poll_us; the line says which, "default" when unset)
// sliceserved and sliceserve-worker are found next to this binary and run as child processes.

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <asio.hpp>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "sliceserve/client/wire.h"

namespace {

using Clock = std::chrono::steady_clock;
namespace wire = sliceserve::client::wire;

std::vector<std::byte> infer_frame() {
  wire::InferRequest r;
  r.model = "null";
  r.inputs.push_back({"x", sliceserve::shm::DataType::kInt32, {4}, 16});
  std::vector<std::byte> f = wire::frame(wire::FrameType::kInfer, 1, wire::encode(r), 16);
  f.resize(f.size() + 16, std::byte(1));
  return f;
}

int dial(uint16_t port) {
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (fd < 0 || connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
    if (fd >= 0) close(fd);
    return -1;
  }
  const int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  return fd;
}

bool read_all(int fd, std::byte* p, size_t n) {
  while (n > 0) {
    const ssize_t got = recv(fd, p, n, 0);
    if (got <= 0) return false;
    p += got;
    n -= size_t(got);
  }
  return true;
}

// One reply frame; false on a broken connection or an error frame.
bool read_frame(int fd, std::vector<std::byte>& body) {
  std::array<std::byte, wire::kHeaderBytes> head;
  if (!read_all(fd, head.data(), head.size())) return false;
  auto h = wire::decode_header(head, wire::Limits{});
  if (!h.is_ok()) return false;
  body.resize(size_t(h->header_len) + h->data_len);
  return read_all(fd, body.data(), body.size()) && h->type != wire::FrameType::kError;
}

bool send_all(int fd, std::span<const std::byte> bytes) {
  return send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL) == ssize_t(bytes.size());
}

struct Result {
  double p50_us = 0;
  double p99_us = 0;
  double rps = 0;
  uint64_t errors = 0;
};

// C closed-loop connections for `seconds` after a short warm-up. `setup` runs once per
// connection, `round` is one request and its reply; false from either is an error.
template <typename Setup, typename Round>
Result measure(uint16_t port, unsigned concurrency, double seconds, Setup setup, Round round) {
  std::vector<std::vector<uint64_t>> latencies(concurrency);
  std::atomic<uint64_t> errors{0};
  std::atomic<bool> measuring{false}, stop{false};
  std::vector<std::thread> threads;
  for (unsigned c = 0; c < concurrency; ++c) {
    threads.emplace_back([&, c] {
      const int fd = dial(port);
      if (fd < 0) {
        ++errors;
        return;
      }
      if (!setup(fd)) ++errors;
      while (!stop.load(std::memory_order_relaxed)) {
        const auto begin = Clock::now();
        if (!round(fd)) {
          ++errors;
          break;
        }
        if (measuring.load(std::memory_order_relaxed)) {
          latencies[c].push_back(uint64_t((Clock::now() - begin).count()));
        }
      }
      close(fd);
    });
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  measuring = true;
  std::this_thread::sleep_for(std::chrono::duration<double>(seconds));
  measuring = false;
  stop = true;
  for (auto& t : threads) t.join();
  std::vector<uint64_t> all;
  for (auto& l : latencies) all.insert(all.end(), l.begin(), l.end());
  std::sort(all.begin(), all.end());
  Result r;
  r.errors = errors;
  if (!all.empty()) {
    r.p50_us = double(all[all.size() / 2]) / 1e3;
    r.p99_us = double(all[std::min(all.size() - 1, all.size() * 99 / 100)]) / 1e3;
    r.rps = double(all.size()) / seconds;
  }
  return r;
}

Result load(uint16_t port, bool hello, unsigned concurrency, double seconds) {
  const std::vector<std::byte> request = infer_frame();
  return measure(
      port, concurrency, seconds,
      [&](int fd) {
        if (!hello) return true;
        std::vector<std::byte> body;
        const auto h = wire::frame(wire::FrameType::kHello, 0, wire::encode(wire::Hello{}));
        return send_all(fd, h) && read_frame(fd, body);
      },
      [&](int fd) {
        thread_local std::vector<std::byte> body;
        return send_all(fd, request) && read_frame(fd, body);
      });
}

// ---- HTTP ----

// An infer request for model "tensor" (FP32 [elements]): JSON data both ways, or binary.
std::string http_request(uint32_t elements, bool binary) {
  std::vector<float> x(elements);
  for (uint32_t i = 0; i < elements; ++i) x[i] = 0.001F * float(i % 1000) - 0.25F;
  std::string json = "{\"inputs\":[{\"name\":\"x\",\"shape\":[1," + std::to_string(elements) +
                     "],\"datatype\":\"FP32\"";
  std::string data;
  if (binary) {
    json += ",\"parameters\":{\"binary_data_size\":" + std::to_string(elements * 4) +
            "}}],\"outputs\":[{\"name\":\"y\",\"parameters\":{\"binary_data\":true}}]}";
    data.assign(reinterpret_cast<const char*>(x.data()), x.size() * 4);
  } else {
    json += ",\"data\":[";
    char num[32];
    for (uint32_t i = 0; i < elements; ++i) {
      std::snprintf(num, sizeof num, "%s%.9g", i ? "," : "", double(x[i]));
      json += num;
    }
    json += "]}]}";
  }
  std::string head = "POST /v2/models/tensor/infer HTTP/1.1\r\nHost: bench\r\nContent-Length: " +
                     std::to_string(json.size() + data.size()) + "\r\n";
  if (binary) head += "Inference-Header-Content-Length: " + std::to_string(json.size()) + "\r\n";
  return head + "\r\n" + json + data;
}

// Reads one HTTP reply (head, Content-Length bytes); true for a 200.
bool read_http_reply(int fd, std::string& in) {
  char buf[65536];
  size_t end;
  while ((end = in.find("\r\n\r\n")) == std::string::npos) {
    const ssize_t n = recv(fd, buf, sizeof buf, 0);
    if (n <= 0) return false;
    in.append(buf, size_t(n));
  }
  // At a line's start: Inference-Header-Content-Length ends the same way.
  const size_t at = in.find("\r\nContent-Length: ");
  if (at == std::string::npos || at > end) return false;
  const size_t total = end + 4 + std::strtoul(in.c_str() + at + 18, nullptr, 10);
  while (in.size() < total) {
    const ssize_t n = recv(fd, buf, sizeof buf, 0);
    if (n <= 0) return false;
    in.append(buf, size_t(n));
  }
  const bool ok = in.compare(0, 12, "HTTP/1.1 200") == 0;
  in.erase(0, total);
  return ok;
}

Result load_http(uint16_t port, const std::string& request, unsigned concurrency, double seconds) {
  return measure(
      port, concurrency, seconds, [](int) { return true; },
      [&](int fd) {
        thread_local std::string in;
        return send_all(fd, std::as_bytes(std::span(request))) && read_http_reply(fd, in);
      });
}

// The echo peer: reads a frame (header, metadata, data) and writes those bytes back.
class EchoServer {
 public:
  EchoServer() : acceptor_(ioc_, asio::ip::tcp::endpoint(asio::ip::address_v4::loopback(), 0)) {
    accept();
    thread_ = std::thread([this] { ioc_.run(); });
  }
  ~EchoServer() {
    ioc_.stop();
    thread_.join();
  }
  uint16_t port() const { return acceptor_.local_endpoint().port(); }

 private:
  struct Session : std::enable_shared_from_this<Session> {
    explicit Session(asio::ip::tcp::socket s) : socket(std::move(s)) {
      socket.set_option(asio::ip::tcp::no_delay(true));
    }
    void read() {
      asio::async_read(socket, asio::buffer(buf.data(), wire::kHeaderBytes),
                       [self = shared_from_this()](const asio::error_code& ec, size_t) {
                         if (ec) return;
                         auto h = wire::decode_header(
                             std::span(self->buf.data(), wire::kHeaderBytes), wire::Limits{});
                         if (!h.is_ok()) return;
                         const size_t body = size_t(h->header_len) + h->data_len;
                         self->buf.resize(wire::kHeaderBytes + body);
                         asio::async_read(self->socket,
                                          asio::buffer(self->buf.data() + wire::kHeaderBytes, body),
                                          [self](const asio::error_code& e, size_t) {
                                            if (!e) self->write();
                                          });
                       });
    }
    void write() {
      asio::async_write(socket, asio::buffer(buf),
                        [self = shared_from_this()](const asio::error_code& ec, size_t) {
                          if (ec) return;
                          self->buf.resize(wire::kHeaderBytes);
                          self->read();
                        });
    }
    asio::ip::tcp::socket socket;
    std::vector<std::byte> buf = std::vector<std::byte>(wire::kHeaderBytes);
  };
  void accept() {
    acceptor_.async_accept([this](const asio::error_code& ec, asio::ip::tcp::socket s) {
      if (!ec) std::make_shared<Session>(std::move(s))->read();
      accept();
    });
  }
  asio::io_context ioc_{1};
  asio::ip::tcp::acceptor acceptor_;
  std::thread thread_;
};

uint16_t free_port() {
  asio::io_context ioc;
  asio::ip::tcp::acceptor a(ioc, asio::ip::tcp::endpoint(asio::ip::address_v4::loopback(), 0));
  return a.local_endpoint().port();
}

std::string self_dir() {
  return std::filesystem::canonical("/proc/self/exe").parent_path().string();
}

}  // namespace

int main(int argc, char** argv) {
  unsigned concurrency = 4;
  double seconds = 5;
  uint32_t elements = 4096;
  int poll_us = -1;  // -1: the daemon's default
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--concurrency" && i + 1 < argc) {
      concurrency = unsigned(std::atoi(argv[++i]));
    } else if (arg == "--seconds" && i + 1 < argc) {
      seconds = std::atof(argv[++i]);
    } else if (arg == "--http-elements" && i + 1 < argc && std::atoi(argv[i + 1]) > 0) {
      elements = uint32_t(std::atoi(argv[++i]));
    } else if (arg == "--io-poll-us" && i + 1 < argc && std::atoi(argv[i + 1]) >= 0) {
      poll_us = std::atoi(argv[++i]);
    } else {
      std::fprintf(stderr,
                   "usage: net_bench [--concurrency C] [--seconds S] [--http-elements E] "
                   "[--io-poll-us U]\n");
      return 2;
    }
  }
  // A reader that goes away (`net_bench | head -1`) must not kill this process before it stops
  // its daemon: the write fails instead, and the run ends as usual.
  signal(SIGPIPE, SIG_IGN);
  const uint16_t port = free_port();
  uint16_t http_port = free_port();
  while (http_port == port) http_port = free_port();
  const std::string dir =
      std::filesystem::temp_directory_path() / ("sliceserve-net-bench-" + std::to_string(getpid()));
  std::filesystem::create_directories(dir);
  const std::string config = dir + "/net.toml";
  // One request per batch, no batching delay: the round trip is the front-end's and the ring's.
  std::ofstream(config) << "[server]\ninstance = \"netbench" << getpid()
                        << "\"\ntcp = \"127.0.0.1:" << port
                        << "\"\nhttp = \"127.0.0.1:" << http_port << "\"\n"
                        << (poll_us >= 0 ? "io_poll_us = " + std::to_string(poll_us) + "\n" : "")
                        << "[policy]\nenabled = false\n"
                        << "[[model]]\nname = \"null\"\nkind = \"null\"\nslice = 50\n"
                        << "max_batch = 1\nmax_queue_delay_us = 0\n"
                        << "inputs = [ { name = \"x\", dtype = \"INT32\", shape = [4] } ]\n"
                        << "outputs = [ { name = \"y\", dtype = \"INT32\", shape = [4] } ]\n"
                        << "[[model]]\nname = \"tensor\"\nkind = \"null\"\nslice = 20\n"
                        << "max_batch = 1\nmax_queue_delay_us = 0\n"
                        << "inputs = [ { name = \"x\", dtype = \"FP32\", shape = [" << elements
                        << "] } ]\noutputs = [ { name = \"y\", dtype = \"FP32\", shape = ["
                        << elements << "] } ]\n";
  const std::string daemon = self_dir() + "/sliceserved";
  const std::string log = dir + "/sliceserved.log";
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 1, log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_adddup2(&actions, 1, 2);
  std::vector<char*> args{const_cast<char*>(daemon.c_str()), const_cast<char*>("--config"),
                          const_cast<char*>(config.c_str()), nullptr};
  pid_t pid = -1;
  if (posix_spawn(&pid, daemon.c_str(), &actions, nullptr, args.data(), environ) != 0) {
    std::fprintf(stderr, "net_bench: cannot start %s\n", daemon.c_str());
    return 1;
  }
  posix_spawn_file_actions_destroy(&actions);
  // Ready once a request round-trips (the worker is serving).
  bool ready = false;
  for (int attempt = 0; attempt < 200 && !ready; ++attempt) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    const int fd = dial(port);
    if (fd < 0) continue;
    std::vector<std::byte> body;
    const auto h = wire::frame(wire::FrameType::kHello, 0, wire::encode(wire::Hello{}));
    ready = send_all(fd, h) && read_frame(fd, body) && send_all(fd, infer_frame()) &&
            read_frame(fd, body);
    close(fd);
  }
  int rc = 0;
  if (!ready) {
    std::fprintf(stderr, "net_bench: sliceserved did not serve within 20 s; see %s\n", log.c_str());
    rc = 1;
  } else {
    const Result s = load(port, true, concurrency, seconds);
    Result e;
    {
      EchoServer echo;
      e = load(echo.port(), false, concurrency, seconds);
    }
    std::printf(
        "{\"bench\":\"tcp_overhead\",\"sliceserve_p50_us\":%.1f,\"echo_p50_us\":%.1f,"
        "\"sliceserve_rps\":%.0f,\"echo_rps\":%.0f,\"sliceserve_p99_us\":%.1f,"
        "\"echo_p99_us\":%.1f,\"ratio_p50\":%.2f,\"concurrency\":%u,\"seconds\":%.1f,"
        "\"io_poll_us\":%s,\"errors\":%llu}\n",
        s.p50_us, e.p50_us, s.rps, e.rps, s.p99_us, e.p99_us,
        e.p50_us > 0 ? s.p50_us / e.p50_us : 0.0, concurrency, seconds,
        poll_us >= 0 ? std::to_string(poll_us).c_str() : "\"default\"",
        static_cast<unsigned long long>(s.errors + e.errors));
    rc = s.errors + e.errors == 0 ? 0 : 1;
    for (const bool binary : {false, true}) {
      const std::string request = http_request(elements, binary);
      const Result h = load_http(http_port, request, concurrency, seconds);
      std::printf(
          "{\"bench\":\"http\",\"encoding\":\"%s\",\"p50_us\":%.1f,\"p99_us\":%.1f,"
          "\"rps\":%.0f,\"tensor_bytes\":%u,\"request_bytes\":%zu,\"concurrency\":%u,"
          "\"seconds\":%.1f,\"errors\":%llu}\n",
          binary ? "binary" : "json", h.p50_us, h.p99_us, h.rps, elements * 4, request.size(),
          concurrency, seconds, static_cast<unsigned long long>(h.errors));
      std::fflush(stdout);
      if (h.errors != 0) rc = 1;
    }
  }
  kill(pid, SIGTERM);
  waitpid(pid, nullptr, 0);
  std::filesystem::remove_all(dir);
  return rc;
}
