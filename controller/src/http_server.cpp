#include "sliceserve/controller/http_server.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <boost/asio.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <charconv>
#include <chrono>
#include <nlohmann/json.hpp>
#include <optional>
#include <thread>

#include "sliceserve/controller/listen_address.h"
#include "sliceserve/controller/stats_window.h"
#include "sliceserve/shm/layout.h"
#include "sliceserve/shm/segment.h"

#ifndef SLICESERVE_VERSION
#define SLICESERVE_VERSION "unknown"
#endif

namespace sliceserve::controller {
namespace {

namespace beast = boost::beast;
namespace http = beast::http;
namespace net = boost::asio;
using tcp = net::ip::tcp;
using Request = http::request<http::string_body>;
using Response = http::response<http::string_body>;

Status net_status(std::string_view what, const beast::error_code& ec) {
  return Status(ErrorCode::kUnavailable, std::string(what) + ": " + ec.message());
}

// Compares without an early exit, so the time taken says nothing about where a guess is wrong.
bool same_token(std::string_view a, std::string_view b) {
  unsigned char diff = a.size() == b.size() ? 0 : 1;
  for (size_t i = 0; i < a.size(); ++i) {
    diff |= static_cast<unsigned char>(a[i] ^ b[i % std::max<size_t>(b.size(), 1)]);
  }
  return diff == 0;
}

Response empty_response(http::status status) {
  Response res{status, 11};
  res.set(http::field::server, "sliceserve");
  return res;
}

Response json_response(http::status status, const nlohmann::json& body) {
  Response res = empty_response(status);
  res.set(http::field::content_type, "application/json");
  res.body() = body.dump();
  return res;
}

Response error_response(http::status status, std::string message) {
  return json_response(status, {{"error", std::move(message)}});
}

Response method_not_allowed(std::string_view allowed) {
  Response res = error_response(http::status::method_not_allowed,
                                "method not allowed; this endpoint takes " + std::string(allowed));
  res.set(http::field::allow, std::string(allowed));
  return res;
}

nlohmann::json tensors_json(const std::vector<TensorConfig>& tensors) {
  nlohmann::json out = nlohmann::json::array();
  for (const TensorConfig& t : tensors) {
    std::vector<int64_t> shape{-1};  // the batch dimension
    shape.insert(shape.end(), t.shape.begin(), t.shape.end());
    out.push_back({{"name", t.name}, {"datatype", shm::data_type_name(t.dtype)}, {"shape", shape}});
  }
  return out;
}

// A worker's cumulative counters, of one epoch.
struct Totals {
  uint64_t completed = 0, failed = 0, batches = 0, queue_ns = 0, compute_ns = 0;
  Totals& operator+=(const Totals& o) {
    completed += o.completed;
    failed += o.failed;
    batches += o.batches;
    queue_ns += o.queue_ns;
    compute_ns += o.compute_ns;
    return *this;
  }
};

// The counters of the worker of `epoch`; none while its stats block is not its own.
std::optional<Totals> read_totals(const shm::Segment& segment, uint64_t epoch) {
  if (epoch == 0) return std::nullopt;
  const shm::WorkerStats& st = segment.stats_block(epoch);
  // Acquire pairs with the worker's publish_state release: the block's fields are this epoch's.
  if (st.epoch.load(std::memory_order_acquire) != epoch) return std::nullopt;
  const StatsSample s = read_sample(segment, epoch, 0);  // what the controller's window reads
  return Totals{s.completed, s.failed, s.batches, st.queue_ns.load(std::memory_order_relaxed),
                st.compute_ns.load(std::memory_order_relaxed)};
}

struct ModelState {
  HttpModel info;
  shm::Segment segment;
  // Counters restart with every worker epoch; these stitch epochs together so the exported
  // counters never go down. Touched on the I/O thread only.
  uint64_t epoch = 0;
  Totals base;  // finished epochs
  Totals last;  // the current epoch, as last read

  Totals totals() {
    const uint64_t now = segment.header().owner_epoch.load(std::memory_order_acquire);
    if (now != epoch) {
      if (epoch != 0) {
        // A retired epoch keeps its stats block for two more epochs: its final counts, or what
        // was seen of it last when the block has been reused since.
        base += read_totals(segment, epoch).value_or(last);
      }
      epoch = now;
      last = {};
    }
    if (auto t = read_totals(segment, epoch)) last = *t;
    Totals sum = base;
    return sum += last;
  }

  bool ready() const {
    const uint64_t e = segment.header().owner_epoch.load(std::memory_order_acquire);
    if (e == 0) return false;
    const shm::WorkerStats& st = segment.stats_block(e);
    // Acquire pairs with publish_state's release, as in read_totals.
    return st.epoch.load(std::memory_order_acquire) == e &&
           st.state.load(std::memory_order_relaxed) == uint32_t(shm::WorkerState::kServing);
  }
};

}  // namespace

struct HttpServer::Impl {
  HttpServerOptions options;
  std::vector<std::unique_ptr<ModelState>> models;
  uint32_t connections = 0;  // I/O thread only
  // Destroyed before the members above: pending handlers hold sessions that refer to them.
  net::io_context ioc{1};
  std::optional<tcp::acceptor> acceptor;
  std::thread thread;

  ~Impl() {
    ioc.stop();
    if (thread.joinable()) thread.join();
  }

  void accept();
  Response handle(const Request& req);
  ModelState* find(std::string_view name) {
    for (auto& m : models) {
      if (m->info.name == name) return m.get();
    }
    return nullptr;
  }
  std::string metrics();
};

namespace {

class Session : public std::enable_shared_from_this<Session> {
 public:
  Session(HttpServer::Impl& server, tcp::socket socket)
      : server_(server),
        stream_(std::move(socket)),
        // Room for one request at the limits; the parser's limits stop a larger one first.
        buffer_(server.options.max_header_bytes + server.options.max_body_bytes + 4096) {
    ++server_.connections;
  }
  ~Session() { --server_.connections; }

  void start(bool full) {
    if (full) {
      send(error_response(http::status::service_unavailable,
                          "the server has its " + std::to_string(server_.options.max_connections) +
                              " connections, the limit"),
           true);
      return;
    }
    read();
  }

 private:
  void read() {
    parser_.emplace();
    parser_->header_limit(server_.options.max_header_bytes);
    parser_->body_limit(server_.options.max_body_bytes);
    stream_.expires_after(std::chrono::milliseconds(server_.options.idle_timeout_ms));
    http::async_read(
        stream_, buffer_, *parser_,
        [self = shared_from_this()](beast::error_code ec, size_t) { self->on_read(ec); });
  }

  void on_read(beast::error_code ec) {
    if (ec == http::error::end_of_stream || ec == beast::error::timeout ||
        ec == net::error::operation_aborted || ec == net::error::connection_reset) {
      close();
      return;
    }
    if (ec) {
      // Malformed or over a limit: answered, then closed, since the rest of the stream cannot
      // be framed any more.
      http::status status = http::status::bad_request;
      std::string what = "malformed request: " + ec.message();
      if (ec == http::error::header_limit ||
          ec == beast::error_code(http::error::buffer_overflow)) {
        status = http::status::request_header_fields_too_large;
        what = "request line and headers over " + std::to_string(server_.options.max_header_bytes) +
               " bytes";
      } else if (ec == http::error::body_limit) {
        status = http::status::payload_too_large;
        what = "request body over " + std::to_string(server_.options.max_body_bytes) + " bytes";
      }
      send(error_response(status, what), true);
      return;
    }
    const Request& req = parser_->get();
    Response res = server_.handle(req);
    send(std::move(res), !req.keep_alive());
  }

  void send(Response res, bool close_after) {
    res_ = std::move(res);
    res_.keep_alive(!close_after);
    res_.prepare_payload();
    stream_.expires_after(std::chrono::milliseconds(server_.options.idle_timeout_ms));
    http::async_write(stream_, res_,
                      [self = shared_from_this(), close_after](beast::error_code ec, size_t) {
                        if (ec || close_after) {
                          self->close();
                        } else {
                          self->read();
                        }
                      });
  }

  void close() {
    beast::error_code ignored;
    stream_.socket().shutdown(tcp::socket::shutdown_send, ignored);
    stream_.close();
  }

  HttpServer::Impl& server_;
  beast::tcp_stream stream_;
  beast::flat_buffer buffer_;
  std::optional<http::request_parser<http::string_body>> parser_;
  Response res_;
};

}  // namespace

void HttpServer::Impl::accept() {
  acceptor->async_accept(ioc, [this](beast::error_code ec, tcp::socket socket) {
    if (ec == net::error::operation_aborted) return;
    if (ec) {
      // Out of descriptors and the like: log, go on accepting; the connection is lost.
      spdlog::warn("http: accept: {}", ec.message());
    } else {
      const bool full = connections >= options.max_connections;
      std::make_shared<Session>(*this, std::move(socket))->start(full);
    }
    accept();
  });
}

Response HttpServer::Impl::handle(const Request& req) {
  if (!options.token.empty()) {
    const beast::string_view field = req[http::field::authorization];
    const std::string_view auth(field.data(), field.size());
    constexpr std::string_view kBearer = "Bearer ";
    if (auth.substr(0, kBearer.size()) != kBearer ||
        !same_token(auth.substr(kBearer.size()), options.token)) {
      Response res = error_response(http::status::unauthorized,
                                    "this server needs 'Authorization: Bearer <token>'");
      res.set(http::field::www_authenticate, "Bearer");
      return res;
    }
  }
  std::string_view path(req.target().data(), req.target().size());
  path = path.substr(0, path.find('?'));
  const bool get = req.method() == http::verb::get;

  if (path == "/v2") {
    if (!get) return method_not_allowed("GET");
    return json_response(http::status::ok, {{"name", "sliceserve"},
                                            {"version", SLICESERVE_VERSION},
                                            {"extensions", nlohmann::json::array()}});
  }
  if (path == "/v2/health/live") {
    if (!get) return method_not_allowed("GET");
    return empty_response(http::status::ok);
  }
  if (path == "/v2/health/ready") {
    if (!get) return method_not_allowed("GET");
    const bool all = std::all_of(models.begin(), models.end(), [](auto& m) { return m->ready(); });
    // Triton's habit: 400 while not ready.
    return empty_response(all ? http::status::ok : http::status::bad_request);
  }
  if (path == "/metrics") {
    if (!get) return method_not_allowed("GET");
    Response res = empty_response(http::status::ok);
    res.set(http::field::content_type, "text/plain; version=0.0.4; charset=utf-8");
    res.body() = metrics();
    return res;
  }
  constexpr std::string_view kModels = "/v2/models/";
  if (path.substr(0, kModels.size()) == kModels) {
    std::string_view rest = path.substr(kModels.size());
    const size_t slash = rest.find('/');
    const std::string_view name = rest.substr(0, slash);
    const std::string_view action =
        slash == std::string_view::npos ? std::string_view() : rest.substr(slash + 1);
    ModelState* m = find(name);
    if (m == nullptr) {
      return error_response(http::status::not_found, "unknown model '" + std::string(name) + "'");
    }
    if (action.empty()) {
      if (!get) return method_not_allowed("GET");
      return json_response(http::status::ok, {{"name", m->info.name},
                                              {"versions", {"1"}},
                                              {"platform", m->info.kind},
                                              {"inputs", tensors_json(m->info.inputs)},
                                              {"outputs", tensors_json(m->info.outputs)}});
    }
    if (action == "ready") {
      if (!get) return method_not_allowed("GET");
      return empty_response(m->ready() ? http::status::ok : http::status::bad_request);
    }
    if (action == "infer") {
      if (req.method() != http::verb::post) return method_not_allowed("POST");
      return error_response(http::status::not_implemented,
                            "inference over HTTP is not implemented yet; use the TCP front-end "
                            "(docs/protocol.md) or shared memory");
    }
  }
  return error_response(http::status::not_found, "no endpoint " + std::string(path));
}

std::string HttpServer::Impl::metrics() {
  struct Row {
    std::string labels;
    Totals t;
    uint32_t slice = 0, slo_ms = 0, resizes = 0;
    uint64_t epoch = 0;
  };
  std::vector<Row> rows;
  for (auto& m : models) {
    Row r;
    r.labels = "{model=\"" + m->info.name + "\",version=\"1\"}";  // names are [A-Za-z0-9_-]
    r.t = m->totals();
    // The controller's summary block, as `slicectl status` reads it.
    const shm::ControllerSummary& s = m->segment.header().summary;
    r.slice = s.slice_percent.load(std::memory_order_relaxed);
    r.slo_ms = s.slo_ms.load(std::memory_order_relaxed);
    r.resizes = s.resizes.load(std::memory_order_relaxed);
    r.epoch = m->epoch;
    rows.push_back(std::move(r));
  }
  std::string out;
  auto family = [&](const char* name, const char* type, const char* help, auto value) {
    out += fmt::format("# HELP {} {}\n# TYPE {} {}\n", name, help, name, type);
    for (const Row& r : rows) out += fmt::format("{}{} {}\n", name, r.labels, value(r));
  };
  family("nv_inference_request_success", "counter",
         "Number of successful inference requests, all batch sizes",
         [](const Row& r) { return r.t.completed; });
  family("nv_inference_request_failure", "counter",
         "Number of failed inference requests, all batch sizes",
         [](const Row& r) { return r.t.failed; });
  family("nv_inference_count", "counter",
         "Number of inferences performed (one per request: a request is one item)",
         [](const Row& r) { return r.t.completed; });
  family("nv_inference_exec_count", "counter", "Number of model executions performed (batches)",
         [](const Row& r) { return r.t.batches; });
  family("nv_inference_request_duration_us", "counter",
         "Cumulative inference request duration in microseconds (queue plus compute)",
         [](const Row& r) { return (r.t.queue_ns + r.t.compute_ns) / 1000; });
  family("nv_inference_queue_duration_us", "counter",
         "Cumulative inference queuing duration in microseconds",
         [](const Row& r) { return r.t.queue_ns / 1000; });
  family("nv_inference_compute_infer_duration_us", "counter",
         "Cumulative compute inference duration in microseconds",
         [](const Row& r) { return r.t.compute_ns / 1000; });
  family("sliceserve_slice_percent", "gauge", "Share of the device the model holds, percent",
         [](const Row& r) { return r.slice; });
  family("sliceserve_epoch", "gauge", "Worker epoch that owns the model's segment",
         [](const Row& r) { return r.epoch; });
  family("sliceserve_resizes_total", "counter", "Completed slice resizes",
         [](const Row& r) { return r.resizes; });
  family("sliceserve_slo_ms", "gauge", "The model's p99 latency objective, milliseconds",
         [](const Row& r) { return r.slo_ms; });
  return out;
}

HttpServer::HttpServer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
HttpServer::~HttpServer() = default;

uint16_t HttpServer::port() const {
  beast::error_code ec;
  const tcp::endpoint e = impl_->acceptor->local_endpoint(ec);
  return ec ? 0 : e.port();
}

Result<std::unique_ptr<HttpServer>> HttpServer::start(const HttpServerOptions& options) {
  ASSIGN_OR_RETURN(auto host_port, checked_listen_address(options.address, options.token));
  const auto& [host, port] = host_port;
  auto impl = std::make_unique<Impl>();
  impl->options = options;
  for (const HttpModel& m : options.models) {
    ASSIGN_OR_RETURN(std::string name, shm::segment_name(options.instance, m.name));
    Result<shm::Segment> segment = shm::Segment::attach(name);
    if (!segment.is_ok()) return segment.status().with_context("HTTP front-end");
    impl->models.push_back(
        std::make_unique<ModelState>(ModelState{m, std::move(segment).value(), 0, {}, {}}));
  }

  beast::error_code ec;
  tcp::resolver resolver(impl->ioc);
  const auto found = resolver.resolve(host, std::to_string(port), ec);
  if (ec || found.empty()) return net_status("HTTP front-end: resolving " + host, ec);
  const tcp::endpoint endpoint = *found.begin();
  tcp::acceptor& acceptor = impl->acceptor.emplace(impl->ioc);
  if (acceptor.open(endpoint.protocol(), ec); ec) {
    return net_status("HTTP front-end: opening a socket for " + options.address, ec);
  }
  // A restarted daemon binds again at once, past the old connections' TIME_WAIT.
  if (acceptor.set_option(net::socket_base::reuse_address(true), ec); ec) {
    return net_status("HTTP front-end: SO_REUSEADDR", ec);
  }
  if (acceptor.bind(endpoint, ec); ec) {
    return net_status("HTTP front-end: binding " + options.address, ec);
  }
  if (acceptor.listen(net::socket_base::max_listen_connections, ec); ec) {
    return net_status("HTTP front-end: listening on " + options.address, ec);
  }
  impl->accept();
  impl->thread = std::thread([io = &impl->ioc] {
    // A handler that throws (only allocation can) must not end the thread silently.
    for (;;) {
      try {
        io->run();
        return;
      } catch (const std::exception& e) {
        spdlog::error("http: I/O thread: {}", e.what());
      }
    }
  });
  auto server = std::unique_ptr<HttpServer>(new HttpServer(std::move(impl)));
  spdlog::info("http: serving {} models on {} (port {}{})", options.models.size(), options.address,
               server->port(), options.token.empty() ? "" : ", token required");
  return server;
}

}  // namespace sliceserve::controller
