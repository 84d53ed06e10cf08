/*
 * Allocates and touches memory 1 MiB at a time, up to argv[1] MiB (default
 * 64), until an allocation fails; then prints "allocated N MiB" and exits 0.
 * Under a memory limit, the allocation that would cross it fails inside the
 * guest (memory.grow returns -1), which is what the limit tests look for.
 *
 * With argv[2] "retry" it never gives up: a failed allocation is tried again
 * every 20 ms, and once it holds argv[1] MiB it prints that and sleeps. The
 * Update tests raise its limit while it waits.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Keeps every block reachable, so the compiler cannot drop the allocations. */
char *volatile last_block;

int main(int argc, char **argv) {
    long max = argc > 1 ? atol(argv[1]) : 64;
    int retry = argc > 2 && strcmp(argv[2], "retry") == 0;
    long got = 0;
    while (got < max) {
        char *p = malloc(1 << 20);
        if (p == NULL) {
            if (!retry)
                break;
            usleep(20000);
            continue;
        }
        memset(p, 0xab, 1 << 20);
        last_block = p;
        got++;
    }
    printf("allocated %ld MiB\n", got);
    fflush(stdout);
    if (retry)
        sleep(3600);
    return 0;
}
