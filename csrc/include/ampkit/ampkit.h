// Everything a torch:: C++ frontend training loop needs from ampkit.
#pragma once

#include "ampkit/build_info.h"
#include "ampkit/ops.h"
// ---- dynamic loss scaling (GradScaler) ----
#include "ampkit/grad_scaler.h"
#include "ampkit/loss_scaling.h"
// FP32-master-weight optimizers (issue 4)
#include "ampkit/optim.h"
// fused linear (issue 5)
#include "ampkit/fused_linear.h"
#include "ampkit/nn.h"
#include "ampkit/autocast.h"
