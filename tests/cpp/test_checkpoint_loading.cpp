// torch::load of ampkit's classes (GradScaler, optim::SGD/AdamW) from damaged or hand-made archives:
// every refusal is an exception, never a crash (ampkit's own checks throw c10::ValueError/TypeError
// naming the entry; LibTorch's archive reader, which runs first, throws c10::Error or, for some
// damaged zips, std::out_of_range), the object is unchanged after it, and what loads is usable.
// ampkit::load refuses, before LibTorch compiles anything, an archive whose code defines a method.
#include "optim_test_helpers.h"
#include "test_helpers.h"

#include <caffe2/serialize/inline_container.h>

#include <cmath>
#include <filesystem>
#include <functional>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

#include "ampkit/ampkit.h"

using ampkit_test::throws_with;

namespace {

const std::vector<std::vector<int64_t>> kShapes = {{7, 5}, {5}, {3, 4}};

std::vector<torch::Tensor> make_params(uint64_t seed) {
  torch::manual_seed(seed);
  std::vector<torch::Tensor> params;
  for (const auto& shape : kShapes) params.push_back(torch::randn(shape).to(torch::kHalf).requires_grad_(true));
  return params;
}

void take_steps(ampkit::optim::MasterWeightOptimizer& optimizer, std::vector<torch::Tensor>& params, int steps) {
  for (int step = 0; step < steps; ++step) {
    for (auto& param : params) param.mutable_grad() = torch::randn(param.sizes()).to(param.scalar_type());
    optimizer.step();
  }
}

// Every value the optimizer holds: parameters, masters, state tensors, options.
std::vector<torch::Tensor> snapshot(ampkit::optim::MasterWeightOptimizer& optimizer,
                                    const std::vector<torch::Tensor>& params) {
  std::vector<torch::Tensor> result = ampkit_test::optimizer_tensors(optimizer, params);
  result.push_back(torch::tensor(optimizer.param_groups()[0].options().get_lr(), torch::kDouble));
  return result;
}

bool bitwise_equal(const std::vector<torch::Tensor>& a, const std::vector<torch::Tensor>& b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    if (a[i].sizes() != b[i].sizes() || a[i].scalar_type() != b[i].scalar_type() || !a[i].equal(b[i])) {
      // NaN != NaN: compare the bits.
      if (a[i].sizes() != b[i].sizes() || !a[i].view(torch::kByte).equal(b[i].view(torch::kByte))) return false;
    }
  }
  return true;
}

bool all_finite(ampkit::optim::MasterWeightOptimizer& optimizer, const std::vector<torch::Tensor>& params) {
  for (const auto& t : snapshot(optimizer, params)) {
    if (t.is_floating_point() && !t.isfinite().all().item<bool>()) return false;
  }
  return true;
}

template <typename T>
std::string saved_bytes(const T& value) {
  std::stringstream stream;
  torch::save(value, stream);
  return stream.str();
}

// Damaged copies of `bytes`: truncated at many lengths, and with single and multiple flipped bytes
// spread over the whole archive (zip headers, the pickled entries, the tensor data).
std::vector<std::string> damaged_copies(const std::string& bytes) {
  std::vector<std::string> result;
  for (size_t length : {size_t{0}, size_t{1}, size_t{4}, size_t{30}, bytes.size() / 4, bytes.size() / 2,
                        bytes.size() - 22, bytes.size() - 1}) {
    result.push_back(bytes.substr(0, length));
  }
  uint64_t state = 0x9E3779B97F4A7C15ULL;  // a fixed xorshift sequence: the same cases every run
  auto next = [&] {
    state ^= state << 13;
    state ^= state >> 7;
    state ^= state << 17;
    return state;
  };
  for (int copy = 0; copy < 150; ++copy) {
    std::string damaged = bytes;
    const int flips = copy < 100 ? 1 : 4;
    for (int f = 0; f < flips; ++f) damaged[next() % damaged.size()] ^= static_cast<char>(1 + next() % 255);
    result.push_back(std::move(damaged));
  }
  return result;
}

struct Outcomes {
  int loaded = 0;
  int refused = 0;
};

// A hand-written archive in GradScaler::save's layout, with entries replaced or left out.
std::stringstream scaler_archive(const std::function<void(torch::serialize::OutputArchive&)>& extra,
                                 const std::string& skip = "") {
  const std::vector<std::pair<std::string, c10::IValue>> entries = {
      {"scale", 1024.0}, {"growth_factor", 2.0}, {"backoff_factor", 0.5}, {"growth_interval", int64_t{2000}},
      {"growth_tracker", int64_t{3}}, {"hysteresis", int64_t{1}}, {"hysteresis_tracker", int64_t{0}},
      {"min_scale", 0.0}, {"max_scale", std::numeric_limits<double>::infinity()}, {"skipped_steps", int64_t{1}},
      {"overflow_events", int64_t{1}}};
  torch::serialize::OutputArchive archive;
  for (const auto& [name, value] : entries) {
    if (name == skip) continue;
    archive.write("ampkit.grad_scaler." + name, value);
  }
  extra(archive);
  std::stringstream stream;
  archive.save_to(stream);
  return stream;
}

}  // namespace

TEST_CASE("torch::load of a damaged GradScaler archive refuses and changes nothing", "[checkpoint]") {
  ampkit::GradScaler source(ampkit::GradScalerOptions().init_scale(4096).growth_interval(7).hysteresis(2));
  source.scale(torch::ones({}));
  const std::string bytes = saved_bytes(source);

  ampkit::GradScaler target(ampkit::GradScalerOptions().init_scale(32));
  target.scale(torch::ones({}));
  const ampkit::GradScalerState before = target.state_dict();
  Outcomes outcomes;
  for (const auto& damaged : damaged_copies(bytes)) {
    std::istringstream stream(damaged);
    try {
      torch::load(target, stream);
      ++outcomes.loaded;
      const auto loaded = target.state_dict();
      CHECK((std::isfinite(loaded.scale) && loaded.scale > 0 && loaded.growth_tracker >= 0 &&
             loaded.hysteresis_tracker >= 0));
      target.load_state_dict(before);
    } catch (const std::exception&) {  // LibTorch's archive reader also throws std::out_of_range
      ++outcomes.refused;
      REQUIRE(target.state_dict() == before);
    }
  }
  INFO("loaded " << outcomes.loaded << ", refused " << outcomes.refused);
  CHECK(outcomes.refused >= 50);  // flips in tensor data that stay finite load, as they should
}

TEST_CASE("torch::load of a GradScaler archive with bad entries names them", "[checkpoint]") {
  ampkit::GradScaler target(ampkit::GradScalerOptions().init_scale(32));
  target.scale(torch::ones({}));
  const ampkit::GradScalerState before = target.state_dict();
  auto load = [&](std::stringstream stream) { torch::load(target, stream); };
  auto replaced = [](const std::string& name, c10::IValue value) {
    return scaler_archive([&](torch::serialize::OutputArchive& archive) {
      archive.write("ampkit.grad_scaler." + name, value);
    }, name);
  };
  const double nan = std::numeric_limits<double>::quiet_NaN();
  CHECK(throws_with([&] { load(replaced("scale", nan)); }, "scale must be a finite number > 0, got nan"));
  CHECK(throws_with([&] { load(replaced("scale", -1.0)); }, "scale must be a finite number > 0, got -1"));
  CHECK(throws_with([&] { load(replaced("scale", 1e39)); }, "scale must be a float32 value in"));
  CHECK(throws_with([&] { load(replaced("scale", std::string("big"))); },
                    "ampkit.grad_scaler.scale must be a number, got String"));
  CHECK(throws_with([&] { load(replaced("growth_tracker", int64_t{-1})); },
                    "growth_tracker must be in [0, 2^31-1], got -1"));
  CHECK(throws_with([&] { load(replaced("growth_tracker", 1.5)); }, "growth_tracker must be an int, got Double"));
  CHECK(throws_with([&] { load(replaced("skipped_steps", int64_t{-5})); }, "skipped_steps must be >= 0, got -5"));
  CHECK(throws_with([&] { load(replaced("backoff_factor", nan)); }, "backoff_factor must be in (0, 1), got nan"));
  CHECK(throws_with([&] { load(scaler_archive([](torch::serialize::OutputArchive&) {}, "hysteresis")); },
                    "the archive has no entry ampkit.grad_scaler.hysteresis"));
  CHECK(target.state_dict() == before);
}

TEST_CASE("torch::load of a damaged optimizer archive refuses and changes nothing", "[checkpoint]") {
  auto source_params = make_params(1);
  ampkit::optim::AdamW source(source_params, ampkit::optim::AdamWOptions(1e-2));
  take_steps(source, source_params, 3);
  auto sgd_params = make_params(2);
  ampkit::optim::SGD sgd_source(sgd_params, ampkit::optim::SGDOptions(0.1).momentum(0.9));
  take_steps(sgd_source, sgd_params, 3);

  auto params = make_params(3);
  ampkit::optim::AdamW adamw(params, ampkit::optim::AdamWOptions(5e-3));
  take_steps(adamw, params, 2);
  auto target_sgd_params = make_params(4);
  ampkit::optim::SGD sgd(target_sgd_params, ampkit::optim::SGDOptions(0.05).momentum(0.9));
  take_steps(sgd, target_sgd_params, 2);

  auto fuzz = [](ampkit::optim::MasterWeightOptimizer& target, std::vector<torch::Tensor>& target_params,
                 const std::string& bytes) {
    const auto before = snapshot(target, target_params);
    Outcomes outcomes;
    for (const auto& damaged : damaged_copies(bytes)) {
      std::istringstream stream(damaged);
      try {
        torch::load(target, stream);
        ++outcomes.loaded;
        CHECK(all_finite(target, target_params));
      } catch (const std::exception&) {  // LibTorch's archive reader also throws std::out_of_range
        ++outcomes.refused;
        // Unchanged since the last load that went through (the original, until one does).
        if (outcomes.loaded == 0) REQUIRE(bitwise_equal(snapshot(target, target_params), before));
      }
    }
    INFO("loaded " << outcomes.loaded << ", refused " << outcomes.refused);
    CHECK(outcomes.refused >= 50);  // flips in tensor data that stay finite load, as they should
  };
  fuzz(adamw, params, saved_bytes(source));
  fuzz(sgd, target_sgd_params, saved_bytes(sgd_source));
}

namespace {

// An archive in MasterWeightOptimizer::save's layout for `optimizer` (AdamW), with `edit` applied to
// the state tensors of params[0] and to the options before they are written.
std::stringstream adamw_archive(ampkit::optim::AdamW& optimizer, const std::vector<torch::Tensor>& params,
                                const std::function<void(std::map<std::string, c10::IValue>&)>& edit_state,
                                const std::function<void(std::map<std::string, c10::IValue>&)>& edit_options,
                                const std::function<void(std::map<std::string, c10::IValue>&)>& edit_top = {}) {
  torch::serialize::OutputArchive archive;
  std::map<std::string, c10::IValue> top = {{"ampkit_optimizer", std::string("AdamW")},
                                            {"group_count", int64_t{1}},
                                            {"group.0.size", static_cast<int64_t>(params.size())}};
  if (edit_top) edit_top(top);
  for (const auto& [key, value] : top) archive.write(key, value);
  const auto& o = static_cast<const ampkit::optim::AdamOptions&>(optimizer.param_groups()[0].options());
  std::map<std::string, c10::IValue> options = {
      {"lr", o.lr()}, {"beta1", std::get<0>(o.betas())}, {"beta2", std::get<1>(o.betas())}, {"eps", o.eps()},
      {"weight_decay", o.weight_decay()}, {"maximize", o.maximize()}, {"master_weights", o.master_weights()}};
  edit_options(options);
  torch::serialize::OutputArchive options_archive(archive.compilation_unit());
  for (const auto& [key, value] : options) options_archive.write(key, value);
  archive.write("group.0.options", options_archive);
  for (size_t i = 0; i < params.size(); ++i) {
    auto& state = static_cast<ampkit::optim::MasterParamState&>(*optimizer.state().at(params[i].unsafeGetTensorImpl()));
    std::map<std::string, c10::IValue> entries = {{"step", state.step().clone()}, {"master", state.master().clone()},
                                                  {"exp_avg", state.exp_avg().clone()},
                                                  {"exp_avg_sq", state.exp_avg_sq().clone()}};
    if (i == 0) edit_state(entries);
    for (const auto& [key, value] : entries) {
      const std::string name = "state.0." + std::to_string(i) + "." + key;
      if (value.isTensor()) {
        archive.write(name, value.toTensor());
      } else {
        archive.write(name, value);
      }
    }
  }
  std::stringstream stream;
  archive.save_to(stream);
  return stream;
}

void no_edit(std::map<std::string, c10::IValue>&) {}

}  // namespace

TEST_CASE("torch::load of an optimizer archive with bad entries names them and changes nothing", "[checkpoint]") {
  auto source_params = make_params(1);
  ampkit::optim::AdamW source(source_params, ampkit::optim::AdamWOptions(1e-2));
  take_steps(source, source_params, 3);
  auto params = make_params(3);
  ampkit::optim::AdamW target(params, ampkit::optim::AdamWOptions(5e-3));
  take_steps(target, params, 2);
  const auto before = snapshot(target, params);
  auto load = [&](std::stringstream stream) { torch::load(target, stream); };
  auto state_edit = [&](const std::string& key, const std::function<c10::IValue(const torch::Tensor&)>& make) {
    return adamw_archive(source, source_params, [&](std::map<std::string, c10::IValue>& entries) {
      entries[key] = make(entries[key].toTensor());
    }, no_edit);
  };
  const double nan = std::numeric_limits<double>::quiet_NaN();

  // The hand-written layout is the real one: unedited, it loads.
  {
    auto other_params = make_params(3);
    ampkit::optim::AdamW scratch(other_params, ampkit::optim::AdamWOptions(5e-3));
    auto stream = adamw_archive(source, source_params, no_edit, no_edit);
    torch::load(scratch, stream);
    CHECK(scratch.param_groups()[0].options().get_lr() == 1e-2);
    CHECK(bitwise_equal(scratch.master_params(), source.master_params()));
  }
  CHECK(throws_with([&] { load(state_edit("step", [](const torch::Tensor& t) { return torch::full_like(t, -1.0); })); },
                    "'step' of params[0] of group 0 must be a whole number >= 0, got -1"));
  CHECK(throws_with([&] { load(state_edit("step", [](const torch::Tensor& t) { return t + 0.5; })); },
                    "must be a whole number >= 0"));
  CHECK(throws_with([&] { load(state_edit("step", [&](const torch::Tensor& t) { return torch::full_like(t, nan); })); },
                    "'step' of params[0] of group 0 holds inf or NaN"));
  CHECK(throws_with([&] { load(state_edit("exp_avg_sq", [](const torch::Tensor& t) { return -t - 1; })); },
                    "'exp_avg_sq' of params[0] of group 0 must be >= 0"));
  CHECK(throws_with([&] { load(state_edit("master", [](const torch::Tensor& t) { return t.to(torch::kDouble); })); },
                    "'master' of params[0] of group 0 must be a dense Float tensor, got a Double"));
  CHECK(throws_with([&] { load(state_edit("master", [](const torch::Tensor& t) { return t.reshape({5, 7}); })); },
                    "'master' of params[0] of group 0 has shape [5, 7] in the archive, but the parameter needs [7, 5]"));
  CHECK(throws_with([&] {
    load(state_edit("exp_avg", [](const torch::Tensor& t) {
      auto copy = t.clone();
      copy.view(-1)[3] = std::numeric_limits<float>::infinity();
      return copy;
    }));
  }, "'exp_avg' of params[0] of group 0 holds inf or NaN"));
  CHECK(throws_with([&] { load(state_edit("exp_avg", [](const torch::Tensor&) { return c10::IValue(1.0); })); },
                    "'exp_avg' of params[0] of group 0 must be a tensor, got Double"));
  auto option_edit = [&](const std::string& key, c10::IValue value) {
    return adamw_archive(source, source_params, no_edit, [&](std::map<std::string, c10::IValue>& options) {
      options[key] = value;
    });
  };
  CHECK(throws_with([&] { load(option_edit("lr", nan)); }, "ampkit::optim::AdamW: lr must be a finite number, got nan"));
  CHECK(throws_with([&] { load(option_edit("lr", std::string("fast"))); },
                    "option 'lr' in the archive must be a number, got String"));
  CHECK(throws_with([&] { load(option_edit("maximize", 1.0)); }, "option 'maximize' in the archive must be a bool"));
  CHECK(throws_with([&] { load(option_edit("beta2", 1.5)); }, "betas[1] must be >= 0 and < 1"));
  CHECK(throws_with([&] {
    load(adamw_archive(source, source_params, no_edit, [](std::map<std::string, c10::IValue>& options) {
      options.erase("eps");
    }));
  }, "the archive's parameter group options has no entry 'eps'"));
  CHECK(throws_with([&] {
    load(adamw_archive(source, source_params, no_edit, no_edit, [](std::map<std::string, c10::IValue>& top) {
      top["group_count"] = std::string("one");
    }));
  }, "'group_count' in the archive must be an int, got String"));
  CHECK(throws_with([&] {
    load(adamw_archive(source, source_params, no_edit, no_edit, [](std::map<std::string, c10::IValue>& top) {
      top.erase("group.0.size");
    }));
  }, "the archive has no entry 'group.0.size'"));
  CHECK(bitwise_equal(snapshot(target, params), before));
}

// ---- ampkit::load: archives that carry TorchScript code are refused before LibTorch compiles it ----

namespace {

// `bytes` (an archive) rewritten with `code` appended to its top-level code record.
std::string with_code_appended(const std::string& bytes, const std::string& code) {
  std::istringstream in(bytes);
  caffe2::serialize::PyTorchStreamReader reader(&in);
  std::string out;
  {
    caffe2::serialize::PyTorchStreamWriter writer([&](const void* data, size_t size) {
      out.append(static_cast<const char*>(data), size);
      return size;
    });
    writer.setMinVersion(reader.version());
    for (const auto& record : reader.getAllRecords()) {
      // The writer adds these itself.
      if (record == "version" || record == ".data/version" || record == "byteorder" ||
          record == ".data/serialization_id") {
        continue;
      }
      auto [data, size] = reader.getRecord(record);
      std::string content(static_cast<const char*>(data.get()), size);
      if (record == "code/__torch__.py") content += code;
      writer.writeRecord(record, content.data(), content.size());
    }
    writer.writeEndOfFile();
  }
  return out;
}

// A method LibTorch accepts (it compiles into the loaded module), and one it cannot compile.
const std::string kCompilingMethod =
    "  def forward(self) -> None:\n    ops.prim.RaiseException(\"payload\", \"builtins.RuntimeError\")\n";
const std::string kFailingMethod = "  def __setstate__(self, state: Dict[str, float]) -> None:\n    undefined_name()\n";

}  // namespace

TEST_CASE("ampkit::load loads ampkit's own archives as torch::load does", "[checkpoint]") {
  ampkit::GradScaler source(ampkit::GradScalerOptions().init_scale(4096).growth_interval(7).hysteresis(2));
  source.scale(torch::ones({}));
  std::istringstream stream(saved_bytes(source));
  ampkit::GradScaler target;
  ampkit::load(target, stream, "scaler.pt");
  CHECK(target.state_dict() == source.state_dict());

  auto params = make_params(1);
  ampkit::optim::AdamW optimizer(params, ampkit::optim::AdamWOptions(1e-3));
  take_steps(optimizer, params, 2);
  const std::string path = (std::filesystem::temp_directory_path() / "ampkit_load_adamw.pt").string();
  torch::save(optimizer, path);
  auto other_params = make_params(1);
  ampkit::optim::AdamW other(other_params, ampkit::optim::AdamWOptions(1e-3));
  ampkit::load(other, path);
  // Everything the optimizer holds (masters, state, lr); the model weights are not part of it.
  const auto loaded = snapshot(other, other_params), saved = snapshot(optimizer, params);
  CHECK(bitwise_equal({loaded.begin() + other_params.size(), loaded.end()},
                      {saved.begin() + params.size(), saved.end()}));
  std::filesystem::remove(path);
}

TEST_CASE("ampkit::load refuses an archive that defines a method, before LibTorch compiles it", "[checkpoint]") {
  ampkit::GradScaler source(ampkit::GradScalerOptions().init_scale(4096));
  source.scale(torch::ones({}));
  const std::string bytes = saved_bytes(source);
  for (const auto& method : {kCompilingMethod, kFailingMethod}) {
    const std::string hostile = with_code_appended(bytes, method);
    ampkit::GradScaler target(ampkit::GradScalerOptions().init_scale(32));
    const ampkit::GradScalerState before = target.state_dict();
    std::istringstream stream(hostile);
    CHECK(throws_with([&] { ampkit::load(target, stream, "hostile.pt"); },
                      "checkpoint 'hostile.pt' refused: its record 'code/__torch__.py' defines code (def "));
    CHECK(target.state_dict() == before);
  }
  // Without the check LibTorch compiles what the archive defines: the method that does not compile
  // fails inside torch::load (so it was compiled), the other loads with the attacker's method in it.
  std::istringstream failing(with_code_appended(bytes, kFailingMethod));
  ampkit::GradScaler target;
  try {
    torch::load(target, failing);
    FAIL("torch::load accepted a method that does not compile");
  } catch (const std::exception& error) {  // TorchScript's compile error
    CHECK(std::string(error.what()).find("undefined_name") != std::string::npos);
  }
  std::istringstream compiling(with_code_appended(bytes, kCompilingMethod));
  CHECK_NOTHROW(torch::load(target, compiling));
}

TEST_CASE("ampkit::load of damaged archives refuses with an exception and changes nothing", "[checkpoint]") {
  ampkit::GradScaler source(ampkit::GradScalerOptions().init_scale(4096));
  source.scale(torch::ones({}));
  ampkit::GradScaler target(ampkit::GradScalerOptions().init_scale(32));
  const ampkit::GradScalerState before = target.state_dict();
  int refused = 0;
  for (const auto& damaged : damaged_copies(saved_bytes(source))) {
    std::istringstream stream(damaged);
    try {
      ampkit::load(target, stream);
      target.load_state_dict(before);
    } catch (const std::exception&) {
      ++refused;
      REQUIRE(target.state_dict() == before);
    }
  }
  CHECK(refused >= 50);
  CHECK_THROWS(ampkit::check_archive_declares_no_code("/nonexistent/ampkit.pt"));
}
