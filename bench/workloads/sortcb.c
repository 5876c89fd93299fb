/* bench/compare workload: the work happens in a comparison callback called by libc's
 * qsort, so a complete stack runs leaf -> cmp -> libc (msort) -> sort_once -> main.
 * argv[1] sorts of 20000 elements. Built with -O2 -fomit-frame-pointer. */
#include <stdlib.h>

#define KEEP __attribute__((noipa))

static unsigned long weigh_state;

KEEP unsigned long weigh(unsigned long v)
{
	for (int i = 0; i < 40; i++)
		v = v * 2862933555777941757UL + 3037000493UL;
	return v;
}

KEEP int cmp(const void *a, const void *b)
{
	unsigned long x = weigh(*(const unsigned long *)a), y = weigh(*(const unsigned long *)b);

	weigh_state += x;
	return x < y ? -1 : x > y;
}

KEEP void sort_once(unsigned long *v, size_t n, unsigned long seed)
{
	for (size_t i = 0; i < n; i++)
		v[i] = (seed + i) * 0x9e3779b97f4a7c15UL;
	qsort(v, n, sizeof(*v), cmp);
}

int main(int argc, char **argv)
{
	long rounds = argc > 1 ? atol(argv[1]) : 10;
	size_t n = 20000;
	unsigned long *v = malloc(n * sizeof(*v));

	if (!v)
		return 1;
	for (long r = 0; r < rounds; r++)
		sort_once(v, n, (unsigned long)r);
	free(v);
	return weigh_state == 42;
}
