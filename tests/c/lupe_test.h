/* A small test runner: each TEST is OK, FAIL or SKIP; the exit code is 0 when nothing
 * failed and something passed, 77 (ctest's skip code) when everything skipped. */
#ifndef LUPE_TEST_H
#define LUPE_TEST_H

#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

struct lupe_test {
	const char *name;
	void (*fn)(void);
};

enum { LUPE_TEST_OK, LUPE_TEST_FAIL, LUPE_TEST_SKIP };
static int lupe_test_state;
static char lupe_test_reason[512];

#define TEST(name)                                                          \
	static void name(void);                                             \
	static const struct lupe_test name##_desc                           \
		__attribute__((used, section("lupe_tests"), aligned(16))) = { #name, name }; \
	static void name(void)

#define FAIL(...)                                                           \
	do {                                                                \
		lupe_test_state = LUPE_TEST_FAIL;                           \
		fprintf(stdout, "    %s:%d: ", __FILE__, __LINE__);         \
		fprintf(stdout, __VA_ARGS__);                               \
		fputc('\n', stdout);                                        \
		return;                                                     \
	} while (0)

#define SKIP(...)                                                           \
	do {                                                                \
		lupe_test_state = LUPE_TEST_SKIP;                           \
		snprintf(lupe_test_reason, sizeof(lupe_test_reason), __VA_ARGS__); \
		return;                                                     \
	} while (0)

#define ASSERT(cond)                                                        \
	do { if (!(cond)) FAIL("assertion failed: %s", #cond); } while (0)
#define ASSERT_EQ(a, b)                                                     \
	do {                                                                \
		long long _a = (long long)(a), _b = (long long)(b);         \
		if (_a != _b) FAIL("%s == %s: %lld != %lld", #a, #b, _a, _b); \
	} while (0)
#define ASSERT_OK(e)                                                        \
	do {                                                                \
		long long _e = (long long)(e);                              \
		if (_e != 0) FAIL("%s: returned %lld", #e, _e);             \
	} while (0)
#define ASSERT_STREQ(a, b)                                                  \
	do {                                                                \
		const char *_a = (a), *_b = (b);                            \
		if (!_a || !_b || strcmp(_a, _b) != 0)                       \
			FAIL("%s == %s: \"%s\" != \"%s\"", #a, #b, _a ? _a : "(null)", _b ? _b : "(null)"); \
	} while (0)

extern const struct lupe_test __start_lupe_tests[], __stop_lupe_tests[];

int main(int argc, char **argv)
{
	const struct lupe_test *t;
	int passed = 0, failed = 0, skipped = 0;

	for (t = __start_lupe_tests; t < __stop_lupe_tests; t++) {
		if (argc > 1 && !strstr(t->name, argv[1]))
			continue;
		lupe_test_state = LUPE_TEST_OK;
		t->fn();
		if (lupe_test_state == LUPE_TEST_OK) {
			printf("ok   %s\n", t->name);
			passed++;
		} else if (lupe_test_state == LUPE_TEST_SKIP) {
			printf("SKIP %s: %s\n", t->name, lupe_test_reason);
			skipped++;
		} else {
			printf("FAIL %s\n", t->name);
			failed++;
		}
		fflush(stdout);
	}
	printf("%d passed, %d failed, %d skipped\n", passed, failed, skipped);
	if (failed)
		return 1;
	return passed ? 0 : 77;
}

/* Runs a shell command (printf-style); returns its exit status, or -1 when it did not exit.
 * A failing command is printed, so a test's failure shows what ran. */
static inline int lupe_test_run(const char *fmt, ...)
{
	char cmd[4 * PATH_MAX];
	va_list ap;
	int st;

	va_start(ap, fmt);
	vsnprintf(cmd, sizeof(cmd), fmt, ap);
	va_end(ap);
	st = system(cmd);
	if (st == -1 || !WIFEXITED(st))
		return -1;
	if (WEXITSTATUS(st))
		printf("    command failed (%d): %s\n", WEXITSTATUS(st), cmd);
	return WEXITSTATUS(st);
}

#endif
