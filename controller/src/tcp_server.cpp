#include "sliceserve/controller/tcp_server.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <asio.hpp>
#include <atomic>
#include <chrono>
#include <deque>
#include <mutex>
#include <optional>
#include <thread>
#include <utility>

#include "polling_loop.h"
#include "sliceserve/client/client.h"
#include "sliceserve/client/wire.h"
#include "sliceserve/controller/config.h"
#include "sliceserve/controller/listen_address.h"

namespace sliceserve::controller {
namespace {

using asio::ip::tcp;
using Clock = std::chrono::steady_clock;
namespace wire = client::wire;

// How often a request that found its model's lane full looks for a free slot again.
constexpr auto kSlotRetry = std::chrono::microseconds(200);
// How often an I/O thread looks whether an unloaded model's client is free to go.
constexpr auto kRetiredSweep = std::chrono::milliseconds(20);
// Discarded data (a refused request's tensors) is read in pieces of this size.
constexpr size_t kDrainChunk = 64 * 1024;

wire::TensorDesc describe(const shm::TensorSpec& t) {
  return {std::string(t.name_view()), t.dtype, std::vector<int64_t>(t.dims, t.dims + t.ndims),
          t.byte_size()};
}

// One model as one I/O thread sees it: its own shm client (one lane) and the reply to a
// model-info request. `uses` counts what still needs the client (a request between lookup and
// submission, one submitted, a reply written from its slot): an unloaded model's entry is
// destroyed on its I/O thread only once that is 0, so no slot outlives its Client.
struct ModelEntry {
  ModelEntry(std::string n, client::Client c, wire::ModelInfo i)
      : name(std::move(n)), client(std::move(c)), info(std::move(i)) {}
  std::string name;
  client::Client client;
  wire::ModelInfo info;
  std::atomic<uint32_t> uses{0};
};

// One use of a ModelEntry, released on destruction (on any thread: only a counter).
class EntryUse {
 public:
  explicit EntryUse(ModelEntry* entry) : entry_(entry) { acquire(); }
  EntryUse(const EntryUse& other) : entry_(other.entry_) { acquire(); }
  EntryUse(EntryUse&& other) noexcept : entry_(std::exchange(other.entry_, nullptr)) {}
  EntryUse& operator=(const EntryUse&) = delete;
  ~EntryUse() {
    // Release: what this use did with the client happens before the sweep that sees 0.
    if (entry_) entry_->uses.fetch_sub(1, std::memory_order_release);
  }

 private:
  void acquire() {
    if (entry_) entry_->uses.fetch_add(1, std::memory_order_relaxed);
  }
  ModelEntry* entry_;
};

// A request's completion on its way from the client's completion thread to the I/O thread. The
// result (a slot) is destroyed before the use that keeps its Client.
struct Completion {
  EntryUse use;
  Result<client::SlotResult> result;
};

// An I/O thread's world. Completion threads of its clients hand results in through `post`,
// which drops them (freeing their slots on the spot) once the io_context is going away.
struct IoThread {
  // Before `ioc`: destroyed after it, so a SlotResult in a pending handler still finds its
  // Client when the io_context destroys that handler.
  std::vector<std::unique_ptr<ModelEntry>> models;
  std::vector<std::unique_ptr<ModelEntry>> retired;  // unloaded, waiting for uses == 0
  asio::io_context ioc{1};
  // Keeps run_one() waiting while the thread has no connection yet; stop() still ends it.
  asio::executor_work_guard<asio::io_context::executor_type> keep_running{ioc.get_executor()};
  asio::steady_timer sweep_timer{ioc};
  // Requests submitted on this thread whose completion handler has not run here yet.
  uint32_t with_workers = 0;
  std::mutex gate_mu;
  bool gate_open = true;
  std::thread thread;
  // This thread's copies, changed on it by add_model/remove_model.
  wire::Limits limits;  // max_data_bytes: the largest request any model takes
  std::string served;   // "a, b" for unknown-model messages

  ModelEntry* find(std::string_view name) {
    for (auto& m : models) {
      if (m->name == name) return m.get();
    }
    return nullptr;
  }
  void update_served() {
    served.clear();
    for (auto& m : models) served += (served.empty() ? "" : ", ") + m->name;
  }
  // Destroys the retired entries nothing uses any more; looks again later while some are left.
  void sweep_retired() {
    // Acquire pairs with EntryUse's release.
    std::erase_if(retired, [](auto& e) { return e->uses.load(std::memory_order_acquire) == 0; });
    if (retired.empty()) return;
    sweep_timer.expires_after(kRetiredSweep);
    sweep_timer.async_wait([this](const asio::error_code& ec) {
      if (!ec) sweep_retired();
    });
  }
  template <typename Handler>
  void post(Handler&& handler) {
    std::lock_guard lock(gate_mu);
    if (gate_open) asio::post(ioc, std::forward<Handler>(handler));
  }

  void run(std::chrono::microseconds poll) {
    run_polling(ioc, poll, with_workers, [this](auto&& f) {
      for (auto& m : models) f(m->client);
      for (auto& m : retired) f(m->client);
    });
  }
};

}  // namespace

struct TcpServer::Impl {
  TcpServerOptions options;
  std::vector<std::unique_ptr<IoThread>> threads;
  std::optional<tcp::acceptor> acceptor;  // on threads[0]
  std::atomic<uint32_t> connections{0};
  size_t next_thread = 0;

  void accept();
  ~Impl();
};

namespace {

class Connection : public std::enable_shared_from_this<Connection> {
 public:
  Connection(TcpServer::Impl& server, IoThread& io, tcp::socket socket)
      : server_(server),
        io_(io),
        socket_(std::move(socket)),
        idle_timer_(io.ioc),
        retry_timer_(io.ioc) {
    server_.connections.fetch_add(1, std::memory_order_relaxed);
    asio::error_code ec;
    const tcp::endpoint peer = socket_.remote_endpoint(ec);
    peer_ = ec ? std::string("?") : peer.address().to_string() + ":" + std::to_string(peer.port());
  }
  ~Connection() { server_.connections.fetch_sub(1, std::memory_order_relaxed); }

  void start() {
    asio::error_code ec;
    socket_.set_option(tcp::no_delay(true), ec);  // replies are small and latency-bound
    if (ec) spdlog::debug("tcp {}: TCP_NODELAY: {}", peer_, ec.message());
    last_frame_ = Clock::now();
    arm_idle_timer();
    read_header();
  }

  // Over the connection limit: says why, then closes.
  void refuse(const Status& why) { fail(0, why, true); }

 private:
  struct Outgoing {
    std::vector<std::byte> head;             // frame header and metadata
    std::optional<EntryUse> use;             // keeps the slot's Client; destroyed after `slot`
    std::optional<client::SlotResult> slot;  // the outputs, written from shared memory
    bool close_after = false;
    bool ends_request = false;  // a request's reply: written, it leaves the in-flight count
  };

  // ---- reading frames ----

  void read_header() {
    if (closing_) return;
    if (in_flight_ >= server_.options.max_in_flight) {
      paused_ = true;  // resume_reading() reads on once a request's reply is out
      return;
    }
    asio::async_read(
        socket_, asio::buffer(head_),
        [self = shared_from_this()](const asio::error_code& ec, size_t) { self->on_header(ec); });
  }

  void on_header(const asio::error_code& ec) {
    if (ec) return lost(ec, "reading a frame header");
    Result<wire::FrameHeader> h = wire::decode_header(head_, io_.limits);
    if (!h.is_ok()) return fail(0, h.status(), true);
    header_ = *h;
    if (!hello_done_ && header_.type != wire::FrameType::kHello) {
      return fail(header_.request_id,
                  Status(ErrorCode::kInvalidArgument, "the first frame must be a hello"), true);
    }
    const bool takes_data = header_.type == wire::FrameType::kInfer;
    if (header_.data_len != 0 && !takes_data) {
      return fail(header_.request_id,
                  Status(ErrorCode::kInvalidArgument, "this frame type carries no data"), true);
    }
    meta_.resize(header_.header_len);
    asio::async_read(
        socket_, asio::buffer(meta_),
        [self = shared_from_this()](const asio::error_code& e, size_t) { self->on_meta(e); });
  }

  void on_meta(const asio::error_code& ec) {
    if (ec) return lost(ec, "reading a frame's metadata");
    switch (header_.type) {
      case wire::FrameType::kHello:
        return on_hello();
      case wire::FrameType::kModelInfo:
        return on_model_info();
      case wire::FrameType::kInfer:
        return on_infer();
      default:
        return fail(
            header_.request_id,
            Status(ErrorCode::kInvalidArgument,
                   "frame type " + std::to_string(int(header_.type)) + " is the server's to send"),
            true);
    }
  }

  void frame_done() {
    last_frame_ = Clock::now();
    read_header();
  }

  void on_hello() {
    Result<wire::Hello> hello = wire::decode_hello(meta_);
    if (!hello.is_ok()) return fail(header_.request_id, hello.status(), true);
    if (hello_done_) {
      return fail(header_.request_id,
                  Status(ErrorCode::kInvalidArgument, "a second hello on one connection"), true);
    }
    if (!server_.options.token.empty() && !same_token(hello->token, server_.options.token)) {
      spdlog::warn("tcp {}: wrong token, connection refused", peer_);
      return send_error(header_.request_id, wire::kErrorUnauthenticated,
                        "the token does not match the server's", true);
    }
    hello_done_ = true;
    wire::HelloOk ok;
    ok.limits = io_.limits;
    ok.max_in_flight = server_.options.max_in_flight;
    ok.idle_timeout_ms = server_.options.idle_timeout_ms;
    send(wire::frame(wire::FrameType::kHelloOk, header_.request_id, wire::encode(ok)));
    frame_done();
  }

  void on_model_info() {
    Result<wire::ModelInfoRequest> ask = wire::decode_model_info_request(meta_);
    if (!ask.is_ok()) return fail(header_.request_id, ask.status(), true);
    ModelEntry* model = io_.find(ask->model);
    if (model == nullptr) {
      fail(header_.request_id, unknown_model(ask->model), false);
    } else {
      send(wire::frame(wire::FrameType::kModelInfoOk, header_.request_id,
                       wire::encode(model->info)));
    }
    frame_done();
  }

  Status unknown_model(const std::string& name) const {
    return Status(ErrorCode::kUnknownModel,
                  "unknown model '" + name + "' (served: " + io_.served + ")");
  }

  void on_infer() {
    Result<wire::InferRequest> request = wire::decode_infer_request(meta_);
    if (!request.is_ok()) return fail(header_.request_id, request.status(), true);
    // Inconsistent lengths leave no way to find the next frame: the connection ends.
    Status lengths = wire::check_data_len(request->inputs, header_.data_len);
    if (!lengths.is_ok()) return fail(header_.request_id, lengths, true);
    request_ = std::move(request).value();
    model_ = io_.find(request_.model);
    if (model_ == nullptr) return refuse_request(unknown_model(request_.model));
    model_use_.emplace(model_);
    infos_.clear();
    for (wire::TensorDesc& t : request_.inputs) {
      infos_.push_back({std::move(t.name), t.dtype, std::move(t.shape), t.bytes});
    }
    const uint32_t timeout_ms =
        request_.timeout_ms != 0 ? request_.timeout_ms : server_.options.default_timeout_ms;
    timeout_ = std::chrono::milliseconds(timeout_ms);
    slot_deadline_ = Clock::now() + timeout_;
    take_slot();
  }

  // Without waiting: the I/O thread serves other connections while this one waits for a slot.
  void take_slot() {
    if (closing_) return;
    Result<client::PreparedRequest> prepared =
        model_->client.prepare(infos_, std::chrono::milliseconds(0));
    if (prepared.is_ok()) {
      waiting_for_slot_ = false;
      prepared_.emplace(std::move(prepared).value());
      return read_tensors();
    }
    if (prepared.status().code() != ErrorCode::kBusy || Clock::now() >= slot_deadline_) {
      waiting_for_slot_ = false;
      model_use_.reset();
      return refuse_request(prepared.status());
    }
    waiting_for_slot_ = true;
    retry_timer_.expires_after(kSlotRetry);
    retry_timer_.async_wait([self = shared_from_this()](const asio::error_code& ec) {
      if (!ec) self->take_slot();
    });
  }

  void read_tensors() {
    // The tensors' bytes go from the socket straight into the slot.
    const size_t n = prepared_->input_count();
    for (size_t i = 0; i < n; ++i) {
      const std::span<std::byte> in = prepared_->input(i);
      in_buffers_[i] = asio::buffer(in.data(), in.size());
    }
    asio::async_read(
        socket_, std::span(in_buffers_.data(), n),
        [self = shared_from_this()](const asio::error_code& ec, size_t) { self->on_tensors(ec); });
  }

  void on_tensors(const asio::error_code& ec) {
    if (ec) {
      prepared_.reset();  // gives the slot back
      model_use_.reset();
      return lost(ec, "reading a request's tensors");
    }
    ++in_flight_;
    ++io_.with_workers;
    const uint64_t id = header_.request_id;
    std::weak_ptr<Connection> weak = weak_from_this();
    IoThread* io = &io_;
    model_->client.submit(
        std::move(*prepared_),
        [weak, io, id, use = *model_use_](Result<client::SlotResult> result) {
          // On the client's completion thread, or on the I/O thread's poll: onto the I/O
          // thread's queue (a poll runs it on its next round, without a wake-up).
          io->post([weak, io, id, c = Completion{use, std::move(result)}]() mutable {
            --io->with_workers;
            if (auto self = weak.lock()) self->on_done(id, std::move(c));
          });
        },
        timeout_);
    prepared_.reset();
    model_use_.reset();
    frame_done();
  }

  // A well-formed request that cannot run: its data is read and dropped, the connection goes on.
  void refuse_request(const Status& why) {
    fail(header_.request_id, why, false);
    drain_left_ = header_.data_len;
    drain();
  }

  void drain() {
    if (drain_left_ == 0) return frame_done();
    scratch_.resize(std::min<size_t>(drain_left_, kDrainChunk));
    asio::async_read(socket_, asio::buffer(scratch_),
                     [self = shared_from_this()](const asio::error_code& ec, size_t n) {
                       if (ec) return self->lost(ec, "reading a refused request's tensors");
                       self->drain_left_ -= uint32_t(n);
                       self->drain();
                     });
  }

  // ---- replies ----

  void on_done(uint64_t id, Completion done) {
    Result<client::SlotResult>& result = done.result;
    if (closing_ || !result.is_ok()) {
      --in_flight_;
      if (!closing_) fail(id, result.status(), false);
      return resume_reading();
    }
    client::SlotResult slot = std::move(result).value();
    wire::InferReply reply;
    reply.batch_size = slot.batch_size();
    reply.queue_ns = slot.queue_ns();
    reply.compute_ns = slot.compute_ns();
    uint64_t data_len = 0;
    for (const shm::TensorSpec& t : slot.spec().output_specs()) {
      reply.outputs.push_back(describe(t));
      data_len += t.byte_size();
    }
    Outgoing out;
    out.head = wire::frame(wire::FrameType::kInferOk, id, wire::encode(reply), uint32_t(data_len));
    out.use.emplace(std::move(done.use));
    out.slot.emplace(std::move(slot));
    // The request stays in flight until its reply is written: a client that reads no
    // replies holds at most max_in_flight slots, then the server stops reading it.
    out.ends_request = true;
    queue_.push_back(std::move(out));
    write_next();
  }

  void resume_reading() {
    if (paused_ && in_flight_ < server_.options.max_in_flight) {
      paused_ = false;
      read_header();
    }
  }

  void send(std::vector<std::byte> head, bool close_after = false) {
    Outgoing out;
    out.head = std::move(head);
    out.close_after = close_after;
    queue_.push_back(std::move(out));
    write_next();
  }

  void send_error(uint64_t id, uint16_t code, std::string message, bool fatal) {
    if (fatal) closing_ = true;  // no more reading; the error is the last frame
    send(wire::frame(wire::FrameType::kError, id,
                     wire::encode(wire::ErrorReply{code, std::move(message)}), 0,
                     fatal ? wire::kFlagFatal : 0),
         fatal);
  }

  void fail(uint64_t id, const Status& why, bool fatal) {
    if (fatal) spdlog::info("tcp {}: closing: {}", peer_, why.message());
    send_error(id, wire::wire_code(why.code()), why.message(), fatal);
  }

  void write_next() {
    if (writing_ || queue_.empty() || closed_) return;
    writing_ = true;
    write_started_ = Clock::now();
    Outgoing& out = queue_.front();
    size_t n = 0;
    out_buffers_[n++] = asio::buffer(out.head);
    if (out.slot) {
      for (uint32_t i = 0; i < out.slot->spec().n_outputs; ++i) {
        const std::span<const std::byte> o = out.slot->output(i);
        out_buffers_[n++] = asio::buffer(o.data(), o.size());
      }
    }
    asio::async_write(
        socket_, std::span(out_buffers_.data(), n),
        [self = shared_from_this()](const asio::error_code& ec, size_t) { self->on_written(ec); });
  }

  void on_written(const asio::error_code& ec) {
    writing_ = false;
    if (ec) return lost(ec, "writing a reply");
    const bool close_after = queue_.front().close_after;
    const bool ends_request = queue_.front().ends_request;
    queue_.pop_front();  // frees the reply's slot
    if (close_after) return close();
    if (ends_request) {
      --in_flight_;
      resume_reading();
    }
    write_next();
  }

  // ---- ending ----

  void lost(const asio::error_code& ec, std::string_view what) {
    if (closed_) return;
    if (ec != asio::error::eof && ec != asio::error::operation_aborted &&
        ec != asio::error::connection_reset) {
      spdlog::info("tcp {}: {}: {}", peer_, what, ec.message());
    }
    close();
  }

  void close() {
    if (closed_) return;
    closed_ = closing_ = true;
    asio::error_code ignored;  // the socket goes whatever shutdown says
    socket_.shutdown(tcp::socket::shutdown_both, ignored);
    socket_.close(ignored);
    idle_timer_.cancel();
    retry_timer_.cancel();
    queue_.clear();
    prepared_.reset();
    model_use_.reset();
  }

  void arm_idle_timer() {
    const auto idle = std::chrono::milliseconds(server_.options.idle_timeout_ms);
    idle_timer_.expires_after(std::clamp<Clock::duration>(idle / 4, std::chrono::milliseconds(5),
                                                          std::chrono::milliseconds(250)));
    idle_timer_.async_wait([self = shared_from_this()](const asio::error_code& ec) {
      if (!ec) self->check_idle();
    });
  }

  // Cut off: a client that sends no complete frame for the idle time while nothing of it is in
  // flight (also one dribbling a frame byte by byte), and one that reads no reply for as long.
  void check_idle() {
    if (closed_) return;
    const auto now = Clock::now();
    const auto idle = std::chrono::milliseconds(server_.options.idle_timeout_ms);
    if (writing_ && now - write_started_ > idle) {
      spdlog::info("tcp {}: closing: a reply stayed unread for {} ms", peer_, idle.count());
      return close();
    }
    const bool busy = in_flight_ > 0 || waiting_for_slot_ || writing_ || !queue_.empty();
    if (!busy && !closing_ && now - last_frame_ > idle) {
      fail(0,
           Status(ErrorCode::kTimeout,
                  "idle for " + std::to_string(idle.count()) + " ms, the server's limit"),
           true);
    }
    arm_idle_timer();
  }

  TcpServer::Impl& server_;
  IoThread& io_;
  tcp::socket socket_;
  asio::steady_timer idle_timer_;
  asio::steady_timer retry_timer_;
  std::string peer_;

  std::array<std::byte, wire::kHeaderBytes> head_{};
  wire::FrameHeader header_;
  std::vector<std::byte> meta_;
  wire::InferRequest request_;
  std::vector<client::TensorInfo> infos_;
  ModelEntry* model_ = nullptr;
  std::optional<EntryUse> model_use_;  // while a request of model_ is read: before prepared_
  std::optional<client::PreparedRequest> prepared_;
  std::chrono::milliseconds timeout_{0};
  Clock::time_point slot_deadline_;
  // Members, not locals: the asynchronous read and write hold only a view of them.
  std::array<asio::mutable_buffer, shm::kMaxTensors> in_buffers_;
  std::array<asio::const_buffer, 1 + shm::kMaxTensors> out_buffers_;
  std::vector<std::byte> scratch_;
  uint32_t drain_left_ = 0;

  std::deque<Outgoing> queue_;
  bool writing_ = false;
  Clock::time_point write_started_;
  Clock::time_point last_frame_;
  uint32_t in_flight_ = 0;
  bool waiting_for_slot_ = false;
  bool paused_ = false;
  bool hello_done_ = false;
  bool closing_ = false;  // no more frames are read; replies already queued still go out
  bool closed_ = false;
};

}  // namespace

void TcpServer::Impl::accept() {
  IoThread& io = *threads[next_thread];
  next_thread = (next_thread + 1) % threads.size();
  // The socket belongs to the I/O thread that will serve it.
  acceptor->async_accept(io.ioc, [this, &io](const asio::error_code& ec, tcp::socket socket) {
    if (ec == asio::error::operation_aborted) return;
    if (ec) {
      // Out of descriptors and the like: log, go on accepting; the connection is lost.
      spdlog::warn("tcp: accept: {}", ec.message());
    } else {
      const bool full = connections.load(std::memory_order_relaxed) >= options.max_connections;
      // Starts on its own thread: everything of a connection runs there.
      asio::post(io.ioc, [this, &io, full, s = std::move(socket)]() mutable {
        auto c = std::make_shared<Connection>(*this, io, std::move(s));
        if (full) {
          c->refuse(Status(ErrorCode::kBusy, "the server has its " +
                                                 std::to_string(options.max_connections) +
                                                 " connections, the limit"));
        } else {
          c->start();
        }
      });
    }
    accept();
  });
}

TcpServer::Impl::~Impl() {
  for (auto& t : threads) t->ioc.stop();
  for (auto& t : threads) {
    if (t->thread.joinable()) t->thread.join();
  }
  acceptor.reset();  // no thread runs its io_context any more
  for (auto& t : threads) {
    std::lock_guard lock(t->gate_mu);
    t->gate_open = false;
  }
  // Each IoThread destroys its io_context (and with it every connection and pending reply)
  // before its clients.
  threads.clear();
}

TcpServer::TcpServer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
TcpServer::~TcpServer() = default;

uint16_t TcpServer::port() const {
  asio::error_code ec;
  const tcp::endpoint e = impl_->acceptor->local_endpoint(ec);
  return ec ? 0 : e.port();
}

namespace {

// The entry of `model` for one I/O thread: its own client (one lane) of the model's segment.
Result<std::unique_ptr<ModelEntry>> connect_entry(const std::string& instance,
                                                  const std::string& name) {
  client::ConnectOptions connect;
  connect.instance = instance;
  connect.spin = std::chrono::microseconds(0);  // the completion thread waits on the bell
  Result<client::Client> c = client::Client::connect(name, connect);
  if (!c.is_ok()) return c.status().with_context("TCP front-end");
  auto entry =
      std::make_unique<ModelEntry>(name, std::move(c).value(), wire::ModelInfo{name, {}, {}});
  for (const shm::TensorSpec& t : entry->client.spec().input_specs()) {
    entry->info.inputs.push_back(describe(t));
  }
  for (const shm::TensorSpec& t : entry->client.spec().output_specs()) {
    entry->info.outputs.push_back(describe(t));
  }
  return entry;
}

uint32_t input_bytes(const ModelEntry& entry) {
  uint64_t bytes = 0;
  for (const shm::TensorSpec& t : entry.client.spec().input_specs()) bytes += t.byte_size();
  return uint32_t(bytes);
}

// On the entry's I/O thread.
void add_entry(IoThread& io, std::unique_ptr<ModelEntry> entry) {
  io.limits.max_data_bytes = std::max(io.limits.max_data_bytes, input_bytes(*entry));
  io.models.push_back(std::move(entry));
  io.update_served();
}

}  // namespace

Status TcpServer::add_model(const std::string& name) {
  std::vector<std::unique_ptr<ModelEntry>> entries;
  for (size_t i = 0; i < impl_->threads.size(); ++i) {
    ASSIGN_OR_RETURN(auto entry, connect_entry(impl_->options.instance, name));
    entries.push_back(std::move(entry));
  }
  for (size_t i = 0; i < impl_->threads.size(); ++i) {
    IoThread& io = *impl_->threads[i];
    io.post([&io, e = std::move(entries[i])]() mutable { add_entry(io, std::move(e)); });
  }
  spdlog::info("tcp: serving model {}", name);
  return Status::ok();
}

void TcpServer::remove_model(const std::string& name) {
  for (auto& t : impl_->threads) {
    IoThread& io = *t;
    io.post([&io, name] {
      auto it = std::find_if(io.models.begin(), io.models.end(),
                             [&](auto& m) { return m->name == name; });
      if (it == io.models.end()) return;
      io.retired.push_back(std::move(*it));
      io.models.erase(it);
      io.update_served();
      io.sweep_retired();
    });
  }
  spdlog::info("tcp: model {} no longer served", name);
}

Result<std::unique_ptr<TcpServer>> TcpServer::start(const TcpServerOptions& options) {
  ASSIGN_OR_RETURN(auto host_port, checked_listen_address(options.address, options.token));
  const auto& [host, port] = host_port;
  auto impl = std::make_unique<Impl>();
  impl->options = options;
  const unsigned n_threads = std::max(1u, options.io_threads);
  for (unsigned i = 0; i < n_threads; ++i) {
    auto io = std::make_unique<IoThread>();
    io->limits.max_header_bytes = options.max_header_bytes;
    io->limits.max_data_bytes = 0;
    for (const std::string& name : options.models) {
      ASSIGN_OR_RETURN(auto entry, connect_entry(options.instance, name));
      add_entry(*io, std::move(entry));
    }
    impl->threads.push_back(std::move(io));
  }

  tcp::acceptor& acceptor = impl->acceptor.emplace(impl->threads[0]->ioc);
  RETURN_IF_ERROR(
      listen_on<asio::error_code>(acceptor, host, port, options.address, "TCP front-end"));
  impl->accept();
  for (auto& t : impl->threads) {
    t->thread = std::thread([io = t.get(), poll = std::chrono::microseconds(options.poll_us)] {
      // A handler that throws (only allocation can) must not end the thread silently.
      for (;;) {
        try {
          io->run(poll);
          return;
        } catch (const std::exception& e) {
          spdlog::error("tcp: I/O thread: {}", e.what());
        }
      }
    });
  }
  auto server = std::unique_ptr<TcpServer>(new TcpServer(std::move(impl)));
  spdlog::info("tcp: serving {} models on {} (port {}, {} I/O threads{})", options.models.size(),
               options.address, server->port(), n_threads,
               options.token.empty() ? "" : ", token required");
  return server;
}

}  // namespace sliceserve::controller
