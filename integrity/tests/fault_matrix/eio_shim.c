/* A fault seam at the file layer, from outside the product: loaded into gito-bridge with
 * LD_PRELOAD, it makes writes to files under $FM_EIO_DIR fail while the file $FM_EIO_FLAG
 * exists, the way a failing disk does mid-append: a write of more than one byte writes the first
 * half and reports it (a partial write), and the next write to that file, or its fsync, fails
 * with EIO, leaving torn bytes at the end of the file. Every injected fault is logged as one line
 * in $FM_EIO_LOG. Built by the spool EIO scenario (spool.rs) with the system C compiler. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <unistd.h>

#define MAX_FDS 4096
static char torn[MAX_FDS];

static ssize_t (*real_write)(int, const void *, size_t);
static int (*real_fdatasync)(int);
static int (*real_fsync)(int);

static int faulty(int fd) {
    const char *flag = getenv("FM_EIO_FLAG");
    const char *dir = getenv("FM_EIO_DIR");
    if (!flag || !dir || fd < 0 || access(flag, F_OK) != 0) {
        return 0;
    }
    char link[64], path[4096];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, path, sizeof path - 1);
    if (n <= 0) {
        return 0;
    }
    path[n] = 0;
    return strncmp(path, dir, strlen(dir)) == 0;
}

static void note(const char *what, int fd) {
    const char *log = getenv("FM_EIO_LOG");
    if (!log || !real_write) {
        return;
    }
    int out = open(log, O_WRONLY | O_APPEND | O_CREAT, 0666);
    if (out < 0) {
        return;
    }
    char line[64];
    int len = snprintf(line, sizeof line, "%s fd %d\n", what, fd);
    real_write(out, line, (size_t)len);
    close(out);
}

ssize_t write(int fd, const void *buf, size_t count) {
    if (!real_write) {
        real_write = dlsym(RTLD_NEXT, "write");
    }
    if (faulty(fd)) {
        if (fd < MAX_FDS && torn[fd]) {
            torn[fd] = 0;
            note("eio", fd);
            errno = EIO;
            return -1;
        }
        if (count > 1 && fd < MAX_FDS) {
            torn[fd] = 1;
            note("partial", fd);
            return real_write(fd, buf, count / 2);
        }
    }
    return real_write(fd, buf, count);
}

static int failing_sync(int fd, int (**real)(int), const char *name) {
    if (!*real) {
        *real = dlsym(RTLD_NEXT, name);
    }
    if (faulty(fd)) {
        note(name, fd);
        errno = EIO;
        return -1;
    }
    return (*real)(fd);
}

int fdatasync(int fd) { return failing_sync(fd, &real_fdatasync, "fdatasync"); }
int fsync(int fd) { return failing_sync(fd, &real_fsync, "fsync"); }
