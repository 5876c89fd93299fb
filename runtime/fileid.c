/* File IDs (SHA-256 of head, tail and length) and the host ID -> file ID mappers. */
#define LUPE_LOG_PREFIX "fileid: "
#include "fileid.h"
#include "strutil.h"
#include "hashmap.h"
#include "log.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/evp.h>

#define PART 4096

static uint64_t load_be64(const unsigned char *p)
{
	uint64_t v = 0;
	int i;

	for (i = 0; i < 8; i++)
		v = v << 8 | p[i];
	return v;
}

/* SHA-256(head[0..n) || tail[0..n) || be64(size)), truncated to 128 bits. Returns 0 or
 * -ENOMEM: EVP only fails when it cannot allocate its context or fetch the digest. */
static int digest(const void *head, const void *tail, size_t n, uint64_t size,
		  struct lupe_file_id *out)
{
	unsigned char md[EVP_MAX_MD_SIZE], len[8];
	unsigned int mdlen = 0;
	EVP_MD_CTX *ctx;
	int i, err = 0;

	for (i = 0; i < 8; i++)
		len[i] = (unsigned char)(size >> (56 - 8 * i));
	ctx = EVP_MD_CTX_new();
	if (!ctx || !EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) ||
	    !EVP_DigestUpdate(ctx, head, n) || !EVP_DigestUpdate(ctx, tail, n) ||
	    !EVP_DigestUpdate(ctx, len, sizeof(len)) || !EVP_DigestFinal_ex(ctx, md, &mdlen) ||
	    mdlen < 16) {
		err = -ENOMEM;
		goto out;
	}
	out->hi = load_be64(md);
	out->lo = load_be64(md + 8);
out:
	EVP_MD_CTX_free(ctx);
	return err;
}

void lupe_file_id_from_bytes(const void *buf, size_t len, struct lupe_file_id *out)
{
	size_t n = len < PART ? len : PART;
	const unsigned char *p = buf;
	/* No arithmetic on buf when it may be NULL (len 0). */
	const unsigned char *tail = len > PART ? p + len - n : p;

	/* The signature has no error path: a zero ID is the "unknown" value callers see if
	 * OpenSSL cannot allocate, and the warning says why. */
	if (digest(p, tail, n, len, out)) {
		pr_warn("failed to hash %zu bytes: %s", len, lupe_errstr(ENOMEM));
		out->hi = out->lo = 0;
	}
}

/* Reads exactly n bytes at off. Returns 0, -EIO if the file ends first, or -errno. */
static int pread_full(int fd, void *buf, size_t n, off_t off)
{
	unsigned char *p = buf;
	ssize_t r;

	while (n) {
		r = pread(fd, p, n, off);
		if (r < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		if (r == 0)
			return -EIO;
		p += r;
		n -= (size_t)r;
		off += r;
	}
	return 0;
}

int lupe_file_id_from_fd(int fd, struct lupe_file_id *out)
{
	unsigned char head[PART], tail[PART];
	const unsigned char *t = head;
	struct stat st;
	uint64_t size;
	size_t n;
	int err;

	if (fstat(fd, &st))
		return -errno;
	/* Devices and pipes report no meaningful size; their ID would be the empty file's. */
	if (!S_ISREG(st.st_mode))
		return -EINVAL;
	size = (uint64_t)st.st_size;
	n = size < PART ? (size_t)size : PART;
	err = pread_full(fd, head, n, 0);
	if (err)
		return err;
	/* Up to PART bytes, the tail is the head: read it once. */
	if (size > PART) {
		err = pread_full(fd, tail, n, (off_t)(size - n));
		if (err)
			return err;
		t = tail;
	}
	return digest(head, t, n, size, out);
}

char *lupe_file_id_format(struct lupe_file_id id, char *buf)
{
	static const char hex[] = "0123456789abcdef";
	int i;

	for (i = 0; i < 16; i++) {
		buf[i] = hex[(id.hi >> (60 - 4 * i)) & 0xf];
		buf[16 + i] = hex[(id.lo >> (60 - 4 * i)) & 0xf];
	}
	buf[LUPE_FILE_ID_HEX_LEN] = '\0';
	return buf;
}

int lupe_file_id_parse(const char *s, struct lupe_file_id *out)
{
	uint64_t w[2] = { 0, 0 };
	int i, d;

	if (!s)
		return -EINVAL;
	/* Stops at the NUL of a short string: lupe_hex_digit('\0') is -1. */
	for (i = 0; i < LUPE_FILE_ID_HEX_LEN; i++) {
		d = lupe_hex_digit(s[i]);
		if (d < 0)
			return -EINVAL;
		w[i / 16] = w[i / 16] << 4 | (uint64_t)d;
	}
	if (s[LUPE_FILE_ID_HEX_LEN] != '\0')
		return -EINVAL;
	out->hi = w[0];
	out->lo = w[1];
	return 0;
}

/* Both mappers key a hashmap by {host, 0} and point it at a node. The map allocates one
 * node per entry; the LRU also threads its nodes on a list, most recent first, and
 * recycles the least recent one once it holds `cap` entries. */
struct node {
	uint64_t host;
	struct lupe_file_id id;
	struct node *prev, *next;
};

struct map_mapper {
	struct lupe_fileid_mapper base;
	struct lupe_hashmap *map;
};

struct lru_mapper {
	struct lupe_fileid_mapper base;
	struct lupe_hashmap *map;
	struct node head; /* sentinel: head.next is the most recent, head.prev the least */
	size_t cap;
	uint64_t evictions;
};

#define LRU_DEFAULT_CAP 32768

static inline struct lupe_key host_key(uint64_t host)
{
	return (struct lupe_key){ host, 0 };
}

static bool map_get(struct lupe_fileid_mapper *base, uint64_t host, struct lupe_file_id *out)
{
	struct map_mapper *m = (struct map_mapper *)base;
	struct node *n = lupe_hashmap__get(m->map, host_key(host));

	if (!n)
		return false;
	*out = n->id;
	return true;
}

static int map_set(struct lupe_fileid_mapper *base, uint64_t host, struct lupe_file_id id)
{
	struct map_mapper *m = (struct map_mapper *)base;
	struct node *n = lupe_hashmap__get(m->map, host_key(host));
	int err;

	if (n) {
		n->id = id;
		return 0;
	}
	n = malloc(sizeof(*n));
	if (!n)
		return -ENOMEM;
	n->host = host;
	n->id = id;
	err = lupe_hashmap__set(m->map, host_key(host), n, NULL);
	if (err)
		free(n);
	return err;
}

static void map_free(struct lupe_fileid_mapper *base)
{
	struct map_mapper *m = (struct map_mapper *)base;
	lupe_hashmap__free_values(m->map, free);
	free(m);
}

static const struct lupe_fileid_mapper_ops map_ops = {
	.get = map_get,
	.set = map_set,
	.free = map_free,
};

struct lupe_fileid_mapper *lupe_fileid_mapper_new_map(void)
{
	struct map_mapper *m = calloc(1, sizeof(*m));

	if (!m)
		goto err_out;
	m->base.ops = &map_ops;
	m->map = lupe_hashmap__new();
	if (!m->map)
		goto err_out;
	return &m->base;
err_out:
	free(m);
	errno = ENOMEM;
	return NULL;
}

static void list_unlink(struct node *n)
{
	n->prev->next = n->next;
	n->next->prev = n->prev;
}

static void list_push_front(struct node *head, struct node *n)
{
	n->prev = head;
	n->next = head->next;
	head->next->prev = n;
	head->next = n;
}

static bool lru_get(struct lupe_fileid_mapper *base, uint64_t host, struct lupe_file_id *out)
{
	struct lru_mapper *m = (struct lru_mapper *)base;
	struct node *n = lupe_hashmap__get(m->map, host_key(host));

	if (!n)
		return false;
	list_unlink(n);
	list_push_front(&m->head, n);
	*out = n->id;
	return true;
}

static int lru_set(struct lupe_fileid_mapper *base, uint64_t host, struct lupe_file_id id)
{
	struct lru_mapper *m = (struct lru_mapper *)base;
	struct node *n = lupe_hashmap__get(m->map, host_key(host));
	bool recycle;
	int err;

	if (n) {
		n->id = id;
		list_unlink(n);
		list_push_front(&m->head, n);
		return 0;
	}
	/* Insert the new key before evicting the old one so that -ENOMEM leaves the cache
	 * exactly as it was; deleting afterwards cannot fail. */
	recycle = lupe_hashmap__count(m->map) >= m->cap;
	if (recycle) {
		n = m->head.prev;
	} else {
		n = malloc(sizeof(*n));
		if (!n)
			return -ENOMEM;
	}
	err = lupe_hashmap__set(m->map, host_key(host), n, NULL);
	if (err) {
		if (!recycle)
			free(n);
		return err;
	}
	if (recycle) {
		lupe_hashmap__delete(m->map, host_key(n->host));
		list_unlink(n);
		m->evictions++;
	}
	n->host = host;
	n->id = id;
	list_push_front(&m->head, n);
	return 0;
}

static void lru_free(struct lupe_fileid_mapper *base)
{
	struct lru_mapper *m = (struct lru_mapper *)base;
	struct node *n, *next;

	for (n = m->head.next; n != &m->head; n = next) {
		next = n->next;
		free(n);
	}
	lupe_hashmap__free(m->map);
	free(m);
}

static const struct lupe_fileid_mapper_ops lru_ops = {
	.get = lru_get,
	.set = lru_set,
	.free = lru_free,
};

struct lupe_fileid_mapper *lupe_fileid_mapper_new_lru(size_t capacity)
{
	struct lru_mapper *m = calloc(1, sizeof(*m));

	if (!m)
		goto err_out;
	m->base.ops = &lru_ops;
	m->head.prev = m->head.next = &m->head;
	m->cap = capacity ? capacity : LRU_DEFAULT_CAP;
	m->map = lupe_hashmap__new();
	if (!m->map)
		goto err_out;
	return &m->base;
err_out:
	free(m);
	errno = ENOMEM;
	return NULL;
}

uint64_t lupe_fileid_mapper_evictions(const struct lupe_fileid_mapper *m)
{
	if (!m || m->ops != &lru_ops)
		return 0;
	return ((const struct lru_mapper *)m)->evictions;
}
