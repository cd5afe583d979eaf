#include "sliceserve/controller/http_server.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <boost/asio.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <charconv>
#include <chrono>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <thread>
#include <unordered_map>

#include "http_infer.h"
#include "polling_loop.h"
#include "sliceserve/client/client.h"
#include "sliceserve/controller/http_admin.h"
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
using Clock = std::chrono::steady_clock;

// How often an infer request that found its model's lane short of slots looks again.
constexpr auto kSlotRetry = std::chrono::microseconds(200);
// Bodies read to be dropped (a refused request's), and JSON of unknown length, go in pieces.
constexpr size_t kBodyChunk = 64 * 1024;
constexpr const char* kHeaderLengthField = "Inference-Header-Content-Length";
// JSON headers from this size on are parsed on the parse pool, off the I/O thread, while other
// connections are open: parsing their numbers is most of such a request's CPU, and the I/O thread
// serves the others meanwhile. Smaller ones, and a lone connection's, are parsed in place (the
// two thread hops cost latency and gain nothing there).
constexpr size_t kPoolParseBytes = 16 * 1024;

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
  // Inference: one lane of the model, used from the I/O thread only (completions arrive on its
  // completion thread and are posted back).
  client::Client client;
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

// A model's segment and client, as the front-end serves it.
Result<std::shared_ptr<ModelState>> open_model(const std::string& instance, const HttpModel& m) {
  ASSIGN_OR_RETURN(std::string name, shm::segment_name(instance, m.name));
  Result<shm::Segment> segment = shm::Segment::attach(name);
  if (!segment.is_ok()) return segment.status().with_context("HTTP front-end");
  client::ConnectOptions connect;
  connect.instance = instance;
  connect.spin = std::chrono::microseconds(0);  // the completion thread waits on the bell
  Result<client::Client> c = client::Client::connect(m.name, connect);
  if (!c.is_ok()) return c.status().with_context("HTTP front-end");
  return std::make_shared<ModelState>(
      ModelState{m, std::move(segment).value(), std::move(c).value(), 0, {}, {}});
}

}  // namespace

struct HttpServer::Impl {
  HttpServerOptions options;
  // Before `ioc`: destroyed after it, so a SlotResult in a pending handler still finds its
  // Client when the io_context destroys that handler. A session shares its request's model, so
  // an unloaded one lives on until its last request is answered, then goes (on the I/O thread:
  // completion threads hold sessions only by weak reference).
  std::vector<std::shared_ptr<ModelState>> models;
  uint32_t connections = 0;  // I/O thread only
  uint32_t with_workers = 0;  // items submitted whose answer handler has not run; I/O thread only
  std::mutex gate_mu;
  bool gate_open = true;  // false once the I/O thread is gone: completions are dropped
  // Destroyed before the members above: pending handlers hold sessions that refer to them.
  net::io_context ioc{1};
  // Large JSON bodies are parsed here (kPoolParseBytes); results are posted back to `ioc`.
  net::thread_pool parse_pool{std::clamp(std::thread::hardware_concurrency() / 2, 1u, 4u)};
  std::optional<tcp::acceptor> acceptor;
  // Sessions whose request is with a model: nothing else holds them while no I/O is pending
  // (completions find them by weak reference). I/O thread only, until the destructor.
  std::unordered_map<const void*, std::shared_ptr<void>> in_flight;
  std::thread thread;

  ~Impl() {
    ioc.stop();
    if (thread.joinable()) thread.join();
    {
      std::lock_guard lock(gate_mu);
      gate_open = false;
    }
    parse_pool.join();  // a parse still running posts into the closed gate: dropped
    in_flight.clear();  // while the io_context their sockets belong to still exists
  }

  void accept();
  // The token check, for every request; a 401 to send back, or nothing.
  std::optional<Response> check_token(const http::request_header<>& req) const;
  Response handle(const Request& req);
  // The one lookup of a model by name (the model list may change while serving).
  std::shared_ptr<ModelState> find(std::string_view name) {
    for (auto& m : models) {
      if (m->info.name == name) return m;
    }
    return nullptr;
  }
  std::string metrics();
  // From a client's completion thread onto the I/O thread.
  template <typename Handler>
  void post(Handler&& handler) {
    std::lock_guard lock(gate_mu);
    if (gate_open) net::post(ioc, std::forward<Handler>(handler));
  }
};

namespace {

// The path's model name when the request is `POST /v2/models/{m}/infer`.
std::optional<std::string_view> infer_target(const http::request_header<>& req) {
  if (req.method() != http::verb::post) return std::nullopt;
  std::string_view path(req.target().data(), req.target().size());
  path = path.substr(0, path.find('?'));
  constexpr std::string_view kPrefix = "/v2/models/";
  constexpr std::string_view kSuffix = "/infer";
  if (path.size() <= kPrefix.size() + kSuffix.size() || !path.starts_with(kPrefix) ||
      !path.ends_with(kSuffix)) {
    return std::nullopt;
  }
  const std::string_view name =
      path.substr(kPrefix.size(), path.size() - kPrefix.size() - kSuffix.size());
  if (name.find('/') != std::string_view::npos) return std::nullopt;
  return name;
}

// What a client error means over HTTP. Triton's mapping (HttpCodeFromError): UNAVAILABLE is
// 503, which is what it reports an expired request timeout as; internal errors 500; else 400.
http::status http_status(ErrorCode code) {
  switch (code) {
    case ErrorCode::kTimeout:
    case ErrorCode::kBusy:
    case ErrorCode::kServerGone:
    case ErrorCode::kUnavailable:
      return http::status::service_unavailable;
    case ErrorCode::kModelError:
    case ErrorCode::kInternal:
      return http::status::internal_server_error;
    default:
      return http::status::bad_request;
  }
}

class Session : public std::enable_shared_from_this<Session> {
 public:
  Session(HttpServer::Impl& server, tcp::socket socket)
      : server_(server),
        stream_(std::move(socket)),
        retry_timer_(server.ioc),
        // Room for a request line and headers at the limit; bodies pass through in pieces.
        buffer_(server.options.max_header_bytes + server.options.max_body_bytes + kBodyChunk) {
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
    beast::error_code ignored;  // latency-bound replies; without it the option is only slower
    stream_.socket().set_option(tcp::no_delay(true), ignored);
    read();
  }

 private:
  // One request at a time: the next is read once this one's reply is written, so pipelined
  // requests are answered in order.
  void read() {
    body_.reset();
    infer_.reset();
    head_.emplace();
    head_->header_limit(server_.options.max_header_bytes);
    // Checked against Content-Length as the header completes: the larger of the two limits here,
    // the route's own once the route is known.
    head_->body_limit(
        std::max<uint64_t>(server_.options.max_body_bytes, server_.options.max_infer_body_bytes));
    stream_.expires_after(std::chrono::milliseconds(server_.options.idle_timeout_ms));
    http::async_read_header(
        stream_, buffer_, *head_,
        [self = shared_from_this()](beast::error_code ec, size_t) { self->on_header(ec); });
  }

  // True when the stream is done with (closed, or answered and closing).
  bool read_failed(beast::error_code ec, uint64_t body_limit) {
    if (ec == http::error::end_of_stream || ec == beast::error::timeout ||
        ec == net::error::operation_aborted || ec == net::error::connection_reset) {
      close();
      return true;
    }
    if (!ec) return false;
    // Malformed or over a limit: answered, then closed, since the rest of the stream cannot be
    // framed any more.
    http::status status = http::status::bad_request;
    std::string what = "malformed request: " + ec.message();
    if (ec == http::error::header_limit || ec == beast::error_code(http::error::buffer_overflow)) {
      status = http::status::request_header_fields_too_large;
      what = "request line and headers over " + std::to_string(server_.options.max_header_bytes) +
             " bytes";
    } else if (ec == http::error::body_limit) {
      status = http::status::payload_too_large;
      what = "request body over " + std::to_string(body_limit) + " bytes";
    } else if (ec == http::error::partial_message) {
      what = "the request ended before its body did (truncated)";
    }
    send(error_response(status, what), true);
    return true;
  }

  void on_header(beast::error_code ec) {
    if (read_failed(ec, server_.options.max_infer_body_bytes)) return;
    keep_alive_ = head_->get().keep_alive();
    if (auto model = infer_target(head_->get())) return start_infer(*model);
    const uint64_t limit = server_.options.max_body_bytes;
    if (head_->content_length().value_or(0) > limit) {
      send(error_response(http::status::payload_too_large,
                          "request body over " + std::to_string(limit) + " bytes"),
           true);
      return;
    }
    body_.emplace(std::move(*head_));
    body_->body_limit(limit);  // chunked bodies: checked chunk by chunk
    http::async_read(stream_, buffer_, *body_,
                     [self = shared_from_this()](beast::error_code e, size_t) {
                       if (self->read_failed(e, self->server_.options.max_body_bytes)) return;
                       const Request& req = self->body_->get();
                       if (is_admin(req)) return self->admin(req);
                       self->send(self->server_.handle(req), !req.keep_alive());
                     });
  }

  // ---- /v2/admin/... (http_admin.h) ----

  static bool is_admin(const Request& req) {
    const std::string_view target(req.target().data(), req.target().size());
    return target.starts_with(kAdminPrefix);
  }

  // Answered on the daemon's loop; the reply comes back to the I/O thread through post().
  void admin(const Request& req) {
    const bool close_after = !req.keep_alive();
    if (auto denied = server_.check_token(req)) return send(std::move(*denied), close_after);
    std::string_view path(req.target().data(), req.target().size());
    path = path.substr(0, path.find('?'));
    const std::string_view method(req.method_string().data(), req.method_string().size());
    AdminRoute route = admin_route(method, path, req.body());
    if (!route.request) {
      Response res = error_response(http::status(route.status), route.error);
      if (!route.allow.empty()) res.set(http::field::allow, route.allow);
      return send(std::move(res), close_after);
    }
    if (!server_.options.admin) {
      return send(error_response(http::status::service_unavailable, "no admin API on this server"),
                  close_after);
    }
    server_.in_flight.emplace(this, shared_from_this());
    std::weak_ptr<Session> weak = weak_from_this();
    HttpServer::Impl* server = &server_;
    server_.options.admin(std::move(*route.request), [weak, server, close_after](nlohmann::json r) {
      // On the daemon's loop thread (or this one, when the daemon is stopping).
      server->post([weak, server, close_after, reply = std::move(r)] {
        auto self = weak.lock();
        if (!self) return;
        server->in_flight.erase(self.get());
        nlohmann::json body = reply;
        const unsigned status = admin_reply_status(reply);
        if (status != 200) body = {{"error", reply.value("error", "")}, {"code", reply.value("code", "")}};
        body.erase("ok");
        self->send(json_response(http::status(status), body), close_after);
      });
    });
  }

  // ---- POST /v2/models/{m}/infer ----

  void start_infer(std::string_view model_name) {
    const http::request_header<> header = head_->get();  // a copy: the parser moves on
    std::optional<uint64_t> body_len;
    if (const auto n = head_->content_length()) body_len = *n;
    infer_.emplace(std::move(*head_));
    infer_->body_limit(server_.options.max_infer_body_bytes);  // chunked bodies
    // A refused request's body is not read on: the connection closes after the reply (an
    // unauthenticated client's bytes are not worth reading, and a client waiting on
    // "Expect: 100-continue" would not send them).
    expect_continue_ = beast::iequals(header[http::field::expect], "100-continue");
    if (auto denied = server_.check_token(header)) return send(std::move(*denied), true);
    model_ = server_.find(model_name);
    if (model_ == nullptr) {
      return refuse(http::status::not_found, "unknown model '" + std::string(model_name) + "'");
    }
    if (!model_->ready()) {
      return refuse(http::status::service_unavailable,
                    "model '" + model_->info.name + "' has no serving worker (yet)");
    }
    json_len_.reset();
    continue_.reset();
    const auto field = header.find(kHeaderLengthField);
    if (field != header.end()) {
      const std::string_view text(field->value().data(), field->value().size());
      uint64_t n = 0;
      const auto [end, err] = std::from_chars(text.data(), text.data() + text.size(), n);
      if (err != std::errc() || end != text.data() + text.size() || n == 0) {
        return refuse(http::status::bad_request,
                      std::string(kHeaderLengthField) + " must be a positive number of bytes");
      }
      if (body_len && n > *body_len) {
        return refuse(http::status::bad_request,
                      std::string(kHeaderLengthField) + " " + std::to_string(n) +
                          " is more than the body's " + std::to_string(*body_len) + " bytes");
      }
      json_len_ = n;
    } else if (body_len) {
      json_len_ = *body_len;
    }
    // Chunked with a binary part: its length is known only at its end (read_binary checks).
    binary_len_ = !body_len ? (field != header.end() ? std::nullopt : std::optional<uint64_t>(0))
                            : std::optional<uint64_t>(*body_len - *json_len_);
    json_.clear();
    if (expect_continue_) {
      continue_.emplace(http::status::continue_, 11);
      return http::async_write(stream_, *continue_,
                               [self = shared_from_this()](beast::error_code e, size_t) {
                                 if (e) return self->close();
                                 self->read_json();
                               });
    }
    read_json();
  }

  // Reads the JSON part into json_: json_len_ bytes, or (chunked, no binary part) all of it.
  void read_json() {
    const size_t have = json_.size();
    const size_t want = json_len_ ? size_t(*json_len_) : have + kBodyChunk;
    json_.resize(want);
    if (want == have) return on_json();
    http::buffer_body::value_type& b = infer_->get().body();
    b.data = json_.data() + have;
    b.size = want - have;
    b.more = true;
    read_body([self = shared_from_this(), want] {
      http::buffer_body::value_type& body = self->infer_->get().body();
      self->json_.resize(want - body.size);
      if (self->infer_->is_done() || body.size == 0) return self->read_json_done();
      self->read_json();
    });
  }

  void read_json_done() {
    if (json_len_ && json_.size() < *json_len_) {
      return refuse(http::status::bad_request, "the body ended inside the JSON header");
    }
    if (!json_len_ && !infer_->is_done()) return read_json();  // chunked: more to come
    on_json();
  }

  // One asynchronous read into the parser's current buffer_body target; `then` runs once it is
  // full or the message is complete. Errors end the connection (after a reply where one fits).
  template <typename Then>
  void read_body(Then then) {
    stream_.expires_after(std::chrono::milliseconds(server_.options.idle_timeout_ms));
    http::async_read(stream_, buffer_, *infer_,
                     [self = shared_from_this(), then = std::move(then)](beast::error_code ec,
                                                                          size_t) mutable {
                       if (ec == http::error::need_buffer) ec = {};  // the target is full
                       if (ec) self->prepared_.clear();              // slots go back
                       if (self->read_failed(ec, self->server_.options.max_infer_body_bytes)) {
                         return;
                       }
                       then();
                     });
  }

  Result<http_infer::Request> parse() const {
    return http_infer::parse_request(json_, binary_len_, model_->client.spec(), model_->info.name,
                                     model_->client.max_in_flight());
  }

  void on_json() {
    if (json_.size() < kPoolParseBytes || server_.connections < 2) return on_parsed(parse());
    // The session waits (no I/O of its own is pending) while the pool reads json_ and the model's
    // spec, both left alone here until the result comes back.
    net::post(server_.parse_pool, [self = shared_from_this()]() mutable {
      Result<http_infer::Request> parsed = self->parse();
      HttpServer::Impl& server = self->server_;
      server.post([self = std::move(self), parsed = std::move(parsed)]() mutable {
        self->on_parsed(std::move(parsed));
      });
    });
  }

  void on_parsed(Result<http_infer::Request> parsed) {
    const shm::ModelSpec& spec = model_->client.spec();
    if (!parsed.is_ok()) return refuse(http::status::bad_request, parsed.status().message());
    request_ = std::move(parsed).value();
    const uint64_t timeout_us =
        request_.timeout_us.value_or(uint64_t(server_.options.default_timeout_ms) * 1000);
    timeout_ = std::chrono::milliseconds(std::max<uint64_t>(1, (timeout_us + 999) / 1000));
    slot_deadline_ = Clock::now() + timeout_;
    infos_.clear();
    for (const http_infer::Input& in : request_.inputs) {
      const shm::TensorSpec& t = spec.inputs[in.model_index];
      infos_.push_back({std::string(t.name_view()), t.dtype,
                        std::vector<int64_t>(t.dims, t.dims + t.ndims), t.byte_size()});
    }
    take_slots();
  }

  // All of the batch's slots or none, without waiting: the I/O thread serves other connections
  // while this one waits, and a half-taken batch never holds slots another request needs.
  void take_slots() {
    prepared_.clear();
    for (uint32_t b = 0; b < request_.batch; ++b) {
      Result<client::PreparedRequest> p =
          model_->client.prepare(infos_, std::chrono::milliseconds(0));
      if (!p.is_ok()) {
        prepared_.clear();
        if (p.status().code() != ErrorCode::kBusy || Clock::now() >= slot_deadline_) {
          return refuse(http_status(p.status().code()), p.status().message());
        }
        retry_timer_.expires_after(kSlotRetry);
        retry_timer_.async_wait([self = shared_from_this()](const beast::error_code& ec) {
          if (!ec) self->take_slots();
        });
        return;
      }
      prepared_.push_back(std::move(p).value());
    }
    // JSON tensors were converted while parsing: one copy into each item's slot.
    for (size_t i = 0; i < request_.inputs.size(); ++i) {
      const http_infer::Input& in = request_.inputs[i];
      if (in.binary) continue;
      const size_t item = in.data.size() / request_.batch;
      for (uint32_t b = 0; b < request_.batch; ++b) {
        std::memcpy(prepared_[b].input(i).data(), in.data.data() + b * item, item);
      }
    }
    pieces_ = http_infer::binary_pieces(request_, model_->client.spec());
    next_piece_ = 0;
    read_binary();
  }

  // The binary part goes from the read buffer straight into the slots, piece by piece.
  void read_binary() {
    if (next_piece_ == pieces_.size()) {
      if (infer_->is_done()) return submit();
      return read_body_end();
    }
    const http_infer::Piece& piece = pieces_[next_piece_];
    const std::span<std::byte> target = prepared_[piece.item].input(piece.input);
    http::buffer_body::value_type& b = infer_->get().body();
    b.data = target.data();
    b.size = target.size();
    b.more = true;
    read_body([self = shared_from_this()] {
      if (self->infer_->get().body().size == 0) {
        ++self->next_piece_;
        return self->read_binary();
      }
      if (self->infer_->is_done()) {
        // Content-Length said more than arrived: cannot happen with sizes checked, kept as a
        // clear answer rather than a hang.
        self->prepared_.clear();
        return self->refuse(http::status::bad_request, "the body ended inside a tensor");
      }
      self->read_binary();
    });
  }

  // A chunked body after its last tensor: only its end (the last chunk) may follow.
  void read_body_end() {
    scratch_.resize(kBodyChunk);
    http::buffer_body::value_type& b = infer_->get().body();
    b.data = scratch_.data();
    b.size = scratch_.size();
    b.more = true;
    read_body([self = shared_from_this()] {
      if (self->infer_->get().body().size != self->scratch_.size()) {
        self->prepared_.clear();
        return self->refuse(http::status::bad_request,
                            "the body is longer than its JSON header and tensors");
      }
      if (self->infer_->is_done()) return self->submit();
      self->read_body_end();
    });
  }

  void submit() {
    results_.clear();
    results_.resize(request_.batch);
    pending_ = request_.batch;
    failure_ = Status::ok();
    server_.in_flight[this] = shared_from_this();
    std::weak_ptr<Session> weak = weak_from_this();
    HttpServer::Impl* server = &server_;
    for (uint32_t b = 0; b < request_.batch; ++b) {
      ++server_.with_workers;
      model_->client.submit(
          std::move(prepared_[b]),
          [weak, server, b](Result<client::SlotResult> result) {
            // On the client's completion thread or the I/O thread's poll: onto the I/O
            // thread's queue (a poll runs it on its next round, without a wake-up).
            server->post([weak, server, b, r = std::move(result)]() mutable {
              --server->with_workers;
              if (auto self = weak.lock()) self->on_item(b, std::move(r));
            });
          },
          timeout_);
    }
    prepared_.clear();
  }

  // Every item completes exactly once (the client's promise), so the last one answers.
  void on_item(uint32_t item, Result<client::SlotResult> result) {
    if (result.is_ok()) {
      results_[item].emplace(std::move(result).value());
    } else if (failure_.is_ok()) {
      failure_ = result.status();
    }
    if (--pending_ > 0) return;
    const std::shared_ptr<Session> self = shared_from_this();
    server_.in_flight.erase(this);
    if (!failure_.is_ok()) {
      results_.clear();
      return send(error_response(http_status(failure_.code()), failure_.message()), !keep_alive_);
    }
    std::vector<http_infer::ItemOutputs> items(results_.size());
    for (size_t b = 0; b < results_.size(); ++b) {
      for (uint32_t k = 0; k < results_[b]->spec().n_outputs; ++k) {
        items[b][k] = results_[b]->output(k);
      }
    }
    // The one copy of the outputs: from the slots into the reply, which frees the slots at once.
    http_infer::Reply reply =
        http_infer::build_reply(request_, model_->client.spec(), model_->info.name, items);
    results_.clear();
    Response res = empty_response(http::status::ok);
    if (reply.binary) {
      res.set(http::field::content_type, "application/octet-stream");
      res.set(kHeaderLengthField, std::to_string(reply.header_bytes));
    } else {
      res.set(http::field::content_type, "application/json");
    }
    res.body() = std::move(reply.body);
    send(std::move(res), !keep_alive_);
  }

  // A well-framed request that cannot run: the rest of its body is read and dropped, then the
  // error goes out and the connection goes on, except where the client waits for a
  // 100 Continue that never came.
  void refuse(http::status status, std::string message) {
    if (expect_continue_ && !continue_) return send(error_response(status, std::move(message)), true);
    refusal_.emplace(error_response(status, std::move(message)));
    drain();
  }

  void drain() {
    if (infer_->is_done()) {
      Response res = std::move(*refusal_);
      refusal_.reset();
      return send(std::move(res), !keep_alive_);
    }
    scratch_.resize(kBodyChunk);
    http::buffer_body::value_type& b = infer_->get().body();
    b.data = scratch_.data();
    b.size = scratch_.size();
    b.more = true;
    read_body([self = shared_from_this()] { self->drain(); });
  }

  void send(Response res, bool close_after) {
    // The answer is out of the slots by now; an unloaded model need not wait for this
    // connection's next request to go.
    prepared_.clear();
    results_.clear();
    model_.reset();
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
    retry_timer_.cancel();
    prepared_.clear();
    results_.clear();
    stream_.socket().shutdown(tcp::socket::shutdown_send, ignored);
    stream_.close();
  }

  HttpServer::Impl& server_;
  beast::tcp_stream stream_;
  net::steady_timer retry_timer_;
  beast::flat_buffer buffer_;
  // The request's parser: the header's, then the route's (a parser changes its body type once
  // the header is read).
  std::optional<http::request_parser<http::empty_body>> head_;
  std::optional<http::request_parser<http::string_body>> body_;
  std::optional<http::request_parser<http::buffer_body>> infer_;
  Response res_;
  bool keep_alive_ = true;

  // The infer request in progress.
  // Shared from the request's start to its answer (see Impl::models). Declared before the slots
  // and results below, so it outlives them.
  std::shared_ptr<ModelState> model_;
  bool expect_continue_ = false;
  std::optional<http::response<http::empty_body>> continue_;
  std::optional<uint64_t> json_len_;    // unset: chunked without a binary part
  std::optional<uint64_t> binary_len_;  // unset: chunked with a binary part
  std::string json_;
  http_infer::Request request_;
  std::vector<client::TensorInfo> infos_;
  std::chrono::milliseconds timeout_{0};
  Clock::time_point slot_deadline_;
  std::vector<client::PreparedRequest> prepared_;  // one per item
  std::vector<http_infer::Piece> pieces_;
  size_t next_piece_ = 0;
  std::vector<std::optional<client::SlotResult>> results_;
  uint32_t pending_ = 0;
  Status failure_;
  std::optional<Response> refusal_;
  std::vector<char> scratch_;
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

std::optional<Response> HttpServer::Impl::check_token(const http::request_header<>& req) const {
  if (options.token.empty()) return std::nullopt;
  const beast::string_view field = req[http::field::authorization];
  const std::string_view auth(field.data(), field.size());
  constexpr std::string_view kBearer = "Bearer ";
  if (auth.substr(0, kBearer.size()) == kBearer &&
      same_token(auth.substr(kBearer.size()), options.token)) {
    return std::nullopt;
  }
  Response res = error_response(http::status::unauthorized,
                                "this server needs 'Authorization: Bearer <token>'");
  res.set(http::field::www_authenticate, "Bearer");
  return res;
}

// Every request but POST .../infer (which Session streams into the model's slots).
Response HttpServer::Impl::handle(const Request& req) {
  if (auto denied = check_token(req)) return std::move(*denied);
  std::string_view path(req.target().data(), req.target().size());
  path = path.substr(0, path.find('?'));
  const bool get = req.method() == http::verb::get;

  if (path == "/v2") {
    if (!get) return method_not_allowed("GET");
    return json_response(http::status::ok, {{"name", "sliceserve"},
                                            {"version", SLICESERVE_VERSION},
                                            {"extensions", {"binary_tensor_data"}}});
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
    const std::shared_ptr<ModelState> m = find(name);
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
    if (action == "infer") return method_not_allowed("POST");  // a POST went to Session
  }
  return error_response(http::status::not_found, "no endpoint " + std::string(path));
}

namespace {

// sliceserve_policy_decisions_total, one series per model and action.
template <typename Row>
void append_decisions(std::string& out, const std::vector<Row>& rows) {
  constexpr const char* kName = "sliceserve_policy_decisions_total";
  out += fmt::format(
      "# HELP {} Policy decisions per model: grow or shrink its slice, change its batch limit, "
      "or hold\n# TYPE {} counter\n",
      kName, kName);
  for (const Row& r : rows) {
    const std::string labels = r.labels.substr(0, r.labels.size() - 1);  // without the '}'
    for (uint32_t a = 0; a < shm::kPolicyActions; ++a) {
      out += fmt::format("{}{},action=\"{}\"}} {}\n", kName, labels,
                         shm::policy_action_name(shm::PolicyAction(a)), r.decisions[a]);
    }
  }
}

}  // namespace

std::string HttpServer::Impl::metrics() {
  struct Row {
    std::string labels;
    Totals t;
    uint32_t slice = 0, slo_ms = 0, resizes = 0;
    uint64_t epoch = 0;
    uint64_t decisions[shm::kPolicyActions] = {};
    uint64_t slo_met = 0, slo_missed = 0;
    uint32_t attainment_ppm = shm::kNoSloAttainment;
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
    for (uint32_t a = 0; a < shm::kPolicyActions; ++a) {
      r.decisions[a] = s.decisions[a].load(std::memory_order_relaxed);
    }
    r.slo_met = s.slo_met_total.load(std::memory_order_relaxed);
    r.slo_missed = s.slo_missed_total.load(std::memory_order_relaxed);
    r.attainment_ppm = s.slo_attainment_ppm.load(std::memory_order_relaxed);
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
  family("sliceserve_slo_met_total", "counter",
         "Completed requests whose latency (enqueue to done) was within the SLO",
         [](const Row& r) { return r.slo_met; });
  family("sliceserve_slo_missed_total", "counter",
         "Completed requests whose latency (enqueue to done) was over the SLO",
         [](const Row& r) { return r.slo_missed; });
  family("sliceserve_slo_attainment", "gauge",
         "Share of the status window's completions within the SLO (NaN when none completed)",
         [](const Row& r) {
           return r.attainment_ppm == shm::kNoSloAttainment
                      ? std::string("NaN")
                      : fmt::format("{:g}", double(r.attainment_ppm) / 1e6);
         });
  append_decisions(out, rows);
  return out;
}

HttpServer::HttpServer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
HttpServer::~HttpServer() = default;

Status HttpServer::add_model(const HttpModel& model) {
  ASSIGN_OR_RETURN(std::shared_ptr<ModelState> state, open_model(impl_->options.instance, model));
  Impl* impl = impl_.get();
  impl->post([impl, m = std::move(state)]() mutable { impl->models.push_back(std::move(m)); });
  spdlog::info("http: serving model {}", model.name);
  return Status::ok();
}

void HttpServer::remove_model(const std::string& name) {
  Impl* impl = impl_.get();
  impl->post([impl, name] {
    auto it = std::find_if(impl->models.begin(), impl->models.end(),
                           [&](const auto& m) { return m->info.name == name; });
    if (it == impl->models.end()) return;
    // Requests still out on it are answered through its completion thread from now on.
    (*it)->client.set_polling(false);
    impl->models.erase(it);
  });
  spdlog::info("http: model {} no longer served", name);
}

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
    ASSIGN_OR_RETURN(std::shared_ptr<ModelState> model, open_model(options.instance, m));
    impl->models.push_back(std::move(model));
  }

  tcp::acceptor& acceptor = impl->acceptor.emplace(impl->ioc);
  RETURN_IF_ERROR(
      listen_on<beast::error_code>(acceptor, host, port, options.address, "HTTP front-end"));
  impl->accept();
  impl->thread = std::thread([server = impl.get()] {
    // A handler that throws (only allocation can) must not end the thread silently.
    for (;;) {
      try {
        run_polling(server->ioc, std::chrono::microseconds(server->options.poll_us),
                    server->with_workers, [server](auto&& f) {
                      // Unloaded models with requests out are not polled: their answers come
                      // through their completion threads.
                      for (auto& m : server->models) f(m->client);
                    });
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
