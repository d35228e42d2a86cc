// A fresh directory for one test case, removed with everything in it when
// the case ends.
#pragma once

#include <cstdlib>
#include <filesystem>
#include <string>

namespace commvq {
namespace test {

struct TempDir {
    std::filesystem::path path;
    explicit TempDir(const std::string& name) {
        path = std::filesystem::temp_directory_path() / ("commvq_test_" + name + "_" + std::to_string(std::rand()));
        std::filesystem::create_directories(path);
    }
    ~TempDir() { std::filesystem::remove_all(path); }
    std::string file(const std::string& name) const { return (path / name).string(); }
};

}  // namespace test
}  // namespace commvq
