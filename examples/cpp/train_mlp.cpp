// A torch:: C++ frontend training loop with everything ampkit offers C++ users:
//   ampkit::AutocastGuard   autocast region under the global policy (bf16 on the CPU, fp16 on CUDA)
//   ampkit::nn::FusedLinear bias + activation in the GEMM epilogue (cuBLASLt on CUDA)
//   ampkit::optim::AdamW    FP32 master weights and state, one fused pass per step
//   ampkit::GradScaler      dynamic loss scaling for fp16, skipping overflowed steps on the device
// The task: classify points of three interleaved spirals. Exits 0 when test accuracy >= 90%.
#include <ampkit/ampkit.h>
#include <torch/torch.h>

#include <cmath>
#include <cstring>
#include <iostream>

namespace {

// Three spiral arms with noise: not linearly separable, learnable by a small MLP.
std::pair<torch::Tensor, torch::Tensor> spirals(int64_t per_class, uint64_t seed) {
  torch::manual_seed(seed);
  std::vector<torch::Tensor> points, labels;
  for (int64_t arm = 0; arm < 3; ++arm) {
    auto radius = torch::linspace(0.1, 1.0, per_class);
    auto angle = radius * 4.0 + arm * 2.0 * M_PI / 3.0 + torch::randn({per_class}) * 0.15;
    points.push_back(torch::stack({radius * torch::cos(angle), radius * torch::sin(angle)}, 1));
    labels.push_back(torch::full({per_class}, arm, torch::kLong));
  }
  return {torch::cat(points), torch::cat(labels)};
}

struct ClassifierImpl : torch::nn::Module {
  ClassifierImpl()
      : hidden1(register_module("hidden1", ampkit::nn::FusedLinear(ampkit::nn::FusedLinearOptions(2, 128).activation("relu")))),
        hidden2(register_module("hidden2", ampkit::nn::FusedLinear(ampkit::nn::FusedLinearOptions(128, 128).activation("gelu")))),
        out(register_module("out", ampkit::nn::FusedLinear(128, 3))) {}
  torch::Tensor forward(const torch::Tensor& x) { return out(hidden2(hidden1(x))); }
  ampkit::nn::FusedLinear hidden1, hidden2, out;
};
TORCH_MODULE(Classifier);

}  // namespace

int main(int argc, char** argv) {
  const bool quick = argc > 1 && std::strcmp(argv[1], "--quick") == 0;
  const auto device = torch::cuda::is_available() ? torch::Device(torch::kCUDA) : torch::Device(torch::kCPU);
  const auto dtype = device.is_cuda() ? torch::kHalf : torch::kBFloat16;
  auto [train_x, train_y] = spirals(400, 1);
  auto [test_x, test_y] = spirals(200, 2);
  train_x = train_x.to(device), train_y = train_y.to(device), test_x = test_x.to(device), test_y = test_y.to(device);

  torch::manual_seed(0);
  Classifier model;
  model->to(device);
  ampkit::optim::AdamW optimizer(model->parameters(), ampkit::optim::AdamWOptions(3e-3));
  // Loss scaling guards fp16's narrow exponent range; bf16 shares fp32's range and needs none.
  ampkit::GradScaler scaler(ampkit::GradScalerOptions().enabled(dtype == torch::kHalf));

  const int epochs = quick ? 15 : 120;
  const int64_t batch = 64;
  for (int epoch = 0; epoch < epochs; ++epoch) {
    auto order = torch::randperm(train_x.size(0), torch::device(device).dtype(torch::kLong));
    for (int64_t start = 0; start < order.size(0); start += batch) {
      auto index = order.slice(0, start, start + batch);
      optimizer.zero_grad();
      torch::Tensor loss;
      {
        ampkit::AutocastGuard region(device.type(), dtype);
        loss = torch::cross_entropy_loss(model(train_x.index_select(0, index)), train_y.index_select(0, index));
      }
      scaler.scale(loss).backward();
      scaler.step(optimizer);
      scaler.update();
    }
  }
  torch::NoGradGuard no_grad;
  torch::Tensor logits;
  {
    ampkit::AutocastGuard region(device.type(), dtype);
    logits = model(test_x);
  }
  const double accuracy = logits.argmax(1).eq(test_y).to(torch::kFloat).mean().item<double>();
  std::cout << "spirals MLP on " << device << " (" << c10::toString(dtype) << " autocast, FusedLinear, AdamW with FP32 masters"
            << (scaler.is_enabled() ? ", loss scaling" : "") << "): test accuracy " << accuracy << " after " << epochs
            << " epochs\n";
  return accuracy >= 0.9 ? 0 : 1;
}
