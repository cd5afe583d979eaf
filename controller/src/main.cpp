// sliceserved: the SliceServe controller daemon.

#include <signal.h>
#include <spdlog/spdlog.h>

#include <CLI/CLI.hpp>

#include "sliceserve/controller/config.h"
#include "sliceserve/controller/daemon.h"

namespace {

sliceserve::controller::Daemon* g_daemon = nullptr;

void on_signal(int) {
  if (g_daemon) g_daemon->request_stop();
}

}  // namespace

int main(int argc, char** argv) {
  std::string config_path;
  std::string log_level;
  CLI::App app{"sliceserved: serves DNN models on slices of one device"};
  app.add_option("-c,--config", config_path, "TOML config file (see docs/config.md)")->required();
  app.add_option("--log-level", log_level, "Overrides [server] log_level");
  CLI11_PARSE(app, argc, argv);

  spdlog::set_pattern("%Y-%m-%d %H:%M:%S.%e [sliceserved] [%l] %v");
  auto config = sliceserve::controller::load_config(config_path);
  if (!config.is_ok()) {
    spdlog::error("{}", config.status().message());
    return 2;
  }
  if (!log_level.empty()) config->server.log_level = log_level;
  spdlog::set_level(spdlog::level::from_str(config->server.log_level));

  auto daemon = sliceserve::controller::Daemon::create(std::move(config).value());
  if (!daemon.is_ok()) {
    spdlog::error("cannot start: {}", daemon.status().to_string());
    return 1;
  }
  g_daemon = daemon->get();
  struct sigaction sa {};
  sa.sa_handler = on_signal;
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
  signal(SIGPIPE, SIG_IGN);

  sliceserve::Status s = (*daemon)->run();
  g_daemon = nullptr;
  if (!s.is_ok()) {
    spdlog::error("{}", s.to_string());
    return 1;
  }
  return 0;
}
