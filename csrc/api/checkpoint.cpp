// ampkit::load's pre-check: the archive's TorchScript code may declare attributes, never methods.
#include "ampkit/checkpoint.h"

#include <caffe2/serialize/inline_container.h>
#include <c10/util/Exception.h>

#include <cstring>
#include <memory>
#include <string>

namespace ampkit {
namespace {

// A line that begins a method or applies a decorator: what TorchScript would compile and could run.
bool defines_code(const std::string& source, std::string& offending_line) {
  size_t start = 0;
  while (start <= source.size()) {
    size_t end = source.find('\n', start);
    if (end == std::string::npos) end = source.size();
    const std::string line = source.substr(start, end - start);
    const size_t first = line.find_first_not_of(" \t");
    if (first != std::string::npos &&
        (line.compare(first, 4, "def ") == 0 || line.compare(first, 6, "async ") == 0 || line[first] == '@')) {
      offending_line = line.substr(first);
      return true;
    }
    start = end + 1;
  }
  return false;
}

bool is_code_record(const std::string& record) {
  const std::string suffix = ".py";
  return record.rfind("code/", 0) == 0 && record.size() > suffix.size() &&
         record.compare(record.size() - suffix.size(), suffix.size(), suffix) == 0;
}

void check_reader(caffe2::serialize::PyTorchStreamReader& reader, const std::string& name) {
  for (const std::string& record : reader.getAllRecords()) {
    if (!is_code_record(record)) continue;
    auto [data, size] = reader.getRecord(record);
    const std::string source(static_cast<const char*>(data.get()), size);
    std::string line;
    TORCH_CHECK_VALUE(!defines_code(source, line), "ampkit::load: checkpoint '", name, "' refused: its record '",
                      record, "' defines code (", line,
                      "); ampkit's checkpoints only declare attributes, and LibTorch would run this while loading");
  }
}

}  // namespace

void check_archive_declares_no_code(const std::string& path) {
  caffe2::serialize::PyTorchStreamReader reader(path);
  check_reader(reader, path);
}

void check_archive_declares_no_code(const std::string& bytes, const std::string& name) {
  std::istringstream stream(bytes);
  caffe2::serialize::PyTorchStreamReader reader(&stream);
  check_reader(reader, name);
}

}  // namespace ampkit
