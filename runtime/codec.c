#include "codec.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

struct lupe_buf {
	uint8_t *data;
	size_t len, cap;
};

struct lupe_buf *lupe_buf__new(size_t hint)
{
	struct lupe_buf *b = calloc(1, sizeof(*b));

	if (!b) {
		errno = ENOMEM;
		return NULL;
	}
	if (lupe_buf__reserve(b, hint ? hint : 256) != 0) {
		free(b);
		errno = ENOMEM;
		return NULL;
	}
	return b;
}

void lupe_buf__free(struct lupe_buf *b)
{
	if (!b)
		return;
	free(b->data);
	free(b);
}

const uint8_t *lupe_buf__data(const struct lupe_buf *b)
{
	return b->data;
}

size_t lupe_buf__len(const struct lupe_buf *b)
{
	return b->len;
}

void lupe_buf__reset(struct lupe_buf *b)
{
	b->len = 0;
}

int lupe_buf__reserve(struct lupe_buf *b, size_t n)
{
	size_t cap = b->cap ? b->cap : 64;
	uint8_t *p;

	if (n <= b->cap - b->len)
		return 0;
	if (n > SIZE_MAX / 2 - b->len)
		return -ENOMEM;
	/* Doubling keeps appends amortized O(1): a 10 MB profile is ~20 reallocs. */
	while (cap - b->len < n)
		cap *= 2;
	p = realloc(b->data, cap);
	if (!p)
		return -ENOMEM;
	b->data = p;
	b->cap = cap;
	return 0;
}

int lupe_buf__append(struct lupe_buf *b, const void *p, size_t n)
{
	int err;

	if (n == 0)
		return 0;
	err = lupe_buf__reserve(b, n);
	if (err)
		return err;
	memcpy(b->data + b->len, p, n);
	b->len += n;
	return 0;
}

size_t lupe_pb_varint_len(uint64_t v)
{
	size_t n = 1;

	while (v >= 0x80) {
		v >>= 7;
		n++;
	}
	return n;
}

/* The caller has reserved 10 bytes. */
static void put_varint_unchecked(struct lupe_buf *b, uint64_t v)
{
	uint8_t *p = b->data + b->len;

	while (v >= 0x80) {
		*p++ = (uint8_t)(v | 0x80);
		v >>= 7;
	}
	*p++ = (uint8_t)v;
	b->len = (size_t)(p - b->data);
}

int lupe_pb_put_varint(struct lupe_buf *b, uint64_t v)
{
	int err = lupe_buf__reserve(b, 10);

	if (err)
		return err;
	put_varint_unchecked(b, v);
	return 0;
}

#define PB_MAX_FIELD ((1u << 29) - 1)

int lupe_pb_put_key(struct lupe_buf *b, uint32_t field, enum lupe_pb_wire wire)
{
	if (field == 0 || field > PB_MAX_FIELD)
		return -EINVAL;
	return lupe_pb_put_varint(b, ((uint64_t)field << 3) | (uint64_t)wire);
}

int lupe_pb_put_uint(struct lupe_buf *b, uint32_t field, uint64_t v)
{
	int err;

	if (field == 0 || field > PB_MAX_FIELD)
		return -EINVAL;
	err = lupe_buf__reserve(b, 20);
	if (err)
		return err;
	put_varint_unchecked(b, ((uint64_t)field << 3) | LUPE_PB_VARINT);
	put_varint_unchecked(b, v);
	return 0;
}

int lupe_pb_put_bytes(struct lupe_buf *b, uint32_t field, const void *p, size_t n)
{
	int err;

	if (field == 0 || field > PB_MAX_FIELD)
		return -EINVAL;
	if (n > SIZE_MAX - 20)
		return -ENOMEM;
	err = lupe_buf__reserve(b, 20 + n);
	if (err)
		return err;
	put_varint_unchecked(b, ((uint64_t)field << 3) | LUPE_PB_LEN);
	put_varint_unchecked(b, n);
	if (n)
		memcpy(b->data + b->len, p, n);
	b->len += n;
	return 0;
}

int lupe_pb_put_packed(struct lupe_buf *b, uint32_t field, const uint64_t *v, size_t n)
{
	size_t i, total = 0;
	int err;

	if (field == 0 || field > PB_MAX_FIELD)
		return -EINVAL;
	if (n == 0)
		return 0;
	for (i = 0; i < n; i++)
		total += lupe_pb_varint_len(v[i]);
	err = lupe_buf__reserve(b, 20 + total);
	if (err)
		return err;
	put_varint_unchecked(b, ((uint64_t)field << 3) | LUPE_PB_LEN);
	put_varint_unchecked(b, total);
	for (i = 0; i < n; i++)
		put_varint_unchecked(b, v[i]);
	return 0;
}

int lupe_pb_get_varint(const uint8_t **p, const uint8_t *end, uint64_t *v)
{
	const uint8_t *q = *p;
	uint64_t r = 0;
	unsigned shift;

	for (shift = 0; shift < 70; shift += 7) {
		if (q >= end)
			return -EBADMSG;
		r |= (uint64_t)(*q & 0x7f) << shift;
		if (!(*q++ & 0x80)) {
			*p = q;
			*v = r;
			return 0;
		}
	}
	return -EBADMSG; /* 11+ bytes: not a varint */
}

/* zlib's windowBits: 15 (32 KiB window) + 16 selects the gzip wrapper. */
#define GZIP_WBITS (15 + 16)

int lupe_gzip(struct lupe_buf *out, const void *in, size_t n, int level)
{
	const size_t chunk = 64 * 1024;
	const uint8_t *src = in;
	size_t old_len = out->len, left = n;
	z_stream zs;
	int zrc, err = 0;

	if (level < -1 || level > 9)
		return -EINVAL;
	memset(&zs, 0, sizeof(zs));
	if (deflateInit2(&zs, level, Z_DEFLATED, GZIP_WBITS, 8, Z_DEFAULT_STRATEGY) != Z_OK)
		return -ENOMEM;
	do {
		/* avail_in is 32 bits: huge inputs go in pieces. */
		if (zs.avail_in == 0 && left) {
			zs.next_in = (Bytef *)src;
			zs.avail_in = left > (1u << 30) ? (1u << 30) : (uInt)left;
			src += zs.avail_in;
			left -= zs.avail_in;
		}
		err = lupe_buf__reserve(out, chunk);
		if (err)
			goto out;
		zs.next_out = out->data + out->len;
		zs.avail_out = (uInt)chunk;
		zrc = deflate(&zs, left ? Z_NO_FLUSH : Z_FINISH);
		out->len += chunk - zs.avail_out;
		/* Z_BUF_ERROR only means "no room this round": the loop gives more. */
		if (zrc == Z_STREAM_ERROR) {
			err = -EINVAL;
			goto out;
		}
	} while (zrc != Z_STREAM_END);
out:
	deflateEnd(&zs);
	if (err)
		out->len = old_len;
	return err;
}

int lupe_gunzip(struct lupe_buf *out, const void *in, size_t n, size_t max_out)
{
	const size_t chunk = 64 * 1024;
	const uint8_t *src = in;
	size_t old_len = out->len, produced = 0, left = n;
	z_stream zs;
	int zrc, err = 0;

	memset(&zs, 0, sizeof(zs));
	if (inflateInit2(&zs, GZIP_WBITS) != Z_OK)
		return -ENOMEM;
	for (;;) {
		if (zs.avail_in == 0) {
			if (!left) {
				err = -EBADMSG; /* input ended before the stream did */
				goto out;
			}
			zs.next_in = (Bytef *)src;
			zs.avail_in = left > (1u << 30) ? (1u << 30) : (uInt)left;
			src += zs.avail_in;
			left -= zs.avail_in;
		}
		err = lupe_buf__reserve(out, chunk);
		if (err)
			goto out;
		zs.next_out = out->data + out->len;
		zs.avail_out = (uInt)chunk;
		zrc = inflate(&zs, Z_NO_FLUSH);
		out->len += chunk - zs.avail_out;
		produced += chunk - zs.avail_out;
		if (produced > max_out) {
			err = -EFBIG;
			goto out;
		}
		if (zrc == Z_STREAM_END)
			break; /* bytes after the first member are ignored */
		if (zrc == Z_MEM_ERROR) {
			err = -ENOMEM;
			goto out;
		}
		if (zrc != Z_OK && zrc != Z_BUF_ERROR) {
			err = -EBADMSG;
			goto out;
		}
	}
out:
	inflateEnd(&zs);
	if (err)
		out->len = old_len;
	return err;
}

/* Length of the valid UTF-8 sequence at s[0..n), or 0 if it is not one (overlong forms,
 * surrogates and code points past U+10FFFF are invalid, as RFC 3629 says). */
static size_t utf8_seq(const uint8_t *s, size_t n)
{
	uint8_t c = s[0];
	size_t len, i;
	uint32_t cp;

	if (c < 0xc2)
		return 0; /* continuation byte or overlong 2-byte lead */
	if (c < 0xe0) {
		len = 2;
		cp = c & 0x1f;
	} else if (c < 0xf0) {
		len = 3;
		cp = c & 0x0f;
	} else if (c < 0xf5) {
		len = 4;
		cp = c & 0x07;
	} else {
		return 0;
	}
	if (n < len)
		return 0;
	for (i = 1; i < len; i++) {
		if ((s[i] & 0xc0) != 0x80)
			return 0;
		cp = (cp << 6) | (s[i] & 0x3f);
	}
	if ((len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000) || cp > 0x10ffff ||
	    (cp >= 0xd800 && cp <= 0xdfff))
		return 0;
	return len;
}

int lupe_json_put_string(struct lupe_buf *b, const char *str, size_t n)
{
	static const char hex[] = "0123456789abcdef";
	const uint8_t *s = (const uint8_t *)str;
	size_t i = 0, run;
	uint8_t *p;
	int err;

	/* Worst case: every byte becomes "\u00XX" or U+FFFD's 3 bytes (6 is enough). */
	if (n > (SIZE_MAX - 2) / 6)
		return -ENOMEM;
	err = lupe_buf__reserve(b, 2 + 6 * n);
	if (err)
		return err;
	p = b->data + b->len;
	*p++ = '"';
	while (i < n) {
		uint8_t c = s[i];

		if (c >= 0x20 && c != '"' && c != '\\' && c < 0x80) {
			*p++ = c;
			i++;
			continue;
		}
		if (c >= 0x80) {
			run = utf8_seq(s + i, n - i);
			if (run) {
				memcpy(p, s + i, run);
				p += run;
				i += run;
			} else {
				memcpy(p, "\xef\xbf\xbd", 3); /* U+FFFD */
				p += 3;
				i++;
			}
			continue;
		}
		*p++ = '\\';
		switch (c) {
		case '"': *p++ = '"'; break;
		case '\\': *p++ = '\\'; break;
		case '\n': *p++ = 'n'; break;
		case '\t': *p++ = 't'; break;
		case '\r': *p++ = 'r'; break;
		case '\b': *p++ = 'b'; break;
		case '\f': *p++ = 'f'; break;
		default:
			*p++ = 'u';
			*p++ = '0';
			*p++ = '0';
			*p++ = hex[c >> 4];
			*p++ = hex[c & 15];
		}
		i++;
	}
	*p++ = '"';
	b->len = (size_t)(p - b->data);
	return 0;
}
