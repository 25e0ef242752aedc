/*
 * A page cache that a power cut empties, for one Redis/Valkey process (LD_PRELOAD).
 *
 * Bytes the server writes to its append-only files (*.incr.aof) are held in this process's
 * memory until it calls fsync() or fdatasync() on that file (or closes it); only then do they
 * reach the real file. A SIGKILL of the server then loses exactly what a power loss would
 * lose: everything written but not yet fsynced. Nothing else is changed.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MAXFD 65536

static char *held[MAXFD];
static size_t held_len[MAXFD], held_cap[MAXFD];
static signed char kind[MAXFD]; /* 1 append-only file, -1 anything else (last lookup) */
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;

static ssize_t (*real_write)(int, const void *, size_t);
static int (*real_fsync)(int);
static int (*real_fdatasync)(int);
static int (*real_close)(int);

static void init(void) {
    if (!real_write) {
        real_write = dlsym(RTLD_NEXT, "write");
        real_fsync = dlsym(RTLD_NEXT, "fsync");
        real_fdatasync = dlsym(RTLD_NEXT, "fdatasync");
        real_close = dlsym(RTLD_NEXT, "close");
    }
}

/* Looked up on every call, not cached: stdio's fclose() closes descriptors without going
 * through close(), so a number may be reused for another file behind our back. */
static int is_aof(int fd) {
    if (fd < 0 || fd >= MAXFD) return 0;
    char link[64], target[1024];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, target, sizeof target - 1);
    target[n > 0 ? n : 0] = 0;
    kind[fd] = (n > 0 && strstr(target, ".incr.aof")) ? 1 : -1;
    return kind[fd] == 1;
}

/* Write what is held for fd to the real file. Called with the lock held. */
static void release(int fd) {
    size_t done = 0;
    while (done < held_len[fd]) {
        ssize_t n = real_write(fd, held[fd] + done, held_len[fd] - done);
        if (n <= 0) break;
        done += (size_t)n;
    }
    held_len[fd] = 0;
}

ssize_t write(int fd, const void *buf, size_t count) {
    init();
    pthread_mutex_lock(&lock);
    if (!is_aof(fd)) {
        pthread_mutex_unlock(&lock);
        return real_write(fd, buf, count);
    }
    if (held_len[fd] + count > held_cap[fd]) {
        size_t cap = (held_len[fd] + count) * 2 + 4096;
        char *grown = realloc(held[fd], cap);
        if (!grown) {
            pthread_mutex_unlock(&lock);
            return -1;
        }
        held[fd] = grown;
        held_cap[fd] = cap;
    }
    memcpy(held[fd] + held_len[fd], buf, count);
    held_len[fd] += count;
    pthread_mutex_unlock(&lock);
    return (ssize_t)count;
}

static void release_if_aof(int fd) {
    pthread_mutex_lock(&lock);
    if (is_aof(fd)) release(fd);
    pthread_mutex_unlock(&lock);
}

int fsync(int fd) {
    init();
    release_if_aof(fd);
    return real_fsync(fd);
}

int fdatasync(int fd) {
    init();
    release_if_aof(fd);
    return real_fdatasync(fd);
}

int close(int fd) {
    init();
    pthread_mutex_lock(&lock);
    if (fd >= 0 && fd < MAXFD && held_len[fd] && is_aof(fd)) release(fd);
    pthread_mutex_unlock(&lock);
    return real_close(fd);
}
