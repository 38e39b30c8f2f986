// The smallest ampkit C++ program: unscale a list of fp16 "gradients" and detect an overflow,
// all without reading anything back until the end.
#include <ampkit/ampkit.h>
#include <torch/torch.h>

#include <iostream>

int main(int argc, char** argv) {
  const auto device = torch::cuda::is_available() ? torch::Device(torch::kCUDA) : torch::Device(torch::kCPU);
  std::vector<torch::Tensor> grads;
  for (int64_t n : {1000, 4096, 3}) grads.push_back(torch::randn({n}, torch::dtype(torch::kHalf).device(device)) * 1024);
  auto inv_scale = torch::full({1}, 1.0f / 1024, torch::device(device));
  auto found_inf = torch::zeros({1}, torch::device(device));
  ampkit::multi_tensor_scale_(grads, grads, inv_scale, found_inf);
  std::cout << "unscaled " << grads.size() << " tensors on " << device << ", found_inf=" << found_inf.item<float>()
            << "\n";
  grads[1][7] = std::numeric_limits<float>::infinity();
  ampkit::multi_tensor_scale_(grads, grads, inv_scale, found_inf);
  std::cout << "after an overflow: found_inf=" << found_inf.item<float>() << "\n";
  return found_inf.item<float>() == 1.0f ? 0 : 1;
}
