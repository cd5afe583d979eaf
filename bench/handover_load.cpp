// handover_bench: the open-loop load generator. One sender thread issues requests at a
// constant rate round robin over the clients (each its own client lane) and never waits for an
// answer; the clients' completion threads stamp each answer and check it (y = 2x + 1).

#include <sys/prctl.h>
#include <time.h>

#include <array>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <span>

#include "handover_bench.h"

namespace sliceserve::bench {
namespace {

constexpr auto kRequestTimeout = std::chrono::milliseconds(10000);
constexpr size_t kKeptErrors = 8;

void sleep_until(uint64_t t_ns) {
  timespec ts{time_t(t_ns / 1'000'000'000ULL), long(t_ns % 1'000'000'000ULL)};
  while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, nullptr) == EINTR) {
  }
}

}  // namespace

Result<std::unique_ptr<Load>> Load::connect(const std::string& instance, int clients,
                                            bool onnx) {
  auto load = std::unique_ptr<Load>(new Load());
  load->onnx_ = onnx;
  client::ConnectOptions options;
  options.instance = instance;
  options.default_timeout = kRequestTimeout;
  for (int i = 0; i < clients; ++i) {
    Result<client::Client> c = client::Client::connect(kModel, options);
    if (!c.is_ok()) return c.status().with_context("client " + std::to_string(i));
    load->clients_.push_back(std::make_unique<client::Client>(std::move(c).value()));
  }
  if (onnx) {
    const shm::ModelSpec& spec = load->clients_.front()->spec();
    const auto inputs = spec.input_specs();
    const auto outputs = spec.output_specs();
    if (inputs.size() != 1 || outputs.size() != 1 || inputs[0].dtype != shm::DataType::kFp32 ||
        outputs[0].dtype != shm::DataType::kFp32) {
      return Status(ErrorCode::kInvalidArgument,
                    "the ONNX model must have one FP32 input and one FP32 output");
    }
    load->input_name_ = std::string(inputs[0].name_view());
    load->input_shape_.assign(inputs[0].shape().begin(), inputs[0].shape().end());
    load->output_elements_ = outputs[0].byte_size() / sizeof(float);
    std::mt19937 rng(7);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    for (size_t v = 0; v < kVariants; ++v) {
      std::vector<float> x(inputs[0].byte_size() / sizeof(float));
      for (float& e : x) e = normal(rng);
      load->variants_.push_back(std::move(x));
    }
    load->references_.resize(kVariants);
  }
  load->chunks_.resize(kMaxChunks);
  return load;
}

Load::~Load() {
  stop_sending();
  disconnect();
}

void Load::start(double rate) {
  started_ns_ = now_ns();
  sender_ = std::thread([this, rate] { send_loop(rate); });
}

void Load::stop_sending() {
  stop_.store(true, std::memory_order_relaxed);
  if (sender_.joinable()) sender_.join();
}

void Load::disconnect() { clients_.clear(); }

void Load::send_loop(double rate) {
  // The default timer slack (50 us) would smear the send times.
  prctl(PR_SET_TIMERSLACK, 1UL);
  const double period_ns = 1e9 / rate;
  std::array<float, kTensorElements> x{};
  client::Tensor tensor{input_name_, shm::DataType::kFp32, input_shape_, {}};
  for (size_t i = 0; !stop_.load(std::memory_order_relaxed); ++i) {
    // Open loop: request i is due at start + i x period whatever happened to the earlier ones.
    const uint64_t due = started_ns_ + uint64_t(double(i) * period_ns);
    if (now_ns() < due) sleep_until(due);
    if ((i & kChunkMask) == 0) {
      // Published to the completion threads by the client's submission (its lock and ring).
      chunks_[i >> kChunkBits] = std::make_unique<Request[]>(kChunkMask + 1);
    }
    if (onnx_) {
      tensor.data = std::as_bytes(std::span(variants_[i % kVariants]));
    } else {
      for (int k = 0; k < kTensorElements; ++k) x[size_t(k)] = input_value(i, k);
      tensor.data = std::as_bytes(std::span(x));
    }
    Request& r = chunks_[i >> kChunkBits][i & kChunkMask];
    r.send_ns = now_ns();
    sent_.store(i + 1, std::memory_order_release);
    clients_[i % clients_.size()]->infer_async(
        std::span(&tensor, 1),
        [this, i](Result<client::InferResult> result) { on_done(i, std::move(result)); },
        kRequestTimeout);
    if (i + 1 == kMaxChunks << kChunkBits) break;
  }
}

void Load::on_done(size_t index, Result<client::InferResult> result) {
  const uint64_t t = now_ns();
  Request& r = chunks_[index >> kChunkBits][index & kChunkMask];
  Outcome outcome = Outcome::kOk;
  std::string error;
  if (result.is_ok()) {
    r.queue_ns.store(result->queue_ns, std::memory_order_relaxed);
    r.compute_ns.store(result->compute_ns, std::memory_order_relaxed);
  }
  if (!result.is_ok()) {
    outcome = Outcome::kError;
    error = result.status().to_string();
  } else {
    std::span<const float> y =
        result->outputs.empty() ? std::span<const float>() : result->outputs[0].as<float>();
    if (onnx_) {
      error = check_onnx(index, y);
      if (!error.empty()) outcome = Outcome::kWrongOutput;
    } else if (y.size() != size_t(kTensorElements)) {
      outcome = Outcome::kWrongOutput;
      error = "output has " + std::to_string(y.size()) + " FP32 elements";
    } else {
      for (int k = 0; k < kTensorElements; ++k) {
        const float want = 2.0f * input_value(index, k) + 1.0f;
        if (y[size_t(k)] != want) {
          outcome = Outcome::kWrongOutput;
          error = "request " + std::to_string(index) + ": y[" + std::to_string(k) +
                  "] = " + std::to_string(y[size_t(k)]) + ", want " + std::to_string(want);
          break;
        }
      }
    }
  }
  if (!error.empty()) {
    std::lock_guard lock(errors_mu_);
    if (errors_.size() < kKeptErrors) errors_.push_back(error);
  }
  r.done_ns.store(t, std::memory_order_relaxed);
  r.outcome.store(uint8_t(outcome), std::memory_order_release);
  answered_.fetch_add(1, std::memory_order_acq_rel);
}

std::string Load::check_onnx(size_t index, std::span<const float> y) {
  if (y.size() != output_elements_) {
    return "request " + std::to_string(index) + ": output has " + std::to_string(y.size()) +
           " FP32 elements, not " + std::to_string(output_elements_);
  }
  for (float v : y) {
    if (!std::isfinite(v)) return "request " + std::to_string(index) + ": non-finite output";
  }
  std::lock_guard lock(reference_mu_);
  std::vector<float>& ref = references_[index % kVariants];
  if (ref.empty()) {
    ref.assign(y.begin(), y.end());
    return "";
  }
  double absmax = 1, diff = 0;
  for (size_t k = 0; k < y.size(); ++k) {
    absmax = std::max(absmax, double(std::fabs(ref[k])));
    diff = std::max(diff, double(std::fabs(y[k] - ref[k])));
  }
  if (diff > 1e-2 * absmax) {
    return "request " + std::to_string(index) + ": output differs from the first answer to the " +
           "same input by " + std::to_string(diff) + " (|max| " + std::to_string(absmax) + ")";
  }
  return "";
}

bool Load::drain(int timeout_ms) {
  const uint64_t deadline = now_ns() + uint64_t(timeout_ms) * kMs;
  while (answered() < sent()) {
    if (now_ns() > deadline) return false;
    timespec t{0, 2'000'000};
    nanosleep(&t, nullptr);
  }
  return true;
}

std::vector<std::string> Load::first_errors() const {
  std::lock_guard lock(errors_mu_);
  return errors_;
}

}  // namespace sliceserve::bench
