// A fresh directory for one test case, removed with everything in it when
// the case ends. mkdtemp makes the name unique, so neither a concurrent test
// nor a directory left by a run that was killed can be in the way.
#pragma once

#include <stdlib.h>

#include <doctest/doctest.h>

#include <filesystem>
#include <string>
#include <vector>

namespace commvq {
namespace test {

struct TempDir {
    std::filesystem::path path;
    explicit TempDir(const std::string& name) {
        const std::string pattern = (std::filesystem::temp_directory_path() / ("commvq_test_" + name + "_XXXXXX")).string();
        std::vector<char> buffer(pattern.begin(), pattern.end());
        buffer.push_back('\0');
        REQUIRE_MESSAGE(::mkdtemp(buffer.data()) != nullptr, "cannot create a directory like " << pattern);
        path = buffer.data();
    }
    ~TempDir() { std::filesystem::remove_all(path); }
    std::string file(const std::string& name) const { return (path / name).string(); }
};

}  // namespace test
}  // namespace commvq
