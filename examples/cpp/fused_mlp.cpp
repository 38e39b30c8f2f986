// A small MLP built from ampkit::nn::FusedLinear (bias + GELU in the GEMM epilogue), trained
// with a torch:: optimizer under autocast (bf16 on the CPU, fp16 on a GPU). Exits 0 when the
// loss has at least halved.
#include <ATen/autocast_mode.h>
#include <ampkit/ampkit.h>
#include <torch/torch.h>

#include <cstring>
#include <iostream>

struct MlpImpl : torch::nn::Module {
  MlpImpl()
      : hidden(register_module("hidden", ampkit::nn::FusedLinear(ampkit::nn::FusedLinearOptions(16, 64).activation("gelu")))),
        out(register_module("out", ampkit::nn::FusedLinear(64, 1))) {}
  torch::Tensor forward(const torch::Tensor& x) { return out(hidden(x)); }
  ampkit::nn::FusedLinear hidden, out;
};
TORCH_MODULE(Mlp);

int main(int argc, char** argv) {
  const bool quick = argc > 1 && std::strcmp(argv[1], "--quick") == 0;
  const auto device = torch::cuda::is_available() ? torch::Device(torch::kCUDA) : torch::Device(torch::kCPU);
  const auto autocast_dtype = device.is_cuda() ? at::kHalf : at::kBFloat16;
  torch::manual_seed(0);
  Mlp model;
  model->to(device);
  torch::optim::Adam optimizer(model->parameters(), torch::optim::AdamOptions(1e-2));
  auto x = torch::randn({512, 16}, torch::device(device));
  auto target = torch::sin(x.sum(1, /*keepdim=*/true));

  const int steps = quick ? 60 : 300;
  float first = 0, last = 0;
  for (int step = 0; step < steps; ++step) {
    optimizer.zero_grad();
    at::autocast::set_autocast_enabled(device.type(), true);
    at::autocast::set_autocast_dtype(device.type(), autocast_dtype);
    auto prediction = model(x);
    at::autocast::set_autocast_enabled(device.type(), false);
    at::autocast::clear_cache();
    auto loss = torch::mse_loss(prediction.to(torch::kFloat), target);
    loss.backward();
    optimizer.step();
    if (step == 0) first = loss.item<float>();
    last = loss.item<float>();
  }
  std::cout << "FusedLinear MLP on " << device << " (autocast " << c10::toString(autocast_dtype) << "): loss "
            << first << " -> " << last << " after " << steps << " steps\n";
  return last < 0.5f * first ? 0 : 1;
}
