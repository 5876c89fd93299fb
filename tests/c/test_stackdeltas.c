/* Stack deltas in BPF maps, without BPF: the prefix cover of a mapping and the page/slot
 * encoding against hand-computed vectors and against their definitions (random
 * inputs); the handler's maps, budget, eviction and reload through a fake map backend
 * that keeps every map in memory. */
#include "hashmap.h"
#include "stackdeltas.h"
#include "unwind.h"
#include "lupe_test.h"

#include <endian.h>
#include <errno.h>
#include <stdint.h>
#include <time.h>

/* ---- prefixes ------------------------------------------------------------------------ */

static int prefixes(uint64_t start, uint64_t end, struct lupe_unwind_prefix *out)
{
	return lupe_unwind_prefixes(start, end, out, 128);
}

TEST(prefixes_hand_vectors)
{
	struct lupe_unwind_prefix p[128];

	/* 0x1000 is aligned to 4 KiB only; 0x2000 to 8 KiB, but 8 KiB passes 0x3000. */
	ASSERT_EQ(prefixes(0x1000, 0x3000, p), 2);
	ASSERT_EQ(p[0].addr, 0x1000);
	ASSERT_EQ(p[0].bits, 52);
	ASSERT_EQ(p[1].addr, 0x2000);
	ASSERT_EQ(p[1].bits, 52);
	/* 4 KiB, 8 KiB, 16 KiB. */
	ASSERT_EQ(prefixes(0x1000, 0x8000, p), 3);
	ASSERT_EQ(p[0].bits, 52);
	ASSERT_EQ(p[1].addr, 0x2000);
	ASSERT_EQ(p[1].bits, 51);
	ASSERT_EQ(p[2].addr, 0x4000);
	ASSERT_EQ(p[2].bits, 50);
	/* One aligned 2 MiB block: 64 - 21 bits. */
	ASSERT_EQ(prefixes(0x7f0000000000ull, 0x7f0000200000ull, p), 1);
	ASSERT_EQ(p[0].addr, 0x7f0000000000ull);
	ASSERT_EQ(p[0].bits, 43);
	/* A libc-like text mapping, 0x7f3c1a628000 .. 0x7f3c1a77d000, by hand: each block is
	 * the largest power of two its start is aligned to that does not pass the end. */
	ASSERT_EQ(prefixes(0x7f3c1a628000ull, 0x7f3c1a77d000ull, p), 10);
	{
		static const struct { uint64_t addr; unsigned bits; } want[] = {
			{ 0x7f3c1a628000ull, 49 },  /* 32 KiB */
			{ 0x7f3c1a630000ull, 48 },  /* 64 KiB */
			{ 0x7f3c1a640000ull, 46 },  /* 256 KiB */
			{ 0x7f3c1a680000ull, 45 },  /* 512 KiB */
			{ 0x7f3c1a700000ull, 46 },  /* 256 KiB: 1 MiB and 512 KiB pass the end */
			{ 0x7f3c1a740000ull, 47 },  /* 128 KiB */
			{ 0x7f3c1a760000ull, 48 },  /* 64 KiB */
			{ 0x7f3c1a770000ull, 49 },  /* 32 KiB */
			{ 0x7f3c1a778000ull, 50 },  /* 16 KiB */
			{ 0x7f3c1a77c000ull, 52 },  /* 4 KiB */
		};
		size_t i;

		for (i = 0; i < sizeof(want) / sizeof(want[0]); i++) {
			ASSERT_EQ(p[i].addr, want[i].addr);
			ASSERT_EQ(p[i].bits, want[i].bits);
		}
	}
	/* Single addresses and the extremes. */
	ASSERT_EQ(prefixes(0x5000, 0x5001, p), 1);
	ASSERT_EQ(p[0].bits, 64);
	ASSERT_EQ(prefixes(0, 1, p), 1);
	ASSERT_EQ(p[0].addr, 0);
	ASSERT_EQ(p[0].bits, 64);
	ASSERT_EQ(prefixes(0, 1ull << 63, p), 1);
	ASSERT_EQ(p[0].bits, 1);
	/* From 2^64 - 4096 to 2^64 - 1: 2048, 1024, ..., 1: twelve blocks. */
	ASSERT_EQ(prefixes(~0ull - 0xfff, ~0ull, p), 12);
	ASSERT_EQ(p[0].bits, 53);
	ASSERT_EQ(p[11].addr, ~0ull - 1);
	ASSERT_EQ(p[11].bits, 64);
	/* Errors. */
	ASSERT_EQ(prefixes(0x2000, 0x2000, p), -EINVAL);
	ASSERT_EQ(prefixes(0x3000, 0x2000, p), -EINVAL);
	ASSERT_EQ(lupe_unwind_prefixes(0x1000, 0x8000, p, 2), -E2BIG);
}

static uint64_t rnd_state = 88172645463325252ull;

static uint64_t rnd(void)
{
	rnd_state ^= rnd_state << 13;
	rnd_state ^= rnd_state >> 7;
	rnd_state ^= rnd_state << 17;
	return rnd_state;
}

/* Against the definition: blocks aligned to their size, adjacent, covering exactly the
 * range, and none could be merged with its neighbour into one aligned block. */
TEST(prefixes_random_ranges_cover_exactly)
{
	struct lupe_unwind_prefix p[128];
	int round, n, i;

	for (round = 0; round < 20000; round++) {
		uint64_t start = rnd() >> (rnd() % 64), len = (rnd() >> (rnd() % 64)) + 1, at;

		if (round % 2)
			start &= ~0xfffull, len = (len | 0xfff) + 1;
		if (start + len < start)
			len = ~0ull - start;
		if (!len)
			continue;
		n = prefixes(start, start + len, p);
		if (n <= 0 || n > 128)
			FAIL("[%llx, %llx): %d prefixes", (unsigned long long)start,
			     (unsigned long long)(start + len), n);
		at = start;
		for (i = 0; i < n; i++) {
			uint64_t size = p[i].bits == 0 ? 0 : 1ull << (64 - p[i].bits);

			ASSERT(p[i].bits >= 1 && p[i].bits <= 64);
			ASSERT_EQ(p[i].addr, at);
			ASSERT((p[i].addr & (size - 1)) == 0);
			if (i > 0 && p[i].bits == p[i - 1].bits) {
				/* Two equal buddies would make one block, unless unaligned. */
				ASSERT((p[i - 1].addr & (2 * size - 1)) != 0);
			}
			at += size;
		}
		ASSERT_EQ(at, start + len);
	}
}

/* ---- encoding ------------------------------------------------------------------------ */

/* Rules numbered in order of first appearance; INVALID is 0. */
struct interner {
	struct lupe_unwind_rule rules[256];
	int n;
};

static int test_intern(void *ctx, const struct lupe_unwind_rule *r, uint16_t *index)
{
	struct interner *in = ctx;
	int i;

	if (!in->n) {
		memset(&in->rules[0], 0, sizeof(in->rules[0]));
		in->n = 1;
	}
	for (i = 0; i < in->n; i++) {
		if (!memcmp(&in->rules[i], r, sizeof(*r))) {
			*index = (uint16_t)i;
			return 0;
		}
	}
	if (in->n == 256)
		return -ENOSPC;
	in->rules[in->n] = *r;
	*index = (uint16_t)in->n++;
	return 0;
}

static struct lupe_stack_delta sp(uint64_t addr, int32_t off)
{
	return (struct lupe_stack_delta){ .address = addr, .cfa_opcode = LUPE_CFA_SP,
					  .cfa_param = off, .fp_opcode = LUPE_FP_SAME };
}

static struct lupe_stack_delta cmd(uint64_t addr, int32_t c)
{
	return (struct lupe_stack_delta){ .address = addr, .cfa_opcode = LUPE_CFA_CMD,
					  .cfa_param = c };
}

#define SLOT(low, rule) ((uint32_t)(low) | (uint32_t)(rule) << 16)

TEST(encode_hand_vector)
{
	struct lupe_stack_delta d[] = {
		cmd(0x0800, LUPE_CMD_INVALID),  /* leading INVALID: adds nothing */
		sp(0x1000, 8),                   /* rule 1 */
		sp(0x1004, 16),                  /* rule 2 */
		sp(0x1010, 8),
		cmd(0x1020, LUPE_CMD_INVALID),
		{ .address = 0x10020, .cfa_opcode = LUPE_CFA_FP, .cfa_param = 16,
		  .fp_opcode = LUPE_FP_AT_CFA, .fp_param = -16 },   /* rule 3, page 1 */
		/* page 2 has no delta: it carries rule 3 */
		cmd(0x30008, LUPE_CMD_INVALID),  /* page 3 */
		/* page 4: nothing, and INVALID carried in: left out */
		sp(0x50000, 8),                  /* replaced: same address */
		sp(0x50000, 16),                 /* page 5, at its first byte: no carry slot */
		sp(0x50010, 16),                 /* the same rule again: adds nothing */
		cmd(0x50020, LUPE_CMD_INVALID),
	};
	static const struct lupe_unwind_table_page want_pages[] = {
		{ 0, 0, 5 }, { 1, 5, 2 }, { 2, 7, 1 }, { 3, 8, 2 }, { 5, 10, 2 },
	};
	static const uint32_t want_slots[] = {
		SLOT(0, 0), SLOT(0x1000, 1), SLOT(0x1004, 2), SLOT(0x1010, 1), SLOT(0x1020, 0),
		SLOT(0, 0), SLOT(0x20, 3),
		SLOT(0, 3),
		SLOT(0, 3), SLOT(0x8, 0),
		SLOT(0, 2), SLOT(0x20, 0),
	};
	struct lupe_interval_data data = { d, sizeof(d) / sizeof(d[0]) };
	struct lupe_unwind_table t;
	struct interner in = { .n = 0 };
	size_t i;

	ASSERT_OK(lupe_unwind_table_encode(&data, test_intern, &in, &t));
	ASSERT_EQ(in.n, 4);
	ASSERT_EQ(in.rules[3].cfa_opcode, LUPE_CFA_FP);
	ASSERT_EQ(in.rules[3].fp_param, -16);
	ASSERT_EQ(t.npages, sizeof(want_pages) / sizeof(want_pages[0]));
	for (i = 0; i < t.npages; i++) {
		ASSERT_EQ(t.pages[i].page, want_pages[i].page);
		ASSERT_EQ(t.pages[i].first, want_pages[i].first);
		ASSERT_EQ(t.pages[i].count, want_pages[i].count);
	}
	ASSERT_EQ(t.nslots, sizeof(want_slots) / sizeof(want_slots[0]));
	for (i = 0; i < t.nslots; i++)
		if (t.slots[i] != want_slots[i])
			FAIL("slot %zu: %08x, want %08x", i, t.slots[i], want_slots[i]);
	lupe_unwind_table_release(&t);
	lupe_unwind_table_release(NULL);
}

TEST(encode_rules_and_errors)
{
	struct lupe_stack_delta d[3];
	struct lupe_interval_data data = { d, 3 };
	struct lupe_unwind_table t;
	struct interner in = { .n = 0 };
	struct lupe_unwind_rule r;

	/* Commands carry no rbp rule: two STOPs with different leftovers are one rule. */
	d[0] = cmd(0x100, LUPE_CMD_STOP);
	d[0].fp_opcode = LUPE_FP_AT_CFA;
	d[0].fp_param = -16;
	d[1] = cmd(0x200, LUPE_CMD_INVALID);
	d[2] = cmd(0x300, LUPE_CMD_STOP);
	ASSERT(lupe_unwind_rule_of(&d[0], &r));
	ASSERT_EQ(r.fp_opcode, 0);
	ASSERT_EQ(r.fp_param, 0);
	ASSERT_OK(lupe_unwind_table_encode(&data, test_intern, &in, &t));
	ASSERT_EQ(in.n, 2);
	ASSERT_EQ(t.nslots, 4);        /* carry, STOP, INVALID, STOP */
	ASSERT_EQ(t.slots[1], SLOT(0x100, 1));
	ASSERT_EQ(t.slots[3], SLOT(0x300, 1));
	lupe_unwind_table_release(&t);

	/* Out-of-range opcodes become INVALID, and say so. */
	d[0] = sp(0x100, 8);
	d[0].cfa_opcode = 9;
	ASSERT(!lupe_unwind_rule_of(&d[0], &r));
	ASSERT_EQ(r.cfa_opcode, LUPE_CFA_CMD);
	ASSERT_EQ(r.cfa_param, LUPE_CMD_INVALID);
	d[0] = cmd(0x100, 7);
	ASSERT(!lupe_unwind_rule_of(&d[0], &r));
	d[0] = sp(0x100, 8);
	d[0].fp_opcode = 5;
	ASSERT(!lupe_unwind_rule_of(&d[0], &r));
	/* rbp "same" or "undefined" carries no parameter. */
	d[0] = sp(0x100, 8);
	d[0].fp_param = 99;
	ASSERT(lupe_unwind_rule_of(&d[0], &r));
	ASSERT_EQ(r.fp_param, 0);

	/* Unsorted input is refused; empty input gives an empty table. */
	d[0] = sp(0x300, 8);
	d[1] = sp(0x200, 8);
	data.count = 2;
	ASSERT_EQ(lupe_unwind_table_encode(&data, test_intern, &in, &t), -EINVAL);
	data.count = 0;
	ASSERT_OK(lupe_unwind_table_encode(&data, test_intern, &in, &t));
	ASSERT_EQ(t.npages, 0);
	ASSERT_EQ(t.nslots, 0);
	lupe_unwind_table_release(&t);
	/* A table spanning more than 2^20 pages of carried rules is refused. */
	d[0] = sp(0, 8);
	d[1] = cmd((uint64_t)3 << 36, LUPE_CMD_INVALID);
	data.count = 2;
	ASSERT_EQ(lupe_unwind_table_encode(&data, test_intern, &in, &t), -E2BIG);
}

/* What BPF does with a table: the page, then the last slot at or below the address.
 * Returns the rule, or -1 for "no page" (LUPE_UNWIND_ERR_NO_DELTA). */
static int table_lookup(const struct lupe_unwind_table *t, uint64_t addr)
{
	uint64_t page = addr >> LUPE_UNWIND_PAGE_BITS;
	size_t i, lo, hi;

	for (i = 0; i < t->npages && t->pages[i].page != page; i++)
		;
	if (i == t->npages)
		return -1;
	lo = 0;
	hi = t->pages[i].count;
	while (hi - lo > 1) {
		size_t mid = lo + (hi - lo) / 2;

		if ((t->slots[t->pages[i].first + mid] & 0xffff) <= (addr & 0xffff))
			lo = mid;
		else
			hi = mid;
	}
	return t->slots[t->pages[i].first + lo] >> 16;
}

/* The definition: the last delta at or below addr (the last of equals), else INVALID. */
static int oracle_rule(const struct lupe_stack_delta *d, size_t n, struct interner *in,
		       uint64_t addr)
{
	struct lupe_unwind_rule r;
	uint16_t idx = 0;
	size_t i;

	for (i = n; i-- > 0;) {
		if (d[i].address <= addr) {
			lupe_unwind_rule_of(&d[i], &r);
			test_intern(in, &r, &idx);
			return idx;
		}
	}
	return 0;
}

static size_t random_deltas(struct lupe_stack_delta *d, size_t max, uint64_t base)
{
	uint64_t at = base;
	size_t n = 0;

	while (n + 1 < max) {
		/* Mostly short steps, now and then a jump over pages. */
		at += rnd() % 8 == 0 ? rnd() % 0x30000 : rnd() % 64;
		switch (rnd() % 6) {
		case 0: d[n] = cmd(at, LUPE_CMD_INVALID); break;
		case 1: d[n] = cmd(at, (int32_t)(rnd() % 4)); break;
		case 2: d[n] = sp(at, 8 * (int32_t)(rnd() % 6 + 1)); break;
		default:
			d[n] = sp(at, 8 * (int32_t)(rnd() % 3 + 1));
			d[n].fp_opcode = LUPE_FP_AT_CFA;
			d[n].fp_param = -16;
		}
		n++;
	}
	/* Tables end with INVALID, as the CFI parser's do. */
	d[n++] = cmd(at + 1 + rnd() % 64, LUPE_CMD_INVALID);
	return n;
}

TEST(encode_random_tables_match_definition)
{
	static struct lupe_stack_delta d[3000];
	struct lupe_unwind_table t;
	int round, k;

	for (round = 0; round < 60; round++) {
		struct interner in = { .n = 0 };
		size_t n = random_deltas(d, 50 + rnd() % 2900, (rnd() % 64) << 16);
		struct lupe_interval_data data = { d, n };
		uint64_t lo = d[0].address > 0x20000 ? d[0].address - 0x20000 : 0;
		uint64_t span = d[n - 1].address + 0x20000 - lo;

		ASSERT_OK(lupe_unwind_table_encode(&data, test_intern, &in, &t));
		for (k = 0; k < 4000; k++) {
			uint64_t addr = k < 2 * (int)n ? d[k / 2].address - (k & 1)
						       : lo + rnd() % span;
			int got = table_lookup(&t, addr), want = oracle_rule(d, n, &in, addr);

			/* A left-out page means INVALID throughout. */
			if (got < 0)
				got = 0;
			if (got != want) {
				lupe_unwind_table_release(&t);
				FAIL("round %d, %zu deltas: address %#llx: rule %d, want %d", round,
				     n, (unsigned long long)addr, got, want);
			}
		}
		/* Every page holds its carry at address 0 and ascends. */
		for (k = 0; k < (int)t.npages; k++) {
			uint32_t j;

			ASSERT(t.pages[k].count >= 1);
			ASSERT_EQ(t.slots[t.pages[k].first] & 0xffff, 0);
			for (j = 1; j < t.pages[k].count; j++)
				ASSERT((t.slots[t.pages[k].first + j] & 0xffff) >
				       (t.slots[t.pages[k].first + j - 1] & 0xffff));
			if (k)
				ASSERT(t.pages[k].page > t.pages[k - 1].page);
		}
		lupe_unwind_table_release(&t);
	}
}

/* ---- the fake map backend -------------------------------------------------------------- */

struct fake {
	struct lupe_unwind_backend b;
	struct lupe_hashmap *pids;      /* {pid, 0} -> synced_at + 1 */
	struct lupe_hashmap *mappings;  /* {prefixlen << 32 | pid_be, addr_be} -> mapping * */
	struct lupe_hashmap *files;     /* {id, 0} -> lupe_unwind_file * */
	struct lupe_hashmap *pages;     /* {id, page} -> first | count << 32 */
	struct lupe_unwind_rule rules[LUPE_UNWIND_MAX_RULES];
	uint32_t *chunks[64];
	size_t nchunks, chunk_slots;
	int calls;                      /* every operation */
	int fail_update_page;           /* > 0: that many update_page calls fail (-E2BIG) */
	int fail_chunk;                 /* add_chunk fails */
};

static struct fake *fake_of(struct lupe_unwind_backend *b)
{
	return (struct fake *)b;
}

static int f_set_pid(struct lupe_unwind_backend *b, uint32_t pid, const struct lupe_unwind_pid *v)
{
	struct fake *f = fake_of(b);

	f->calls++;
	return lupe_hashmap__set(f->pids, (struct lupe_key){ pid, 0 },
				 (void *)(uintptr_t)(v->synced_at + 1), NULL);
}

static int f_delete_pid(struct lupe_unwind_backend *b, uint32_t pid)
{
	struct fake *f = fake_of(b);

	f->calls++;
	return lupe_hashmap__delete(f->pids, (struct lupe_key){ pid, 0 }) ? 0 : -ENOENT;
}

static struct lupe_key mkey(const struct lupe_unwind_mapping_key *k)
{
	return (struct lupe_key){ (uint64_t)k->prefixlen << 32 | k->pid_be, k->addr_be };
}

static int f_update_mappings(struct lupe_unwind_backend *b, const struct lupe_unwind_mapping_key *k,
			     const struct lupe_unwind_mapping *v, size_t n)
{
	struct fake *f = fake_of(b);
	size_t i;

	f->calls++;
	for (i = 0; i < n; i++) {
		struct lupe_unwind_mapping *c = malloc(sizeof(*c)), *old = NULL;

		if (!c)
			return -ENOMEM;
		*c = v[i];
		if (lupe_hashmap__set(f->mappings, mkey(&k[i]), c, (void **)&old)) {
			free(c);
			return -ENOMEM;
		}
		free(old);
	}
	return 0;
}

static int f_delete_mappings(struct lupe_unwind_backend *b, const struct lupe_unwind_mapping_key *k,
			     size_t n)
{
	struct fake *f = fake_of(b);
	size_t i;

	f->calls++;
	for (i = 0; i < n; i++)
		free(lupe_hashmap__delete(f->mappings, mkey(&k[i])));
	return 0;
}

static int f_set_file(struct lupe_unwind_backend *b, uint64_t id, const struct lupe_unwind_file *v)
{
	struct fake *f = fake_of(b);
	struct lupe_unwind_file *c = lupe_hashmap__get(f->files, (struct lupe_key){ id, 0 });

	f->calls++;
	if (!c) {
		c = malloc(sizeof(*c));
		if (!c || lupe_hashmap__set(f->files, (struct lupe_key){ id, 0 }, c, NULL)) {
			free(c);
			return -ENOMEM;
		}
	}
	*c = *v;
	return 0;
}

static int f_get_file(struct lupe_unwind_backend *b, uint64_t id, struct lupe_unwind_file *out)
{
	struct fake *f = fake_of(b);
	struct lupe_unwind_file *c = lupe_hashmap__get(f->files, (struct lupe_key){ id, 0 });

	f->calls++;
	if (!c)
		return -ENOENT;
	*out = *c;
	return 0;
}

static int f_delete_file(struct lupe_unwind_backend *b, uint64_t id)
{
	struct fake *f = fake_of(b);
	void *v = lupe_hashmap__delete(f->files, (struct lupe_key){ id, 0 });

	f->calls++;
	free(v);
	return v ? 0 : -ENOENT;
}

static int f_update_page(struct lupe_unwind_backend *b, const struct lupe_unwind_page_key *k,
			 const struct lupe_unwind_page *v)
{
	struct fake *f = fake_of(b);

	f->calls++;
	if (f->fail_update_page > 0) {
		f->fail_update_page--;
		return -E2BIG;
	}
	return lupe_hashmap__set(f->pages, (struct lupe_key){ k->file_id, k->page },
				 (void *)(uintptr_t)(v->first | (uint64_t)v->count << 32), NULL);
}

static int f_delete_page(struct lupe_unwind_backend *b, const struct lupe_unwind_page_key *k)
{
	struct fake *f = fake_of(b);

	f->calls++;
	return lupe_hashmap__delete(f->pages, (struct lupe_key){ k->file_id, k->page }) ? 0 : -ENOENT;
}

static int f_set_rule(struct lupe_unwind_backend *b, uint32_t idx, const struct lupe_unwind_rule *r)
{
	struct fake *f = fake_of(b);

	f->calls++;
	if (idx >= LUPE_UNWIND_MAX_RULES)
		return -E2BIG;
	f->rules[idx] = *r;
	return 0;
}

static int f_add_chunk(struct lupe_unwind_backend *b, uint32_t index, size_t nslots, uint32_t **base)
{
	struct fake *f = fake_of(b);

	f->calls++;
	if (f->fail_chunk || index != f->nchunks || index >= 64)
		return -ENOSPC;
	f->chunks[index] = calloc(nslots, sizeof(uint32_t));
	if (!f->chunks[index])
		return -ENOMEM;
	f->chunk_slots = nslots;
	f->nchunks++;
	*base = f->chunks[index];
	return 0;
}

static void f_free(struct lupe_unwind_backend *b)
{
	struct fake *f = fake_of(b);
	size_t i;

	lupe_hashmap__free(f->pids);
	lupe_hashmap__free_values(f->mappings, free);
	lupe_hashmap__free_values(f->files, free);
	lupe_hashmap__free(f->pages);
	for (i = 0; i < f->nchunks; i++)
		free(f->chunks[i]);
	free(f);
}

static const struct lupe_unwind_backend_ops fake_ops = {
	.set_pid = f_set_pid, .delete_pid = f_delete_pid,
	.update_mappings = f_update_mappings, .delete_mappings = f_delete_mappings,
	.set_file = f_set_file, .get_file = f_get_file, .delete_file = f_delete_file,
	.update_page = f_update_page, .delete_page = f_delete_page,
	.set_rule = f_set_rule, .add_chunk = f_add_chunk, .free = f_free,
};

static struct fake *fake_new(void)
{
	struct fake *f = calloc(1, sizeof(*f));

	if (!f)
		return NULL;
	f->b.ops = &fake_ops;
	f->pids = lupe_hashmap__new();
	f->mappings = lupe_hashmap__new();
	f->files = lupe_hashmap__new();
	f->pages = lupe_hashmap__new();
	return f;
}

/* What BPF would find for (file, ELF address) in the fake's maps: -1 no page, -2 no
 * chunk, else the rule (as an interned rule, compared through the fake's rule array). */
static int fake_lookup(struct fake *f, uint64_t file, uint64_t addr, struct lupe_unwind_rule *out)
{
	void *v = lupe_hashmap__get(f->pages, (struct lupe_key){ file, addr >> LUPE_UNWIND_PAGE_BITS });
	uint64_t pv = (uint64_t)(uintptr_t)v;
	uint32_t first = (uint32_t)pv, count = (uint32_t)(pv >> 32), lo = 0, hi = count, s;

	if (!v)
		return -1;
	if (first / f->chunk_slots >= f->nchunks ||
	    first / f->chunk_slots != (first + count - 1) / f->chunk_slots)
		return -2;
	while (hi - lo > 1) {
		uint32_t mid = lo + (hi - lo) / 2;

		s = f->chunks[(first + mid) / f->chunk_slots][(first + mid) % f->chunk_slots];
		if ((s & 0xffff) <= (addr & 0xffff))
			lo = mid;
		else
			hi = mid;
	}
	s = f->chunks[(first + lo) / f->chunk_slots][(first + lo) % f->chunk_slots];
	*out = f->rules[s >> 16];
	return (int)(s >> 16);
}

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* ---- the handler through the fake ------------------------------------------------------- */

static struct lupe_mapping mapping(uint64_t host, uint64_t vaddr, uint64_t len, uint64_t bias)
{
	struct lupe_mapping m = { .vaddr = vaddr, .length = len, .bias = bias };

	/* lupe_file_id_host is the high half. */
	m.file_id.hi = host;
	m.file_id.lo = 7;
	return m;
}

TEST(handler_pids_and_mappings)
{
	struct fake *f = fake_new();
	struct lupe_ebpf_handler *h;
	struct lupe_unwind_prefix px[128];
	struct lupe_mapping m = mapping(0xabcdef, 0x7f3c1a628000ull, 0x155000, 0x7f3c1a600000ull);
	struct lupe_stackdeltas_stats st;
	struct lupe_unwind_mapping *v;
	int n, i;

	ASSERT(f);
	h = lupe_stackdeltas_new(&f->b, NULL);
	ASSERT(h);
	ASSERT(lupe_stackdeltas_is(h));
	ASSERT_EQ(lupe_stackdeltas__commit(h, 4242, 100), -ENOENT);
	ASSERT_OK(h->ops->new_pid(h, 4242));
	/* Not marked until committed: BPF keeps walking frame pointers. */
	ASSERT(!lupe_hashmap__get(f->pids, (struct lupe_key){ 4242, 0 }));
	ASSERT_OK(h->ops->add_mapping(h, 4242, &m));
	n = lupe_unwind_prefixes(m.vaddr, m.vaddr + m.length, px, 128);
	ASSERT_EQ(n, 10);
	ASSERT_EQ(lupe_hashmap__count(f->mappings), (size_t)n);
	for (i = 0; i < n; i++) {
		struct lupe_unwind_mapping_key k = { 32 + px[i].bits, htobe32(4242), htobe64(px[i].addr) };

		v = lupe_hashmap__get(f->mappings, mkey(&k));
		ASSERT(v);
		ASSERT_EQ(v->file_id, 0xabcdef);
		ASSERT_EQ(v->bias, 0x7f3c1a600000ull);
		ASSERT_EQ(v->start, m.vaddr);
		ASSERT_EQ(v->end, m.vaddr + m.length);
	}
	ASSERT_OK(lupe_stackdeltas__commit(h, 4242, 12345));
	ASSERT_EQ((uintptr_t)lupe_hashmap__get(f->pids, (struct lupe_key){ 4242, 0 }), 12346);
	lupe_stackdeltas__stats(h, &st);
	ASSERT_EQ(st.mappings, 1);
	ASSERT_EQ(st.prefixes, 10);
	ASSERT_EQ(st.pids, 1);
	/* Deleting recomputes the same prefixes. */
	ASSERT_OK(h->ops->delete_mapping(h, 4242, &m));
	ASSERT_EQ(lupe_hashmap__count(f->mappings), 0);
	ASSERT_OK(h->ops->delete_pid(h, 4242));
	ASSERT(!lupe_hashmap__get(f->pids, (struct lupe_key){ 4242, 0 }));
	ASSERT_EQ(lupe_stackdeltas__commit(h, 4242, 100), -ENOENT);
	m.length = 0;
	ASSERT_EQ(h->ops->add_mapping(h, 1, &m), -EINVAL);
	h->ops->free(h);
}

/* n deltas from base: every 16 bytes a new rule among a few. */
static struct lupe_stack_delta *make_deltas(uint64_t base, size_t n)
{
	struct lupe_stack_delta *d = calloc(n, sizeof(*d));
	size_t i;

	if (!d)
		return NULL;
	for (i = 0; i + 1 < n; i++)
		d[i] = sp(base + 16 * i, 8 * (int32_t)(1 + i % 3));
	d[n - 1] = cmd(base + 16 * (n - 1), LUPE_CMD_INVALID);
	return d;
}

static int load(struct lupe_ebpf_handler *h, uint64_t file, uint64_t base, size_t n)
{
	struct lupe_stack_delta *d = make_deltas(base, n);
	struct lupe_interval_data data = { d, n };
	int err;

	if (!d)
		return -ENOMEM;
	err = h->ops->load_deltas(h, file, &data);
	free(d);
	return err;
}

static bool resident(struct fake *f, uint64_t file)
{
	struct lupe_unwind_file *v = lupe_hashmap__get(f->files, (struct lupe_key){ file, 0 });

	return v && (v->flags & LUPE_UNWIND_FILE_LOADED);
}

static void set_sampled(struct fake *f, uint64_t file, uint64_t t)
{
	struct lupe_unwind_file *v = lupe_hashmap__get(f->files, (struct lupe_key){ file, 0 });

	if (v)
		v->last_sampled = t;
}

TEST(handler_tables_in_the_maps)
{
	struct fake *f = fake_new();
	struct lupe_ebpf_handler *h;
	struct lupe_unwind_rule r;
	struct lupe_stackdeltas_stats st;
	uint64_t a;
	int rule;

	h = lupe_stackdeltas_new(&f->b, NULL);
	ASSERT(h);
	/* 6000 deltas every 16 bytes from 0x401000: pages 0x40 and 0x41. */
	ASSERT_OK(load(h, 0x1111, 0x401000, 6000));
	ASSERT(resident(f, 0x1111));
	ASSERT_EQ(lupe_hashmap__count(f->pages), 2);
	for (a = 0x400ff0; a < 0x401000 + 16 * 6000 + 8; a += 5) {
		uint64_t i = (a - 0x401000) / 16;

		rule = fake_lookup(f, 0x1111, a, &r);
		if (a < 0x401000) {
			/* Before the first delta, in its page: the INVALID carry. */
			ASSERT_EQ(rule, 0);
		} else if (i >= 5999) {
			ASSERT_EQ(r.cfa_opcode, LUPE_CFA_CMD);
			ASSERT_EQ(r.cfa_param, LUPE_CMD_INVALID);
		} else {
			if (rule < 0)
				FAIL("address %#llx: no page", (unsigned long long)a);
			ASSERT_EQ(r.cfa_opcode, LUPE_CFA_SP);
			ASSERT_EQ(r.cfa_param, 8 * (int32_t)(1 + i % 3));
		}
	}
	ASSERT_EQ(fake_lookup(f, 0x1111, 0x3f0000, &r), -1);
	lupe_stackdeltas__stats(h, &st);
	ASSERT_EQ(st.files_resident, 1);
	ASSERT_EQ(st.rules, 4);          /* INVALID and three SP rules */
	/* A carry slot for page 0x40; page 0x41 starts with a delta (0x401000 + 16 * 3840). */
	ASSERT_EQ(st.slots_used, 6000 + 1);
	ASSERT_EQ(st.pages_resident, 2);
	ASSERT_EQ(st.bytes_used, 6001 * 4 + 2 * LUPE_UNWIND_PAGE_COST);
	ASSERT_EQ(st.chunks, 1);
	/* Unloading takes the pages and the file out. */
	ASSERT_OK(h->ops->unload_deltas(h, 0x1111));
	ASSERT_EQ(lupe_hashmap__count(f->pages), 0);
	ASSERT(!lupe_hashmap__get(f->files, (struct lupe_key){ 0x1111, 0 }));
	lupe_stackdeltas__stats(h, &st);
	ASSERT_EQ(st.files, 0);
	ASSERT_EQ(st.slots_used, 0);
	ASSERT_EQ(st.table_bytes_user, 0);
	/* Malformed input is refused and counted. */
	{
		struct lupe_stack_delta d[2] = { sp(0x2000, 8), sp(0x1000, 8) };
		struct lupe_interval_data data = { d, 2 };

		ASSERT_EQ(h->ops->load_deltas(h, 0x2222, &data), -EINVAL);
		lupe_stackdeltas__stats(h, &st);
		ASSERT_EQ(st.rejected, 1);
	}
	h->ops->free(h);
}

/* 1024-slot chunks, room for three: files of one 599-slot page each fit one per chunk. */
static struct lupe_ebpf_handler *small_handler(struct fake *f)
{
	LUPE_OPTS(lupe_stackdeltas_opts, o, .chunk_slots = 1024, .max_chunks = 3,
		  .budget_bytes = 3 * 4096 + 4 * LUPE_UNWIND_PAGE_COST);

	return lupe_stackdeltas_new(&f->b, &o);
}

TEST(handler_budget_evicts_least_recently_sampled)
{
	struct fake *f = fake_new();
	struct lupe_ebpf_handler *h;
	struct lupe_stackdeltas_stats st;
	struct lupe_unwind_rule r;
	uint64_t t0;

	h = small_handler(f);
	ASSERT(h);
	ASSERT_OK(load(h, 0xa, 0x10000, 599));
	ASSERT_OK(load(h, 0xb, 0x10000, 599));
	ASSERT_OK(load(h, 0xc, 0x10000, 599));
	ASSERT(resident(f, 0xa) && resident(f, 0xb) && resident(f, 0xc));
	ASSERT_EQ(f->nchunks, 3);
	/* BPF saw b least recently. */
	t0 = now_ns();
	set_sampled(f, 0xa, t0 + 3000000000ull);
	set_sampled(f, 0xb, t0 + 1000000000ull);
	set_sampled(f, 0xc, t0 + 2000000000ull);
	ASSERT_OK(load(h, 0xd, 0x20000, 599));
	ASSERT(resident(f, 0xd));
	ASSERT(!resident(f, 0xb));
	ASSERT(resident(f, 0xa) && resident(f, 0xc));
	/* b's pages are gone, its file entry stays (BPF records samples of it). */
	ASSERT_EQ(fake_lookup(f, 0xb, 0x10000, &r), -1);
	ASSERT(lupe_hashmap__get(f->files, (struct lupe_key){ 0xb, 0 }));
	ASSERT(fake_lookup(f, 0xd, 0x20010, &r) > 0);
	lupe_stackdeltas__stats(h, &st);
	ASSERT_EQ(st.evictions, 1);
	ASSERT_EQ(st.files, 4);
	ASSERT_EQ(st.files_resident, 3);
	ASSERT(st.bytes_allocated <= st.budget_bytes);

	/* Not sampled since its eviction (the fake's times above are in the future): it
	 * is not even tried. */
	set_sampled(f, 0xb, t0 - 1);
	ASSERT_EQ(lupe_stackdeltas__maintain(h, t0, 0), 0);
	lupe_stackdeltas__stats(h, &st);
	ASSERT_EQ(st.no_room, 0);
	/* BPF samples b again, later than anything: the coldest resident file (d, never
	 * sampled, loaded before) makes room. */
	set_sampled(f, 0xb, t0 + 10000000000ull);
	ASSERT_EQ(lupe_stackdeltas__maintain(h, t0, 0), 1);
	ASSERT(resident(f, 0xb));
	ASSERT(!resident(f, 0xd));
	ASSERT(fake_lookup(f, 0xb, 0x10020, &r) > 0);
	lupe_stackdeltas__stats(h, &st);
	ASSERT_EQ(st.reloads, 1);
	ASSERT_EQ(st.evictions, 2);
	/* The interval is honoured. */
	ASSERT_EQ(lupe_stackdeltas__maintain(h, t0 + 1, 1000000000ull), 0);

	/* d sampled again, but every resident file was used less than a second before it:
	 * none is evicted for it (two hot files must not evict each other in turn). */
	set_sampled(f, 0xa, t0 + 10200000000ull);
	set_sampled(f, 0xc, t0 + 10300000000ull);
	set_sampled(f, 0xd, t0 + 10500000000ull);
	ASSERT_EQ(lupe_stackdeltas__maintain(h, t0 + 2000000000ull, 0), 0);
	ASSERT(!resident(f, 0xd));
	lupe_stackdeltas__stats(h, &st);
	ASSERT_EQ(st.no_room, 1);
	h->ops->free(h);
}

TEST(handler_budget_limits)
{
	struct fake *f = fake_new();
	struct lupe_ebpf_handler *h;
	struct lupe_stackdeltas_stats st;

	h = small_handler(f);
	ASSERT(h);
	/* More than half the budget: refused, frames fall back to frame pointers. */
	ASSERT_EQ(load(h, 0xe, 0x10000, 4000), -E2BIG);
	/* A 2-page file larger than a chunk lands page by page in two chunks. */
	ASSERT_OK(load(h, 0xf, 0xfe00, 1100 - 64));
	ASSERT(resident(f, 0xf));
	{
		struct lupe_unwind_rule r;
		uint64_t a;

		for (a = 0xfe00; a < 0xfe00 + 16 * (1100 - 65); a += 16)
			ASSERT(fake_lookup(f, 0xf, a, &r) > 0);
	}
	/* The page map refusing entries: the table stays known but not resident. */
	f->fail_update_page = 1;
	ASSERT_OK(load(h, 0x10, 0x40000, 100));
	ASSERT(!resident(f, 0x10));
	lupe_stackdeltas__stats(h, &st);
	ASSERT(st.map_errors >= 1);
	ASSERT_EQ(st.no_room, 0);
	ASSERT_EQ(st.rejected, 1);
	ASSERT_EQ(st.files, 2);
	/* Unloading a table that never got in is fine. */
	ASSERT_OK(h->ops->unload_deltas(h, 0x10));
	ASSERT_OK(h->ops->unload_deltas(h, 0x999));
	h->ops->free(h);
}

TEST(handler_reuses_freed_slots)
{
	struct fake *f = fake_new();
	struct lupe_ebpf_handler *h;
	struct lupe_stackdeltas_stats st;
	struct lupe_unwind_rule r;

	h = small_handler(f);
	ASSERT(h);
	ASSERT_OK(load(h, 0xa, 0x10000, 599));
	ASSERT_OK(load(h, 0xb, 0x10000, 599));
	ASSERT_OK(load(h, 0xc, 0x10000, 599));
	ASSERT_OK(h->ops->unload_deltas(h, 0xb));
	/* b's slots are quarantined a moment, then taken: no eviction, no new chunk. */
	ASSERT_OK(load(h, 0xd, 0x30000, 599));
	ASSERT(resident(f, 0xa) && resident(f, 0xc) && resident(f, 0xd));
	ASSERT(fake_lookup(f, 0xd, 0x30100, &r) > 0);
	lupe_stackdeltas__stats(h, &st);
	ASSERT_EQ(st.evictions, 0);
	ASSERT_EQ(st.chunks, 3);
	/* 599 deltas each, the first at a page start (no carry slot). */
	ASSERT_EQ(st.slots_used, 3 * 599);
	/* Reloading a file replaces its table. */
	ASSERT_OK(load(h, 0xd, 0x50000, 300));
	ASSERT_EQ(fake_lookup(f, 0xd, 0x30100, &r), -1);
	ASSERT(fake_lookup(f, 0xd, 0x50100, &r) > 0);
	h->ops->free(h);
}

TEST(handler_detached_writes_nothing)
{
	struct fake *f = fake_new();
	struct lupe_ebpf_handler *h;
	struct lupe_mapping m = mapping(0x1, 0x400000, 0x1000, 0);
	int calls;

	h = lupe_stackdeltas_new(&f->b, NULL);
	ASSERT(h);
	ASSERT_OK(h->ops->new_pid(h, 7));
	ASSERT_OK(load(h, 0x1, 0x400000, 50));
	lupe_stackdeltas__detach(h);
	calls = f->calls;
	ASSERT_OK(h->ops->add_mapping(h, 7, &m));
	ASSERT_OK(h->ops->delete_mapping(h, 7, &m));
	ASSERT_OK(h->ops->unload_deltas(h, 0x1));
	ASSERT_OK(h->ops->delete_pid(h, 7));
	ASSERT_OK(load(h, 0x2, 0x400000, 50));
	ASSERT_EQ(f->calls, calls);
	h->ops->free(h);
}

TEST(handler_bad_options)
{
	struct fake *f;
	LUPE_OPTS(lupe_stackdeltas_opts, o, .chunk_slots = 1000);

	ASSERT(!lupe_stackdeltas_new(NULL, NULL));
	ASSERT_EQ(errno, EINVAL);
	f = fake_new();
	ASSERT(!lupe_stackdeltas_new(&f->b, &o));   /* not a power of two; f is freed */
	ASSERT_EQ(errno, EINVAL);
	f = fake_new();
	o.chunk_slots = 1024;
	o.budget_bytes = 1000;                      /* less than one chunk */
	ASSERT(!lupe_stackdeltas_new(&f->b, &o));
	ASSERT_EQ(errno, EINVAL);
	f = fake_new();
	f->fail_chunk = 1;
	ASSERT(!lupe_stackdeltas_new(&f->b, NULL));
	ASSERT_EQ(errno, ENOSPC);
	ASSERT(!lupe_stackdeltas_is(NULL));
	ASSERT_EQ(lupe_stackdeltas__commit(NULL, 1, 1), -EINVAL);
	ASSERT_EQ(lupe_stackdeltas__maintain(NULL, 1, 1), -EINVAL);
	lupe_stackdeltas__detach(NULL);
}
