/*
 * Exits with the integer in argv[1] (default 0).
 *
 *   exit-code N             return N from main
 *   exit-code N proc_exit   call _Exit(N) instead (WASI proc_exit, even for 0)
 *
 * With wasi-libc, returning 0 from main makes _start return normally without
 * calling proc_exit; any other value goes through proc_exit(N).
 */
#include <stdlib.h>
#include <string.h>

int main(int argc, char **argv) {
    int code = argc > 1 ? atoi(argv[1]) : 0;
    if (argc > 2 && strcmp(argv[2], "proc_exit") == 0)
        _Exit(code);
    return code;
}
