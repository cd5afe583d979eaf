#pragma once
// The SLO policy (GSLICE-style): every policy interval, from each model's observed stats, decide
// its slice of the device and its batch size. A pure function of its inputs and of the memory it
// carries between intervals, so it is unit-tested without processes (tests/unit/policy_test.cpp,
// with the closed-loop simulator in tests/support/policy_simulator.h).
//
// The rules, in the order decide() applies them to each model:
//
// 1. Learning. A measured mean execution time of a batch of b at slice s becomes the time at
//    100% of the device, exec_full(b) = exec_ms * s / 100 (compute-bound work scales as 1/slice),
//    folded into an exponential moving average (`exec_ema_alpha`; the first measurement of a
//    size is taken as is; zero, negative, non-finite and size-0 entries are ignored). Sizes are
//    predicted from a least-squares line exec_full(b) = a + c*b (a, c >= 0) weighted by how
//    many intervals each size was measured in; a size measured in 8 or more intervals uses its
//    own average (so a curve that is not a line is right where it is used). With a single size
//    b0 measured: proportional above it, flat below it (pessimistic both ways).
// 2. p99 model of a greedy batcher at slice s, batch limit b, arrivals lambda (per ms), with
//    e(n) the execution time of a batch of n at s: a batch holds what arrived while the previous
//    one ran, the fixed point n = min(b, lambda * e(n)); the queue at a batch start is Poisson
//    around it, widened by the feedback gain g = lambda * de/dn (a larger batch runs longer and
//    gathers a larger next one): n99 = n + 2.33 * sqrt(n / (1 - g)) + 1. A request waits for the
//    batch in progress, for the batches ahead of it, then runs in its own:
//      p99 ~ latency_scale * (fill + e(m) * (1 + n99 / m)),  m = min(b, n99),
//      fill = min((b - 1) / lambda, max_queue_delay_ms)  (bounded by e(m) when the delay is 0).
//    `latency_scale` is learned online: after a steady interval (no change for 2 intervals,
//    throughput keeping up for 3, p99 <= 2 x SLO) the ratio measured / modelled p99, clamped to
//    [latency_scale_min, latency_scale_max], is averaged into it.
// 3. Need: the smallest slice, over b <= max_batch_cap, at which batch limit b sustains the
//    arrivals at `target_utilization` (b / e(b) >= lambda / target_utilization), the p99 model
//    stays under target_p99_fraction x SLO, and a full batch behind another full one finishes
//    within grow_p99_fraction x SLO (fill + 2 e(b)). At least min_slice, possibly beyond the
//    device. "Keep" is the need at the busiest arrival rate of the last 2 x shrink_after
//    intervals, plus `shrink_margin`: the least a shrink or a shortage may leave a model.
// 4. Grow when completions trail arrivals by more than `throughput_slack` x arrivals (and 1/s)
//    or p99 > grow_p99_fraction x SLO. If the model sees at least min_step missing, the slice
//    jumps straight to need x (1 + grow_margin) in one decision. Otherwise (the model says the
//    slice suffices, or is off by less than min_step) it grows only when the SLO is violated or
//    the trigger held two intervals in a row, by the measured ratio (p99 / threshold, arrivals /
//    completions; +min_step .. 2x); the learned latency_scale then corrects the model. Without
//    any measurement yet, only this measured-ratio growth applies.
// 5. Shrink only after p99 < shrink_p99_fraction x SLO with throughput keeping up for
//    `shrink_after` consecutive intervals, down to "keep", and only if that frees min_step. A
//    shrink undone by a grow within 2 x shrink_after intervals doubles the model's shrink_after
//    (up to 8x) and makes the failed slice a floor that later shrinks stay min_step above while
//    arrivals stay above 75% of the rate then; 4 x shrink_after intervals after a shrink that held,
//    the doubling is undone once. An idle model with nothing learned goes to min_slice.
// 6. Hysteresis. No change below min_step. After a change a model waits `cooldown` intervals,
//    except a grow when p99 > SLO and the model sees min_step or more missing (violation
//    overrides the cooldown; a backlog left from before the last change does not, because there
//    the model says the new slice suffices). Sizing aims at target_p99_fraction, inside the band
//    between shrink_p99_fraction and grow_p99_fraction.
// 7. Pinned models keep their slice and batch; their slices count against the device.
// 8. Device. If pinned slices plus wanted slices exceed device_capacity: every model gets
//    min_slice (or an equal share of what is left if even that does not fit), then in priority
//    order up to its claim (a growing model: what it asked for; any other: "keep", or its slice
//    when that would take less than min_step), then what is left up to what each wanted. Changes
//    below min_step are undone where the capacity allows. Priority: the order of the shortage so
//    far (a short model's soaring p99 must not flip it every interval; the order is forgotten
//    after shrink_after intervals without shortage), then the tightest SLO margin first
//    (max(p99 / SLO, need / slice)), then name. Shortfall = the summed deficits below
//    min(need, claim), plus pinned slices beyond the device; the models with a deficit are named.
// 9. Batch, at the slice finally given: the largest b <= max_batch_cap that sustains the arrivals
//    and whose full batch behind a full batch fits grow_p99_fraction x SLO (a larger limit only
//    helps a greedy batcher's p99 otherwise), moving up only when it fits with 10% to spare and
//    down only when the current one misses by more than 10%. If none fits (the device is short):
//    the smallest that sustains the arrivals, else the cap (throughput first).
//
// Every decision carries a one-line reason with its inputs, e.g. "grow 40->52.7: p99 67ms >
// 0.8*50ms, arrivals 608/s ~ completions 564/s, busy 100%, batch 10->14 exec 17.4ms@40%, need
// 47.9% (p99 model x0.88)", for the controller's log and status.

#include <cstdint>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <vector>

namespace sliceserve::controller {

struct PolicyConfig {
  double device_capacity = 100;      // sum of all slices may not exceed this (percent)
  double min_slice = 5;              // no model goes below this share
  double min_step = 5;               // smallest slice change worth a resize (percent points)
  double grow_p99_fraction = 0.8;    // grow when p99 exceeds this fraction of the SLO ...
  double shrink_p99_fraction = 0.5;  // ... shrink when p99 stays below this fraction ...
  uint32_t shrink_after = 6;         // ... for this many consecutive intervals
  uint32_t cooldown = 2;             // intervals to wait after a change before the next one
  double target_utilization = 0.8;   // busy fraction aimed at when sizing a slice
  // Added with the implementation:
  double target_p99_fraction = 0.6;  // sizing aims the p99 model at this fraction of the SLO
  double shrink_margin = 0.3;        // a shrink keeps this fraction above the need (the real
                                     // system has throttle and co-scheduling delays the
                                     // model does not see)
  double grow_margin = 0.1;          // a grow adds this fraction to the need (<= shrink_margin)
  double throughput_slack = 0.1;     // completions may trail arrivals by this fraction (noise)
  double exec_ema_alpha = 0.3;       // weight of a new execution-time measurement
  double latency_scale_min = 0.5;    // bounds of the learned p99 model correction
  double latency_scale_max = 4.0;
};

// What the controller measured for one model over the last interval.
struct ModelObservation {
  std::string name;
  double slo_ms = 0;           // p99 objective
  double slice = 0;            // current share, percent
  uint32_t max_batch = 1;      // batch limit in force
  uint32_t max_batch_cap = 1;  // the configured limit the policy may not exceed
  bool pinned = false;         // policy off for this model: report, never change
  double arrival_rps = 0;
  double completion_rps = 0;
  double p99_ms = 0;         // 0 when nothing completed
  double busy_fraction = 0;  // share of wall time the worker ran batches
  // Mean execution time of a batch by its size, measured at the current slice this interval.
  std::map<uint32_t, double> exec_ms_by_batch;
  // Added: how long a partial batch waits for more requests (the model's max_queue_delay_us /
  // 1000); 0 when unknown, then the fill wait is bounded by a batch's execution time.
  double max_queue_delay_ms = 0;
};

// What the policy remembers about a model between intervals.
struct ModelMemory {
  uint32_t headroom_streak = 0;  // consecutive intervals with lasting headroom
  uint32_t cooldown_left = 0;
  // Learned execution time per item-slot: exec_ms(batch) at 100% of the device, per batch size
  // (scaled from measurements at whatever slice they were taken), an exponential average.
  std::map<uint32_t, double> exec_ms_full_device;
  // Added with the implementation:
  std::map<uint32_t, uint32_t> exec_samples;  // intervals each size was measured in (capped at 8)
  double latency_scale = 1;                   // learned measured-p99 / modelled-p99 ratio
  std::vector<double> recent_arrival_rps;     // the last 2 x shrink_after intervals' arrivals
  uint32_t stable_intervals = 0;              // intervals since the last slice or batch change
  uint32_t short_streak = 0;           // consecutive intervals with completions short of arrivals
  uint32_t keep_up_streak = 0;         // consecutive intervals with completions keeping up
  uint32_t high_streak = 0;            // consecutive intervals with p99 above the grow threshold
  uint32_t since_shrink = UINT32_MAX;  // intervals since the last shrink (UINT32_MAX: none yet)
  uint32_t shrink_backoff = 0;         // shrink_after is multiplied by 2^shrink_backoff (max 3)
  double shrink_floor = 0;             // a shrink to this slice had to be undone: stay above it ...
  double shrink_floor_rps = 0;         // ... while arrivals stay above 75% of this rate
  uint32_t shortage_rank = UINT32_MAX;  // place in the order of the current device shortage
};

struct PolicyMemory {
  std::map<std::string, ModelMemory> models;
  uint32_t intervals_without_shortage = 0;  // added: clears the ranks after shrink_after
};

struct Decision {
  std::string model;
  double slice = 0;  // new share (== observation's when unchanged)
  uint32_t max_batch = 1;
  bool slice_changed = false;
  bool batch_changed = false;
  std::string reason;  // one line with the inputs that led to it, for logs/status
  // Added: what the model needs by the policy's model (0 when it has no measurement yet), and
  // whether the device left it below that.
  double needed_slice = 0;
  bool short_of_device = false;
};

struct PolicyResult {
  std::vector<Decision> decisions;        // one per observation, same order
  double shortfall = 0;                   // percent the models would need beyond the device
  std::vector<std::string> short_models;  // models left below what they need
};

PolicyResult decide(const PolicyConfig& config, std::span<const ModelObservation> models,
                    PolicyMemory& memory);

// The policy's prediction of a batch's execution time (ms) at `slice` percent from what `memory`
// learned, without the latency correction; nullopt before any measurement. For status and tests.
std::optional<double> predicted_exec_ms(const ModelMemory& memory, uint32_t batch, double slice);

}  // namespace sliceserve::controller
