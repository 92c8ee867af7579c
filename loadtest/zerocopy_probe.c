// How much CPU sending a body costs with write(2), with vmsplice(2) + splice(2) from an
// anonymous mapping, and with sendfile(2) from a memfd: what chose how ringway sends large
// cache hits (docs/architecture.md, "Hits by reference"; docs/benchmarks-log.md run 36).
//
//   cc -O2 -o /tmp/zerocopy_probe loadtest/zerocopy_probe.c -lpthread
//   /tmp/zerocopy_probe write|vmsplice|sendfile BYTES [COUNT]
//
// One loopback connection. The reader (CPU 1) keeps 16 requests of one byte outstanding and
// asks again each time a whole body arrived; the sender (CPU 0) answers each with BYTES
// (at most 256 KiB, one pipe's worth). Prints the sender thread's CPU time per body.
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

static size_t len;

static void pin(int cpu) {
  cpu_set_t s;
  CPU_ZERO(&s);
  CPU_SET(cpu, &s);
  sched_setaffinity(0, sizeof s, &s);
}

static void die(const char *what) {
  perror(what);
  exit(1);
}

static void *reader(void *arg) {
  pin(1);
  int fd = (int)(long)arg;
  char *buf = malloc(1 << 20);
  long total = 0, got = 0;
  if (write(fd, "rrrrrrrrrrrrrrrr", 16) != 16) die("write");
  for (;;) {
    ssize_t n = read(fd, buf, 1 << 20);
    if (n <= 0) break;
    total += n;
    got += n;
    for (; got >= (long)len; got -= len)
      if (write(fd, "r", 1) != 1) die("write");
  }
  return (void *)total;
}

static double cpu_us(void) {
  struct rusage r;
  getrusage(RUSAGE_THREAD, &r);
  return (r.ru_utime.tv_sec + r.ru_stime.tv_sec) * 1e6 + r.ru_utime.tv_usec + r.ru_stime.tv_usec;
}

int main(int argc, char **argv) {
  if (argc < 3) {
    fprintf(stderr, "usage: %s write|vmsplice|sendfile BYTES [COUNT]\n", argv[0]);
    return 2;
  }
  const char *mode = argv[1];
  len = strtoul(argv[2], 0, 10);
  long count = argc > 3 ? atol(argv[3]) : 50000;
  if (len == 0 || len > 256 * 1024) return 2;

  int l = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t al = sizeof a;
  if (bind(l, (void *)&a, sizeof a) || listen(l, 1) || getsockname(l, (void *)&a, &al)) die("listen");
  int c = socket(AF_INET, SOCK_STREAM, 0);
  if (connect(c, (void *)&a, sizeof a)) die("connect");
  int s = accept(l, 0, 0);
  int one = 1;
  setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  pthread_t th;
  pthread_create(&th, 0, reader, (void *)(long)s);
  pin(0);

  char *heap = malloc(len);
  memset(heap, 'h', len);
  char *anon = mmap(0, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  memset(anon, 'a', len);
  int mfd = memfd_create("body", 0);
  if (ftruncate(mfd, len) || pwrite(mfd, heap, len, 0) != (ssize_t)len) die("memfd");
  int p[2];
  if (pipe(p)) die("pipe");
  fcntl(p[1], F_SETPIPE_SZ, 256 * 1024);

  double t0 = cpu_us();
  for (long i = 0; i < count; i++) {
    char q;
    if (read(c, &q, 1) != 1) die("read");
    if (!strcmp(mode, "write")) {
      for (size_t o = 0; o < len;) {
        ssize_t n = write(c, heap + o, len - o);
        if (n < 0) die("write");
        o += n;
      }
    } else if (!strcmp(mode, "vmsplice")) {
      struct iovec v = {anon, len};
      while (v.iov_len) {
        ssize_t n = vmsplice(p[1], &v, 1, 0);
        if (n < 0) die("vmsplice");
        v.iov_base = (char *)v.iov_base + n;
        v.iov_len -= n;
      }
      for (size_t left = len; left;) {
        ssize_t n = splice(p[0], 0, c, 0, left, 0);
        if (n < 0) die("splice");
        left -= n;
      }
    } else {
      off_t off = 0;
      for (size_t left = len; left;) {
        ssize_t n = sendfile(c, mfd, &off, left);
        if (n < 0) die("sendfile");
        left -= n;
      }
    }
  }
  double us = cpu_us() - t0;
  shutdown(c, SHUT_WR);
  void *total;
  pthread_join(th, &total);
  printf("%s %zu bytes: %.2f us of sender CPU per body (%ld bytes received)\n", mode, len,
         us / count, (long)total);
  return 0;
}
