/* ehframe benchmark: how long extracting the stack deltas of a file takes and how big the
 * table is. Prints figures and asserts nothing.
 *
 *   build/bench/ehframe_bench              libc, libstdc++, libLLVM-14 (when installed) and
 *                                          the largest ELF files under /usr and /opt, down
 *                                          to the first with call-frame information
 *   build/bench/ehframe_bench FILE...      those files
 *
 * Each file is extracted once to warm the page cache, then RUNS times through
 * .eh_frame_hdr's table and RUNS times walking .eh_frame linearly: median and minimum
 * wall time (CLOCK_MONOTONIC) of the whole call (open excluded; mmap, libelf, parsing,
 * merging included). "bytes" is the table as the process manager stores it
 * (count * sizeof(struct lupe_stack_delta)). Targets of the issue: <= 10 ms for libc,
 * <= 0.3 s for libLLVM-14. */
#include "ehframe.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define RUNS 7

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

/* The largest ELF files found by the tree walk, largest first. */
#define NLARGEST 8
static struct big {
	char path[PATH_MAX];
	off_t size;
} largest[NLARGEST];

static int visit(const char *path, const struct stat *sb, int type, struct FTW *ftw)
{
	unsigned char magic[4];
	int fd, i;

	(void)ftw;
	if (type != FTW_F || !S_ISREG(sb->st_mode) || sb->st_size <= largest[NLARGEST - 1].size)
		return 0;
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return 0;
	if (pread(fd, magic, 4, 0) == 4 && memcmp(magic, "\177ELF", 4) == 0) {
		for (i = NLARGEST - 1; i > 0 && largest[i - 1].size < sb->st_size; i--)
			largest[i] = largest[i - 1];
		snprintf(largest[i].path, sizeof(largest[i].path), "%s", path);
		largest[i].size = sb->st_size;
	}
	close(fd);
	return 0;
}

static const char *sources(uint32_t s, char *buf, size_t len)
{
	snprintf(buf, len, "%s%s%s%s", s & LUPE_EHFRAME_SRC_EH_FRAME ? "eh_frame" : "",
		 s & LUPE_EHFRAME_SRC_HDR_TABLE ? "+hdr" : "",
		 s & LUPE_EHFRAME_SRC_PT_GNU_EH ? "+pt_gnu_eh_frame" : "",
		 s & LUPE_EHFRAME_SRC_DEBUG_FRAME ? "+debug_frame" : "");
	return buf;
}

/* Times RUNS extractions with opts; fills the median and minimum in ms. */
static int time_runs(int fd, const struct lupe_ehframe_opts *o, double *median, double *min,
		     struct lupe_ehframe_stats *st)
{
	struct lupe_interval_data d;
	uint64_t t[RUNS], t0;
	int i, rc;

	for (i = 0; i < RUNS; i++) {
		t0 = now_ns();
		rc = lupe_ehframe_extract_fd(fd, o, &d, st);
		t[i] = now_ns() - t0;
		if (rc)
			return rc;
		free(d.deltas);
	}
	qsort(t, RUNS, sizeof(t[0]), cmp_u64);
	*median = t[RUNS / 2] / 1e6;
	*min = t[0] / 1e6;
	return 0;
}

/* Returns 0, or the extraction's error (-ENOENT: no call-frame information). */
static int bench(const char *path)
{
	LUPE_OPTS(lupe_ehframe_opts, linear, .no_eh_frame_hdr = true);
	struct lupe_ehframe_stats st, st_lin;
	struct lupe_interval_data d;
	double med, min, lmed, lmin;
	struct rusage ru0, ru1;
	struct stat sb;
	char src[64];
	int fd, rc;

	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0 || fstat(fd, &sb) != 0) {
		printf("%s: %s\n", path, strerror(errno));
		if (fd >= 0)
			close(fd);
		return -errno;
	}
	getrusage(RUSAGE_SELF, &ru0);
	rc = lupe_ehframe_extract_fd(fd, NULL, &d, &st);  /* warm-up: page cache */
	getrusage(RUSAGE_SELF, &ru1);
	if (rc) {
		printf("%s (%.1f MB): %s\n", path, sb.st_size / 1e6,
		       rc == -ENOENT ? "no call-frame information" : strerror(-rc));
		close(fd);
		return rc;
	}
	free(d.deltas);
	rc = time_runs(fd, NULL, &med, &min, &st);
	if (rc == 0)
		rc = time_runs(fd, &linear, &lmed, &lmin, &st_lin);
	close(fd);
	if (rc) {
		printf("%s: %s\n", path, strerror(-rc));
		return rc;
	}
	printf("%s (%.1f MB, sources %s)\n", path, sb.st_size / 1e6,
	       sources(st.sources, src, sizeof(src)));
	printf("  time:   %8.2f ms median, %.2f ms min (hdr table); %.2f / %.2f ms (linear walk)\n",
	       med, min, lmed, lmin);
	printf("  table:  %8" PRIu64 " deltas (%" PRIu64 " rows before merging), %" PRIu64
	       " bytes (%.1f KiB), %.2f deltas per FDE\n",
	       st.deltas, st.deltas_raw, st.deltas * (uint64_t)sizeof(struct lupe_stack_delta),
	       st.deltas * sizeof(struct lupe_stack_delta) / 1024.0,
	       st.fdes ? (double)st.deltas / (double)st.fdes : 0.0);
	printf("  input:  %8" PRIu64 " FDEs, %" PRIu64 " CIEs; bad %" PRIu64 " FDEs, %" PRIu64
	       " CIEs; unsupported %" PRIu64 " expressions, %" PRIu64 " rules; skipped %" PRIu64
	       " empty, %" PRIu64 " outside, %" PRIu64 " overlapping\n",
	       st.fdes, st.cies, st.bad_fdes, st.bad_cies, st.unsupported_exprs,
	       st.unsupported_rules, st.empty_fdes, st.outside_fdes, st.overlapping_fdes);
	printf("  kinds:  %" PRIu64 " signal, %" PRIu64 " stop, %" PRIu64 " PLT FDEs; "
	       "max RSS after the first run %ld MB\n",
	       st.signal_fdes, st.stop_fdes, st.plt_fdes, ru1.ru_maxrss / 1024);
	(void)ru0;
	return 0;
}

int main(int argc, char **argv)
{
	const char *defaults[] = {
		"/lib/x86_64-linux-gnu/libc.so.6",
		"/usr/lib/x86_64-linux-gnu/libstdc++.so.6",
		"/usr/lib/x86_64-linux-gnu/libLLVM-14.so.1",
	};
	size_t i;

	if (argc > 1) {
		for (i = 1; i < (size_t)argc; i++)
			bench(argv[i]);
		return 0;
	}
	for (i = 0; i < sizeof(defaults) / sizeof(defaults[0]); i++)
		if (access(defaults[i], R_OK) == 0)
			bench(defaults[i]);
	nftw("/usr", visit, 64, FTW_PHYS | FTW_MOUNT);
	nftw("/opt", visit, 64, FTW_PHYS | FTW_MOUNT);
	printf("the largest ELF files under /usr and /opt, down to one with CFI:\n");
	for (i = 0; i < NLARGEST && largest[i].path[0]; i++)
		if (bench(largest[i].path) == 0)
			break;
	return 0;
}
