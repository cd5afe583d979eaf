#pragma once
// CPU ids, cpu lists and thread pinning (Linux sched/pthread affinity).

#include <pthread.h>

#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "sliceserve/shm/status.h"

namespace sliceserve::backends {

// Largest cpu id a cpu list may name (keeps "0-4000000000" from allocating gigabytes).
inline constexpr unsigned kMaxCpuId = 65535;

// Parses a Linux cpu list as in /sys/devices/system/cpu/online or cpuset files: comma-separated
// ids and inclusive ranges, e.g. "0-3,6". Surrounding whitespace (a trailing newline) is allowed;
// an empty list is valid and yields no cpus. Returns ascending, unique ids; kInvalidArgument on
// anything else ("1-", "3-1", "1,,2", "x").
Result<std::vector<unsigned>> parse_cpu_list(std::string_view text);

// The inverse: ascending unique ids with runs collapsed ("0-3,6"); input order does not matter.
std::string format_cpu_list(std::span<const unsigned> cpus);

// The cpus this process may run on, ascending: the affinity mask of the process (its main thread,
// as set by taskset or the controller) when first asked, which create_cpu_slice does before it
// pins any thread. Cached, so that slices pinning the main thread later do not shrink it.
Result<std::vector<unsigned>> process_cpus();

// Affinity of the calling thread, ascending.
Result<std::vector<unsigned>> current_thread_cpus();

// Sets the affinity of a thread to exactly `cpus` (non-empty). Errors carry the errno text.
Status set_thread_cpus(pthread_t thread, std::span<const unsigned> cpus);
Status pin_thread(pthread_t thread, unsigned cpu);

}  // namespace sliceserve::backends
