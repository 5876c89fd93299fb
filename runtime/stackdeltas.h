/* Stack deltas in BPF maps: the process manager's real eBPF handler for the native
 * unwinder (bpf/unwind.bpf.h; bpf/sampler.h describes the maps).
 *
 *   mappings   each executable mapping of a pid becomes the minimal set of aligned
 *              power-of-two prefixes covering it in an LPM trie (deleted by recomputing
 *              the same set);
 *   tables     one per file, shared by every process that maps it: the file's deltas cut
 *              into 64 KiB pages, each page a sorted run of 4-byte slots (low address
 *              bits, rule index) in a slot space made of 1 MiB chunks, found through a
 *              page hash; rules are deduplicated in a rule array;
 *   budget     chunks plus page entries stay under a byte budget. Chunks are added as
 *              tables need room; when the budget is reached the least recently sampled
 *              files (BPF records when each was last sampled) are evicted. An evicted file's frames fall back to frame pointers; its table
 *              stays encoded in user space and is reloaded when it is sampled again and
 *              colder files can make room (lupe_stackdeltas__maintain).
 *   pids       a pid is unwound with deltas only once lupe_stackdeltas__commit has marked
 *              it, after a complete synchronization; BPF ignores the mark if the pid
 *              exec'd after the synchronization began.
 *
 * The map operations go through a backend (the BPF one, or a fake in tests), so the
 * encoding, the allocation and the eviction policy are testable without BPF.
 * Thread-safe: the handler takes its own lock. */
#ifndef LUPE_STACKDELTAS_H
#define LUPE_STACKDELTAS_H

#include <linux/types.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "procmgr.h"
#include "sampler.h"

/* ---- encoding (pure functions) ---------------------------------------------------- */

/* An LPM prefix: the addresses whose top `bits` bits equal addr's. */
struct lupe_unwind_prefix {
	uint64_t addr;
	unsigned int bits;
};

/* The minimal set of aligned power-of-two blocks that covers [start, end) exactly, in
 * ascending order, into out[0..max). Returns the count (at most 128), -EINVAL when
 * start >= end, -E2BIG when max is too small. */
int lupe_unwind_prefixes(uint64_t start, uint64_t end, struct lupe_unwind_prefix *out,
			 size_t max);

/* One page of an encoded table: slots[first .. first + count) of the table. */
struct lupe_unwind_table_page {
	uint64_t page;                  /* ELF address >> LUPE_UNWIND_PAGE_BITS */
	uint32_t first, count;
};

/* A file's deltas as BPF reads them. Pages ascend; a page's slots ascend by address and
 * its first slot is at address 0 of the page (the rule in effect when the page begins).
 * A page where no delta starts and whose carried rule is INVALID is left out (BPF then
 * reports LUPE_UNWIND_ERR_NO_DELTA, as past the last page). */
struct lupe_unwind_table {
	struct lupe_unwind_table_page *pages;
	size_t npages;
	uint32_t *slots;                /* (address & 0xffff) | rule << 16 */
	size_t nslots;
};

/* Gives the index of a rule in the rule array (interning it if new). 0 is INVALID. */
typedef int (*lupe_unwind_rule_fn)(void *ctx, const struct lupe_unwind_rule *rule,
				   uint16_t *index);

/* The canonical rule of a delta: commands carry no rbp rule; opcodes out of range become
 * INVALID. Returns whether the delta was well-formed. */
bool lupe_unwind_rule_of(const struct lupe_stack_delta *d, struct lupe_unwind_rule *out);

/* Encodes d (sorted by address; at equal addresses the last wins) into *out, whose arrays
 * are malloc'd and owned by the caller (lupe_unwind_table_release). Returns 0, -EINVAL
 * (unsorted), -E2BIG (more than 2^20 pages: no real file spans 64 GiB of code), -ENOMEM,
 * or what intern returned. */
int lupe_unwind_table_encode(const struct lupe_interval_data *d, lupe_unwind_rule_fn intern,
			     void *ctx, struct lupe_unwind_table *out);
void lupe_unwind_table_release(struct lupe_unwind_table *t);

/* ---- the map backend ------------------------------------------------------------------ */

/* Map operations, each returning 0 or a negative errno. Keys and values are bpf/sampler.h's
 * (mapping keys already big-endian). */
struct lupe_unwind_backend;
struct lupe_unwind_backend_ops {
	int (*set_pid)(struct lupe_unwind_backend *b, uint32_t pid, const struct lupe_unwind_pid *v);
	int (*delete_pid)(struct lupe_unwind_backend *b, uint32_t pid);
	/* n entries at once (a mapping's prefixes); deleting absent keys is not an error. */
	int (*update_mappings)(struct lupe_unwind_backend *b, const struct lupe_unwind_mapping_key *k,
			       const struct lupe_unwind_mapping *v, size_t n);
	int (*delete_mappings)(struct lupe_unwind_backend *b, const struct lupe_unwind_mapping_key *k,
			       size_t n);
	int (*set_file)(struct lupe_unwind_backend *b, uint64_t file_id,
			const struct lupe_unwind_file *v);
	int (*get_file)(struct lupe_unwind_backend *b, uint64_t file_id, struct lupe_unwind_file *out);
	int (*delete_file)(struct lupe_unwind_backend *b, uint64_t file_id);
	int (*update_page)(struct lupe_unwind_backend *b, const struct lupe_unwind_page_key *k,
			   const struct lupe_unwind_page *v);
	int (*delete_page)(struct lupe_unwind_backend *b, const struct lupe_unwind_page_key *k);
	int (*set_rule)(struct lupe_unwind_backend *b, uint32_t index, const struct lupe_unwind_rule *r);
	/* Adds chunk number index (slots index * chunk_slots onwards) of nslots slots;
	 * *base receives its memory (zeroed), writable by the caller until free. */
	int (*add_chunk)(struct lupe_unwind_backend *b, uint32_t index, size_t nslots,
			 uint32_t **base);
	void (*free)(struct lupe_unwind_backend *b);
};
struct lupe_unwind_backend {
	const struct lupe_unwind_backend_ops *ops;
};

/* The sampler's maps, for the BPF backend (runtime/tracer.c fills it). */
struct lupe_unwind_map_fds {
	int pids, mappings, files, pages, rules, tables;
};
/* A backend over the sampler's maps. The fds are duplicated: the backend outlives the
 * tracer if it must. NULL + errno on failure. */
struct lupe_unwind_backend *lupe_unwind_backend_bpf_new(const struct lupe_unwind_map_fds *fds);

/* ---- the handler ---------------------------------------------------------------------- */

struct lupe_stackdeltas_opts {
	size_t sz;
	size_t budget_bytes;     /* chunks + page entries, >= one chunk; 0: 64 MiB */
	size_t max_pages;        /* page entries BPF can hold (its map's size); 0: 65536 */
	size_t max_chunks;       /* chunks BPF can hold (its map's size); 0: the budget's */
	/* Slots per chunk, a power of two >= 1024; 0: 1 << LUPE_UNWIND_CHUNK_BITS, which is
	 * what BPF reads (smaller ones are for tests of the fake backend). */
	size_t chunk_slots;
	size_t :0;
};

/* Bytes one page entry is counted for: a BPF hash element (key, value, overhead). */
#define LUPE_UNWIND_PAGE_COST 96

/* Creates the handler over be, which it owns from now on (also on failure). Hand the
 * handler to the process manager (lupe_procmgr_opts.ebpf), which then owns it.
 * NULL + errno (ENOMEM, EINVAL, or the backend's error adding the first chunk). */
struct lupe_ebpf_handler *lupe_stackdeltas_new(struct lupe_unwind_backend *be,
					       const struct lupe_stackdeltas_opts *opts);
/* Whether h was made by lupe_stackdeltas_new (the functions below accept only those). */
bool lupe_stackdeltas_is(const struct lupe_ebpf_handler *h);

/* The manager has synchronized pid from maps read at or after ktime synced_at: BPF may
 * now unwind it with deltas. Call after every successful lupe_procmgr__synchronize_process.
 * Returns 0, -ENOENT (the handler does not track pid: gone, or no executable mapping),
 * or the map error. */
int lupe_stackdeltas__commit(struct lupe_ebpf_handler *h, pid_t pid, uint64_t synced_at);
/* Reloads evicted tables that BPF sampled since their eviction when colder ones can make
 * room; does the work at most once per interval_ns (0: every call). Returns how many were
 * reloaded. now is a CLOCK_MONOTONIC ktime. */
int lupe_stackdeltas__maintain(struct lupe_ebpf_handler *h, uint64_t now, uint64_t interval_ns);
/* From now on the handler writes no map: for a shutdown that frees everything at once. */
void lupe_stackdeltas__detach(struct lupe_ebpf_handler *h);

struct lupe_stackdeltas_stats {
	uint64_t pids;               /* tracked by the handler */
	uint64_t pids_committed;     /* commits that marked a pid */
	uint64_t mappings;           /* live mappings written */
	uint64_t prefixes;           /* LPM entries those take */
	uint64_t files;              /* tables known (resident or not) */
	uint64_t files_resident;     /* tables in BPF */
	uint64_t loads, unloads;     /* load_deltas / unload_deltas that took effect */
	uint64_t evictions;          /* tables taken out of BPF for room */
	uint64_t reloads;            /* evicted tables put back */
	uint64_t no_room;            /* loads or reloads that found no room */
	uint64_t rejected;           /* tables refused: malformed, bigger than half the
				      * budget, rule array full */
	uint64_t bad_rules;          /* deltas with an out-of-range rule (made INVALID) */
	uint64_t rules;              /* distinct rules */
	uint64_t slots_used, slots_capacity, pages_resident;
	uint64_t bytes_used;         /* slots in use * 4 + pages * LUPE_UNWIND_PAGE_COST */
	uint64_t bytes_allocated;    /* chunks * slots * 4 + pages * LUPE_UNWIND_PAGE_COST */
	uint64_t budget_bytes;
	uint64_t table_bytes_user;   /* user-space copies of the encoded tables */
	uint64_t map_errors;         /* backend operations that failed */
	uint64_t chunks;             /* slot chunks added */
};
void lupe_stackdeltas__stats(struct lupe_ebpf_handler *h, struct lupe_stackdeltas_stats *out);

#endif
