/*
 * Copies stdin to stdout until EOF, then prints how many bytes it copied to
 * stderr: for testing a task's stdin through containerd (`ctr run -i`).
 */
#include <stdio.h>

int main(void) {
    char buf[4096];
    size_t n, total = 0;
    while ((n = fread(buf, 1, sizeof buf, stdin)) > 0) {
        fwrite(buf, 1, n, stdout);
        total += n;
    }
    fflush(stdout);
    fprintf(stderr, "copied %zu bytes\n", total);
    return ferror(stdin) ? 1 : 0;
}
