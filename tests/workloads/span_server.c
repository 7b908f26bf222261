/* A thread-per-connection HTTP/1.1 server for the correlation tests: every request burns CPU in
 * loupe_request_work() for about the milliseconds its path asks for (`GET /work/<ms>`), then
 * writes one log line to stdout (JSON, level info) and, for `/fail/<ms>`, one to stderr (plain,
 * ERROR), and answers; closes the connection after a request with `Connection: close`. Prints
 * "listening <port>" once ready. Usage: span_server [port] */
#define _GNU_SOURCE /* strcasestr */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

/* The function the tests look for: burns `ms` milliseconds of this thread's CPU. */
__attribute__((noinline)) unsigned long loupe_request_work(int ms) {
    volatile unsigned long x = 0;
    double until = now_ms() + ms;
    while (now_ms() < until) {
        for (int i = 0; i < 10000; i++) x += (unsigned long)i * 2654435761u;
    }
    return x;
}

static void *serve(void *arg) {
    int fd = (int)(long)arg;
    char buf[4096];
    size_t have = 0;
    for (;;) {
        ssize_t n = read(fd, buf + have, sizeof buf - 1 - have);
        if (n <= 0) break;
        have += (size_t)n;
        buf[have] = 0;
        char *end = strstr(buf, "\r\n\r\n");
        if (!end) {
            if (have >= sizeof buf - 1) break;
            continue;
        }
        int ms = 0, fail = 0;
        char path[256] = "";
        sscanf(buf, "GET %255s", path);
        if (sscanf(path, "/work/%d", &ms) != 1 && sscanf(path, "/fail/%d", &ms) == 1) fail = 1;
        unsigned long r = loupe_request_work(ms);
        char line[512];
        int len = snprintf(line, sizeof line,
                           "{\"level\":\"info\",\"msg\":\"request done\",\"path\":\"%s\",\"work\":%lu}\n",
                           path, r & 0xff);
        if (write(1, line, (size_t)len) < 0) break;
        if (fail) {
            len = snprintf(line, sizeof line, "ERROR request %s failed\n", path);
            if (write(2, line, (size_t)len) < 0) break;
        }
        const char *status = fail ? "500 Internal Server Error" : "200 OK";
        len = snprintf(line, sizeof line,
                       "HTTP/1.1 %s\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok", status);
        if (write(fd, line, (size_t)len) < 0) break;
        if (strcasestr(buf, "\r\nconnection: close\r\n")) break;
        /* Keep whatever followed the head (pipelining is not used by the tests). */
        size_t used = (size_t)(end + 4 - buf);
        memmove(buf, buf + used, have - used);
        have -= used;
    }
    close(fd);
    return NULL;
}

int main(int argc, char **argv) {
    int port = argc > 1 ? atoi(argv[1]) : 0;
    int s = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(s, (struct sockaddr *)&a, sizeof a) || listen(s, 64)) {
        perror("bind/listen");
        return 1;
    }
    socklen_t alen = sizeof a;
    getsockname(s, (struct sockaddr *)&a, &alen);
    printf("listening %d\n", ntohs(a.sin_port));
    fflush(stdout);
    for (;;) {
        int c = accept(s, NULL, NULL);
        if (c < 0) continue;
        pthread_t t;
        if (pthread_create(&t, NULL, serve, (void *)(long)c) == 0) pthread_detach(t);
        else close(c);
    }
}
