/* Byte-level encoders for the output formats, so Lua never loops per byte: a growable
 * buffer, protobuf wire encoding (varints, keys, length-delimited and packed fields),
 * gzip through zlib, and JSON string escaping. Formats (lua/stdlib/lupe/output/)
 * decide what to write; this only knows how bytes are laid out. Not thread-safe. */
#ifndef LUPE_CODEC_H
#define LUPE_CODEC_H

#include <stddef.h>
#include <stdint.h>

/* A growable byte buffer. Owned by whoever called __new; __free releases it. */
struct lupe_buf;

/* hint: bytes to reserve at once (0 for a small default). NULL and errno ENOMEM. */
struct lupe_buf *lupe_buf__new(size_t hint);
void lupe_buf__free(struct lupe_buf *b); /* NULL ok */

/* The bytes written so far; borrowed, valid until the next write, __reset or __free. */
const uint8_t *lupe_buf__data(const struct lupe_buf *b);
size_t lupe_buf__len(const struct lupe_buf *b);
/* Forgets the content but keeps the allocation, for reuse as a scratch buffer. */
void lupe_buf__reset(struct lupe_buf *b);
/* Makes room for n more bytes. 0 or -ENOMEM (the buffer is unchanged then). */
int lupe_buf__reserve(struct lupe_buf *b, size_t n);
/* Every writer below appends and returns 0 or -ENOMEM; on failure the buffer keeps what
 * it had before the call (nothing half-written). */
int lupe_buf__append(struct lupe_buf *b, const void *p, size_t n);

/* Protobuf wire types (https://protobuf.dev/programming-guides/encoding/). */
enum lupe_pb_wire {
	LUPE_PB_VARINT = 0,
	LUPE_PB_I64 = 1,
	LUPE_PB_LEN = 2,
	LUPE_PB_I32 = 5,
};

/* Bytes the varint encoding of v takes: 1..10. */
size_t lupe_pb_varint_len(uint64_t v);
/* A bare varint (int64 values are passed as their two's complement: 10 bytes if < 0). */
int lupe_pb_put_varint(struct lupe_buf *b, uint64_t v);
/* A field key: (field << 3) | wire. field must be 1..2^29-1, else -EINVAL. */
int lupe_pb_put_key(struct lupe_buf *b, uint32_t field, enum lupe_pb_wire wire);
/* key + varint value. */
int lupe_pb_put_uint(struct lupe_buf *b, uint32_t field, uint64_t v);
/* key + length + bytes: a string, bytes or an already encoded sub-message. */
int lupe_pb_put_bytes(struct lupe_buf *b, uint32_t field, const void *p, size_t n);
/* A packed repeated varint field: key + total length + the varints. n == 0 writes
 * nothing (an empty packed field is the same as an absent one). */
int lupe_pb_put_packed(struct lupe_buf *b, uint32_t field, const uint64_t *v, size_t n);
/* Reads one varint at *p (< end) and advances *p. 0, or -EBADMSG when truncated or
 * longer than 10 bytes. For tests and for reading our own output back. */
int lupe_pb_get_varint(const uint8_t **p, const uint8_t *end, uint64_t *v);

/* Appends the gzip (RFC 1952) compression of in[0..n) to out. level: 0..9, or -1 for
 * zlib's default. 0, -EINVAL (bad level) or -ENOMEM. */
int lupe_gzip(struct lupe_buf *out, const void *in, size_t n, int level);
/* Appends the decompression of a gzip stream to out, at most max_out bytes: -EFBIG past
 * that (a bomb is refused, not inflated), -EBADMSG on corrupt or truncated input. */
int lupe_gunzip(struct lupe_buf *out, const void *in, size_t n, size_t max_out);

/* Appends s[0..n) as a JSON string literal, quotes included: ", \ and control characters
 * escaped (\n \t \r \b \f, others as \u00XX). Bytes >= 0x80 pass through when they form
 * valid UTF-8; each invalid byte becomes U+FFFD, so the output is always valid JSON. */
int lupe_json_put_string(struct lupe_buf *b, const char *s, size_t n);

#endif
