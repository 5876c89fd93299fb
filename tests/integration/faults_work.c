/* Workload for faults_test.lua: spins for argv[1] milliseconds in SPIN (a name chosen at
 * build time: -DSPIN=alpha_spin), called from main, then exits. The test builds it under
 * several names from this one source, so the binaries have the same layout and the same
 * addresses: a profiler that applied one's mappings to another's samples would name the
 * wrong function, which the test can see. */
#include <stdlib.h>
#include <time.h>

#ifndef SPIN
#define SPIN spin
#endif

static long long now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000LL + ts.tv_nsec / 1000000;
}

__attribute__((noinline, used)) unsigned long SPIN(long long until)
{
	volatile unsigned long x = 1;

	while (now_ms() < until)
		for (int i = 0; i < 10000; i++)
			x = x * 6364136223846793005UL + 1442695040888963407UL;
	return x;
}

int main(int argc, char **argv)
{
	long long ms = argc > 1 ? atoll(argv[1]) : 100;

	return SPIN(now_ms() + ms) == 42;
}
