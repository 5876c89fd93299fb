/* Open addressing with linear probing and tombstones.
 *
 * Slots live in one allocation: cap entries {key, value} followed by cap control bytes
 * (EMPTY, FULL, TOMB). Keys may be any bit pattern, {0,0} included, so the state cannot
 * be encoded in the key. Deletion leaves a tombstone instead of shifting entries back:
 * nothing moves until the next rebuild, which only an insert triggers, so deleting the
 * entry __next just returned neither skips nor repeats any other entry. */
#include "hashmap.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

enum { SLOT_EMPTY = 0, SLOT_FULL = 1, SLOT_TOMB = 2 };

#define MIN_CAP 8
/* Rebuild when live entries plus tombstones would pass 7/10 of the slots. */
#define LOAD_NUM 7
#define LOAD_DEN 10

struct slot {
	struct lupe_key k;
	void *v;
};

struct lupe_hashmap {
	struct slot *slots; /* cap slots, then cap control bytes at ctrl */
	uint8_t *ctrl;
	size_t cap; /* 0 or a power of two */
	size_t count;
	size_t tombs;
};

/* The murmur3 64-bit finalizer: every input bit flips each output bit with p ~ 1/2,
 * which linear probing on the low bits needs (pids and inodes are dense and small). */
static inline uint64_t fmix64(uint64_t x)
{
	x ^= x >> 33;
	x *= 0xff51afd7ed558ccdULL;
	x ^= x >> 33;
	x *= 0xc4ceb9fe1a85ec53ULL;
	x ^= x >> 33;
	return x;
}

static inline uint64_t hash_key(struct lupe_key k)
{
	/* Mix b first so {a, b} and {b, a} land apart; the odd constant keeps b = 0 from
	 * collapsing to fmix64(0) = 0. */
	return fmix64(k.a ^ fmix64(k.b + 0x9e3779b97f4a7c15ULL));
}

static inline bool key_eq(struct lupe_key x, struct lupe_key y)
{
	return x.a == y.a && x.b == y.b;
}

struct lupe_hashmap *lupe_hashmap__new(void)
{
	struct lupe_hashmap *m = calloc(1, sizeof(*m));

	if (!m)
		errno = ENOMEM;
	return m;
}

void lupe_hashmap__free(struct lupe_hashmap *m)
{
	if (!m)
		return;
	free(m->slots);
	free(m);
}

void lupe_hashmap__free_values(struct lupe_hashmap *m, void (*free_value)(void *))
{
	size_t pos = 0;
	void *v;

	while (m && lupe_hashmap__next(m, &pos, NULL, &v))
		free_value(v);
	lupe_hashmap__free(m);
}

/* Index of k's slot, or cap if absent. */
static size_t find(const struct lupe_hashmap *m, struct lupe_key k)
{
	size_t mask, i;

	if (!m->count)
		return m->cap;
	mask = m->cap - 1;
	/* Terminates: live entries plus tombstones never pass 7/10 of cap, so EMPTY slots exist. */
	for (i = hash_key(k) & mask;; i = (i + 1) & mask) {
		if (m->ctrl[i] == SLOT_EMPTY)
			return m->cap;
		if (m->ctrl[i] == SLOT_FULL && key_eq(m->slots[i].k, k))
			return i;
	}
}

void *lupe_hashmap__get(const struct lupe_hashmap *m, struct lupe_key k)
{
	size_t i = find(m, k);

	return i < m->cap ? m->slots[i].v : NULL;
}

/* Places a key known to be absent into a table without tombstones. */
static void place(struct slot *slots, uint8_t *ctrl, size_t cap, struct lupe_key k, void *v)
{
	size_t mask = cap - 1, i;

	for (i = hash_key(k) & mask; ctrl[i] != SLOT_EMPTY; i = (i + 1) & mask)
		;
	ctrl[i] = SLOT_FULL;
	slots[i].k = k;
	slots[i].v = v;
}

/* Rebuilds into the smallest power of two (>= MIN_CAP) that holds `want` entries at half
 * load: a full table doubles, a table choked by tombstones is cleaned (and may shrink).
 * Either way the next rebuild is at least 2/10 of the slots of inserts away, which keeps
 * the cost amortized O(1). Returns 0 or -ENOMEM with the table untouched. */
static int rebuild(struct lupe_hashmap *m, size_t want)
{
	size_t cap = MIN_CAP, i;
	struct slot *slots;
	uint8_t *ctrl;

	while (cap / 2 < want) {
		if (cap > SIZE_MAX / 2 / (sizeof(struct slot) + 1))
			return -ENOMEM;
		cap *= 2;
	}
	slots = malloc(cap * (sizeof(struct slot) + 1));
	if (!slots)
		return -ENOMEM;
	ctrl = (uint8_t *)(slots + cap);
	memset(ctrl, SLOT_EMPTY, cap);
	for (i = 0; i < m->cap; i++)
		if (m->ctrl[i] == SLOT_FULL)
			place(slots, ctrl, cap, m->slots[i].k, m->slots[i].v);
	free(m->slots);
	m->slots = slots;
	m->ctrl = ctrl;
	m->cap = cap;
	m->tombs = 0;
	return 0;
}

int lupe_hashmap__set(struct lupe_hashmap *m, struct lupe_key k, void *v, void **old)
{
	size_t mask, i, tomb;
	int err;

	i = find(m, k);
	if (i < m->cap) {
		if (old)
			*old = m->slots[i].v;
		m->slots[i].v = v;
		return 0;
	}
	/* A new key may fill an EMPTY slot, so the threshold counts tombstones too. */
	if ((m->count + m->tombs + 1) * LOAD_DEN > m->cap * LOAD_NUM) {
		err = rebuild(m, m->count + 1);
		if (err)
			return err;
	}
	mask = m->cap - 1;
	tomb = m->cap;
	for (i = hash_key(k) & mask; m->ctrl[i] != SLOT_EMPTY; i = (i + 1) & mask)
		if (m->ctrl[i] == SLOT_TOMB && tomb == m->cap)
			tomb = i;
	if (tomb < m->cap) {
		i = tomb;
		m->tombs--;
	}
	m->ctrl[i] = SLOT_FULL;
	m->slots[i].k = k;
	m->slots[i].v = v;
	m->count++;
	if (old)
		*old = NULL;
	return 0;
}

void *lupe_hashmap__delete(struct lupe_hashmap *m, struct lupe_key k)
{
	size_t i = find(m, k);
	void *v;

	if (i >= m->cap)
		return NULL;
	v = m->slots[i].v;
	m->ctrl[i] = SLOT_TOMB;
	m->slots[i].v = NULL;
	m->count--;
	m->tombs++;
	return v;
}

size_t lupe_hashmap__count(const struct lupe_hashmap *m)
{
	return m->count;
}

size_t lupe_hashmap__mem(const struct lupe_hashmap *m)
{
	return sizeof(*m) + m->cap * (sizeof(struct slot) + 1);
}

bool lupe_hashmap__next(const struct lupe_hashmap *m, size_t *pos, struct lupe_key *k, void **v)
{
	size_t i;

	for (i = *pos; i < m->cap; i++) {
		if (m->ctrl[i] != SLOT_FULL)
			continue;
		if (k)
			*k = m->slots[i].k;
		if (v)
			*v = m->slots[i].v;
		*pos = i + 1;
		return true;
	}
	*pos = m->cap;
	return false;
}
