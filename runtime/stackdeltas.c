/* Stack deltas in BPF maps (see stackdeltas.h). */
#define LUPE_LOG_PREFIX "stackdeltas: "
#include "stackdeltas.h"

#include "hashmap.h"
#include "log.h"
#include "unwind.h"

#include <bpf/bpf.h>
#include <endian.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define DEFAULT_BUDGET ((size_t)64 << 20)
#define DEFAULT_MAX_PAGES 65536
#define MIN_CHUNK_SLOTS 1024
#define MAX_TABLE_PAGES ((size_t)1 << 20)
#define PAGE_SIZE_ADDR ((uint64_t)1 << LUPE_UNWIND_PAGE_BITS)
#define LOW_MASK (PAGE_SIZE_ADDR - 1)
#define MAX_PREFIXES 128
/* Freed slots are reused only this long after their pages left BPF: a program that
 * found the page just before may still be searching them. Runs take microseconds. */
#define QUARANTINE_NS 2000000ull
/* A reload may evict only files last used this long before the reloaded one was sampled,
 * so two hot files never evict each other in turn. */
#define RELOAD_HYSTERESIS_NS 1000000000ull

/* ---- encoding ----------------------------------------------------------------------- */

int lupe_unwind_prefixes(uint64_t start, uint64_t end, struct lupe_unwind_prefix *out,
			 size_t max)
{
	size_t n = 0;
	unsigned int k;

	if (start >= end)
		return -EINVAL;
	while (start < end) {
		/* The largest block aligned at start that does not pass end. */
		k = start ? (unsigned int)__builtin_ctzll(start) : 64;
		while (k > 0 && (k == 64 || end - start < ((uint64_t)1 << k)))
			k--;
		if (n == max)
			return -E2BIG;
		out[n].addr = start;
		out[n].bits = 64 - k;
		n++;
		start += (uint64_t)1 << k;
		if (!start) /* the last block reached 2^64 */
			break;
	}
	return (int)n;
}

bool lupe_unwind_rule_of(const struct lupe_stack_delta *d, struct lupe_unwind_rule *out)
{
	memset(out, 0, sizeof(*out));
	if (d->cfa_opcode == LUPE_CFA_CMD) {
		if (d->cfa_param < LUPE_CMD_INVALID || d->cfa_param > LUPE_CMD_SIGNAL)
			return false;
		out->cfa_param = d->cfa_param;
		return true;
	}
	if (d->cfa_opcode > LUPE_CFA_DEREF_FP || d->fp_opcode > LUPE_FP_UNDEFINED)
		return false;
	out->cfa_opcode = d->cfa_opcode;
	out->cfa_param = d->cfa_param;
	out->fp_opcode = d->fp_opcode;
	/* Only "saved at CFA + n" has a parameter: others compare equal whatever it held. */
	out->fp_param = d->fp_opcode == LUPE_FP_AT_CFA ? d->fp_param : 0;
	return true;
}

void lupe_unwind_table_release(struct lupe_unwind_table *t)
{
	if (!t)
		return;
	free(t->pages);
	free(t->slots);
	memset(t, 0, sizeof(*t));
}

struct encoder {
	struct lupe_unwind_table *t;
	size_t cap_pages, cap_slots;
};

static int push_page(struct encoder *e, uint64_t page)
{
	struct lupe_unwind_table *t = e->t;
	void *p;

	if (t->npages == MAX_TABLE_PAGES)
		return -E2BIG;
	if (t->npages == e->cap_pages) {
		e->cap_pages = e->cap_pages ? e->cap_pages * 2 : 16;
		p = realloc(t->pages, e->cap_pages * sizeof(*t->pages));
		if (!p)
			return -ENOMEM;
		t->pages = p;
	}
	t->pages[t->npages++] = (struct lupe_unwind_table_page){ page, (uint32_t)t->nslots, 0 };
	return 0;
}

static int push_slot(struct encoder *e, uint64_t low, uint16_t rule)
{
	struct lupe_unwind_table *t = e->t;
	void *p;

	if (t->nslots == e->cap_slots) {
		e->cap_slots = e->cap_slots ? e->cap_slots * 2 : 256;
		p = realloc(t->slots, e->cap_slots * sizeof(*t->slots));
		if (!p)
			return -ENOMEM;
		t->slots = p;
	}
	t->slots[t->nslots++] = (uint32_t)(low & LOW_MASK) | (uint32_t)rule << 16;
	t->pages[t->npages - 1].count++;
	return 0;
}

int lupe_unwind_table_encode(const struct lupe_interval_data *d, lupe_unwind_rule_fn intern,
			     void *ctx, struct lupe_unwind_table *out)
{
	struct encoder e = { out, 0, 0 };
	struct lupe_unwind_rule r;
	uint64_t page = 0, q, addr;
	uint16_t rule, prev = 0;
	bool in_page = false;
	size_t i;
	int err = 0;

	memset(out, 0, sizeof(*out));
	for (i = 1; i < d->count; i++) {
		if (d->deltas[i].address < d->deltas[i - 1].address)
			return -EINVAL;
	}
	for (i = 0; i < d->count; i++) {
		addr = d->deltas[i].address;
		/* At equal addresses the last delta wins. */
		if (i + 1 < d->count && d->deltas[i + 1].address == addr)
			continue;
		lupe_unwind_rule_of(&d->deltas[i], &r);
		err = intern(ctx, &r, &rule);
		if (err)
			goto err_out;
		/* The same rule again adds nothing. */
		if (rule == prev && (in_page || !rule))
			continue;
		if (!in_page || addr >> LUPE_UNWIND_PAGE_BITS != page) {
			/* Pages that no delta starts in carry the rule in effect, unless INVALID:
			 * those are left out. */
			if (in_page && prev) {
				for (q = page + 1; q < addr >> LUPE_UNWIND_PAGE_BITS; q++) {
					if ((err = push_page(&e, q)) || (err = push_slot(&e, 0, prev)))
						goto err_out;
				}
			}
			page = addr >> LUPE_UNWIND_PAGE_BITS;
			in_page = true;
			if ((err = push_page(&e, page)))
				goto err_out;
			if ((addr & LOW_MASK) && (err = push_slot(&e, 0, prev)))
				goto err_out;
		}
		if ((err = push_slot(&e, addr, rule)))
			goto err_out;
		prev = rule;
	}
	return 0;
err_out:
	lupe_unwind_table_release(out);
	return err;
}

/* ---- the handler ---------------------------------------------------------------------- */

struct extent {
	uint32_t start, len;
};

struct pending_free {
	struct extent x;
	uint64_t freed_at;
};

/* A file's table, resident in BPF or not. */
struct dfile {
	uint64_t id;
	struct lupe_unwind_table table;
	uint32_t *page_slot;    /* resident: where each page's slots start in the slot array */
	bool resident;
	bool contiguous;        /* resident in one run starting at page_slot[0] */
	uint64_t loaded_at;     /* last time it was made resident */
	uint64_t evicted_at;
	uint64_t last_sampled;  /* as last read from BPF */
};

struct sd {
	struct lupe_ebpf_handler h;
	pthread_mutex_t lock;
	struct lupe_unwind_backend *be;
	bool detached;

	size_t budget, max_pages, max_chunks;
	size_t chunk_slots;     /* a power of two */
	uint32_t **chunks;      /* each chunk's memory */
	size_t nchunks;
	size_t cap;             /* slots in all chunks */
	struct extent *free;    /* free runs, sorted by start, merged within a chunk */
	size_t nfree, cap_free;
	struct pending_free *quarantine;
	size_t nquar, cap_quar;
	size_t quar_slots;      /* slots in quarantine */

	struct lupe_hashmap *pids;    /* {pid, 0} -> (void *)1 */
	struct lupe_hashmap *files;   /* {file, 0} -> dfile */
	struct lupe_hashmap *rules;   /* {opcodes, params} -> index + 1 */
	uint64_t last_maintain;
	struct lupe_stackdeltas_stats st;
};

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static struct sd *sd_of(struct lupe_ebpf_handler *h)
{
	return (struct sd *)h;
}

static int be_result(struct sd *d, int err)
{
	if (err)
		d->st.map_errors++;
	return err;
}

/* -- slot allocation: first fit over sorted free runs -- */

static int free_insert(struct sd *d, size_t at, struct extent x)
{
	void *p;

	if (d->nfree == d->cap_free) {
		size_t cap = d->cap_free ? d->cap_free * 2 : 64;

		p = realloc(d->free, cap * sizeof(*d->free));
		if (!p)
			return -ENOMEM;
		d->free = p;
		d->cap_free = cap;
	}
	memmove(&d->free[at + 1], &d->free[at], (d->nfree - at) * sizeof(*d->free));
	d->free[at] = x;
	d->nfree++;
	return 0;
}

/* Returns the run to the free list, merging it with its neighbours. A failure to grow the
 * list loses the run (counted as used forever): only under memory exhaustion. */
static void slots_free(struct sd *d, struct extent x)
{
	size_t lo = 0, hi = d->nfree;

	if (!x.len)
		return;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;

		if (d->free[mid].start < x.start)
			lo = mid + 1;
		else
			hi = mid;
	}
	/* lo: the first run after x. Runs never span two chunks: a page must be in one. */
	if (lo > 0 && d->free[lo - 1].start + d->free[lo - 1].len == x.start &&
	    x.start % d->chunk_slots) {
		d->free[lo - 1].len += x.len;
		if (lo < d->nfree && x.start + x.len == d->free[lo].start &&
		    (x.start + x.len) % d->chunk_slots) {
			d->free[lo - 1].len += d->free[lo].len;
			memmove(&d->free[lo], &d->free[lo + 1], (d->nfree - lo - 1) * sizeof(*d->free));
			d->nfree--;
		}
		return;
	}
	if (lo < d->nfree && x.start + x.len == d->free[lo].start &&
	    (x.start + x.len) % d->chunk_slots) {
		d->free[lo].start = x.start;
		d->free[lo].len += x.len;
		return;
	}
	if (free_insert(d, lo, x))
		pr_warn("out of memory: %u delta slots lost", x.len);
}

static int64_t slots_alloc(struct sd *d, uint32_t n)
{
	size_t i;
	uint32_t start;

	for (i = 0; i < d->nfree; i++) {
		if (d->free[i].len < n)
			continue;
		start = d->free[i].start;
		d->free[i].start += n;
		d->free[i].len -= n;
		if (!d->free[i].len) {
			memmove(&d->free[i], &d->free[i + 1], (d->nfree - i - 1) * sizeof(*d->free));
			d->nfree--;
		}
		d->st.slots_used += n;
		return start;
	}
	return -1;
}

static void slots_release(struct sd *d, struct extent x, uint64_t now)
{
	struct pending_free *p;

	d->st.slots_used -= x.len;
	d->quar_slots += x.len;
	if (d->nquar == d->cap_quar) {
		size_t cap = d->cap_quar ? d->cap_quar * 2 : 64;

		p = realloc(d->quarantine, cap * sizeof(*p));
		if (!p) {
			/* Reuse at once: at worst one sample reads a wrong rule. */
			d->quar_slots -= x.len;
			slots_free(d, x);
			return;
		}
		d->quarantine = p;
		d->cap_quar = cap;
	}
	d->quarantine[d->nquar++] = (struct pending_free){ x, now };
}

/* Frees quarantined runs old enough; with wait, waits for the youngest and frees all. */
static void reclaim(struct sd *d, bool wait)
{
	uint64_t now = now_ns(), youngest = 0;
	size_t i, j = 0;

	if (!d->nquar)
		return;
	if (wait) {
		for (i = 0; i < d->nquar; i++)
			if (d->quarantine[i].freed_at > youngest)
				youngest = d->quarantine[i].freed_at;
		if (now < youngest + QUARANTINE_NS) {
			struct timespec ts = { 0, (long)(youngest + QUARANTINE_NS - now) };

			nanosleep(&ts, NULL);
		}
		now = youngest + QUARANTINE_NS;
	}
	for (i = 0; i < d->nquar; i++) {
		if (now >= d->quarantine[i].freed_at + QUARANTINE_NS) {
			d->quar_slots -= d->quarantine[i].x.len;
			slots_free(d, d->quarantine[i].x);
		} else
			d->quarantine[j++] = d->quarantine[i];
	}
	d->nquar = j;
}

static uint64_t bytes_allocated(const struct sd *d, size_t cap, size_t pages)
{
	return (uint64_t)cap * 4 + (uint64_t)pages * LUPE_UNWIND_PAGE_COST;
}

/* Adds a chunk if the budget allows it with room for `pages` more page entries.
 * Returns 0, -ENOSPC (budget), or the backend's error. */
static int grow(struct sd *d, size_t pages)
{
	size_t cap = d->cap + d->chunk_slots;
	uint32_t **chunks, *base;
	int err;

	if (d->nchunks == d->max_chunks ||
	    bytes_allocated(d, cap, d->st.pages_resident + pages) > d->budget)
		return -ENOSPC;
	chunks = realloc(d->chunks, (d->nchunks + 1) * sizeof(*chunks));
	if (!chunks)
		return -ENOMEM;
	d->chunks = chunks;
	err = be_result(d, d->be->ops->add_chunk(d->be, (uint32_t)d->nchunks, d->chunk_slots,
						  &base));
	if (err) {
		pr_warn("cannot add delta slot chunk %zu: %s", d->nchunks, lupe_errstr(err));
		return err;
	}
	d->chunks[d->nchunks++] = base;
	slots_free(d, (struct extent){ (uint32_t)d->cap, (uint32_t)d->chunk_slots });
	d->cap = cap;
	d->st.chunks = d->nchunks;
	d->st.slots_capacity = cap;
	return 0;
}

static uint32_t *slot_ptr(struct sd *d, uint32_t slot)
{
	return &d->chunks[slot / d->chunk_slots][slot % d->chunk_slots];
}

/* -- residency -- */

static struct lupe_unwind_page_key page_key(const struct dfile *f, size_t i)
{
	return (struct lupe_unwind_page_key){ f->id, f->table.pages[i].page };
}

static void release_slots(struct sd *d, struct dfile *f, uint64_t now)
{
	size_t i;

	if (f->contiguous) {
		slots_release(d, (struct extent){ f->page_slot[0], (uint32_t)f->table.nslots }, now);
		return;
	}
	for (i = 0; i < f->table.npages; i++)
		slots_release(d, (struct extent){ f->page_slot[i], f->table.pages[i].count }, now);
}

/* Takes f's pages out of BPF and frees its slots. BPF keeps the file entry (not
 * loaded), so it goes on recording when the file is sampled. */
static void make_absent(struct sd *d, struct dfile *f, bool keep_entry)
{
	struct lupe_unwind_file v = { 0 };
	uint64_t now = now_ns();
	size_t i;

	if (!f->resident)
		return;
	if (!d->detached) {
		/* The file first: BPF stops looking for pages before they go. */
		if (keep_entry) {
			if (d->be->ops->get_file(d->be, f->id, &v) == 0)
				f->last_sampled = v.last_sampled;
			v.flags = 0;
			be_result(d, d->be->ops->set_file(d->be, f->id, &v));
		}
		for (i = 0; i < f->table.npages; i++) {
			struct lupe_unwind_page_key k = page_key(f, i);
			int err = d->be->ops->delete_page(d->be, &k);

			if (err != -ENOENT)
				be_result(d, err);
		}
	}
	release_slots(d, f, now);
	d->st.pages_resident -= f->table.npages;
	d->st.files_resident--;
	f->resident = false;
	f->evicted_at = now;
}

static uint64_t last_used(struct sd *d, struct dfile *f)
{
	struct lupe_unwind_file v;

	if (!d->detached && d->be->ops->get_file(d->be, f->id, &v) == 0)
		f->last_sampled = v.last_sampled;
	return f->last_sampled > f->loaded_at ? f->last_sampled : f->loaded_at;
}

/* Evicts the resident file least recently used before `before` (other than keep).
 * Returns whether one was evicted. */
static bool evict_one(struct sd *d, const struct dfile *keep, uint64_t before)
{
	struct dfile *victim = NULL;
	uint64_t best = UINT64_MAX, used;
	size_t pos = 0;
	struct lupe_key k;
	void *v;

	while (lupe_hashmap__next(d->files, &pos, &k, &v)) {
		struct dfile *f = v;

		if (!f->resident || f == keep)
			continue;
		used = last_used(d, f);
		if (used < before && used < best) {
			best = used;
			victim = f;
		}
	}
	if (!victim)
		return false;
	pr_debug("file %016llx: table evicted (last used %llu ms ago)",
		 (unsigned long long)victim->id, (unsigned long long)(now_ns() - best) / 1000000);
	make_absent(d, victim, true);
	d->st.evictions++;
	return true;
}

/* Finds slots for every page of f: one run if possible, else a run per page. */
static bool place(struct sd *d, struct dfile *f)
{
	const struct lupe_unwind_table *t = &f->table;
	int64_t at;
	size_t i, j;

	at = slots_alloc(d, (uint32_t)t->nslots);
	if (at >= 0) {
		for (i = 0; i < t->npages; i++)
			f->page_slot[i] = (uint32_t)at + t->pages[i].first;
		f->contiguous = true;
		return true;
	}
	for (i = 0; i < t->npages; i++) {
		at = slots_alloc(d, t->pages[i].count);
		if (at < 0) {
			for (j = 0; j < i; j++) {
				slots_free(d, (struct extent){ f->page_slot[j], t->pages[j].count });
				d->st.slots_used -= t->pages[j].count;
			}
			return false;
		}
		f->page_slot[i] = (uint32_t)at;
	}
	f->contiguous = false;
	return true;
}

/* Puts f's table into BPF, making room by adding chunks or evicting files used before
 * `before`. Returns 0, -ENOSPC or a map error. */
static int make_resident(struct sd *d, struct dfile *f, uint64_t before)
{
	const struct lupe_unwind_table *t = &f->table;
	struct lupe_unwind_file fv = { .last_sampled = f->last_sampled,
				       .flags = LUPE_UNWIND_FILE_LOADED };
	struct lupe_unwind_file cur;
	size_t i, written = 0;
	bool pages_fit, room;
	int err;

	if (f->resident || d->detached)
		return 0;
	for (;;) {
		reclaim(d, false);
		pages_fit = d->st.pages_resident + t->npages <= d->max_pages;
		room = pages_fit &&
		       bytes_allocated(d, d->cap, d->st.pages_resident + t->npages) <= d->budget;
		if (room && place(d, f))
			break;
		/* Quarantined slots would do: wait for them once rather than evict more. */
		if (room && d->nquar && d->cap - d->st.slots_used >= t->nslots) {
			reclaim(d, true);
			continue;
		}
		if (pages_fit) {
			err = grow(d, t->npages);
			if (!err)
				continue;
			if (err != -ENOSPC)
				return err;
		}
		if (!evict_one(d, f, before)) {
			if (d->nquar) {
				reclaim(d, true);
				continue;
			}
			return -ENOSPC;
		}
	}
	if (d->be->ops->get_file(d->be, f->id, &cur) == 0)
		fv.last_sampled = cur.last_sampled;
	for (i = 0; i < t->npages; i++)
		memcpy(slot_ptr(d, f->page_slot[i]), &t->slots[t->pages[i].first],
		       (size_t)t->pages[i].count * sizeof(*t->slots));
	/* The slots are in place before any page points at them. */
	__atomic_thread_fence(__ATOMIC_RELEASE);
	for (i = 0; i < t->npages; i++) {
		struct lupe_unwind_page_key k = page_key(f, i);
		struct lupe_unwind_page v = { f->page_slot[i], t->pages[i].count };

		err = be_result(d, d->be->ops->update_page(d->be, &k, &v));
		if (err) {
			if (err == -E2BIG)
				pr_warn("page map full: lower the budget's page share or raise max_pages");
			goto undo;
		}
		written++;
	}
	err = be_result(d, d->be->ops->set_file(d->be, f->id, &fv));
	if (err)
		goto undo;
	f->resident = true;
	f->loaded_at = now_ns();
	d->st.pages_resident += t->npages;
	d->st.files_resident++;
	return 0;
undo:
	for (i = 0; i < written; i++) {
		struct lupe_unwind_page_key k = page_key(f, i);

		d->be->ops->delete_page(d->be, &k);
	}
	release_slots(d, f, now_ns());
	return err;
}

/* -- rules -- */

static int intern_rule(void *ctx, const struct lupe_unwind_rule *r, uint16_t *index)
{
	struct sd *d = ctx;
	struct lupe_key k = {
		(uint64_t)r->cfa_opcode | (uint64_t)r->fp_opcode << 8,
		(uint64_t)(uint32_t)r->cfa_param | (uint64_t)(uint32_t)r->fp_param << 32,
	};
	uintptr_t v = (uintptr_t)lupe_hashmap__get(d->rules, k);
	uint32_t idx;
	int err;

	if (v) {
		*index = (uint16_t)(v - 1);
		return 0;
	}
	idx = (uint32_t)lupe_hashmap__count(d->rules);
	if (idx >= LUPE_UNWIND_MAX_RULES) {
		pr_warn("rule array full (%d distinct rules)", LUPE_UNWIND_MAX_RULES);
		return -ENOSPC;
	}
	if (!d->detached) {
		err = be_result(d, d->be->ops->set_rule(d->be, idx, r));
		if (err)
			return err;
	}
	if (lupe_hashmap__set(d->rules, k, (void *)(uintptr_t)(idx + 1), NULL))
		return -ENOMEM;
	d->st.rules = idx + 1;
	*index = (uint16_t)idx;
	return 0;
}

/* -- the ops -- */

static int sd_new_pid(struct lupe_ebpf_handler *h, pid_t pid)
{
	struct sd *d = sd_of(h);
	int err;

	pthread_mutex_lock(&d->lock);
	err = lupe_hashmap__set(d->pids, (struct lupe_key){ (uint32_t)pid, 0 }, (void *)1, NULL);
	d->st.pids = lupe_hashmap__count(d->pids);
	pthread_mutex_unlock(&d->lock);
	return err;
}

static int sd_delete_pid(struct lupe_ebpf_handler *h, pid_t pid)
{
	struct sd *d = sd_of(h);
	int err = 0;

	pthread_mutex_lock(&d->lock);
	lupe_hashmap__delete(d->pids, (struct lupe_key){ (uint32_t)pid, 0 });
	d->st.pids = lupe_hashmap__count(d->pids);
	if (!d->detached) {
		err = d->be->ops->delete_pid(d->be, (uint32_t)pid);
		err = be_result(d, err == -ENOENT ? 0 : err);
	}
	pthread_mutex_unlock(&d->lock);
	return err;
}

static int mapping_op(struct sd *d, pid_t pid, const struct lupe_mapping *m, bool add)
{
	struct lupe_unwind_prefix px[MAX_PREFIXES];
	struct lupe_unwind_mapping_key keys[MAX_PREFIXES];
	struct lupe_unwind_mapping vals[MAX_PREFIXES];
	struct lupe_unwind_mapping v = {
		.file_id = lupe_file_id_host(m->file_id), .bias = m->bias,
		.start = m->vaddr, .end = m->vaddr + m->length,
	};
	int n, i, err = 0;

	if (!m->length || v.end < v.start)
		return -EINVAL;
	n = lupe_unwind_prefixes(v.start, v.end, px, MAX_PREFIXES);
	if (n < 0)
		return n;
	if (!d->detached) {
		for (i = 0; i < n; i++) {
			keys[i] = (struct lupe_unwind_mapping_key){
				.prefixlen = 32 + px[i].bits,
				.pid_be = htobe32((uint32_t)pid),
				.addr_be = htobe64(px[i].addr),
			};
			vals[i] = v;
		}
		if (add) {
			err = be_result(d, d->be->ops->update_mappings(d->be, keys, vals, (size_t)n));
			if (err == -E2BIG || err == -ENOSPC || err == -ENOMEM)
				pr_warn("pid %d: mapping map full: raise unwind_max_prefixes", pid);
		} else {
			err = be_result(d, d->be->ops->delete_mappings(d->be, keys, (size_t)n));
		}
	}
	if (add) {
		d->st.mappings++;
		d->st.prefixes += n;
	} else if (d->st.mappings) {
		d->st.mappings--;
		d->st.prefixes -= d->st.prefixes >= (uint64_t)n ? (uint64_t)n : d->st.prefixes;
	}
	return err;
}

static int sd_add_mapping(struct lupe_ebpf_handler *h, pid_t pid, const struct lupe_mapping *m)
{
	struct sd *d = sd_of(h);
	int err;

	pthread_mutex_lock(&d->lock);
	err = mapping_op(d, pid, m, true);
	pthread_mutex_unlock(&d->lock);
	return err;
}

static int sd_delete_mapping(struct lupe_ebpf_handler *h, pid_t pid, const struct lupe_mapping *m)
{
	struct sd *d = sd_of(h);
	int err;

	pthread_mutex_lock(&d->lock);
	err = mapping_op(d, pid, m, false);
	pthread_mutex_unlock(&d->lock);
	return err;
}

static size_t table_bytes(const struct lupe_unwind_table *t)
{
	return t->nslots * sizeof(*t->slots) + t->npages * (sizeof(*t->pages) + sizeof(uint32_t));
}

static void dfile_free(struct sd *d, struct dfile *f)
{
	if (!f)
		return;
	d->st.table_bytes_user -= table_bytes(&f->table);
	lupe_unwind_table_release(&f->table);
	free(f->page_slot);
	free(f);
}

static void unload_locked(struct sd *d, uint64_t id)
{
	struct dfile *f = lupe_hashmap__delete(d->files, (struct lupe_key){ id, 0 });
	int err;

	if (!f)
		return;
	make_absent(d, f, false);
	if (!d->detached) {
		err = d->be->ops->delete_file(d->be, id);
		be_result(d, err == -ENOENT ? 0 : err);
	}
	dfile_free(d, f);
	d->st.files = lupe_hashmap__count(d->files);
}

static int sd_load_deltas(struct lupe_ebpf_handler *h, uint64_t id,
			  const struct lupe_interval_data *data)
{
	struct sd *d = sd_of(h);
	struct dfile *f = NULL;
	size_t i;
	int err;

	pthread_mutex_lock(&d->lock);
	unload_locked(d, id);
	f = calloc(1, sizeof(*f));
	if (!f) {
		err = -ENOMEM;
		goto out;
	}
	f->id = id;
	err = lupe_unwind_table_encode(data, intern_rule, d, &f->table);
	if (err) {
		d->st.rejected++;
		pr_debug("file %016llx: %zu deltas not encoded: %s", (unsigned long long)id,
			 data->count, lupe_errstr(err));
		goto out;
	}
	for (i = 0; i < data->count; i++) {
		struct lupe_unwind_rule r;

		if (!lupe_unwind_rule_of(&data->deltas[i], &r))
			d->st.bad_rules++;
	}
	for (i = 0; i < f->table.npages; i++) {
		if (f->table.pages[i].count > d->chunk_slots) {
			d->st.rejected++;
			err = -E2BIG;
			goto out;
		}
	}
	if (bytes_allocated(d, f->table.nslots, f->table.npages) > d->budget / 2 ||
	    f->table.npages > d->max_pages / 2) {
		d->st.rejected++;
		pr_warn("file %016llx: a table of %zu slots and %zu pages exceeds half the unwinding "
			"budget (%zu bytes): it falls back to frame pointers; raise the budget",
			(unsigned long long)id, f->table.nslots, f->table.npages, d->budget);
		err = -E2BIG;
		goto out;
	}
	f->page_slot = calloc(f->table.npages ? f->table.npages : 1, sizeof(*f->page_slot));
	if (!f->page_slot) {
		err = -ENOMEM;
		goto out;
	}
	if (lupe_hashmap__set(d->files, (struct lupe_key){ id, 0 }, f, NULL)) {
		err = -ENOMEM;
		goto out;
	}
	d->st.table_bytes_user += table_bytes(&f->table);
	d->st.files = lupe_hashmap__count(d->files);
	d->st.loads++;
	/* A table that finds no room stays known: it is reloaded when room is made. */
	if (!d->detached) {
		struct lupe_unwind_file fv = { 0 };

		be_result(d, d->be->ops->set_file(d->be, id, &fv));
	}
	f->evicted_at = now_ns();
	err = make_resident(d, f, UINT64_MAX);
	if (err == -ENOSPC)
		d->st.no_room++;
	/* Known either way (map errors are counted where they happen); the manager will
	 * unload it. */
	err = 0;
	f = NULL;
out:
	if (f) {
		lupe_unwind_table_release(&f->table);
		free(f->page_slot);
		free(f);
	}
	pthread_mutex_unlock(&d->lock);
	return err;
}

static int sd_unload_deltas(struct lupe_ebpf_handler *h, uint64_t id)
{
	struct sd *d = sd_of(h);

	pthread_mutex_lock(&d->lock);
	if (lupe_hashmap__get(d->files, (struct lupe_key){ id, 0 }))
		d->st.unloads++;
	unload_locked(d, id);
	pthread_mutex_unlock(&d->lock);
	return 0;
}

static void sd_free(struct lupe_ebpf_handler *h)
{
	struct sd *d = sd_of(h);
	size_t pos = 0;
	struct lupe_key k;
	void *v;

	if (!d)
		return;
	if (d->files) {
		/* Everything goes with the backend: no map writes. */
		d->detached = true;
		while (lupe_hashmap__next(d->files, &pos, &k, &v))
			dfile_free(d, v);
	}
	lupe_hashmap__free(d->files);
	lupe_hashmap__free(d->pids);
	lupe_hashmap__free(d->rules);
	if (d->be)
		d->be->ops->free(d->be);
	free(d->chunks);
	free(d->free);
	free(d->quarantine);
	pthread_mutex_destroy(&d->lock);
	free(d);
}

static const struct lupe_ebpf_handler_ops sd_ops = {
	.new_pid = sd_new_pid,
	.delete_pid = sd_delete_pid,
	.add_mapping = sd_add_mapping,
	.delete_mapping = sd_delete_mapping,
	.load_deltas = sd_load_deltas,
	.unload_deltas = sd_unload_deltas,
	.free = sd_free,
};

bool lupe_stackdeltas_is(const struct lupe_ebpf_handler *h)
{
	return h && h->ops == &sd_ops;
}

#define OPT(opts, field, def) \
	((opts) && (opts)->sz > offsetof(typeof(*(opts)), field) && (opts)->field ? \
	 (opts)->field : (def))

struct lupe_ebpf_handler *lupe_stackdeltas_new(struct lupe_unwind_backend *be,
					       const struct lupe_stackdeltas_opts *opts)
{
	struct lupe_unwind_rule invalid = { 0 };
	struct sd *d;
	uint16_t idx;
	int err = -ENOMEM;

	if (!be) {
		errno = EINVAL;
		return NULL;
	}
	d = calloc(1, sizeof(*d));
	if (!d) {
		be->ops->free(be);
		errno = ENOMEM;
		return NULL;
	}
	d->h.ops = &sd_ops;
	d->be = be;
	pthread_mutex_init(&d->lock, NULL);
	d->budget = OPT(opts, budget_bytes, DEFAULT_BUDGET);
	d->max_pages = OPT(opts, max_pages, DEFAULT_MAX_PAGES);
	d->chunk_slots = OPT(opts, chunk_slots, (size_t)1 << LUPE_UNWIND_CHUNK_BITS);
	if (d->chunk_slots < MIN_CHUNK_SLOTS || (d->chunk_slots & (d->chunk_slots - 1)) ||
	    d->chunk_slots > ((size_t)1 << 24)) {
		pr_warn("chunk of %zu slots: expected a power of two from %d to 2^24",
			d->chunk_slots, MIN_CHUNK_SLOTS);
		err = -EINVAL;
		goto err_out;
	}
	d->max_chunks = OPT(opts, max_chunks, d->budget / (d->chunk_slots * 4));
	if (d->budget < d->chunk_slots * 4 || d->budget > ((size_t)1 << 34) || !d->max_chunks ||
	    d->max_chunks * d->chunk_slots > UINT32_MAX) {
		pr_warn("unwinding budget %zu bytes: expected one chunk (%zu bytes) to 16 GiB",
			d->budget, d->chunk_slots * 4);
		err = -EINVAL;
		goto err_out;
	}
	d->st.budget_bytes = d->budget;
	d->pids = lupe_hashmap__new();
	d->files = lupe_hashmap__new();
	d->rules = lupe_hashmap__new();
	if (!d->pids || !d->files || !d->rules)
		goto err_out;
	/* One chunk up front: a handler that cannot get one fails now, not per file. */
	err = grow(d, 0);
	if (err)
		goto err_out;
	/* Rule 0 is INVALID: zeroed array entries mean "no valid rule". */
	err = intern_rule(d, &invalid, &idx);
	if (err)
		goto err_out;
	return &d->h;
err_out:
	sd_free(&d->h);
	errno = -err;
	return NULL;
}

int lupe_stackdeltas__commit(struct lupe_ebpf_handler *h, pid_t pid, uint64_t synced_at)
{
	struct lupe_unwind_pid v = { synced_at };
	struct sd *d;
	int err = 0;

	if (!lupe_stackdeltas_is(h) || pid <= 0)
		return -EINVAL;
	d = sd_of(h);
	pthread_mutex_lock(&d->lock);
	if (!lupe_hashmap__get(d->pids, (struct lupe_key){ (uint32_t)pid, 0 })) {
		err = -ENOENT;
		goto out;
	}
	if (!d->detached) {
		err = be_result(d, d->be->ops->set_pid(d->be, (uint32_t)pid, &v));
		if (err == -E2BIG)
			pr_warn("pid %d: unwinding pid map full: raise max_pids", pid);
	}
	if (!err)
		d->st.pids_committed++;
out:
	pthread_mutex_unlock(&d->lock);
	return err;
}

struct candidate {
	struct dfile *f;
	uint64_t sampled;
};

static int cmp_candidate(const void *a, const void *b)
{
	uint64_t x = ((const struct candidate *)a)->sampled, y = ((const struct candidate *)b)->sampled;

	return x > y ? -1 : x < y; /* most recently sampled first */
}

int lupe_stackdeltas__maintain(struct lupe_ebpf_handler *h, uint64_t now, uint64_t interval_ns)
{
	struct candidate *c = NULL;
	struct lupe_unwind_file v;
	size_t n = 0, i, pos = 0;
	struct lupe_key k;
	struct sd *d;
	void *val;
	int done = 0;

	if (!lupe_stackdeltas_is(h))
		return -EINVAL;
	d = sd_of(h);
	pthread_mutex_lock(&d->lock);
	if (d->detached || (interval_ns && now - d->last_maintain < interval_ns))
		goto out;
	d->last_maintain = now;
	reclaim(d, false);
	if (d->st.files_resident == d->st.files)
		goto out;
	c = malloc(d->st.files * sizeof(*c));
	if (!c) {
		done = -ENOMEM;
		goto out;
	}
	while (lupe_hashmap__next(d->files, &pos, &k, &val)) {
		struct dfile *f = val;

		if (f->resident || d->be->ops->get_file(d->be, f->id, &v))
			continue;
		f->last_sampled = v.last_sampled;
		if (v.last_sampled > f->evicted_at && n < d->st.files)
			c[n++] = (struct candidate){ f, v.last_sampled };
	}
	qsort(c, n, sizeof(*c), cmp_candidate);
	for (i = 0; i < n; i++) {
		uint64_t before = c[i].sampled > RELOAD_HYSTERESIS_NS ?
				  c[i].sampled - RELOAD_HYSTERESIS_NS : 0;
		int err = make_resident(d, c[i].f, before);

		if (err) {
			d->st.no_room++;
			/* Not sampled since this attempt: not retried until it is again. */
			c[i].f->evicted_at = now;
			continue;
		}
		d->st.reloads++;
		done++;
	}
out:
	free(c);
	pthread_mutex_unlock(&d->lock);
	return done;
}

void lupe_stackdeltas__detach(struct lupe_ebpf_handler *h)
{
	struct sd *d;

	if (!lupe_stackdeltas_is(h))
		return;
	d = sd_of(h);
	pthread_mutex_lock(&d->lock);
	d->detached = true;
	pthread_mutex_unlock(&d->lock);
}

void lupe_stackdeltas__stats(struct lupe_ebpf_handler *h, struct lupe_stackdeltas_stats *out)
{
	struct sd *d;

	memset(out, 0, sizeof(*out));
	if (!lupe_stackdeltas_is(h))
		return;
	d = sd_of(h);
	pthread_mutex_lock(&d->lock);
	*out = d->st;
	out->bytes_used = out->slots_used * 4 + out->pages_resident * LUPE_UNWIND_PAGE_COST;
	out->bytes_allocated = bytes_allocated(d, d->cap, out->pages_resident);
	pthread_mutex_unlock(&d->lock);
}

/* ---- the BPF backend ------------------------------------------------------------------- */

struct bpf_chunk {
	int fd;
	void *mem;
	size_t len;
};

struct bpf_be {
	struct lupe_unwind_backend b;
	struct lupe_unwind_map_fds fd;
	struct bpf_chunk *chunks;
	size_t nchunks;
	bool lpm_no_batch;      /* the kernel has no batch operations on LPM tries */
};

static struct bpf_be *bpf_be_of(struct lupe_unwind_backend *b)
{
	return (struct bpf_be *)b;
}

static int sys_result(int ret)
{
	return ret ? -errno : 0;
}

static int bb_set_pid(struct lupe_unwind_backend *b, uint32_t pid, const struct lupe_unwind_pid *v)
{
	return sys_result(bpf_map_update_elem(bpf_be_of(b)->fd.pids, &pid, v, BPF_ANY));
}

static int bb_delete_pid(struct lupe_unwind_backend *b, uint32_t pid)
{
	return sys_result(bpf_map_delete_elem(bpf_be_of(b)->fd.pids, &pid));
}

/* Batches cost a syscall per mapping rather than per prefix (LPM tries have them since
 * 5.6); where they are missing, one element at a time. */
static bool no_batch(int err)
{
	return err == -EINVAL || err == -EOPNOTSUPP || err == -ENOTSUP || err == -524 /* ENOTSUPP */;
}

static int bb_update_mappings(struct lupe_unwind_backend *b, const struct lupe_unwind_mapping_key *k,
			      const struct lupe_unwind_mapping *v, size_t n)
{
	struct bpf_be *be = bpf_be_of(b);
	LIBBPF_OPTS(bpf_map_batch_opts, o);
	__u32 count = (__u32)n;
	size_t i;
	int err = 0;

	if (!be->lpm_no_batch) {
		err = sys_result(bpf_map_update_batch(be->fd.mappings, k, v, &count, &o));
		if (!no_batch(err) || count)
			return err;
		be->lpm_no_batch = true;
	}
	for (i = 0; i < n && !err; i++)
		err = sys_result(bpf_map_update_elem(be->fd.mappings, &k[i], &v[i], BPF_ANY));
	return err;
}

static int bb_delete_mappings(struct lupe_unwind_backend *b, const struct lupe_unwind_mapping_key *k,
			      size_t n)
{
	struct bpf_be *be = bpf_be_of(b);
	LIBBPF_OPTS(bpf_map_batch_opts, o);
	size_t i = 0;
	__u32 count;
	int err, first = 0;

	while (i < n) {
		if (be->lpm_no_batch) {
			err = sys_result(bpf_map_delete_elem(be->fd.mappings, &k[i]));
			count = 1;
		} else {
			count = (__u32)(n - i);
			err = sys_result(bpf_map_delete_batch(be->fd.mappings, &k[i], &count, &o));
			if (no_batch(err) && !count) {
				be->lpm_no_batch = true;
				continue;
			}
			/* A batch stops at its first failure, counting what went before. */
			if (err)
				count++;
		}
		if (err && err != -ENOENT && !first)
			first = err;
		i += count;
	}
	return first;
}

static int bb_set_file(struct lupe_unwind_backend *b, uint64_t id, const struct lupe_unwind_file *v)
{
	return sys_result(bpf_map_update_elem(bpf_be_of(b)->fd.files, &id, v, BPF_ANY));
}

static int bb_get_file(struct lupe_unwind_backend *b, uint64_t id, struct lupe_unwind_file *out)
{
	return sys_result(bpf_map_lookup_elem(bpf_be_of(b)->fd.files, &id, out));
}

static int bb_delete_file(struct lupe_unwind_backend *b, uint64_t id)
{
	return sys_result(bpf_map_delete_elem(bpf_be_of(b)->fd.files, &id));
}

static int bb_update_page(struct lupe_unwind_backend *b, const struct lupe_unwind_page_key *k,
			  const struct lupe_unwind_page *v)
{
	return sys_result(bpf_map_update_elem(bpf_be_of(b)->fd.pages, k, v, BPF_ANY));
}

static int bb_delete_page(struct lupe_unwind_backend *b, const struct lupe_unwind_page_key *k)
{
	return sys_result(bpf_map_delete_elem(bpf_be_of(b)->fd.pages, k));
}

static int bb_set_rule(struct lupe_unwind_backend *b, uint32_t idx, const struct lupe_unwind_rule *r)
{
	return sys_result(bpf_map_update_elem(bpf_be_of(b)->fd.rules, &idx, r, BPF_ANY));
}

static size_t page_round(size_t n)
{
	size_t pg = (size_t)sysconf(_SC_PAGESIZE);

	return (n + pg - 1) / pg * pg;
}

/* A new chunk, mmap'ed for writing, put in its outer slot (an RCU grace period for the
 * map-in-map update: only once per MiB of tables). */
static int bb_add_chunk(struct lupe_unwind_backend *b, uint32_t index, size_t nslots,
			uint32_t **base)
{
	LIBBPF_OPTS(bpf_map_create_opts, o, .map_flags = BPF_F_MMAPABLE);
	struct bpf_be *be = bpf_be_of(b);
	size_t len = page_round(nslots / 2 * sizeof(struct lupe_unwind_slots));
	struct bpf_chunk *grown;
	void *mem;
	int fd, err;

	if (nslots != (size_t)1 << LUPE_UNWIND_CHUNK_BITS)
		return -EINVAL;
	grown = realloc(be->chunks, (be->nchunks + 1) * sizeof(*grown));
	if (!grown)
		return -ENOMEM;
	be->chunks = grown;
	fd = bpf_map_create(BPF_MAP_TYPE_ARRAY, "lupe_slots", sizeof(__u32),
			    sizeof(struct lupe_unwind_slots), (__u32)(nslots / 2), &o);
	if (fd < 0)
		return -errno;
	mem = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (mem == MAP_FAILED) {
		err = -errno;
		close(fd);
		return err;
	}
	if (bpf_map_update_elem(be->fd.tables, &index, &fd, BPF_ANY)) {
		err = -errno;
		if (err == -E2BIG)
			err = -ENOSPC;
		munmap(mem, len);
		close(fd);
		return err;
	}
	be->chunks[be->nchunks++] = (struct bpf_chunk){ fd, mem, len };
	*base = mem;
	return 0;
}

static void bb_free(struct lupe_unwind_backend *b)
{
	struct bpf_be *be = bpf_be_of(b);
	int *fds = &be->fd.pids;
	size_t i;

	if (!be)
		return;
	for (i = 0; i < sizeof(be->fd) / sizeof(int); i++)
		if (fds[i] >= 0)
			close(fds[i]);
	for (i = 0; i < be->nchunks; i++) {
		munmap(be->chunks[i].mem, be->chunks[i].len);
		close(be->chunks[i].fd);
	}
	free(be->chunks);
	free(be);
}

static const struct lupe_unwind_backend_ops bpf_be_ops = {
	.set_pid = bb_set_pid,
	.delete_pid = bb_delete_pid,
	.update_mappings = bb_update_mappings,
	.delete_mappings = bb_delete_mappings,
	.set_file = bb_set_file,
	.get_file = bb_get_file,
	.delete_file = bb_delete_file,
	.update_page = bb_update_page,
	.delete_page = bb_delete_page,
	.set_rule = bb_set_rule,
	.add_chunk = bb_add_chunk,
	.free = bb_free,
};

struct lupe_unwind_backend *lupe_unwind_backend_bpf_new(const struct lupe_unwind_map_fds *fds)
{
	struct bpf_be *be;
	const int *in = &fds->pids;
	int *out;
	size_t i;
	int err;

	_Static_assert(sizeof(struct lupe_unwind_map_fds) == 6 * sizeof(int), "six fds");
	be = calloc(1, sizeof(*be));
	if (!be) {
		errno = ENOMEM;
		return NULL;
	}
	be->b.ops = &bpf_be_ops;
	out = &be->fd.pids;
	for (i = 0; i < 6; i++)
		out[i] = -1;
	for (i = 0; i < 6; i++) {
		out[i] = fcntl(in[i], F_DUPFD_CLOEXEC, 0);
		if (out[i] < 0) {
			err = errno;
			bb_free(&be->b);
			errno = err;
			return NULL;
		}
	}
	return &be->b;
}
