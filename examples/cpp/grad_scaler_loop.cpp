// A torch:: C++ frontend training loop with dynamic loss scaling: ampkit::GradScaler unscales the
// gradients, skips the optimizer step when one of them overflowed, and adapts the scale, all
// with the calls a Python user of torch.amp.GradScaler knows. One gradient is forced to inf on
// purpose to show a skipped step.
#include <ampkit/ampkit.h>
#include <torch/torch.h>

#include <cstring>
#include <iostream>
#include <limits>

int main(int argc, char** argv) {
  const bool quick = argc > 1 && std::strcmp(argv[1], "--quick") == 0;
  const int steps = quick ? 20 : 200;
  const auto device = torch::cuda::is_available() ? torch::Device(torch::kCUDA) : torch::Device(torch::kCPU);
  torch::manual_seed(0);

  torch::nn::Sequential model(torch::nn::Linear(32, 64), torch::nn::ReLU(), torch::nn::Linear(64, 1));
  model->to(device);
  torch::optim::SGD optimizer(model->parameters(), torch::optim::SGDOptions(0.01).momentum(0.9));
  ampkit::GradScaler scaler(ampkit::GradScalerOptions().init_scale(1024.0).growth_interval(5));

  const auto x = torch::randn({256, 32}, device);
  const auto y = x.sum(1, /*keepdim=*/true).sin();
  const int overflow_step = steps / 2;
  for (int step = 0; step < steps; ++step) {
    optimizer.zero_grad();
    const auto loss = torch::mse_loss(model->forward(x), y);
    scaler.scale(loss).backward();
    if (step == overflow_step) {  // what an fp16 overflow in the backward pass looks like
      torch::NoGradGuard no_grad;
      model->parameters()[0].grad()[0][0] = std::numeric_limits<float>::infinity();
    }
    // Unscale and compute the global grad norm in one pass, then clip with that norm (what
    // clip_grad_norm_ does after its own norm pass), all on the device.
    const auto grad_norm = scaler.unscale_with_norm_(optimizer);
    const auto clip_coef = (1.0 / (grad_norm + 1e-6)).clamp_max(1.0);
    for (auto& p : model->parameters()) p.grad().mul_(clip_coef);
    const bool stepped = scaler.step(optimizer);
    scaler.update();
    if (!stepped || step % (steps / 5) == 0) {
      std::cout << "step " << step << ": loss " << loss.item<float>() << ", grad norm " << grad_norm.item<float>()
                << ", scale " << scaler.get_scale() << (stepped ? "" : "  (step skipped: inf/NaN gradient)") << "\n";
    }
  }
  const auto skipped = scaler.skipped_steps().item<int64_t>();
  std::cout << "skipped steps: " << skipped << ", overflow events: " << scaler.overflow_events().item<int64_t>()
            << ", final scale: " << scaler.get_scale() << "\n";
  return skipped == 1 ? 0 : 1;
}
