// The argument contracts of ampkit/contracts.h: each rule and its message, once.
#include "ampkit/contracts.h"

#include <c10/util/Exception.h>
#include <c10/util/StringUtil.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstdlib>

namespace ampkit::contracts {
namespace {

constexpr int64_t kInt32Max = std::numeric_limits<int32_t>::max();

// Python's repr(float): the shortest digits that read back as the same double; fixed notation
// while the decimal point sits within [-4, 16] digits of them (with ".0" on whole numbers),
// scientific outside (1e-05, 1.5e+16).
std::string python_float_repr(double value) {
  if (std::isnan(value)) return "nan";
  if (std::isinf(value)) return value > 0 ? "inf" : "-inf";
  char buffer[64];
  const auto written = std::to_chars(buffer, buffer + sizeof(buffer), value, std::chars_format::scientific);
  std::string text(buffer, written.ptr);  // "-1.2345e-05": shortest, so no trailing zeros
  std::string sign;
  if (text.front() == '-') {
    sign = "-";
    text.erase(0, 1);
  }
  const size_t e = text.find('e');
  const int exponent = std::atoi(text.c_str() + e + 1);
  std::string digits = text.substr(0, e);
  digits.erase(std::remove(digits.begin(), digits.end(), '.'), digits.end());
  const int point = exponent + 1;  // how many of the digits stand before the decimal point
  const int count = static_cast<int>(digits.size());
  if (point <= -4 || point > 16) {
    char exponent_text[16];
    std::snprintf(exponent_text, sizeof(exponent_text), "e%c%02d", exponent < 0 ? '-' : '+', std::abs(exponent));
    return sign + digits.substr(0, 1) + (count > 1 ? "." + digits.substr(1) : "") + exponent_text;
  }
  if (point <= 0) return sign + "0." + std::string(-point, '0') + digits;
  if (point >= count) return sign + digits + std::string(point - count, '0') + ".0";
  return sign + digits.substr(0, point) + "." + digits.substr(point);
}

[[noreturn]] void fail(const Context& context, const std::string& argument, const std::string& expected,
                       const std::string& got, const char* why = "") {
  C10_THROW_ERROR(ValueError, c10::str(context.prefix, ": ", argument, context.suffix, " must be ", expected,
                                       ", got ", got, why));
}

// growth_interval / hysteresis: compared on the device with an int32 tracker.
void check_tracker_limit(const Context& context, const char* name, int64_t value) {
  if (value >= 1 && value <= kInt32Max) return;
  fail(context, name, context.audience == Audience::Python ? "an int in [1, 2**31-1]" : "in [1, 2^31-1]",
       std::to_string(value), " (it is counted in an int32 tracker)");
}

// The range of one optimizer hyper-parameter: a lower bound (inclusive or not) and an exclusive
// upper bound, each optional. Every value must be finite besides.
struct Bounds {
  bool has_low = false;
  double low = 0.0;
  bool low_inclusive = true;
  bool has_high = false;
  double high = 0.0;  // exclusive
};

constexpr Bounds kFinite{};
constexpr Bounds kNonNegative{true, 0.0, true};
constexpr Bounds kPositive{true, 0.0, false};
constexpr Bounds kUnitInterval{true, 0.0, true, true, 1.0};  // [0, 1): Adam's betas

void check_hyperparameter(const Context& context, const char* options_name, const char* op_name, double value,
                          const Bounds& bounds) {
  const bool above_low = !bounds.has_low || (bounds.low_inclusive ? value >= bounds.low : value > bounds.low);
  const bool below_high = !bounds.has_high || value < bounds.high;
  // inf or NaN would turn every master weight into inf/NaN on the first step.
  if (std::isfinite(value) && above_low && below_high) return;
  const auto number = [&](double x) { return format_number(x, context.audience); };
  const std::string low = std::string(bounds.low_inclusive ? ">= " : "> ") + number(bounds.low);
  if (context.form == Form::OpArguments) {
    std::string expected = "finite";
    if (bounds.has_high) {
      expected = std::string("in ") + (bounds.low_inclusive ? "[" : "(") + number(bounds.low) + ", " +
                 number(bounds.high) + ")";
    } else if (bounds.has_low) {
      expected = "a finite value " + low;
    }
    fail(context, op_name, expected, number(value));
  }
  if (!std::isfinite(value)) fail(context, options_name, "a finite number", number(value));
  fail(context, options_name, low + (bounds.has_high ? " and < " + number(bounds.high) : ""), number(value));
}

}  // namespace

std::string format_number(double value, Audience audience) {
  return audience == Audience::Python ? python_float_repr(value) : c10::str(value);
}

void check_scale_value(const char* name, double value, const Context& context) {
  if (!(std::isfinite(value) && value > 0.0)) fail(context, name, "a finite number > 0", format_number(value, context.audience));
}

void check_loss_scale_options(const LossScaleOptions& options, const Context& context) {
  const bool python = context.audience == Audience::Python;
  const auto number = [&](double x) { return format_number(x, context.audience); };
  if (!(std::isfinite(options.growth_factor) && options.growth_factor > 1.0)) {
    fail(context, "growth_factor", "a finite number > 1", number(options.growth_factor));
  }
  if (!(options.backoff_factor > 0.0 && options.backoff_factor < 1.0)) {
    fail(context, "backoff_factor", "in (0, 1)", number(options.backoff_factor));
  }
  check_tracker_limit(context, "growth_interval", options.growth_interval);
  check_tracker_limit(context, "hysteresis", options.hysteresis);
  if (!(std::isfinite(options.min_scale) && options.min_scale >= 0.0)) {
    fail(context, "min_scale", python ? "a finite number >= 0 or None" : "a finite number >= 0",
         number(options.min_scale));
  }
  if (!(options.max_scale > 0.0)) {
    fail(context, "max_scale", python ? "a number > 0 or None" : "> 0 (inf for no bound)", number(options.max_scale));
  }
  if (options.min_scale > options.max_scale) {
    C10_THROW_ERROR(ValueError, c10::str(context.prefix, ": min_scale (", number(options.min_scale),
                                         ") must not exceed max_scale (", number(options.max_scale), ")"));
  }
}

void check_sgd_hyperparameters(const SgdHyperparameters& hyper, const Context& context) {
  if (hyper.lr) check_hyperparameter(context, "lr", "lr", *hyper.lr, kNonNegative);
  check_hyperparameter(context, "momentum", "momentum", hyper.momentum, kNonNegative);
  check_hyperparameter(context, "weight_decay", "weight_decay", hyper.weight_decay, kNonNegative);
  check_hyperparameter(context, "dampening", "dampening", hyper.dampening, kFinite);
  if (hyper.nesterov && !(hyper.momentum > 0.0 && hyper.dampening == 0.0)) {
    C10_THROW_ERROR(ValueError, c10::str(context.prefix, ": nesterov momentum", context.suffix,
                                         " needs momentum > 0 and dampening == 0, got momentum ",
                                         format_number(hyper.momentum, context.audience), " and dampening ",
                                         format_number(hyper.dampening, context.audience)));
  }
}

void check_adam_hyperparameters(const AdamHyperparameters& hyper, const Context& context) {
  if (hyper.lr) check_hyperparameter(context, "lr", "lr", *hyper.lr, kNonNegative);
  check_hyperparameter(context, "betas[0]", "beta1", hyper.beta1, kUnitInterval);
  check_hyperparameter(context, "betas[1]", "beta2", hyper.beta2, kUnitInterval);
  check_hyperparameter(context, "eps", "eps", hyper.eps, kPositive);
  check_hyperparameter(context, "weight_decay", "weight_decay", hyper.weight_decay, kNonNegative);
}

}  // namespace ampkit::contracts
