// Whole files in and out, the one way every loader and saver of the library
// does it (codebook files, sequence files):
//  - reading opens only regular files: a directory, a FIFO or a device is an
//    IO error naming the path before a byte is read (a FIFO or /dev/zero
//    could be read without end, a directory has no meaningful size);
//  - writing goes to a fresh temporary name beside the target, created
//    exclusively (never an existing file, never another writer's), then
//    renamed over the target, so a reader sees the old file or the new one
//    whole and two writers of one path never collide.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace commvq {

class InputFile {
public:
    // COMMVQ_ERR_IO naming the path if it cannot be opened or is not a
    // regular file.
    explicit InputFile(const std::string& path);
    ~InputFile();
    InputFile(const InputFile&) = delete;
    InputFile& operator=(const InputFile&) = delete;

    const std::string& path() const { return path_; }
    uint64_t size() const { return size_; }
    // The next n bytes; COMMVQ_ERR_IO if the file ends first or reading fails.
    void read(void* out, size_t n);

private:
    std::string path_;
    int fd_ = -1;
    uint64_t size_ = 0;
};

// Writes data[0..n) to path through a temporary file; COMMVQ_ERR_IO naming
// the file at fault, with the temporary file removed, if anything fails.
void write_file_atomically(const std::string& path, const void* data, size_t n);

}  // namespace commvq
