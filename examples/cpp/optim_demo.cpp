// A torch:: C++ training loop with bfloat16 model weights and ampkit::optim::AdamW holding the
// FP32 masters. The loss is scaled by a static 1024; the optimizer unscales inside its fused
// kernel (set_grad_scaling) and skips any step whose gradients overflowed, decided on the device.
// --quick: fewer steps (the ctest run).
#include <ampkit/ampkit.h>
#include <torch/torch.h>

#include <cstring>
#include <iostream>

int main(int argc, char** argv) {
  const bool quick = argc > 1 && std::strcmp(argv[1], "--quick") == 0;
  const int steps = quick ? 60 : 600;
  const auto device = torch::cuda::is_available() ? torch::Device(torch::kCUDA) : torch::Device(torch::kCPU);
  torch::manual_seed(0);

  torch::nn::Sequential model(torch::nn::Linear(16, 64), torch::nn::ReLU(), torch::nn::Linear(64, 1));
  model->to(device, torch::kBFloat16);
  ampkit::optim::AdamW optimizer(model->parameters(), ampkit::optim::AdamWOptions(3e-3));

  const auto inputs = torch::randn({256, 16}, torch::device(device));
  const auto targets = inputs.sum(1, /*keepdim=*/true).sin();
  const auto loss_scale = torch::full({1}, 1024.0f, torch::device(device));
  const auto one = torch::ones({1}, torch::device(device));
  float first_loss = 0, last_loss = 0;
  for (int step = 0; step < steps; ++step) {
    optimizer.zero_grad();
    auto loss = torch::mse_loss(model->forward(inputs.to(torch::kBFloat16)).to(torch::kFloat), targets);
    (loss * loss_scale).backward();
    // found_inf from the scaled gradients (multiplying by 1 changes nothing): the overflow test.
    auto found_inf = torch::zeros({1}, torch::device(device));
    std::vector<torch::Tensor> grads;
    for (const auto& p : model->parameters()) grads.push_back(p.grad());
    ampkit::multi_tensor_scale_(grads, grads, one, found_inf);
    optimizer.set_grad_scaling(loss_scale, found_inf);
    optimizer.step();
    if (step == 0) first_loss = loss.item<float>();
    last_loss = loss.item<float>();
  }
  const auto master = optimizer.master_params()[0];
  std::cout << "bf16 weights, FP32 masters (" << master.scalar_type() << "), " << steps << " AdamW steps on "
            << device << ": loss " << first_loss << " -> " << last_loss << "\n";
  return last_loss < 0.5f * first_loss ? 0 : 1;
}
