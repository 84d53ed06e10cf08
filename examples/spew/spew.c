/*
 * Writes argv[1] MiB (default 16) of 'x' to stdout, 64 KiB at a time, then
 * exits 0: for testing large output through containerd's FIFOs.
 */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int main(int argc, char **argv) {
    static char buf[64 * 1024];
    long mib = argc > 1 ? atol(argv[1]) : 16;
    memset(buf, 'x', sizeof buf);
    for (long i = 0; i < mib * 16; i++) {
        size_t off = 0;
        while (off < sizeof buf) {
            ssize_t n = write(1, buf + off, sizeof buf - off);
            if (n < 0)
                return 1;
            off += (size_t)n;
        }
    }
    return 0;
}
