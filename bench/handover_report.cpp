// handover_bench: metrics over the request records, the CSV and the gnuplot figure.

#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>

#include "handover_bench.h"

namespace sliceserve::bench {
namespace {

constexpr uint64_t kWindowNs = 100 * kMs;   // throughput and p99 windows
constexpr uint64_t kRampNs = 200 * kMs;     // first windows left out of the steady state
constexpr uint64_t kGapBeforeNs = 5 * kMs;  // swap-gap window: command - 5 ms ...
constexpr uint64_t kGapAfterNs = 50 * kMs;  // ... to swap + 50 ms

// Nearest-rank percentile; 0 for no samples.
double percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  size_t rank = size_t(std::ceil(p / 100.0 * double(v.size())));
  rank = std::clamp<size_t>(rank, 1, v.size());
  return v[rank - 1];
}

double round1(double x) { return std::round(x * 10.0) / 10.0; }

struct Completion {
  uint64_t done;
  uint64_t send;
};

// Answered requests by completion time, and for each position the earliest send time among it
// and every later completion: the oldest request still waiting just before it completes.
struct Timeline {
  std::vector<Completion> c;
  std::vector<uint64_t> waiting_since;

  Timeline(const RunData& run, const std::vector<uint64_t>& done) {
    for (size_t i = 0; i < run.send_ns.size(); ++i) {
      if (run.outcome[i] == Outcome::kOk || run.outcome[i] == Outcome::kWrongOutput) {
        c.push_back({done[i], run.send_ns[i]});
      }
    }
    std::sort(c.begin(), c.end(), [](const Completion& a, const Completion& b) {
      return a.done < b.done || (a.done == b.done && a.send < b.send);
    });
    waiting_since.resize(c.size());
    uint64_t m = UINT64_MAX;
    for (size_t i = c.size(); i-- > 0;) {
      m = std::min(m, c[i].send);
      waiting_since[i] = m;
    }
  }

  // Over consecutive completions (a, b) with b >= lo and a <= hi: the longest interval between
  // them (`raw`), and the longest part of one during which a request was waiting (`stall`:
  // from max(a, oldest waiting request's send) to b). The stall is the server's pause: it leaves
  // out the time no request was there to complete.
  void gaps(uint64_t lo, uint64_t hi, double* stall_us, double* raw_us) const {
    *stall_us = 0;
    *raw_us = 0;
    auto it = std::lower_bound(c.begin(), c.end(), lo,
                               [](const Completion& x, uint64_t t) { return x.done < t; });
    size_t j = size_t(it - c.begin());
    if (j == 0) j = 1;
    for (; j < c.size() && c[j - 1].done <= hi; ++j) {
      const uint64_t a = c[j - 1].done;
      const uint64_t b = c[j].done;
      const uint64_t from = std::max(a, waiting_since[j]);
      *raw_us = std::max(*raw_us, double(b - a) / 1e3);
      *stall_us = std::max(*stall_us, double(b - from) / 1e3);
    }
  }
};

struct Window {
  uint64_t count = 0;
  double p99_ms = 0;
  bool resize = false;
};

std::vector<Window> windows(const RunData& run) {
  const size_t n = size_t((run.load_end_ns - run.load_start_ns) / kWindowNs);
  std::vector<std::vector<double>> lat(n);
  std::vector<Window> w(n);
  for (size_t i = 0; i < run.send_ns.size(); ++i) {
    if (run.outcome[i] != Outcome::kOk && run.outcome[i] != Outcome::kWrongOutput) continue;
    if (run.done_ns[i] < run.load_start_ns) continue;
    const size_t k = size_t((run.done_ns[i] - run.load_start_ns) / kWindowNs);
    if (k >= n) continue;
    ++w[k].count;
    lat[k].push_back(double(run.done_ns[i] - run.send_ns[i]) / 1e6);
  }
  for (size_t k = 0; k < n; ++k) w[k].p99_ms = percentile(std::move(lat[k]), 99);
  for (const ResizeEvent& e : run.resizes) {
    if (e.command_ns < run.load_start_ns) continue;
    const size_t k = size_t((e.command_ns - run.load_start_ns) / kWindowNs);
    if (k < n) w[k].resize = true;
  }
  return w;
}

// Where the program is on $PATH, or empty.
std::string find_on_path(const std::string& name) {
  const char* path = std::getenv("PATH");
  std::stringstream dirs(path ? path : "/usr/bin:/bin");
  std::string dir;
  while (std::getline(dirs, dir, ':')) {
    const std::string candidate = (dir.empty() ? "." : dir) + "/" + name;
    if (access(candidate.c_str(), X_OK) == 0) return candidate;
  }
  return {};
}

std::string gnuplot_quote(const std::string& s) {
  std::string out = "'";
  for (char ch : s) out += ch == '\'' ? std::string("''") : std::string(1, ch);
  return out + "'";
}

}  // namespace

Metrics compute_metrics(const RunData& run) {
  Metrics m;
  m.requests = run.send_ns.size();
  uint64_t ok = 0;
  std::vector<double> latency_ms;
  latency_ms.reserve(run.send_ns.size());
  for (size_t i = 0; i < run.send_ns.size(); ++i) {
    if (run.outcome[i] == Outcome::kOk) ++ok;
    if (run.outcome[i] == Outcome::kWrongOutput) ++m.wrong_outputs;
    if (run.outcome[i] == Outcome::kOk || run.outcome[i] == Outcome::kWrongOutput) {
      latency_ms.push_back(double(run.done_ns[i] - run.send_ns[i]) / 1e6);
    }
  }
  // Lost: every request without a correct answer (an error, no answer, a wrong answer).
  m.lost = m.requests - ok;
  // Whatever the workers completed beyond what the clients got back ran twice.
  m.duplicated = int64_t(run.completed_total) - int64_t(ok + m.wrong_outputs);
  m.latency_p50_ms = percentile(latency_ms, 50);
  m.latency_p99_ms = percentile(std::move(latency_ms), 99);

  const Timeline client(run, run.done_ns);
  const Timeline server(run, run.server_done_ns);
  // Requests by send time (the index order), for "was one waiting at time t".
  auto waiting_at = [&](uint64_t t) {
    auto it = std::upper_bound(run.send_ns.begin(), run.send_ns.end(), t);
    size_t i = size_t(it - run.send_ns.begin());
    while (i-- > 0 && run.send_ns[i] + 1000 * kMs > t) {
      const bool answered =
          run.outcome[i] == Outcome::kOk || run.outcome[i] == Outcome::kWrongOutput;
      if (answered && run.server_done_ns[i] > t) return true;
    }
    return false;
  };
  auto next_send_after = [&](uint64_t t) -> uint64_t {
    auto it = std::upper_bound(run.send_ns.begin(), run.send_ns.end(), t);
    return it == run.send_ns.end() ? t : *it;
  };

  // Windows [lo, hi] around each resize: from the command, and around the swap alone.
  std::vector<std::pair<uint64_t, uint64_t>> resize_windows, swap_windows;
  for (size_t k = 0; k < run.resizes.size(); ++k) {
    const ResizeEvent& e = run.resizes[k];
    if (!e.ok) continue;
    ++m.resizes_ok;
    const uint64_t swap = e.swap_ns ? e.swap_ns : e.done_ns;
    ResizeRow row;
    row.index = k;
    resize_windows.push_back({e.command_ns - kGapBeforeNs, swap + kGapAfterNs});
    swap_windows.push_back({swap - kGapBeforeNs, swap + kGapAfterNs});
    double unused = 0;
    client.gaps(resize_windows.back().first, resize_windows.back().second, &row.stall_us,
                &row.raw_us);
    server.gaps(resize_windows.back().first, resize_windows.back().second, &row.stall_server_us,
                &unused);
    client.gaps(swap_windows.back().first, swap_windows.back().second, &row.swap_only_us, &unused);
    server.gaps(swap_windows.back().first, swap_windows.back().second, &row.swap_only_server_us,
                &unused);
    if (e.first_batch_ns > e.command_ns) {
      row.effect_us = double(e.first_batch_ns - e.command_ns) / 1e3;
    }
    if (e.swap_ns > e.command_ns) row.apply_us = double(e.swap_ns - e.command_ns) / 1e3;
    row.admin_us = double(e.replied_ns - e.command_ns) / 1e3;
    if (e.swap_ns && e.first_batch_ns >= e.swap_ns) {
      row.first_batch_us = double(e.first_batch_ns - e.swap_ns) / 1e3;
      if (!waiting_at(e.swap_ns)) {
        const uint64_t next = std::min(next_send_after(e.swap_ns), e.first_batch_ns);
        row.request_wait_us = double(next - e.swap_ns) / 1e3;
      }
    }
    m.rows.push_back(row);
  }
  std::vector<double> effect, apply, first_batch, effect_busy, admin;
  for (const ResizeRow& r : m.rows) {
    admin.push_back(r.admin_us);
    if (r.effect_us > 0) {
      effect.push_back(r.effect_us);
      effect_busy.push_back(r.effect_us - r.request_wait_us);
    }
    if (r.apply_us > 0) apply.push_back(r.apply_us);
    if (r.first_batch_us > 0) first_batch.push_back(r.first_batch_us);
  }
  // p99 over the resizes of the longest stall (or raw interval) in each window, and the same
  // over back-to-back windows of the median length in the warm-up.
  auto gap = [&](const Timeline& t, const std::vector<std::pair<uint64_t, uint64_t>>& windows,
                 bool raw) {
    Gap g;
    if (windows.empty()) return g;
    std::vector<double> v, lengths;
    for (const auto& [lo, hi] : windows) {
      double stall = 0, interval = 0;
      t.gaps(lo, hi, &stall, &interval);
      v.push_back(raw ? interval : stall);
      lengths.push_back(double(hi - lo));
    }
    g.p50_us = percentile(v, 50);
    g.p99_us = percentile(v, 99);
    const uint64_t len = uint64_t(percentile(lengths, 50));
    std::vector<double> steady;
    for (uint64_t lo = run.load_start_ns + kRampNs; lo + len <= run.resize_phase_ns; lo += len) {
      double stall = 0, interval = 0;
      t.gaps(lo, lo + len, &stall, &interval);
      steady.push_back(raw ? interval : stall);
    }
    g.steady_p50_us = percentile(steady, 50);
    g.steady_p99_us = percentile(steady, 99);
    return g;
  };
  m.swap_gap = gap(client, resize_windows, false);
  m.swap_gap_server = gap(server, resize_windows, false);
  m.swap_only = gap(client, swap_windows, false);
  m.swap_only_server = gap(server, swap_windows, false);
  m.raw = gap(client, resize_windows, true);
  m.resize_effect_p50_us = percentile(effect, 50);
  m.resize_effect_p99_us = percentile(effect, 99);
  m.effect_busy_p50_us = percentile(effect_busy, 50);
  m.effect_busy_p99_us = percentile(effect_busy, 99);
  m.admin_p50_us = percentile(admin, 50);
  m.admin_p99_us = percentile(admin, 99);
  m.apply_p50_us = percentile(apply, 50);
  m.apply_p99_us = percentile(apply, 99);
  m.first_batch_p50_us = percentile(first_batch, 50);
  m.first_batch_p99_us = percentile(first_batch, 99);

  // Throughput: steady = median window of the warm-up; worst = the lowest window that lies
  // inside the resize phase (first command to the end of the last resize's gap window).
  const std::vector<Window> w = windows(run);
  uint64_t phase_end = run.resize_phase_ns;
  for (const ResizeEvent& e : run.resizes) {
    phase_end = std::max({phase_end, e.done_ns, e.swap_ns + kGapAfterNs});
  }
  std::vector<double> steady;
  double worst = -1;
  for (size_t k = 0; k < w.size(); ++k) {
    const uint64_t begin = run.load_start_ns + k * kWindowNs;
    const uint64_t end = begin + kWindowNs;
    const double rps = double(w[k].count) * 1e9 / double(kWindowNs);
    if (begin >= run.load_start_ns + kRampNs && end <= run.resize_phase_ns) steady.push_back(rps);
    if (begin >= run.resize_phase_ns && end <= phase_end) {
      worst = worst < 0 ? rps : std::min(worst, rps);
    }
  }
  m.steady_rps = percentile(steady, 50);
  m.worst_rps = worst < 0 ? m.steady_rps : worst;
  m.throughput_dip_pct =
      m.steady_rps > 0 ? (m.steady_rps - m.worst_rps) / m.steady_rps * 100.0 : 0.0;
  return m;
}

Status write_csv(const RunData& run, const std::string& path) {
  std::ofstream out(path);
  if (!out) return Status(ErrorCode::kInternal, "cannot write " + path);
  out << "t_ms,completions_per_s,p99_ms,resize\n";
  const std::vector<Window> w = windows(run);
  for (size_t k = 0; k < w.size(); ++k) {
    char line[128];
    std::snprintf(line, sizeof line, "%llu,%.0f,%.3f,%d\n",
                  static_cast<unsigned long long>(k * kWindowNs / kMs),
                  double(w[k].count) * 1e9 / double(kWindowNs), w[k].p99_ms, w[k].resize ? 1 : 0);
    out << line;
  }
  out.flush();
  if (!out) return Status(ErrorCode::kInternal, "cannot write " + path);
  return Status::ok();
}

Status write_resizes_csv(const RunData& run, const Metrics& m, const std::string& path) {
  std::ofstream out(path);
  if (!out) return Status(ErrorCode::kInternal, "cannot write " + path);
  out << "resize,from,to,t_ms,stall_us,stall_worker_us,swap_only_us,swap_only_worker_us,"
         "raw_gap_us,effect_us,admin_us,apply_us,first_batch_us,request_wait_us,shadow_extra_mb\n";
  for (const ResizeRow& r : m.rows) {
    const ResizeEvent& e = run.resizes[r.index];
    char line[320];
    std::snprintf(line, sizeof line,
                  "%zu,%.0f,%.0f,%.1f,%.1f,%.1f,%.1f,%.1f,%.1f,%.1f,%.1f,%.1f,%.1f,%.1f,%.2f\n",
                  r.index + 1, e.from, e.to, double(e.command_ns - run.load_start_ns) / 1e6,
                  r.stall_us, r.stall_server_us, r.swap_only_us, r.swap_only_server_us, r.raw_us,
                  r.effect_us, r.admin_us, r.apply_us, r.first_batch_us, r.request_wait_us,
                  e.shadow_private_mb);
    out << line;
  }
  out.flush();
  if (!out) return Status(ErrorCode::kInternal, "cannot write " + path);
  return Status::ok();
}

Status dump_requests(const RunData& run, const std::string& path) {
  std::ofstream out(path);
  if (!out) return Status(ErrorCode::kInternal, "cannot write " + path);
  out << "request,send_us,answer_us,worker_done_us,queue_us,compute_us,outcome\n";
  for (size_t i = 0; i < run.send_ns.size(); ++i) {
    auto rel = [&](uint64_t t) { return t ? (double(t) - double(run.load_start_ns)) / 1e3 : -1.0; };
    char line[200];
    std::snprintf(line, sizeof line, "%zu,%.1f,%.1f,%.1f,%u,%u,%d\n", i, rel(run.send_ns[i]),
                  rel(run.done_ns[i]), rel(run.server_done_ns[i]), run.queue_us[i],
                  run.compute_us[i], int(run.outcome[i]));
    out << line;
  }
  out.flush();
  if (!out) return Status(ErrorCode::kInternal, "cannot write " + path);
  return Status::ok();
}

bool plot_png(const RunData& run, const Metrics& m, const std::string& csv_path,
              const std::string& png_path) {
  const std::string gnuplot = find_on_path("gnuplot");
  if (gnuplot.empty()) {
    std::fprintf(stderr,
                 "handover_bench: warning: gnuplot not found (Debian: apt-get install "
                 "gnuplot-nox); no plot, the CSV is %s\n",
                 csv_path.c_str());
    return false;
  }
  const std::string script_path = png_path.substr(0, png_path.rfind('.')) + ".gp";
  {
    std::ofstream gp(script_path);
    const bool shadow = run.mode == Mode::kShadow;
    char title[512];
    std::snprintf(title, sizeof title,
                  "SliceServe %s resize (cpu mode=%s): %llu resizes at %.0f req/s\\n"
                  "swap gap p99 %.0f us, resize effect p99 %.0f us, lost %llu, duplicated %lld, "
                  "dip %.1f%%, extra RSS %.1f MB",
                  shadow ? "shadow" : "instant", shadow ? "process" : "affinity",
                  static_cast<unsigned long long>(m.resizes_ok), run.rate, m.swap_gap.p99_us,
                  m.resize_effect_p99_us, static_cast<unsigned long long>(m.lost),
                  static_cast<long long>(m.duplicated), m.throughput_dip_pct, run.extra_rss_mb);
    gp << "set terminal pngcairo size 1400,620 font 'sans,11'\n"
       << "set output " << gnuplot_quote(png_path) << "\n"
       << "set datafile separator ','\n"
       << "set title \"" << title << "\"\n"
       << "set xlabel 'time since the load started (s)'\n"
       << "set ylabel 'throughput (completions/s, 100 ms windows)' tc rgb '#1f5fa8'\n"
       << "set y2label 'p99 latency (ms, 100 ms windows)' tc rgb '#c0392b'\n"
       << "set ytics nomirror tc rgb '#1f5fa8'\n"
       << "set y2tics tc rgb '#c0392b'\n"
       << "set yrange [0:" << run.rate * 1.3 << "]\n"
       << "set y2range [0:*]\n"
       << "set grid ytics lc rgb '#e0e0e0'\n"
       << "set key top right box opaque\n"
       << "set style rect fc rgb '#f4f4f4' fs solid 1.0 noborder\n"
       << "set object 1 rect from " << double(run.load_start_ns - run.load_start_ns) / 1e9
       << ", graph 0 to " << double(run.resize_phase_ns - run.load_start_ns) / 1e9
       << ", graph 1 behind\n"
       << "set label 1 'warm-up (steady state)' at graph 0.01, graph 0.96 front\n";
    for (const ResizeEvent& e : run.resizes) {
      if (e.command_ns < run.load_start_ns) continue;
      const double t = double(e.command_ns - run.load_start_ns) / 1e9;
      gp << "set arrow from " << t << ", graph 0 to " << t
         << ", graph 1 nohead lc rgb '#9b9b9b' dt 3 lw 1 back\n";
    }
    gp << "plot " << gnuplot_quote(csv_path)
       << " every ::1 using ($1/1000):2 axes x1y1 with lines lw 2 lc rgb '#1f5fa8' "
          "title 'throughput', \\\n"
       << "  '' every ::1 using ($1/1000):3 axes x1y2 with lines lw 1.5 lc rgb '#c0392b' "
          "title 'p99 latency', \\\n"
       << "  NaN with lines lc rgb '#9b9b9b' dt 3 title 'resize command'\n";
    if (!gp) {
      std::fprintf(stderr, "handover_bench: warning: cannot write %s; no plot\n",
                   script_path.c_str());
      return false;
    }
  }
  // gnuplot's own output (warnings) goes to our stderr.
  const pid_t pid = fork();
  if (pid < 0) {
    std::fprintf(stderr, "handover_bench: warning: fork(): %s; no plot\n", std::strerror(errno));
    return false;
  }
  if (pid == 0) {
    dup2(STDERR_FILENO, STDOUT_FILENO);
    execl(gnuplot.c_str(), "gnuplot", script_path.c_str(), static_cast<char*>(nullptr));
    _exit(127);
  }
  int wstatus = 0;
  if (waitpid(pid, &wstatus, 0) != pid || !WIFEXITED(wstatus) || WEXITSTATUS(wstatus) != 0) {
    std::fprintf(stderr, "handover_bench: warning: %s %s failed; no plot\n", gnuplot.c_str(),
                 script_path.c_str());
    return false;
  }
  return true;
}

std::string json_line(const RunData& run, const Metrics& m) {
  nlohmann::ordered_json j;
  j["bench"] = "handover";
  j["mode"] = mode_name(run.mode);
  j["backend"] = run.backend;
  j["model"] = run.model;
  j["resizes"] = m.resizes_ok;
  j["requests"] = m.requests;
  j["lost"] = m.lost;
  j["duplicated"] = m.duplicated;
  j["swap_gap_p99_us"] = round1(m.swap_gap.p99_us);
  j["resize_effect_p99_us"] = round1(m.resize_effect_p99_us);
  j["throughput_dip_pct"] = round1(m.throughput_dip_pct);
  j["extra_rss_mb"] = round1(run.extra_rss_mb);
  j["target_rate"] = run.rate;
  j["swap_gap_p50_us"] = round1(m.swap_gap.p50_us);
  j["resize_effect_p50_us"] = round1(m.resize_effect_p50_us);
  // Without the wait for the next request to arrive, and command -> slice in force.
  j["resize_effect_busy_p99_us"] = round1(m.effect_busy_p99_us);
  j["apply_p99_us"] = round1(m.apply_p99_us);
  return j.dump();
}

}  // namespace sliceserve::bench
