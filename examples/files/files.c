/*
 * File-system probe driven by argv:
 *
 *   files read PATH         copy the file's content to stdout
 *   files write PATH TEXT   create or truncate PATH and write TEXT (no newline added)
 *   files ls DIR            list DIR's entries one per line, sorted, without . and ..
 *   files stat PATH         print "exists" if PATH can be stat'ed
 *   files link FROM TO      hard-link FROM to TO
 *   files head PATH N       read at most N bytes of PATH, print them as hex
 *   files kind PATH         print what PATH is (following links): "file",
 *                           "directory", "character device", "fifo" or "other"
 *   files readlink PATH     print the target of the symbolic link PATH
 *   files symlink TARGET PATH  make PATH a symbolic link to TARGET
 *   files rename FROM TO    rename FROM to TO
 *   files unlink PATH       remove the file or link PATH
 *   files bench PATH N      open, fstat and close PATH N times; print the
 *                           nanoseconds one round took, on average
 *   files hog PATH          open PATH over and over, never closing, until an
 *                           open fails; print "opened N" and the error
 *
 * Several commands separated by "--" run in order in one process.
 *
 * Success exits 0. A failed operation prints "error: OP PATH: <strerror>" to
 * stderr (OP is open, read, write, close, stat, link, readlink, symlink,
 * rename or unlink) and exits 1; bad usage
 * exits 2.
 */
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <fcntl.h>
#include <time.h>
#include <unistd.h>

static int fail(const char *op, const char *path) {
    fprintf(stderr, "error: %s %s: %s\n", op, path, strerror(errno));
    return 1;
}

static int do_read(const char *path) {
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        return fail("open", path);
    char buf[4096];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, f)) > 0)
        fwrite(buf, 1, n, stdout);
    int err = ferror(f);
    fclose(f);
    return err ? fail("read", path) : 0;
}

static int do_write(const char *path, const char *text) {
    FILE *f = fopen(path, "wb");
    if (f == NULL)
        return fail("open", path);
    if (fputs(text, f) == EOF) {
        int saved = errno;
        fclose(f);
        errno = saved;
        return fail("write", path);
    }
    if (fclose(f) != 0)
        return fail("close", path);
    return 0;
}

static int cmp_names(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static int do_ls(const char *path) {
    DIR *d = opendir(path);
    if (d == NULL)
        return fail("open", path);
    char **names = NULL;
    size_t count = 0, cap = 0;
    struct dirent *e;
    errno = 0;
    while ((e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        if (count == cap) {
            cap = cap ? cap * 2 : 16;
            char **grown = realloc(names, cap * sizeof *names);
            if (grown == NULL) {
                closedir(d);
                return fail("read", path);
            }
            names = grown;
        }
        if ((names[count] = strdup(e->d_name)) == NULL) {
            closedir(d);
            return fail("read", path);
        }
        count++;
        errno = 0;
    }
    int err = errno;
    closedir(d);
    if (err != 0) {
        errno = err;
        return fail("read", path);
    }
    qsort(names, count, sizeof *names, cmp_names);
    for (size_t i = 0; i < count; i++) {
        puts(names[i]);
        free(names[i]);
    }
    free(names);
    return 0;
}

static int do_stat(const char *path) {
    struct stat st;
    if (stat(path, &st) != 0)
        return fail("stat", path);
    puts("exists");
    return 0;
}

static int do_head(const char *path, long want) {
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        return fail("open", path);
    unsigned char buf[4096];
    if (want < 0 || want > (long)sizeof buf)
        want = sizeof buf;
    size_t n = fread(buf, 1, (size_t)want, f);
    int err = ferror(f);
    fclose(f);
    if (err)
        return fail("read", path);
    for (size_t i = 0; i < n; i++)
        printf("%02x", buf[i]);
    putchar('\n');
    return 0;
}

static int do_kind(const char *path) {
    struct stat st;
    if (stat(path, &st) != 0)
        return fail("stat", path);
    puts(S_ISREG(st.st_mode)    ? "file"
         : S_ISDIR(st.st_mode)  ? "directory"
         : S_ISCHR(st.st_mode)  ? "character device"
         : S_ISFIFO(st.st_mode) ? "fifo"
                                : "other");
    return 0;
}

static int do_readlink(const char *path) {
    char buf[4096];
    ssize_t n = readlink(path, buf, sizeof buf - 1);
    if (n < 0)
        return fail("readlink", path);
    buf[n] = '\0';
    puts(buf);
    return 0;
}

static int do_bench(const char *path, long n) {
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (long i = 0; i < n; i++) {
        int fd = open(path, O_RDONLY);
        if (fd < 0)
            return fail("open", path);
        struct stat st;
        if (fstat(fd, &st) != 0)
            return fail("stat", path);
        close(fd);
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double ns = (t1.tv_sec - t0.tv_sec) * 1e9 + (t1.tv_nsec - t0.tv_nsec);
    printf("%.0f\n", n > 0 ? ns / n : 0.0);
    return 0;
}

static int do_link(const char *from, const char *to) {
    if (link(from, to) != 0)
        return fail("link", to);
    return 0;
}

static int do_hog(const char *path) {
    long n = 0;
    while (open(path, O_RDONLY) >= 0)
        n++;
    printf("opened %ld\n", n);
    return fail("open", path);
}

/* One command: argv[1] is its name, argc counts argv[0] too. */
static int command(int argc, char **argv) {
    if (argc == 3 && strcmp(argv[1], "read") == 0)
        return do_read(argv[2]);
    if (argc == 4 && strcmp(argv[1], "write") == 0)
        return do_write(argv[2], argv[3]);
    if (argc == 3 && strcmp(argv[1], "ls") == 0)
        return do_ls(argv[2]);
    if (argc == 3 && strcmp(argv[1], "stat") == 0)
        return do_stat(argv[2]);
    if (argc == 4 && strcmp(argv[1], "link") == 0)
        return do_link(argv[2], argv[3]);
    if (argc == 3 && strcmp(argv[1], "hog") == 0)
        return do_hog(argv[2]);
    if (argc == 4 && strcmp(argv[1], "bench") == 0)
        return do_bench(argv[2], strtol(argv[3], NULL, 10));
    if (argc == 3 && strcmp(argv[1], "readlink") == 0)
        return do_readlink(argv[2]);
    if (argc == 4 && strcmp(argv[1], "symlink") == 0)
        return symlink(argv[2], argv[3]) == 0 ? 0 : fail("symlink", argv[3]);
    if (argc == 4 && strcmp(argv[1], "rename") == 0)
        return rename(argv[2], argv[3]) == 0 ? 0 : fail("rename", argv[3]);
    if (argc == 3 && strcmp(argv[1], "unlink") == 0)
        return unlink(argv[2]) == 0 ? 0 : fail("unlink", argv[2]);
    if (argc == 4 && strcmp(argv[1], "head") == 0)
        return do_head(argv[2], strtol(argv[3], NULL, 10));
    if (argc == 3 && strcmp(argv[1], "kind") == 0)
        return do_kind(argv[2]);
    fprintf(stderr, "usage: files read PATH | write PATH TEXT | ls DIR | stat PATH | link FROM TO | hog PATH"
                    " | head PATH N | kind PATH | readlink PATH | symlink TARGET PATH"
                    " | rename FROM TO | unlink PATH | bench PATH N\n");
    return 2;
}

/* Commands separated by "--" run in order, in one process (so later ones see
 * what earlier ones did to the container's files); the first failure ends
 * the run with its exit code. */
int main(int argc, char **argv) {
    int start = 1;
    for (int i = 1; i <= argc; i++) {
        if (i == argc || strcmp(argv[i], "--") == 0) {
            /* argv[start - 1] stands in for argv[0]. */
            int rc = command(i - start + 1, argv + start - 1);
            if (rc != 0)
                return rc;
            start = i + 1;
        }
    }
    return 0;
}
