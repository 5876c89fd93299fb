/* An open-addressing hash map from a 128-bit key to a pointer. One map type serves every
 * table in the runtime: pid -> process ({pid, 0}), file ID -> executable ({hi, lo}),
 * (device, inode) -> ELF info ({dev, ino}). Not thread-safe: owners lock. */
#ifndef LUPE_HASHMAP_H
#define LUPE_HASHMAP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct lupe_key {
	uint64_t a, b;
};

struct lupe_hashmap;

/* Returns NULL and sets errno (ENOMEM) on failure. */
struct lupe_hashmap *lupe_hashmap__new(void);
/* Frees the table only; values are the caller's (iterate first to free them). NULL ok. */
void lupe_hashmap__free(struct lupe_hashmap *m);
/* Frees each value with free_value (e.g. free), then the table. NULL ok. */
void lupe_hashmap__free_values(struct lupe_hashmap *m, void (*free_value)(void *));

/* Returns the value or NULL. */
void *lupe_hashmap__get(const struct lupe_hashmap *m, struct lupe_key k);
/* Inserts or replaces; *old (if non-NULL) receives the replaced value or NULL.
 * Returns 0 or -ENOMEM (the map is unchanged then). */
int lupe_hashmap__set(struct lupe_hashmap *m, struct lupe_key k, void *v, void **old);
/* Removes k; returns its value, or NULL if absent. */
void *lupe_hashmap__delete(struct lupe_hashmap *m, struct lupe_key k);
size_t lupe_hashmap__count(const struct lupe_hashmap *m);
/* Bytes the table itself occupies (not the values). */
size_t lupe_hashmap__mem(const struct lupe_hashmap *m);

/* Iteration: start with *pos = 0; returns false at the end. Deleting the entry just
 * returned is allowed during iteration; inserting is not. */
bool lupe_hashmap__next(const struct lupe_hashmap *m, size_t *pos, struct lupe_key *k, void **v);

#endif
