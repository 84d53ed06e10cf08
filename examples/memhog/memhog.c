/*
 * Allocates and touches memory 1 MiB at a time, up to argv[1] MiB (default
 * 64), until an allocation fails; then prints "allocated N MiB" and exits 0.
 * Under a memory limit, the allocation that would cross it fails inside the
 * guest (memory.grow returns -1), which is what the limit tests look for.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Keeps every block reachable, so the compiler cannot drop the allocations. */
char *volatile last_block;

int main(int argc, char **argv) {
    long max = argc > 1 ? atol(argv[1]) : 64;
    long got = 0;
    while (got < max) {
        char *p = malloc(1 << 20);
        if (p == NULL)
            break;
        memset(p, 0xab, 1 << 20);
        last_block = p;
        got++;
    }
    printf("allocated %ld MiB\n", got);
    return 0;
}
