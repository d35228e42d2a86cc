#include "file_io.h"

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "error.h"

namespace commvq {

namespace {

[[noreturn]] void io_error(const std::string& what, int err) {
    throw Error(COMMVQ_ERR_IO, what + ": " + std::strerror(err));
}

}  // namespace

InputFile::InputFile(const std::string& path) : path_(path) {
    // O_NONBLOCK: opening a FIFO must not wait for a writer; it is refused
    // below like anything else that is not a regular file.
    fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd_ < 0) io_error("cannot open '" + path + "' for reading", errno);
    struct stat st;
    if (::fstat(fd_, &st) != 0) {
        const int err = errno;
        ::close(fd_);
        io_error("cannot read the size of '" + path + "'", err);
    }
    if (!S_ISREG(st.st_mode)) {
        ::close(fd_);
        throw Error(COMMVQ_ERR_IO, "'" + path + "' is " +
                                       (S_ISDIR(st.st_mode) ? "a directory" : "not a regular file") +
                                       "; a file was expected");
    }
    size_ = uint64_t(st.st_size);
}

InputFile::~InputFile() { ::close(fd_); }

void InputFile::read(void* out, size_t n) {
    auto* at = static_cast<uint8_t*>(out);
    while (n > 0) {
        const ssize_t got = ::read(fd_, at, n);
        if (got < 0 && errno == EINTR) continue;
        if (got < 0) io_error("cannot read '" + path_ + "'", errno);
        if (got == 0) throw Error(COMMVQ_ERR_IO, "'" + path_ + "' ended early (changed while it was read?)");
        at += got;
        n -= size_t(got);
    }
}

void write_file_atomically(const std::string& path, const void* data, size_t n) {
    // pid and a process-wide counter make the name unique; O_EXCL makes
    // sure it is, even against a file left by a crashed writer.
    static std::atomic<uint64_t> counter{0};
    std::string tmp;
    int fd = -1;
    for (int attempt = 0; fd < 0; ++attempt) {
        tmp = path + ".partial-" + std::to_string(::getpid()) + "-" + std::to_string(counter.fetch_add(1));
        fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
        if (fd < 0 && (errno != EEXIST || attempt == 100)) io_error("cannot create '" + tmp + "'", errno);
    }
    const auto* at = static_cast<const uint8_t*>(data);
    size_t left = n;
    while (left > 0) {
        const ssize_t put = ::write(fd, at, left);
        if (put < 0 && errno == EINTR) continue;
        if (put <= 0) {
            const int err = put < 0 ? errno : EIO;
            ::close(fd);
            ::unlink(tmp.c_str());
            io_error("cannot write '" + tmp + "'", err);
        }
        at += put;
        left -= size_t(put);
    }
    if (::close(fd) != 0) {
        const int err = errno;
        ::unlink(tmp.c_str());
        io_error("cannot write '" + tmp + "'", err);
    }
    if (std::rename(tmp.c_str(), path.c_str()) != 0) {
        const int err = errno;
        ::unlink(tmp.c_str());
        io_error("cannot rename '" + tmp + "' to '" + path + "'", err);
    }
}

}  // namespace commvq
