#pragma once
// Runs the built slicectl as users do, capturing its output, for integration tests.

#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>

namespace sliceserve::testing {

struct CliRun {
  int rc = -1;
  std::string out;
  std::string err;
};

// Runs slicectl with `args` (shell words), capturing stdout and stderr.
inline CliRun slicectl(const std::string& args, const std::string& env = "") {
  char err_path[] = "/tmp/slicectl_test_XXXXXX";
  const int fd = mkstemp(err_path);
  EXPECT_GE(fd, 0);
  close(fd);
  const std::string cmd = env + " " SLICESERVE_BIN_DIR "/slicectl " + args + " 2>" + err_path;
  CliRun run;
  FILE* p = popen(cmd.c_str(), "r");
  EXPECT_NE(p, nullptr) << cmd;
  if (p == nullptr) return run;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, p)) > 0) run.out.append(buf, n);
  const int status = pclose(p);
  run.rc = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  std::ifstream in(err_path);
  std::stringstream ss;
  ss << in.rdbuf();
  run.err = ss.str();
  unlink(err_path);
  return run;
}

}  // namespace sliceserve::testing
