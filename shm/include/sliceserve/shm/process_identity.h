#pragma once
// Identifies a process across pid reuse: pid plus its start time from /proc/<pid>/stat.

#include <sys/types.h>

#include "sliceserve/shm/layout.h"

namespace sliceserve::shm {

ProcessIdentity self_identity();
ProcessIdentity identity_of(pid_t pid);  // 0 if the process does not exist
pid_t identity_pid(ProcessIdentity identity);
// True while the process named by the identity runs (same pid and same start time).
bool is_alive(ProcessIdentity identity);

}  // namespace sliceserve::shm
