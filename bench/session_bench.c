/* session benchmark: the user-space cost of the per-sample path (hash, cache lookup, and
 * on a miss: mapping lookup and conversion, then symbolization in the next poll), without
 * BPF. An offline session
 * is fed samples whose user frames point into this program's own functions, as the
 * tracer would feed it. Prints figures next to the target of the issue and asserts
 * nothing (bench/README.md says how to read them). Needs no privileges. */
#include "session.h"

#include <linux/types.h>
#include "sampler.h"

#include <inttypes.h>
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define DEPTH 20                    /* frames per sample */
#define HIT_ITERS 10000000ul        /* ingests per hit measurement */
#define HIT_ROUNDS 3
#define MISS_N 20000                /* distinct stacks, each ingested once */
#define MISS_BATCH 64               /* misses per drain (poll) */
#define BIG_RING 100000             /* distinct stacks for the out-of-cache hit figure */
#define KERNEL_FRAMES 4             /* in the optional kernel + user variant */

/* Each record is cut after its last frame, as in the ring buffer. */
#define REC_SIZE (LUPE_SAMPLE_HDR_SIZE + 8 * DEPTH)

/* Eight never-called functions with 4 KiB bodies: frames point anywhere inside them and
 * still symbolize to a named function (the symbol's size covers the padding). */
#define FN_BYTES 4096
#define FN_SPAN (FN_BYTES - 64)     /* offsets used: 16 .. 16 + FN_SPAN - 1 */
#define STR_(x) #x
#define STR(x) STR_(x)
#define BENCH_FN(name) \
	static __attribute__((noinline, used)) void name(void) \
	{ __asm__ volatile(".skip " STR(FN_BYTES) ", 0x90"); }

BENCH_FN(bench_fn_0)
BENCH_FN(bench_fn_1)
BENCH_FN(bench_fn_2)
BENCH_FN(bench_fn_3)
BENCH_FN(bench_fn_4)
BENCH_FN(bench_fn_5)
BENCH_FN(bench_fn_6)
BENCH_FN(bench_fn_7)

static void (*const fns[])(void) = {
	bench_fn_0, bench_fn_1, bench_fn_2, bench_fn_3,
	bench_fn_4, bench_fn_5, bench_fn_6, bench_fn_7,
};
#define NFUNCS (sizeof(fns) / sizeof(fns[0]))

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

/* The p-th percentile (0..100) of n sorted values, nearest rank. */
static uint64_t pct(const uint64_t *v, size_t n, unsigned p)
{
	size_t i = (n * p + 99) / 100;

	return n ? v[i ? i - 1 : 0] : 0;
}

static size_t rss_bytes(void)
{
	unsigned long size = 0, resident = 0;
	FILE *f = fopen("/proc/self/statm", "r");

	if (f) {
		if (fscanf(f, "%lu %lu", &size, &resident) != 2)
			resident = 0;
		fclose(f);
	}
	return resident * (size_t)sysconf(_SC_PAGESIZE);
}

static size_t heap_bytes(void)
{
	struct mallinfo2 mi = mallinfo2();

	return mi.uordblks + mi.hblkhd;
}

/* kaddrs: KERNEL_FRAMES kernel addresses to put first, or NULL for user frames only.
 * Stack `id` differs from every other id in its first two user frames: the sampled IP and
 * the first return address move inside their functions (FN_SPAN^2 distinct stacks). */
static void fill(struct lupe_sample *smp, uint32_t id, uint64_t ktime, const uint64_t *kaddrs)
{
	unsigned k, nk = kaddrs ? KERNEL_FRAMES : 0;

	memset(smp, 0, REC_SIZE);
	smp->pid = smp->tid = (__u32)getpid();
	smp->ktime = ktime;
	memcpy(smp->comm, "session_bench", 14);
	smp->kernel_len = (__u16)nk;
	smp->user_len = (__u16)(DEPTH - nk);
	for (k = 0; k < nk; k++)
		smp->frames[k] = kaddrs[k];
	for (k = 0; k < DEPTH - nk; k++) {
		uint64_t off = 16 + (k * 397u) % FN_SPAN;

		if (k == 0)
			off = 16 + id % FN_SPAN;
		else if (k == 1)
			off = 16 + (id / FN_SPAN) % FN_SPAN;
		smp->frames[nk + k] = (uint64_t)(uintptr_t)fns[k % NFUNCS] + off;
	}
}

static struct lupe_sample *rec(unsigned char *buf, size_t i)
{
	return (struct lupe_sample *)(void *)(buf + i * REC_SIZE);
}

/* n records with distinct stacks (ids first .. first + n - 1), in one block. */
static unsigned char *records(size_t n, uint32_t first, const uint64_t *kaddrs)
{
	unsigned char *buf = aligned_alloc(8, n * REC_SIZE);
	uint64_t t = now_ns();
	size_t i;

	if (!buf) {
		perror("session_bench: records");
		return NULL;
	}
	for (i = 0; i < n; i++)
		fill(rec(buf, i), first + (uint32_t)i, t, kaddrs);
	return buf;
}

static struct lupe_session *offline(void)
{
	LUPE_OPTS(lupe_session_opts, o, .offline = true);
	struct lupe_session *s = lupe_session__new(&o);

	if (!s)
		perror("session_bench: lupe_session__new");
	return s;
}

static uint64_t failures;

static void ingest(struct lupe_session *s, const struct lupe_sample *smp)
{
	if (lupe_session__ingest_sample(s, smp))
		failures++;
}

/* ---- (a) cache hits ---------------------------------------------------------------------- */

struct hit_result {
	double ns_median, ns_min;
	uint64_t hits, misses, collisions;
};

/* nstacks distinct stacks, each ingested once (misses, not timed), then HIT_ITERS ingests
 * round-robin, HIT_ROUNDS times: ns per sample. */
static int bench_hits(size_t nstacks, struct hit_result *r)
{
	struct lupe_session *s = offline();
	unsigned char *buf = records(nstacks, 0, NULL);
	struct lupe_session_stats st;
	double ns[HIT_ROUNDS], tmp;
	unsigned round, a, b;
	size_t i, j;
	int err = -1;

	if (!s || !buf)
		goto out;
	for (i = 0; i < nstacks; i++)
		ingest(s, rec(buf, i));
	for (round = 0; round < HIT_ROUNDS; round++) {
		uint64_t t0 = now_ns();

		for (i = 0, j = 0; i < HIT_ITERS; i++) {
			ingest(s, rec(buf, j));
			if (++j == nstacks)
				j = 0;
		}
		ns[round] = (double)(now_ns() - t0) / HIT_ITERS;
	}
	for (a = 0; a < HIT_ROUNDS; a++)
		for (b = a + 1; b < HIT_ROUNDS; b++)
			if (ns[b] < ns[a]) {
				tmp = ns[a];
				ns[a] = ns[b];
				ns[b] = tmp;
			}
	lupe_session__stats(s, &st);
	*r = (struct hit_result){ ns[HIT_ROUNDS / 2], ns[0], st.cache_hits, st.cache_misses,
				  st.hash_collisions };
	err = 0;
out:
	free(buf);
	lupe_session__free(s);
	return err;
}

/* ---- (b) cache misses and (c) memory ---------------------------------------------------- */

struct miss_result {
	uint64_t first_ns;          /* the very first sample, ingested and symbolized */
	uint64_t ingest_ns, sym_ns; /* the other MISS_N - 1: ingests, and the polls after them */
	uint64_t p50, p99, max;     /* one ingest, ns */
	size_t rss_delta, heap_delta;
	struct lupe_session_stats st;
};

/* MISS_N distinct stacks, each ingested once, in batches of MISS_BATCH as a drain brings
 * them. An ingest resolves and converts (timed one by one); the poll after each batch
 * symbolizes the new traces (timed per batch). The first sample also synchronizes this
 * process and loads its symbols (and, with kernel frames, waits for kallsyms). */
static int bench_misses(const uint64_t *kaddrs, struct miss_result *r)
{
	struct lupe_session *s = offline();
	unsigned char *buf = records(MISS_N, 0, kaddrs);
	uint64_t *lat = malloc(MISS_N * sizeof(*lat)), t0, t1;
	size_t rss0, heap0, i;
	int err = -1;

	if (!s || !buf || !lat)
		goto out;
	memset(r, 0, sizeof(*r));
	memset(lat, 0, MISS_N * sizeof(*lat));  /* touched before the RSS baseline */
	t0 = now_ns();
	ingest(s, rec(buf, 0));
	/* Blocks until every pending trace has its names, kernel ones included. */
	if (!lupe_session__trace(s, 0))
		failures++;
	r->first_ns = now_ns() - t0;
	rss0 = rss_bytes();
	heap0 = heap_bytes();
	for (i = 1; i < MISS_N; i++) {
		t0 = now_ns();
		ingest(s, rec(buf, i));
		t1 = now_ns();
		lat[i] = t1 - t0;
		r->ingest_ns += t1 - t0;
		if (i % MISS_BATCH == 0 || i == MISS_N - 1) {
			if (lupe_session__poll(s, 0) < 0)
				failures++;
			r->sym_ns += now_ns() - t1;
		}
	}
	r->rss_delta = rss_bytes() - rss0;
	r->heap_delta = heap_bytes() - heap0;
	qsort(lat + 1, MISS_N - 1, sizeof(*lat), cmp_u64);
	r->p50 = pct(lat + 1, MISS_N - 1, 50);
	r->p99 = pct(lat + 1, MISS_N - 1, 99);
	r->max = lat[MISS_N - 1];
	lupe_session__stats(s, &r->st);
	err = 0;
out:
	free(lat);
	free(buf);
	lupe_session__free(s);
	return err;
}

/* KERNEL_FRAMES addresses inside a syscall path, from /proc/kallsyms; 0 if hidden. */
static int kernel_addrs(uint64_t *out)
{
	static const char *const names[KERNEL_FRAMES] = {
		"vfs_read", "ksys_read", "do_syscall_64", "entry_SYSCALL_64_after_hwframe",
	};
	char line[512], name[256], type;
	unsigned long long addr;
	FILE *f = fopen("/proc/kallsyms", "r");
	unsigned k, found = 0;

	memset(out, 0, KERNEL_FRAMES * sizeof(*out));
	while (f && found < KERNEL_FRAMES && fgets(line, sizeof(line), f)) {
		if (sscanf(line, "%llx %c %255s", &addr, &type, name) != 3 || !addr)
			continue;
		for (k = 0; k < KERNEL_FRAMES; k++)
			if (!out[k] && strcmp(name, names[k]) == 0) {
				out[k] = addr + 0x10 + k;
				found++;
			}
	}
	if (f)
		fclose(f);
	return found == KERNEL_FRAMES ? 0 : -1;
}

/* ---- report ------------------------------------------------------------------------------ */

static void print_hits(const char *what, const struct hit_result *h)
{
	printf("  %-34s %8.1f ns/sample (min of %d: %.1f)  hits %" PRIu64 ", misses %" PRIu64
	       ", collisions %" PRIu64 "\n", what, h->ns_median, HIT_ROUNDS, h->ns_min, h->hits,
	       h->misses, h->collisions);
}

static double miss_us(const struct miss_result *m)
{
	return (m->ingest_ns + m->sym_ns) / 1e3 / (MISS_N - 1);
}

static void print_misses(const char *what, const struct miss_result *m)
{
	printf("  %s\n", what);
	printf("    first sample (synchronizes this process, loads its symbols): %.2f ms\n",
	       m->first_ns / 1e6);
	printf("    the next %d: %.2f us/sample in all = ingest (resolve + convert) %.2f"
	       " + symbolize %.2f\n", MISS_N - 1, miss_us(m),
	       m->ingest_ns / 1e3 / (MISS_N - 1), m->sym_ns / 1e3 / (MISS_N - 1));
	printf("    one ingest: p50 %.2f, p99 %.2f, max %.2f us\n", m->p50 / 1e3, m->p99 / 1e3,
	       m->max / 1e3);
	printf("    misses %" PRIu64 ", traces %" PRIu64 ", entries %" PRIu64 ", unknown frames %"
	       PRIu64 ", unsymbolized frames %" PRIu64 ", resyncs %" PRIu64 ", symbolize errors %"
	       PRIu64 "\n", m->st.cache_misses, m->st.traces, m->st.entries, m->st.unknown_frames,
	       m->st.symbol_misses, m->st.resyncs, m->st.symbolize_errors);
	printf("    RSS +%.1f KiB, heap +%.1f KiB for %d new stacks: %.1f KiB RSS, %.1f KiB heap per 1000\n",
	       m->rss_delta / 1024.0, m->heap_delta / 1024.0, MISS_N - 1,
	       m->rss_delta / 1024.0 * 1000 / (MISS_N - 1),
	       m->heap_delta / 1024.0 * 1000 / (MISS_N - 1));
}

/* session_bench [hits|misses]: one part only, e.g. to profile it with perf. */
int main(int argc, char **argv)
{
	struct hit_result h1 = { 0 }, h1k = { 0 }, hbig = { 0 };
	struct miss_result mu = { 0 }, mk = { 0 };
	uint64_t kaddrs[KERNEL_FRAMES];
	bool have_kernel = kernel_addrs(kaddrs) == 0;
	bool hits = argc < 2 || strcmp(argv[1], "hits") == 0;
	bool misses = argc < 2 || strcmp(argv[1], "misses") == 0;
	int err = 0;

	if (!hits && !misses) {
		fprintf(stderr, "usage: session_bench [hits|misses]\n");
		return 2;
	}
	printf("session_bench: %d frames per sample, pid %d\n\n", DEPTH, (int)getpid());
	if (!hits)
		goto misses;

	printf("(a) cache hits: %lu ingests per round, median of %d rounds\n", HIT_ITERS,
	       HIT_ROUNDS);
	err |= bench_hits(1, &h1);
	if (!err)
		print_hits("one stack", &h1);
	err |= bench_hits(1000, &h1k);
	if (!err)
		print_hits("1000 stacks round-robin", &h1k);
	err |= bench_hits(BIG_RING, &hbig);
	if (!err)
		print_hits(STR(BIG_RING) " stacks round-robin", &hbig);
	if (!misses)
		goto report;

misses:
	printf("\n(b) cache misses: %d distinct stacks, each ingested once\n", MISS_N);
	err |= bench_misses(NULL, &mu);
	if (!err)
		print_misses(STR(DEPTH) " user frames", &mu);
	if (have_kernel) {
		err |= bench_misses(kaddrs, &mk);
		if (!err)
			print_misses(STR(KERNEL_FRAMES) " kernel + 16 user frames (the first waits for kallsyms)",
				     &mk);
	} else {
		printf("  kernel + user frames: skipped (kernel addresses hidden in /proc/kallsyms)\n");
	}
report:
	if (err) {
		fprintf(stderr, "session_bench: a measurement could not run\n");
		return 1;
	}
	if (failures)
		printf("\n%" PRIu64 " ingests returned an error\n", failures);

	printf("\n| figure | measured | target |\n|---|---|---|\n");
	if (hits) {
		printf("| cache hit, one %d-frame stack | %.1f ns/sample | <= 200 ns |\n", DEPTH,
		       h1.ns_median);
		printf("| cache hit, 1000 stacks round-robin | %.1f ns/sample | <= 200 ns |\n",
		       h1k.ns_median);
		printf("| cache hit, %d stacks round-robin | %.1f ns/sample | <= 200 ns |\n", BIG_RING,
		       hbig.ns_median);
	}
	if (!misses)
		return 0;
	printf("| cache miss (new stack: resolve, convert, symbolize), %d user frames | %.2f us/sample "
	       "(ingest p99 %.2f) | - |\n", DEPTH, miss_us(&mu), mu.p99 / 1e3);
	if (have_kernel)
		printf("| cache miss, %d kernel + %d user frames | %.2f us/sample (ingest p99 %.2f) | - |\n",
		       KERNEL_FRAMES, DEPTH - KERNEL_FRAMES, miss_us(&mk), mk.p99 / 1e3);
	printf("| first sample of this process (synchronize, load symbols) | %.2f ms | - |\n",
	       mu.first_ns / 1e6);
	if (have_kernel)
		printf("| first sample with kernel frames (also waits for kallsyms) | %.2f ms | - |\n",
		       mk.first_ns / 1e6);
	printf("| memory per 1000 distinct stacks | %.0f KiB RSS, %.0f KiB heap | - |\n",
	       mu.rss_delta / 1024.0 * 1000 / (MISS_N - 1),
	       mu.heap_delta / 1024.0 * 1000 / (MISS_N - 1));
	return 0;
}
