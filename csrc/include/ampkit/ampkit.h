// Everything a torch:: C++ frontend training loop needs from ampkit.
#pragma once

#include "ampkit/build_info.h"
#include "ampkit/ops.h"
#include "ampkit/autocast.h"
