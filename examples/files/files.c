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
 *   files hog PATH          open PATH over and over, never closing, until an
 *                           open fails; print "opened N" and the error
 *
 * Success exits 0. A failed operation prints "error: OP PATH: <strerror>" to
 * stderr (OP is open, read, write, close, stat or link) and exits 1; bad usage
 * exits 2.
 */
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <fcntl.h>
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

int main(int argc, char **argv) {
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
    if (argc == 4 && strcmp(argv[1], "head") == 0)
        return do_head(argv[2], strtol(argv[3], NULL, 10));
    if (argc == 3 && strcmp(argv[1], "kind") == 0)
        return do_kind(argv[2]);
    fprintf(stderr, "usage: files read PATH | write PATH TEXT | ls DIR | stat PATH | link FROM TO | hog PATH"
                    " | head PATH N | kind PATH\n");
    return 2;
}
