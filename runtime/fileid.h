/* File IDs. The 128-bit ID names an executable in outputs: the first 16 bytes of
 * SHA-256(first min(4096,size) bytes || last min(4096,size) bytes || size as big-endian
 * u64), read as big-endian hi then lo. BPF maps see only the 64-bit host ID (= hi); the
 * file-ID mapper maps host IDs back to 128-bit IDs. */
#ifndef LUPE_FILEID_H
#define LUPE_FILEID_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct lupe_file_id {
	uint64_t hi, lo;
};

#define LUPE_FILE_ID_HEX_LEN 32

/* Hashes an open file (pread; the file offset is untouched). Returns 0 or -errno
 * (-EIO on a short read of a file that shrank). */
int lupe_file_id_from_fd(int fd, struct lupe_file_id *out);
/* Hashes a file held in memory (the vDSO, fuzz inputs). */
void lupe_file_id_from_bytes(const void *buf, size_t len, struct lupe_file_id *out);
static inline uint64_t lupe_file_id_host(struct lupe_file_id id)
{
	return id.hi;
}
/* Writes 32 lower-case hex digits and a NUL into buf[33]. Returns buf. */
char *lupe_file_id_format(struct lupe_file_id id, char *buf);
/* Parses exactly 32 hex digits. Returns 0 or -EINVAL. */
int lupe_file_id_parse(const char *s, struct lupe_file_id *out);

/* The file-ID mapper: host ID -> 128-bit ID. An interface so tests can use a plain map and
 * the runtime a bounded LRU. Implementations are not thread-safe; procmgr locks. */
struct lupe_fileid_mapper;
struct lupe_fileid_mapper_ops {
	/* Returns true and fills *out if known. */
	bool (*get)(struct lupe_fileid_mapper *m, uint64_t host, struct lupe_file_id *out);
	/* Returns 0 or -ENOMEM. */
	int (*set)(struct lupe_fileid_mapper *m, uint64_t host, struct lupe_file_id id);
	void (*free)(struct lupe_fileid_mapper *m);
};
struct lupe_fileid_mapper {
	const struct lupe_fileid_mapper_ops *ops;
};

/* Unbounded; for tests and small tools. NULL + errno on failure. */
struct lupe_fileid_mapper *lupe_fileid_mapper_new_map(void);
/* Bounded LRU: the least recently used entry goes when capacity is reached (get refreshes).
 * capacity 0 means the default, 32768. NULL + errno on failure. */
struct lupe_fileid_mapper *lupe_fileid_mapper_new_lru(size_t capacity);
/* Evictions so far (LRU only; 0 for the map). */
uint64_t lupe_fileid_mapper_evictions(const struct lupe_fileid_mapper *m);
static inline void lupe_fileid_mapper_free(struct lupe_fileid_mapper *m)
{
	if (m)
		m->ops->free(m);
}

#endif
