// Step time of a torch:: C++ training loop with ampkit::AdaptivePrecision vs the same loop with a
// plain ampkit::AutocastGuard, side by side in one process (run through
// benchmarks/bench_adaptive_overhead_cpp.py, which prints the table and judges the target).
//
// The model is a digits-sized MLP (64 -> 256 -> 256 -> 10, every Linear wrapped in the adaptive
// variants) trained with fp16 autocast, ampkit::GradScaler and ampkit::optim::AdamW on random data
// that never overflows, so the figure is the controller's running cost: a region per wrapped layer,
// the records of each step, and a logging point (update()) after every `log_every` steps.
//   plain     AutocastGuard(policy) around the forward
//   adaptive  adaptive.region() + after_backward(loss) + update() (blame after a non-finite step: a
//             clean run records only its loss)
//   always    the same with BlameMode::kAlways (flags on every step: what a troubled window costs)
// The variants are interleaved, one sample of `log_every` steps each in turn, and each figure is the
// best sample (a busy neighbour only ever adds time). Output: one JSON object per batch size.
//   bench_adaptive_overhead [--quick] [--threads N] [--log-every N] [--samples N]
#include <ATen/Parallel.h>
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <iostream>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "ampkit/ampkit.h"

namespace {

enum class Variant { kPlain, kAdaptive, kAlways };

struct Loop {
  Loop(Variant variant, int64_t batch) : variant(variant) {
    torch::manual_seed(0);
    x = torch::randn({batch, 64});
    y = torch::randint(0, 10, {batch});
    ampkit::AdaptivePrecisionOptions options;
    options.blame = variant == Variant::kAlways ? ampkit::BlameMode::kAlways : ampkit::BlameMode::kAfterNonFinite;
    adaptive = std::make_unique<ampkit::AdaptivePrecision>(policy, options, &scaler);
    auto layer = [&](const std::string& name, int64_t in, int64_t out) -> torch::nn::AnyModule {
      torch::nn::Linear linear(in, out);
      if (variant == Variant::kPlain) return torch::nn::AnyModule(linear);
      return torch::nn::AnyModule(adaptive->wrap(name, linear));
    };
    net = torch::nn::Sequential();
    net->push_back(layer("fc1", 64, 256));
    net->push_back(torch::nn::ReLU());
    net->push_back(layer("fc2", 256, 256));
    net->push_back(torch::nn::ReLU());
    net->push_back(layer("head", 256, 10));
    optimizer = std::make_unique<ampkit::optim::AdamW>(net->parameters(), ampkit::optim::AdamWOptions(1e-3));
  }

  void steps(int count) {
    for (int i = 0; i < count; ++i) {
      optimizer->zero_grad();
      torch::Tensor loss;
      if (variant == Variant::kPlain) {
        ampkit::AutocastGuard region(policy);
        loss = torch::nn::functional::cross_entropy(net->forward(x), y);
      } else {
        const auto region = adaptive->region();
        loss = torch::nn::functional::cross_entropy(net->forward(x), y);
      }
      scaler.scale(loss).backward();
      if (variant != Variant::kPlain) adaptive->after_backward(loss);
      scaler.step(*optimizer);
      scaler.update();
      ++done;
    }
    if (variant != Variant::kPlain && !adaptive->update(done).empty()) {
      std::cerr << "bench_adaptive_overhead: the benchmark model should run clean\n";
      std::exit(1);
    }
  }

  Variant variant;
  ampkit::autocast::Policy policy = ampkit::autocast::Policy::torch_default(torch::kCPU, torch::kHalf);
  ampkit::GradScaler scaler;
  std::unique_ptr<ampkit::AdaptivePrecision> adaptive;
  torch::nn::Sequential net{nullptr};
  std::unique_ptr<ampkit::optim::AdamW> optimizer;
  torch::Tensor x, y;
  int64_t done = 0;
};

double seconds(Loop& loop, int count) {
  const auto start = std::chrono::steady_clock::now();
  loop.steps(count);
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace

int main(int argc, char** argv) {
  bool quick = false;
  int threads = 1, log_every = 20, samples = 30;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    auto value = [&](int& into) {
      if (i + 1 >= argc) {
        std::cerr << "bench_adaptive_overhead: " << arg << " needs a value\n";
        std::exit(2);
      }
      into = std::atoi(argv[++i]);
      if (into < 1) {
        std::cerr << "bench_adaptive_overhead: " << arg << " must be >= 1, got " << argv[i] << "\n";
        std::exit(2);
      }
    };
    if (arg == "--quick") {
      quick = true;
    } else if (arg == "--threads") {
      value(threads);
    } else if (arg == "--log-every") {
      value(log_every);
    } else if (arg == "--samples") {
      value(samples);
    } else {
      std::cerr << "bench_adaptive_overhead: unknown argument '" << arg
                << "' (expected --quick, --threads N, --log-every N, --samples N)\n";
      return 2;
    }
  }
  if (quick) samples = std::min(samples, 3);
  at::set_num_threads(threads);
  for (const int64_t batch : quick ? std::vector<int64_t>{64} : std::vector<int64_t>{64, 256}) {
    Loop plain(Variant::kPlain, batch), adaptive(Variant::kAdaptive, batch), always(Variant::kAlways, batch);
    for (Loop* loop : {&plain, &adaptive, &always}) loop->steps(log_every);  // warm-up
    double best[3] = {std::numeric_limits<double>::infinity(), std::numeric_limits<double>::infinity(),
                      std::numeric_limits<double>::infinity()};
    for (int sample = 0; sample < samples; ++sample) {
      best[0] = std::min(best[0], seconds(plain, log_every));
      best[1] = std::min(best[1], seconds(adaptive, log_every));
      best[2] = std::min(best[2], seconds(always, log_every));
    }
    std::cout << "{\"batch\": " << batch << ", \"threads\": " << threads << ", \"log_every\": " << log_every
              << ", \"samples\": " << samples << ", \"plain_s\": " << best[0] / log_every
              << ", \"adaptive_s\": " << best[1] / log_every << ", \"always_s\": " << best[2] / log_every << "}"
              << std::endl;
  }
  return 0;
}
