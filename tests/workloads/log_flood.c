/* Writes log lines to stdout, one write() per line, at a steady rate: the log flood test.
 * Usage: log_flood <lines per second> <seconds>. Prints the number of lines written to stderr
 * at the end ("wrote N"). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: log_flood <lines per second> <seconds>\n");
        return 2;
    }
    double rate = atof(argv[1]), seconds = atof(argv[2]);
    double start = now_s();
    unsigned long written = 0;
    char line[128];
    for (;;) {
        double elapsed = now_s() - start;
        if (elapsed >= seconds) break;
        unsigned long due = (unsigned long)(elapsed * rate);
        if (written >= due) {
            usleep(200);
            continue;
        }
        while (written < due) {
            int n = snprintf(line, sizeof line, "level=info msg=\"flood line\" n=%lu\n", written);
            if (write(1, line, (size_t)n) != n) return 1;
            written++;
        }
    }
    fprintf(stderr, "wrote %lu\n", written);
    return 0;
}
