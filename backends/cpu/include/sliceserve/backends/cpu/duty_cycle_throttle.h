#pragma once
// The CPU-time quota of a cpu slice whose share is not a whole number of cores, enforced in the
// worker by a duty cycle: after each batch the compute threads sleep so that, over a sliding
// window, busy / (busy + idle) == duty. (cgroup v2 cpu.max would do this in the kernel; it is not
// used here, the throttle works everywhere, cgroup v1 hosts included.)
//
// Accounting is a debt in idle time, so the long-run ratio is exact whatever the batch lengths
// and sleep overshoot:
//   - a batch of busy time b owes b * (1 - duty) / duty of idle time;
//   - all wall time between end() and the next begin() (the sleep itself, any overshoot, and
//     time spent waiting for requests) pays the debt; surplus idle time banks a credit, capped at
//     what kBurst of full-speed busy time would owe, so a long idle spell cannot buy a long burst;
//   - end() asks to sleep the whole debt, but at most max(kMinStallCap, 2 x the recent average
//     per-batch debt). One unusually long batch therefore does not stall the worker for as long
//     as it ran: the rest of its debt is carried and repaid a little on each of the next batches.
// Pure arithmetic on the time points it is given, so it is testable without sleeping.

#include <chrono>

namespace sliceserve::backends {

class DutyCycleThrottle {
 public:
  using Clock = std::chrono::steady_clock;
  using Duration = std::chrono::nanoseconds;

  static constexpr Duration kBurst = std::chrono::milliseconds(10);
  static constexpr Duration kMinStallCap = std::chrono::milliseconds(20);

  // duty in (0, 1]; 1 (or anything within 1e-9 of it) disables the throttle.
  explicit DutyCycleThrottle(double duty = 1.0) { set_duty(duty); }

  // Changes the duty and forgets the debt and credit (a resize starts afresh).
  void set_duty(double duty);
  double duty() const { return duty_; }
  bool active() const { return duty_ < 1.0; }

  // A batch starts at `now`.
  void begin(Clock::time_point now);
  // The batch started by begin() ended at `now`; returns how long to sleep now (maybe zero).
  Duration end(Clock::time_point now);

  // Idle time still owed (positive) or banked (negative).
  Duration owed() const { return Duration(static_cast<Duration::rep>(owed_ns_)); }

 private:
  double duty_ = 1.0;
  double idle_per_busy_ = 0.0;  // (1 - duty) / duty
  double owed_ns_ = 0.0;
  double average_debt_ns_ = 0.0;  // exponential moving average of one batch's debt
  Clock::time_point batch_start_{};
  Clock::time_point last_end_{};
  bool ended_once_ = false;
};

}  // namespace sliceserve::backends
