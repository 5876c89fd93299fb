/* lupe.native.codec: byte encoders for the Lua output formats (runtime/codec.h).
 *   local b = codec.buffer()            -- a growable byte buffer ("lupe.codec.buffer")
 *   b:uint(1, 42); b:bytes(6, "name"); b:packed(1, {1, 2, 3}); b:bytes(2, sub_buffer)
 *   b:json("a\"b"); b:raw("..."); b:tostring(); b:reset(); #b
 *   codec.gzip(b_or_string [, level]) -> string; codec.gunzip(s [, max]) -> string
 *   codec.json(s) -> the JSON string literal of s
 * A format calls these once per sample or per unique frame, never per byte. */
#include "codec.h"
#include "log.h"
#include "lua_util.h"

#include <errno.h>
#include <lauxlib.h>
#include <lua.h>
#include <stdint.h>

#define BUF_MT "lupe.codec.buffer"

struct lbuf {
	struct lupe_buf *b;
};

static struct lupe_buf *check_buf(lua_State *L, int idx)
{
	struct lbuf *u = luaL_checkudata(L, idx, BUF_MT);

	if (!u->b)
		luaL_argerror(L, idx, "buffer is closed");
	return u->b;
}

/* A buffer argument, or NULL when idx holds something else. */
static struct lupe_buf *test_buf(lua_State *L, int idx)
{
	struct lbuf *u = lua_touserdata(L, idx);
	int same;

	if (!u || !lua_getmetatable(L, idx))
		return NULL;
	luaL_getmetatable(L, BUF_MT);
	same = lua_rawequal(L, -1, -2);
	lua_pop(L, 2);
	if (!same)
		return NULL;
	if (!u->b)
		luaL_argerror(L, idx, "buffer is closed");
	return u->b;
}

/* Bytes of a string or a buffer argument. */
static const void *check_bytes(lua_State *L, int idx, size_t *n)
{
	struct lupe_buf *b = test_buf(L, idx);

	if (b) {
		*n = lupe_buf__len(b);
		return lupe_buf__data(b);
	}
	return luaL_checklstring(L, idx, n);
}

/* A varint value: an exact integer in [-2^63, 2^64) as a number (negative ones are int64
 * two's complement, as protobuf's int64 fields want), or an 8-byte string (lupe.u64). */
static uint64_t check_value(lua_State *L, int idx)
{
	if (lua_type(L, idx) == LUA_TNUMBER) {
		lua_Number n = lua_tonumber(L, idx);

		/* In range first: converting an out-of-range double is undefined. No floor():
		 * that would need libm, which nothing else here links. */
		if (n < 0 && n >= -9223372036854775808.0 && n == (lua_Number)(int64_t)n)
			return (uint64_t)(int64_t)n;
	}
	return lupe_check_u64(L, idx);
}

static uint32_t check_field(lua_State *L, int idx)
{
	lua_Integer f = luaL_checkinteger(L, idx);

	if (f < 1 || f > (1 << 29) - 1)
		luaL_argerror(L, idx, "protobuf field numbers are 1..2^29-1");
	return (uint32_t)f;
}

/* Allocation failures while encoding are raised: a format cannot go on without them. */
static int check_rc(lua_State *L, int rc)
{
	if (rc)
		return luaL_error(L, "codec: %s", lupe_errstr(rc));
	return 0;
}

/* buffer([hint]) */
static int l_buffer(lua_State *L)
{
	lua_Integer hint = luaL_optinteger(L, 1, 0);
	struct lbuf *u;

	if (hint < 0)
		return luaL_argerror(L, 1, "size hint must be >= 0");
	u = lua_newuserdata(L, sizeof(*u));
	u->b = NULL;
	luaL_getmetatable(L, BUF_MT);
	lua_setmetatable(L, -2);
	u->b = lupe_buf__new((size_t)hint);
	if (!u->b)
		return luaL_error(L, "codec.buffer: %s", lupe_errstr(errno));
	return 1;
}

static int l_varint(lua_State *L)
{
	check_rc(L, lupe_pb_put_varint(check_buf(L, 1), check_value(L, 2)));
	lua_settop(L, 1);
	return 1;
}

/* b:uint(field, v): key + varint. */
static int l_uint(lua_State *L)
{
	struct lupe_buf *b = check_buf(L, 1);
	uint32_t field = check_field(L, 2);

	check_rc(L, lupe_pb_put_uint(b, field, check_value(L, 3)));
	lua_settop(L, 1);
	return 1;
}

/* b:bytes(field, string | buffer): a length-delimited field. */
static int l_bytes(lua_State *L)
{
	struct lupe_buf *b = check_buf(L, 1);
	uint32_t field = check_field(L, 2);
	const void *p;
	size_t n;

	p = check_bytes(L, 3, &n);
	if (p == lupe_buf__data(b))
		return luaL_argerror(L, 3, "cannot embed a buffer into itself");
	check_rc(L, lupe_pb_put_bytes(b, field, p, n));
	lua_settop(L, 1);
	return 1;
}

/* t[1..n] (n defaults to #t) as varint values; each must pass check_value. */
static size_t table_count(lua_State *L, int t, int nidx)
{
	lua_Integer n;

	luaL_checktype(L, t, LUA_TTABLE);
	if (lua_isnoneornil(L, nidx))
		return lua_objlen(L, t);
	n = luaL_checkinteger(L, nidx);
	if (n < 0)
		luaL_argerror(L, nidx, "count must be >= 0");
	return (size_t)n;
}

/* b:packed(field, t [, n]): a packed repeated varint field. The values are read once
 * (into a stack array for the usual short lists) so the length prefix can come first. */
static int l_packed(lua_State *L)
{
	struct lupe_buf *b = check_buf(L, 1);
	uint32_t field = check_field(L, 2);
	size_t n = table_count(L, 3, 4), i;
	uint64_t small[256], *v = small;

	if (n == 0) {
		lua_settop(L, 1);
		return 1;
	}
	if (n > sizeof(small) / sizeof(small[0])) {
		/* A userdata, not malloc: a raised error below must not leak it. */
		if (n > SIZE_MAX / sizeof(*v))
			return luaL_argerror(L, 3, "too many values");
		v = lua_newuserdata(L, n * sizeof(*v));
	}
	for (i = 0; i < n; i++) {
		lua_rawgeti(L, 3, (int)i + 1);
		v[i] = check_value(L, -1);
		lua_pop(L, 1);
	}
	check_rc(L, lupe_pb_put_packed(b, field, v, n));
	lua_settop(L, 1);
	return 1;
}

/* b:strings(field, t [, n]): each t[i] (a string) as one length-delimited field. */
static int l_strings(lua_State *L)
{
	struct lupe_buf *b = check_buf(L, 1);
	uint32_t field = check_field(L, 2);
	size_t n = table_count(L, 3, 4), i, len;
	const char *s;

	for (i = 1; i <= n; i++) {
		lua_rawgeti(L, 3, (int)i);
		/* Type first: lua_tolstring would turn a number into a string in place. */
		if (lua_type(L, -1) != LUA_TSTRING)
			return luaL_error(L, "strings: element %d is a %s, not a string", (int)i,
					  luaL_typename(L, -1));
		s = lua_tolstring(L, -1, &len);
		check_rc(L, lupe_pb_put_bytes(b, field, s, len));
		lua_pop(L, 1);
	}
	lua_settop(L, 1);
	return 1;
}

/* b:raw(s | buffer, ...): appends each argument as is. */
static int l_raw(lua_State *L)
{
	struct lupe_buf *b = check_buf(L, 1);
	int i, top = lua_gettop(L);
	const void *p;
	size_t n;

	for (i = 2; i <= top; i++) {
		p = check_bytes(L, i, &n);
		if (p == lupe_buf__data(b))
			return luaL_argerror(L, i, "cannot append a buffer to itself");
		check_rc(L, lupe_buf__append(b, p, n));
	}
	lua_settop(L, 1);
	return 1;
}

/* b:json(s): appends s as a JSON string literal. */
static int l_json_put(lua_State *L)
{
	struct lupe_buf *b = check_buf(L, 1);
	size_t n;
	const char *s = luaL_checklstring(L, 2, &n);

	check_rc(L, lupe_json_put_string(b, s, n));
	lua_settop(L, 1);
	return 1;
}

static int l_len(lua_State *L)
{
	lua_pushinteger(L, (lua_Integer)lupe_buf__len(check_buf(L, 1)));
	return 1;
}

static int l_tostring_bytes(lua_State *L)
{
	struct lupe_buf *b = check_buf(L, 1);

	lua_pushlstring(L, (const char *)lupe_buf__data(b), lupe_buf__len(b));
	return 1;
}

static int l_reset(lua_State *L)
{
	lupe_buf__reset(check_buf(L, 1));
	lua_settop(L, 1);
	return 1;
}

static int l_close(lua_State *L)
{
	struct lbuf *u = luaL_checkudata(L, 1, BUF_MT);

	lupe_buf__free(u->b);
	u->b = NULL;
	return 0;
}

static int l_buf_tostring(lua_State *L)
{
	struct lbuf *u = luaL_checkudata(L, 1, BUF_MT);

	if (u->b)
		lua_pushfstring(L, "lupe.codec.buffer (%d bytes)", (int)lupe_buf__len(u->b));
	else
		lua_pushliteral(L, "lupe.codec.buffer (closed)");
	return 1;
}

/* gzip(string | buffer [, level]) -> string. level 0..9 (default 1: profiles are written
 * once and read rarely, and level 1 is ~5x faster than 6 for a few % more bytes). */
static int l_gzip(lua_State *L)
{
	size_t n;
	const void *p = check_bytes(L, 1, &n);
	lua_Integer level = luaL_optinteger(L, 2, 1);
	struct lupe_buf *out;
	int rc;

	if (level < 0 || level > 9)
		return luaL_argerror(L, 2, "gzip level is 0..9");
	out = lupe_buf__new(n / 4 + 64);
	if (!out)
		return luaL_error(L, "codec.gzip: %s", lupe_errstr(errno));
	rc = lupe_gzip(out, p, n, (int)level);
	if (rc == 0)
		lua_pushlstring(L, (const char *)lupe_buf__data(out), lupe_buf__len(out));
	lupe_buf__free(out);
	if (rc)
		return luaL_error(L, "codec.gzip: %s", lupe_errstr(rc));
	return 1;
}

/* gunzip(string [, max_bytes = 1 GiB]) -> string, or nil, message, errno (bad input). */
static int l_gunzip(lua_State *L)
{
	size_t n;
	const char *p = luaL_checklstring(L, 1, &n);
	lua_Number max = luaL_optnumber(L, 2, 1024.0 * 1024 * 1024);
	struct lupe_buf *out;
	int rc;

	if (max < 0)
		return luaL_argerror(L, 2, "max must be >= 0");
	out = lupe_buf__new(n * 4 + 64);
	if (!out)
		return luaL_error(L, "codec.gunzip: %s", lupe_errstr(errno));
	rc = lupe_gunzip(out, p, n, (size_t)max);
	if (rc == 0)
		lua_pushlstring(L, (const char *)lupe_buf__data(out), lupe_buf__len(out));
	lupe_buf__free(out);
	if (rc == -ENOMEM)
		return luaL_error(L, "codec.gunzip: %s", lupe_errstr(rc));
	if (rc) {
		lua_pushnil(L);
		lua_pushfstring(L, "gunzip: %s", lupe_errstr(rc));
		lua_pushinteger(L, -rc);
		return 3;
	}
	return 1;
}

/* json(s) -> "s" as a JSON string literal. */
static int l_json(lua_State *L)
{
	size_t n;
	const char *s = luaL_checklstring(L, 1, &n);
	struct lupe_buf *out = lupe_buf__new(n + 16);
	int rc;

	if (!out)
		return luaL_error(L, "codec.json: %s", lupe_errstr(errno));
	rc = lupe_json_put_string(out, s, n);
	if (rc == 0)
		lua_pushlstring(L, (const char *)lupe_buf__data(out), lupe_buf__len(out));
	lupe_buf__free(out);
	if (rc)
		return luaL_error(L, "codec.json: %s", lupe_errstr(rc));
	return 1;
}

static const luaL_Reg buf_methods[] = {
	{ "varint", l_varint },
	{ "uint", l_uint },
	{ "bytes", l_bytes },
	{ "packed", l_packed },
	{ "strings", l_strings },
	{ "raw", l_raw },
	{ "json", l_json_put },
	{ "len", l_len },
	{ "tostring", l_tostring_bytes },
	{ "reset", l_reset },
	{ "close", l_close },
	{ NULL, NULL },
};

static const luaL_Reg codec_funcs[] = {
	{ "buffer", l_buffer },
	{ "gzip", l_gzip },
	{ "gunzip", l_gunzip },
	{ "json", l_json },
	{ NULL, NULL },
};

int luaopen_lupe_codec(lua_State *L)
{
	static const luaL_Reg meta[] = { { "__gc", l_close }, { "__tostring", l_buf_tostring },
					 { "__len", l_len }, { NULL, NULL } };

	lupe_lua_class(L, BUF_MT, buf_methods, meta);

	lua_newtable(L);
	luaL_register(L, NULL, codec_funcs);
	return 1;
}
