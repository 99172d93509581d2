/* test_migrations.c - checks the migrations embedded by cmake/embed_migrations.cmake. */
#include <ctype.h>
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "migrations.h"

static int ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && strcmp(s + n - m, suffix) == 0;
}

static void test_list(void)
{
    REQUIRE(migrations_count > 0);
    int rows = 0;
    while (migrations_all[rows].name)
        rows++;
    CHECK(rows == migrations_count); /* the {0} row ends the list */
    CHECK(migrations_all[migrations_count].sql == NULL);
    CHECK(migrations_all[migrations_count].len == 0);
}

static void test_entries(void)
{
    for (int i = 0; i < migrations_count; i++) {
        const struct migration *m = &migrations_all[i];
        REQUIRE(m->name != NULL && m->sql != NULL);
        CHECK(ends_with(m->name, ".sql"));
        CHECK(strlen(m->name) > 8); /* "0001" + something + ".sql" */
        CHECK(isdigit((unsigned char)m->name[0]) && isdigit((unsigned char)m->name[1]) &&
              isdigit((unsigned char)m->name[2]) && isdigit((unsigned char)m->name[3]));
        CHECK(strchr(m->name, '/') == NULL); /* a bare file name */
        CHECK(m->len > 0);
        CHECK(m->len == strlen(m->sql)); /* no NUL inside, terminated */
        if (i > 0)
            CHECK(strcmp(migrations_all[i - 1].name, m->name) < 0);
        if (i > 0) /* numbers are unique, not just names */
            CHECK(strncmp(migrations_all[i - 1].name, m->name, 4) < 0);
    }
}

/* Reads a whole file; caller frees. NULL on error. */
static char *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    char *data = NULL;
    size_t cap = 0, n = 0, got;
    do {
        if (n + 4096 > cap) {
            cap = (cap + 4096) * 2;
            char *p = realloc(data, cap);
            if (!p) {
                free(data);
                fclose(f);
                return NULL;
            }
            data = p;
        }
        got = fread(data + n, 1, cap - n, f);
        n += got;
    } while (got > 0);
    fclose(f);
    *len = n;
    return data;
}

/* The embedded text is byte for byte the file in migrations/, and every
 * .sql file there is embedded. */
static void test_matches_files(void)
{
    char path[4096];
    int files = 0;
    DIR *d = opendir(CRIER_SOURCE_DIR "/migrations");
    REQUIRE(d != NULL);
    struct dirent *e;
    while ((e = readdir(d)) != NULL)
        if (ends_with(e->d_name, ".sql"))
            files++;
    closedir(d);
    CHECK(files == migrations_count);

    for (int i = 0; i < migrations_count; i++) {
        const struct migration *m = &migrations_all[i];
        snprintf(path, sizeof(path), "%s/migrations/%s", CRIER_SOURCE_DIR, m->name);
        size_t len = 0;
        char *data = slurp(path, &len);
        CHECK(data != NULL);
        if (!data)
            continue;
        CHECK(len == m->len);
        CHECK(len == m->len && memcmp(data, m->sql, len) == 0);
        free(data);
    }
}

int main(void)
{
    RUN(test_list);
    RUN(test_entries);
    RUN(test_matches_files);
    return check_summary();
}
