/* bench/compare workload: a fixed amount of work (argv[1] rounds) through a chain of
 * calls, main -> run -> stage1 -> stage2 -> stage3 -> leaf, with a recursion of depth 8 in
 * the middle. Built with -O2 -fomit-frame-pointer: frame pointers cannot unwind it.
 * noipa keeps GCC from inlining or hoisting the calls. */
#include <stdlib.h>

#define KEEP __attribute__((noipa))

KEEP unsigned long leaf(unsigned long x)
{
	for (int i = 0; i < 2000; i++)
		x = x * 6364136223846793005UL + 1442695040888963407UL;
	return x;
}

KEEP unsigned long stage3(unsigned long x) { return leaf(x) ^ 3; }

KEEP unsigned long stage2(unsigned long x, int depth)
{
	if (depth > 0)
		return stage2(x + 1, depth - 1) + 1;
	return stage3(x);
}

KEEP unsigned long stage1(unsigned long x) { return stage2(x, 8) * 5; }

KEEP unsigned long run(long rounds)
{
	unsigned long x = 1;

	for (long i = 0; i < rounds; i++)
		x = stage1(x);
	return x;
}

int main(int argc, char **argv)
{
	return run(argc > 1 ? atol(argv[1]) : 100000) == 42;
}
