// slicectl status: one row per model segment of the instance, read straight from shared memory
// (the controller's summary block and the owning worker's stats block).

#include <fmt/core.h>

#include <cstdio>
#include <cstring>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "slicectl.h"
#include "sliceserve/shm/futex.h"
#include "sliceserve/shm/layout.h"
#include "sliceserve/shm/segment.h"
#include "sliceserve/shm/segment_control.h"

namespace sliceserve::slicectl {
namespace {

struct WorkerInfo {
  uint64_t epoch = 0;
  int32_t pid = 0;
  std::string state;
  uint32_t slice_percent = 0;
  uint32_t max_batch = 0;
  std::string message;  // why it failed (state "failed"), e.g. "no CUDA device: ..."
};

// The stats block of `epoch`, if that epoch's worker has published one.
std::optional<WorkerInfo> worker_info(const shm::Segment& segment, uint64_t epoch) {
  if (epoch == 0) return std::nullopt;
  const shm::WorkerStats& st = segment.stats_block(epoch);
  // Acquire pairs with publish_state's release: the block's fields belong to this epoch.
  if (st.epoch.load(std::memory_order_acquire) != epoch) return std::nullopt;
  WorkerInfo w;
  w.epoch = epoch;
  w.pid = st.pid.load(std::memory_order_relaxed);
  w.state = shm::worker_state_name(st.state.load(std::memory_order_relaxed));
  w.slice_percent = st.slice_percent.load(std::memory_order_relaxed);
  w.max_batch = st.max_batch.load(std::memory_order_relaxed);
  if (st.state.load(std::memory_order_relaxed) == uint32_t(shm::WorkerState::kFailed)) {
    w.message.assign(st.message, strnlen(st.message, sizeof st.message));
  }
  return w;
}

struct Row {
  std::string model;
  std::string error;  // non-empty: the segment could not be read
  uint64_t epoch = 0;
  int32_t pid = 0;
  std::string state;
  uint32_t slice_percent = 0;
  double arrival_rps = 0;
  double completion_rps = 0;
  double p50_ms = 0;
  double p99_ms = 0;
  uint32_t slo_ms = 0;
  uint32_t max_batch = 0;
  uint32_t restarts = 0;
  std::optional<uint64_t> summary_age_ms;  // none: the controller has not summarised yet
  uint32_t lanes = 0;
  uint32_t lanes_in_use = 0;
  uint32_t in_flight = 0;
  std::optional<WorkerInfo> shadow;
  std::string failure;  // the live epoch's worker failed: its message
  std::string backend;
  bool policy_on = true;
  uint32_t resizes = 0;
  uint32_t failed_resizes = 0;
  uint64_t completed_total = 0;
  std::string last_decision;
  std::string last_resize;
};

Row read_row(const std::string& instance, const std::string& model) {
  Row row;
  row.model = model;
  auto name = shm::segment_name(instance, model);
  if (!name.is_ok()) {
    row.error = name.status().message();
    return row;
  }
  auto segment = shm::Segment::attach(*name);
  if (!segment.is_ok()) {
    row.error = segment.status().message();
    row.state = segment.status().code() == ErrorCode::kServerGone ? "gone" : "unreadable";
    return row;
  }
  const shm::SegmentHeader& h = segment->header();
  const shm::ControllerSummary& s = h.summary;
  row.epoch = h.owner_epoch.load(std::memory_order_acquire);
  std::optional<WorkerInfo> live = worker_info(*segment, row.epoch);
  row.pid = live ? live->pid : s.worker_pid.load(std::memory_order_relaxed);
  row.state = live ? live->state : (row.epoch == 0 ? "no worker" : "starting");
  if (live) row.failure = live->message;
  row.slice_percent = s.slice_percent.load(std::memory_order_relaxed);
  if (row.slice_percent == 0 && live) row.slice_percent = live->slice_percent;
  row.max_batch = s.max_batch.load(std::memory_order_relaxed);
  if (row.max_batch == 0 && live) row.max_batch = live->max_batch;
  row.arrival_rps = double(s.arrival_milli_rps.load(std::memory_order_relaxed)) / 1000.0;
  row.completion_rps = double(s.completion_milli_rps.load(std::memory_order_relaxed)) / 1000.0;
  row.p50_ms = double(s.p50_us.load(std::memory_order_relaxed)) / 1000.0;
  row.p99_ms = double(s.p99_us.load(std::memory_order_relaxed)) / 1000.0;
  row.slo_ms = s.slo_ms.load(std::memory_order_relaxed);
  row.restarts = s.restarts.load(std::memory_order_relaxed);
  const uint64_t updated = s.updated_ns.load(std::memory_order_relaxed);
  if (updated != 0) {
    const uint64_t now = shm::monotonic_ns();
    row.summary_age_ms = now > updated ? (now - updated) / 1'000'000 : 0;
  }
  row.shadow = worker_info(*segment, s.shadow_epoch.load(std::memory_order_relaxed));
  row.backend = shm::load_text(s.backend);
  row.policy_on = s.policy_on.load(std::memory_order_relaxed) != 0;
  row.resizes = s.resizes.load(std::memory_order_relaxed);
  row.failed_resizes = s.failed_resizes.load(std::memory_order_relaxed);
  row.completed_total = s.completed_total.load(std::memory_order_relaxed);
  row.last_decision = shm::load_text(s.last_decision);
  row.last_resize = shm::load_text(s.last_resize);
  row.lanes = segment->geometry().lanes;
  row.lanes_in_use = uint32_t(__builtin_popcountll(h.active_lanes.load(std::memory_order_relaxed)));
  const shm::SlotCensus census = shm::slot_census(*segment);
  row.in_flight = census.writing + census.queued + census.claimed + census.done;
  return row;
}

nlohmann::json worker_json(const WorkerInfo& w) {
  return {
      {"epoch", w.epoch}, {"pid", w.pid}, {"state", w.state}, {"slice_percent", w.slice_percent}};
}

nlohmann::json row_json(const Row& r) {
  nlohmann::json j = {{"model", r.model}};
  if (!r.error.empty()) {
    j["state"] = r.state;
    j["error"] = r.error;
    return j;
  }
  j["slice_percent"] = r.slice_percent;
  j["worker_pid"] = r.pid;
  j["epoch"] = r.epoch;
  j["state"] = r.state;
  j["arrival_rps"] = r.arrival_rps;
  j["completion_rps"] = r.completion_rps;
  j["p50_ms"] = r.p50_ms;
  j["p99_ms"] = r.p99_ms;
  j["slo_ms"] = r.slo_ms;
  j["max_batch"] = r.max_batch;
  j["restarts"] = r.restarts;
  j["summary_age_ms"] = r.summary_age_ms ? nlohmann::json(*r.summary_age_ms) : nlohmann::json();
  j["lanes"] = r.lanes;
  j["lanes_in_use"] = r.lanes_in_use;
  j["in_flight"] = r.in_flight;
  j["shadow"] = r.shadow ? worker_json(*r.shadow) : nlohmann::json();
  j["backend"] = r.backend;
  if (!r.failure.empty()) j["failure"] = r.failure;
  j["policy"] = r.policy_on;
  j["resizes"] = r.resizes;
  j["failed_resizes"] = r.failed_resizes;
  j["completed_total"] = r.completed_total;
  j["last_decision"] = r.last_decision;
  j["last_resize"] = r.last_resize;
  return j;
}

void print_table(const std::string& instance, const std::vector<Row>& rows) {
  fmt::print("instance {}\n", instance);
  fmt::print("{:<20} {:>6} {:>8} {:>6} {:<10} {:>10} {:>10} {:>8} {:>8} {:>6} {:>5} {:>8}  {}\n",
             "MODEL", "SLICE%", "PID", "EPOCH", "STATE", "ARRIVAL/s", "DONE/s", "P50ms", "P99ms",
             "SLOms", "MAXB", "RESTARTS", "BACKEND/POLICY");
  for (const Row& r : rows) {
    if (!r.error.empty()) {
      fmt::print("{:<20} {}: {}\n", r.model, r.state, r.error);
      continue;
    }
    const std::string pid = r.pid > 0 ? std::to_string(r.pid) : "-";
    std::string state = r.state;
    if (r.shadow)
      state += fmt::format(" (+shadow {}% {})", r.shadow->slice_percent, r.shadow->state);
    if (r.summary_age_ms) {
      fmt::print(
          "{:<20} {:>6} {:>8} {:>6} {:<10} {:>10.1f} {:>10.1f} {:>8.2f} {:>8.2f} {:>6} "
          "{:>5} {:>8}  {} {}\n",
          r.model, r.slice_percent, pid, r.epoch, state, r.arrival_rps, r.completion_rps, r.p50_ms,
          r.p99_ms, r.slo_ms, r.max_batch, r.restarts, r.backend, r.policy_on ? "on" : "pinned");
    } else {  // no controller summary yet: rates and percentiles unknown
      fmt::print(
          "{:<20} {:>6} {:>8} {:>6} {:<10} {:>10} {:>10} {:>8} {:>8} {:>6} {:>5} {:>8}  {} {}\n",
          r.model, r.slice_percent, pid, r.epoch, state, "-", "-", "-", "-", r.slo_ms, r.max_batch,
          r.restarts, r.backend, r.policy_on ? "on" : "pinned");
    }
    if (!r.failure.empty()) fmt::print("    worker failed: {}\n", r.failure);
    if (!r.last_decision.empty()) fmt::print("    policy: {}\n", r.last_decision);
    if (!r.last_resize.empty()) {
      fmt::print("    last resize ({} done, {} failed): {}\n", r.resizes, r.failed_resizes,
                 r.last_resize);
    }
  }
}

}  // namespace

int run_status(const std::string& instance, const StatusOptions& options) {
  if (Status valid = shm::validate_name_part("instance", instance); !valid.is_ok()) {
    fmt::print(stderr, "slicectl: {}\n", valid.message());
    return kExitFailure;
  }
  const std::vector<std::string> models = shm::list_segment_models(instance);
  if (models.empty()) {
    fmt::print(stderr, "no models served by instance {} (is sliceserved running?)\n", instance);
    return kExitFailure;
  }
  std::vector<Row> rows;
  bool any_readable = false;
  for (const std::string& m : models) {
    rows.push_back(read_row(instance, m));
    any_readable = any_readable || rows.back().error.empty();
  }
  if (options.json) {
    nlohmann::json doc = {{"instance", instance}, {"models", nlohmann::json::array()}};
    for (const Row& r : rows) doc["models"].push_back(row_json(r));
    fmt::print("{}\n", doc.dump());
  } else {
    print_table(instance, rows);
  }
  if (!any_readable) {
    fmt::print(stderr, "no live models in instance {} (is sliceserved running?)\n", instance);
    return kExitFailure;
  }
  return kExitOk;
}

}  // namespace sliceserve::slicectl
