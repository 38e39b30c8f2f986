// Built against an installed ampkit through find_package(ampkit): uses the public API only.
#include <ampkit/ampkit.h>
#include <torch/torch.h>

#include <iostream>

int main() {
  const auto info = ampkit::build_info();
  auto grads = torch::full({1000}, 4.0f);
  auto scale = torch::full({1}, 0.25f);
  auto found_inf = torch::zeros({1});
  ampkit::multi_tensor_scale_({grads}, {grads}, scale, found_inf);
  const bool ok = grads.eq(1.0f).all().item<bool>() && found_inf.item<float>() == 0.0f;
  std::cout << "ampkit " << info.version << " (torch " << info.torch_version << ", cuda " << info.cuda
            << ") consumer: " << (ok ? "ok" : "WRONG RESULT") << std::endl;
  return ok ? 0 : 1;
}
