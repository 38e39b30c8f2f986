// Everything a torch:: C++ frontend training loop needs from ampkit.
#pragma once

#include "ampkit/build_info.h"
#include "ampkit/ops.h"
// fused linear (issue 5)
#include "ampkit/fused_linear.h"
#include "ampkit/nn.h"
