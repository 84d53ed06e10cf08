/*
 * Prints what the guest sees of its process: every argument as
 * "arg[i]=VALUE", every environment variable as "env:NAME=VALUE" (in the
 * order the host passed them), then "cwd=" and the working directory.
 */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

extern char **environ;

int main(int argc, char **argv) {
    for (int i = 0; i < argc; i++)
        printf("arg[%d]=%s\n", i, argv[i]);
    for (char **e = environ; e != NULL && *e != NULL; e++)
        printf("env:%s\n", *e);

    char cwd[PATH_MAX];
    if (getcwd(cwd, sizeof cwd) == NULL) {
        fprintf(stderr, "error: getcwd: %s\n", strerror(errno));
        return 1;
    }
    printf("cwd=%s\n", cwd);
    return 0;
}
