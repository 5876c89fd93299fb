/* codec: protobuf varints against values worked out by hand, gzip checked through its
 * own trailer (a CRC-32 computed here bit by bit, not by zlib, and the length), failure
 * paths leave buffers unchanged, JSON escaping and UTF-8 validation at every boundary. */
#include "codec.h"
#include "lupe_test.h"

#include <errno.h>
#include <stdint.h>

static int bytes_eq(struct lupe_buf *b, const char *want, size_t n)
{
	return lupe_buf__len(b) == n && memcmp(lupe_buf__data(b), want, n) == 0;
}

TEST(codec_varints_known_bytes_and_roundtrip)
{
	static const struct {
		uint64_t v;
		const char *bytes;
		size_t n;
	} cases[] = {
		{ 0, "\x00", 1 },
		{ 1, "\x01", 1 },
		{ 127, "\x7f", 1 },
		{ 128, "\x80\x01", 2 },
		{ 150, "\x96\x01", 2 },
		{ 300, "\xac\x02", 2 },
		{ 16383, "\xff\x7f", 2 },
		{ 16384, "\x80\x80\x01", 3 },
		{ 1ull << 63, "\x80\x80\x80\x80\x80\x80\x80\x80\x80\x01", 10 },
		{ UINT64_MAX, "\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01", 10 },
	};
	struct lupe_buf *b = lupe_buf__new(0);
	size_t i;

	ASSERT(b);
	for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		const uint8_t *p, *end;
		uint64_t v = 0;

		lupe_buf__reset(b);
		ASSERT_OK(lupe_pb_put_varint(b, cases[i].v));
		if (!bytes_eq(b, cases[i].bytes, cases[i].n))
			FAIL("varint %llu: wrong bytes", (unsigned long long)cases[i].v);
		ASSERT_EQ(lupe_pb_varint_len(cases[i].v), cases[i].n);
		p = lupe_buf__data(b);
		end = p + lupe_buf__len(b);
		ASSERT_OK(lupe_pb_get_varint(&p, end, &v));
		ASSERT(v == cases[i].v);
		ASSERT(p == end);
	}
	lupe_buf__free(b);
}

TEST(codec_get_varint_rejects_truncated_and_overlong)
{
	static const uint8_t trunc[] = { 0x96 };
	static const uint8_t overlong[11] = { 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
					      0xff, 0xff, 0xff, 0xff, 0x01 };
	const uint8_t *p = trunc;
	uint64_t v = 42;

	ASSERT_EQ(lupe_pb_get_varint(&p, trunc + 1, &v), -EBADMSG);
	ASSERT(p == trunc && v == 42);
	p = overlong;
	ASSERT_EQ(lupe_pb_get_varint(&p, overlong + 11, &v), -EBADMSG);
	p = trunc;
	ASSERT_EQ(lupe_pb_get_varint(&p, trunc, &v), -EBADMSG); /* empty */
}

TEST(codec_fields_keys_bytes_packed)
{
	struct lupe_buf *b = lupe_buf__new(1);
	static const uint64_t vals[] = { 3, 270, 86942 };

	ASSERT(b);
	ASSERT_OK(lupe_pb_put_uint(b, 1, 150));
	ASSERT_OK(lupe_pb_put_bytes(b, 2, "testing", 7));
	ASSERT_OK(lupe_pb_put_packed(b, 4, vals, 3));
	ASSERT_OK(lupe_pb_put_packed(b, 5, vals, 0)); /* nothing */
	ASSERT_OK(lupe_pb_put_bytes(b, 6, NULL, 0));
	ASSERT(bytes_eq(b, "\x08\x96\x01" "\x12\x07testing" "\x22\x06\x03\x8e\x02\x9e\xa7\x05"
			   "\x32\x00", 3 + 9 + 8 + 2));
	lupe_buf__reset(b);
	ASSERT_EQ(lupe_pb_put_key(b, 0, LUPE_PB_VARINT), -EINVAL);
	ASSERT_EQ(lupe_pb_put_uint(b, 1u << 29, 1), -EINVAL);
	ASSERT_EQ(lupe_pb_put_bytes(b, 0, "x", 1), -EINVAL);
	ASSERT_EQ(lupe_pb_put_packed(b, 0, vals, 3), -EINVAL);
	ASSERT_EQ(lupe_buf__len(b), 0);
	ASSERT_OK(lupe_pb_put_key(b, (1u << 29) - 1, LUPE_PB_LEN));
	ASSERT(bytes_eq(b, "\xfa\xff\xff\xff\x0f", 5));
	lupe_buf__free(b);
	lupe_buf__free(NULL);
}

TEST(codec_buffer_grows_and_refuses_absurd_sizes)
{
	struct lupe_buf *b = lupe_buf__new(0);
	char chunk[1000];
	int i;

	ASSERT(b);
	memset(chunk, 'x', sizeof(chunk));
	for (i = 0; i < 3000; i++)
		ASSERT_OK(lupe_buf__append(b, chunk, sizeof(chunk)));
	ASSERT_EQ(lupe_buf__len(b), 3000000);
	ASSERT_EQ(lupe_buf__reserve(b, SIZE_MAX), -ENOMEM);
	ASSERT_EQ(lupe_buf__reserve(b, SIZE_MAX / 2), -ENOMEM);
	ASSERT_EQ(lupe_buf__len(b), 3000000);
	ASSERT(lupe_buf__data(b)[2999999] == 'x');
	lupe_buf__free(b);
}

/* CRC-32 (IEEE 802.3, reflected, as gzip's trailer has it), one bit at a time. */
static uint32_t crc32_bitwise(const uint8_t *p, size_t n)
{
	uint32_t c = 0xffffffffu;
	size_t i;
	int k;

	for (i = 0; i < n; i++) {
		c ^= p[i];
		for (k = 0; k < 8; k++)
			c = (c >> 1) ^ (0xedb88320u & (0u - (c & 1)));
	}
	return ~c;
}

static uint32_t le32(const uint8_t *p)
{
	return p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

TEST(codec_gzip_roundtrip_with_valid_trailer)
{
	struct lupe_buf *z = lupe_buf__new(0), *out = lupe_buf__new(0);
	size_t n = 300000, i, zlen;
	uint8_t *in = malloc(n);
	uint32_t x = 12345;
	const uint8_t *zp;

	ASSERT(z && out && in);
	/* Half noise (incompressible), half text. */
	for (i = 0; i < n / 2; i++) {
		x = x * 1103515245u + 12345u;
		in[i] = (uint8_t)(x >> 16);
	}
	for (; i < n; i++)
		in[i] = "flame graph "[i % 12];
	ASSERT_OK(lupe_buf__append(z, "keep", 4)); /* gzip appends */
	ASSERT_OK(lupe_gzip(z, in, n, 1));
	zp = lupe_buf__data(z) + 4;
	zlen = lupe_buf__len(z) - 4;
	ASSERT(zlen > 18);
	ASSERT(zp[0] == 0x1f && zp[1] == 0x8b && zp[2] == 8); /* magic, deflate */
	ASSERT_EQ(le32(zp + zlen - 8), crc32_bitwise(in, n));
	ASSERT_EQ(le32(zp + zlen - 4), n);
	ASSERT_OK(lupe_gunzip(out, zp, zlen, n));
	ASSERT_EQ(lupe_buf__len(out), n);
	ASSERT(memcmp(lupe_buf__data(out), in, n) == 0);

	/* Empty input: a valid empty stream. */
	lupe_buf__reset(z);
	lupe_buf__reset(out);
	ASSERT_OK(lupe_gzip(z, NULL, 0, -1));
	ASSERT_OK(lupe_gunzip(out, lupe_buf__data(z), lupe_buf__len(z), 0));
	ASSERT_EQ(lupe_buf__len(out), 0);
	ASSERT_EQ(lupe_gzip(z, in, n, 10), -EINVAL);
	free(in);
	lupe_buf__free(z);
	lupe_buf__free(out);
}

TEST(codec_gunzip_refuses_bad_input_and_bombs)
{
	struct lupe_buf *z = lupe_buf__new(0), *out = lupe_buf__new(0);
	size_t n = 1 << 20, zlen, cut;
	uint8_t *in = calloc(1, n), *bad;

	ASSERT(z && out && in);
	ASSERT_OK(lupe_gzip(z, in, n, 9)); /* 1 MiB of zeros: ~1 KB */
	zlen = lupe_buf__len(z);
	ASSERT(zlen < 4096);
	ASSERT_OK(lupe_buf__append(out, "ab", 2));
	/* Output limit: refused, and out keeps what it had. */
	ASSERT_EQ(lupe_gunzip(out, lupe_buf__data(z), zlen, n - 1), -EFBIG);
	ASSERT(bytes_eq(out, "ab", 2));
	/* Every truncation fails. */
	for (cut = 0; cut < zlen; cut += (cut < 40 ? 1 : 97))
		ASSERT_EQ(lupe_gunzip(out, lupe_buf__data(z), cut, n), -EBADMSG);
	ASSERT(bytes_eq(out, "ab", 2));
	/* A corrupt trailer (CRC) fails. */
	bad = malloc(zlen);
	ASSERT(bad);
	memcpy(bad, lupe_buf__data(z), zlen);
	bad[zlen - 6] ^= 0x55;
	ASSERT_EQ(lupe_gunzip(out, bad, zlen, n), -EBADMSG);
	ASSERT_EQ(lupe_gunzip(out, "not gzip", 8, n), -EBADMSG);
	ASSERT(bytes_eq(out, "ab", 2));
	free(bad);
	free(in);
	lupe_buf__free(z);
	lupe_buf__free(out);
}

static int json_is(const char *in, size_t n, const char *want)
{
	struct lupe_buf *b = lupe_buf__new(0);
	int ok;

	if (!b || lupe_json_put_string(b, in, n) != 0) {
		lupe_buf__free(b);
		return 0;
	}
	ok = bytes_eq(b, want, strlen(want));
	if (!ok)
		printf("    json: got %.*s want %s\n", (int)lupe_buf__len(b),
		       (const char *)lupe_buf__data(b), want);
	lupe_buf__free(b);
	return ok;
}

#define R "\xef\xbf\xbd"

TEST(codec_json_escapes_and_utf8)
{
	ASSERT(json_is("", 0, "\"\""));
	ASSERT(json_is("a\"b\\c/", 6, "\"a\\\"b\\\\c/\""));
	ASSERT(json_is("\n\t\r\b\f", 5, "\"\\n\\t\\r\\b\\f\""));
	ASSERT(json_is("\x00\x01\x1f\x7f", 4, "\"\\u0000\\u0001\\u001f\x7f\""));
	/* Boundaries of each UTF-8 length, all valid. */
	ASSERT(json_is("\xc2\x80\xdf\xbf", 4, "\"\xc2\x80\xdf\xbf\""));             /* U+0080 U+07FF */
	ASSERT(json_is("\xe0\xa0\x80\xef\xbf\xbf", 6, "\"\xe0\xa0\x80\xef\xbf\xbf\"")); /* U+0800 U+FFFF */
	ASSERT(json_is("\xed\x9f\xbf\xee\x80\x80", 6, "\"\xed\x9f\xbf\xee\x80\x80\"")); /* around surrogates */
	ASSERT(json_is("\xf0\x90\x80\x80\xf4\x8f\xbf\xbf", 8,
		       "\"\xf0\x90\x80\x80\xf4\x8f\xbf\xbf\""));                    /* U+10000 U+10FFFF */
	/* Invalid: each offending byte becomes U+FFFD, the rest resyncs. */
	ASSERT(json_is("\x80", 1, "\"" R "\""));                          /* lone continuation */
	ASSERT(json_is("\xc0\xaf", 2, "\"" R R "\""));                    /* overlong '/' */
	ASSERT(json_is("\xc1\xbf", 2, "\"" R R "\""));                    /* overlong */
	ASSERT(json_is("\xe0\x9f\xbf", 3, "\"" R R R "\""));              /* overlong 3-byte */
	ASSERT(json_is("\xed\xa0\x80", 3, "\"" R R R "\""));              /* surrogate U+D800 */
	ASSERT(json_is("\xf0\x8f\xbf\xbf", 4, "\"" R R R R "\""));        /* overlong 4-byte */
	ASSERT(json_is("\xf4\x90\x80\x80", 4, "\"" R R R R "\""));        /* U+110000 */
	ASSERT(json_is("\xf5\x80", 2, "\"" R R "\""));                    /* lead > f4 */
	ASSERT(json_is("\xe2\x82", 2, "\"" R R "\""));                    /* truncated at end */
	ASSERT(json_is("\xe2\x82x", 3, "\"" R R "x\""));                  /* truncated mid */
	ASSERT(json_is("\xe2\x82\xac", 3, "\"\xe2\x82\xac\""));           /* the euro sign */
}
