/* Library churn for bench/soak.lua: for argv[1] milliseconds, dlopen()s each library named
 * on the command line in turn, calls its churn_work() (about a millisecond of work), and
 * dlclose()s it, so its mappings come and go many times a second. */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static long long now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000LL + ts.tv_nsec / 1000000;
}

int main(int argc, char **argv)
{
	long long end;
	unsigned long sum = 0;
	int i;

	if (argc < 3) {
		fprintf(stderr, "usage: churn MS LIB.so...\n");
		return 2;
	}
	end = now_ms() + atoll(argv[1]);
	for (i = 2; now_ms() < end; i = i + 1 < argc ? i + 1 : 2) {
		void *h = dlopen(argv[i], RTLD_NOW | RTLD_LOCAL);
		unsigned long (*fn)(void);

		if (!h) {
			fprintf(stderr, "churn: %s\n", dlerror());
			return 1;
		}
		fn = (unsigned long (*)(void))dlsym(h, "churn_work");
		if (fn)
			sum += fn();
		dlclose(h);
	}
	return sum == 42;
}
