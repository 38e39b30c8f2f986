// The emulated-device suite's main: runs the Catch2 cases, then (on a full run) the coverage
// check: every kernel entry point declared in kernels/include has a case that calls it, and every
// __global__ kernel in kernels/src was launched during the run. A new entry point or kernel
// without an emulated case fails the suite, as a new op without an opcheck case fails pytest.
#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <regex>
#include <set>
#include <sstream>
#include <string>

#include <ATen/Parallel.h>

#include "ampkit_emulated/api.h"

namespace {

std::string read_file(const std::filesystem::path& path) {
  std::ifstream stream(path);
  std::stringstream text;
  text << stream.rdbuf();
  return text.str();
}

std::set<std::string> matches(const std::string& text, const std::regex& pattern) {
  std::set<std::string> names;
  for (auto it = std::sregex_iterator(text.begin(), text.end(), pattern); it != std::sregex_iterator(); ++it) {
    names.insert((*it)[1].str());
  }
  return names;
}

// Entry points: the functions the framework-free kernel headers declare that return a Result
// (the cuBLASLt GEMM is not a kernel of ours: tests/cpp checks it against a model of cuBLASLt).
std::set<std::string> declared_entry_points(const std::filesystem::path& root) {
  std::set<std::string> names;
  for (const char* header : {"multi_tensor.h", "loss_scaling.h", "optim.h"}) {
    const std::string text = read_file(root / "kernels/include/ampkit_kernels" / header);
    for (const std::string& name : matches(text, std::regex(R"(\nResult\s+(\w+)\s*\()"))) names.insert(name);
  }
  return names;
}

std::set<std::string> defined_kernels(const std::filesystem::path& root) {
  std::set<std::string> names;
  for (const auto& entry : std::filesystem::directory_iterator(root / "kernels/src")) {
    const std::string extension = entry.path().extension().string();
    if (extension != ".cu" && extension != ".cuh") continue;
    const std::string text = read_file(entry.path());
    for (const std::string& name : matches(text, std::regex(R"(__global__\s+void\s+(?:__launch_bounds__\([^)]*\)\s*)?(\w+)\s*\()"))) {
      names.insert(name);
    }
  }
  return names;
}

int check_coverage() {
  const std::filesystem::path root(AMPKIT_SOURCE_DIR);
  std::string test_sources;
  for (const auto& entry : std::filesystem::directory_iterator(root / "tests/emulated")) {
    if (entry.path().extension() == ".cpp" && entry.path().filename() != "main.cpp") test_sources += read_file(entry.path());
  }
  int missing = 0;
  const std::set<std::string> entry_points = declared_entry_points(root);
  for (const std::string& name : entry_points) {
    if (test_sources.find("kernels::" + name + "(") == std::string::npos) {
      std::printf("coverage: kernel entry point %s has no emulated case (tests/emulated)\n", name.c_str());
      ++missing;
    }
  }
  const std::vector<std::string> launched = ampkit_emulated::launched_kernels();
  const std::set<std::string> launched_set(launched.begin(), launched.end());
  const std::set<std::string> kernels = defined_kernels(root);
  for (const std::string& name : kernels) {
    if (launched_set.count(name) == 0) {
      std::printf("coverage: __global__ %s was never launched on the emulated device\n", name.c_str());
      ++missing;
    }
  }
  // The list operations: every functor kernels/src passes to the launcher ran in some launch.
  std::string signatures;
  for (const std::string& signature : ampkit_emulated::launched_kernel_signatures()) signatures += signature + "\n";
  std::set<std::string> operations;
  for (const auto& entry : std::filesystem::directory_iterator(root / "kernels/src")) {
    if (entry.path().extension() != ".cu") continue;
    for (const std::string& name : matches(read_file(entry.path()), std::regex(R"(\nstruct\s+(\w+Op)\s*\{)"))) {
      operations.insert(name);
      if (signatures.find(name + "<") == std::string::npos && signatures.find(name + ")") == std::string::npos) {
        std::printf("coverage: list operation %s never ran on the emulated device\n", name.c_str());
        ++missing;
      }
    }
  }
  if (entry_points.empty() || kernels.empty() || operations.empty()) {
    std::printf("coverage: found no entry points or kernels under %s: the scan is broken\n", root.c_str());
    return 1;
  }
  const ampkit_emulated::LaunchStats stats = ampkit_emulated::launch_stats();
  std::printf("emulated device: %zu entry points, %zu kernels and %zu list operations covered; %lld launches, %lld blocks, %lld threads, "
              "%lld block barriers, %lld warp barriers; thread orders: in order, reversed, seeded random\n",
              entry_points.size(), kernels.size(), operations.size(), static_cast<long long>(stats.launches),
              static_cast<long long>(stats.blocks), static_cast<long long>(stats.threads),
              static_cast<long long>(stats.block_barriers), static_cast<long long>(stats.warp_barriers));
  return missing == 0 ? 0 : 1;
}

// Each test case starts with no findings: one that failed before collecting its own must not
// be blamed on the next.
struct FindingsPerTestCase : Catch::TestEventListenerBase {
  using TestEventListenerBase::TestEventListenerBase;
  void testCaseStarting(const Catch::TestCaseInfo&) override { ampkit_emulated::take_findings(); }
};
CATCH_REGISTER_LISTENER(FindingsPerTestCase)

}  // namespace

int main(int argc, char* argv[]) {
  // The CPU reference kernels on one thread: OpenMP workers spinning beside the emulated device
  // only slow a 2-core machine down, and the references' bits do not depend on the thread count.
  at::set_num_threads(1);
  Catch::Session session;
  const int parse = session.applyCommandLine(argc, argv);
  if (parse != 0) return parse;
  const int failed = session.run();
  // Only a full run launches every kernel; a filtered run skips the check.
  if (!session.configData().testsOrTags.empty() || session.configData().listTests) return failed;
  return failed != 0 ? failed : check_coverage();
}
