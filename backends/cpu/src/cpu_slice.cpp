#include "sliceserve/backends/cpu/cpu_slice.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <memory>
#include <thread>
#include <utility>
#include <vector>

#include "pinned_pool.h"
#include "sliceserve/backends/cpu/cpu_topology.h"
#include "sliceserve/backends/cpu/duty_cycle_throttle.h"

namespace sliceserve::backends {
namespace {

constexpr double kWholeCoreSlack = 1e-9;  // 33.3333...% of 3 cores is one core, not two

Status check_percent(double percent) {
  if (!(percent > 0.0 && percent <= 100.0)) {  // also rejects NaN
    return Status(ErrorCode::kInvalidArgument,
                  "cpu slice percent must be in (0, 100], got " + std::to_string(percent));
  }
  return Status::ok();
}

std::string format_percent(double value) {
  char text[32];
  std::snprintf(text, sizeof text, "%.4g%%", value);
  return text;
}

// One prepared share of an affinity slice (the only one of a process slice).
struct PoolEntry {
  double percent = 0;
  CpuSharePlan plan;
  std::vector<unsigned> cpus;  // cpus[i]: compute thread i's cpu
};

class CpuSlice final : public Slice {
 public:
  CpuSlice(CpuSliceOptions options, std::vector<unsigned> machine, PoolEntry first,
           std::unique_ptr<PinnedPool> pool)
      : options_(std::move(options)),
        machine_(std::move(machine)),
        pool_(std::move(pool)),
        throttle_(first.plan.duty) {
    entries_.push_back(std::move(first));
  }

  unsigned concurrency() const override { return pool_->size(); }
  std::vector<unsigned> host_cpus() const override { return pool_->cpus(); }

  void parallel_for(size_t n, const std::function<void(size_t, size_t)>& fn) override {
    pool_->run(n, fn);
  }

  SliceInfo info() const override {
    const PoolEntry& entry = entries_[active_];
    SliceInfo info;
    info.backend = "cpu";
    info.mode = options_.mode;
    info.percent = entry.percent;
    info.threads = pool_->size();
    info.duty = entry.plan.duty;
    info.placement = "cores " + format_cpu_list(pool_->cpus()) + ", " +
                     (throttle_.active() ? "quota " + format_percent(100.0 * entry.plan.duty)
                                         : std::string("no quota"));
    return info;
  }

  void begin_batch() override {
    if (throttle_.active()) throttle_.begin(DutyCycleThrottle::Clock::now());
  }

  void end_batch() override {
    if (!throttle_.active()) return;
    const DutyCycleThrottle::Duration sleep = throttle_.end(DutyCycleThrottle::Clock::now());
    if (sleep > DutyCycleThrottle::Duration::zero()) std::this_thread::sleep_for(sleep);
  }

  bool resizes_in_place() const override { return options_.mode == "affinity"; }

  Result<size_t> prepare(double percent) override {
    if (!resizes_in_place()) {
      return Status(ErrorCode::kUnavailable,
                    "cpu mode=" + options_.mode + " changes its share by shadow resize");
    }
    ASSIGN_OR_RETURN(CpuSharePlan plan, plan_cpu_share(percent, options_.machine_cores));
    for (size_t i = 0; i < entries_.size(); ++i) {
      if (std::abs(entries_[i].percent - percent) <= kSamePercent) return i;
    }
    PoolEntry entry{percent, plan,
                    pick_cpus(machine_, options_.machine_cores, options_.first_core, plan.threads)};
    RETURN_IF_ERROR(pool_->reserve(entry.cpus));
    entries_.push_back(std::move(entry));
    return entries_.size() - 1;
  }

  std::vector<double> pool() const override {
    std::vector<double> shares;
    for (const PoolEntry& entry : entries_) shares.push_back(entry.percent);
    return shares;
  }

  Status select(size_t index) override {
    if (index >= entries_.size()) {
      return Status(ErrorCode::kInvalidArgument, "cpu slice pool has no entry " +
                                                     std::to_string(index) + " (it holds " +
                                                     std::to_string(entries_.size()) + ")");
    }
    if (index == active_) return Status::ok();
    const PoolEntry& entry = entries_[index];
    RETURN_IF_ERROR(pool_->activate(entry.cpus));
    active_ = index;
    throttle_.set_duty(entry.plan.duty);
    return Status::ok();
  }

  // Thread i runs on logical core (first_core + i) mod machine_cores, i.e. on the cpu at that
  // position of the process's cpu list (modulo its length when machine_cores is simulated).
  static std::vector<unsigned> pick_cpus(const std::vector<unsigned>& machine,
                                         unsigned machine_cores, unsigned first_core,
                                         unsigned threads) {
    std::vector<unsigned> cpus;
    for (unsigned i = 0; i < threads; ++i) {
      cpus.push_back(machine[((first_core + i) % machine_cores) % machine.size()]);
    }
    return cpus;
  }

 private:
  static constexpr double kSamePercent = 1e-9;

  CpuSliceOptions options_;         // options_.percent: the share the slice was created with
  std::vector<unsigned> machine_;   // cpus this process may run on, ascending
  std::vector<PoolEntry> entries_;  // prepared shares; entries_[0] is the initial one
  size_t active_ = 0;
  std::unique_ptr<PinnedPool> pool_;
  DutyCycleThrottle throttle_;
};

}  // namespace

Result<CpuSharePlan> plan_cpu_share(double percent, unsigned machine_cores) {
  RETURN_IF_ERROR(check_percent(percent));
  if (machine_cores == 0) {
    return Status(ErrorCode::kInvalidArgument, "cpu slice needs a machine with cores");
  }
  CpuSharePlan plan;
  plan.share_cores = percent / 100.0 * machine_cores;
  plan.threads = std::max(1u, unsigned(std::ceil(plan.share_cores - kWholeCoreSlack)));
  plan.duty = plan.share_cores / plan.threads;
  if (plan.duty >= 1.0 - kWholeCoreSlack) plan.duty = 1.0;
  return plan;
}

Result<std::unique_ptr<Slice>> create_cpu_slice(const CpuSliceOptions& options) {
  RETURN_IF_ERROR(check_percent(options.percent));
  if (options.mode != "process" && options.mode != "affinity") {
    return Status(ErrorCode::kInvalidArgument,
                  "unknown cpu slice mode \"" + options.mode + "\" (process|affinity)");
  }
  ASSIGN_OR_RETURN(std::vector<unsigned> machine, process_cpus());
  if (machine.empty()) return Status(ErrorCode::kUnavailable, "this process may run on no cpu");
  CpuSliceOptions resolved = options;
  if (resolved.machine_cores == 0) resolved.machine_cores = unsigned(machine.size());
  if (resolved.first_core >= resolved.machine_cores) {
    return Status(ErrorCode::kInvalidArgument,
                  "cpu slice first_core " + std::to_string(resolved.first_core) +
                      " is not below the machine's " + std::to_string(resolved.machine_cores) +
                      " cores");
  }
  ASSIGN_OR_RETURN(CpuSharePlan plan, plan_cpu_share(resolved.percent, resolved.machine_cores));
  PoolEntry first{
      resolved.percent, plan,
      CpuSlice::pick_cpus(machine, resolved.machine_cores, resolved.first_core, plan.threads)};
  ASSIGN_OR_RETURN(std::unique_ptr<PinnedPool> pool, PinnedPool::create(first.cpus));
  return std::unique_ptr<Slice>(std::make_unique<CpuSlice>(std::move(resolved), std::move(machine),
                                                           std::move(first), std::move(pool)));
}

}  // namespace sliceserve::backends
