/* A library for churn.c; built several times with -DLIBNO=N so that each copy is its own
 * file (its own file ID, its own stack deltas). */
#ifndef LIBNO
#define LIBNO 0
#endif

unsigned long churn_work(void)
{
	volatile unsigned long x = LIBNO;
	int i;

	for (i = 0; i < 300000; i++)
		x = x * 2862933555777941757UL + 3037000493UL;
	return x;
}
