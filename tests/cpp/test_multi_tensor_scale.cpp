// multi_tensor_scale_ through the C++ API (and so the dispatcher) against plain torch.
#include "test_helpers.h"

#include <limits>

#include "ampkit/ampkit.h"

using ampkit_test::devices_under_test;
using ampkit_test::throws_with;

TEST_CASE("multi_tensor_scale_ matches plain torch for every dtype pair", "[multi_tensor_scale]") {
  for (const auto& device : devices_under_test()) {
    for (auto in_dtype : {torch::kFloat, torch::kHalf, torch::kBFloat16}) {
      for (auto out_dtype : {torch::kFloat, torch::kHalf, torch::kBFloat16}) {
        torch::manual_seed(0);
        // Sizes cover: empty, smaller than a vector pack, odd, and several chunks.
        std::vector<int64_t> numels = {0, 3, 1001, 70000, 200003};
        std::vector<torch::Tensor> inputs, outputs;
        for (auto n : numels) {
          inputs.push_back(torch::randn({n}, torch::dtype(in_dtype).device(device)));
          outputs.push_back(torch::empty({n}, torch::dtype(out_dtype).device(device)));
        }
        auto scale = torch::full({1}, 0.125f, torch::dtype(torch::kFloat).device(device));
        auto found_inf = torch::zeros({1}, torch::dtype(torch::kFloat).device(device));
        ampkit::multi_tensor_scale_(inputs, outputs, scale, found_inf);
        for (size_t i = 0; i < numels.size(); ++i) {
          // Reference: the same fp32 multiply then one rounding to the output dtype, so equal bitwise.
          auto expected = (inputs[i].to(torch::kFloat) * 0.125f).to(out_dtype);
          REQUIRE(torch::equal(outputs[i], expected));
        }
        REQUIRE(found_inf.item<float>() == 0.0f);
      }
    }
  }
}

TEST_CASE("multi_tensor_scale_ flags inf, -inf and NaN", "[multi_tensor_scale]") {
  const float specials[] = {std::numeric_limits<float>::infinity(), -std::numeric_limits<float>::infinity(),
                            std::numeric_limits<float>::quiet_NaN()};
  for (const auto& device : devices_under_test()) {
    for (float special : specials) {
      auto clean = torch::ones({100}, torch::device(device));
      auto dirty = torch::ones({5000}, torch::device(device));
      dirty[4321] = special;
      auto scale = torch::ones({1}, torch::device(device));
      auto found_inf = torch::zeros({1}, torch::device(device));
      ampkit::multi_tensor_scale_({clean, dirty}, {clean, dirty}, scale, found_inf);
      REQUIRE(found_inf.item<float>() == 1.0f);
    }
  }
}

TEST_CASE("multi_tensor_scale_ rejects bad input with a message naming the argument", "[multi_tensor_scale]") {
  auto f = torch::ones({4});
  auto scale = torch::ones({1});
  auto found = torch::zeros({1});
  CHECK(throws_with([&] { ampkit::multi_tensor_scale_({}, {}, scale, found); }, "inputs must hold at least one tensor"));
  CHECK(throws_with([&] { ampkit::multi_tensor_scale_({torch::ones({4}, torch::kInt)}, {f}, scale, found); },
                    "inputs[0] must have dtype float32, float16 or bfloat16, got int32"));
  CHECK(throws_with([&] { ampkit::multi_tensor_scale_({f, f.to(torch::kHalf)}, {f, f}, scale, found); },
                    "inputs[0] is float32 but inputs[1] is float16"));
  CHECK(throws_with([&] { ampkit::multi_tensor_scale_({torch::ones({4, 4}).t()}, {torch::ones({4, 4})}, scale, found); },
                    "inputs[0] must be contiguous"));
  CHECK(throws_with([&] { ampkit::multi_tensor_scale_({f}, {torch::ones({5})}, scale, found); },
                    "outputs[0] must have the shape of inputs[0]"));
  CHECK(throws_with([&] { ampkit::multi_tensor_scale_({f}, {f, f}, scale, found); },
                    "outputs must hold as many tensors as inputs (1), got 2"));
  CHECK(throws_with([&] { ampkit::multi_tensor_scale_({f}, {f}, torch::ones({2}), found); },
                    "scale must be a one-element float32 tensor, got 2 elements"));
  CHECK(throws_with([&] { ampkit::multi_tensor_scale_({f}, {f}, scale, torch::zeros({1}, torch::kDouble)); },
                    "found_inf must be a one-element float32 tensor, got dtype float64"));
  CHECK(throws_with([&] { ampkit::multi_tensor_scale_({f}, {f}, scale.to(torch::kMeta), found); },
                    "scale must be on cpu (the device of inputs[0]), got meta"));
}

TEST_CASE("build_info reports the LibTorch ampkit was built against", "[build]") {
  const auto info = ampkit::build_info();
  REQUIRE(info.version == AMPKIT_VERSION);
  REQUIRE(info.torch_version.rfind("2.", 0) == 0);
  REQUIRE(info.cuda == (AMPKIT_WITH_CUDA != 0));
}

TEST_CASE("the CPU kernels' loops run on as many threads as at::set_num_threads asks", "[build]") {
  // Compiled without OpenMP, at::parallel_for's header template runs every loop on one thread.
  const int saved = at::get_num_threads();
  for (int threads : {1, 2, 3}) {
    at::set_num_threads(threads);
    CHECK(ampkit::cpu_kernel_threads() == threads);
  }
  at::set_num_threads(saved);
}
