/* The session's per-sample path without BPF: samples built from this process's own
 * functions go through ingest, and come out counted, converted and symbolized. */
#include "lupe_test.h"
#include "session.h"

#include <linux/types.h>
#include "sampler.h"

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

__attribute__((noinline, used)) int test_leaf_fn(int x)
{
	int i;

	for (i = 0; i < 16; i++)
		x = x * 31 + i;
	return x;
}

__attribute__((noinline, used)) int test_caller_fn(int x)
{
	int i, r = 0;

	for (i = 0; i < 8; i++)
		r += test_leaf_fn(x + i);
	return r;
}

static struct lupe_session *offline(void)
{
	LUPE_OPTS(lupe_session_opts, o, .offline = true);
	return lupe_session__new(&o);
}

static void make_sample(struct lupe_sample *smp, pid_t pid)
{
	memset(smp, 0, sizeof(*smp));
	smp->pid = smp->tid = (__u32)pid;
	smp->ktime = 1000;
	memcpy(smp->comm, "tester", 7);
	smp->user_len = 2;
	smp->frames[0] = (__u64)(uintptr_t)&test_leaf_fn + 4;     /* the sampled IP */
	smp->frames[1] = (__u64)(uintptr_t)&test_caller_fn + 12;  /* a return address */
}

TEST(repeated_sample_is_one_entry_and_one_lookup_each)
{
	struct lupe_session *s = offline();
	const struct lupe_profile_entry *e;
	const struct lupe_sym_trace *t;
	struct lupe_session_stats st;
	struct lupe_sample smp;
	size_t n;
	int i;

	ASSERT(s);
	make_sample(&smp, getpid());
	for (i = 0; i < 100; i++)
		ASSERT_OK(lupe_session__ingest_sample(s, &smp));
	e = lupe_session__entries(s, &n);
	ASSERT_EQ(n, 1);
	ASSERT_EQ(e[0].count, 100);
	ASSERT_EQ(e[0].pid, getpid());
	ASSERT_STREQ(e[0].comm, "tester");
	lupe_session__stats(s, &st);
	ASSERT_EQ(st.cache_hits, 99);
	ASSERT_EQ(st.cache_misses, 1);
	ASSERT_EQ(st.samples, 100);
	t = lupe_session__trace(s, e[0].trace);
	ASSERT(t);
	ASSERT_EQ(t->nframes, 2);
	ASSERT_EQ(t->frames[0].kind, LUPE_SYM_NATIVE);
	ASSERT_STREQ(t->frames[0].name, "test_leaf_fn");
	ASSERT_EQ(t->frames[0].offset, 4);
	ASSERT_STREQ(t->frames[1].name, "test_caller_fn");
	/* A return address is looked up at address - 1: inside the call. */
	ASSERT_EQ(t->frames[1].offset, 11);
	ASSERT_STREQ(t->frames[0].module, "c_test_session");
	lupe_session__free(s);
}

TEST(same_stack_in_two_processes_shares_the_trace)
{
	struct lupe_session *s = offline();
	const struct lupe_profile_entry *e;
	struct lupe_sample a, b;
	size_t n;
	pid_t child = fork();

	ASSERT(s);
	if (child == 0) {
		pause();
		_exit(0);
	}
	make_sample(&a, getpid());
	make_sample(&b, child);
	ASSERT_OK(lupe_session__ingest_sample(s, &a));
	ASSERT_OK(lupe_session__ingest_sample(s, &b));
	kill(child, SIGKILL);
	waitpid(child, NULL, 0);
	e = lupe_session__entries(s, &n);
	ASSERT_EQ(n, 2);
	ASSERT_EQ(lupe_session__ntraces(s), 1);
	ASSERT_EQ(e[0].trace, e[1].trace);
	lupe_session__free(s);
}

TEST(unknown_addresses_and_truncation_are_visible)
{
	struct lupe_session *s = offline();
	const struct lupe_profile_entry *e;
	const struct lupe_sym_trace *t;
	struct lupe_session_stats st;
	struct lupe_sample smp;
	size_t n;

	ASSERT(s);
	make_sample(&smp, getpid());
	smp.frames[1] = 0x10; /* nothing is mapped there */
	smp.flags = LUPE_SAMPLE_USER_TRUNC;
	ASSERT_OK(lupe_session__ingest_sample(s, &smp));
	e = lupe_session__entries(s, &n);
	t = lupe_session__trace(s, e[0].trace);
	ASSERT_EQ(t->nframes, 3);
	ASSERT_EQ(t->frames[1].kind, LUPE_SYM_UNKNOWN);
	ASSERT_EQ(t->frames[2].kind, LUPE_SYM_ERROR);
	ASSERT_STREQ(t->frames[2].name, "[truncated: user stack too deep]");
	lupe_session__stats(s, &st);
	ASSERT_EQ(st.unknown_frames, 1);
	ASSERT_EQ(st.resyncs, 1);
	lupe_session__free(s);
}

TEST(exec_starts_a_new_generation_and_interval_counts_reset)
{
	struct lupe_session *s = offline();
	struct lupe_proc_event ev = { .type = LUPE_EV_EXEC, .pid = (__u32)getpid(), .ktime = 2000 };
	const struct lupe_profile_entry *e;
	struct lupe_sample smp;
	size_t n;

	ASSERT(s);
	make_sample(&smp, getpid());
	ASSERT_OK(lupe_session__ingest_sample(s, &smp));
	lupe_session__interval_reset(s);
	ASSERT_OK(lupe_session__ingest_event(s, &ev));
	smp.ktime = 3000;
	ASSERT_OK(lupe_session__ingest_sample(s, &smp));
	e = lupe_session__entries(s, &n);
	ASSERT_EQ(n, 2);
	ASSERT_EQ(e[0].interval, 0);
	ASSERT_EQ(e[0].count, 1);
	ASSERT_EQ(e[1].interval, 1);
	lupe_session__free(s);
}

TEST(kernel_frames_are_symbolized_from_kallsyms)
{
	struct lupe_session *s;
	const struct lupe_profile_entry *e;
	const struct lupe_sym_trace *t;
	struct lupe_sample smp;
	unsigned long long addr = 0;
	char line[512], name[256], type;
	FILE *f = fopen("/proc/kallsyms", "r");
	size_t n;

	while (f && fgets(line, sizeof(line), f)) {
		if (sscanf(line, "%llx %c %255s", &addr, &type, name) == 3 && strcmp(name, "vfs_read") == 0)
			break;
		addr = 0;
	}
	if (f)
		fclose(f);
	if (!addr)
		SKIP("vfs_read's address is hidden here (kptr_restrict or not root)");
	s = offline();
	ASSERT(s);
	make_sample(&smp, getpid());
	smp.kernel_len = 1;
	smp.user_len = 1;
	smp.frames[0] = addr + 5;
	smp.frames[1] = (__u64)(uintptr_t)&test_leaf_fn;
	ASSERT_OK(lupe_session__ingest_sample(s, &smp));
	e = lupe_session__entries(s, &n);
	t = lupe_session__trace(s, e[0].trace);
	ASSERT_EQ(t->frames[0].kind, LUPE_SYM_KERNEL);
	ASSERT_STREQ(t->frames[0].name, "vfs_read");
	ASSERT_EQ(t->frames[0].offset, 5);
	ASSERT_STREQ(t->frames[1].name, "test_leaf_fn");
	lupe_session__free(s);
}
