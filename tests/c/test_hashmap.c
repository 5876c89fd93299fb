/* The hashmap against a naive oracle: a directly indexed array over a fixed universe of
 * keys. Each key's index is recoverable from its value, so iteration can be checked for
 * visiting every live key exactly once. */
#include "hashmap.h"
#include "lupe_test.h"

#include <errno.h>
#include <stdint.h>

#define UNIVERSE 200000

static uint64_t rng_state;

static uint64_t rnd(void)
{
	/* xorshift64*: a deterministic stream so failures reproduce. */
	rng_state ^= rng_state >> 12;
	rng_state ^= rng_state << 25;
	rng_state ^= rng_state >> 27;
	return rng_state * 0x2545f4914f6cdd1dULL;
}

/* Four key shapes the runtime uses or that stress a weak hash: {pid, 0} (index 0 is
 * {0, 0}), {0, n}, high bits only, and random a. They are distinct because b mod 4
 * differs by shape (b is 0 for the first). */
static struct lupe_key key_of(size_t i)
{
	uint64_t x = i;

	switch (i % 4) {
	case 0:
		return (struct lupe_key){ x / 4, 0 };
	case 1:
		return (struct lupe_key){ 0, x };
	case 2:
		return (struct lupe_key){ x << 40, x };
	default:
		/* A fixed function of i, so the same index always yields the same key. */
		return (struct lupe_key){ (x * 0x9e3779b97f4a7c15ULL) ^ (x << 17) ^ 0xdeadbeefULL, x };
	}
}

/* Values are never dereferenced: they carry the key index and a generation, never 0. */
static void *val_of(size_t i, uint32_t gen)
{
	return (void *)(uintptr_t)(((uint64_t)gen << 32) | (uint64_t)(i + 1));
}

static size_t idx_of(void *v)
{
	return (size_t)(((uintptr_t)v & 0xffffffffu) - 1);
}

struct oracle {
	void **v; /* UNIVERSE entries, NULL = absent */
	size_t count;
};

static int check_all(struct lupe_hashmap *m, struct oracle *o)
{
	size_t i;

	if (lupe_hashmap__count(m) != o->count)
		return -1;
	for (i = 0; i < UNIVERSE; i++)
		if (lupe_hashmap__get(m, key_of(i)) != o->v[i])
			return (int)i + 1;
	return 0;
}

/* Iterates once; returns how many entries were seen, or -1 on a repeat, a foreign key or a
 * value that disagrees with the oracle. */
static long iterate_check(struct lupe_hashmap *m, struct oracle *o, unsigned char *seen)
{
	struct lupe_key k;
	size_t pos = 0, i;
	long n = 0;
	void *v;

	memset(seen, 0, UNIVERSE);
	while (lupe_hashmap__next(m, &pos, &k, &v)) {
		i = idx_of(v);
		if (i >= UNIVERSE || seen[i] || o->v[i] != v)
			return -1;
		if (key_of(i).a != k.a || key_of(i).b != k.b)
			return -1;
		seen[i] = 1;
		n++;
	}
	return n;
}

TEST(hashmap_empty_map)
{
	struct lupe_hashmap *m = lupe_hashmap__new();
	struct lupe_key k = { 0, 0 };
	size_t pos = 0;
	void *v;

	ASSERT(m);
	ASSERT_EQ(lupe_hashmap__count(m), 0);
	ASSERT(lupe_hashmap__get(m, k) == NULL);
	ASSERT(lupe_hashmap__delete(m, k) == NULL);
	ASSERT(!lupe_hashmap__next(m, &pos, &k, &v));
	lupe_hashmap__free(m);
	lupe_hashmap__free(NULL);
}

TEST(hashmap_zero_key_and_replace_returns_old)
{
	struct lupe_hashmap *m = lupe_hashmap__new();
	struct lupe_key zero = { 0, 0 }, one = { 1, 0 }, swapped = { 0, 1 };
	int a, b, c;
	void *old = &c;

	ASSERT(m);
	ASSERT_OK(lupe_hashmap__set(m, zero, &a, &old));
	ASSERT(old == NULL);
	ASSERT(lupe_hashmap__get(m, zero) == &a);
	ASSERT(lupe_hashmap__get(m, one) == NULL);
	ASSERT(lupe_hashmap__get(m, swapped) == NULL);
	ASSERT_OK(lupe_hashmap__set(m, zero, &b, &old));
	ASSERT(old == &a);
	ASSERT_EQ(lupe_hashmap__count(m), 1);
	ASSERT(lupe_hashmap__get(m, zero) == &b);
	/* old may be NULL. */
	ASSERT_OK(lupe_hashmap__set(m, zero, &c, NULL));
	ASSERT(lupe_hashmap__delete(m, zero) == &c);
	ASSERT(lupe_hashmap__delete(m, zero) == NULL);
	ASSERT_EQ(lupe_hashmap__count(m), 0);
	lupe_hashmap__free(m);
}

TEST(hashmap_random_ops_match_oracle)
{
	struct lupe_hashmap *m = lupe_hashmap__new();
	struct oracle o = { calloc(UNIVERSE, sizeof(void *)), 0 };
	unsigned char *seen = malloc(UNIVERSE);
	uint32_t gen = 1;
	void *old, *v;
	size_t i, step;
	int bad;

	if (!m || !o.v || !seen) {
		lupe_hashmap__free(m);
		free(o.v);
		free(seen);
		FAIL("out of memory");
	}
	/* 100k distinct keys first. */
	for (i = 0; i < UNIVERSE; i += 2) {
		v = val_of(i, gen);
		if (lupe_hashmap__set(m, key_of(i), v, &old) || old)
			break;
		o.v[i] = v;
		o.count++;
	}
	ASSERT_EQ(o.count, 100000);
	ASSERT_OK(check_all(m, &o));
	ASSERT_EQ(iterate_check(m, &o, seen), 100000);

	/* Then a random mix over the whole universe; a third of the ops are deletes so the
	 * table churns through tombstones and rebuilds. */
	rng_state = 0x1234567887654321ULL;
	for (step = 0; step < 600000; step++) {
		uint64_t r = rnd();

		i = (size_t)(r >> 8) % UNIVERSE;
		switch (r % 3) {
		case 0:
			v = val_of(i, ++gen);
			if (lupe_hashmap__set(m, key_of(i), v, &old))
				FAIL("set failed at step %zu", step);
			if (old != o.v[i])
				FAIL("step %zu: set returned old %p, oracle %p", step, old, o.v[i]);
			if (!o.v[i])
				o.count++;
			o.v[i] = v;
			break;
		case 1:
			v = lupe_hashmap__delete(m, key_of(i));
			if (v != o.v[i])
				FAIL("step %zu: delete returned %p, oracle %p", step, v, o.v[i]);
			if (o.v[i])
				o.count--;
			o.v[i] = NULL;
			break;
		default:
			v = lupe_hashmap__get(m, key_of(i));
			if (v != o.v[i])
				FAIL("step %zu: get returned %p, oracle %p", step, v, o.v[i]);
		}
		if (lupe_hashmap__count(m) != o.count)
			FAIL("step %zu: count %zu, oracle %zu", step, lupe_hashmap__count(m), o.count);
	}
	bad = check_all(m, &o);
	if (bad)
		FAIL("final state disagrees with the oracle (%d)", bad);
	ASSERT_EQ(iterate_check(m, &o, seen), (long)o.count);
	lupe_hashmap__free(m);
	free(o.v);
	free(seen);
}

TEST(hashmap_delete_during_iteration)
{
	struct lupe_hashmap *m = lupe_hashmap__new();
	struct oracle o = { calloc(UNIVERSE, sizeof(void *)), 0 };
	unsigned char *seen = malloc(UNIVERSE);
	size_t i, pos = 0, visited = 0, deleted = 0;
	struct lupe_key k;
	void *v;

	if (!m || !o.v || !seen) {
		lupe_hashmap__free(m);
		free(o.v);
		free(seen);
		FAIL("out of memory");
	}
	for (i = 0; i < 50000; i++) {
		o.v[i] = val_of(i, 1);
		ASSERT_OK(lupe_hashmap__set(m, key_of(i), o.v[i], NULL));
	}
	o.count = 50000;
	/* Delete every third entry as it is returned (including consecutive slots). */
	memset(seen, 0, UNIVERSE);
	while (lupe_hashmap__next(m, &pos, &k, &v)) {
		i = idx_of(v);
		if (i >= 50000 || seen[i])
			FAIL("entry %zu visited twice or unknown", i);
		seen[i] = 1;
		visited++;
		if (i % 3 == 0) {
			if (lupe_hashmap__delete(m, k) != v)
				FAIL("delete of the current entry %zu failed", i);
			o.v[i] = NULL;
			o.count--;
			deleted++;
		}
	}
	ASSERT_EQ(visited, 50000);
	ASSERT_EQ(deleted, 16667);
	ASSERT_OK(check_all(m, &o));
	ASSERT_EQ(iterate_check(m, &o, seen), (long)o.count);

	/* Deleting everything while iterating leaves an empty, usable map. */
	pos = 0;
	visited = 0;
	while (lupe_hashmap__next(m, &pos, &k, &v)) {
		ASSERT(lupe_hashmap__delete(m, k) == v);
		o.v[idx_of(v)] = NULL;
		visited++;
	}
	ASSERT_EQ(visited, 50000 - 16667);
	ASSERT_EQ(lupe_hashmap__count(m), 0);
	o.count = 0;
	ASSERT_OK(check_all(m, &o));
	ASSERT_OK(lupe_hashmap__set(m, key_of(7), val_of(7, 2), NULL));
	ASSERT(lupe_hashmap__get(m, key_of(7)) == val_of(7, 2));
	lupe_hashmap__free(m);
	free(o.v);
	free(seen);
}

TEST(hashmap_mem_grows_and_tombstones_do_not_leak)
{
	struct lupe_hashmap *m = lupe_hashmap__new();
	size_t empty, small, big, i, churn_max = 0;

	ASSERT(m);
	empty = lupe_hashmap__mem(m);
	ASSERT(empty > 0);
	for (i = 0; i < 1000; i++)
		ASSERT_OK(lupe_hashmap__set(m, key_of(i), val_of(i, 1), NULL));
	small = lupe_hashmap__mem(m);
	for (; i < 100000; i++)
		ASSERT_OK(lupe_hashmap__set(m, key_of(i), val_of(i, 1), NULL));
	big = lupe_hashmap__mem(m);
	ASSERT(small > empty);
	ASSERT(big > small);
	/* At least a key and a pointer per entry, and at most ~3x that at 70% max load. */
	ASSERT(big >= 100000 * (sizeof(struct lupe_key) + sizeof(void *)));
	ASSERT(big <= 100000 * 3 * (sizeof(struct lupe_key) + sizeof(void *) + 1) + 4096);
	lupe_hashmap__free(m);

	/* A pid table's life: keys come and go, at most 100 live. Tombstones must be
	 * reclaimed, so the table stays small however many keys passed through. */
	m = lupe_hashmap__new();
	ASSERT(m);
	for (i = 0; i < 1000000; i++) {
		ASSERT_OK(lupe_hashmap__set(m, (struct lupe_key){ i, 0 }, val_of(i, 1), NULL));
		if (i >= 100)
			ASSERT(lupe_hashmap__delete(m, (struct lupe_key){ i - 100, 0 }) ==
			       val_of(i - 100, 1));
		if (lupe_hashmap__mem(m) > churn_max)
			churn_max = lupe_hashmap__mem(m);
	}
	ASSERT_EQ(lupe_hashmap__count(m), 100);
	ASSERT(churn_max <= 1024 * (sizeof(struct lupe_key) + sizeof(void *) + 1) + 4096);
	lupe_hashmap__free(m);
}
