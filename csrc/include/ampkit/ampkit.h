// Everything a torch:: C++ frontend training loop needs from ampkit.
#pragma once

#include "ampkit/adaptive.h"      // AdaptivePrecision: what overflows moves to FP32 by itself
#include "ampkit/autocast.h"      // AutocastGuard, Policy, per-module policies
#include "ampkit/build_info.h"
#include "ampkit/checkpoint.h"     // load: torch::load after refusing archives that carry code
#include "ampkit/fused_linear.h"  // fused_linear, fused_mlp ops
#include "ampkit/grad_scaler.h"   // GradScaler
#include "ampkit/loss_scaling.h"  // unscale_and_check_, update_scale_ ops
#include "ampkit/nn.h"            // nn::FusedLinear
#include "ampkit/multi_tensor_scale.h"           // multi_tensor_scale_
#include "ampkit/optim.h"         // optim::SGD, Adam, AdamW with FP32 masters
