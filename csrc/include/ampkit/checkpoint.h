// Loading ampkit's C++ checkpoints without running code from the file.
//
// torch::save(scaler_or_optimizer, path) writes a TorchScript archive: data.pkl, tensors, and
// code/*.py that only declares the attributes' types. torch::load hands the file to LibTorch's
// TorchScript importer first, which compiles any method the archive's code defines and runs a
// __setstate__ while unpickling, before ampkit sees a single entry. ampkit::load reads the archive's
// records first and refuses (c10::ValueError naming the file and the record) any archive whose code
// defines a method or a decorator, i.e. anything that could execute; then it loads with torch::load,
// and ampkit's own entry checks run as with torch::load. ampkit's archives never define methods.
#pragma once

#include <torch/serialize.h>

#include <istream>
#include <sstream>
#include <string>

namespace ampkit {

// Throws c10::ValueError unless every code record of the archive only declares attributes; a damaged
// archive throws as LibTorch's reader does (c10::Error). `name` is how errors refer to the archive.
void check_archive_declares_no_code(const std::string& path);
void check_archive_declares_no_code(const std::string& bytes, const std::string& name);

// torch::load(object, path) after check_archive_declares_no_code: for ampkit::GradScaler and the
// ampkit::optim optimizers (any type torch::load takes). Nothing changes on a refusal.
template <typename Value>
void load(Value& object, const std::string& path) {
  check_archive_declares_no_code(path);
  torch::load(object, path);
}

// The same from a stream (read whole once, checked, then loaded from the copy).
template <typename Value>
void load(Value& object, std::istream& stream, const std::string& name = "<stream>") {
  std::string bytes{std::istreambuf_iterator<char>(stream), std::istreambuf_iterator<char>()};
  check_archive_declares_no_code(bytes, name);
  std::istringstream copy(bytes);
  torch::load(object, copy);
}

}  // namespace ampkit
