#pragma once

// torch's headers define a glog-style CHECK that aborts; Catch2's must win, so torch comes first.
#include <torch/torch.h>
#undef CHECK
#include <catch2/catch.hpp>

#include <cstdlib>
#include <functional>
#include <string>
#include <vector>

namespace ampkit_test {

// CPU always; CUDA too when AMPKIT_TEST_CUDA=1 (the GPU machine's run). Asking for CUDA where
// there is no GPU fails the test instead of passing it on the CPU alone.
inline std::vector<torch::Device> devices_under_test() {
  std::vector<torch::Device> devices = {torch::kCPU};
  const char* flag = std::getenv("AMPKIT_TEST_CUDA");
  if (flag != nullptr && std::string(flag) == "1") {
    if (!torch::cuda::is_available()) FAIL("AMPKIT_TEST_CUDA=1 but LibTorch sees no CUDA GPU");
    devices.emplace_back(torch::kCUDA);
  }
  return devices;
}

// True when `fn` throws a c10::Error whose message contains `needle`; prints the message otherwise.
inline bool throws_with(const std::function<void()>& fn, const std::string& needle) {
  try {
    fn();
  } catch (const c10::Error& error) {
    const std::string message = error.what_without_backtrace();
    if (message.find(needle) != std::string::npos) return true;
    UNSCOPED_INFO("message was: " << message);
    return false;
  }
  UNSCOPED_INFO("nothing was thrown; expected: " << needle);
  return false;
}

}  // namespace ampkit_test
