/* Faults that lupe record cannot provoke from its command line, through the session API:
 * a ring buffer far too small for the sampling rate. Losses must be counted (stats.lost,
 * which every output format carries), add up with what was seen, and never stop the
 * session. Needs root and BPF; SKIPs without. See faults_test.lua for the rest. */
#include "lupe_test.h"
#include "session.h"
#include "log.h"

#include <errno.h>
#include <signal.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

/* A child that spins for ms milliseconds, then exits. */
static pid_t spin_child(int ms)
{
	pid_t pid = fork();

	if (pid == 0) {
		volatile unsigned long x = 0;
		double end = now_s() + ms / 1000.0;

		while (now_s() < end)
			x++;
		_exit(0);
	}
	return pid;
}

TEST(tiny_ring_overflows_counted_and_the_session_goes_on)
{
	LUPE_OPTS(lupe_session_opts, o, .frequency = 999, .ringbuf_bytes = 0);
	struct lupe_session_stats st, st2;
	struct lupe_session *s;
	pid_t busy[2];
	double end;
	int err = 0, i;

	if (geteuid() != 0)
		SKIP("needs root to load BPF programs");
	o.ringbuf_bytes = (size_t)sysconf(_SC_PAGESIZE);
	s = lupe_session__new(&o);
	if (!s)
		FAIL("session with a %zu-byte ring: %s", o.ringbuf_bytes, lupe_errstr(-errno));
	for (i = 0; i < 2; i++)
		busy[i] = spin_child(2500);
	err = lupe_session__target_system(s);
	/* Nobody drains for a second: at 999 Hz on every CPU a page holds a few samples. */
	if (!err)
		usleep(1000 * 1000);
	for (end = now_s() + 0.5; !err && now_s() < end;) {
		int n = lupe_session__poll(s, 50);

		if (n < 0)
			err = n;
	}
	lupe_session__stats(s, &st);
	/* After the overflow, sampling and draining go on. */
	for (end = now_s() + 0.5; !err && now_s() < end;) {
		int n = lupe_session__poll(s, 10);

		if (n < 0)
			err = n;
	}
	lupe_session__stats(s, &st2);
	for (i = 0; i < 2; i++) {
		kill(busy[i], SIGKILL);
		waitpid(busy[i], NULL, 0);
	}
	lupe_session__free(s);
	if (err)
		FAIL("poll: %s", lupe_errstr(err));
	printf("    %zu-byte ring at 999 Hz: seen %llu = idle %llu + filtered %llu + emitted %llu"
	       " + lost %llu; %llu aggregated; then %llu more aggregated\n", o.ringbuf_bytes,
	       (unsigned long long)st.samples_seen, (unsigned long long)st.idle,
	       (unsigned long long)st.filtered, (unsigned long long)st.emitted,
	       (unsigned long long)st.lost, (unsigned long long)st.samples,
	       (unsigned long long)(st2.samples - st.samples));
	ASSERT(st.lost > 0);
	ASSERT(st.samples > 0);
	ASSERT(st.samples <= st.emitted);
	ASSERT_EQ(st.samples_seen, st.idle + st.filtered + st.emitted + st.lost);
	ASSERT(st2.samples > st.samples);
	ASSERT(st2.lost >= st.lost);
}
